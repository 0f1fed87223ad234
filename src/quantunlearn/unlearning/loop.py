"""The unlearning loop: Zhang et al. eq. 1 with AdamW, by default at a constant learning rate
(appendix D.1; ``unlearn.lr_schedule: cosine`` with ``warmup_steps``: RWKU's scripts).

A plain loop rather than the HF Trainer, so that every choice is visible. Where it matters it
does what the papers' code (MUSE baselines on the HF Trainer) does: the model is loaded in the
configured weight dtype and AdamW updates those weights directly (``bf16`` weights: updates
smaller than half a bf16 ulp are rounded away), weight decay 0, gradient norm clipped at 1.0
(the Trainer's default ``max_grad_norm``), one forget batch and one retain batch per step,
``epochs`` passes over the forget set. What a method computes is its row of
`quantunlearn.unlearning.methods.METHODS`: its scope says which weights move, its terms the loss.
Two rows change the schedule: QUAIL's eq. 15 (Algorithm 1: a forget pass, then a retain pass,
per epoch) and RMU_LAT (its adversary runs on every batch, then ``lat_model_steps`` steps).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from quantunlearn.data.documents import TextCorpus, pack_documents, read_documents
from quantunlearn.data.provenance import code_state
from quantunlearn.io import atomic_dir, write_json, write_parquet
from quantunlearn.models.loading import copy_tokenizer, load_model, load_tokenizer
from quantunlearn.models.training import IGNORE, check_finite, collate, set_checkpointing
from quantunlearn.unlearning.hyperparameters import UnlearnSettings, lr_factor
from quantunlearn.unlearning.methods import Method, Run, get_method
from quantunlearn.unlearning.objectives import Step

#: The study-wide settings unlearn_info.json records (with gradient_checkpointing).
RECORDED_SETTINGS = ("batch_size", "max_len", "max_grad_norm", "lr_schedule", "warmup_steps")


@dataclass(frozen=True)
class UnlearnJob:
    """What one unlearning job does to the target: a method at typed hyperparameters, under the
    study-wide settings, with the target's tokenizer, across some GPUs."""

    #: the method's typed hyperparameters (`quantunlearn.unlearning.methods.Method.run`)
    run: Run
    settings: UnlearnSettings = field(default_factory=UnlearnSettings)
    #: the tokenizer's folder or hub id (None: the target's own)
    tokenizer: str | None = None
    #: > 1: the model spread across that many GPUs (quantunlearn.models.loading.device_map)
    gpus: int = 1

    @classmethod
    def of(cls, method: str, hyperparameters: dict, settings: dict | None = None, **rest):
        """A job from plain values: the method's name, its hyperparameters (a dict of config
        keys: the method's own are read, the rest ignored) and the ``unlearn`` settings."""
        run = get_method(method).run(hyperparameters)
        return cls(run, UnlearnSettings(**(settings or {})), **rest)


