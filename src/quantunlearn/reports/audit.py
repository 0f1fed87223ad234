"""Audit reports: does the forgetting of a checkpoint unlearned elsewhere survive quantization?

Audit mode (``benchmarks.<b>.models.unlearned``) evaluates third-party checkpoints like the
DAG's own runs. For a checkpoint c, its benchmark's target t, a quantizer q and a forget metric
k in ``audit.metrics`` (KnowMem_f, VerbMem_f; lower is better), each model quantized by q:

    forgetting(k, q) = k(t, q) - k(c, q)                       points the checkpoint is below
    kept(k, q)       = 100 * forgetting(k, q) / forgetting(k, none)   % of the full-precision
                                                               forgetting that remains under q
    retained(k, q)   = 100 * k(c, q) / k(t, q)                 Zhang et al.'s share retained
                                                               (ICLR 2025, section 4.2)
    given_back(k, q) = 100 - kept(k, q)                        % of the full-precision
                                                               forgetting that q undoes (Table
                                                               1's retention report: the same
                                                               `given_back_pct`), left out
                                                               below ``min_forgetting`` points

The verdict of q (thresholds from the config's ``audit`` section): a metric is judged when its
full-precision forgetting is at least ``min_forgetting`` points; the forgetting *survives* q
when kept >= ``min_survival_pct`` on every judged metric, and *does not survive* otherwise; with
no judged metric there is no verdict. The noflip counterfactuals (if configured) are shown, not
judged. Each report says which data the numbers were measured on and where every input came
from (the provenance columns of the metric files), and claims nothing beyond them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from quantunlearn.evaluation.metrics import headers, metric_names
from quantunlearn.quantizers import FULL_PRECISION, parse_quantizer
from quantunlearn.reports.cell_files import metric_files
from quantunlearn.reports.cells import build_table1, metric_columns, read_cells
from quantunlearn.reports.provenance_report import provenance_markdown
from quantunlearn.reports.quantizers import NOFLIP_HEADERS, noflip_table, read_diagnostics
from quantunlearn.reports.render import (
    ordered_quants,
    to_markdown,
    write_frames,
    write_text,
)
from quantunlearn.reports.table1 import given_back_pct, join_utility_columns
from quantunlearn.study.grid import external_method, is_external
from quantunlearn.unlearning.methods import TARGET

#: The summary of every audited checkpoint (relative to the tables folder); each checkpoint's
#: own report is `checkpoint_file` (one per checkpoint: `checkpoint_files`).
FILES = ("audit.md", "audit.csv", "audit.parquet")
VERDICTS = ("survives", "does not survive", "no verdict", "not measured")


def checkpoint_file(bench: str, name: str) -> str:
    return f"audit_{bench}_{name}.md"


def checkpoint_files(study) -> tuple[str, ...]:
    """One Markdown report per external checkpoint of the study."""
    return tuple(
        checkpoint_file(bench, name)
        for bench in study.benchmarks
        for name in study.external_checkpoints(bench)
    )


def _pct(num: float, den: float) -> float:
    if not (math.isfinite(num) and math.isfinite(den)) or den == 0:
        return float("nan")
    return 100.0 * num / den


def verdict(kept: Mapping[str, float], fp_forgetting: Mapping[str, float], audit: dict) -> str:
    """The verdict of one quantizer from each judged metric's kept % (module docstring)."""
    if any(not math.isfinite(v) for v in fp_forgetting.values()):
        return "not measured"
    judged = [k for k in kept if fp_forgetting[k] >= audit["min_forgetting"]]
    if not judged:
        return "no verdict"
    if any(not math.isfinite(kept[k]) for k in judged):
        return "not measured"
    ok = all(kept[k] >= audit["min_survival_pct"] for k in judged)
    return "survives" if ok else "does not survive"


def _value(frame: pd.DataFrame, quant: str, metric: str) -> float:
    if quant not in frame.index or metric not in frame.columns:
        return float("nan")
    return float(frame.at[quant, metric])


