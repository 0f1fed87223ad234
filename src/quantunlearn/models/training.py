"""Training pieces shared by the tiny models and the unlearning loop: batching, finite-loss
checks, the learning-rate schedule, and causal-LM training from scratch."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from quantunlearn.data.documents import IGNORE, pack_token_lists


def collate(seqs: Sequence, pad_id: int, device="cpu") -> dict[str, torch.Tensor]:
    """Right-pad a batch; padded positions get attention 0 and label IGNORE.

    An example is a token list (every token labelled: language modelling on text) or a dict of
    ``input_ids`` and ``labels`` (IGNORE where a token carries no loss: RT's prompt, the
    unlabelled EOS of RWKU's forget texts).
    """
    token_lists = [s["input_ids"] if isinstance(s, dict) else s for s in seqs]
    width = max(len(s) for s in token_lists)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(token_lists):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    labels = ids.masked_fill(mask == 0, IGNORE)
    for i, s in enumerate(seqs):
        if isinstance(s, dict):
            if len(s["labels"]) != len(s["input_ids"]):
                n_ids, n_labels = len(s["input_ids"]), len(s["labels"])
                raise ValueError(f"example {i}: {n_ids} input ids but {n_labels} labels")
            labels[i, : len(s["labels"])] = torch.as_tensor(s["labels"], dtype=torch.long)
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "labels": labels.to(device),
    }


def check_finite(loss: torch.Tensor, where: str) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss ({loss.item()}) at {where}; nothing was saved")


def set_checkpointing(model, on: bool) -> None:
    """Gradient checkpointing on or off: recompute each layer's activations in the backward pass
    (a 7B model with 2048-token sequences does not fit a GPU otherwise); same gradients, about a
    third more compute. Input grads: needed where the embeddings are frozen (LoRA adapters)."""
    if on:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.enable_input_require_grads()
    else:
        disable = getattr(model, "activation_checkpointing_disable", None)
        (disable or model.gradient_checkpointing_disable)()
    model.config.use_cache = not on


def cosine_with_warmup(warmup: int, total: int):
    """Linear warm-up to the peak, then a half cosine to zero (the usual LM schedule)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def stream_chunks(docs: list[list[int]], max_len: int) -> list[list[int]]:
    """The tokenized documents joined into one stream and cut into consecutive ``max_len``-token
    chunks (a chunk may start mid-document); the remainder is a last, shorter chunk (HF's
    group_texts drops it, which on a corpus shorter than one chunk would leave nothing)."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    stream = [t for doc in docs for t in doc]
    return [stream[i : i + max_len] for i in range(0, len(stream), max_len)]


@dataclass(frozen=True)
class LMRecipe:
    """How `train_lm` trains a causal LM: AdamW (0.9, ``adam_beta2``) with weight decay, a
    cosine schedule after ``warmup_steps`` (at most a tenth of the steps), ``epochs`` passes of
    ``batch_size`` sequences of ``max_len`` tokens.

    ``packing: documents`` packs the shuffled documents afresh every epoch into ``max_len``
    sequences (static packing let the model recall facts from its sequence's neighbours, not the
    name); ``stream``: `stream_chunks` once (the Twitter notebook's), shuffled every epoch.
    """

    max_len: int
    epochs: int
    lr: float
    batch_size: int
    warmup_steps: int
    weight_decay: float
    seed: int
    adam_beta2: float = 0.98
    packing: str = "documents"


def train_lm(
    model, docs: list[list[int]], pad_id: int, recipe: LMRecipe, desc: str = "train"
) -> pd.DataFrame:
    """Causal-LM training of tokenized ``docs`` as the `LMRecipe` says; the per-step log."""
    max_len, epochs, batch_size = recipe.max_len, recipe.epochs, recipe.batch_size
    if not docs:
        raise ValueError("no training documents: is the corpus empty?")
    rng = random.Random(recipe.seed)
    torch.manual_seed(recipe.seed)
    device = next(model.parameters()).device
    if device.type == "cuda":  # TF32 matmuls: the scale study's larger models train in minutes
        torch.set_float32_matmul_precision("high")
    chunks = stream_chunks(docs, max_len) if recipe.packing == "stream" else None
    steps_per_epoch = math.ceil(len(chunks or pack_token_lists(docs, max_len)) / batch_size)
    total = epochs * steps_per_epoch
    betas = (0.9, recipe.adam_beta2)
    opt = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, betas=betas, weight_decay=recipe.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, cosine_with_warmup(min(recipe.warmup_steps, total // 10), total)
    )
    model.train()
    log, order, start = [], list(range(len(docs))), time.time()
    bar = tqdm(total=total, desc=desc, mininterval=5)
    for epoch in range(epochs):
        rng.shuffle(order)
        seqs = list(chunks) if chunks else pack_token_lists([docs[i] for i in order], max_len)
        rng.shuffle(seqs)
        for b in range(min(steps_per_epoch, math.ceil(len(seqs) / batch_size))):
            batch = collate(seqs[b * batch_size : (b + 1) * batch_size], pad_id, device)
            loss = model(**batch).loss
            check_finite(loss, f"epoch {epoch} step {b} of {desc}")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            log.append({"epoch": epoch, "step": len(log), "loss": loss.item()})
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        log[-1]["seconds"] = time.time() - start
    bar.close()
    model.eval()
    return pd.DataFrame(log)
