"""A predictor of frozen codes: which weights unlearning can move, and which RTN codes it can
change, from the weight storage dtype, the learning rate, the number of steps and each tensor's
quantization step Delta alone (no unlearning run needed), next to what a run measured.

The derivation (docs/quantizers.md, "Which codes unlearning can change"):

* RTN (Zhang et al., ICLR 2025, eq. 2): Delta = max|w_group| / 2^(N-1), code = Round(w / Delta);
  a weight keeps its code while it stays inside [(code - 1/2) Delta, (code + 1/2) Delta) (eq. 3).
* An AdamW step (weight decay 0) moves a weight by lr * m_hat / (sqrt(v_hat) + eps), about lr
  in size whatever the gradient's scale (|m_hat / sqrt(v_hat)| is 1 on the first step and at most
  about 1 for a gradient of steady sign). Over T steps a weight drifts at most about T * lr.
* A weight stored with p significand bits (bf16: 8, fp32: 24) whose magnitude lies in
  [2^e, 2^(e+1)) is a multiple of its ulp 2^(e-p+1); w + u rounds back to w when |u| is below
  half an ulp, 2^(e-p). An update of lr therefore survives only where 2^e < lr * 2^p, i.e. for
  |w| < tau = 2^ceil(log2(lr) + p): in bf16 about 2^8 * lr (3.9e-3 at lr 1e-5), in fp32 about
  2^24 * lr (every weight of a model).
* A weight that can move is confined to |w| < tau as well: past tau its updates round away. So
  it can reach [max(w - T lr, -tau), min(w + T lr, tau)], and its code can change only if that
  interval crosses a bucket edge. With the 4-bit zero bucket's edge at Delta/2 = max|w| / 16,
  a bf16 weight can flip only in a group whose largest weight is below about 16 tau.
* Storing the fp32 target as bf16 rounds every weight once before the first step: a weight
  within half a bf16 ulp of a bucket edge may change code then, without unlearning. That part
  is exact: the codes of the rounded target against the target's.

The prediction is an upper bound for the codes (every movable weight is assumed to drift the
full T * lr towards its nearer edge, and Delta to stay the target's: in bf16 a group's largest
weight is far above tau and cannot move); the measured change is the run's code overlap, the
same as the weight diagnostics' ``overlap`` of pair ``target_vs_unlearned``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch

from quantunlearn.quantizers.rtn import rtn_quantize

#: Significand precision (with the implicit bit) of the weight storage dtypes.
SIGNIFICAND_BITS = {"bf16": 8, "fp32": 24}
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def movable_bound(lr: float, dtype: str) -> float:
    """tau: the magnitude from which an update of size ``lr`` rounds away in ``dtype`` (module
    docstring): 2^ceil(log2(lr) + p)."""
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if dtype not in SIGNIFICAND_BITS:
        raise ValueError(f"dtype must be one of {sorted(SIGNIFICAND_BITS)}, got {dtype!r}")
    return 2.0 ** math.ceil(math.log2(lr) + SIGNIFICAND_BITS[dtype])


def stored(weight: torch.Tensor, dtype: str) -> torch.Tensor:
    """The weight as ``dtype`` stores it (round to nearest even), returned as fp32."""
    return weight.detach().to(TORCH_DTYPES[dtype]).to(torch.float32)


def can_move(weight: torch.Tensor, update: float, dtype: str) -> torch.Tensor:
    """Whether adding +update or -update to each (stored) weight changes it after rounding to
    ``dtype``: exactly what the storage does, not the tau approximation."""
    w = stored(weight, dtype)
    up = stored(w + update, dtype) != w
    down = stored(w - update, dtype) != w
    return up | down


def _codes(x: torch.Tensor, scale: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """RTN codes of ``x`` on a given grid (scale [out, in / group]), eq. 2's Round and clamp."""
    out_f, in_f = x.shape
    levels = 2 ** (bits - 1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale)).unsqueeze(-1)
    grouped = x.reshape(out_f, in_f // group, group)
    return torch.clamp(torch.round(grouped / safe), -levels, levels - 1).reshape(out_f, in_f)


def predict_tensor(
    weight: torch.Tensor, bits: int, group: int | None, lr: float, steps: int, dtype: str
) -> dict[str, torch.Tensor]:
    """Per weight of one [out, in] target weight: ``load_flip`` (its RTN code changes when the
    target is stored in ``dtype``), ``movable`` (an update of lr survives rounding) and
    ``can_flip`` (load_flip, or a drift of at most steps * lr within |w| < tau crosses an edge
    of the stored target's grid)."""
    group = weight.shape[1] if group is None else group
    target_codes = rtn_quantize(weight, bits, group).codes
    w = stored(weight, dtype)
    grid = rtn_quantize(w, bits, group)
    load_flip = grid.codes != target_codes
    movable = can_move(w, lr, dtype)
    tau, drift = movable_bound(lr, dtype), steps * lr
    lo = torch.maximum(w - drift, torch.full_like(w, -tau))
    hi = torch.minimum(w + drift, torch.full_like(w, tau))
    lo, hi = torch.minimum(lo, w), torch.maximum(hi, w)  # a weight beyond tau stays put
    codes = grid.codes.to(torch.float32)
    edge = (_codes(lo, grid.scale, bits, group) != codes) | (
        _codes(hi, grid.scale, bits, group) != codes
    )
    return {"load_flip": load_flip, "movable": movable, "can_flip": load_flip | (movable & edge)}


def compare_run(
    target: dict[str, torch.Tensor],
    unlearned: dict[str, torch.Tensor],
    bits: int,
    group: int | None,
    lr: float,
    steps: int,
    dtype: str,
) -> pd.DataFrame:
    """One row per quantizable Linear: the predicted shares (movable, load flips, codes that
    can change) next to the measured ones (weights the run changed against the stored target,
    codes that differ from the target's: 1 - the diagnostics' overlap)."""
    rows = []
    for name, w in target.items():
        pred = predict_tensor(w, bits, group, lr, steps, dtype)
        g = w.shape[1] if group is None else group
        u = unlearned[name].to(torch.float32)
        changed = u != stored(w, dtype)
        flipped = rtn_quantize(u, bits, g).codes != rtn_quantize(w, bits, g).codes
        rows.append(
            {
                "name": name,
                "n_weights": w.numel(),
                "half_step_median": float(rtn_quantize(w, bits, g).scale.median() / 2),
                "tau": movable_bound(lr, dtype),
                "predicted_movable": pred["movable"].double().mean().item(),
                "measured_changed": changed.double().mean().item(),
                "predicted_load_flip": pred["load_flip"].double().mean().item(),
                "predicted_can_flip": pred["can_flip"].double().mean().item(),
                "measured_flipped": flipped.double().mean().item(),
                "flipped_outside_prediction": (flipped & ~pred["can_flip"]).double().mean().item(),
            }
        )
    return pd.DataFrame(rows)


def compare_saved_run(
    target_path: str | Path, unlearned_path: str | Path, bits: int, group: int | None
) -> pd.DataFrame:
    """`compare_run` for a saved unlearned model: its lr, steps and weight dtype from its
    unlearn_info.json, the quantizable Linears of both models."""
    import json

    from quantunlearn.evaluation.diagnostics import linear_state
    from quantunlearn.models.loading import load_model

    info = json.loads((Path(unlearned_path) / "unlearn_info.json").read_text())
    target = linear_state(load_model(str(target_path), "fp32"))
    unlearned = linear_state(load_model(str(unlearned_path), "fp32"))
    frame = compare_run(
        target, unlearned, bits, group, info["lr"], info["steps"], info["weight_dtype"]
    )
    for key in ("method", "weight_dtype", "lr", "steps"):
        frame.insert(0, key, info[key])
    return frame
