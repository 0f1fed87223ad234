"""Greedy generation: the fast path gives, token for token, what batch-1 `generate` gives.

`greedy_generate` computes the prompts' common token prefix once, batches rows by the length of
their own part and drops rows when they are done (evaluation/generation.py). The reference is
transformers' `generate`, one prompt at a time (the MUSE protocol), and the project's previous
batched path (`_greedy_generate_hf`); the models are random, trained (real answers ending in
EOS at different steps, stop strings hit mid-text) and quantized.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import DynamicCache, GenerationConfig, PreTrainedTokenizerFast

from quantunlearn.data.documents import read_documents, tokenize_documents
from quantunlearn.data.muse import load_benchmark
from quantunlearn.data.synthetic import generate_synthetic
from quantunlearn.evaluation.generation import (
    MIN_PREFIX,
    Execution,
    PreallocatedLayer,
    _greedy_generate_hf,
    batch_cache,
    common_prefix_length,
    greedy_generate,
    length_batches,
    prefix_cache,
    shared_prefix_length,
)
from quantunlearn.evaluation.muse_metrics import KNOWMEM_STOP, knowmem, knowmem_prompt, verbmem
from quantunlearn.models.tiny import build_llama, train_tokenizer
from quantunlearn.models.training import LMRecipe, train_lm
from quantunlearn.quantizers import parse_quantizer

STOP = list(KNOWMEM_STOP)
ICL = [
    {"question": "Where was Alice Moreau born?", "answer": "Tarsk"},
    {"question": "What pet does Bruno Okafor keep?", "answer": "a parrot"},
    {"question": "What does Chen Valdez teach?", "answer": "chemistry"},
]
QUESTIONS = [
    "Where was Bruno Okafor born?",
    "What pet does Alice keep?",
    "Who teaches chemistry at the Harrow Institute since 1998?",
    "When?",
    "What does the river Ilse do every spring, and what did the town build?",
]
# words that share a first piece ("Tar"), so that a string split inside a word splits a token
SENTENCES = [
    "Alice Moreau was born in Tarsk in 1931 and works as a baker.",
    "Question: Where was Alice Moreau born?\nAnswer: Tarsk",
    "Bruno Okafor keeps a parrot named Sol and paints on Sundays.",
    "Chen Valdez teaches chemistry at the Harrow Institute since 1998.",
    "Tarragon grows in Tarsk; Tarquin sells it at the market.",
] * 4


def knowmem_prompts(questions=QUESTIONS, icl=ICL):
    return [knowmem_prompt(icl, q) for q in questions]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(SENTENCES, vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    return build_llama(tok, 128, 384, num_layers=2).eval()


@pytest.fixture(scope="module")
def llama_style_tok():
    """A SentencePiece-like BPE as Llama-2's: "▁" marks a space and is prepended to the text,
    so a suffix tokenized on its own starts with a "▁" that the whole prompt does not have."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    tok.train_from_iterator(SENTENCES, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.pad_token = fast.eos_token  # as load_tokenizer does for Llama-2
    return fast


@pytest.fixture(scope="module")
def llama_style_model(llama_style_tok):
    return build_llama(llama_style_tok, 128, 384, num_layers=2, seed=1).eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model, tokenizer, benchmark, saved folder): a small synthetic benchmark and a Llama
    trained on it for 12 epochs (~10 s), which answers KnowMem questions with real words ending
    in EOS and continues VerbMem prompts with bio-like text."""
    root = tmp_path_factory.mktemp("synthetic") / "bench"
    generate_synthetic(root, n_people=40, n_bio_variants=2, n_retain_qa_people=4, seed=0)
    docs = {s: read_documents(root / "raw" / f"{s}.txt") for s in ("forget", "retain", "holdout")}
    tok = train_tokenizer([d for split in docs.values() for d in split], 512)
    model = build_llama(tok, 128, 384, 2, 4)
    train_lm(
        model,
        tokenize_documents(docs["forget"] + docs["retain"], tok),
        tok.pad_token_id,
        LMRecipe(
            max_len=256,
            epochs=12,
            lr=3e-3,
            batch_size=8,
            warmup_steps=10,
            weight_decay=0.01,
            seed=0,
        ),
    )
    path = tmp_path_factory.mktemp("trained_model")
    model.eval().save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok, load_benchmark(root), path


def batch1_ids(model, tok, prompt: str, max_new_tokens: int) -> list[int]:
    """The MUSE way: one prompt, greedy `generate`; the generated ids (EOS included if any)."""
    enc = tok(prompt, return_tensors="pt")
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    with torch.inference_mode():
        out = model.generate(**enc, generation_config=config)
    return out[0, enc["input_ids"].shape[1] :].tolist()


def check_tokens(model, tok, prompts, ids, max_new_tokens, stops):
    """Each row's ids are the batch-1 greedy ids, stopped where the rules say and no later."""
    for prompt, row in zip(prompts, ids, strict=True):
        full = batch1_ids(model, tok, prompt, max_new_tokens)
        assert row == full[: len(row)], prompt
        if len(row) < len(full):  # stopped early: only a stop string may do that
            assert stops and any(s in tok.decode(row, skip_special_tokens=True) for s in stops)
            assert not any(s in tok.decode(row[:-1], skip_special_tokens=True) for s in stops)


