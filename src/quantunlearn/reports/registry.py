"""The paper-style tables and figures: one module per report and one row of the REPORTS table.

Each row says everything the workflow needs to build its report, so that adding a report is a
module and a row (no rule, no script): workflow/rules/tables.smk generates one rule per row, and
its one script (workflow/scripts/make_report.py) calls the row's ``make``. A row declares

- ``files``: what it writes, relative to the study's tables folder (declared by its module, so
  the rule's outputs are exactly what the code writes: tests/test_contracts.py), and
  ``files_for``: files that depend on the study (the audit: one report per external checkpoint);
- ``applies(study)``: whether the study makes it (the `all_tables` target);
- ``needs(study)``: its inputs, ``{name: [file, ...]}`` (the metric files of the cells it reads,
  diagnostics files, models, ...), which become the rule's named inputs;
- ``make(study, inputs, out_dir)``: writes ``files`` into ``out_dir`` from those inputs.

Each asks the Study only its generic questions (`Study.cells`, `Study.metric_file`, ...;
`quantunlearn.reports.cell_files`). Markdown tables and PNG figures also go into the Snakemake
HTML report (``snakemake --report report.html``), with the captions of ``workflow/report/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantunlearn.reports import (
    audit,
    frozen_codes_report,
    mitigations,
    provenance_report,
    quantizers,
    scale,
    table1,
    table7,
    twitter_table,
)

if TYPE_CHECKING:
    from quantunlearn.study import Study


@dataclass(frozen=True)
class Report:
    """One report: the rule workflow/rules/tables.smk generates for it, and what that rule
    needs, writes and runs."""

    name: str  # its rule
    files: tuple[str, ...]  # what it writes, relative to the study's tables folder
    applies: Callable[[Study], bool]  # does this study make it?
    needs: Callable[[Study], dict[str, list[str]]]  # its named input files
    make: Callable[[Study, dict[str, list[str]], Path], Any]  # (study, inputs, out_dir)
    # files that depend on the study (the audit: one report per external checkpoint), shown
    # in the HTML report with the caption workflow/report/<name>_item.rst
    files_for: Callable[[Study], tuple[str, ...]] | None = None
    category: str | None = None  # its category in the HTML report; None: Tables / Figures
    log: str = ""  # the stem of its log file (logs/tables/<log>.log); "": its name

    def all_files(self, study: Study) -> tuple[str, ...]:
        """Every file the report writes for ``study``."""
        return self.files + (tuple(self.files_for(study)) if self.files_for else ())

    def report_items(self, files: tuple[str, ...] | None = None) -> dict[str, str]:
        """{file: category} of the files shown in the HTML report (Markdown and PNG)."""
        kinds = {".md": "Tables", ".png": "Figures"}
        return {
            f: self.category or kinds[f[f.rindex(".") :]]
            for f in (self.files if files is None else files)
            if f.endswith((".md", ".png"))
        }

    def caption(self, file: str) -> str:
        """The stem of a file's caption in workflow/report/ (its own, or the per-item one)."""
        return file.split(".")[0] if file in self.files else f"{self.name}_item"

    @property
    def log_name(self) -> str:
        """The stem of its log file."""
        return self.log or self.name


def _row(name: str, module, **options) -> Report:
    """The row of a report module that defines FILES, applies, needs and make."""
    return Report(name, module.FILES, module.applies, module.needs, module.make, **options)


REPORTS: tuple[Report, ...] = (
    # Zhang et al. 2025 Table 1 (+ Table 3's utility columns) and the section 4.2 retention
    _row("table1", table1),
    # Table 2 (4-bit quantizers), the RTN bit sweep, noflip and QUAIL's Table I layout
    _row("quant_tables", quantizers),
    # SURE / LoRA / QUAIL tables of the papers, the grid, the selection and the summary
    _row("mitigation_tables", mitigations),
    # the scale study (config/scale.yaml)
    _row("scale_table", scale, log="scale"),
    # the Twitter misinformation study (Mishra and Mehreen Table III)
    _row("twitter_table", twitter_table),
    # audit mode: every external checkpoint's report (benchmarks.<b>.models.unlearned)
    _row("audit", audit, files_for=audit.checkpoint_files, category="Audit"),
    # the code commit, input revisions and package versions of every metric file
    _row("provenance", provenance_report, category="Provenance"),
    # Zhang et al. 2025 Table 7: GA, NPO and RT on RWKU, full precision and quantized
    _row("table7", table7),
    # the frozen-codes predictor against the measured codes, per tensor (diagnosed studies that
    # keep their unlearned models)
    _row("frozen_codes", frozen_codes_report),
)
BY_NAME = {report.name: report for report in REPORTS}

__all__ = ["BY_NAME", "REPORTS", "Report"]
