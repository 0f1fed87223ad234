"""Weight-level diagnostics: why quantization does (or does not) undo unlearning.

Zhang et al. (section 5, eq. 3) argues that a weight change smaller than half the quantizer's step
Delta cannot leave its quantization bucket, so Q(f_unlearned) = Q(f_target) and the forgotten
knowledge returns. Mishra and Mehreen (section V, figures 1-5) measure it: weight-change
statistics |w' - w| (V-B) and the *bucket overlap*, the share of weights with Q(w') == Q(w)
(V-C). This module computes both for one unlearned run and one of the quantizers the study
evaluates, against the target, over the quantizable Linears, at three levels: each tensor, each
decoder layer, and ``pooled`` (every quantized weight of the model pooled). These are the
project's measures; QUAIL's Table I itself, whose "global" and "tensor-wise" overlaps use QUAIL's
own min-max quantizer over all parameters, is `quantunlearn.evaluation.quail_table`. For one
unlearned run and one quantizer, against the target:

* pair ``target_vs_unlearned``: w = target, w' = unlearned. change = |w' - w|; overlap = share
  with the same bucket. For RTN (and its noflip counterfactual) the bucket is the integer code
  of eq. 2 of each model (each with its own step); for every other quantizer it is the
  effective weight (GPTQ/AWQ calibrate, and GGUF/bitsandbytes compute scales, per model, so
  there is no shared code book: equal effective weights is the only meaningful "same bucket").
* pair ``unlearned_vs_quantized``: w = unlearned, w' = Q(unlearned). change = the quantization
  error |Q(w') - w'|; overlap = share of weights whose quantized value lies within half a step
  of the weight (round to nearest gives 1 except for clipped weights; GPTQ's error feedback
  and AWQ's scaling move weights to other grid points).

"Half step" is Delta/2 of a symmetric absmax grid (eq. 2) with the quantizer's bit width and
group (per output channel without group; GGUF: its block of 32 or 16; bitsandbytes 4-bit:
blocks of 64; int8: per row), computed on the *reference* weights of the pair. For RTN it is
exactly the quantizer's own step; for the others it is the nominal step of that bit width,
which makes the change-to-step ratio comparable across quantizers.

`bucket_overlap` is the small public entry point (used by the scale study); `diagnose_run` writes
the per-tensor, per-layer and pooled Parquet rows of one (run, quantizer).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from quantunlearn.data.provenance import provenance_columns
from quantunlearn.evaluation.cell import CellJob, local_inputs, package_versions
from quantunlearn.io import config_hash, write_parquet
from quantunlearn.models.loading import load_model
from quantunlearn.quantizers import Quantizer, parse_quantizer, quantizable_linears
from quantunlearn.quantizers.base import layer_of
from quantunlearn.quantizers.rtn import rtn_quantize

PAIRS = ("target_vs_unlearned", "unlearned_vs_quantized")
LEVELS = ("tensor", "layer", "pooled")

STAT_COLUMNS = [
    "n_weights",
    "mean_abs_change",
    "median_abs_change",
    "max_abs_change",
    "share_unchanged",
    "half_step_median",
    "mean_change_to_half_step",
    "max_change_to_half_step",
    "share_beyond_half_step",
    "overlap",
    "n_flipped",
    "overlap_within_half_step",
]


def half_step(weight: torch.Tensor, bits: int, group: int | None) -> torch.Tensor:
    """Delta/2 of eq. 2 (Zhang et al.) for every weight: max|w_group| / 2^(N-1) / 2, same shape."""
    out_features, in_features = weight.shape
    g = in_features if group is None or in_features % group else group
    scale = rtn_quantize(weight, bits, g).scale  # [out, in / g]
    return (scale / 2).repeat_interleave(g, dim=1)


def linear_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """{parameter name: fp32 weight} of the quantizable Linears (what every quantizer changes)."""
    return {
        f"{name}.weight": module.weight.detach().to(torch.float32)
        for name, module in quantizable_linears(model).items()
    }


def effective_state(
    spec: Quantizer,
    state: dict[str, torch.Tensor],
    quantized: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Q(w) per tensor: computed here for quantizers that quantize each weight on its own (RTN,
    GGUF), else as given (``quantized``: the effective weights of the loaded quantized model)."""
    if quantized is not None:
        return quantized
    if not spec.weightwise:
        raise ValueError(
            f"{spec.name}: pass the quantized effective weights (target_quantized / "
            "unlearned_quantized); only RTN and GGUF are quantized here from plain weights"
        )
    layers = [layer for key in state if (layer := layer_of(key)) is not None]
    n_layers = max(layers) + 1 if layers else 1
    return {
        key: spec.quantize_weight(w, key.removesuffix(".weight"), n_layers)
        for key, w in state.items()
    }


