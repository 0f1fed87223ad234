"""The scale study: where, as the model grows, does 4-bit quantization start to undo unlearning?

`config/scale.yaml` runs the embedded study once per model size (one synthetic benchmark per
size, each with its own `tiny_model` and a corpus grown with it). This module turns the per-cell
metric files of those benchmarks into one table and one figure.

For an unlearned run u of a benchmark with target t, a forget metric k in {KnowMem_f,
VerbMem_f} and the configured 4-bit quantizer q (``scale.quant``, RTN 4-bit g128 by default):

    removed(k)   = k(t, full precision) - k(u, full precision)      what unlearning took away
    recovered(k) = k(u, q) - k(u, full precision)                   what quantization gave back
    share(k)     = 100 * recovered(k) / removed(k)                  in % of what was removed

share is 100 when 4-bit quantization restores everything unlearning removed (Zhang et al.'s failure
at 7B) and 0 when the forgetting survives. It is left empty (NaN) when unlearning removed less
than `MIN_REMOVED` points: there is nothing to recover (bf16 weights at lr 1e-5 on a small
model, README). A target that does not memorise its forget set (target KnowMem_f or VerbMem_f
below the configured thresholds) is kept in the table with ``memorized = False``, and drawn
with hollow markers: its size says nothing about forgetting.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from quantunlearn.quantizers import FULL_PRECISION
from quantunlearn.reports.cell_files import metric_files
from quantunlearn.reports.cells import REGULARIZED, build_table1, read_cells
from quantunlearn.reports.quantizers import read_diagnostics
from quantunlearn.reports.render import pyplot, save_figure, to_markdown, write_frames, write_text
from quantunlearn.reports.table1 import given_back_pct
from quantunlearn.study.grid import unlearned_here
from quantunlearn.unlearning.methods import TARGET

#: Forget metrics whose recovery the scale table reports.
SCALE_METRICS = ["knowmem_f", "verbmem_f"]
#: Below this many points of forgetting, a recovered share is not computed (it would divide
#: noise by noise).
MIN_REMOVED = 1.0
#: The files this report writes (relative to the tables folder), declared for its rule.
FILES = tuple(f"scale.{ext}" for ext in ("md", "csv", "parquet", "png", "svg"))
SCALE_COLUMNS = [
    "benchmark",
    "n_params",
    "method",
    "weight_dtype",
    "epochs",
    "quant",
    "memorized",
    *(f"target_{k}" for k in SCALE_METRICS),
    *(f"{k}_fp" for k in SCALE_METRICS),
    *(f"{k}_q" for k in SCALE_METRICS),
    *(f"removed_{k}" for k in SCALE_METRICS),
    *(f"recovered_{k}" for k in SCALE_METRICS),
    *(f"share_{k}" for k in SCALE_METRICS),
    "share_pooled",
    *(f"given_back_{k}" for k in SCALE_METRICS),
    "given_back_pooled",
    "knowmem_r_fp",
    "knowmem_r_q",
    "overlap",
    "run",
]


def model_sizes(target_dirs: Mapping[str, str | Path]) -> dict[str, int]:
    """benchmark -> parameter count, read from each trained target's ``train_info.json``."""
    sizes = {}
    for bench, folder in target_dirs.items():
        info = Path(folder) / "train_info.json"
        if not info.is_file():
            raise FileNotFoundError(
                f"{info} is missing: the scale table needs targets trained by the DAG "
                "(benchmarks with models: null)"
            )
        sizes[bench] = int(json.loads(info.read_text())["n_parameters"])
    return sizes


def _share(recovered: float, removed: float) -> float:
    if not np.isfinite(removed) or removed < MIN_REMOVED:
        return float("nan")
    return 100.0 * recovered / removed


