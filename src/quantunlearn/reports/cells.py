"""The per-cell metric files read back: concatenated (never parsed from their paths) and pivoted
into the wide layout of Table 1 of Zhang et al. (ICLR 2025), one row per (benchmark, run,
quantizer): the frame every report starts from."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from quantunlearn.evaluation.metrics import headers, metric_names
from quantunlearn.io import read_parquet
from quantunlearn.reports.render import ordered_quants, rank
from quantunlearn.unlearning.families import PLAIN
from quantunlearn.unlearning.hyperparameters import BASE_HYPER_COLUMNS, HYPER_COLUMNS, column_dtype
from quantunlearn.unlearning.methods import METHODS, REFERENCES


def metric_columns() -> list[str]:
    """The MUSE columns of Table 1, in the METRICS table's order (the paper's)."""
    return metric_names(group="muse", table=True)


def metric_headers() -> dict[str, str]:
    """Their Markdown headers, with the paper's arrows ("VerbMem_f ↓")."""
    return headers(metric_columns())


def value_columns(table: pd.DataFrame) -> list[str]:
    """The MUSE columns, then the utility columns (Zhang et al. Table 3's Gen, Tru, Fac, Flu)
    that ``table`` holds (`reports.table1.join_utility_columns`)."""
    return [*metric_columns(), *(m for m in metric_names(group="utility") if m in table.columns)]


def cell_of(table: pd.DataFrame, bench: str, run: str, quant: str) -> pd.Series | None:
    """The row of one (benchmark, run, quantizer) cell, None when it is not in the table."""
    rows = table[(table["benchmark"] == bench) & (table["run"] == run) & (table["quant"] == quant)]
    return rows.iloc[0] if len(rows) else None


#: Row order of Table 1: the references, then the six methods of Zhang et al. (others after them).
METHOD_ORDER = [*REFERENCES, *(m.name for m in METHODS.values() if m.family is PLAIN)]
#: The methods with a retain regularizer (Zhang et al.'s "utility constraints").
REGULARIZED = [m.name for m in METHODS.values() if m.family is PLAIN and m.retain is not None]

#: Columns every per-cell metric file must hold.
REQUIRED_COLUMNS = [
    "benchmark",
    "run",
    "method",
    "quant",
    *BASE_HYPER_COLUMNS,
    "metric",
    "value",
    "n",
    "config_hash",
    "versions",
]
#: The key of one value: a file may not repeat it, nor may two files share it.
CELL_KEY = ["benchmark", "run", "quant", "metric"]


def table1_columns() -> list[str]:
    """Columns of the wide Table 1 frame, in order (``collapsed``: the unlearning job's flag,
    `quantunlearn.unlearning.loop.collapse`; NA for the references and older metric files)."""
    return [
        "benchmark",
        "method",
        "quant",
        *HYPER_COLUMNS,
        *metric_columns(),
        "config_hash",
        "run",
        "collapsed",
    ]


def _normalize_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """Coerce the hyperparameter columns to their declared types, so that files whose column is
    all-NA (or absent: the base methods' files lack the other methods' keys) concatenate."""
    frame = frame.copy()
    for col in HYPER_COLUMNS:
        if col not in frame.columns:
            frame[col] = pd.NA
        dtype = column_dtype(col)
        if dtype == "object":
            frame[col] = frame[col].astype(object).where(frame[col].notna(), None)
        else:
            numeric = pd.to_numeric(frame[col], errors="raise")
            frame[col] = numeric.astype("float64" if dtype == "Float64" else dtype)
    if "collapsed" not in frame.columns:  # metric files written before the flag existed
        frame["collapsed"] = pd.NA
    frame["collapsed"] = frame["collapsed"].astype("boolean")
    frame["value"] = pd.to_numeric(frame["value"], errors="raise").astype("float64")
    frame["n"] = pd.to_numeric(frame["n"], errors="raise").astype("Int64")
    return frame


def _duplicate_error(frame: pd.DataFrame, sources: pd.Series | None = None) -> None:
    dup = frame.duplicated(CELL_KEY, keep=False)
    if not dup.any():
        return
    first = frame.loc[dup, CELL_KEY].iloc[0]
    same = (frame[CELL_KEY] == first.values).all(axis=1)
    where = ""
    if sources is not None:
        where = f" in files {sorted(set(sources[same]))}"
    raise ValueError(
        f"duplicate metric cell {dict(first)}{where}: each (benchmark, run, quant, metric) "
        f"must appear once ({int(dup.sum())} rows are duplicated)"
    )