def audit_frame(table: pd.DataFrame, bench: str, name: str, audit: dict) -> pd.DataFrame:
    """One row per quantizer of a checkpoint (full precision first), from a wide Table 1 frame:
    every metric and its change from full precision (``d_<metric>``), and per judged forget
    metric the target's value, forgetting, kept % and retained % (module docstring)."""
    part = table[table["benchmark"] == bench]
    ckpt = part[part["method"] == external_method(name)].set_index("quant")
    target = part[part["method"] == TARGET].set_index("quant")
    metrics = [m for m in [*metric_columns(), *metric_names(group="utility")] if m in ckpt]
    rows = []
    for quant in ckpt.index:
        spec = parse_quantizer(quant)
        reference = spec.diagnosed_as.name if spec.counterfactual else quant  # noflip: Q(t)
        row = {"benchmark": bench, "checkpoint": name, "quant": quant}
        for m in metrics:
            row[m] = _value(ckpt, quant, m)
            row[f"d_{m}"] = row[m] - _value(ckpt, FULL_PRECISION, m)
        kept, fp_forgetting = {}, {}
        for k in audit["metrics"]:
            row[f"target_{k}"] = _value(target, reference, k)
            row[f"forgetting_{k}"] = row[f"target_{k}"] - row[k]
            row[f"retained_{k}"] = _pct(row[k], row[f"target_{k}"])
            fp_forgetting[k] = _value(target, FULL_PRECISION, k) - _value(ckpt, FULL_PRECISION, k)
            kept[k] = row[f"kept_{k}"] = _pct(row[f"forgetting_{k}"], fp_forgetting[k])
            row[f"given_back_{k}"] = given_back_pct(
                _value(target, FULL_PRECISION, k),
                _value(ckpt, FULL_PRECISION, k),
                row[f"target_{k}"],
                row[k],
                min_forgetting=audit["min_forgetting"],
            )
        row["verdict"] = (
            "reference"
            if quant == FULL_PRECISION
            else "counterfactual"
            if spec.counterfactual
            else verdict(kept, fp_forgetting, audit)
        )
        rows.append(row)
    return pd.DataFrame(rows)


def overlap_columns(diag: pd.DataFrame, bench: str, name: str) -> pd.DataFrame:
    """Per quantizer: the pooled bucket overlap with the target (all quantizable weights; level
    "pooled" of `read_diagnostics`) and the share of weights that moved more than half a
    quantization step (`evaluation.diagnostics`), in %."""
    columns = ["quant", "overlap_pct", "beyond_half_step_pct", "n_flipped"]
    if diag.empty:
        return pd.DataFrame(columns=columns)
    rows = diag[
        (diag["benchmark"] == bench)
        & (diag["method"] == external_method(name))
        & (diag["pair"] == "target_vs_unlearned")
        & (diag["level"] == "pooled")
    ]
    return pd.DataFrame(
        {
            "quant": rows["quant"],
            "overlap_pct": rows["overlap"] * 100,
            "beyond_half_step_pct": rows["share_beyond_half_step"] * 100,
            "n_flipped": rows["n_flipped"],
        }
    ).reset_index(drop=True)


#: What each metric was measured on, for the reports' wording.
MEASURED_ON = {
    "verbmem_f": "forget-set passages (ROUGE-L of the greedy continuation against the true text)",
    "knowmem_f": "questions on the forget set (ROUGE-L of the greedy answer)",
    "knowmem_r": "questions on the retain set (ROUGE-L of the greedy answer)",
    "privleak": "forget texts against as many holdout texts (Min-K% AUC, relative to the "
    "retrain model's)",
    "mink_auc": "forget and holdout texts (Min-K% scores)",
    "mmlu": "MMLU questions (5-shot accuracy)",
    "truthfulqa_mc1": "TruthfulQA MC1 questions (accuracy)",
    "triviaqa": "TriviaQA questions (F1)",
    "fluency": "AlpacaEval instructions (n-gram entropy of the answers)",
}


def _data_lines(cells: pd.DataFrame, source: str) -> list[str]:
    """Which items each metric was measured on (the checkpoint's full-precision cell)."""
    lines = [f"Data: benchmark {source}; every number below is measured on these items:"]
    for row in cells[cells["metric"].isin(MEASURED_ON)].itertuples():
        lines.append(f"- {row.metric}: {row.n} {MEASURED_ON[row.metric]}")
    return lines


def _source(cells: pd.DataFrame, role: str) -> str:
    """`source` at commit `sha` of a role, from the cells' provenance columns."""
    column = f"{role}_source"
    if column not in cells or cells[column].isna().all():
        return "not recorded"
    pairs = cells[[column, f"{role}_commit"]].drop_duplicates()
    texts = [
        f"`{src}`" + (f" at commit `{sha}`" if isinstance(sha, str) else " (local, no commit)")
        for src, sha in pairs.itertuples(index=False)
    ]
    return "; ".join(texts)


