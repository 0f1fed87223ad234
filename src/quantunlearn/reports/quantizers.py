"""Tables and figures of the quantizer study: Table 2 of Zhang et al., Table I of Mishra and
Mehreen (QUAIL), noflip, and the project's own bucket overlap.

* ``table2``: the layout of Table 2 of Zhang et al. (ICLR 2025): every method at full precision
  and after each 4-bit quantizer of the config (RTN vs AWQ vs GPTQ, plus GGUF/bnb 4-bit).
* ``bit_sweep``: forgetting metrics against the bit width of the RTN sweep (Zhang et al. section 5
  predicts the collapse between 8 and 4 bits), table and figure.
* ``noflip``: for each run and RTN quantizer with a noflip counterfactual: KnowMem_f/VerbMem_f of
  the full-precision model, Q(unlearned), noflip and Q(target) side by side.
* ``overlap``: the project's bucket overlap (`quantunlearn.evaluation.diagnostics`) under each
  evaluated quantizer: per run and quantizer, bit width, step size Delta (median over the
  weights), the pooled overlap (all quantized weights of the model) and the mean per-tensor
  overlap, plus the change-to-half-step ratios; figures of the layer-wise overlap per bit width
  (the layout of Mishra and Mehreen's figure 1) and a histogram of per-tensor overlap (figures
  3-5).
* ``quail_table1``: Table I of Mishra and Mehreen as the paper defines it
  (`quantunlearn.evaluation.quail_table`): QUAIL's own min-max quantizer over all parameters at
  16, 8 and 4 bits, global and tensor-wise range, with the weight-change statistics of V-B.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from quantunlearn.io import read_parquet
from quantunlearn.quantizers import FULL_PRECISION, FullPrecision, parse_quantizer
from quantunlearn.quantizers.bnb import BitsAndBytes
from quantunlearn.quantizers.rtn import RTN
from quantunlearn.reports.cell_files import MUSE, layout_metric_files, layouts
from quantunlearn.reports.cells import REGULARIZED, build_table1, read_cells
from quantunlearn.reports.render import (
    empty_figure,
    label_keys,
    pyplot,
    row_label,
    save_figure,
    write_report_table,
)
from quantunlearn.reports.table1 import write_table
from quantunlearn.unlearning.methods import REFERENCES, TARGET

#: The files this report writes (relative to the tables folder), declared for its rule.
FILES = (
    *(f"table2.{ext}" for ext in ("md", "csv", "parquet")),
    *(f"bit_sweep.{ext}" for ext in ("md", "csv", "parquet", "png", "svg")),
    *(f"noflip.{ext}" for ext in ("md", "csv", "parquet")),
    *(f"overlap.{ext}" for ext in ("md", "csv", "parquet")),
    *(f"overlap_{fig}.{ext}" for fig in ("layers", "hist") for ext in ("png", "svg")),
    *(f"quail_table1.{ext}" for ext in ("md", "csv", "parquet")),
)

OVERLAP_COLUMNS = {
    "label": "Run",
    "quant": "Quantizer",
    "bits": "Bits",
    "step": "Step Δ (median)",
    "pooled_overlap": "Pooled overlap %",
    "mean_tensor_overlap": "Mean per-tensor overlap %",
    "overlap_within_half_step": "|ΔQ| < Δ/2 %",
    "mean_change_to_half_step": "mean |Δw|/(Δ/2)",
    "max_change_to_half_step": "max |Δw|/(Δ/2)",
    "share_beyond_half_step": "|Δw| > Δ/2 %",
}


def four_bit_quantizers(quantizers: Sequence[str]) -> list[str]:
    """The config's 4-bit quantizers (Table 2 columns), noflip counterfactuals excluded."""
    return [
        name
        for name in quantizers
        if (q := parse_quantizer(name)).bits == 4 and not q.counterfactual
    ]


