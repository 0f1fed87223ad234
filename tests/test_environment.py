"""One environment: the installed packages are the lock (constraints.txt), every requirement of
pyproject.toml is locked, environment.yml pins the same versions, and every metric row records
the versions of every dependency (issue 12)."""

from __future__ import annotations

import json
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from quantunlearn.evaluation.cell import PACKAGES, package_versions

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = (
    "regenerate the lock with `python tools/lock.py`, then "
    '`pip install -c constraints.txt -e ".[test]"`'
)


def _name(requirement: str) -> str:
    """The normalized project name of a requirement or pin (PEP 503)."""
    name = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)[1]
    return re.sub(r"[-_.]+", "-", name).lower()


def _version(text: str) -> str:
    return text.split("+")[0]  # 2.13.0+cpu satisfies the pin 2.13.0


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.strip().removeprefix("- ")
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[_name(name)] = version.strip()
    return pins


@pytest.fixture(scope="module")
def lock() -> dict[str, str]:
    return _pins((ROOT / "constraints.txt").read_text().splitlines())


def _requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return project["dependencies"] + extras


def test_installed_packages_are_the_locked_versions(lock):
    wrong = {}
    for name, version in lock.items():
        try:
            installed = _version(metadata.version(name))
        except metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != version:
            wrong[name] = f"locked {version}, installed {installed}"
    assert not wrong, f"{wrong}: {REGENERATE}"
    assert lock["torch"] == "2.13.0"  # the CPU wheel's release, in every install


def test_every_requirement_is_locked_at_a_version_it_allows(lock):
    from packaging.requirements import Requirement

    missing, excluded = [], []
    for text in _requirements():
        requirement = Requirement(text)
        name = _name(requirement.name)
        if name not in lock:
            missing.append(name)
        elif not requirement.specifier.contains(lock[name], prereleases=True):
            excluded.append(f"{text} (locked {lock[name]})")
    assert not missing, f"pyproject.toml requires {missing}, which the lock lacks: {REGENERATE}"
    assert not excluded, f"the lock breaks {excluded}: {REGENERATE}"


def test_environment_yml_pins_the_lock(lock):
    conda = _pins((ROOT / "environment.yml").read_text().splitlines())
    assert conda == lock, REGENERATE


def test_install_lines_use_the_lock():
    """Every documented pip install of the project constrains it with the lock."""
    texts = {p: (ROOT / p).read_text() for p in ("README.md", ".ci/run", "docs/running.md")}
    for path, text in texts.items():
        installs = re.findall(r"pip install [^\n`]*-e [^\n`]*", text)
        assert installs, path
        for line in installs:
            assert "-c constraints.txt" in line, (path, line)


def test_metric_rows_record_every_dependency():
    """PACKAGES holds every dependency of the study (pyproject's `dependencies`), so that a
    metric row says which pandas, numpy, datasets, ... computed it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    missing = {_name(r) for r in project["dependencies"]} - {_name(p) for p in PACKAGES}
    assert not missing, f"add {sorted(missing)} to quantunlearn.evaluation.cell.PACKAGES"
    recorded = json.loads(package_versions())
    for name in ("pandas", "numpy", "datasets", "peft", "accelerate", "snakemake", "safetensors"):
        assert recorded[name] == metadata.version(name)
    assert recorded["huggingface_hub"] == metadata.version("huggingface_hub")
