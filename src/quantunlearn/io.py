"""Writing results so that nothing half-written ever looks finished.

Every file and folder is written under a temporary name beside its destination and renamed
into place only when complete: a crash, a NaN loss or a killed job leaves no partial result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pandas as pd


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file in the same folder, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(obj, path: str | Path) -> None:
    text = json.dumps(obj, indent=1, sort_keys=True, default=str)
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_parquet(frame: pd.DataFrame, path: str | Path) -> None:
    atomic_write(path, lambda p: frame.to_parquet(p, index=False))


@contextmanager
def atomic_dir(final: str | Path):
    """Yield a temporary folder that becomes `final` only if the block succeeds."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def config_hash(obj) -> str:
    """A short, stable hash of a JSON-able object (a cell's configuration)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