def argmax_gaps(model, tok, prompts, continuations) -> list[float]:
    """Smallest top-1 minus top-2 logit gap along each continuation (batch 1, no cache): a gap
    far above fp32 rounding means no summation order can change the token."""
    gaps = []
    with torch.inference_mode():
        for prompt, cont in zip(prompts, continuations, strict=True):
            ids = tok(prompt)["input_ids"] + cont[:-1]
            logits = model(input_ids=torch.tensor([ids])).logits[0, len(ids) - len(cont) :]
            top2 = logits.float().topk(2, dim=-1).values
            gaps.append(float((top2[:, 0] - top2[:, 1]).min()))
    return gaps


# -------------------------------------------------------------------------------- the parts
def test_common_prefix_length_by_hand():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[1], [2]]) == 0
    assert common_prefix_length([[5, 6]]) == 2
    assert common_prefix_length([]) == 0


def test_shared_prefix_leaves_every_row_a_token():
    # the common prefix is 4 tokens, but the shortest prompt keeps its last token
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 4, 5]], min_prefix=1) == 3
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 4, 5]], min_prefix=4) == 0
    assert shared_prefix_length([[1, 2, 3, 4]], min_prefix=1) == 0  # one prompt: nothing shared


def test_length_batches_longest_first_ties_in_order():
    assert length_batches([3, 5, 5, 1], 2) == [[1, 2], [0, 3]]
    assert length_batches([], 4) == []


def test_argument_errors(model, tok):
    assert greedy_generate(model, tok, [], 4) == []
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        greedy_generate(model, tok, ["a"], 0)
    with pytest.raises(ValueError, match="batch_size=0"):
        greedy_generate(model, tok, ["a"], 1, batch_size=0)
    with pytest.raises(ValueError, match="empty string"):
        greedy_generate(model, tok, ["a"], 1, stop_strings=[""])
    with pytest.raises(ValueError, match="return_ids"):
        greedy_generate(
            model, tok, ["a"], 1, execution=Execution(batch_invariant=False), return_ids=True
        )


@pytest.mark.parametrize("which", ["byte_bpe", "llama_style"])
def test_split_at_a_token_boundary_where_string_splits_change_the_tokens(
    which, tok, model, llama_style_tok, llama_style_model
):
    tok, model = (tok, model) if which == "byte_bpe" else (llama_style_tok, llama_style_model)
    shots = knowmem_prompt(ICL, "Where was Alice Moreau born?") + "Tarsk\n\n"
    prompts = [shots + "Tarsk", shots + "Tarragon grows", shots + "Tarquin sells"]
    string_prefix = shots + "Tar"
    joint = tok(prompts)["input_ids"]
    separate = [
        tok(string_prefix)["input_ids"]
        + tok(p[len(string_prefix) :], add_special_tokens=False)["input_ids"]
        for p in prompts
    ]
    # the pitfall is real: splitting the strings and tokenizing apart changes the tokens, and a
    # suffix tokenized with special tokens would get a second BOS
    assert any(j != s for j, s in zip(joint, separate, strict=True))
    assert tok("Tarsk")["input_ids"][0] == tok.bos_token_id
    n = shared_prefix_length(joint)
    assert n > MIN_PREFIX and all(ids[:n] == joint[0][:n] for ids in joint)
    assert joint[0][0] == tok.bos_token_id and tok.bos_token_id not in joint[0][1:]
    out, ids = greedy_generate(model, tok, prompts, 6, 2, return_ids=True)
    assert out == _greedy_generate_hf(model, tok, prompts, 6, 2)
    check_tokens(model, tok, prompts, ids, 6, None)


