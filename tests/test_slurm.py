"""The SLURM profile against a real SLURM: a single-node cluster on loopback (Debian's slurm-wlm).

tests/slurm/slurm-up.sh installs and starts munged, slurmctld and slurmd (root, apt-get). The
test runs a small study locally, then, in a copy of it without one unlearned model and its
evaluation cells, runs `snakemake --profile profiles/slurm all_tables`: the unlearning job and
its two evaluation cells (the profile's GPU rules) go through SLURM (the table stays local), and
the test checks their SLURM job ids, states and resources (GPUs, memory and time of the study's
plan, CPUs of the profile) and
that their metrics equal the local run's. (The whole study under SLURM works too but takes
6 SLURM levels of ~20-70 s each, as every job starts Snakemake twice; 2 levels keep CI short.)
Then slurm-down.sh stops exactly the daemons it started. The test changes the machine (packages,
daemons), so it runs only when asked: QU_REQUIRE_SLURM=1 (set by .ci/run) runs it, and fails where
SLURM cannot be brought up (not root, no apt-get); without it the test skips.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from quantunlearn.study import load_study_file
from quantunlearn.study.plan import request

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "tests" / "configs" / "slurm.yaml"
SLURM_DIR = ROOT / "tests" / "slurm"
UNAVAILABLE = 77  # slurm-up.sh: SLURM cannot be brought up on this machine
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
# The test cluster has no accounting (slurmdbd), so the plugin's default status command (sacct)
# would wait forever; on a real cluster with accounting the profile's default is right. These
# are the only departures from profiles/slurm/config.yaml, and they are passed here, visibly.
CI_OVERRIDES = [
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "1",
    "--slurm-keep-successful-logs",  # to inspect the per-job logs below
    "--jobs",
    "4",
]
GA_GDR = (
    load_study_file(ROOT / "tests" / "configs" / "slurm.yaml")
    .runs.query("method == 'GA_GDR'")
    .run.item()
)  # the slurm config's batch 4: .../seed~0/train~<hash>

pytestmark = pytest.mark.slurm


def _unavailable(reason: str):
    if os.environ.get("QU_REQUIRE_SLURM") == "1":
        pytest.fail(f"QU_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm_cluster():
    # installing and starting daemons changes the machine: only when asked (.ci/run asks)
    if os.environ.get("QU_REQUIRE_SLURM") != "1":
        pytest.skip("brings up a real SLURM (apt-get, daemons): set QU_REQUIRE_SLURM=1 to run it")
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        _unavailable("snakemake-executor-plugin-slurm is not installed (extra [slurm])")
    if shutil.which("bash") is None:
        _unavailable("no bash")
    start = time.time()
    up = subprocess.run(
        ["bash", str(SLURM_DIR / "slurm-up.sh")], capture_output=True, text=True, timeout=600
    )
    if up.returncode == UNAVAILABLE:
        _unavailable(up.stderr.strip())
    assert up.returncode == 0, up.stdout + up.stderr
    print(f"slurm-up: {time.time() - start:.1f} s")
    try:
        yield
    finally:
        down = subprocess.run(
            ["bash", str(SLURM_DIR / "slurm-down.sh")], capture_output=True, text=True, timeout=120
        )
        print(down.stderr)


def _run(workdir: Path, *args: str, timeout: int) -> subprocess.CompletedProcess:
    # SIGKILL: a SIGTERMed snakemake waits for its running jobs (shared/notes, pitfall 12)
    cmd = ["timeout", "-s", "KILL", str(timeout), *SNAKEMAKE, "--directory", str(workdir)]
    cmd += ["--configfile", str(STUDY), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)


def _metrics(workdir: Path) -> pd.DataFrame:
    files = sorted((workdir / "results" / "metrics").rglob("*.parquet"))
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return frame.sort_values(["run", "quant", "metric"]).reset_index(drop=True)


def _time_limit(minutes: int) -> str:
    """SLURM's TimeLimit of a request in minutes: [D-]HH:MM:SS."""
    days, rest = divmod(minutes, 24 * 60)
    text = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{text}" if days else text


