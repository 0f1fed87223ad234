"""Table III of Mishra and Mehreen ("QUAIL: Quantization Aware Unlearning for Mitigating
Misinformation in LLMs", section VIII-B): the Twitter misinformation study
(`quantunlearn.data.twitter`), every run of a Twitter benchmark at full precision and at the
low-bit quantizer.

The paper prints M1 only (F_target, GA_GDR with alpha 5, GA_GDR + hinge with alpha 5 and gamma
8, each "16-bit" and "4-bit"). M1 is our reading of the paper's definition on tweets (VerbMem,
section III eq. 3: the greedy continuation of each forget tweet's first half of words against
the rest, ROUGE-L); next to it the classification accuracy on the forget and retain tweets
(`quantunlearn.evaluation.classification`) and PrivLeak (forget vs the never-trained retain2).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from quantunlearn.evaluation.metrics import headers
from quantunlearn.quantizers import FULL_PRECISION
from quantunlearn.reports.cell_files import low_bit, metric_files
from quantunlearn.reports.cells import build_table1, read_cells
from quantunlearn.reports.render import label_keys, row_label, to_markdown, write_frames, write_text

FILES = tuple(f"table_twitter.{ext}" for ext in ("md", "csv", "parquet"))
COLUMNS = ["verbmem_f", "acc_f", "acc_r", "privleak"]


def twitter_table(long: pd.DataFrame, quant_order: Sequence[str], low: str | None) -> pd.DataFrame:
    """One row per (benchmark, run) x precision (full, ``low``), in Table 1's order."""
    quants = [FULL_PRECISION, *([low] if low else [])]
    table = build_table1(long, quant_order)
    table = table[table["quant"].isin(quants)].copy()
    extra = long[long["metric"].isin(["acc_f", "acc_r"])]
    if not extra.empty:
        wide = extra.pivot(index=["benchmark", "run", "quant"], columns="metric", values="value")
        table = table.merge(wide.reset_index(), on=["benchmark", "run", "quant"], how="left")
    for col in COLUMNS:
        if col not in table:
            table[col] = float("nan")
    keys = label_keys(table)
    table["label"] = [
        row_label(r.to_dict() | {"quant": FULL_PRECISION}, keys) for _, r in table.iterrows()
    ]
    table["precision"] = ["full" if q == FULL_PRECISION else q for q in table["quant"]]
    return table[["benchmark", "run", "method", "label", "precision", "quant", *COLUMNS]]


NOTE = (
    "Layout of Mishra and Mehreen's Table III (they print M1 only). M1 = VerbMem on the forget "
    "tweets (the first half of each tweet's words as the prompt, ROUGE-L F1 of the greedy "
    "continuation against the rest, x 100): our reading of their section III for tweets. Acc = "
    'zero-shot accuracy of the label word (" factual" / " misinformation") after "Tweet: '
    '...\\nLabel:" on the forget and retain tweets (our addition). PrivLeak: forget tweets '
    "against retain2, which no model trained on."
)


def make_twitter_table(
    metric_files: Sequence[str | Path],
    out_dir: str | Path,
    quant_order: Sequence[str],
    benchmarks: Sequence[str],
    low: str | None,
) -> pd.DataFrame:
    """The metric files of the Twitter benchmarks -> out_dir/table_twitter.{md,csv,parquet}."""
    long = read_cells(metric_files)
    long = long[long["benchmark"].isin(list(benchmarks))]
    table = twitter_table(long, quant_order, low)
    out = Path(out_dir) / "table_twitter"
    write_frames(table, out)
    cols = {"label": "Method", "precision": "Precision",
            **{c: h for c, h in headers(COLUMNS).items()}}  # fmt: skip
    cols["verbmem_f"] = "M1 (VerbMem_f) ↓"
    text = ["# Twitter misinformation (layout of Mishra and Mehreen Table III)", "", NOTE, ""]
    for bench, part in table.groupby("benchmark", sort=False):
        text += [f"## {bench}", "", to_markdown(part, cols)]
    if table.empty:
        text += ["No Twitter benchmark in this config.", ""]
    write_text(out.with_suffix(".md"), "\n".join(text) + "\n")
    return table


# --------------------------------------------------------------------------- its REPORTS row


def twitter_benchmarks(study) -> list[str]:
    """The benchmarks whose kind scores labelled items (`BenchmarkKind.classification`: the
    Twitter misinformation set)."""
    return [b for b in study.benchmarks if study.kind(b).classification]


def applies(study) -> bool:
    """A study with a Twitter benchmark."""
    return bool(twitter_benchmarks(study))


def needs(study) -> dict[str, list[str]]:
    """Every cell's metric file (the table keeps the Twitter benchmarks' rows)."""
    return {"metrics": metric_files(study)}


def make(study, inputs: dict[str, list[str]], out_dir: Path) -> None:
    """Table III of ``inputs`` (`needs`) into ``out_dir``."""
    make_twitter_table(
        inputs["metrics"], out_dir, study.quantizers, twitter_benchmarks(study), low_bit(study)
    )
