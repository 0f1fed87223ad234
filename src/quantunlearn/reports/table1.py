"""Table 1 of Zhang et al. (ICLR 2025, "Catastrophic Failure of LLM Unlearning via
Quantization") and its headline retention figure.

Table 1's layout: per benchmark the target model, the retrained model, then each unlearning
method, each at full precision and after every quantizer; with utility metrics configured, their
columns too (Zhang et al. Table 3's Gen, Tru, Fac, Flu). The retention summary is the Section 4.2
headline: "for unlearning methods with utility constraints, the unlearned model retains an
average of 21% of the intended forgotten knowledge in full precision, which significantly
increases to 83% after 4-bit quantization".

Retention, for a regularized method m, quantizer q and forget metric k in {VerbMem, KnowMem}:

    retained(m, q, k) = 100 * k(f_m quantized by q) / k(f_target quantized by q)

i.e. the reference is the target model under the *same* quantizer. Recomputing the paper's
numbers from its Table 1 fixes that choice: pooling both metrics, both benchmarks and the four
regularized methods as a ratio of sums gives 21.4% at full precision and 82.7% at 4 bit (against
the 4-bit target), which round to the quoted 21% and 83%; against the full-precision target the
4-bit figure would be 61.9% (see `headline_retention` and tests/test_tables.py).

Given back, the share of the full-precision forgetting that quantizer q undoes (the same
measure as the audit report's ``100 - kept``):

    forgetting(q)   = k(f_target quantized by q) - k(f_m quantized by q)
    given_back(q)   = 100 * (1 - forgetting(q) / forgetting(none))

which is 100 * (k(f_m, q) - k(f_m, none)) / (k(f_target, none) - k(f_m, none)) when q leaves
the target unchanged: 0 when quantization keeps all the forgetting, 100 when it undoes all of
it. It is left out (NaN) where the full-precision forgetting is below `MIN_FORGETTING_POINTS`.
Pooled the same way as the headline (ratio of sums), the paper's Table 1 gives 83.5% at 4 bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from quantunlearn.evaluation.metrics import headers as headers_of
from quantunlearn.evaluation.metrics import metric_names
from quantunlearn.quantizers import FULL_PRECISION
from quantunlearn.reports.cell_files import MUSE, layout_metric_files, layouts
from quantunlearn.reports.cells import (
    REGULARIZED,
    build_table1,
    metric_headers,
    read_cells,
    table1_columns,
)
from quantunlearn.reports.render import (
    COLLAPSED_NOTE,
    NA_MARK,
    is_collapsed,
    label_keys,
    ordered_quants,
    pyplot,
    rank,
    row_label,
    save_figure,
    to_markdown,
    write_frames,
    write_text,
)
from quantunlearn.unlearning.methods import TARGET

#: Forget-set metrics whose retention the headline reports (M1 VerbMem and M2 KnowMem).
RETENTION_METRICS = ["knowmem_f", "verbmem_f"]
#: Name of the pooled metric of `headline_retention`.
POOLED_METRIC = "verbmem_f+knowmem_f"
RETENTION_COLUMNS = [
    "benchmark",
    "weight_dtype",
    "quant",
    "metric",
    "retained_pct",
    "given_back_pct",
    "n_runs",
]
#: Full-precision forgetting (metric points, target minus unlearned model) below which
#: `given_back_pct` is NaN: a share of a forgetting within the metrics' resolution (one KnowMem
#: question of the embedded benchmark is 3 points) would be noise.
MIN_FORGETTING_POINTS = 5.0
_LEGEND = (
    "↓ lower is better, ↑ higher is better, →0 closer to zero is better "
    "(as in Table 1 of Zhang et al., ICLR 2025)."
)
#: The files this report writes (relative to the tables folder), declared for its rule.
FILES = tuple(
    f"{stem}.{ext}"
    for stem, exts in (("table1", "md csv parquet"), ("retention", "md csv parquet png svg"))
    for ext in exts.split()
)


def utility_columns(long: pd.DataFrame) -> pd.DataFrame:
    """One row per (benchmark, run, quant) with a column per utility metric measured (x 100);
    metrics not measured for a cell are NaN; none at all gives an empty frame with the keys."""
    keys = ["benchmark", "run", "quant"]
    utility = metric_names(group="utility")
    rows = long[long["metric"].isin(utility)]
    if rows.empty:
        return pd.DataFrame(columns=keys)
    wide = rows.pivot(index=keys, columns="metric", values="value").astype("float64")
    wide = wide[[m for m in utility if m in wide.columns]]
    wide.columns.name = None
    return wide.reset_index()


def join_utility_columns(table: pd.DataFrame, long: pd.DataFrame) -> pd.DataFrame:
    """Table 1 (one row per cell) with the utility columns appended (Zhang et al. Table 3)."""
    columns = utility_columns(long)
    if len(columns.columns) <= 3:
        return table
    return table.merge(columns, on=["benchmark", "run", "quant"], how="left", validate="1:1")


def table1_markdown(table: pd.DataFrame, title: str, notes: str = "") -> str:
    """Markdown of a Table 1 frame: heading, notes, one table per benchmark, where the rows come
    from."""
    keys = label_keys(table)
    out = [f"# {title}", ""]
    if notes.strip():
        out += [notes.strip(), ""]
    out += [_LEGEND, ""]
    for bench, part in table.groupby("benchmark", sort=False):
        part = part.assign(label=[row_label(r, keys) for _, r in part.iterrows()])
        headers = {"label": "Method", **metric_headers()}
        utility = headers_of(metric_names(group="utility"))
        headers.update({c: h for c, h in utility.items() if c in part})  # Table 3 layout
        out += [f"## {bench}", "", to_markdown(part, headers)]
    if "collapsed" in table and table["collapsed"].map(is_collapsed).any():
        out += [COLLAPSED_NOTE, ""]
    return "\n".join(out + _provenance_lines(table)) + "\n"


def _provenance_lines(table: pd.DataFrame) -> list[str]:
    """What the rows were measured from, per benchmark: cells, runs, quantizers and the training
    settings of the unlearning runs (a run path's ``train~`` segment; none: the default study's),
    then where each cell's configuration is recorded (every cell has a config hash of its own, so
    listing them says nothing)."""
    out = ["## Where the rows come from", ""]
    for bench, part in table.groupby("benchmark", sort=False):
        runs = part["run"].astype(str)
        tags = sorted({r.split("/train~")[1].split("/")[0] for r in runs if "/train~" in r})
        trained = [r for r in set(runs) if "/" in r and not r.startswith("method~external/")]
        plain = any("/train~" not in r for r in trained)
        settings = [f"`train~{t}`" for t in tags] + (["the default study's"] if plain else [])
        line = (
            f"- {bench}: {len(part)} cells, {runs.nunique()} runs x {part['quant'].nunique()} "
            f"quantizers"
        )
        if settings:
            line += f"; unlearning runs' training settings: {', '.join(settings)}"
        out.append(line)
    out += [
        "",
        "Each row's `config_hash` (table1.csv / table1.parquet) names the configuration of its "
        "cell; the cell's metrics file (metrics/<benchmark>/<run>/<quantizer>.parquet) records "
        "it with the code's commit and every input's revision.",
    ]
    return out


def write_table(table: pd.DataFrame, stem: Path, title: str, notes: str = "") -> None:
    """Write a Table 1 frame as stem.parquet, stem.csv and stem.md, each atomically.

    The Markdown has `title` as heading, the `notes` paragraph, a legend of the arrows, per
    benchmark a pipe table (row label, VerbMem_f ↓, KnowMem_f ↓, PrivLeak →0, KnowMem_r ↑) and a
    section saying what the rows come from (`_provenance_lines`).
    """
    missing = [c for c in table1_columns() if c not in table.columns]
    if missing:
        raise ValueError(
            f"write_table: table lacks column(s) {missing}; build it with build_table1"
        )
    stem = Path(stem)
    write_frames(table, stem)
    write_text(stem.with_suffix(".md"), table1_markdown(table, title, notes))


def _target_lookup(table: pd.DataFrame) -> pd.DataFrame:
    target = table[table["method"] == TARGET]
    dup = target.duplicated(["benchmark", "quant"], keep=False)
    if dup.any():
        first = target.loc[dup, ["benchmark", "quant"]].iloc[0]
        raise ValueError(
            f"retention: several target rows for benchmark {first['benchmark']!r}, quant "
            f"{first['quant']!r}; expected one target run per benchmark"
        )
    return target.set_index(["benchmark", "quant"])[RETENTION_METRICS]


def _method_means(table: pd.DataFrame) -> pd.DataFrame:
    """Per (benchmark, weight_dtype, quant, method): cell mean and count of each forget metric."""
    methods = table[table["method"].isin(REGULARIZED)]
    grouped = methods.groupby(["benchmark", "weight_dtype", "quant", "method"], dropna=False)
    means = grouped[RETENTION_METRICS].mean()
    counts = grouped[RETENTION_METRICS].count().add_suffix("_n")
    return means.join(counts).reset_index()


def _empty_retention() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "benchmark": pd.Series(dtype=object),
            "weight_dtype": pd.Series(dtype=object),
            "quant": pd.Series(dtype=object),
            "metric": pd.Series(dtype=object),
            "retained_pct": pd.Series(dtype="float64"),
            "given_back_pct": pd.Series(dtype="float64"),
            "n_runs": pd.Series(dtype="Int64"),
        }
    )


def _pct(num: float, den: float) -> float:
    if not (math.isfinite(num) and math.isfinite(den)) or den == 0:
        return float("nan")
    return 100.0 * num / den


def given_back_pct(
    target_fp: float,
    model_fp: float,
    target_q: float,
    model_q: float,
    min_forgetting: float = MIN_FORGETTING_POINTS,
) -> float:
    """Share (%) of the full-precision forgetting that a quantizer gives back (module docstring):
    100 * (1 - (target_q - model_q) / (target_fp - model_fp)) for a lower-is-better forget
    metric; NaN when a value is missing or the full-precision forgetting is below
    ``min_forgetting`` points."""
    values = (target_fp, model_fp, target_q, model_q)
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
        return float("nan")
    forgetting = target_fp - model_fp
    if forgetting < min_forgetting:
        return float("nan")
    return 100.0 * (1.0 - (target_q - model_q) / forgetting)


def _given_back(part: pd.DataFrame, fp: pd.DataFrame, target, metric: str, quant) -> float:
    """Mean over the methods of `part` (one quantizer) of their `given_back_pct`, each against
    its own full-precision cell mean (`fp`, indexed by method); NaN when no method is judged."""
    bench = part["benchmark"].iloc[0]
    t_fp = target[metric].get((bench, FULL_PRECISION), float("nan"))
    t_q = target[metric].get((bench, quant), float("nan"))
    shares = [
        given_back_pct(t_fp, fp[metric].get(m, float("nan")), t_q, v)
        for m, v in zip(part["method"], part[metric], strict=True)
    ]
    shares = [x for x in shares if math.isfinite(x)]
    return float(np.mean(shares)) if shares else float("nan")


def retention_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Share of the target's forget-set knowledge that regularized unlearning leaves in place.

    Section 4.2 of Zhang et al. (ICLR 2025): retained = 100 * k(method, q) / k(target, q) for
    k in {knowmem_f, verbmem_f}, with the target under the same quantizer q. Per (benchmark,
    weight_dtype, quant, metric) the ratio is averaged over the REGULARIZED methods present, each
    method weighted equally (its hyperparameter cells averaged first). n_runs counts the cells
    with a value. A target value of 0 (or a missing target) gives NaN, never inf.
    given_back_pct is the mean, over the methods whose full-precision forgetting reaches
    `MIN_FORGETTING_POINTS`, of `given_back_pct` (NaN when none does).
    """
    means = _method_means(table)
    if means.empty:
        return _empty_retention()
    target = _target_lookup(table)
    rows = []
    for (bench, dtype, quant), part in means.groupby(
        ["benchmark", "weight_dtype", "quant"], dropna=False, sort=False
    ):
        fp = (
            means[(means["benchmark"] == bench) & _same(means["weight_dtype"], dtype)]
            .loc[lambda f: f["quant"] == FULL_PRECISION]
            .set_index("method")
        )
        for metric in RETENTION_METRICS:
            ref = target[metric].get((bench, quant), float("nan"))
            vals = part[metric].dropna()
            ratios = [_pct(v, ref) for v in vals]
            pct = float(np.mean(ratios)) if ratios and not any(map(math.isnan, ratios)) else np.nan
            back = _given_back(part, fp, target, metric, quant)
            n = int(part[f"{metric}_n"].sum())
            rows.append((bench, dtype, quant, metric, pct, back, n))
    out = pd.DataFrame(rows, columns=RETENTION_COLUMNS)
    out["n_runs"] = out["n_runs"].astype("Int64")
    return _sort_retention(out, list(dict.fromkeys(table["quant"])))


