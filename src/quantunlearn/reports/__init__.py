"""The paper-style tables and figures: one module per report, and the REPORTS table of them
(`registry`). Each row says when a study makes its report, which files it needs (the cells'
metric files, diagnostics, models) and which it writes; the workflow generates one rule per row.
This file only re-exports the table."""

from quantunlearn.reports.registry import BY_NAME, REPORTS, Report

__all__ = ["BY_NAME", "REPORTS", "Report"]