def _verdict_table(frame: pd.DataFrame, audit: dict) -> str:
    judged = frame[~frame["verdict"].isin(["reference", "counterfactual"])]
    columns = {"quant": "Quantizer"}
    for k in audit["metrics"]:
        columns[f"forgetting_{k}"] = f"{k} forgetting (points)"
        columns[f"kept_{k}"] = f"{k} kept %"
        columns[f"given_back_{k}"] = f"{k} given back %"
    columns["verdict"] = "Verdict"
    if not len(judged):
        return "No quantizer besides none.\n"
    return to_markdown(judged, columns) + "\n" + VERDICT_LEGEND + "\n"


VERDICT_LEGEND = (
    "survives: the kept % reaches the threshold on every judged metric; does not survive: it "
    "falls short on at least one; no verdict: no metric has enough full-precision forgetting "
    "to judge; not measured: a value is missing."
)


def _metrics_table(frame: pd.DataFrame) -> str:
    names = [m for m in [*metric_columns(), *metric_names(group="utility")] if m in frame]
    columns = {"quant": "Quantizer"}
    for m, header in headers(names).items():
        columns[m] = header
        columns[f"d_{m}"] = "Δ"
    return to_markdown(frame, columns)


def _retained_table(frame: pd.DataFrame, audit: dict) -> str:
    columns = {"quant": "Quantizer"}
    for k in audit["metrics"]:
        columns |= {f"target_{k}": f"{k} target", k: f"{k} checkpoint"}
        columns[f"retained_{k}"] = f"{k} retained %"
    return to_markdown(frame, columns)


def checkpoint_markdown(
    frame: pd.DataFrame, long: pd.DataFrame, diag: pd.DataFrame, table, audit: dict
) -> str:
    # long: assembling the sections of one report is a flat sequence, split it gains nothing
    """The audit report of one checkpoint: what was evaluated on which data, the verdict per
    quantizer, the metrics, the share retained, the bucket overlap, noflip and provenance."""
    bench, name = frame["benchmark"].iloc[0], frame["checkpoint"].iloc[0]
    method = external_method(name)
    own = long[(long["benchmark"] == bench) & (long["method"] == method)]
    fp = own[own["quant"] == FULL_PRECISION]
    first = own.iloc[0]
    out = [f"# Audit: {name} (external checkpoint) on benchmark {bench}", ""]
    out += [
        f"Checkpoint: {_source(own, 'model')}, not trained by this workflow. "
        f"Tokenizer: {_source(own, 'tokenizer')}. Compared with the target "
        f"{_source(own, 'target')}, each quantized the same way. PrivLeak's reference: the "
        f"retrain model {_source(own, 'retrain')}.",
        "",
        *_data_lines(fp, _source(own, "benchmark")),
        "",
        "## Verdict per quantizer",
        "",
        f"Forgetting = target − checkpoint under the same quantizer (points, "
        f"{', '.join(audit['metrics'])}); kept % = its share of the full-precision forgetting, "
        "given back % = 100 − kept % (the share the quantizer undoes; blank where the "
        "full-precision forgetting is below the threshold). "
        f"Thresholds (config `audit`): a metric is judged when its full-precision forgetting "
        f"is at least {audit['min_forgetting']:g} points; the forgetting survives a quantizer "
        f"when at least {audit['min_survival_pct']:g}% of it is kept on every judged metric. "
        "These verdicts describe the items above, measured once, and nothing beyond them.",
        "",
        _verdict_table(frame, audit),
        "## Metrics under each quantizer",
        "",
        "Δ = the checkpoint under the quantizer minus the checkpoint in full precision.",
        "",
        _metrics_table(frame),
        "## Share retained",
        "",
        "Retained % = 100 × checkpoint / target under the same quantizer (the share-retained "
        "measure of Zhang et al., ICLR 2025, section 4.2).",
        "",
        _retained_table(frame, audit),
        "## Bucket overlap with the target",
        "",
        "Share of quantized-Linear weights in the same quantization bucket as the target's, and "
        "share that moved more than half a quantization step (weight diagnostics).",
        "",
    ]
    overlap = overlap_columns(diag, bench, name)
    out.append(
        to_markdown(overlap, OVERLAP_HEADERS, ".4g")
        if len(overlap)
        else "No diagnostics (no quantizer besides none).\n"
    )
    noflip = noflip_table(table)
    if len(noflip):
        noflip = noflip[(noflip["benchmark"] == bench) & (noflip["run"] == first["run"])]
    if len(noflip):
        out += ["## noflip counterfactual", "", to_markdown(noflip, NOFLIP_COLUMNS)]
    out += ["## Provenance", "", provenance_markdown(own, level=3)]
    return "\n".join(out)


