"""Rendering shared by every report: pipe tables, row labels, atomic writing of frames, text and
figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from quantunlearn.io import atomic_write
from quantunlearn.quantizers import FULL_PRECISION
from quantunlearn.study.grid import external_name, is_external
from quantunlearn.unlearning.hyperparameters import all_fields
from quantunlearn.unlearning.methods import RETRAIN, TARGET

#: Hyperparameters that always appear in row labels (when not NA).
LABEL_KEYS = ("weight_dtype", "lr", "alpha")
NA_MARK = "–"
#: The mark of a row whose unlearned model collapsed (`quantunlearn.unlearning.loop.collapse`).
COLLAPSED_MARK = "(collapsed)"
#: The note under a table with such rows.
COLLAPSED_NOTE = (
    f"{COLLAPSED_MARK}: the unlearned model collapsed: its cross-entropy on retain text is within "
    "ln 2 of a uniform guess over the vocabulary (docs/methods.md, collapsed runs); its "
    "forgetting numbers say nothing about unlearning."
)


def rank(values: pd.Series, order: Sequence[str]) -> pd.Series:
    """Position in `order`; values not in it come after, in alphabetical order."""
    extra = sorted(set(values.dropna()) - set(order))
    full = list(order) + extra
    return values.map({v: i for i, v in enumerate(full)}).astype("int64")


def ordered_quants(order: Sequence[str]) -> list[str]:
    """'none' first, then the quantizers in the config's order."""
    return [FULL_PRECISION] + [q for q in order if q != FULL_PRECISION]


def fmt_number(value: float) -> str:
    return f"{value:g}"


def row_label(row: Mapping | pd.Series, keys: Sequence[str] = LABEL_KEYS) -> str:
    """Human label of a Table 1 row, e.g. "NPO_GDR [bf16, lr 1e-05, α 1] + rtn_w8".

    Target and retrain read "Target" / "Retrain", an external checkpoint (audit mode) "<name>
    (external)"; hyperparameters in `keys` that are NA are
    omitted; quantizer "none" adds nothing (the paper's "+ Quan. (4 bit)" suffix otherwise).
    """
    method = str(row["method"])
    name = {TARGET: "Target", RETRAIN: "Retrain"}.get(method, method)
    if is_external(method):  # audit mode: a checkpoint unlearned elsewhere
        name = f"{external_name(method)} (external)"
    parts = []
    for key in keys:
        value = row.get(key)
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            continue
        parts.append(label_part(key, value))
    label = f"{name} [{', '.join(parts)}]" if parts else name
    quant = row["quant"]
    if isinstance(quant, str) and quant != FULL_PRECISION:
        label += f" + {quant}"
    if is_collapsed(row.get("collapsed")):
        label += f" {COLLAPSED_MARK}"
    return label


def is_collapsed(value) -> bool:
    """A row's ``collapsed`` flag: True only when the unlearning job flagged it (NA: unknown)."""
    return value is not None and not pd.isna(value) and bool(value)


def label_part(key: str, value) -> str:
    """One hyperparameter in a row label: its label (the field's, e.g. "α") and its value
    (floats as %g: "lr 1e-05", "rmu_steering 20"; a label of "" shows the bare value)."""
    fields = all_fields()
    label = fields[key].metadata.get("label") if key in fields else None
    if isinstance(value, float | np.floating):
        text = fmt_number(float(value))
    elif isinstance(value, int | np.integer):
        text = str(int(value))
    else:
        text = str(value)
    return f"{key if label is None else label} {text}".strip()


def label_keys(table: pd.DataFrame) -> list[str]:
    """LABEL_KEYS plus every other hyperparameter that varies within some method."""
    keys = list(LABEL_KEYS)
    if table.empty:
        return keys
    present = [c for c in all_fields() if c in table.columns]  # the extra ones may be absent
    counts = table.groupby(["benchmark", "method"])[present].nunique()
    for col in present:
        if col not in keys and (counts[col] > 1).any():
            keys.append(col)
    return keys


def _cell(value, floatfmt: str) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return NA_MARK
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        text = format(float(value), floatfmt)
        if text.startswith("-") and not any(ch in "123456789" for ch in text):
            text = text[1:]  # "-0.0" -> "0.0"
        return text
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(
    table: pd.DataFrame,
    columns: Sequence[str] | Mapping[str, str],
    floatfmt: str = ".1f",
) -> str:
    """A GitHub pipe table of `columns` (names, or a mapping name -> header) of `table`.

    Numeric columns are right-aligned and formatted with `floatfmt` (integers as integers),
    others left-aligned; missing values print as "–". Ends with a newline.
    """
    headers = dict(columns) if isinstance(columns, Mapping) else {c: c for c in columns}
    missing = [c for c in headers if c not in table.columns]
    if missing:
        raise ValueError(f"to_markdown: table lacks column(s) {missing}; has {list(table.columns)}")
    lines = ["| " + " | ".join(_cell(h, floatfmt) for h in headers.values()) + " |"]
    aligns = []
    for col in headers:
        numeric = pd.api.types.is_numeric_dtype(table[col]) and not pd.api.types.is_bool_dtype(
            table[col]
        )
        aligns.append("---:" if numeric else ":---")
    lines.append("| " + " | ".join(aligns) + " |")
    # column-wise lists keep each column's type (iterrows would upcast ints to float)
    for values in zip(*(table[c].tolist() for c in headers), strict=True):
        lines.append("| " + " | ".join(_cell(v, floatfmt) for v in values) + " |")
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_frames(frame: pd.DataFrame, stem: Path) -> None:
    stem = Path(stem)
    atomic_write(stem.with_suffix(".parquet"), lambda p: frame.to_parquet(p, index=False))
    atomic_write(stem.with_suffix(".csv"), lambda p: frame.to_csv(p, index=False))


def write_report_table(
    frame: pd.DataFrame,
    stem: Path,
    title: str,
    note: str,
    headers: Mapping[str, str],
    empty: str,
    floatfmt: str = ".1f",
) -> None:
    """stem.parquet, stem.csv and stem.md: a heading, a note, then the pipe table (or the
    ``empty`` sentence when the frame has no row)."""
    write_frames(frame, stem)
    text = f"# {title}\n\n" + (f"{note.strip()}\n\n" if note.strip() else "")
    text += to_markdown(frame, headers, floatfmt) if not frame.empty else f"{empty}\n"
    write_text(Path(stem).with_suffix(".md"), text)


def save_figure(fig, png: Path, svg: Path | None = None) -> None:
    """Save a matplotlib figure as PNG (and SVG), each atomically, and close it."""
    import matplotlib.pyplot as plt

    for path, fmt in ((png, "png"), (svg, "svg")):
        if path is not None:
            atomic_write(Path(path), lambda p, fmt=fmt: fig.savefig(p, format=fmt, dpi=150))
    plt.close(fig)


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def empty_figure(png: Path, svg: Path, text: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.set_axis_off()
    save_figure(fig, png, svg)
