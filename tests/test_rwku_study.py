"""The RWKU studies: config/rwku_synthetic.yaml and config/rwku.yaml parse with their papers'
settings, wrong combinations fail at parse time naming the key, the real config's SLURM dry run
lists the expected jobs, and the embedded study runs end to end (micro version, slow)."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from quantunlearn.io import config_hash
from quantunlearn.reports.cell_files import low_bit
from quantunlearn.study import load_study, load_study_file
from quantunlearn.study.config import ConfigError
from quantunlearn.study.runs import training_tag

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = ROOT / "config" / "rwku_synthetic.yaml"
REAL = ROOT / "config" / "rwku.yaml"
MICRO = ROOT / "tests" / "configs" / "micro_rwku.yaml"
MUSE_MICRO = ROOT / "tests" / "configs" / "micro.yaml"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_embedded_config_unlearns_each_target_once_per_method():
    study = load_study_file(SYNTHETIC)
    bench = study.benchmark("rwku_synthetic")
    assert study.kind("rwku_synthetic").name == "synthetic_rwku" and bench["targets"] == [1, 2, 3]
    runs = study.runs
    assert runs[runs.method == "target"].run.tolist() == ["method~target"]  # no retrain model
    for method in ("GA", "NPO", "RT"):
        mine = runs[runs.method == method]
        assert mine.subject.tolist() == [1, 2, 3]
        assert all(r.endswith(f"/subject~{s}") for r, s in zip(mine.run, mine.subject, strict=True))
    assert len(study.cells()) == 10 * 3  # (target + 9 runs) x (none, rtn_w4, bnb_nf4)
    ga = runs[runs.method == "GA"].run.iloc[1]
    assert study.run("rwku_synthetic", ga).subject == 2
    assert study.eval_subjects("rwku_synthetic", ga) == [2]
    assert study.eval_subjects("rwku_synthetic", "method~target") == [1, 2, 3]
    # each target's cells hash differently; the MUSE study's runs carry no subject
    other = runs[runs.method == "GA"].run.iloc[0]
    assert config_hash(study.cell_config("rwku_synthetic", ga, "none")) != config_hash(
        study.cell_config("rwku_synthetic", other, "none")
    )
    muse = load_study_file(MUSE_MICRO)
    run = muse.runs.run.iloc[-1]
    assert "subject" not in muse.run("micro", run).params and "/subject~" not in run
    assert muse.eval_subjects("micro", run) is None


def test_real_config_has_rwku_table1_settings():
    study = load_study_file(REAL)
    bench = study.benchmark("rwku")
    assert bench["source"] == "jinzhuoran/RWKU@d72f493d481d1b0a9bdc6e869d32baeffad8904f" and bench[
        "targets"
    ] == list(range(1, 101))
    assert bench["models"] == {
        "target": "meta-llama/Meta-Llama-3-8B-Instruct",
        "retrain": None,
        "tokenizer": None,
    }
    assert (bench["forget_corpus"], bench["refusal_corpus"]) == (
        "train_positive_llama3",
        "train_refusal_llama3",
    )
    runs = study.runs[study.runs.method != "target"].drop_duplicates("method").set_index("method")
    assert runs.lr.to_dict() == {"GA": 6e-8, "NPO": 2e-6, "RT": 4e-7}  # RWKU's scripts/full
    assert (runs.epochs == 3).all() and (runs.weight_dtype == "fp32").all()
    assert runs.beta["NPO"] == 0.2
    assert study.config["unlearn"]["max_len"] == 512 and study.config["unlearn"]["batch_size"] == 8
    assert "rtn_w4" in study.quantizers and low_bit(study) == "rtn_w4"
    assert len(study.runs) == 1 + 3 * 100


def _with(config: dict, change) -> dict:
    config = copy.deepcopy(config)
    change(config)
    return config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["unlearn"]["methods"].update({"GA_GDR": {}}),
            "unlearn.methods.GA_GDR: GA_GDR has a retain term, but benchmark micro_rwku "
            "(synthetic_rwku) has no retain corpus",
        ),
        (
            lambda c: c["benchmarks"]["micro_rwku"].update({"targets": [1, 5]}),
            "benchmarks.micro_rwku.targets: [5] do not exist: synthetic_rwku.n_targets is 2",
        ),
        (
            lambda c: c["benchmarks"]["micro_rwku"].update({"targets": [1, 1]}),
            "benchmarks.micro_rwku.targets: repeats a target",
        ),
        (
            lambda c: c["benchmarks"]["micro_rwku"].update({"forget_corpus": "raw/forget.txt"}),
            "benchmarks.micro_rwku.forget_corpus: 'raw/forget.txt' is not one of the RWKU configs",
        ),
        (
            lambda c: c["benchmarks"]["micro_rwku"].update({"synthetic": {"n_people": 30}}),
            "benchmarks.micro_rwku.synthetic: only the embedded MUSE benchmark takes it",
        ),
        (
            lambda c: c["benchmarks"]["micro_rwku"]["synthetic_rwku"].update({"n_targets": 30}),
            "benchmarks.micro_rwku.synthetic_rwku.n_targets: n_targets=30 must be in",
        ),
    ],
)
def test_rwku_config_errors_name_the_key(change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_study(_with(_load(MICRO), change))


def test_rwku_only_keys_and_rt_fail_on_a_muse_benchmark():
    muse = _load(MUSE_MICRO)
    with pytest.raises(ConfigError, match="unlearn.methods.RT: RT trains on refusals, which "):
        load_study(_with(muse, lambda c: c["unlearn"]["methods"].update({"RT": {}})))
    with pytest.raises(ConfigError, match="benchmarks.micro.targets: only an RWKU-layout"):
        load_study(_with(muse, lambda c: c["benchmarks"]["micro"].update({"targets": 3})))
    real = _load(REAL)
    retrain = "benchmarks.rwku.models.retrain: RWKU has no retrain model"
    with pytest.raises(ConfigError, match=retrain):
        load_study(_with(real, lambda c: c["benchmarks"]["rwku"]["models"].update(retrain="x/y")))


def test_a_local_rwku_folder_is_checked_at_parse_time(tmp_path, rwku_bench):
    config = _load(MICRO)
    config["benchmarks"]["micro_rwku"] = {"source": str(rwku_bench)}
    study = load_study(config)  # a local folder in RWKU's layout: its kind, all its targets
    assert study.kind("micro_rwku").name == "rwku"
    assert study.benchmark("micro_rwku")["targets"] == [1, 2]
    config["benchmarks"]["micro_rwku"]["targets"] = [3]
    with pytest.raises(ConfigError, match=r"micro_rwku.targets: targets \[3\] do not exist"):
        load_study(config)


# --------------------------------------------------------------------------- the DAG


def _snakemake(workdir: Path, config: Path, *args: str, env=None, timeout=600):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
    cmd += ["--directory", str(workdir), *args, "--configfile", str(config)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _job_counts(log: str) -> dict[str, int]:
    block = log.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def _resources(log: str, rule: str) -> list[dict[str, str]]:
    blocks = re.findall(rf"^(?:local)?rule {rule}:\n(.*?)(?=^\[|\Z)", log, re.M | re.S)
    found = [re.search(r"resources: (.*)", b) for b in blocks]
    return [dict(kv.split("=", 1) for kv in m[1].split(", ")) for m in found if m]


def test_real_rwku_dry_run_through_the_slurm_profile(tmp_path):
    """config/rwku.yaml on a SLURM cluster: the hub data fetched once, 100 targets x GA, NPO, RT
    unlearned (no retrain model, no PrivLeak reference), every run and the original model
    evaluated at 5 precisions, and Table 7."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    out = _snakemake(tmp_path, REAL, "-n", "all_tables", "--profile", str(ROOT / "profiles/slurm"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert _job_counts(log) == {
        "download": 2,  # the dataset at its revision and the model, fetched and pinned once
        "prepare_benchmark": 1,
        "unlearn": 300,
        "evaluate": 301 * 5,
        "table7": 1,
        "provenance": 1,
        "all_tables": 1,
        "total": 1811,
    }
    assert (
        "fetch dataset jinzhuoran/RWKU@d72f493d481d1b0a9bdc6e869d32baeffad8904f [benchmark:rwku]"
        in log
    )
    unlearn = _resources(log, "unlearn")
    # fp32 Llama-3-8B (32 GB of weights, as much again of gradients, twice of AdamW states and
    # the foreach step's temporary: 190 GB) does not fit one 80 GB GPU: the plan asks for 3
    assert len(unlearn) == 300 and all(r["gpu"] == "3" for r in unlearn)
    # Llama-3-8B in bf16: the plan's host memory, 2 x 16.1 GB + 4 GB, on one 80 GB GPU
    assert all(r["gpu"] == "1" and r["mem_mb"] == "36122" for r in _resources(log, "evaluate"))
    runs = set(re.findall(r"results/rwku/unlearn/rwku/(method~\w+/\S+?/subject~\d+)/model", log))
    assert len(runs) == 300
    tag = training_tag(load_study_file(REAL).config, "fp32")  # RWKU's batch, cutoff and schedule
    assert f"method~GA/weight_dtype~fp32/lr~6e-08/epochs~3/seed~0/train~{tag}/subject~100" in runs
    assert "results/rwku/tables/table7.md" in log
    assert "disk (rwku): 300 unlearned models x 32.1 GB (8.03B parameters)" in log