def scale_table(
    table1: pd.DataFrame,
    sizes: Mapping[str, int],
    quant: str,
    *,
    min_target_knowmem_f: float,
    min_target_verbmem_f: float,
    overlap: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per (benchmark, regularized run): forgetting at full precision and at `quant`.

    `table1` is `tables.build_table1`'s wide frame. `overlap` (optional) has columns benchmark,
    run, overlap: the share of the run's `quant` codes equal to the target's (the diagnostics).
    Rows are sorted by model size, then method and weight dtype.
    """
    missing = sorted(set(table1["benchmark"]) - set(sizes))
    if missing:
        raise ValueError(f"scale_table: no model size for benchmark(s) {missing}")
    if quant not in set(table1["quant"]):
        raise ValueError(f"scale_table: no cell was evaluated with {quant!r}")
    rows = []
    for bench, part in table1.groupby("benchmark", sort=False):
        target = part[(part["method"] == TARGET) & (part["quant"] == FULL_PRECISION)]
        if len(target) != 1:
            raise ValueError(f"scale_table: benchmark {bench!r} has no full-precision target row")
        t = target.iloc[0]
        target_q = part[(part["method"] == TARGET) & (part["quant"] == quant)]
        tq = target_q.iloc[0] if len(target_q) == 1 else None
        memorized = bool(
            t["knowmem_f"] >= min_target_knowmem_f and t["verbmem_f"] >= min_target_verbmem_f
        )
        runs = part[part["method"].isin(REGULARIZED)]
        for run, cells in runs.groupby("run", sort=False):
            fp, q = cells[cells["quant"] == FULL_PRECISION], cells[cells["quant"] == quant]
            if len(fp) != 1 or len(q) != 1:
                raise ValueError(
                    f"scale_table: run {run!r} of {bench!r} lacks its 'none' or {quant!r} cell"
                )
            row = _run_row(t, fp.iloc[0], q.iloc[0])
            row |= _given_back(t, tq, fp.iloc[0], q.iloc[0])
            rows.append({**row, "benchmark": bench, "n_params": int(sizes[bench]), "run": run,
                         "quant": quant, "memorized": memorized})  # fmt: skip
    table = pd.DataFrame(rows, columns=SCALE_COLUMNS)
    if overlap is not None and len(table):
        by_run = overlap.set_index(["benchmark", "run"])["overlap"]
        keys = list(zip(table["benchmark"], table["run"], strict=True))
        table["overlap"] = [float(by_run.get(key, np.nan)) for key in keys]
    table["overlap"] = table["overlap"].astype("float64")
    order = {m: i for i, m in enumerate(REGULARIZED)}
    table = table.assign(_m=table["method"].map(order))
    table = table.sort_values(["n_params", "_m", "weight_dtype", "epochs", "run"], kind="mergesort")
    return table.drop(columns="_m").reset_index(drop=True)


def _run_row(target: pd.Series, fp: pd.Series, q: pd.Series) -> dict:
    """What unlearning removed (target - unlearned, full precision) and what the quantizer gave
    back (quantized - full precision), per forget metric and pooled."""
    row = {
        "method": fp["method"],
        "weight_dtype": fp["weight_dtype"],
        "epochs": fp["epochs"] if "epochs" in fp else None,
        "knowmem_r_fp": fp["knowmem_r"],
        "knowmem_r_q": q["knowmem_r"],
    }
    for k in SCALE_METRICS:
        removed, recovered = target[k] - fp[k], q[k] - fp[k]
        row |= {
            f"target_{k}": target[k],
            f"{k}_fp": fp[k],
            f"{k}_q": q[k],
            f"removed_{k}": removed,
            f"recovered_{k}": recovered,
            f"share_{k}": _share(recovered, removed),
        }
    row["share_pooled"] = _share(
        sum(row[f"recovered_{k}"] for k in SCALE_METRICS),
        sum(row[f"removed_{k}"] for k in SCALE_METRICS),
    )
    return row


def _given_back(target: pd.Series, target_q: pd.Series | None, fp: pd.Series, q: pd.Series):
    """`table1.given_back_pct` per forget metric and pooled (sums of the four values): the
    share of the full-precision forgetting that the quantizer undoes, each model against the
    target under the same quantizer; NaN without a quantized target row."""
    if target_q is None:
        return {f"given_back_{k}": np.nan for k in [*SCALE_METRICS, "pooled"]}
    four = [[target[k], fp[k], target_q[k], q[k]] for k in SCALE_METRICS]
    out = {
        f"given_back_{k}": given_back_pct(*map(float, v))
        for k, v in zip(SCALE_METRICS, four, strict=True)
    }
    out["given_back_pooled"] = given_back_pct(*map(float, np.sum(four, axis=0)))
    return out


def scale_markdown(table: pd.DataFrame, notes: str) -> str:
    quant = table["quant"].iloc[0] if len(table) else "4-bit"
    shown = table.assign(
        size=[_size_label(n) for n in table["n_params"]],
        memorized=table["memorized"].map({True: "yes", False: "**no**"}),
    )
    headers = {
        "size": "Params",
        "method": "Method",
        "weight_dtype": "Weights",
        "epochs": "Epochs",
        "memorized": "Target memorised",
        "target_knowmem_f": "KnowMem_f target",
        "knowmem_f_fp": "KnowMem_f unlearned",
        "knowmem_f_q": f"KnowMem_f + {quant}",
        "share_knowmem_f": "KnowMem_f recovered %",
        "target_verbmem_f": "VerbMem_f target",
        "verbmem_f_fp": "VerbMem_f unlearned",
        "verbmem_f_q": f"VerbMem_f + {quant}",
        "share_verbmem_f": "VerbMem_f recovered %",
        "share_pooled": "pooled recovered %",
        "given_back_knowmem_f": "KnowMem_f given back %",
        "given_back_verbmem_f": "VerbMem_f given back %",
        "given_back_pooled": "pooled given back %",
        "knowmem_r_fp": "KnowMem_r",
    }
    if table["overlap"].notna().any():
        shown["overlap"] = 100 * shown["overlap"]
        headers["overlap"] = f"{quant} codes = target's (%)"
    out = ["# Scale study: 4-bit recovery against model size", "", notes, ""]
    out += [to_markdown(shown, headers)]
    return "\n".join(out)


def _size_label(n: int) -> str:
    return f"{n / 1e9:.2g}B" if n >= 1e9 else f"{n / 1e6:.3g}M"


def _draw_panel(ax, table: pd.DataFrame, column: str, title: str, colours: dict) -> None:
    """One panel of `plot_scale`: `column` against the parameter count, one line per (method,
    weight dtype, epochs), hollow markers where the target did not memorise."""
    groups = table.groupby(["method", "weight_dtype", "epochs"], sort=False)
    for (method, dtype, epochs), part in groups:
        part = part.sort_values("n_params")
        style = "-" if dtype == "fp32" else "--"
        colour = colours.get((method, epochs), "grey")
        label = f"{method} · {dtype} · {epochs} ep." if epochs >= 0 else f"{method} · {dtype}"
        ax.plot(part["n_params"], part[column], style, color=colour, label=label)
        for mem, fill in ((True, colour), (False, "none")):
            sel = part[part["memorized"] == mem]
            ax.scatter(sel["n_params"], sel[column], facecolors=fill, edgecolors=colour, s=28)
    ax.set_xscale("log")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("parameters")
    if column.startswith("given_back"):
        ax.axhline(0, color="black", linewidth=0.8)
        ax.axhline(100, color="black", linewidth=0.8, linestyle=":")
    sizes = sorted(set(table["n_params"]))
    ax.set_xticks(sizes, [_size_label(n) for n in sizes])
    ax.minorticks_off()


def plot_scale(table: pd.DataFrame, png: Path, svg: Path) -> None:
    """Top row: what unlearning removed; bottom row: the share of that forgetting 4-bit
    quantization gave back (`given_back_pct`, each model against the target under the same
    quantizer; blank below its 5-point guard).

    x is the parameter count (log scale); one line per (method, weight dtype, epochs: the step
    axis): colour by (method, epochs), solid fp32 / dashed bf16 weights; hollow markers where
    the target did not memorise its forget set. A third column shows the code overlap when the
    diagnostics are available.
    """
    plt = pyplot()
    with_overlap = bool(table["overlap"].notna().any())
    ncols = len(SCALE_METRICS) + int(with_overlap)
    fig, axes = plt.subplots(2, ncols, figsize=(4.6 * ncols, 7.4), squeeze=False)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    table = table.assign(epochs=table["epochs"].astype("Float64").fillna(-1).astype(int))
    series = sorted(set(zip(table["method"], table["epochs"], strict=True)))
    colours = dict(zip(series, palette * (1 + len(series) // len(palette)), strict=False))
    names = {"knowmem_f": "KnowMem_f", "verbmem_f": "VerbMem_f"}
    quant = table["quant"].iloc[0] if len(table) else "4-bit"
    panels = [
        (0, j, f"removed_{k}", f"{names[k]}: removed by unlearning (points)")
        for j, k in enumerate(SCALE_METRICS)
    ]
    panels += [
        (1, j, f"given_back_{k}", f"{names[k]}: % of it given back by {quant}")
        for j, k in enumerate(SCALE_METRICS)
    ]
    table = table.assign(overlap_pct=100 * table["overlap"])
    if with_overlap:
        panels += [(0, ncols - 1, "overlap_pct", f"{quant} codes equal to the target's (%)")]
        axes[1, ncols - 1].set_axis_off()
    for r, c, column, title in panels:
        _draw_panel(axes[r, c], table, column, title, colours)
    axes[0, 0].legend(fontsize=7, title="method · weights · epochs", title_fontsize=7)
    fig.suptitle(
        "Does 4-bit quantization undo unlearning as the model grows? (hollow: target "
        "did not memorise)",
        fontsize=11,
    )
    fig.tight_layout()
    save_figure(fig, png, svg)


def global_overlap(diagnostic_files: Sequence[str | Path]) -> pd.DataFrame | None:
    """benchmark, run, overlap: the pooled target-vs-unlearned bucket overlap of each
    diagnostics file (`quantunlearn.evaluation.diagnostics`); None without files."""
    if not diagnostic_files:
        return None
    frame = read_diagnostics(diagnostic_files)
    glob = frame[(frame["pair"] == "target_vs_unlearned") & (frame["level"] == "pooled")]
    return glob[["benchmark", "run", "overlap"]].reset_index(drop=True)


def make_scale_table(
    metric_files: Sequence[str | Path],
    target_dirs: Mapping[str, str | Path],
    out_dir: str | Path,
    scale: Mapping,
    quant_order: Sequence[str],
    diagnostic_files: Sequence[str | Path] = (),
) -> pd.DataFrame:
    """Metric (and diagnostics) files -> out_dir/scale.{parquet,csv,md,png,svg}."""
    out_dir = Path(out_dir)
    overlap = global_overlap(diagnostic_files)
    table1 = build_table1(read_cells(metric_files), quant_order)
    table = scale_table(
        table1,
        model_sizes(target_dirs),
        scale["quant"],
        min_target_knowmem_f=scale["min_target_knowmem_f"],
        min_target_verbmem_f=scale["min_target_verbmem_f"],
        overlap=overlap,
    )
    notes = (
        f"removed = target − unlearned (full precision); recovered = unlearned at "
        f"{scale['quant']} − unlearned at full precision; share = 100 × recovered / removed "
        f"(empty where unlearning removed < {MIN_REMOVED:g} point); pooled sums both metrics. "
        f"memorized: the target reaches KnowMem_f ≥ {scale['min_target_knowmem_f']:g} and "
        f"VerbMem_f ≥ {scale['min_target_verbmem_f']:g}; sizes where it does not say nothing "
        "about forgetting. Codes = target's: share of the quantized Linears' weights whose "
        f"{scale['quant']} code is the target's (`quantunlearn.evaluation.diagnostics`, pooled)."
    )
    write_frames(table, out_dir / "scale")
    write_text(out_dir / "scale.md", scale_markdown(table, notes))
    plot_scale(table, out_dir / "scale.png", out_dir / "scale.svg")
    return table


# --------------------------------------------------------------------------- its REPORTS row


def applies(study) -> bool:
    """The scale study (config key ``scale``, config/scale.yaml)."""
    return "scale" in study.config


def needs(study) -> dict[str, list[str]]:
    """Every cell's metric file, each benchmark's target (its size), and the bucket overlap of
    every unlearned run at ``scale.quant``."""
    runs = dict.fromkeys((c.benchmark, c.run) for c in study.cells() if unlearned_here(c.method))
    quant = study.config["scale"]["quant"] if applies(study) else None
    return {
        "metrics": metric_files(study),
        "targets": [f"{study.results}/models/{bench}/target" for bench in study.benchmarks],
        "diagnostics": [study.diagnostic_file(b, run, quant) for b, run in runs] if quant else [],
    }


def make(study, inputs: dict[str, list[str]], out_dir: Path) -> None:
    """The scale table and figure of ``inputs`` (`needs`) into ``out_dir``."""
    make_scale_table(
        inputs["metrics"],
        dict(zip(study.benchmarks, inputs["targets"], strict=True)),
        out_dir,
        study.config["scale"],
        study.quantizers,
        diagnostic_files=inputs["diagnostics"],
    )


__all__ = ["make_scale_table", "model_sizes", "plot_scale", "scale_markdown", "scale_table"]
