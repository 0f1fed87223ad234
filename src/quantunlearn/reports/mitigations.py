"""The papers' result tables for the quantization-robust methods, and one summary of them all.

All are built from the same per-cell metric files as Table 1 (`reports.cells.read_cells` and
`reports.cells.build_table1`); the reported cell of every (benchmark, method, weight_dtype) is
the one the config's selection rule picks (`quantunlearn.reports.selection`), and the whole grid
is written too.

- ``grid``: every cell of every run, with a ``selected`` column.
- ``table_sure`` (Zhang et al. Table 3 layout; Table 8 on NEWS is the same without the 4-bit
  base row): the target, then per regularized method the method, + 4 bit, + SURE, + SURE + 4
  bit, with the utility columns (Gen, Tru, Fac, Flu) when the study measures them.
- ``table_sure_gamma``, ``table_sure_s``, ``table_rmu``: Zhang et al. Tables 9, 10 and 11
  (`quantunlearn.reports.appendix`).
- ``table_lora`` (Abitante et al. Table II layout): per regularized method, full fine-tuning vs
  LoRA, each in full precision and at 4 bits (after the target).
- ``table_quail`` (Mishra and Mehreen Table II layout): the base method and its QUAIL variant over
  their whole grid (alpha, gamma, Delta_q), each in full precision and at 4 bits.
- ``summary``: per selected run, what 4-bit quantization gives back (KnowMem_f and VerbMem_f at
  4 bits minus full precision) next to the utility (KnowMem_r), and ``summary.png/svg``, the same
  as a scatter plot.

"4 bit" is the config's ``selection.low_bit_quantizer`` (default: the first 4-bit quantizer of
the config's list), except in ``table_lora`` where the study holds ``bnb_nf4_bf16``: Abitante et
al.'s format (bitsandbytes NF4 with bf16 compute), so each paper's table shows its own format.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from quantunlearn.evaluation.metrics import headers
from quantunlearn.quantizers import FULL_PRECISION
from quantunlearn.reports import appendix
from quantunlearn.reports.cell_files import MUSE, layout_metric_files, low_bit
from quantunlearn.reports.cells import (
    REGULARIZED,
    build_table1,
    cell_of,
    metric_columns,
    metric_headers,
    read_cells,
    value_columns,
)
from quantunlearn.reports.render import (
    NA_MARK,
    pyplot,
    row_label,
    save_figure,
    to_markdown,
    write_frames,
    write_text,
)
from quantunlearn.reports.selection import mark_selected, select_runs
from quantunlearn.reports.table1 import join_utility_columns
from quantunlearn.study.grid import is_external
from quantunlearn.unlearning import families
from quantunlearn.unlearning.families import Family
from quantunlearn.unlearning.hyperparameters import BASE_HYPER_COLUMNS, HYPER_COLUMNS
from quantunlearn.unlearning.methods import METHODS, REFERENCES, TARGET

#: The files this report writes (relative to the tables folder), declared for its rule.
FILES = (
    *(
        f"{stem}.{ext}"
        for stem in ("grid", "selection", "table_sure", "table_lora", "table_quail", "summary")
        for ext in ("md", "csv", "parquet")
    ),
    "summary.png",
    "summary.svg",
    *appendix.FILES,
)
PAIR_KEYS = ["benchmark", "weight_dtype", "base", "variant", "precision", "method", "run", "quant"]
SUMMARY_COLUMNS = [
    "benchmark",
    "method",
    "family",
    "weight_dtype",
    "run",
    "knowmem_f",
    "knowmem_f_low",
    "d_knowmem_f",
    "verbmem_f",
    "verbmem_f_low",
    "d_verbmem_f",
    "knowmem_r",
    "knowmem_r_low",
    "meets_threshold",
]


#: the summary's family labels of the rows that are not unlearning methods of the DAG
REFERENCE, EXTERNAL = "reference", "external"
#: the summary figure's colour of each family (the others: grey)
COLOURS = {
    REFERENCE: "black",
    families.PLAIN.name: "tab:blue",
    families.SURE.name: "tab:orange",
    families.QUAIL.name: "tab:green",
    families.LORA.name: "tab:red",
    families.RMU.name: "tab:purple",
}


def family(method: str) -> str:
    """The summary's family label of a method (`Family.name`), or reference / external."""
    if is_external(method):
        return EXTERNAL
    return METHODS[method].family.name if method in METHODS else REFERENCE


def in_family(method: str, kind: Family) -> bool:
    """Whether ``method`` is an unlearning method of the family ``kind``."""
    return method in METHODS and METHODS[method].family is kind


_cell = cell_of