OVERLAP_HEADERS = {
    "quant": "Quantizer",
    "overlap_pct": "Overlap %",
    "beyond_half_step_pct": "|Δw| > Δ/2 %",
    "n_flipped": "Flipped",
}
#: The noflip table's columns (the quantizer tables' ones, one run here: no run label).
NOFLIP_COLUMNS = {k: v for k, v in NOFLIP_HEADERS.items() if k != "label"}


def make_audit(
    metric_files: Sequence[str | Path],
    diagnostic_files: Sequence[str | Path],
    out_dir: str | Path,
    quantizers: Sequence[str],
    audit: dict,
) -> pd.DataFrame:
    """Metric and diagnostics files -> out_dir/audit.{md,csv,parquet} (every checkpoint, one
    row per quantizer) and one audit_<benchmark>_<name>.md per external checkpoint."""
    out = Path(out_dir)
    long = read_cells(metric_files)
    table = join_utility_columns(build_table1(long, list(quantizers)), long)
    diag = read_diagnostics(diagnostic_files)
    frames = []
    for (bench, method), _ in table[table["method"].map(is_external)].groupby(
        ["benchmark", "method"], sort=False
    ):
        frame = audit_frame(table, bench, method.split(":", 1)[1], audit)
        overlap = overlap_columns(diag, bench, frame["checkpoint"].iloc[0])
        frame = frame.merge(overlap, on="quant", how="left")
        order = {q: i for i, q in enumerate(ordered_quants(quantizers))}
        frame = frame.sort_values("quant", key=lambda s: s.map(order), kind="mergesort")
        text = checkpoint_markdown(frame, long, diag, table, audit)
        write_text(out / checkpoint_file(bench, frame["checkpoint"].iloc[0]), text)
        frames.append(frame)
    summary = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    write_frames(summary, out / "audit")
    write_text(out / "audit.md", summary_markdown(summary, audit))
    return summary


def summary_markdown(summary: pd.DataFrame, audit: dict) -> str:
    """audit.md: the verdict of every (checkpoint, quantizer) and where each report is."""
    text = ["# Audit of external checkpoints", ""]
    if summary.empty:
        return "\n".join([*text, "No external checkpoint in this config.", ""])
    judged = summary[~summary["verdict"].isin(["reference", "counterfactual"])].copy()
    pairs = zip(judged["benchmark"], judged["checkpoint"], strict=True)
    judged["report"] = [checkpoint_file(b, n) for b, n in pairs]
    columns = {"benchmark": "Benchmark", "checkpoint": "Checkpoint", "quant": "Quantizer"}
    for k in audit["metrics"]:
        columns |= {f"kept_{k}": f"{k} kept %", f"given_back_{k}": f"{k} given back %"}
    columns |= {"verdict": "Verdict", "report": "Report"}
    text += [
        f"Kept % = the share of the full-precision forgetting (target − checkpoint) that remains "
        f"under the quantizer, given back % = 100 − kept % (blank below the threshold); the "
        f"forgetting survives a quantizer when at least "
        f"{audit['min_survival_pct']:g}% is kept on every metric whose full-precision "
        f"forgetting is at least {audit['min_forgetting']:g} points (config `audit`). Each "
        "report says on which data this was measured.",
        "",
        to_markdown(judged, columns) if len(judged) else "No quantizer besides none.\n",
    ]
    return "\n".join(text)


# --------------------------------------------------------------------------- its REPORTS row


def applies(study) -> bool:
    """Audit mode: a benchmark names checkpoints unlearned elsewhere
    (``benchmarks.<b>.models.unlearned``)."""
    return any(is_external(c.method) for c in study.cells())


def needs(study) -> dict[str, list[str]]:
    """Every cell of each external checkpoint and of its benchmark's target, and the weight
    diagnostics of every external checkpoint against its target."""
    benches = {c.benchmark for c in study.cells() if is_external(c.method)}
    return {
        "metrics": metric_files(
            study,
            lambda c: c.benchmark in benches and (is_external(c.method) or c.method == TARGET),
        ),
        "diagnostics": [
            study.diagnostic_file(c.benchmark, c.run, c.quant)
            for c in study.diagnostic_cells()
            if is_external(c.method)
        ],
    }


def make(study, inputs: dict[str, list[str]], out_dir: Path) -> None:
    """The audit reports of ``inputs`` (`needs`) into ``out_dir``."""
    make_audit(
        inputs["metrics"], inputs["diagnostics"], out_dir, study.quantizers, study.config["audit"]
    )