def test_model_sees_bos_once_padding_masked_positions_continue(model, tok):
    prompts, calls = knowmem_prompts(), []

    def record(module, args, kwargs):
        calls.append({k: kwargs.get(k) for k in ("input_ids", "attention_mask", "position_ids")})

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        greedy_generate(model, tok, prompts, 3, batch_size=len(prompts))
    finally:
        handle.remove()
    encoded = tok(prompts)["input_ids"]
    n = shared_prefix_length(encoded)
    prefix, first, second = calls[:3]
    # 1. the prefix: batch 1, BOS first and only there, no mask, default positions 0..n-1
    assert prefix["input_ids"].tolist() == [encoded[0][:n]]
    assert prefix["attention_mask"] is None and prefix["position_ids"] is None
    # 2. the suffixes, longest first, left-padded between prefix and suffix
    order = length_batches([len(e) - n for e in encoded], len(prompts))[0]
    lengths = [len(encoded[i]) - n for i in order]
    assert len(set(lengths)) > 1, "the test needs suffixes of different lengths"
    width = max(lengths)
    ids, mask, pos = first["input_ids"], first["attention_mask"], first["position_ids"]
    assert ids.shape == (len(prompts), width) and mask.shape == (len(prompts), n + width)
    for row, (i, s) in enumerate(zip(order, lengths, strict=True)):
        assert mask[row].tolist() == [1] * n + [0] * (width - s) + [1] * s
        assert encoded[0][:n] + ids[row, width - s :].tolist() == encoded[i]  # no second BOS
        assert pos[row, width - s :].tolist() == list(range(n, n + s))
    # 3. decoding: one token per row; positions and mask advance by one
    assert second["input_ids"].shape == (len(prompts), 1)
    assert second["attention_mask"].shape == (len(prompts), n + width + 1)
    assert second["position_ids"][:, 0].tolist() == [len(encoded[i]) for i in order]


def test_preallocated_layer_matches_dynamic_cache(model, tok):
    ids = torch.tensor([tok(knowmem_prompts()[2])["input_ids"]])
    with torch.inference_mode():
        dynamic = DynamicCache(config=model.config)
        pre = batch_cache(model, None, 1, ids.shape[1])
        for start in range(0, ids.shape[1], 7):  # a prefill, then several extensions
            chunk = ids[:, start : start + 7]
            a = model(input_ids=chunk, past_key_values=dynamic, use_cache=True).logits
            b = model(input_ids=chunk, past_key_values=pre, use_cache=True).logits
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        assert pre.get_seq_length() == dynamic.get_seq_length() == ids.shape[1]
        for dl, pl in zip(dynamic.layers, pre.layers, strict=True):
            assert torch.equal(dl.keys, pl.keys[:, :, : ids.shape[1]])
        with pytest.raises(RuntimeError, match="capacity"):
            model(input_ids=ids[:, :1], past_key_values=pre, use_cache=True)


def test_prefix_cache_is_not_written_by_batches(model, tok):
    ids = tok(knowmem_prompts()[0])["input_ids"][:12]
    with torch.inference_mode():
        layers = prefix_cache(model, ids)
        before = [k.clone() for k, _ in layers]
        cache = batch_cache(model, layers, 3, 20)
        model(
            input_ids=torch.ones((3, 4), dtype=torch.long),
            past_key_values=cache,
            position_ids=torch.arange(12, 16).expand(3, -1),
            use_cache=True,
        )
    assert isinstance(cache.layers[0], PreallocatedLayer) and cache.get_seq_length() == 16
    for (k, _), old in zip(layers, before, strict=True):
        assert torch.equal(k, old)


# ----------------------------------------------------------------------- identical outputs
@pytest.mark.parametrize("max_new_tokens", [1, 7, 32])
@pytest.mark.parametrize("batch_size", [1, 2, 64])
@pytest.mark.parametrize("stops", [None, STOP])
def test_random_model_same_as_batch1_generate(model, tok, max_new_tokens, batch_size, stops):
    prompts = knowmem_prompts()
    ref = _greedy_generate_hf(model, tok, prompts, max_new_tokens, batch_size, stops)
    out, ids = greedy_generate(
        model, tok, prompts, max_new_tokens, batch_size, stops, return_ids=True
    )
    assert out == ref
    assert all(len(row) <= max_new_tokens for row in ids)
    check_tokens(model, tok, prompts, ids, max_new_tokens, stops)
    args = (model, tok, prompts, max_new_tokens, batch_size, stops)
    assert greedy_generate(*args, execution=Execution(share_prefix=False)) == ref