def unlearn(
    target: str,
    forget_corpus,
    retain_corpus,
    out_dir: str | Path,
    log_path: str | Path,
    job: UnlearnJob,
    **provenance,
) -> dict:
    """Unlearn the forget corpus (a text file, or a `TextCorpus` / `RWKUCorpus`) from ``target``
    as ``job`` says; save the model, a copy of the tokenizer's files and ``unlearn_info.json``
    (``provenance``, the git state) to ``out_dir``, the per-step log to ``log_path``."""
    # long: the job's one entry point, its steps in order
    run, settings, tokenizer, spec = job.run, job.settings, job.tokenizer, job.run.method
    tok = load_tokenizer(tokenizer or target)
    forget, retain = _sequences(spec, forget_corpus, retain_corpus, tok, settings.max_len)
    model, emulate = _load(target, run.weight_dtype, settings.bf16_compute, job.gpus)
    probe = probe_sequences(retain_corpus, tok, settings.max_len)
    target_ce = retain_ce(model, probe, tok.pad_token_id, settings.batch_size)
    context = {"run": run, "target": target, "model": model, "forget": forget}
    context.update(pad_id=tok.pad_token_id, batch_size=settings.batch_size)
    state = {k: v for term in spec.terms for k, v in term.setup(context).items()}
    trainable = spec.scope.build(model, spec, run, forget, tok.pad_token_id, settings.batch_size)
    if settings.gradient_checkpointing:
        set_checkpointing(trainable.model, True)
    start = time.time()
    log = _train(run, trainable, forget, retain, tok.pad_token_id, settings, emulate, state)
    seconds = time.time() - start
    trainable.model.eval()
    if settings.gradient_checkpointing:  # saved as a plain model: generation uses the cache
        set_checkpointing(trainable.model, False)
    vocab = trainable.model.get_output_embeddings().weight.shape[0]
    after_ce = retain_ce(trainable.model, probe, tok.pad_token_id, settings.batch_size)
    info = {
        "method": spec.name,
        **run.values(),
        **state,
        **trainable.info,
        "trained_parameters": sorted(trainable.may_change),
        **{k: getattr(settings, k) for k in RECORDED_SETTINGS},
        "gradient_checkpointing": settings.gradient_checkpointing,
        "steps": len(log),
        "seconds": round(seconds, 2),
        "target": str(target),
        "n_forget_sequences": len(forget),
        "n_retain_sequences": len(retain),
        **collapse(vocab, target_ce, after_ce),
        **{f"git_{k}": v for k, v in code_state().items()},  # the code that unlearned
        **provenance,
    }
    _save(trainable, tokenizer or target, info, out_dir, emulate)
    write_parquet(pd.DataFrame(log), log_path)
    return info


def _save(trainable, tokenizer: str, info: dict, out_dir, emulate: bool) -> None:
    """The model (LoRA merged), a copy of its tokenizer source's files, the scope's extras and
    unlearn_info.json, atomically."""
    with atomic_dir(out_dir) as tmp:
        trainable.save_extras(tmp)  # SURE's saliency, the LoRA adapter, RMU's control vector
        model = trainable.final_model()  # LoRA: W0 + (alpha / r) B A, what every quantizer sees
        if emulate:
            model.to(torch.bfloat16)  # stored as a bf16 model, as the native path stores it
        model.save_pretrained(tmp)
        copy_tokenizer(tokenizer, tmp)  # the source's files, not the padded object
        write_json(info, Path(tmp) / "unlearn_info.json")


#: Retain sequences on which `collapse` compares the target and the unlearned model (the first
#: ones of the retain corpus: the same for every run of a benchmark).
PROBE_SEQUENCES = 32


def probe_sequences(retain_corpus, tok, max_len: int) -> list:
    """The first `PROBE_SEQUENCES` packed sequences of the retain corpus (a text file or a
    `TextCorpus`); [] without one (RWKU has no retain corpus)."""
    path = getattr(_corpus(retain_corpus), "path", None) if retain_corpus is not None else None
    if path is None or not Path(path).is_file():
        return []
    docs = read_documents(path)[: 4 * PROBE_SEQUENCES]
    return pack_documents(docs, tok, max_len)[:PROBE_SEQUENCES]


