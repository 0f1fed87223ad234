"""Regenerate the lock: ONE set of package versions for the study, the tests and the SLURM extra.

    python tools/lock.py

builds a fresh virtual environment in a temporary folder, installs the project with every extra
(``pip install -c <torch pin> -e ".[test,slurm]"``: pip resolves the study's, the tests' and the
SLURM executor plugin's requirements together, so the study runs on the versions the tests use),
and writes its ``pip freeze`` as the pins of ``constraints.txt`` and of the pip section of
``environment.yml``. Every install line uses ``-c constraints.txt`` (README, ``.ci/run``,
docs/running.md); ``tests/test_environment.py`` checks that the installed packages are the locked
ones and that every requirement of ``pyproject.toml`` is locked. Run it after adding or changing
a dependency in ``pyproject.toml`` (a few minutes with a warm pip cache), then reinstall with
``pip install -c constraints.txt -e ".[test]"``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The input pin: the CPU build of torch (any other torch drags gigabytes of CUDA wheels). The
#: lock writes it without a local label (2.13.0, not 2.13.0+cpu) so that a GPU machine's CUDA
#: build of the same release satisfies it.
TORCH = "torch==2.13.0"
EXTRAS = "test,slurm"
HEADER = """\
# The lock: every package of the study, the tests and the SLURM extra at one version, generated
# by `python tools/lock.py` (Python {python}) from pyproject.toml and the CPU torch pin; do not
# edit by hand. Every install line uses it: pip install -c constraints.txt -e ".[test]".
# torch stays 2.13.0: any other torch pulls gigabytes of CUDA wheels.
"""
ENV_START = "      # --- the lock (tools/lock.py) ---"
ENV_END = "      # --- end of the lock ---"


def freeze() -> list[str]:
    """`pip freeze` of a fresh environment with the project and every extra installed."""
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = str(venv / "bin" / "python")
        pin = Path(tmp) / "torch.txt"
        pin.write_text(TORCH + "\n")
        install = ["-m", "pip", "install", "-q", "-c", str(pin), "-e", f"{ROOT}[{EXTRAS}]"]
        subprocess.run([python, *install], check=True)
        out = subprocess.run(
            [python, "-m", "pip", "freeze", "--exclude-editable"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return pins(out)


def pins(freeze_output: str) -> list[str]:
    """``name==version`` lines, local labels dropped (``+cpu``), sorted by name."""
    found = [line.strip() for line in freeze_output.splitlines() if "==" in line]
    found = [re.sub(r"\+[A-Za-z0-9.]+$", "", line) for line in found]
    return sorted(found, key=lambda line: line.lower())


def write_constraints(lines: list[str]) -> None:
    python = ".".join(map(str, sys.version_info[:2]))
    text = HEADER.format(python=python) + "\n".join(lines) + "\n"
    (ROOT / "constraints.txt").write_text(text, encoding="utf-8")


def write_environment(lines: list[str]) -> None:
    """The pip section of environment.yml between its lock markers: the same pins."""
    path = ROOT / "environment.yml"
    text = path.read_text(encoding="utf-8")
    start, end = text.index(ENV_START), text.index(ENV_END)
    block = "\n".join(f"      - {line}" for line in lines)
    path.write_text(text[:start] + ENV_START + "\n" + block + "\n" + text[end:], encoding="utf-8")


def main() -> None:
    lines = freeze()
    write_constraints(lines)
    write_environment(lines)
    print(f"locked {len(lines)} packages in constraints.txt and environment.yml")


if __name__ == "__main__":
    main()
