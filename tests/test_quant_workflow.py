"""The quantizer study's DAG: one quantize job per (run, stored quantizer), diagnostics per
(unlearned run, quantizer), noflip cells only for unlearned runs, tables in their own folder."""

from __future__ import annotations

import re

import pytest
from test_workflow import ROOT, job_counts, snakemake

from quantunlearn.quantizers import QUANTIZERS, family_pattern, parse_quantizer

QUANT_CONFIG = ROOT / "config" / "quantizers.yaml"


def test_quantizer_study_dry_run(tmp_path):
    out = snakemake(tmp_path, "-n", "all_tables", config=QUANT_CONFIG)
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout)
    # 2 references + 2 unlearned runs; 14 quantizers, noflip_rtn_w4g128 for unlearned runs only
    assert counts["evaluate"] == 4 * 13 + 2
    assert counts["quantize"] == 4 * 2  # gptq_w4g128 and awq_w4g128 of every run
    assert counts["diagnose"] == 2 * 12  # every quantizer but none and noflip
    assert counts["unlearn"] == 2 and counts["quant_tables"] == 1 and counts["table1"] == 1
    text = out.stdout
    assert "results/tables/quantizers/overlap.md" in text
    assert "results/quantize/synthetic/method~target/gptq_w4g128" in text
    quantize_jobs = text.split("rule quantize:")[1:]
    assert quantize_jobs and all("gpu=1" in job.split("rule ")[0] for job in quantize_jobs)


@pytest.mark.parametrize(
    "name", ["gptq_w4g128", "gptq_w8", "awq_w4g64", "rtn_w4g128", "bnb_nf4", "gguf_q4_0", "none"]
)
def test_quantize_rule_takes_exactly_the_stored_quantizers(name):
    stored = family_pattern([family for family in QUANTIZERS if family.stored])
    assert (re.fullmatch(stored, name) is not None) == parse_quantizer(name).stored
