"""QUAIL's margin Delta_q (Mishra and Mehreen eq. 14): a fixed number, or derived from a quantizer.

Mishra and Mehreen use Delta_q = 1.0 everywhere and ask (section X-B) for quantizer-aware
margins. Their section VI-C gives the criterion: a logit separation of Delta_q / 2 between the
unlearned and the target model survives quantization when quantization perturbs each logit by
less than Delta_q / 4 (both models are quantized, so the separation can shrink by twice the
perturbation).
A quantizer-derived margin therefore measures that perturbation on the forget set:

    eps = mean over the forget set's counted positions t and vocabulary entries k of
          | z^Q_tk - z_tk |,  z = target logits, z^Q = logits of the target quantized by q,
    Delta_q = 4 * eps.

The quantizer q is any quantizer that can run inside the unlearning job (e.g. ``rtn_w4g128``,
``bnb_nf4``, ``gguf_q4_0``; not GPTQ/AWQ, whose checkpoints are DAG outputs, nor noflip);
quantizing the real target propagates every weight's rounding error (at most half
a step of its output channel / group) through the network exactly, instead of bounding it.
"""

from __future__ import annotations

from collections.abc import Sequence

from quantunlearn.quantizers import parse_quantizer


def parse_margin(value) -> float | str:
    """``quail_delta`` as given: a positive number, or a quantizer name (checked)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not value > 0:
            raise ValueError(f"quail_delta must be > 0, got {value}")
        return float(value)
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        quantizer = parse_quantizer(text)  # raises ValueError naming the problem
        if not quantizer.is_quantized:
            raise ValueError("quail_delta 'none': a margin needs a quantizer") from None
        if not quantizer.runs_in_unlearning_job:
            raise ValueError(
                f"quail_delta {text!r}: the margin quantizes the target inside the unlearning "
                "job, which cannot run a quantizer that needs a stored checkpoint (GPTQ, AWQ) "
                "or the target as a second model (noflip); use e.g. rtn_w4g128 or bnb_nf4"
            ) from None
        return text
    return parse_margin(number)


def logit_perturbation(
    model,
    quantized,
    forget_seqs: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int,
) -> float:
    """Mean |z^Q - z| over the counted positions and the vocabulary of the forget set."""
    import torch

    from quantunlearn.models.training import IGNORE, collate

    total, count = 0.0, 0
    device = next(model.parameters()).device
    qdevice = next(quantized.parameters()).device
    with torch.no_grad():
        for start in range(0, len(forget_seqs), batch_size):
            batch = collate(forget_seqs[start : start + batch_size], pad_id, device)
            z = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            zq = quantized(
                input_ids=batch["input_ids"].to(qdevice),
                attention_mask=batch["attention_mask"].to(qdevice),
            ).logits.to(device)
            mask = batch["labels"] != IGNORE
            gap = (zq.float() - z.float()).abs().mean(dim=-1)
            total += float((gap * mask).sum())
            count += int(mask.sum())
    return total / max(count, 1)


def quail_margin(
    delta,
    target: str,
    model,
    forget_seqs: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int,
    compute_dtype: str = "fp32",
) -> float:
    """Delta_q for `delta`: the number itself, or 4 * the quantizer's logit perturbation.

    `model` is the target as loaded for unlearning (its logits are z); `target` is its path, which
    the quantizer loads again (quantized at load time, as in the evaluation).
    """
    parsed = parse_margin(delta)
    if isinstance(parsed, float):
        return parsed
    quantized = parse_quantizer(parsed).load(target, compute_dtype=compute_dtype)
    eps = logit_perturbation(model, quantized, forget_seqs, pad_id, batch_size)
    del quantized
    if not eps > 0:
        raise ValueError(f"quantizer {parsed} does not perturb the target's logits: no margin")
    return 4.0 * eps
