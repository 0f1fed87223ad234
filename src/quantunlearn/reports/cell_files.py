"""What the reports ask of a study, through its generic questions only (`Study.cells`,
`Study.layout`, `Study.metric_file`, ...): the metric files of its cells, its layouts, its
low-bit quantizer. Each REPORTS row's ``needs`` is built from these."""

from __future__ import annotations

from collections.abc import Callable

from quantunlearn.data.benchmarks import MuseKind, RWKUKind
from quantunlearn.study.config_checks import low_bit_quantizer

#: the two benchmark layouts, as their rows of the BENCHMARKS table declare them
MUSE, RWKU = MuseKind.layout, RWKUKind.layout


def layouts(study) -> set[str]:
    """The layouts of the study's benchmarks (muse, rwku)."""
    return {study.layout(bench) for bench in study.benchmarks}


def metric_files(study, keep: Callable | None = None) -> list[str]:
    """The metric file of every cell of the study (of those ``keep(cell)`` accepts)."""
    return [
        study.metric_file(c.benchmark, c.run, c.quant)
        for c in study.cells()
        if keep is None or keep(c)
    ]


def layout_metric_files(study, layout: str) -> list[str]:
    """The metric files of the cells of one layout's benchmarks."""
    return metric_files(study, lambda cell: study.layout(cell.benchmark) == layout)


def low_bit(study) -> str | None:
    """The quantizer of the tables' '+ 4 bit' rows (``selection.low_bit_quantizer``, else the
    first 4-bit quantizer of the study)."""
    return low_bit_quantizer(study.config)


__all__ = ["MUSE", "RWKU", "layout_metric_files", "layouts", "low_bit", "metric_files"]
