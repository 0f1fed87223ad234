"""The tiny target/retrain models of the embedded study: a BPE tokenizer and a small Llama.

The embedded benchmark trains its own tokenizer (byte-level BPE, `tokenizers`) and a small
`transformers` Llama whose every Linear dimension is a multiple of 128, because bitsandbytes'
CPU kernels and the GPTQ/AWQ group sizes break on other shapes. MUSE fine-tunes f_target on
forget + retain and f_retrain on retain only (Zhang et al. 2025, appendix C.3); the embedded
study does the same from scratch, until the target memorises its forget set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from quantunlearn.data.documents import read_documents, tokenize_documents
from quantunlearn.io import atomic_dir, write_json, write_parquet
from quantunlearn.models.loading import copy_tokenizer, default_device, load_tokenizer
from quantunlearn.models.training import LMRecipe, train_lm

BOS, EOS, PAD = "<s>", "</s>", "<pad>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer that prepends BOS, as Llama's does.

    Pre-tokens are a word or a punctuation mark *followed by* at most one space. MUSE's KnowMem
    prompt ends in "Answer: ", and with GPT-2's space-before-word tokens that prompt ends in a
    lone space token that never precedes an answer in training; here "Answer: Tarsk" and the
    prompt "Answer: " share the tokens "Answer", ": " and the answer starts a token of its own.
    (Isolating every space instead doubles the sequence length and, measured, stopped a 1M
    model from memorising its facts within 40 epochs.)
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\w+ ?|[^\w\s] ?|\s"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left"
    )


def round_up(n: int, multiple: int = 128) -> int:
    return int(math.ceil(n / multiple) * multiple)


def build_llama(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 128,
    intermediate_size: int = 384,
    num_layers: int = 4,
    num_heads: int = 4,
    max_positions: int = 2048,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised Llama whose Linear dimensions are all multiples of 128."""
    for name, value in (("hidden_size", hidden_size), ("intermediate_size", intermediate_size)):
        if value % 128:
            raise ValueError(f"model.{name}={value} must be a multiple of 128 (quantizer kernels)")
    config = LlamaConfig(
        vocab_size=round_up(len(tokenizer)),  # lm_head is a Linear too
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


REFERENCE_SPLITS = {"target": ("forget", "retain"), "retrain": ("retain",)}


def build_tokenizer(bench_dir: str | Path, out_dir: str | Path, vocab_size: int) -> None:
    """Train the embedded study's tokenizer on all of its raw text.

    The holdout text is included on purpose: a vocabulary carries no facts, and a tokenizer that
    split only the holdout names into pieces would bias the Min-K% membership test.
    """

    docs = [
        d
        for s in ("forget", "retain", "holdout")
        for d in read_documents(Path(bench_dir) / "raw" / f"{s}.txt")
    ]
    tok = train_tokenizer(docs, vocab_size)
    with atomic_dir(out_dir) as tmp:
        tok.save_pretrained(tmp)


def train_reference(
    which: str,
    bench_dir: str | Path,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    log_path: str | Path,
    tiny_model: dict,
) -> dict:
    """Train the tiny target (forget + retain) or retrain (retain only) model from scratch."""

    if which not in REFERENCE_SPLITS:
        raise ValueError(
            f"reference model must be one of {sorted(REFERENCE_SPLITS)}, got {which!r}"
        )
    tok = load_tokenizer(str(tokenizer_dir))
    docs = [
        d
        for s in REFERENCE_SPLITS[which]
        for d in read_documents(Path(bench_dir) / "raw" / f"{s}.txt")
    ]
    tokens = tokenize_documents(docs, tok)
    train = tiny_model["train"]
    model = build_llama(
        tok,
        tiny_model["hidden_size"],
        tiny_model["intermediate_size"],
        tiny_model["num_layers"],
        tiny_model["num_heads"],
        seed=train["seed"],
    ).to(default_device())
    recipe = LMRecipe(
        max_len=tiny_model["max_len"],
        epochs=train[f"{which}_epochs"],
        lr=train["lr"],
        batch_size=train["batch_size"],
        warmup_steps=train["warmup_steps"],
        weight_decay=train["weight_decay"],
        seed=train["seed"],
    )
    log = train_lm(model, tokens, tok.pad_token_id, recipe, desc=f"train {which}")
    info = {
        "which": which,
        "splits": REFERENCE_SPLITS[which],
        "n_documents": len(tokens),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": float(log.loss.tail(20).mean()),
        "seconds": float(log.seconds.max()),
        "tiny_model": tiny_model,
    }
    return save_reference(model, str(tokenizer_dir), info, out_dir, log, log_path)


def save_reference(model, tokenizer: str, info: dict, out_dir, log, log_path) -> dict:
    """A trained reference model: weights, a copy of its tokenizer source's files and
    train_info.json in ``out_dir`` (atomically), the training log in ``log_path``; returns
    ``info``."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        copy_tokenizer(tokenizer, tmp)  # the source's files, not the padded object
        write_json(info, Path(tmp) / "train_info.json")
    write_parquet(log, log_path)
    return info