def test_an_unloadable_utility_source_fails_before_any_model(tmp_path):
    """The utility data check is the first job: a source that cannot be loaded (here a local
    folder without the split's file; a hub id fails earlier, in the download step, which loads
    it too) stops the study before any benchmark is prepared or model trained."""
    config = _load(MUSE_MICRO)
    empty = tmp_path / "alpaca_eval"
    empty.mkdir()
    config["evaluation"]["utility"] = ["fluency"]
    config["evaluation"]["utility_data"] = {"fluency": str(empty)}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    out = _snakemake(tmp_path, path, "--cores", "1", "all_tables", timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode != 0
    assert "Error in rule check_utility_data" in log
    logs = "".join(p.read_text() for p in (tmp_path / "results" / "logs").rglob("*.log"))
    assert f"config key evaluation.utility_data.fluency: cannot load {empty}" in logs
    assert "eval.json is missing" in logs
    assert not (tmp_path / "results" / "data" / "micro").exists()
    assert not (tmp_path / "results" / "models").exists()


@pytest.mark.slow
def test_micro_embedded_rwku_study_runs_end_to_end(tmp_path):
    out = _snakemake(tmp_path, MICRO, "--cores", "2", "all_tables", timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = tmp_path / "results"
    table = pd.read_parquet(results / "tables" / "table7.parquet")
    assert table[["method", "quant"]].values.tolist() == [
        [m, q] for m in ("target", "GA", "NPO", "RT") for q in ("none", "rtn_w4")
    ]
    assert table.n_targets.tolist() == [2] * 8
    columns = ["fb_forget", "qa_forget", "aa_forget", "fb_neighbor", "qa_neighbor"]
    assert table[columns].notna().all().all()
    assert ((table[columns] >= 0) & (table[columns] <= 100)).all().all()
    records = pd.read_parquet(results / "records" / "micro_rwku" / "method~target" / "none.parquet")
    assert set(records.metric) == {*columns, "mia_forget", "mia_retain"}
    assert set(records.target.dropna()) and set(records.subject.dropna()) == {1, 2}
    study = load_study_file(MICRO)
    run = study.runs.query("method == 'RT' and subject == 2").run.item()
    cell = pd.read_parquet(results / "metrics" / "micro_rwku" / run / "rtn_w4.parquet")
    assert (cell.n_targets == 1).all() and (cell.subject == 2).all()
    assert not (results / "models" / "micro_rwku" / "retrain").exists()
    assert "| Target f_target |" in (results / "tables" / "table7.md").read_text()