def rtn_sweep(quantizers: Sequence[str]) -> pd.DataFrame:
    """The RTN quantizers of the config as (quant, bits, grouping) rows, by grouping and bits."""
    rows = []
    for name in quantizers:
        q = parse_quantizer(name)
        if isinstance(q, RTN):
            grouping = "per channel" if q.group_size is None else f"g{q.group_size}"
            rows.append({"quant": name, "bits": q.bits, "grouping": grouping})
    return pd.DataFrame(rows, columns=["quant", "bits", "grouping"])


# --------------------------------------------------------------------------- metrics tables


def bit_sweep_table(table: pd.DataFrame, quantizers: Sequence[str]) -> pd.DataFrame:
    """Mean forget/retain metrics per (benchmark, group, weight dtype, grouping, bits).

    group: target, retrain, or "regularized" (mean over the regularized runs); "none" is
    listed as bits 32.
    """
    sweep = rtn_sweep(quantizers)
    if sweep.empty:
        return pd.DataFrame()
    rows = []
    for grouping, part in sweep.groupby("grouping", sort=False):
        quants = dict(zip(part["quant"], part["bits"], strict=True)) | {FULL_PRECISION: 32}
        sel = table[table["quant"].isin(quants)].copy()
        sel["bits"] = sel["quant"].map(quants)
        sel["grouping"] = grouping
        sel["group"] = np.where(
            sel["method"].isin(REGULARIZED), "regularized", sel["method"].astype(str)
        )
        sel = sel[sel["group"].isin([*REFERENCES, "regularized"])]
        sel["weight_dtype"] = (
            sel["weight_dtype"].astype(object).where(sel["group"] == "regularized", "-")
        )
        keys = ["benchmark", "group", "weight_dtype", "grouping", "bits"]
        agg = sel.groupby(keys, sort=False)[["verbmem_f", "knowmem_f", "knowmem_r"]].mean()
        agg["n_runs"] = sel.groupby(keys, sort=False)["run"].nunique()
        rows.append(agg.reset_index())
    return pd.concat(rows, ignore_index=True).sort_values(
        ["benchmark", "group", "weight_dtype", "grouping", "bits"], ascending=[1, 1, 1, 1, 0]
    )


def plot_bit_sweep(sweep: pd.DataFrame, png: Path, svg: Path) -> None:
    """KnowMem_f and VerbMem_f against bit width (32 = full precision), a line per series."""
    if sweep.empty:
        empty_figure(png, svg, "no RTN bit sweep in this config")
        return
    plt = pyplot()
    metrics = [
        ("knowmem_f", "KnowMem_f ↓"),
        ("verbmem_f", "VerbMem_f ↓"),
        ("knowmem_r", "KnowMem_r ↑"),
    ]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, (metric, title) in zip(axes[0], metrics, strict=True):
        for key, part in sweep.groupby(["benchmark", "group", "weight_dtype", "grouping"]):
            part = part.sort_values("bits")
            bench, group, dtype, grouping = key
            label = f"{group}" + (f" {dtype}" if dtype != "-" else "") + f", {grouping}"
            if sweep["benchmark"].nunique() > 1:
                label = f"{bench}: {label}"
            style = "--" if group in REFERENCES else "-"
            x = np.log2(part["bits"].to_numpy(dtype=float))
            ax.plot(x, part[metric], style, marker="o", label=label)
        ticks = sorted(set(sweep["bits"]))
        ax.set_xticks(np.log2(ticks), [("fp" if b == 32 else str(b)) for b in ticks])
        ax.set_xlabel("weight bits (RTN, eq. 2)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
        "Forgetting against bit width (Zhang et al. §5: collapse expected between 8 and 4)"
    )
    fig.tight_layout()
    save_figure(fig, png, svg)


