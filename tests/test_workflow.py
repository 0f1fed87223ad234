"""The DAG: dry runs, lint, parse-time errors, a tiny real run with incremental re-runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests" / "configs" / "micro.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]


def snakemake(workdir: Path, *args: str, config: Path | None = None, timeout: int = 900):
    cmd = [*SNAKEMAKE, "--directory", str(workdir), *args]
    if config is not None:
        cmd += ["--configfile", str(config)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def job_counts(output: str) -> dict[str, int]:
    """Parse Snakemake's 'Job stats' table."""
    block = output.split("Job stats:")[1]
    return {
        m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M) if m[1] != "total"
    }


def test_default_study_dry_run(tmp_path):
    out = snakemake(tmp_path, "-n", "all_tables")
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout)
    assert counts == {
        "prepare_benchmark": 1,
        "train_tokenizer": 1,
        "train_reference": 2,
        "reference_auc": 1,
        "unlearn": 12,
        "evaluate": 14 * 4,
        "table1": 1,
        "provenance": 1,
        "all_tables": 1,
    }


def test_mitigations_study_dry_run(tmp_path):
    """config/mitigations.yaml parses and adds the SURE / QUAIL / LoRA / RMU runs and tables."""
    out = snakemake(tmp_path, "-n", "all_tables", config=ROOT / "config" / "mitigations.yaml")
    assert out.returncode == 0, out.stderr
    # baselines at 2 lrs (GDR: 3), SURE over 2 module sets, QUAIL (2 margins), LoRA (GA_GDR: 3),
    # RMU over 5 lrs x 2 alphas x 2 layers
    runs = 4 * 2 + 2 + 4 * 2 + 2 + 6 + 5 * 2 * 2
    assert job_counts(out.stdout) == {
        "prepare_benchmark": 1,
        "train_tokenizer": 1,
        "train_reference": 2,
        "reference_auc": 1,
        "unlearn": runs,
        "evaluate": (runs + 2) * 3,
        "table1": 1,
        "provenance": 1,
        "mitigation_tables": 1,
        "all_tables": 1,
    }
    assert "results/tables/mitigations/table_sure.md" in out.stdout


def test_lint():
    out = subprocess.run([*SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_bad_config_fails_at_parse_time(tmp_path):
    config = yaml.safe_load(MICRO.read_text())
    config["unlearn"]["common"]["lr"] = "fast"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    out = snakemake(tmp_path, "-n", config=bad)
    assert out.returncode != 0
    assert "config key unlearn.common.lr: 'fast' is not a number" in out.stdout + out.stderr


@pytest.mark.slow
def test_micro_study_runs_and_reruns_only_what_is_new(tmp_path):
    out = snakemake(tmp_path, "--cores", "2", "all_tables", config=MICRO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = tmp_path / "results"
    table = pd.read_parquet(results / "tables" / "table1.parquet")
    assert len(table) == 4 * 3  # (target, retrain, GA_GDR, NPO_KLR) x (none, rtn_w4, bnb_nf4)
    assert list(table.method.unique()) == ["target", "retrain", "GA_GDR", "NPO_KLR"]
    assert table[["verbmem_f", "knowmem_f", "privleak", "knowmem_r"]].notna().all().all()
    retrain_fp = table[(table.method == "retrain") & (table["quant"] == "none")]
    assert retrain_fp.privleak.iloc[0] == pytest.approx(0.0, abs=1e-9)
    cell = pd.read_parquet(results / "metrics" / "micro" / "method~target" / "bnb_nf4.parquet")
    assert {"config_hash", "versions", "cell_config", "quant", "metric", "value"} <= set(cell)
    records = pd.read_parquet(results / "records" / "micro" / "method~target" / "none.parquet")
    assert {"metric", "index", "prompt", "reference", "output", "score"} <= set(records)
    assert (results / "tables" / "table1.md").read_text().count("\n|") >= 12
    assert (results / "tables" / "retention.png").stat().st_size > 1000

    again = snakemake(tmp_path, "-n", "all_tables", config=MICRO)
    assert again.returncode == 0, again.stderr
    assert "Nothing to be done" in again.stdout + again.stderr

    grown = yaml.safe_load(MICRO.read_text())
    grown["unlearn"]["methods"]["NPO"] = {}
    grown["quantizers"].append("rtn_w8")
    grown_file = tmp_path / "grown.yaml"
    grown_file.write_text(yaml.safe_dump(grown))
    plan = snakemake(tmp_path, "-n", "all_tables", config=grown_file)
    assert plan.returncode == 0, plan.stderr
    # only the new run (unlearned once, evaluated at 4 precisions) and the new quantizer's
    # column for the 4 existing runs; nothing upstream is redone
    assert job_counts(plan.stdout) == {
        "unlearn": 1,
        "evaluate": 4 + 4,
        "table1": 1,
        "provenance": 1,
        "all_tables": 1,
    }


def test_failed_unlearning_leaves_no_model(tmp_path):
    """A NaN loss stops the job with a clear error, and no model folder is left behind."""
    config = yaml.safe_load(MICRO.read_text())
    config["unlearn"]["methods"] = {"GA": {"lr": 1e30}}
    bad = tmp_path / "nan.yaml"
    bad.write_text(yaml.safe_dump(config))
    run = "method~GA/weight_dtype~fp32/lr~1e+30/epochs~1/seed~0"
    out = snakemake(tmp_path, "--cores", "2", f"results/unlearn/micro/{run}/model", config=bad)
    assert out.returncode != 0
    assert "non-finite loss" in out.stdout + out.stderr
    unlearn_dir = tmp_path / "results" / "unlearn" / "micro"
    assert not list(unlearn_dir.rglob("config.json"))
    logs = "".join(
        p.read_text() for p in (tmp_path / "results" / "logs" / "unlearn").rglob("*.log")
    )
    assert "non-finite loss" in logs
    shutil.rmtree(tmp_path / "results")
