"""The paper-style tables and figures: one module per report and one row of the REPORTS table.

Each row names the workflow rule that builds the report, the files it writes (declared by its
module, so the rule's outputs are exactly what the code writes: tests/test_contracts.py) and
when a study makes it. Markdown tables and PNG figures also go into the Snakemake HTML report
(``snakemake --report report.html``), with the captions of ``workflow/report/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from quantunlearn.reports import (
    audit,
    mitigations,
    provenance_report,
    quantizers,
    scale,
    table1,
    table7,
    twitter_table,
)


@dataclass(frozen=True)
class Report:
    name: str  # its rule in workflow/rules/tables.smk
    files: tuple[str, ...]  # what it writes, relative to the study's tables folder
    applies: Callable  # Study -> bool: does this study make it?
    # files that depend on the study (the audit: one report per external checkpoint), shown
    # in the HTML report with the caption workflow/report/<name>_item.rst
    files_for: Callable | None = None  # Study -> tuple of file names
    category: str | None = None  # its category in the HTML report; None: Tables / Figures

    def all_files(self, study) -> tuple[str, ...]:
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


REPORTS: tuple[Report, ...] = (
    # Zhang et al. 2025 Table 1 (+ Table 3's utility columns) and the section 4.2 retention
    Report("table1", table1.FILES, lambda study: "muse" in study.layouts),
    # Table 2 (4-bit quantizers), the RTN bit sweep, noflip and QUAIL's Table I layout
    Report(
        "quant_tables",
        quantizers.FILES,
        lambda study: study.has_quant_tables and "muse" in study.layouts,
    ),
    # SURE / LoRA / QUAIL tables of the papers, the grid, the selection and the summary
    Report(
        "mitigation_tables",
        mitigations.FILES,
        lambda study: study.has_mitigations and study.low_bit_quantizer is not None,
    ),
    # the scale study (config/scale.yaml)
    Report("scale_table", scale.FILES, lambda study: "scale" in study.config),
    # the Twitter misinformation study (Mishra and Mehreen Table III)
    Report("twitter_table", twitter_table.FILES, lambda study: bool(study.twitter_benchmarks)),
    # audit mode: every external checkpoint's report (benchmarks.<b>.models.unlearned)
    Report(
        "audit",
        audit.FILES,
        lambda study: study.has_external,
        files_for=audit.checkpoint_files,
        category="Audit",
    ),
    # the code commit, input revisions and package versions of every metric file
    Report("provenance", provenance_report.FILES, lambda study: True, category="Provenance"),
    # Zhang et al. 2025 Table 7: GA, NPO and RT on RWKU, full precision and quantized
    Report("table7", table7.FILES, lambda study: "rwku" in study.layouts),
)
BY_NAME = {report.name: report for report in REPORTS}

__all__ = ["BY_NAME", "REPORTS", "Report"]