def read_cells(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Concatenate per-cell LONG metric files (one row per metric) into one frame.

    The files are read as they are (never parsed from their paths). Raises ValueError naming the
    file when a file lacks one of REQUIRED_COLUMNS, and when a (benchmark, run, quant, metric)
    cell appears twice (in one file or across files).
    """
    if len(paths) == 0:
        raise ValueError("read_cells: no metric files given (expected at least one Parquet file)")
    frames, sources = [], []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"metric file {path} does not exist")
        frame = read_parquet(path, "metric file")
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(
                f"metric file {path} lacks required column(s) {missing}; "
                f"required: {REQUIRED_COLUMNS}"
            )
        frames.append(_normalize_dtypes(frame))
        sources.append(pd.Series([str(path)] * len(frame)))
    long = pd.concat(frames, ignore_index=True)
    _duplicate_error(long, pd.concat(sources, ignore_index=True))
    return long


def build_table1(
    long: pd.DataFrame,
    quant_order: Sequence[str],
    benchmark_order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Pivot LONG metric rows into the wide layout of Table 1 (Zhang et al., ICLR 2025).

    One row per (benchmark, run, quant) with columns `table1_columns()`. Rows are ordered per
    benchmark (`benchmark_order`, then the rest alphabetically) as: target (quant "none" first,
    then `quant_order`, unknown quantizers alphabetically after), retrain (same), then each
    method of METHOD_ORDER (unknown methods after, alphabetically), within a method by
    weight_dtype, lr, epochs, alpha, beta, npo_klr_form, seed (NA last), then run, then quantizer.
    Metrics outside `metric_columns()` (mink_auc, the input of PrivLeak) are left out; metrics not
    measured are NaN.
    """
    needed = ["benchmark", "run", "method", "quant", *HYPER_COLUMNS, "metric", "value"]
    missing = [c for c in needed + ["config_hash"] if c not in long.columns]
    if missing:
        raise ValueError(f"build_table1: input lacks column(s) {missing}; required: {needed}")
    for col in ["benchmark", "run", "method", "quant", "metric"]:
        if long[col].isna().any():
            raise ValueError(f"build_table1: column {col!r} has missing values; it may not")
    _duplicate_error(long)
    keys = ["benchmark", "run", "quant"]

    # method and hyperparameters describe a run: they must not vary between its rows
    varying = long.groupby(["benchmark", "run"])[["method", *HYPER_COLUMNS]].nunique() > 1
    if varying.to_numpy().any():
        bench, run = varying[varying.any(axis=1)].index[0]
        cols = list(varying.columns[varying.loc[(bench, run)]])
        raise ValueError(
            f"build_table1: run {run!r} of benchmark {bench!r} has several values of {cols}"
        )

    values = long[long["metric"].isin(metric_columns())]
    wide = values.pivot(index=keys, columns="metric", values="value")
    wide = wide.reindex(columns=metric_columns()).astype("float64")
    wide.columns.name = None

    if "collapsed" not in long.columns:
        long = long.assign(collapsed=pd.array([pd.NA] * len(long), dtype="boolean"))
    meta = long.groupby(keys, sort=False)[["method", *HYPER_COLUMNS, "collapsed"]].first()
    hashes = long.groupby(keys, sort=False)["config_hash"].agg(
        lambda s: ";".join(sorted(set(s.dropna().astype(str))))
    )
    table = meta.join(wide, how="left").join(hashes).reset_index()
    table = table.reindex(columns=table1_columns())

    bench_rank = rank(table["benchmark"], list(benchmark_order or []))
    sort = table.assign(
        _b=bench_rank,
        _m=rank(table["method"], METHOD_ORDER),
        _q=rank(table["quant"], ordered_quants(quant_order)),
    )
    by = ["_b", "_m", "method", *HYPER_COLUMNS, "run", "_q"]
    sort = sort.sort_values(by, na_position="last", kind="mergesort")
    return table.loc[sort.index].reset_index(drop=True)