def paired_table(
    table: pd.DataFrame,
    selected: pd.DataFrame,
    variant_family: Family,
    low: str,
    labels: tuple[str, str],
) -> pd.DataFrame:
    """Base method vs its variant of a family (SURE, LoRA), each at full precision and `low`.

    The full-precision target first in each (benchmark, weight_dtype) (the papers' tables start
    with it), then one group of four rows per regularized base whose variant was run; the base's
    rows are NaN when the base itself is not in the grid. `labels` name the base and variant rows
    (Zhang et al.: "" / "+ SURE"; Abitante et al.: "Full-FT" / "LoRA"). Columns: the keys, the
    MUSE metrics and the utility metrics the table holds (Zhang et al. Tables 3 and 8).
    """
    cols = value_columns(table)
    rows, groups = [], set()
    for _, sel in selected.iterrows():
        method = sel["method"]
        if not in_family(method, variant_family) or METHODS[method].base not in REGULARIZED:
            continue
        if (sel["benchmark"], sel["weight_dtype"]) not in groups:
            groups.add((sel["benchmark"], sel["weight_dtype"]))
            cell = _cell(table, sel["benchmark"], appendix.TARGET_RUN, FULL_PRECISION)
            values = [cell[m] if cell is not None else np.nan for m in cols]
            rows.append((sel["benchmark"], sel["weight_dtype"], "", "Target", "full", TARGET)
                        + (appendix.TARGET_RUN, FULL_PRECISION, *values))  # fmt: skip
        base = METHODS[method].base
        base_sel = selected[
            (selected["benchmark"] == sel["benchmark"])
            & (selected["method"] == base)
            & (selected["weight_dtype"] == sel["weight_dtype"])
        ]
        for variant, name, run in (
            (labels[0], base, base_sel["run"].iloc[0] if len(base_sel) else None),
            (labels[1], method, sel["run"]),
        ):
            for precision, quant in (("full", FULL_PRECISION), ("4 bit", low)):
                cell = _cell(table, sel["benchmark"], run, quant) if run else None
                values = [cell[m] if cell is not None else np.nan for m in cols]
                rows.append(
                    (sel["benchmark"], sel["weight_dtype"], base, variant, precision, name)
                    + (run, quant, *values)
                )
    out = pd.DataFrame(rows, columns=[*PAIR_KEYS, *cols])
    for col in cols:
        out[col] = out[col].astype("float64")
    return out


def quail_table(table: pd.DataFrame, low: str) -> pd.DataFrame:
    """Every cell of each QUAIL method and of its base, at full precision and `low`."""
    quail = [m for m in table["method"].unique() if in_family(m, families.QUAIL)]
    bases = {METHODS[m].base for m in quail}
    keep = table["method"].isin([*quail, *bases]) & table["quant"].isin([FULL_PRECISION, low])
    cols = [
        "benchmark",
        "weight_dtype",
        "method",
        "lr",
        "alpha",
        "quail_gamma",
        "quail_delta",
        "quant",
        *metric_columns(),
        "run",
    ]
    out = table.loc[keep, cols].copy()
    out = out.sort_values(
        ["benchmark", "weight_dtype", "method", "lr", "alpha", "quail_gamma", "quail_delta"],
        na_position="first",
        kind="mergesort",
    )
    return out.reset_index(drop=True)


def summary_table(table: pd.DataFrame, selected: pd.DataFrame, low: str) -> pd.DataFrame:
    """Per selected run (and the references): 4-bit minus full precision next to KnowMem_r."""
    rows = []
    refs = table[table["method"].isin(list(REFERENCES))][["benchmark", "method", "run"]]
    refs = refs.drop_duplicates().assign(weight_dtype=NA_MARK, meets_threshold=pd.NA)
    picks = pd.concat([refs, selected], ignore_index=True)
    for _, sel in picks.iterrows():
        full = _cell(table, sel["benchmark"], sel["run"], FULL_PRECISION)
        four = _cell(table, sel["benchmark"], sel["run"], low)
        if full is None:
            continue

        def at(cell, metric):
            return float(cell[metric]) if cell is not None else np.nan

        rows.append(
            {
                "benchmark": sel["benchmark"],
                "method": sel["method"],
                "family": family(sel["method"]),
                "weight_dtype": sel["weight_dtype"],
                "run": sel["run"],
                "knowmem_f": at(full, "knowmem_f"),
                "knowmem_f_low": at(four, "knowmem_f"),
                "d_knowmem_f": at(four, "knowmem_f") - at(full, "knowmem_f"),
                "verbmem_f": at(full, "verbmem_f"),
                "verbmem_f_low": at(four, "verbmem_f"),
                "d_verbmem_f": at(four, "verbmem_f") - at(full, "verbmem_f"),
                "knowmem_r": at(full, "knowmem_r"),
                "knowmem_r_low": at(four, "knowmem_r"),
                "meets_threshold": sel["meets_threshold"],
            }
        )
    out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    out["meets_threshold"] = out["meets_threshold"].astype("boolean")
    return out