def headline_retention(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's pooled headline ("21% ... increases to 83%", Section 4.2).

    Per (weight_dtype, quant): 100 * sum of k(method, q) / sum of k(target, q), summed over
    benchmarks, REGULARIZED methods (each the mean of its cells) and k in {verbmem_f,
    knowmem_f}, over the entries where both values exist. Applied to the paper's own Table 1 this
    gives 21.4% (full precision) and 82.7% (4-bit). given_back_pct pools the same way:
    `given_back_pct` of the four sums (target and method, full precision and q), 83.5% at 4 bit
    for the paper's Table 1. Rows have benchmark "all" and metric
    POOLED_METRIC, in the columns of `retention_summary`; n_runs counts the contributing cells.
    """
    means = _method_means(table)
    if means.empty:
        return _empty_retention()
    target = _target_lookup(table)
    fp = means[means["quant"] == FULL_PRECISION].set_index(["benchmark", "weight_dtype", "method"])
    rows = []
    for (dtype, quant), part in means.groupby(["weight_dtype", "quant"], dropna=False, sort=False):
        num = den = 0.0
        sums = np.zeros(4)  # target fp, model fp, target q, model q: the pooled given back
        n = 0
        for _, row in part.iterrows():
            cells = 0
            for metric in RETENTION_METRICS:
                ref = target[metric].get((row["benchmark"], quant), float("nan"))
                if pd.notna(row[metric]) and pd.notna(ref):
                    num += float(row[metric])
                    den += float(ref)
                    cells = max(cells, int(row[f"{metric}_n"]))
                    key = (row["benchmark"], row["weight_dtype"], row["method"])
                    four = (
                        target[metric].get((row["benchmark"], FULL_PRECISION), np.nan),
                        fp[metric].get(key, np.nan) if key in fp.index else np.nan,
                        ref,
                        row[metric],
                    )
                    if all(pd.notna(v) for v in four):
                        sums += np.array(four, dtype=float)
            n += cells
        back = given_back_pct(*map(float, sums)) if n else np.nan
        rows.append(("all", dtype, quant, POOLED_METRIC, _pct(num, den) if n else np.nan, back, n))
    out = pd.DataFrame(rows, columns=RETENTION_COLUMNS)
    out["n_runs"] = out["n_runs"].astype("Int64")
    return _sort_retention(out, list(dict.fromkeys(table["quant"])))


def _sort_retention(summary: pd.DataFrame, quant_order: Sequence[str]) -> pd.DataFrame:
    sort = summary.assign(
        _q=rank(summary["quant"], ordered_quants(quant_order)),
        _k=rank(summary["metric"], [*RETENTION_METRICS, POOLED_METRIC]),
    )
    sort = sort.sort_values(
        ["benchmark", "_k", "weight_dtype", "_q"], na_position="last", kind="mergesort"
    )
    return summary.loc[sort.index].reset_index(drop=True)


def retention_markdown(summary: pd.DataFrame, title: str, notes: str = "") -> str:
    """Markdown of a retention summary: heading, notes and one pipe table."""
    out = [f"# {title}", ""]
    if notes.strip():
        out += [notes.strip(), ""]
    headers = {
        "benchmark": "Benchmark",
        "metric": "Metric",
        "weight_dtype": "Weights",
        "quant": "Quantizer",
        "retained_pct": "Retained % of target",
        "given_back_pct": "Given back % of fp forgetting",
        "n_runs": "Cells",
    }
    out.append(to_markdown(summary, headers))
    return "\n".join(out) + "\n"


def write_retention(summary: pd.DataFrame, stem: Path, title: str, notes: str = "") -> None:
    """Write a retention summary as stem.parquet, stem.csv and stem.md, each atomically."""
    missing = [c for c in RETENTION_COLUMNS if c not in summary.columns]
    if missing:
        raise ValueError(f"write_retention: summary lacks column(s) {missing}")
    stem = Path(stem)
    write_frames(summary, stem)
    write_text(stem.with_suffix(".md"), retention_markdown(summary, title, notes))


def plot_retention(summary: pd.DataFrame, png: Path, svg: Path, quant_order: Sequence[str]) -> None:
    """Grouped bar chart of `summary`: one panel per metric, bars by quantizer per series.

    A series is a weight dtype (prefixed by the benchmark when several are shown); y is the % of
    the target's knowledge retained (Section 4.2 of Zhang et al., ICLR 2025), with a dashed line
    at 100 (no forgetting at all). Saves both `png` and `svg`, atomically.
    """
    plt = pyplot()
    metrics = list(dict.fromkeys(summary["metric"])) if not summary.empty else []
    ordered = [m for m in [*RETENTION_METRICS, POOLED_METRIC] if m in metrics]
    metrics = ordered + [m for m in metrics if m not in ordered]
    names = {**metric_headers(), POOLED_METRIC: "VerbMem_f + KnowMem_f (pooled)"}
    fig, axes = plt.subplots(
        1, max(len(metrics), 1), figsize=(4.8 * max(len(metrics), 1), 4.2), squeeze=False
    )
    if not metrics:
        axes[0, 0].text(0.5, 0.5, "no regularized runs", ha="center", va="center")
        axes[0, 0].set_axis_off()
    for ax, metric in zip(axes[0], metrics, strict=False):
        part = summary[summary["metric"] == metric]
        several = part["benchmark"].nunique() > 1
        present = set(part["quant"])
        quants = [q for q in ordered_quants(quant_order) if q in present]
        quants += sorted(present - set(quants))
        series = list(dict.fromkeys(zip(part["benchmark"], part["weight_dtype"], strict=True)))
        width = 0.8 / max(len(series), 1)
        x = np.arange(len(quants))
        for i, (bench, dtype) in enumerate(series):
            sel = part[(part["benchmark"] == bench) & _same(part["weight_dtype"], dtype)]
            by_q = dict(zip(sel["quant"], sel["retained_pct"], strict=True))
            heights = [float(by_q.get(q, np.nan)) for q in quants]
            dname = NA_MARK if dtype is None or pd.isna(dtype) else str(dtype)
            label = f"{bench} · {dname}" if several else dname
            pos = x + (i - (len(series) - 1) / 2) * width
            bars = ax.bar(pos, heights, width, label=label)
            ax.bar_label(bars, labels=[_bar_text(h) for h in heights], fontsize=7, padding=2)
            for xpos, h in zip(pos, heights, strict=True):
                if not math.isfinite(h):  # e.g. a target metric of 0: no ratio
                    ax.text(xpos, 2, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
        ax.axhline(100, linestyle="--", color="black", linewidth=1)
        ax.set_xticks(x, quants, rotation=30, ha="right")
        ax.set_title(names.get(metric, metric))
        ax.set_xlabel("quantizer")
        ax.set_ylabel("% of target knowledge retained")
        ax.legend(title="benchmark · weights" if several else "weights", fontsize=8)
    fig.suptitle("Forget-set knowledge retained by regularized unlearning (Zhang et al., §4.2)")
    fig.tight_layout()
    save_figure(fig, png, svg)


def _same(column: pd.Series, value) -> pd.Series:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return column.isna()
    return column == value


def _bar_text(height: float) -> str:
    return "" if not math.isfinite(height) else f"{height:.0f}"


def make_table1(
    metric_files: Sequence[str | Path],
    out_dir: Path,
    quant_order: Sequence[str],
    benchmark_notes: str = "",
    benchmark_order: Sequence[str] | None = None,
) -> None:
    """Metric files -> out_dir/table1.{parquet,csv,md}, retention.{parquet,csv,md,png,svg}.

    retention holds `retention_summary` (per benchmark and metric) followed by
    `headline_retention` (the paper's pooled number, benchmark "all").
    """
    out_dir = Path(out_dir)
    long = read_cells(metric_files)
    table = build_table1(long, quant_order, benchmark_order)
    table = join_utility_columns(table, long)
    write_table(
        table,
        out_dir / "table1",
        "Table 1: unlearning performance of full-precision and quantized models",
        benchmark_notes,
    )
    summary = pd.concat(
        [s for s in (retention_summary(table), headline_retention(table)) if not s.empty]
        or [_empty_retention()],
        ignore_index=True,
    )
    write_retention(
        summary,
        out_dir / "retention",
        "Knowledge retained after unlearning, by quantizer",
        "Retained % = 100 × metric(unlearned model, quantizer) / metric(target model, same "
        "quantizer), averaged over the regularized methods (GA_GDR, GA_KLR, NPO_GDR, NPO_KLR) "
        "present; benchmark 'all' pools VerbMem_f and KnowMem_f over benchmarks and methods as "
        "a ratio of sums, the paper's '21% ... increases to 83%' (Zhang et al., ICLR 2025, §4.2). "
        "Given back % = 100 × (1 − forgetting under the quantizer / forgetting in full "
        "precision), forgetting = target − unlearned model under the same quantizer (points): "
        "0 when quantization keeps all the forgetting, 100 when it undoes it all; blank where "
        f"the full-precision forgetting is below {MIN_FORGETTING_POINTS:g} points.",
    )
    plot_retention(summary, out_dir / "retention.png", out_dir / "retention.svg", quant_order)


# --------------------------------------------------------------------------- its REPORTS row


def applies(study) -> bool:
    """A study with a MUSE-layout benchmark makes Table 1."""
    return MUSE in layouts(study)


def needs(study) -> dict[str, list[str]]:
    """The metric files of every MUSE-layout cell."""
    return {"metrics": layout_metric_files(study, MUSE)}


def make(study, inputs: dict[str, list[str]], out_dir: Path) -> None:
    """Table 1 and the retention summary of ``inputs`` (`needs`) into ``out_dir``."""
    make_table1(inputs["metrics"], out_dir, study.quantizers)