def _slurm_job(jobid: str) -> dict[str, str]:
    """`scontrol show job` as a dict (finished jobs stay visible for MinJobAge = 300 s)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", jobid], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def test_study_under_slurm_equals_local_run(slurm_cluster, tmp_path):
    local, slurm = tmp_path / "local", tmp_path / "slurm"
    local.mkdir()
    start = time.time()
    out = _run(local, "--cores", "2", "all_tables", timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-5000:]
    print(f"local run: {time.time() - start:.1f} s")

    # the same study without GA_GDR's model and cells and the table (mtimes and Snakemake's
    # records kept; Snakemake does not remake missing inputs of a table that is up to date)
    shutil.copytree(local, slurm, symlinks=True)
    shutil.rmtree(slurm / "results" / "unlearn" / "micro" / GA_GDR)
    shutil.rmtree(slurm / "results" / "metrics" / "micro" / GA_GDR)
    shutil.rmtree(slurm / "results" / "records" / "micro" / GA_GDR)
    shutil.rmtree(slurm / "results" / "tables")
    start = time.time()
    out = _run(slurm, "--profile", str(ROOT / "profiles" / "slurm"), *CI_OVERRIDES, timeout=900)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-5000:]
    print(f"SLURM run: {time.time() - start:.1f} s")

    # the unlearning job and its two cells went to SLURM, each with a log named after its job id
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", log)
    logs_dir = slurm / ".snakemake" / "slurm_logs"
    slurm_logs = {p.stem: p.relative_to(logs_dir).parts[0] for p in logs_dir.rglob("*.log")}
    assert len(submitted) == len(set(submitted)) == 3, submitted
    assert set(slurm_logs) == set(submitted)
    assert sorted(slurm_logs.values()) == ["rule_evaluate", "rule_evaluate", "rule_unlearn"]
    assert re.search(r"localrule table1:", log), "table1 must stay a local rule"
    # SLURM ran each to completion with the plan's requests (GPUs, memory, time) and 4 CPUs
    study = load_study_file(STUDY)
    for jobid, rule in slurm_logs.items():
        job = _slurm_job(jobid)
        assert job["JobState"] == "COMPLETED", (rule, job)
        assert job["WorkDir"] == str(slurm)
        mem = re.search(r"mem=([\d.]+)([MGT])", job["TRES"])
        mem_mb = float(mem[1]) * {"M": 1, "G": 1024, "T": 1024**2}[mem[2]]
        # the plan's request for this job (the profile's gpu_memory_gb: 80): a tiny model's
        # host memory, one GPU, its estimated time
        want = request(study, rule.removeprefix("rule_"), "micro", GA_GDR, "none", 80)
        assert mem_mb == want.mem_mb, (rule, job)
        assert job.get("TresPerJob") == f"gres:gpu:{want.gpu}", (rule, job)  # sbatch --gpus=N
        assert job["TimeLimit"] == _time_limit(want.runtime), (rule, job)
        assert job["NumCPUs"] == "4", (rule, job["NumCPUs"])
        # the job's own log: Snakemake ran the rule inside the allocation (jobstep + srun)
        text = next(logs_dir.rglob(f"{jobid}.log")).read_text()
        assert f"Finished jobid: 0 (Rule: {rule.removeprefix('rule_')})" in text, text[-3000:]

    # the model unlearned under SLURM is bit for bit the locally unlearned one
    rel = Path("results", "unlearn", "micro", GA_GDR, "model", "model.safetensors")
    assert (slurm / rel).read_bytes() == (local / rel).read_bytes()
    a, b = _metrics(slurm), _metrics(local)
    assert len(a) == len(b) == 3 * 2 * 5  # (target, retrain, GA_GDR) x (none, rtn_w4) x 5
    key = ["benchmark", "run", "quant", "metric", "config_hash"]
    pd.testing.assert_frame_equal(a[key], b[key])
    # the same numbers: the runs are deterministic (1 thread per job), wherever they ran
    assert a["value"].tolist() == b["value"].tolist()
    # and so are the generations behind the numbers
    for quant in ("none", "rtn_w4"):
        rel = Path("results", "records", "micro", GA_GDR, f"{quant}.parquet")
        pd.testing.assert_frame_equal(pd.read_parquet(slurm / rel), pd.read_parquet(local / rel))
    new = a[a.run == GA_GDR]
    assert len(new) == 10 and new["eval_seconds"].notna().all()
    table = pd.read_parquet(slurm / "results" / "tables" / "table1.parquet")
    assert len(table) == 3 * 2
