"""Zhang et al.'s (ICLR 2025) appendix tables of SURE and RMU, in the paper's layouts, each
starting with the full-precision target, with the utility columns (Gen, Tru, Fac, Flu) when the
study measures them:

- ``table_sure_gamma`` (Table 9, appendix H): every SURE cell at full precision, one row per
  saliency percentile x, "X + SURE (γ=Percent.(s, x))" (the paper sweeps x in {50, 90, 95, 99}
  for NPO_GDR and GA_KLR on NEWS);
- ``table_sure_s`` (Table 10, appendix I): per regularized method "X + SURE/S" (every parameter
  trained) and "X + SURE", the selected cells, full precision;
- ``table_rmu`` (Table 11, appendix J): RMU, RMU + Quan., RMU_LAT, RMU_LAT + Quan., the selected
  cells.

"Quan." is the config's low-bit quantizer (``selection.low_bit_quantizer``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from quantunlearn.evaluation.metrics import headers
from quantunlearn.quantizers import FULL_PRECISION
from quantunlearn.reports.cells import REGULARIZED, cell_of, value_columns
from quantunlearn.reports.render import fmt_number, to_markdown, write_frames, write_text
from quantunlearn.study.runs import run_path
from quantunlearn.unlearning.families import RMU, SURE, SURE_S, Family
from quantunlearn.unlearning.methods import METHODS, TARGET

#: The files these tables write (part of the mitigation_tables report).
FILES = tuple(
    f"{stem}.{ext}"
    for stem in ("table_sure_gamma", "table_sure_s", "table_rmu")
    for ext in ("md", "csv", "parquet")
)
KEYS = ["benchmark", "weight_dtype", "label", "method", "run", "quant"]
TARGET_RUN = run_path(TARGET, {})

#: a row of a layout: (label, method, quantizer)
Spec = tuple[str, str, str]


def variant_of(base: str, family: Family) -> str | None:
    """The method of ``family`` (SURE, SURE/S) built on the base method ``base``."""
    found = [m.name for m in METHODS.values() if m.family is family and m.base == base]
    return found[0] if found else None


def _row(table, bench, dtype, label, method, run, quant, cols) -> dict:
    cell = cell_of(table, bench, run, quant) if run else None
    values = {c: (float(cell[c]) if cell is not None else float("nan")) for c in cols}
    return {"benchmark": bench, "weight_dtype": dtype, "label": label, "method": method,
            "run": run, "quant": quant, **values}  # fmt: skip


def layout(
    table: pd.DataFrame, selected: pd.DataFrame, specs: Callable[[dict], list[Spec]]
) -> pd.DataFrame:
    """Per (benchmark, weight dtype) of the selected runs: the target, then the selected cell of
    every row ``specs(chosen)`` gives (chosen: method -> selected run of the group; NaN where a
    row's method was not run); a group without rows is left out."""
    cols = value_columns(table)
    rows = []
    for (bench, dtype), part in selected.groupby(["benchmark", "weight_dtype"], sort=False):
        chosen = dict(zip(part["method"], part["run"], strict=True))
        group = specs(chosen)
        if not group:
            continue
        rows.append(_row(table, bench, dtype, "Target", TARGET, TARGET_RUN, FULL_PRECISION, cols))
        for label, method, quant in group:
            rows.append(_row(table, bench, dtype, label, method, chosen.get(method), quant, cols))
    return pd.DataFrame(rows, columns=[*KEYS, *cols])


def sure_s_table(table: pd.DataFrame, selected: pd.DataFrame) -> pd.DataFrame:
    """Table 10: X + SURE/S next to X + SURE, full precision."""

    def specs(chosen):
        out = []
        for base in REGULARIZED:
            pair = [variant_of(base, SURE_S), variant_of(base, SURE)]
            if pair[0] in chosen:  # the table of SURE/S: its bases only
                out += [
                    (f"{base} + SURE/S", pair[0], FULL_PRECISION),
                    (f"{base} + SURE", pair[1], FULL_PRECISION),
                ]
        return out

    return layout(table, selected, specs)


def rmu_table(table: pd.DataFrame, selected: pd.DataFrame, low: str) -> pd.DataFrame:
    """Table 11: the RMU family (RMU and RMU_LAT, in the METHODS table's order), each in full
    precision and at ``low``."""
    rmu = [m.name for m in METHODS.values() if m.family is RMU]

    def specs(chosen):
        if not set(rmu) & set(chosen):
            return []
        return [(name + suffix, name, quant) for name in rmu
                for suffix, quant in (("", FULL_PRECISION), (" + Quan.", low))]  # fmt: skip

    return layout(table, selected, specs)


def gamma_table(table: pd.DataFrame) -> pd.DataFrame:
    """Table 9: every full-precision SURE cell, by method and saliency percentile."""
    cols = value_columns(table)
    sure = table[table["method"].map(lambda m: m in METHODS and METHODS[m].family is SURE)]
    sure = sure[sure["quant"] == FULL_PRECISION]
    rows = []
    for (bench, dtype), part in sure.groupby(["benchmark", "weight_dtype"], sort=False):
        rows.append(_row(table, bench, dtype, "Target", TARGET, TARGET_RUN, FULL_PRECISION, cols))
        part = part.sort_values(["method", "gamma_pct", "run"], kind="mergesort")
        for r in part.itertuples():
            base = METHODS[r.method].base
            label = f"{base} + SURE (γ=Percent.(s, {fmt_number(float(r.gamma_pct))}))"
            rows.append(_row(table, bench, dtype, label, r.method, r.run, FULL_PRECISION, cols))
    return pd.DataFrame(rows, columns=[*KEYS, *cols])


TITLES = {
    "table_sure_gamma": "SURE's saliency percentile (layout of Zhang et al. Table 9)",
    "table_sure_s": "SURE/S: SURE without the saliency map (layout of Zhang et al. Table 10)",
    "table_rmu": "RMU and RMU_LAT (layout of Zhang et al. Table 11)",
}
NOTES = {
    "table_sure_gamma": "Every SURE cell at full precision (all of the grid, not only the "
    "selected ones): γ = Percent.(s, x) is SURE's saliency threshold (gamma_pct). Several rows "
    "of one x differ in another hyperparameter (their runs in the .csv).",
    "table_sure_s": "Full precision, as the paper's Table 10. SURE/S trains every parameter at "
    "SURE's learning rate and retain weights.",
    "table_rmu": "RMU_LAT = RMU trained against a latent adversary (Sheshadri et al. 2024), "
    "docs/seeds.md.",
}


def write_layout(frame: pd.DataFrame, stem: Path, notes: str) -> None:
    """stem.parquet/.csv and stem.md: one pipe table per (benchmark, weight dtype)."""
    write_frames(frame, stem)
    name = stem.name
    text = [f"# {TITLES[name]}", "", NOTES[name], "", notes, ""]
    if frame.empty:
        text += ["No run of this kind in the config.", ""]
    cols = {"label": "Method", **headers(value_columns(frame))}
    for (bench, dtype), part in frame.groupby(["benchmark", "weight_dtype"], sort=False):
        text += [f"## {bench} · {dtype}", "", to_markdown(part, cols)]
    write_text(stem.with_suffix(".md"), "\n".join(text) + "\n")


def make_appendix_tables(
    table: pd.DataFrame, selected: pd.DataFrame, out: Path, low: str, notes: str
) -> None:
    """Tables 9, 10 and 11 of Zhang et al. into ``out`` (.md, .csv, .parquet)."""
    write_layout(gamma_table(table), out / "table_sure_gamma", notes)
    write_layout(sure_s_table(table, selected), out / "table_sure_s", notes)
    write_layout(rmu_table(table, selected, low), out / "table_rmu", notes)
