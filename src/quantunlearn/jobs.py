"""What the thin workflow scripts share: a job's log, and quiet imports.

A script imports the package function it calls *inside* ``logged(...)``: torch, transformers and
the quantization libraries are imported there, so whatever they print goes to the job's log
file, not the console (and the workflow itself parses without importing them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from pathlib import Path

#: Messages that libraries log on every import and that are harmless here: torchao's optional
#: CUDA kernels that a CPU build cannot load, torch's deprecation note about torchao registering
#: its enums with pytree, and bitsandbytes' optional CPU kernels from the `kernels` package.
_HARMLESS = {
    "torchao": "Failed to load",
    "torch.utils._pytree": "is an Enum subclass and is now natively supported",
    "bitsandbytes.backends.cpu.ops": "from kernels-community",
}


class _DropHarmless(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in str(record.msg)


def quiet_known_warnings() -> None:
    """Drop the `_HARMLESS` log records (idempotent; call before importing torch)."""
    for name, text in _HARMLESS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropHarmless) for f in logger.filters):
            logger.addFilter(_DropHarmless(text))


#: What keeps a job off the Hugging Face hub: it loads the snapshot folders that the download
#: step pinned (quantunlearn.study.inputs), so a hundred cluster jobs never download anything.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@contextlib.contextmanager
def logged(log_path: str | Path | None, threads: int | None = None, hub: bool = False):
    """Send the job's stdout, stderr (progress bars included) and tracebacks to its log file,
    and give torch the job's threads. The traceback also goes to the real stderr, so that
    Snakemake's console names the error. Unless ``hub`` (the download step), the job runs with
    `OFFLINE` set, before the hub libraries are imported."""
    if not hub:
        os.environ.update(OFFLINE)
    quiet_known_warnings()
    if not log_path:
        _set_threads(threads)
        yield
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    real_stderr = sys.stderr
    with open(log_path, "w", buffering=1) as fh:
        logging.basicConfig(stream=fh, level=logging.INFO, force=True)
        with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            try:
                _set_threads(threads)
                yield
            except BaseException as exc:
                traceback.print_exc(file=fh)
                print(f"{type(exc).__name__}: {exc} (log: {log_path})", file=real_stderr)
                raise


def _set_threads(threads: int | None) -> None:
    """One job, its own cores: Snakemake's `threads` become torch's intra-op threads."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))
