"""environment.yml under `snakemake --sdm conda`: its pip step installs this checkout.

Snakemake copies the env file to .snakemake/conda/<hash>.yaml and runs `conda env create --file
<copy>`; conda writes the pip entries to a requirements file next to the copy and runs pip with
that folder as its working directory (so the former `-e ..` meant .snakemake/, which holds no
project). The file now says `-e ${QUANTUNLEARN_ROOT}` (pip expands environment variables in
requirements files) and the Snakefile sets that variable to its own folder. No conda here: the
tests replay the pip step with the real pip (`pip install --dry-run`) where conda runs it, on a
clone of the committed project.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The project as a user's clone has it (committed files only), outside this checkout."""
    root = tmp_path_factory.mktemp("clone")
    tar = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True, check=True
    ).stdout
    (root / "head.tar").write_bytes(tar)
    # the "data" filter (no absolute paths, links out of the folder, devices) where this Python
    # has it (3.11.4+; Debian's 3.11.2 does not)
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(root / "head.tar") as archive:
        archive.extractall(root / "repo", **safe)
    # the working tree's environment file (the committed one may predate this change)
    (root / "repo" / "environment.yml").write_text((ROOT / "environment.yml").read_text())
    return root / "repo"


def local_entries(env_file: Path) -> list[str]:
    deps = yaml.safe_load(env_file.read_text())["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    return [line for line in pip if line.startswith(("-e", ".", "/", "$"))]


def replay_conda_pip_step(workdir: Path, entries: list[str], env: dict):
    """pip as conda runs it: a requirements file in ``workdir``, pip started there."""
    workdir.mkdir(parents=True, exist_ok=True)
    requirements = workdir / "condaenv.test.requirements.txt"
    requirements.write_text("\n".join(entries) + "\n")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--no-deps",
        "--no-index",
        "--no-build-isolation",
        "-r",
        requirements.name,
    ]
    clean = {k: v for k, v in os.environ.items() if k != "QUANTUNLEARN_ROOT"}
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env={**clean, **env})


def test_the_rules_env_is_the_root_environment_file():
    link = ROOT / "workflow" / "envs" / "quantunlearn.yaml"
    assert link.resolve() == (ROOT / "environment.yml").resolve()
    assert local_entries(link) == ["-e ${QUANTUNLEARN_ROOT}"]


def test_pip_step_installs_the_clone_from_inside_dot_snakemake(clone):
    entries = local_entries(clone / "environment.yml")
    conda_dir = clone / ".snakemake" / "conda"
    run = replay_conda_pip_step(conda_dir, entries, {"QUANTUNLEARN_ROOT": str(clone)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Would install quantunlearn-0.1.0" in run.stdout
    # without the variable (the Snakefile not run) pip names the unexpanded path
    unset = replay_conda_pip_step(conda_dir, entries, {})
    assert unset.returncode != 0 and "QUANTUNLEARN_ROOT" in unset.stderr
    # what the former `-e ..` did from there: .snakemake/ is no Python project
    old = replay_conda_pip_step(conda_dir, ["-e .."], {})
    assert old.returncode != 0 and "does not appear to be a Python project" in old.stderr


def test_snakefile_sets_the_root_before_environments_are_created(tmp_path):
    """Parsing the workflow (as Snakemake does before creating any environment) sets
    QUANTUNLEARN_ROOT to the Snakefile's folder."""
    code = f"""
import os
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import OutputSettings, ResourceSettings
with SnakemakeApi(OutputSettings()) as api:
    api.workflow(resource_settings=ResourceSettings(), snakefile=Path({str(ROOT / "Snakefile")!r}),
                 workdir=Path({str(tmp_path)!r})).lint()
print("ROOT=" + os.environ["QUANTUNLEARN_ROOT"])
"""
    env = {k: v for k, v in os.environ.items() if k != "QUANTUNLEARN_ROOT"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == f"ROOT={ROOT}"
