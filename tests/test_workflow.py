"""The DAG: dry runs, lint, parse-time errors, a tiny real run with incremental re-runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from quantunlearn.study import load_study_file

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
        "unlearn": 2,  # NPO_GDR x {bf16, fp32}
        "evaluate": 4 * 4,  # (target, retrain, 2 runs) x 4 quantizers
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
    grown["tables_dir"] = "results/tables/grown"  # a second config: tables of its own
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

    # issue 22: a deleted records file is rebuilt (it used to be "Nothing to be done") ...
    (results / "records" / "micro" / "method~target" / "none.parquet").unlink()
    plan = snakemake(tmp_path, "-n", "all_tables", config=MICRO)
    assert job_counts(plan.stdout)["evaluate"] == 1, plan.stdout[-2000:]
    # ... and a damaged metric file stops table1 naming it, the last tables left as they were
    tables = _snapshot(results / "tables")
    damaged = results / "metrics" / "micro" / "method~retrain" / "rtn_w4.parquet"
    damaged.write_bytes(damaged.read_bytes()[:100])
    out = snakemake(tmp_path, "--cores", "1", "results/tables/table1.md", config=MICRO)
    assert out.returncode != 0
    log = out.stdout + out.stderr
    assert f"metric file {damaged.relative_to(tmp_path)} cannot be read as Parquet" in log, log
    assert {k: v[0] for k, v in _snapshot(results / "tables").items()} == {
        k: v[0] for k, v in tables.items()
    }


def test_failed_unlearning_leaves_no_model(tmp_path):
    """A NaN loss stops the job with a clear error, and no model folder is left behind."""
    config = yaml.safe_load(MICRO.read_text())
    config["unlearn"]["methods"] = {"GA": {"lr": 1e30}}
    bad = tmp_path / "nan.yaml"
    bad.write_text(yaml.safe_dump(config))
    run = load_study_file(bad).runs.query("method == 'GA'").run.item()
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


# ------------------------------------------- issue 12: no input costs finished work; recovery


GA_GDR = load_study_file(MICRO).runs.query("method == 'GA_GDR'").run.item()  # .../train~<hash>


def _write_config(folder: Path, name: str, change) -> Path:
    config = yaml.safe_load(MICRO.read_text())
    change(config)
    path = folder / name
    path.write_text(yaml.safe_dump(config))
    return path


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mtime (Snakemake decides what is outdated by mtime)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _set_synthetic(**values):
    return lambda c: c["benchmarks"]["micro"]["synthetic"].update(values)


def test_no_input_deletes_the_finished_benchmark(tmp_path):
    """An impossible split fails at parse time, before any job; a benchmark job that fails at
    run time (a pinned hub snapshot that cannot be converted) leaves the finished folder as it
    was (the rule's output is update()d: backed up, restored); the documented recovery after
    reverting the config (`--cleanup-metadata`) keeps it too."""
    data = "results/data/micro"
    out = snakemake(tmp_path, "--cores", "1", data, config=MICRO)
    assert out.returncode == 0, out.stderr[-3000:]
    before = _snapshot(tmp_path / data)

    bad = _write_config(tmp_path, "bad.yaml", _set_synthetic(forget_frac=0.9, holdout_frac=0.1))
    out = snakemake(tmp_path, "--cores", "1", "all_tables", config=bad)
    assert out.returncode != 0
    assert "config key benchmarks.micro.synthetic: 0 retain people" in out.stdout + out.stderr
    assert "Building DAG" not in out.stdout + out.stderr  # stopped while parsing
    assert _snapshot(tmp_path / data) == before

    def from_hub(config):
        config["benchmarks"]["micro"]["source"] = "muse-bench/x"
        config["tables_dir"] = "results/tables/hub"  # micro.yaml's run claimed results/tables

    hub = _write_config(tmp_path, "hub.yaml", from_hub)
    # the download step's pin, as written for a snapshot that lost its files (a cleaned cache):
    # the download is done, the conversion job fails
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    pin = {"spec": "muse-bench/x", "repo_type": "dataset", "commit": None, "path": str(snapshot)}
    pin_path = tmp_path / "results" / "inputs" / "datasets" / "muse-bench--x.json"
    pin_path.parent.mkdir(parents=True)
    pin_path.write_text(json.dumps(pin))
    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [*SNAKEMAKE, "--directory", str(tmp_path), "--cores", "1", data, "--configfile", hub]
    out = subprocess.run(cmd, capture_output=True, text=True, env=offline, timeout=600)
    assert out.returncode != 0
    log = out.stdout + out.stderr
    assert "HubDownloadError" in log and f"Restored previous version of {data}" in log
    assert _snapshot(tmp_path / data) == before

    # Snakemake records the failed job's parameters as if it had written the folder: the
    # workflow gives the restored folder its own record back (it used to re-plan the folder and
    # every cell after it until `--cleanup-metadata`)
    assert f"{data}: restored as it was, with its record" in log
    plan = snakemake(tmp_path, "-n", data, config=MICRO)
    assert "Nothing to be done" in plan.stdout + plan.stderr, plan.stdout[-3000:]


def test_parse_time_warnings_tables_owner_and_yaml_errors(tmp_path):
    warned = _write_config(
        tmp_path, "warned.yaml", lambda c: c["unlearn"]["common"].update(gamma_pct=0.9)
    )
    out = snakemake(tmp_path, "-n", config=warned)
    assert out.returncode == 0, out.stderr
    assert "warning: config key unlearn.common.gamma_pct: [0.9] looks like a fraction" in (
        out.stderr
    )

    # another config's tables are in results/tables: this one is stopped, naming both
    tables = tmp_path / "results" / "tables"
    tables.mkdir(parents=True)
    (tables / ".written_by.json").write_text('{"config": "config/config.yaml"}')
    out = snakemake(tmp_path, "-n", config=MICRO)
    assert out.returncode != 0
    assert "config key tables_dir: results/tables holds the tables of config/config.yaml" in (
        out.stdout + out.stderr
    )
    own = _write_config(tmp_path, "own.yaml", lambda c: c.update(tables_dir="results/t/own"))
    assert snakemake(tmp_path, "-n", config=own).returncode == 0

    # Snakemake loads --configfile itself and does not say where a YAML error is; the check
    # command does (docs/running.md, troubleshooting)
    broken = tmp_path / "broken.yaml"
    broken.write_text(MICRO.read_text().replace("  batch_size: 4", "  batch_size: [4"))
    out = snakemake(tmp_path, "-n", config=broken)
    assert "Config file is not valid JSON or YAML" in out.stdout + out.stderr
    check = [sys.executable, "-m", "quantunlearn.study.check", str(broken)]
    out = subprocess.run(check, capture_output=True, text=True)
    assert out.returncode == 1
    assert re.search(rf"^{re.escape(str(broken))}:\d+:\d+: YAML syntax error", out.stderr)


def _descendants(pid: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")")[1].split()[1]
                )
            except (OSError, IndexError):
                continue
    found, todo = [], [pid]
    while todo:
        pid = todo.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        todo += children
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")")[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_recovery_after_snakemake_itself_is_killed(tmp_path):
    """docs/running.md's procedure: Snakemake is SIGKILLed while an unlearning job runs; the
    orphaned job finishes on its own; its output is marked incomplete and the directory still
    locked: `--unlock`, then `--rerun-incomplete`; a temporary folder a killed save left beside
    the model is removed by the rerun."""
    model = f"results/unlearn/micro/{GA_GDR}/model"
    cmd = [*SNAKEMAKE, "--directory", str(tmp_path), "--cores", "2", model]
    cmd += ["--configfile", str(MICRO)]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 600
    # Snakemake makes the log folder before it starts the job process: wait for the process
    while not (tmp_path / "results" / "logs" / "unlearn").exists() or not _descendants(first.pid):
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.time() < deadline, "no job process under Snakemake"
        time.sleep(0.2)
    jobs = _descendants(first.pid)
    os.kill(first.pid, signal.SIGKILL)  # Snakemake itself, not its job
    first.wait()
    while any(_running(pid) for pid in jobs):  # the orphaned job finishes on its own
        assert time.time() < deadline
        time.sleep(0.5)
    assert (tmp_path / model / "model.safetensors").is_file()

    # what Snakemake says next: the killed run's output is incomplete, then its lock remains
    out = snakemake(tmp_path, "--cores", "2", model, config=MICRO)
    assert out.returncode != 0
    assert "IncompleteFilesException" in out.stdout + out.stderr
    assert model in out.stdout + out.stderr
    out = snakemake(tmp_path, "--cores", "2", "--rerun-incomplete", model, config=MICRO)
    assert out.returncode != 0
    assert "Directory cannot be locked" in out.stdout + out.stderr
    assert snakemake(tmp_path, "--unlock", model, config=MICRO).returncode == 0
    leftover = tmp_path / model.replace("/model", "/.model.tmp-999999")  # pid 999999: gone
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half of the weights")
    out = snakemake(tmp_path, "--cores", "2", "--rerun-incomplete", model, config=MICRO)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert not leftover.exists()
    assert not [p for p in (tmp_path / "results").rglob("*") if ".tmp-" in p.name]
    plan = snakemake(tmp_path, "-n", model, config=MICRO)
    assert "Nothing to be done" in plan.stdout + plan.stderr


# ------------------------------------------------ issue 21: the training settings are identity


def _only_ga_gdr(batch_size: int):
    def change(config):
        config["unlearn"]["methods"] = {"GA_GDR": {}}
        config["unlearn"]["batch_size"] = batch_size
        config["quantizers"] = ["none"]
        config["tables_dir"] = f"results/tables/batch{batch_size}"

    return change


@pytest.mark.slow
def test_two_batch_sizes_keep_their_own_models_in_one_results_dir(tmp_path):
    """Two configs that differ only in unlearn.batch_size plan disjoint run paths; training the
    second leaves every file of the first as it was (bytes and mtime), and the first study still
    finds its model up to date."""
    first = _write_config(tmp_path, "first.yaml", _only_ga_gdr(4))
    second = _write_config(tmp_path, "second.yaml", _only_ga_gdr(2))
    runs = [load_study_file(c).runs.query("method == 'GA_GDR'").run.item() for c in (first, second)]
    assert runs[0] != runs[1] and all("/train~" in r for r in runs)
    models = [f"results/unlearn/micro/{run}/model" for run in runs]
    out = snakemake(tmp_path, "--cores", "2", models[0], config=first)
    assert out.returncode == 0, out.stderr[-3000:]
    before = _snapshot(tmp_path / "results" / "unlearn")
    assert before
    out = snakemake(tmp_path, "--cores", "2", models[1], config=second)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Params have changed" not in out.stdout + out.stderr
    after = _snapshot(tmp_path / "results" / "unlearn")
    assert {k: v for k, v in after.items() if k in before} == before
    assert any(k.startswith(f"micro/{runs[1]}/model/") for k in after)
    for run, batch in zip(runs, (4, 2), strict=True):
        info = tmp_path / "results" / "unlearn" / "micro" / run / "model" / "unlearn_info.json"
        assert json.loads(info.read_text())["batch_size"] == batch
    plan = snakemake(tmp_path, "-n", models[0], config=first)
    assert "Nothing to be done" in plan.stdout + plan.stderr, plan.stdout[-2000:]


# ------------------------------------------- issue 22: audit mode reports the model on disk


@pytest.mark.slow
def test_an_audited_folder_is_evaluated_again_when_its_files_are_replaced(tmp_path):
    """A local checkpoint is audited, then its files are replaced by another model of the same
    shapes and size: the workflow plans its cells again and the audit's Table 1 gives the new
    model's numbers (it used to plan only the tables and keep the first model's, exit code 0)."""

    def small(config):
        config["unlearn"]["methods"] = {}
        config["quantizers"] = ["none", "rtn_w4"]

    models = "results/models/micro"
    base = _write_config(tmp_path, "base.yaml", small)
    out = snakemake(tmp_path, "--cores", "2", f"{models}/target", f"{models}/retrain", config=base)
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tmp_path / models / "target", ckpt)

    def audit(config):
        small(config)
        config["tables_dir"] = "results/tables/audit"
        config["benchmarks"]["micro"]["models"] = {"unlearned": {"mine": str(ckpt)}}

    audited = _write_config(tmp_path, "audit.yaml", audit)
    out = snakemake(tmp_path, "--cores", "2", "all_tables", config=audited)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    metrics = ["verbmem_f", "knowmem_f", "knowmem_r", "privleak"]  # the micro models: privleak

    def row(method: str) -> list[float]:
        table = pd.read_parquet(tmp_path / "results" / "tables" / "audit" / "table1.parquet")
        return (
            table[(table.method == method) & (table["quant"] == "none")][metrics].iloc[0].tolist()
        )

    assert row("external:mine") == row("target")
    cell = tmp_path / "results" / "metrics" / "micro" / "method~external" / "checkpoint~mine"
    first = pd.read_parquet(cell / "none.parquet").get("model_content")  # checked below
    plan = snakemake(tmp_path, "-n", "all_tables", config=audited)
    assert "Nothing to be done" in plan.stdout + plan.stderr

    for file in (tmp_path / models / "retrain").iterdir():  # the same shapes and file sizes
        if file.is_file():
            shutil.copy(file, ckpt / file.name)
    plan = snakemake(tmp_path, "-n", "all_tables", config=audited)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert job_counts(plan.stdout) == {
        "evaluate": 2,
        "diagnose": 1,
        "audit": 1,
        "table1": 1,
        "provenance": 1,
        "all_tables": 1,
    }
    out = snakemake(tmp_path, "--cores", "2", "all_tables", config=audited)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert row("external:mine") == row("retrain") != row("target")
    second = pd.read_parquet(cell / "none.parquet").model_content
    assert first is not None and first.iloc[0].startswith("sha256:")  # the content, recorded
    assert second.iloc[0].startswith("sha256:") and second.iloc[0] != first.iloc[0]


@pytest.mark.slow
def test_a_killed_training_from_a_second_config_leaves_nothing_to_do(tmp_path):
    """A second config on the same results (another training seed) retrains the target; its job
    is killed half-way. The target is restored, and with its record: the first config has
    nothing to do (it used to re-plan the target and every cell after it)."""
    target = "results/models/micro/target"
    out = snakemake(tmp_path, "--cores", "2", target, config=MICRO)
    assert out.returncode == 0, out.stderr[-3000:]
    before = _snapshot(tmp_path / target)

    def seed1(config):
        config["tiny_model"]["train"].update(seed=1, target_epochs=500)  # still running when killed
        config["tables_dir"] = "results/tables/seed1"

    second = _write_config(tmp_path, "seed1.yaml", seed1)
    cmd = [*SNAKEMAKE, "--directory", str(tmp_path), "--cores", "2", target]
    cmd += ["--configfile", str(second)]
    log = tmp_path / "second.log"
    job_log = tmp_path / "results" / "logs" / "train_reference" / "micro" / "target.log"
    job_log.unlink()  # the first training's: the second one's appears when it trains
    with open(log, "w") as fh:
        run = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 600
    while not job_log.is_file() or "train target" not in job_log.read_text():
        assert run.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline
        time.sleep(0.2)
    for pid in _descendants(run.pid):  # the training job, not Snakemake
        os.kill(pid, signal.SIGKILL)
    assert run.wait(timeout=600) != 0
    text = log.read_text()
    assert f"Restored previous version of {target}" in text, text[-3000:]
    assert _snapshot(tmp_path / target) == before
    plan = snakemake(tmp_path, "-n", target, config=MICRO)
    assert "Nothing to be done" in plan.stdout + plan.stderr, plan.stdout[-3000:]
    assert f"{target}: restored as it was, with its record" in text