def noflip_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per run and noflip quantizer: metric at fp, Q(unlearned), noflip, Q(target)."""
    quants = [q for q in table["quant"].unique() if parse_quantizer(q).counterfactual]
    rows = []
    keys = label_keys(table)
    for quant in quants:
        base = parse_quantizer(quant).diagnosed_as.name
        for (bench, run), part in table.groupby(["benchmark", "run"], sort=False):
            if quant not in set(part["quant"]):
                continue
            by_q = part.set_index("quant")
            target = table[(table["benchmark"] == bench) & (table["method"] == TARGET)]
            target = target.set_index("quant")
            first = part.iloc[0]
            row = {
                "benchmark": bench,
                "run": run,
                "label": row_label(first.to_dict() | {"quant": FULL_PRECISION}, keys),
            }
            row["method"], row["weight_dtype"], row["quant"] = (
                first["method"],
                first["weight_dtype"],
                base,
            )
            for metric in ("knowmem_f", "verbmem_f", "knowmem_r"):
                row[f"{metric}_fp"] = by_q[metric].get(FULL_PRECISION, np.nan)
                row[f"{metric}_q"] = by_q[metric].get(base, np.nan)
                row[f"{metric}_noflip"] = by_q[metric].get(quant, np.nan)
                row[f"{metric}_target_q"] = target[metric].get(base, np.nan)
            rows.append(row)
    return pd.DataFrame(rows)


NOFLIP_HEADERS = {
    "label": "Run",
    "quant": "Q",
    "knowmem_f_fp": "KnowMem_f fp",
    "knowmem_f_q": "KnowMem_f Q",
    "knowmem_f_noflip": "KnowMem_f noflip",
    "knowmem_f_target_q": "KnowMem_f Q(target)",
    "verbmem_f_fp": "VerbMem_f fp",
    "verbmem_f_q": "VerbMem_f Q",
    "verbmem_f_noflip": "VerbMem_f noflip",
    "verbmem_f_target_q": "VerbMem_f Q(target)",
}
NOFLIP_NOTE = (
    "noflip = the unlearned model quantized with its own RTN step but every integer code forced "
    "back to the quantized target's code (unquantized embeddings, norms and lm_head stay the "
    "unlearned model's). Reading: if Q ≈ fp (forgetting survives quantization) while noflip ≈ "
    "Q(target), the forgetting lives in the few codes that flipped; if Q ≈ Q(target), the codes "
    "did not flip and quantization undid the unlearning (the paper's mechanism); the gap "
    "noflip − Q(target) is what the unquantized parameters and the changed steps carry."
)


# --------------------------------------------------------------------------- diagnostics


def read_diagnostics(paths: Sequence[str | Path]) -> pd.DataFrame:
    """The diagnostics files concatenated (files written before the whole-model level was
    renamed "pooled" call it "global")."""
    frames = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"diagnostics file {path} does not exist")
        frames.append(read_parquet(path, "diagnostics file"))
    if not frames:
        return pd.DataFrame()
    diag = pd.concat(frames, ignore_index=True)
    diag["level"] = diag["level"].replace({"global": "pooled"})
    return diag


def overlap_table(diag: pd.DataFrame, quant_order: Sequence[str]) -> pd.DataFrame:
    """The project's bucket overlap per run and quantizer (pair target_vs_unlearned)."""
    if diag.empty:
        return pd.DataFrame(columns=["benchmark", "run", "method", *OVERLAP_COLUMNS])
    pair = diag[diag["pair"] == "target_vs_unlearned"]
    glob = pair[pair["level"] == "pooled"].copy()
    tensors = pair[pair["level"] == "tensor"]
    tensorwise = tensors.groupby(["benchmark", "run", "quant"])["overlap"].mean()
    glob = glob.set_index(["benchmark", "run", "quant"])
    glob["mean_tensor_overlap"] = tensorwise * 100
    glob = glob.reset_index()
    glob["pooled_overlap"] = glob["overlap"] * 100
    glob["overlap_within_half_step"] = glob["overlap_within_half_step"] * 100
    glob["share_beyond_half_step"] = glob["share_beyond_half_step"] * 100
    glob["step"] = glob["half_step_median"] * 2
    keys = label_keys(glob) if "weight_dtype" in glob else []
    glob["label"] = [
        row_label(r.to_dict() | {"quant": FULL_PRECISION}, keys) for _, r in glob.iterrows()
    ]
    order = {q: i for i, q in enumerate(quant_order)}
    glob["_q"] = glob["quant"].map(order).fillna(len(order))
    glob = glob.sort_values(["benchmark", "method", "run", "_q"], kind="mergesort")
    cols = ["benchmark", "run", "method", "weight_dtype", *OVERLAP_COLUMNS]
    return glob.reindex(columns=cols).reset_index(drop=True)