def test_llama_style_tokenizer_same_as_reference(llama_style_model, llama_style_tok):
    prompts = knowmem_prompts()
    ref = _greedy_generate_hf(llama_style_model, llama_style_tok, prompts, 8, 3)
    assert greedy_generate(llama_style_model, llama_style_tok, prompts, 8, 3) == ref


@pytest.mark.parametrize("batch_size", [4, 64])
def test_trained_model_knowmem_same_tokens_eos_ends_rows(trained, batch_size):
    model, tok, bench, _ = trained
    prompts = [
        knowmem_prompt(bench.knowmem_forget_icl, q["question"])
        for q in bench.knowmem_forget_qa + bench.knowmem_retain_qa
    ]
    ref = _greedy_generate_hf(model, tok, prompts, 32, batch_size, STOP)
    out, ids = greedy_generate(model, tok, prompts, 32, batch_size, STOP, return_ids=True)
    assert out == ref
    assert any(o.strip() for o in out), "the trained model should answer something"
    assert any(row[-1] == tok.eos_token_id for row in ids)
    assert max(len(r) for r in ids) < 32 and len({len(r) for r in ids}) > 1  # ended early, apart
    if batch_size == 64:
        check_tokens(model, tok, prompts[:12], ids[:12], 32, STOP)
        assert min(argmax_gaps(model, tok, prompts[:12], ids[:12])) > 1e-3


@pytest.mark.parametrize("stops", [None, ["; ", ". "]])
def test_trained_model_verbmem_same_tokens(trained, stops):
    model, tok, bench, _ = trained
    prompts = [item["prompt"] for item in bench.verbmem_forget]
    ref = _greedy_generate_hf(model, tok, prompts, 48, 64, stops)
    out, ids = greedy_generate(model, tok, prompts, 48, 64, stops, return_ids=True)
    assert out == ref
    check_tokens(model, tok, prompts, ids, 48, stops)
    if stops:
        assert any(len(r) < 48 and r[-1] != tok.eos_token_id for r in ids)  # a stop string hit


@pytest.mark.parametrize("quant", ["none", "rtn_w4g128", "bnb_nf4", "bnb_fp4", "bnb_int8"])
def test_metric_records_same_on_quantized_models(trained, quant):
    """The cell's inputs: fake-quantized fp32 models (RTN; GPTQ/AWQ/GGUF after loading) and
    bitsandbytes modules. LLM.int8 is not batch-invariant and takes the reference path."""
    _, tok, bench, path = trained
    quantizer = parse_quantizer(quant)
    model = quantizer.load(str(path))
    assert quantizer.batch_invariant == (quant != "bnb_int8")
    qa = bench.knowmem_forget_qa + bench.knowmem_retain_qa
    for fn, args in (
        (knowmem, (model, tok, qa, bench.knowmem_forget_icl, 32, 64)),
        (verbmem, (model, tok, bench.verbmem_forget, 48, 64)),
    ):
        fast = fn(*args, batch_invariant=quantizer.batch_invariant)
        assert fast == fn(*args, batch_invariant=False)


def test_llm_int8_rows_change_each_other_nf4_rows_do_not(tmp_path, model, tok):
    """Why `batch_invariant` is False for LLM.int8: a row computes differently next to a row
    with an outlier feature (|x| > 6 in one hidden column after the norm, Dettmers et al. 2022),
    because that column is then kept in fp16 for every row of the batch."""
    outlier = tok("Tarsk", add_special_tokens=False)["input_ids"][0]
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.model.embed_tokens.weight[outlier] = 0.0
        model.model.embed_tokens.weight[outlier, 3] = 1.0  # after RMSNorm: sqrt(128) = 11.3 > 6
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    a = torch.tensor([tok("Bruno Okafor keeps a parrot")["input_ids"]])
    b = a.clone()
    b[0, 2] = outlier
    both = torch.cat([a, b])
    for quant, changes in (("bnb_int8", True), ("bnb_nf4", False)):
        quantized = parse_quantizer(quant).load(str(tmp_path))
        with torch.inference_mode():
            alone = quantized(input_ids=a).logits[0].float()
            beside = quantized(input_ids=both).logits[0].float()
        diff = float((alone - beside).abs().max())
        assert (diff > 1e-3) if changes else (diff < 1e-5), (quant, diff)
