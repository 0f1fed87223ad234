"""Table I of Mishra and Mehreen ("QUAIL: Quantization Aware Unlearning for Mitigating
Misinformation in LLMs", section V): how much of an unlearned model quantizes to the target's
values under QUAIL's own uniform min-max quantizer (`quantunlearn.quantizers.quail_uniform`).

Over *all* parameters of the two models (V-B: "all model parameters"; embeddings, norms and
lm_head included), compared as stored (bf16 checkpoints in the papers' code):

* weight-change statistics (V-B): the share of weights that are bitwise unchanged, the mean and
  the max of |theta' - theta|;
* bucket overlap (V-A): Overlap = (1/|Theta|) sum_i 1[Q(theta'_i) = Q(theta_i)] at 16, 8 and 4
  bits, with the range taken over all parameters ("global") or per tensor ("tensor-wise"), and
  Table I's bucket size, the global Delta of the target.

Choices the paper leaves open: the rounding is eq. 7's floor(x / Delta + 1/2) (``rounding``;
section III / V-A print floor with bucket midpoints, also available), and both models are put in
the buckets of the *target's* range (``range_from="reference"``: "same bucket" is the same
interval of the real line, the paper's argument; ``"each"`` quantizes each model with its own
range). These differ from the project's own diagnostics (`quantunlearn.evaluation.diagnostics`),
which compare the quantizable Linears under the quantizers the study evaluates.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
import torch

from quantunlearn.evaluation.diagnostics import write_cell_frame
from quantunlearn.quantizers.quail_uniform import GRANULARITIES, grid_of, quantize

RANGES_FROM = ("reference", "each")
TABLE_ONE_BITS = (16, 8, 4)


def _common_keys(ref: Mapping[str, torch.Tensor], new: Mapping[str, torch.Tensor]) -> list[str]:
    """The floating-point tensors of ``ref``, all present in ``new`` with the same shapes."""
    keys = [k for k, v in ref.items() if torch.is_floating_point(v)]
    missing = [k for k in keys if k not in new]
    if missing:
        raise ValueError(f"the unlearned model lacks {len(missing)} tensors, e.g. {missing[:3]}")
    for k in keys:
        if ref[k].shape != new[k].shape:
            raise ValueError(f"{k}: shapes differ, {tuple(ref[k].shape)} vs {tuple(new[k].shape)}")
    if not keys:
        raise ValueError("no floating-point tensors to compare")
    return keys


def weight_change_stats(ref: Mapping, new: Mapping) -> dict:
    """Section V-B: count, share bitwise unchanged (in the stored dtype), mean and max
    |theta' - theta| (the difference taken in float64, so bf16 weights compare exactly)."""
    keys = _common_keys(ref, new)
    n = unchanged = 0
    total = biggest = 0.0
    for k in keys:
        a, b = ref[k].detach(), new[k].detach()
        n += a.numel()
        same = (a == b) if a.dtype == b.dtype else (a.double() == b.double())
        unchanged += int(same.sum())
        d = (b.double() - a.double()).abs()
        total += float(d.sum())
        biggest = max(biggest, float(d.max()))
    return {"n_weights": n, "share_bitwise_unchanged": unchanged / n,
            "mean_abs_change": total / n, "max_abs_change": biggest}  # fmt: skip


def bucket_overlap(
    ref: Mapping,
    new: Mapping,
    bits: int,
    granularity: str = "global",
    rounding: str = "nearest",
    range_from: str = "reference",
) -> dict:
    """Section V-A's Overlap at ``bits``: overlap (share of equal codes), n_same, n_weights and
    ``step``: the global Delta of ``ref`` (Table I's bucket size) for ``global``, the
    weight-weighted mean of the per-tensor steps for ``tensor``."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if range_from not in RANGES_FROM:
        raise ValueError(f"range_from must be one of {RANGES_FROM}, got {range_from!r}")
    keys = _common_keys(ref, new)
    glob = grid_of((ref[k] for k in keys), bits)
    glob_new = glob if range_from == "reference" else grid_of((new[k] for k in keys), bits)
    n = same = 0
    step_sum = 0.0
    for k in keys:
        g_ref, g_new = glob, glob_new
        if granularity == "tensor":
            g_ref = grid_of([ref[k]], bits)
            g_new = g_ref if range_from == "reference" else grid_of([new[k]], bits)
        codes_ref = quantize(ref[k], g_ref, rounding)[0]
        same += int((codes_ref == quantize(new[k], g_new, rounding)[0]).sum())
        n += codes_ref.numel()
        step_sum += g_ref.step * codes_ref.numel()
    step = glob.step if granularity == "global" else step_sum / n
    return {"bits": bits, "granularity": granularity, "overlap": same / n, "n_same": same,
            "n_weights": n, "step": step}  # fmt: skip


def table_one(ref: Mapping, new: Mapping, bits: Iterable[int] = TABLE_ONE_BITS, **kwargs) -> list:
    """Table I: per bit width, the global bucket size Delta and the global and tensor-wise
    overlap (fractions; the paper prints percentages), with the V-B statistics on every row."""
    stats = weight_change_stats(ref, new)
    rows = []
    for b in bits:
        g = bucket_overlap(ref, new, b, "global", **kwargs)
        t = bucket_overlap(ref, new, b, "tensor", **kwargs)
        rows.append({"bits": b, "bucket_size": g["step"], "global_overlap": g["overlap"],
                     "tensorwise_overlap": t["overlap"], **stats})  # fmt: skip
    return rows


def stored_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Every parameter of a saved model, by name, in its stored dtype (on the CPU)."""
    from transformers import AutoModelForCausalLM

    from quantunlearn.models.loading import check_model_path

    model = AutoModelForCausalLM.from_pretrained(check_model_path(path), dtype="auto")
    return {name: p.detach() for name, p in model.named_parameters()}


def quail_table_run(
    target_path: str | Path,
    unlearned_path: str | Path,
    out: str | Path,
    *,
    cell: dict,
    cell_config: dict,
    rounding: str = "nearest",
    range_from: str = "reference",
    inputs: dict | None = None,
) -> pd.DataFrame:
    """Write Table I of one unlearned run against the target (one row per bit width).
    ``inputs``: role -> {"source", "commit"} of the two models (else the folders')."""
    from quantunlearn.evaluation.cell import local_inputs

    start = time.time()
    inputs = inputs or local_inputs(model=unlearned_path, target=target_path)
    rows = table_one(stored_state(target_path), stored_state(unlearned_path),
                     rounding=rounding, range_from=range_from)  # fmt: skip
    frame = pd.DataFrame(rows)
    frame["rounding"], frame["range_from"] = rounding, range_from
    return write_cell_frame(frame, out, cell, cell_config, start, inputs)
