"""Which cell of a hyperparameter grid the paper-style tables report: the config's selection rule.

The papers pick each method's hyperparameters by grid search (Zhang et al. appendix D; Mishra
and Mehreen section VI-E; Abitante et al. section V). The rule is declared in the config
(``selection``) and applied here, to the full-precision results of every grid cell:

``max_knowmem_r_under_forget_threshold``: per (benchmark, method, weight_dtype), among the runs
whose full-precision ``forget_metric`` (KnowMem_f by default) is at most ``threshold``, take the
one with the highest full-precision ``utility_metric`` (KnowMem_r); ties go to the lower forget
metric, then to the run name (so the choice is deterministic). When no run meets the threshold,
the run with the lowest forget metric is taken (ties: higher utility, then run name) and
flagged ``meets_threshold = False``, so a table never silently reports a cell the rule rejected.

Only the full-precision row decides: selecting on the quantized rows would tune the grid towards
the very quantization robustness the tables measure.
"""

from __future__ import annotations

import pandas as pd

from quantunlearn.quantizers import FULL_PRECISION
from quantunlearn.unlearning.methods import REFERENCES

RULES = ("max_knowmem_r_under_forget_threshold",)
SELECTION_COLUMNS = [
    "benchmark",
    "method",
    "weight_dtype",
    "run",
    "forget_value",
    "utility_value",
    "meets_threshold",
    "n_candidates",
]
GROUP = ["benchmark", "method", "weight_dtype"]


def select_runs(
    table: pd.DataFrame,
    rule: str = "max_knowmem_r_under_forget_threshold",
    *,
    threshold: float,
    forget_metric: str = "knowmem_f",
    utility_metric: str = "knowmem_r",
) -> pd.DataFrame:
    """The selected run of each (benchmark, method, weight_dtype) of a wide Table 1 frame.

    `table` has one row per (benchmark, run, quant) with columns benchmark, method,
    weight_dtype, run, quant and the metric columns (`tables.build_table1`). The references
    (target, retrain) are not selected. Returns SELECTION_COLUMNS, one row per group.
    """
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; known: {RULES}")
    needed = [*GROUP, "run", "quant", forget_metric, utility_metric]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"select_runs: table lacks column(s) {missing}")
    full = table[(table["quant"] == FULL_PRECISION) & ~table["method"].isin(REFERENCES)]
    full = full.assign(weight_dtype=full["weight_dtype"].astype(object).fillna("–"))
    rows = []
    for key, part in full.groupby(GROUP, sort=True, dropna=False):
        part = part.dropna(subset=[forget_metric])
        if part.empty:
            continue
        ok = part[part[forget_metric] <= threshold]
        if len(ok):
            best = ok.sort_values(
                [utility_metric, forget_metric, "run"], ascending=[False, True, True]
            ).iloc[0]
        else:
            best = part.sort_values(
                [forget_metric, utility_metric, "run"], ascending=[True, False, True]
            ).iloc[0]
        rows.append(
            (
                *key,
                best["run"],
                float(best[forget_metric]),
                float(best[utility_metric]),
                bool(len(ok)),
                len(part),
            )
        )
    out = pd.DataFrame(rows, columns=SELECTION_COLUMNS)
    out["meets_threshold"] = out["meets_threshold"].astype(bool)
    out["n_candidates"] = out["n_candidates"].astype("int64")
    return out


def mark_selected(table: pd.DataFrame, selected: pd.DataFrame) -> pd.DataFrame:
    """`table` with a boolean column ``selected``: the row's run is its group's selected run."""
    keys = set(zip(selected["benchmark"], selected["run"], strict=True))
    flags = [(b, r) in keys for b, r in zip(table["benchmark"], table["run"], strict=True)]
    return table.assign(selected=flags)
