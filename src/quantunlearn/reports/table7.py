"""Table 7 of Zhang et al. ("Catastrophic Failure of LLM Unlearning via Quantization", ICLR 2025,
appendix F): unlearning on RWKU (Jin et al., NeurIPS 2024) with GA, NPO and RT, each in full
precision and after 4-bit quantization, scored by RWKU's forget probes FB, QA and AA (lower is
better); here with RWKU's neighbor FB and QA beside them (higher is better: knowledge of related
entities that must survive).

Rows: the original model ("Target f_target"), then every method (its hyperparameters in the
label when they vary) in full precision and under each quantizer of the config. A method's
number is RWKU's average over targets: each unlearning run unlearns one target and is
evaluated on that target's probes (the mean over its probes), and the runs of the targets are
averaged; the original model is evaluated on every target's probes, averaged the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from quantunlearn.data.benchmarks import RWKUKind
from quantunlearn.evaluation.metrics import headers as headers_of
from quantunlearn.reports.cell_files import RWKU, layout_metric_files, layouts
from quantunlearn.reports.cells import read_cells
from quantunlearn.reports.render import (
    label_keys,
    ordered_quants,
    rank,
    row_label,
    to_markdown,
    write_frames,
    write_text,
)
from quantunlearn.unlearning.families import PLAIN
from quantunlearn.unlearning.hyperparameters import HYPER_COLUMNS
from quantunlearn.unlearning.methods import METHODS

#: The columns: Table 7's forget probes, then the neighbor probes.
COLUMNS = ["fb_forget", "qa_forget", "aa_forget", "fb_neighbor", "qa_neighbor"]
#: Table 7's methods first, in its order (others after them, alphabetically): the original
#: model, then the plain methods without a retain term (GA, NPO, RT: RWKU has no retain corpus)
METHOD_ORDER = [
    *RWKUKind.references,
    *(m.name for m in METHODS.values() if m.family is PLAIN and m.retain is None),
]
FILES = tuple(f"table7.{ext}" for ext in ("md", "csv", "parquet"))
_SUBJECT = re.compile(r"/subject~\d+$")


def build_table7(long: pd.DataFrame, quant_order: Sequence[str]) -> pd.DataFrame:
    """One row per (benchmark, method and hyperparameters, quantizer): each probe column the
    mean over the targets of the runs' values; ``n_targets``: how many targets were averaged."""
    values = long[long["metric"].isin(COLUMNS)].copy()
    if values.empty:
        raise ValueError(f"table7: no RWKU probe metric ({COLUMNS}) in the metric files")
    values["group"] = values["run"].str.replace(_SUBJECT, "", regex=True)
    keys = ["benchmark", "group", "quant"]
    wide = values.pivot_table(index=[*keys, "run"], columns="metric", values="value")
    table = wide.groupby(level=keys).mean().reindex(columns=COLUMNS)
    targets = values.groupby([*keys, "run"])["n_targets"].first()
    table["n_targets"] = targets.groupby(level=keys).sum()
    meta = values.groupby(keys)[["method", *HYPER_COLUMNS]].first()
    table = meta.join(table).reset_index().rename(columns={"group": "run"})
    table["n_targets"] = table["n_targets"].astype("int64")
    order = table.assign(
        _b=rank(table["benchmark"], []),
        _m=rank(table["method"], METHOD_ORDER),
        _q=rank(table["quant"], ordered_quants(quant_order)),
    ).sort_values(["_b", "_m", *HYPER_COLUMNS, "run", "_q"], na_position="last", kind="mergesort")
    columns = ["benchmark", "method", "quant", *HYPER_COLUMNS, "n_targets", *COLUMNS, "run"]
    return table.loc[order.index, columns].reset_index(drop=True)


def table7_markdown(table: pd.DataFrame) -> str:
    keys = label_keys(table)
    out = [
        "# Table 7: unlearning on RWKU, full precision and quantized",
        "",
        "RWKU's probes (Jin et al., NeurIPS 2024), ROUGE-L recall of the answer x 100, averaged "
        "over the targets (one unlearning run per target); forget FB / QA / AA as in Table 7 of "
        "Zhang et al. (ICLR 2025), lower is better; neighbor FB / QA, higher is better.",
        "",
    ]
    for bench, part in table.groupby("benchmark", sort=False):
        labels = [row_label(r, keys) for _, r in part.iterrows()]
        part = part.assign(label=[lbl.replace("Target", "Target f_target", 1) for lbl in labels])
        headers = {"label": "Method", **headers_of(COLUMNS), "n_targets": "targets"}
        out += [f"## {bench}", "", to_markdown(part, headers)]
    return "\n".join(out)


def make_table7(metric_files: Sequence[str | Path], out_dir: Path, quant_order: Sequence[str]):
    """RWKU metric files -> out_dir/table7.{md,csv,parquet}."""
    table = build_table7(read_cells(metric_files), quant_order)
    write_frames(table, Path(out_dir) / "table7")
    write_text(Path(out_dir) / "table7.md", table7_markdown(table))
    return table


# --------------------------------------------------------------------------- its REPORTS row


def applies(study) -> bool:
    """A study with an RWKU-layout benchmark makes Table 7."""
    return RWKU in layouts(study)


def needs(study) -> dict[str, list[str]]:
    """The metric files of every RWKU-layout cell."""
    return {"metrics": layout_metric_files(study, RWKU)}


def make(study, inputs: dict[str, list[str]], out_dir: Path) -> None:
    """Table 7 of ``inputs`` (`needs`) into ``out_dir``."""
    make_table7(inputs["metrics"], out_dir, study.quantizers)
