"""Fetch the wheels benchmarks/gpu_check.py needs on the GPU machine into .whl/ (docs/gpu.md).

    python benchmarks/gpu_wheels.py [--dest .whl] [--python 3.12]

The device has no network; its image brings Python 3.12, CUDA torch, accelerate, pandas,
pyarrow, matplotlib, safetensors, huggingface-hub and tokenizers, but transformers 5.17 and none
of bitsandbytes, GPTQModel, rouge-score or jsonschema. This fetches, at the versions installed
here (the ones the tests ran with), for CPython 3.12 on manylinux x86-64:

  transformers (the project pins 5.23.0; generation's KV cache builds on its cache classes),
  bitsandbytes (its wheel holds a library for every CUDA version, 43 MB: only the CUDA 13 ones
  are kept, so that everything fits the 64 MiB a device call carries), rouge-score and nltk
  (VerbMem/KnowMem's ROUGE), jsonschema and its three dependencies (config validation),
  GPTQModel and the packages it imports (no binary wheel on PyPI: built here from its sdist,
  pure Python, so its compiled CUDA kernels are absent and gpu_check reports them skipped; its
  regex library pypcre has C code and travels as an sdist, built on the device: if that fails,
  only the gptq section is skipped).

Prints the total size against the device's 64 MiB limit (the repository travels too).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

BINARY = [
    "transformers",
    "bitsandbytes",
    "nltk",
    "jsonschema",
    "jsonschema-specifications",
    "referencing",
    "rpds-py",
    "torchao",
    "datasets",
    "multiprocess",
    "dill",
]
#: only an sdist on PyPI, pure Python: built into a wheel here
PURE_SDIST = ["rouge-score", "gptqmodel", "tokenicer", "logbar", "device-smi", "defuser"]
#: only an sdist on PyPI, with C code: carried as the sdist (.whl/src/), built on the device
COMPILED_SDIST = ["pypcre"]
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
KEEP_BNB = ("libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so", "libbitsandbytes_cpu.so")
LIMIT_MIB = 64


def pinned(name: str) -> str:
    return f"{name}=={metadata.version(name)}"


def fetch(dest: Path, python: str) -> None:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [
            *pip,
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            python,
            "--implementation",
            "cp",
            *platforms,
            "-d",
            str(dest),
            *map(pinned, BINARY),
        ],
        check=True,
    )
    subprocess.run(
        [
            *pip,
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dest),
            *map(pinned, PURE_SDIST),
        ],
        check=True,
    )
    subprocess.run(
        [
            *pip,
            "download",
            "-q",
            "--no-deps",
            "--no-binary=:all:",
            "--no-build-isolation",  # fetch the sdist only: never build its build dependencies
            "-d",
            str(dest / "src"),
            *map(pinned, COMPILED_SDIST),
        ],
        check=True,
    )


def slim_bitsandbytes(dest: Path) -> None:
    """Rewrite the bitsandbytes wheel without the libraries of other CUDA/ROCm/XPU versions
    (their RECORD lines go too, so that pip installs exactly what the wheel lists)."""
    for wheel in dest.glob("bitsandbytes-*.whl"):
        slim = wheel.with_suffix(".slim")
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as out:
            for item in src.infolist():
                name = item.filename.rsplit("/", 1)[-1]
                if name.startswith("libbitsandbytes_") and name not in KEEP_BNB:
                    continue
                data = src.read(item)
                if name == "RECORD":
                    lines = data.decode().splitlines()
                    data = (
                        "\n".join(
                            ln
                            for ln in lines
                            if not (
                                ln.split(",")[0].rsplit("/", 1)[-1].startswith("libbitsandbytes_")
                                and ln.split(",")[0].rsplit("/", 1)[-1] not in KEEP_BNB
                            )
                        ).encode()
                        + b"\n"
                    )
                out.writestr(item, data)
        slim.replace(wheel)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dest", type=Path, default=Path(".whl"))
    ap.add_argument("--python", default="3.12", help="the device's Python version")
    args = ap.parse_args(argv)
    args.dest.mkdir(exist_ok=True)
    fetch(args.dest, args.python)
    slim_bitsandbytes(args.dest)
    wheels = sorted(args.dest.glob("*.whl")) + sorted(args.dest.glob("src/*"))
    total = sum(w.stat().st_size for w in wheels) / 2**20
    for w in wheels:
        print(f"{w.stat().st_size / 2**20:7.2f} MiB  {w.name}")
    print(
        f"{total:.1f} MiB in {len(wheels)} wheels (a device call carries {LIMIT_MIB} MiB with the "
        "repository)"
    )
    return 0 if total < LIMIT_MIB - 4 else 1


if __name__ == "__main__":
    sys.exit(main())