def _sweep_rows(diag: pd.DataFrame) -> pd.DataFrame:
    """Diagnostics rows of RTN quantizers, with bits, regularized runs only."""
    if diag.empty:
        return diag
    is_rtn = diag["quant"].map(lambda q: isinstance(parse_quantizer(q), RTN))
    rows = diag[is_rtn & diag["method"].isin(REGULARIZED)]
    return rows[rows["pair"] == "target_vs_unlearned"]


def plot_layer_overlap(diag: pd.DataFrame, png: Path, svg: Path) -> None:
    """Layer-wise overlap per bit width (Mishra and Mehreen figure 1): mean over the regularized
    runs, one panel per weight dtype, one line per RTN quantizer."""
    rows = _sweep_rows(diag)
    rows = rows[rows["level"] == "layer"] if not rows.empty else rows
    if rows.empty:
        empty_figure(png, svg, "no RTN diagnostics of regularized runs")
        return
    plt = pyplot()
    dtypes = sorted(rows["weight_dtype"].astype(str).unique())
    fig, axes = plt.subplots(1, len(dtypes), figsize=(5.5 * len(dtypes), 4), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes, strict=True):
        part = rows[rows["weight_dtype"].astype(str) == dtype]
        means = part.groupby(["quant", "bits", "layer"])["overlap"].mean().reset_index()
        for (quant, _bits), line in sorted(
            means.groupby(["quant", "bits"]), key=lambda g: -g[0][1]
        ):
            ax.plot(line["layer"], line["overlap"] * 100, marker="o", label=quant)
        ax.set_xlabel("decoder layer")
        ax.set_ylabel("bucket overlap with the target (%)")
        ax.set_title(f"{dtype} weights (mean over regularized runs)")
        ax.set_xticks(sorted(means["layer"].unique()))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Layer-wise bucket overlap per bit width (QUAIL Fig. 1 layout)")
    fig.tight_layout()
    save_figure(fig, png, svg)