# --------------------------------------------------------------------------- Markdown


def _section(title: str, notes: str, frames: list[tuple[str, pd.DataFrame, dict]]) -> str:
    out = [f"# {title}", ""]
    if notes.strip():
        out += [notes.strip(), ""]
    if not frames:
        out += ["No run of this kind in the config.", ""]
    for heading, frame, columns in frames:
        out += [f"## {heading}", "", to_markdown(frame, columns)]
    return "\n".join(out) + "\n"


def _by_group(frame: pd.DataFrame, keys: Sequence[str]) -> list[tuple[str, pd.DataFrame]]:
    if frame.empty:
        return []
    return [
        (" · ".join(str(k) for k in key), part)
        for key, part in frame.groupby(list(keys), sort=False, dropna=False)
    ]


def _write_pairs(frame: pd.DataFrame, stem: Path, title: str, notes: str) -> None:
    """A paired table (base method vs its SURE / LoRA variant), one table per weight dtype."""
    shown = frame.assign(
        label=[
            f"{r.base} {r.variant}".strip() + ("" if r.precision == "full" else " + Quan. (4 bit)")
            for r in frame.itertuples()
        ]
    )
    cols = {"label": "Method", **headers(value_columns(frame))}
    _write_grouped(frame, stem, title, notes, cols, ["benchmark", "weight_dtype"], shown)


# --------------------------------------------------------------------------- figure