@torch.no_grad()
def retain_ce(model, sequences: list, pad_id: int, batch_size: int) -> float | None:
    """Mean cross-entropy (nats per token) of the model on these sequences; None without any."""
    if not sequences:
        return None
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(sequences), batch_size):
        batch = collate(sequences[i : i + batch_size], pad_id, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        total += torch.nn.functional.cross_entropy(
            logits[:, :-1].float().flatten(0, 1),
            labels.flatten(),
            ignore_index=IGNORE,
            reduction="sum",
        ).item()
        count += int((labels != IGNORE).sum())
    return total / count


def collapse(vocab: int, target_ce: float | None, unlearned_ce: float | None) -> dict:
    """Whether unlearning collapsed the model (the unlearn_info.json keys).

    Collapsed: the unlearned model's mean cross-entropy on retain text (text it should still
    model) is within ln 2 of a uniform guess over its vocabulary (ln V nats per token), i.e. it
    gives the true tokens on average (geometric mean) at most twice the probability 1/V that a
    uniform distribution gives, while the target was below that. It catches a near-uniform
    output distribution (CE = ln V) and confidently wrong tokens (CE > ln V) alike; a working
    model is far below (the default study's target: 0.56 nats against a threshold of 6.93 for
    V = 2048; Llama-2's V = 32000 gives 9.68). None: no retain text, or a target that is itself
    no better than uniform there (the test cannot tell).
    """
    threshold = math.log(vocab) - math.log(2)
    known = unlearned_ce is not None and target_ce is not None and target_ce < threshold
    return {
        "collapsed": (not unlearned_ce < threshold) if known else None,
        "retain_ce": unlearned_ce,
        "target_retain_ce": target_ce,
        "collapse_threshold": threshold,
    }


def _corpus(corpus):
    """A text file path as a `TextCorpus` (MUSE); a corpus object as it is."""
    return TextCorpus(corpus) if isinstance(corpus, str | Path) else corpus


def _sequences(method: Method, forget_corpus, retain_corpus, tok, max_len: int):
    """The forget examples of the method's forget term (texts or refusals: the term says which),
    and the retain ones when the method has a retain term."""
    forget = method.forget.examples(_corpus(forget_corpus), tok, max_len)
    if not forget:
        raise ValueError(f"the forget corpus {forget_corpus} holds no text")
    if not method.retain:
        return forget, []
    if retain_corpus is None:
        raise ValueError(f"{method.name} needs a retain set, but there is no retain corpus")
    retain = _corpus(retain_corpus).document_examples(tok, max_len)
    if not retain:
        raise ValueError(f"{method.name} needs a retain set, but {retain_corpus} holds no text")
    return forget, retain


def _load(target: str, weight_dtype: str, bf16_compute: str, gpus: int = 1):
    """The target in the weight dtype; with ``bf16_compute: emulated`` bf16 weights are fp32
    tensors rounded to bf16 after every step (`round_to_bf16`)."""
    if bf16_compute not in ("native", "emulated"):
        raise ValueError(f"bf16_compute must be 'native' or 'emulated', got {bf16_compute!r}")
    emulate = weight_dtype == "bf16" and bf16_compute == "emulated"
    model = load_model(target, "fp32" if emulate else weight_dtype, gpus)
    if emulate:
        round_to_bf16(model)
    return model, emulate


@torch.no_grad()
def round_to_bf16(model) -> None:
    """Round every parameter to the nearest bf16 value (round half to even), kept in fp32.

    Emulates bf16 weight storage: an AdamW step on a bf16 parameter computes p + u and rounds
    the result to bf16, which is what rounding the fp32 result does. Gradients and AdamW moments
    stay fp32 (in native bf16 they are bf16 too; measured within one KnowMem point of each
    other). Used where bf16 matmuls are slow (CPUs without AVX512-BF16).
    """
    for p in model.parameters():
        p.copy_(p.to(torch.bfloat16).to(p.dtype))


def _batches(forget: list, retain: list, batch_size: int, epochs: int, seed: int):
    """(epoch, step in epoch, forget sequences, retain sequences or None) of every step: the
    forget set shuffled every epoch, the retain set drawn without replacement, reshuffled when
    it runs out."""
    rng = random.Random(seed)
    steps_per_epoch = math.ceil(len(forget) / batch_size)
    retain_order: list[int] = []
    for epoch in range(epochs):
        order = list(range(len(forget)))
        rng.shuffle(order)
        for b in range(steps_per_epoch):
            fb = [forget[i] for i in order[b * batch_size : (b + 1) * batch_size]]
            rb = None
            if retain:
                if len(retain_order) < batch_size:
                    fresh = list(range(len(retain)))
                    rng.shuffle(fresh)
                    retain_order += fresh
                idx, retain_order = retain_order[:batch_size], retain_order[batch_size:]
                rb = [retain[i] for i in idx]
            yield epoch, b, fb, rb


def _alternating_batches(forget: list, retain: list, batch_size: int, epochs: int, seed: int):
    """Mishra and Mehreen's Algorithm 1: per epoch, a pass over the forget set (retain None),
    then a pass over the retain set (forget None), each shuffled every epoch."""
    rng = random.Random(seed)
    for epoch in range(epochs):
        b = 0
        for side in ("forget", "retain"):
            seqs = forget if side == "forget" else retain
            order = list(range(len(seqs)))
            rng.shuffle(order)
            for start in range(0, len(seqs), batch_size):
                chunk = [seqs[i] for i in order[start : start + batch_size]]
                yield epoch, b, *((chunk, None) if side == "forget" else (None, chunk))
                b += 1


def _step(opt, params: list, lr: float, where: str) -> None:
    """One AdamW step; stops, naming the learning rate, where it diverges: a step that overflows
    (AdamW computes lr / (1 - beta1) in float32: lr above ~3e37 fails inside torch) or that
    leaves a parameter non-finite (the next loss would be NaN, or the model saved broken)."""
    try:
        opt.step()
    except RuntimeError as err:
        if "overflow" not in str(err):
            raise
        raise FloatingPointError(
            f"the AdamW step overflowed at {where} with lr {lr:g} ({err}): the learning rate is "
            "far too large; nothing was saved"
        ) from None
    opt.zero_grad(set_to_none=True)
    bad = sum(int(not torch.isfinite(p).all()) for p in params)
    if bad:
        raise FloatingPointError(
            f"{bad} parameter tensor(s) became non-finite after the AdamW step at {where} (lr "
            f"{lr:g}): the training diverged, the learning rate is too large; nothing was saved"
        )


def _train(run: Run, trainable, forget, retain, pad_id, settings, emulate, state):
    """AdamW (weight decay 0; lr times `lr_factor` of the study's schedule at every optimizer
    step) over the loss of the run's method; returns the per-step log."""
    method = run.method
    model, device = trainable.model, next(trainable.model.parameters()).device
    model.train()
    torch.manual_seed(run.seed)
    # fused: one kernel per parameter group instead of a dozen per tensor (the same AdamW
    # arithmetic; on the default study's 2.8M model it cut the optimizer step about 3x on a CPU)
    opt = torch.optim.AdamW(trainable.params, lr=run.lr, weight_decay=0.0, fused=True)
    total = method.optimizer_steps(run, len(forget), len(retain), settings.batch_size)
    print(f"{method.name}: {total} optimizer steps ({len(forget)} forget sequences, batch "
          f"{settings.batch_size}, {run.epochs} epochs)")  # fmt: skip
    log = []
    bar = tqdm(total=total, desc=f"unlearn {method.name}", mininterval=5)
    schedule = _alternating_batches if method.alternating else _batches
    for epoch, b, fb, rb in schedule(forget, retain, settings.batch_size, run.epochs, run.seed):
        fb = collate(fb, pad_id, device) if fb is not None else None
        rb = collate(rb, pad_id, device) if rb is not None else None
        attack = trainable.adversary.attack(model, fb, rb) if trainable.adversary else None
        for _ in range(trainable.steps_per_batch):
            step = Step(model, trainable, fb, rb, state, attack)
            loss, parts = method.loss(step, run)
            where = f"epoch {epoch} step {b} of {method.name}"
            check_finite(loss, f"{where} (loss parts {parts})")
            loss.backward()
            factor = lr_factor(settings.lr_schedule, settings.warmup_steps, total, len(log))
            for group in opt.param_groups:
                group["lr"] = run.lr * factor
            if settings.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(trainable.params, settings.max_grad_norm)
            _step(opt, trainable.params, run.lr, where)
            if emulate:
                round_to_bf16(model)
            if attack is not None:
                parts["adversary_loss"] = attack.result.final_loss
            log.append({"epoch": epoch, "step": len(log), "lr": run.lr * factor,
                        "loss": loss.item(), **parts})  # fmt: skip
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return log