def plot_tensor_histogram(diag: pd.DataFrame, png: Path, svg: Path) -> None:
    """Histogram of per-tensor overlap per bit width (Mishra and Mehreen figures 3-5), pooled over
    the regularized runs' tensors; one panel per RTN quantizer."""
    rows = _sweep_rows(diag)
    rows = rows[rows["level"] == "tensor"] if not rows.empty else rows
    if rows.empty:
        empty_figure(png, svg, "no RTN diagnostics of regularized runs")
        return
    plt = pyplot()
    quants = sorted(rows["quant"].unique(), key=lambda q: -parse_quantizer(q).bits)
    fig, axes = plt.subplots(1, len(quants), figsize=(3.6 * len(quants), 3.4), squeeze=False)
    for ax, quant in zip(axes[0], quants, strict=True):
        values = rows[rows["quant"] == quant]["overlap"] * 100
        for dtype, part in rows[rows["quant"] == quant].groupby(rows["weight_dtype"].astype(str)):
            ax.hist(part["overlap"] * 100, bins=20, alpha=0.6, label=dtype)
        ax.set_title(f"{quant} (median {values.median():.2f}%)", fontsize=9)
        ax.set_xlabel("per-tensor overlap (%)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("tensors")
    fig.suptitle("Per-tensor bucket overlap with the target (QUAIL Figs. 3-5 layout)")
    fig.tight_layout()
    save_figure(fig, png, svg)


# --------------------------------------------------------------------------- entry point


BIT_SWEEP_HEADERS = {
    "benchmark": "Benchmark",
    "group": "Models",
    "weight_dtype": "Weights",
    "grouping": "RTN grouping",
    "bits": "Bits",
    "knowmem_f": "KnowMem_f ↓",
    "verbmem_f": "VerbMem_f ↓",
    "knowmem_r": "KnowMem_r ↑",
    "n_runs": "Runs",
}
BIT_SWEEP_NOTE = (
    "Bits 32 = full precision; regularized = mean over the regularized runs present "
    "(GA_GDR, GA_KLR, NPO_GDR, NPO_KLR), per weight dtype."
)
OVERLAP_NOTE = (
    "The project's measure, not QUAIL's Table I (quail_table1.md). Overlap = share of "
    "quantized-Linear weights with Q(w') == Q(w) under each evaluated quantizer (RTN: same "
    "integer code; other quantizers: same effective weight). Pooled = over all quantized "
    "weights of the model; per-tensor = the mean of the tensors' overlaps. "
    "|ΔQ| < Δ/2 = share whose quantized values differ by less than half a nominal step "
    "(robust to the per-block scale drift of GGUF/bnb/GPTQ/AWQ). Δ = eq. 2 step of the "
    "target's weights at the quantizer's bit width and group (median over weights)."
)


QUAIL_TABLE_COLUMNS = {
    "label": "Run",
    "bits": "Bit Width",
    "bucket_size": "Bucket Size Δ",
    "global_overlap": "Global Overlap %",
    "tensorwise_overlap": "Tensorwise Overlap %",
    "share_bitwise_unchanged": "Bitwise unchanged %",
    "mean_abs_change": "mean |Δw|",
    "max_abs_change": "max |Δw|",
}
QUAIL_TABLE_NOTE = (
    "Table I of Mishra and Mehreen (section V) as the paper defines it: QUAIL's asymmetric "
    "min-max uniform quantizer, Δ = (w_max − w_min) / 2^N, code floor((w − w_min)/Δ + 1/2) (eq. "
    "7), over all parameters of the model (embeddings, norms and lm_head included), the range "
    "taken over all of them (global) or per tensor (tensorwise); both models are put in the "
    "target's buckets. Bucket Size = the global Δ of the target. Bitwise unchanged, mean and max "
    "|Δw| (section V-B) compare the stored weights."
)


def quail_table(paths: Sequence[str | Path]) -> pd.DataFrame:
    """The QUAIL Table I files of the diagnosed runs, one row per (run, bit width), in %."""
    if not paths:
        return pd.DataFrame(columns=["benchmark", "run", "method", *QUAIL_TABLE_COLUMNS])
    table = pd.concat([read_parquet(p, "QUAIL table file") for p in paths], ignore_index=True)
    for col in ("global_overlap", "tensorwise_overlap", "share_bitwise_unchanged"):
        table[col] = table[col] * 100
    keys = label_keys(table) if "weight_dtype" in table else []
    table["label"] = [
        row_label(r.to_dict() | {"quant": FULL_PRECISION}, keys) for _, r in table.iterrows()
    ]
    table = table.sort_values(["benchmark", "method", "run", "bits"], ascending=[1, 1, 1, 0],
                              kind="mergesort")  # fmt: skip
    return table.reindex(columns=["benchmark", "run", "method", *QUAIL_TABLE_COLUMNS])


def make_quant_tables(
    metric_files: Sequence[str | Path],
    diagnostic_files: Sequence[str | Path],
    out_dir: str | Path,
    quantizers: Sequence[str],
    quail_table_files: Sequence[str | Path] = (),
) -> None:
    """Write table2, bit_sweep, noflip, overlap, quail_table1 (.md/.csv/.parquet) and the figures
    bit_sweep, overlap_layers, overlap_hist (.png/.svg) into out_dir."""
    out = Path(out_dir)
    table = build_table1(read_cells(metric_files), list(quantizers))
    four = four_bit_quantizers(quantizers)
    write_table(
        table[table["quant"].isin([FULL_PRECISION, *four])].reset_index(drop=True),
        out / "table2",
        "Table 2: full precision against every 4-bit quantizer",
        "Layout of Table 2 of Zhang et al. (ICLR 2025): RTN vs AWQ vs GPTQ (and GGUF/bnb) at 4 "
        f"bits. Quantizers: {', '.join(four) or 'none at 4 bits in this config'}.",
    )
    sweep = bit_sweep_table(table, quantizers)
    write_report_table(
        sweep, out / "bit_sweep", "Forgetting against RTN bit width", BIT_SWEEP_NOTE,
        BIT_SWEEP_HEADERS, "No RTN quantizers in this config.",
    )  # fmt: skip
    plot_bit_sweep(sweep, out / "bit_sweep.png", out / "bit_sweep.svg")
    write_report_table(
        noflip_table(table), out / "noflip", "The noflip counterfactual", NOFLIP_NOTE,
        NOFLIP_HEADERS, "No noflip quantizer in this config.",
    )  # fmt: skip
    diag = read_diagnostics(diagnostic_files)
    write_report_table(
        overlap_table(diag, list(quantizers)),
        out / "overlap",
        "Bucket overlap between each unlearned model and the target under the evaluated quantizers",
        OVERLAP_NOTE,
        OVERLAP_COLUMNS,
        "No diagnostics in this config (set `diagnostics: true`).",
        floatfmt=".4g",
    )
    write_report_table(
        quail_table(quail_table_files),
        out / "quail_table1",
        "QUAIL's Table I: weight change and bucket overlap under QUAIL's quantizer",
        QUAIL_TABLE_NOTE,
        QUAIL_TABLE_COLUMNS,
        "No QUAIL Table I in this config (set `diagnostics: {quail_table: true}`).",
        floatfmt=".4g",
    )
    plot_layer_overlap(diag, out / "overlap_layers.png", out / "overlap_layers.svg")
    plot_tensor_histogram(diag, out / "overlap_hist.png", out / "overlap_hist.svg")


# --------------------------------------------------------------------------- its REPORTS row


def quail_table_file(results: str | Path, bench: str, run: str) -> str:
    """Where the quail_table job writes QUAIL's Table I of one run (workflow/rules/quantize.smk)."""
    return str(Path(results) / "quail_table1" / bench / f"{run}.parquet")


def beyond_default(study) -> bool:
    """Whether the study has diagnostics or a quantizer beyond the default study's (GPTQ, AWQ,
    GGUF, noflip, or three or more RTN widths): what these tables are about."""
    quantizers = [parse_quantizer(q) for q in study.quantizers]
    rtn_bits = {q.bits for q in quantizers if isinstance(q, RTN)}
    default = (FullPrecision, RTN, BitsAndBytes)
    beyond = any(not isinstance(q, default) for q in quantizers)
    return bool(study.config.get("diagnostics")) or beyond or len(rtn_bits) >= 3


def applies(study) -> bool:
    """Table 2, bit sweep, noflip and overlap tables: a MUSE-layout study `beyond_default`."""
    return beyond_default(study) and MUSE in layouts(study)


def needs(study) -> dict[str, list[str]]:
    """The MUSE-layout cells' metric files, every weight diagnostics file, and QUAIL's Table I
    of every diagnosed run (``diagnostics.quail_table``)."""
    spec = study.config.get("diagnostics")
    runs = study.diagnosed_runs().itertuples() if spec and spec["quail_table"] else ()
    return {
        "metrics": layout_metric_files(study, MUSE),
        "diagnostics": [
            study.diagnostic_file(c.benchmark, c.run, c.quant) for c in study.diagnostic_cells()
        ],
        "quail_table": [quail_table_file(study.results, r.benchmark, r.run) for r in runs],
    }


def make(study, inputs: dict[str, list[str]], out_dir: Path) -> None:
    """The quantizer tables and figures of ``inputs`` (`needs`) into ``out_dir``."""
    make_quant_tables(
        inputs["metrics"], inputs["diagnostics"], out_dir, study.quantizers, inputs["quail_table"]
    )