def plot_summary(summary: pd.DataFrame, png: Path, svg: Path, low: str) -> None:
    """Scatter: utility (KnowMem_r, full precision) vs knowledge given back at 4 bits."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), squeeze=False)
    for ax, metric, name in (
        (axes[0, 0], "d_knowmem_f", "KnowMem_f"),
        (axes[0, 1], "d_verbmem_f", "VerbMem_f"),
    ):
        for fam, part in summary.groupby("family", sort=False):
            ax.scatter(part["knowmem_r"], part[metric], c=COLOURS.get(fam, "grey"), label=fam, s=30)
            for r in part.itertuples():
                text = r.method if r.weight_dtype == NA_MARK else f"{r.method} ({r.weight_dtype})"
                ax.annotate(
                    text,
                    (r.knowmem_r, getattr(r, metric)),
                    fontsize=6,
                    xytext=(3, 2),
                    textcoords="offset points",
                )
        ax.axhline(0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlabel("KnowMem_r, full precision (utility ↑)")
        # two lines: one line of this length was cut off at the figure's edge
        ax.set_ylabel(f"Δ {name} = {low} − full precision\n(↑ = knowledge comes back)")
        ax.set_title(f"{name} recovered by {low}")
        ax.legend(fontsize=7)
    fig.suptitle("Robustness to 4-bit quantization vs utility, selected cell of each method")
    fig.tight_layout()
    save_figure(fig, png, svg)


# --------------------------------------------------------------------------- entry point


QUAIL_HEADERS = {
    "method": "Method",
    "quant": "Quantizer",
    "lr": "lr",
    "alpha": "α",
    "quail_gamma": "γ",
    "quail_delta": "Δ_q",
    **metric_headers(),
}
SUMMARY_HEADERS = {
    "method": "Method",
    "weight_dtype": "Weights",
    "knowmem_f": "KnowMem_f",
    "d_knowmem_f": "Δ KnowMem_f (4 bit − full) ↓",
    "verbmem_f": "VerbMem_f",
    "d_verbmem_f": "Δ VerbMem_f (4 bit − full) ↓",
    "knowmem_r": "KnowMem_r ↑",
    "meets_threshold": "Meets threshold",
}


#: The "4 bit" of the LoRA table where the study holds it: Abitante et al.'s format (NF4 with bf16
#: compute); other studies show their selection.low_bit_quantizer there too.
LORA_LOW_BIT = "bnb_nf4_bf16"


def rule_text(selection: dict, low: str) -> str:
    return (
        f"Selection rule `{selection['rule']}`: per (benchmark, method, weights) the run with the "
        f"highest full-precision {selection['utility_metric']} among those whose full-precision "
        f"{selection['forget_metric']} ≤ {selection['threshold']:g}; if none qualifies, the run "
        f"with the lowest {selection['forget_metric']} (meets_threshold = False). "
        f"'4 bit' is {low}."
    )


def _write_grouped(frame, stem: Path, title, notes, headers, keys, shown=None) -> None:
    """stem.parquet/.csv of ``frame`` and stem.md: one pipe table per group of ``keys`` (of
    ``shown``, the frame as displayed, when given)."""
    write_frames(frame, stem)
    parts = [(h, p, headers) for h, p in _by_group(frame if shown is None else shown, keys)]
    write_text(stem.with_suffix(".md"), _section(title, notes, parts))


def make_mitigation_tables(
    metric_files: Sequence[str | Path],
    out_dir: Path,
    quant_order: Sequence[str],
    selection: dict,
    low: str,
) -> dict[str, pd.DataFrame]:
    """Metric files -> out_dir/{grid, selection, table_sure, table_lora, table_quail, summary}.

    Each table as .parquet, .csv and .md (atomically), plus summary.png and summary.svg.
    """
    out = Path(out_dir)
    long = read_cells(metric_files)
    table = join_utility_columns(build_table1(long, quant_order), long)
    rule = {k: selection[k] for k in ("threshold", "forget_metric", "utility_metric")}
    selected = select_runs(table, selection["rule"], **rule)
    notes = rule_text(selection, low)
    grid = mark_selected(table, selected)
    shown = grid.assign(label=[row_label(r, _grid_keys(grid)) for _, r in grid.iterrows()])
    grid_headers = {"label": "Run", **metric_headers(), "selected": "Selected"}
    _write_grouped(grid, out / "grid", "Every grid cell", notes, grid_headers, ["benchmark"], shown)
    _write_grouped(
        selected, out / "selection", "Selected runs", notes, list(selected.columns), ["benchmark"]
    )
    sure = paired_table(table, selected, families.SURE, low, ("", "+ SURE"))
    title = "SURE (layout of Zhang et al. Table 3; Table 8 on NEWS lists no 4-bit base row)"
    _write_pairs(sure, out / "table_sure", title, notes)
    appendix.make_appendix_tables(table, selected, out, low, notes)
    lora_low = LORA_LOW_BIT if LORA_LOW_BIT in quant_order else low
    lora = paired_table(table, selected, families.LORA, lora_low, ("Full-FT", "LoRA"))
    title = "LoRA vs full fine-tuning (layout of Abitante et al. Table II)"
    _write_pairs(lora, out / "table_lora", title, rule_text(selection, lora_low))
    quail = quail_table(table, low)
    _write_grouped(
        quail, out / "table_quail", "QUAIL over its grid (layout of Mishra and Mehreen Table II)",
        "Every cell of each QUAIL method and of its base method (not only the selected ones), "
        "as the paper's table lists every (α, γ).",
        QUAIL_HEADERS, ["benchmark", "weight_dtype"],
        quail.assign(lr=[f"{v:g}" for v in quail["lr"]]),  # 1e-05, not 0.0
    )  # fmt: skip
    summary = summary_table(table, selected, low)
    _write_grouped(
        summary, out / "summary", "Knowledge recovered by 4-bit quantization vs utility",
        "Δ = metric of the 4-bit model minus metric of the full-precision model, for the "
        "selected run of each method: a positive Δ is forgotten knowledge that quantization "
        "gives back. " + notes,
        SUMMARY_HEADERS, ["benchmark"],
    )  # fmt: skip
    plot_summary(summary, out / "summary.png", out / "summary.svg", low)
    return {"grid": grid, "selection": selected, "sure": sure, "lora": lora}


def _grid_keys(grid: pd.DataFrame) -> list[str]:
    keys = ["weight_dtype", "lr", "epochs", "alpha"]
    for col in [c for c in HYPER_COLUMNS if c not in BASE_HYPER_COLUMNS]:
        if col in grid and grid[col].notna().any():
            keys.append(col)
    return keys


# --------------------------------------------------------------------------- its REPORTS row


def applies(study) -> bool:
    """A study whose grid holds a method of a family other than `PLAIN` (SURE, QUAIL, LoRA,
    RMU), with a low-bit quantizer to compare against."""
    methods = {c.method for c in study.cells()}
    mitigated = any(m in METHODS and METHODS[m].family is not families.PLAIN for m in methods)
    return mitigated and low_bit(study) is not None


def needs(study) -> dict[str, list[str]]:
    """The metric files of every MUSE-layout cell."""
    return {"metrics": layout_metric_files(study, MUSE)}


def make(study, inputs: dict[str, list[str]], out_dir: Path) -> None:
    """The mitigation tables of ``inputs`` (`needs`) into ``out_dir``."""
    make_mitigation_tables(
        inputs["metrics"], out_dir, study.quantizers, study.config["selection"], low_bit(study)
    )
