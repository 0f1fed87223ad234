"""The paper-style tables and figures: one module per report, and the REPORTS table of them
(`registry`). This file only re-exports the table."""

from quantunlearn.reports.registry import BY_NAME, REPORTS, Report

__all__ = ["BY_NAME", "REPORTS", "Report"]
