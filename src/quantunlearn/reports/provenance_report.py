"""Where every number came from: the code, the inputs and the packages of the metric files.

Every metrics row carries the git commit of the code that computed it (and whether its tree
was dirty), the package versions, and each input's source and commit (`provenance_columns` of
`quantunlearn.data.provenance`: the evaluated model, its tokenizer, the target, the retrain
model of PrivLeak's denominator, the benchmark data, the utility datasets). This report lists
the distinct values with the number of cells that have them, so that a mixed study (cells from
two commits, a dirty tree, an input that moved) shows at a glance. Metric files written before
these columns existed count as "not recorded".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from quantunlearn.reports.cell_files import metric_files
from quantunlearn.reports.cells import read_cells
from quantunlearn.reports.render import to_markdown, write_frames, write_text

#: The files this report writes (relative to the tables folder), declared for its rule.
FILES = ("provenance.md", "provenance.csv", "provenance.parquet")
NOT_RECORDED = "not recorded"
NA_TEXT = "–"
CODE_HEADERS = {"git_commit": "git commit", "git_dirty": "dirty", "cells": "cells"}
CELL = ["benchmark", "run", "quant"]


def _cells(long: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (its first metric row: the provenance columns are the cell's)."""
    return long.drop_duplicates(CELL).reset_index(drop=True)


def _count(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    shown = frame[columns].astype(object).where(frame[columns].notna(), NA_TEXT)
    counts = shown.groupby(columns, sort=False, dropna=False).size()
    return counts.rename("cells").reset_index()


def code_table(long: pd.DataFrame) -> pd.DataFrame:
    """git_commit, git_dirty, cells: the code that computed the cells."""
    cells = _cells(long)
    for column in ("git_commit", "git_dirty"):
        if column not in cells:
            cells[column] = NOT_RECORDED
    return _count(cells, ["git_commit", "git_dirty"])


def input_table(long: pd.DataFrame) -> pd.DataFrame:
    """role, source, commit, cells: every input of every cell (from the ``inputs`` JSON); a
    local audited checkpoint's commit is its content (``sha256:...``)."""
    rows = []
    for record in _cells(long).to_dict("records"):
        text = record.get("inputs")
        if not isinstance(text, str):
            rows.append({"role": NOT_RECORDED, "source": None, "commit": None})
            continue
        for role, item in json.loads(text).items():
            # a local audited checkpoint: its content (sha256:...) where a hub input has a commit
            commit = item.get("commit") or item.get("content")
            rows.append({"role": role, "source": item.get("source"), "commit": commit})
    columns = ["role", "source", "commit"]
    table = _count(pd.DataFrame(rows, columns=columns), columns)
    return table.sort_values(["role", "source"], kind="mergesort").reset_index(drop=True)


def version_table(long: pd.DataFrame) -> pd.DataFrame:
    """package, version, cells: every package version recorded (the ``versions`` JSON)."""
    rows = []
    for text in _cells(long)["versions"]:
        versions = json.loads(text) if isinstance(text, str) else {NOT_RECORDED: None}
        rows += [{"package": k, "version": v} for k, v in sorted(versions.items())]
    return _count(pd.DataFrame(rows, columns=["package", "version"]), ["package", "version"])


def provenance_markdown(long: pd.DataFrame, level: int = 2) -> str:
    """The three tables (code, inputs, packages) as Markdown sections at heading ``level``."""
    h = "#" * level
    n = len(_cells(long))
    versions = version_table(long)
    return "\n".join(
        [
            f"{h} Code",
            "",
            f"The git commit of the code that computed the {n} cells (dirty: uncommitted changes).",
            "",
            to_markdown(code_table(long), CODE_HEADERS),
            f"{h} Inputs",
            "",
            "Each input of each cell: its source as configured and the commit it resolved to "
            "(hub sources; – for a local folder or a model this workflow trained).",
            "",
            to_markdown(input_table(long), ["role", "source", "commit", "cells"]),
            f"{h} Packages",
            "",
            to_markdown(versions, ["package", "version", "cells"]),
        ]
    )


def make_provenance(metric_files: Sequence[str | Path], out_dir: str | Path) -> None:
    """Metric files -> out_dir/provenance.{md,csv,parquet} (the csv/parquet: one row per cell)."""
    long = read_cells(metric_files)
    keep = [c for c in long.columns if c not in ("metric", "value", "n", "cell_config")]
    write_frames(_cells(long)[keep], Path(out_dir) / "provenance")
    text = "# Provenance of every number\n\n" + provenance_markdown(long)
    write_text(Path(out_dir) / "provenance.md", text)


# --------------------------------------------------------------------------- its REPORTS row


def applies(study) -> bool:
    """Every study: the provenance of every number."""
    return True


def needs(study) -> dict[str, list[str]]:
    """Every cell's metric file."""
    return {"metrics": metric_files(study)}


def make(study, inputs: dict[str, list[str]], out_dir: Path) -> None:
    """The provenance tables of ``inputs`` (`needs`) into ``out_dir``."""
    make_provenance(inputs["metrics"], out_dir)