def same_buckets(
    spec: Quantizer,
    target: dict[str, torch.Tensor],
    unlearned: dict[str, torch.Tensor],
    target_q: dict[str, torch.Tensor],
    unlearned_q: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Q(w') == Q(w) per weight: the integer codes where the quantizer has a shared code book
    (RTN), the effective weights for the others."""
    if spec.shares_codes:
        return {k: spec.codes(target[k]) == spec.codes(unlearned[k]) for k in target}
    return {k: target_q[k] == unlearned_q[k] for k in target}


def _tensor_stats(
    reference: torch.Tensor,
    other: torch.Tensor,
    half: torch.Tensor,
    same: torch.Tensor | None,
    close: torch.Tensor | None = None,
) -> dict:
    change = (other.to(torch.float32) - reference.to(torch.float32)).abs().reshape(-1)
    ratio = change / half.reshape(-1).clamp_min(torch.finfo(torch.float32).tiny)
    return {
        "n_weights": change.numel(),
        "_change": change,
        "_ratio": ratio,
        "_half": half.reshape(-1),
        "_same": None if same is None else same.reshape(-1),
        "_close": None if close is None else close.reshape(-1),
    }


def _summarize(parts: list[dict]) -> dict:
    change = torch.cat([p["_change"] for p in parts])
    ratio = torch.cat([p["_ratio"] for p in parts])
    half = torch.cat([p["_half"] for p in parts])
    sames = [p["_same"] for p in parts if p["_same"] is not None]
    same = torch.cat(sames) if len(sames) == len(parts) else None
    closes = [p["_close"] for p in parts if p["_close"] is not None]
    close = torch.cat(closes) if len(closes) == len(parts) else None
    n = change.numel()
    return {
        "n_weights": n,
        "mean_abs_change": change.double().mean().item(),
        "median_abs_change": change.median().item(),
        "max_abs_change": change.max().item(),
        "share_unchanged": (change == 0).double().mean().item(),
        "half_step_median": half.median().item(),
        "mean_change_to_half_step": ratio.double().mean().item(),
        "max_change_to_half_step": ratio.max().item(),
        "share_beyond_half_step": (ratio > 1).double().mean().item(),
        "overlap": float("nan") if same is None else same.double().mean().item(),
        "n_flipped": pd.NA if same is None else int((~same).sum().item()),
        "overlap_within_half_step": float("nan") if close is None else close.double().mean().item(),
    }


def _pair_parts(
    spec: Quantizer,
    reference: dict[str, torch.Tensor],
    other: dict[str, torch.Tensor],
    same: dict[str, torch.Tensor],
    quantized: tuple[dict, dict] | None = None,
) -> dict[str, dict]:
    """Per tensor stats of other vs reference; `quantized` = (Q(reference), Q(other)) gives
    overlap_within_half_step = share of |Q(other) - Q(reference)| < half step."""
    bits, group = spec.nominal_grid
    missing = sorted(set(reference) ^ set(other))
    if missing:
        raise ValueError(f"the two states hold different tensors: {missing[:5]}")
    parts = {}
    for key in reference:
        if reference[key].shape != other[key].shape:
            raise ValueError(
                f"{key}: shapes {tuple(reference[key].shape)} != {tuple(other[key].shape)}"
            )
        half = half_step(reference[key], bits, group)
        close = None
        if quantized is not None:
            close = (quantized[1][key] - quantized[0][key]).abs() < half
        parts[key] = _tensor_stats(reference[key], other[key], half, same.get(key), close)
    return parts


def bucket_overlap(
    target_state: dict[str, torch.Tensor],
    unlearned_state: dict[str, torch.Tensor],
    quant: str,
    *,
    target_quantized: dict[str, torch.Tensor] | None = None,
    unlearned_quantized: dict[str, torch.Tensor] | None = None,
) -> dict:
    """Pooled bucket overlap and change-to-half-step ratio between two models under `quant`.

    States map parameter names to the fp32 weights of the quantizable Linears (`linear_state`).
    RTN (rtn_*, noflip_rtn_*) and GGUF are quantized here; for GPTQ, AWQ and bitsandbytes pass
    the effective weights of each model's quantized version (`quantized_state`). Returns
    {"quant", "overlap", "n_weights", "n_flipped", "mean_change_to_half_step",
    "max_change_to_half_step", "share_beyond_half_step", "share_unchanged", "mean_abs_change",
    "median_abs_change", "max_abs_change", "half_step_median"}.
    """
    spec = parse_quantizer(quant).diagnosed_as
    if not spec.is_quantized:
        raise ValueError("bucket_overlap needs a quantizer, not 'none'")
    target_q = effective_state(spec, target_state, target_quantized)
    unlearned_q = effective_state(spec, unlearned_state, unlearned_quantized)
    same = same_buckets(spec, target_state, unlearned_state, target_q, unlearned_q)
    parts = _pair_parts(spec, target_state, unlearned_state, same, (target_q, unlearned_q))
    return {"quant": quant, **_summarize(list(parts.values()))}


def quantized_state(
    model_path: str | Path,
    spec: Quantizer,
    *,
    quant_dir: str | Path | None = None,
    target_path: str | Path | None = None,
    compute_dtype: str = "fp32",
) -> dict[str, torch.Tensor]:
    """{parameter name: effective fp32 weight} of a saved model quantized by `spec`."""
    model = spec.load(
        model_path, compute_dtype=compute_dtype, quant_dir=quant_dir, target_path=target_path
    )
    return {f"{k}.weight": v.clone() for k, v in spec.effective_weights(model).items()}


def diagnostics_frame(
    spec: Quantizer,
    target: dict[str, torch.Tensor],
    unlearned: dict[str, torch.Tensor],
    target_q: dict[str, torch.Tensor],
    unlearned_q: dict[str, torch.Tensor],
) -> pd.DataFrame:
    """Rows per (pair, level, name): the STAT_COLUMNS of the module docstring."""
    rows = []
    bits, group = spec.nominal_grid
    same_tu = same_buckets(spec, target, unlearned, target_q, unlearned_q)
    in_bucket = {
        k: (unlearned_q[k] - unlearned[k]).abs()
        <= half_step(unlearned[k], bits, group) * (1 + 1e-6)
        for k in unlearned
    }
    pairs = {
        "target_vs_unlearned": _pair_parts(
            spec, target, unlearned, same_tu, (target_q, unlearned_q)
        ),
        "unlearned_vs_quantized": _pair_parts(spec, unlearned, unlearned_q, in_bucket),
    }
    for pair, parts in pairs.items():
        rows += _level_rows(pair, parts)
    frame = pd.DataFrame(rows)
    frame["layer"] = frame["layer"].astype("Int64")
    frame["n_flipped"] = frame["n_flipped"].astype("Int64")
    frame.insert(0, "bits", bits)
    frame.insert(1, "group_size", pd.array([group] * len(frame), dtype="Int64"))
    return frame


def _level_rows(pair: str, parts: dict[str, dict]) -> list[dict]:
    """The rows of one pair: every tensor, every decoder layer, and the whole model."""
    rows, by_layer = [], {}
    for name, part in parts.items():
        layer = layer_of(name)
        rows.append({"pair": pair, "level": "tensor", "name": name, "layer": layer,
                     **_summarize([part])})  # fmt: skip
        if layer is not None:
            by_layer.setdefault(layer, []).append(part)
    for layer, layer_parts in sorted(by_layer.items()):
        rows.append({"pair": pair, "level": "layer", "name": f"layer {layer}", "layer": layer,
                     **_summarize(layer_parts)})  # fmt: skip
    rows.append({"pair": pair, "level": "pooled", "name": "all", "layer": None,
                 **_summarize(list(parts.values()))})  # fmt: skip
    return rows


def diagnose_run(cell: CellJob, out: str | Path) -> pd.DataFrame:
    """Write the diagnostics Parquet of one (unlearned run, quantizer): see the module docstring.
    The cell's model is the unlearned one, its target the reference; ``cell.inputs``: role ->
    {"source", "commit"} of the two models (None: the folders').

    The noflip counterfactual is diagnosed as its base RTN quantizer (its codes are the
    target's by construction).
    """
    start = time.time()
    spec = parse_quantizer(cell.quant)
    if not spec.is_quantized:
        raise ValueError("diagnostics need a quantizer, not 'none'")
    spec = spec.diagnosed_as  # noflip: its RTN base (its codes are the target's by design)
    target = linear_state(load_model(str(cell.target), "fp32"))
    unlearned = linear_state(load_model(str(cell.model), "fp32"))
    if spec.weightwise:
        target_q = effective_state(spec, target)
        unlearned_q = effective_state(spec, unlearned)
    else:
        dtype = cell.compute_dtype
        target_q = quantized_state(cell.target, spec, quant_dir=cell.target_quant_dir,
                                   compute_dtype=dtype)  # fmt: skip
        unlearned_q = quantized_state(cell.model, spec, quant_dir=cell.quant_dir,
                                      compute_dtype=dtype)  # fmt: skip
    frame = diagnostics_frame(spec, target, unlearned, target_q, unlearned_q)
    frame.insert(0, "quant", cell.quant)
    inputs = cell.inputs or local_inputs(model=cell.model, target=cell.target)
    return write_cell_frame(frame, out, cell.params, cell.cell_config, start, inputs)


def write_cell_frame(
    frame: pd.DataFrame, out, cell: dict, cell_config: dict, start: float, inputs: dict
):
    """A per-run result frame with the cell's parameters first and its config hash, config,
    package versions, the provenance of ``inputs`` (role -> {"source", "commit"}) and seconds
    since ``start`` last, written to ``out``."""
    for key, value in reversed(list(cell.items())):
        frame.insert(0, key, value)
    frame["config_hash"] = config_hash(cell_config)
    frame["cell_config"] = json.dumps(cell_config, sort_keys=True, default=str)
    frame["versions"] = package_versions()
    for column, value in provenance_columns(inputs).items():
        frame[column] = value
    frame["seconds"] = time.time() - start
    write_parquet(frame, out)
    return frame
