"""Writing results so that nothing half-written ever looks finished.

Every file and folder is written under a temporary name beside its destination and renamed
into place only when complete: a crash, a NaN loss or a killed job leaves no partial result.
The lowest layer also holds the one parser of numbers that YAML leaves as text (`parse_number`),
shared by the config and the hyperparameter groups.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

#: A number as YAML 1.1 (PyYAML) may leave it as text: ``1e-5`` (no dot) is read as a string.
_NUMBER_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def parse_number(text: str) -> int | float | None:
    """The number ``text`` spells (surrounding blanks ignored): an int for digits alone
    (``"16"``), else a float (``"1e-5"``, ``"0.1"``); None when it is not a number."""
    text = text.strip()
    if not _NUMBER_RE.fullmatch(text):
        return None
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)


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


def read_parquet(path: str | Path, what: str = "result file") -> pd.DataFrame:
    """A result file written by `write_parquet`; one that cannot be read (truncated by a copy,
    damaged on disk) is named, with how to rebuild it, instead of pyarrow's bare message."""
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(
            f"{what} {path} cannot be read as Parquet ({type(err).__name__}: {err}); it is "
            "damaged or partial: delete it and run Snakemake again, which rebuilds it"
        ) from None


#: The temporary folder of `atomic_dir`: ``.<name>.tmp-<pid>`` beside the destination.
_TMP_DIR = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")


@contextmanager
def atomic_dir(final: str | Path):
    """Yield a temporary folder that becomes `final` only if the block succeeds.

    The temporary folder is ``.<name>.tmp-<pid>`` beside `final`; leftovers of killed jobs
    (whose process is gone) are removed first (`remove_leftovers`). Files are made readable as
    the umask allows (libraries that write through ``mkstemp`` leave them 0600). An existing
    `final` is replaced only once the new folder is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _readable(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def remove_leftovers(final: str | Path) -> list[Path]:
    """Remove the ``.<name>.tmp-<pid>`` folders `atomic_dir` left beside `final` when its job was
    killed: only names of exactly that pattern, and only where that process is not running (or
    is this one, or belongs to another user). Returns the removed folders."""
    final = Path(final)
    removed = []
    if not final.parent.is_dir():
        return removed
    for path in final.parent.iterdir():
        match = _TMP_DIR.match(path.name)
        if not match or match["name"] != final.name or not path.is_dir() or path.is_symlink():
            continue
        if _alive_elsewhere(int(match["pid"])):
            continue
        shutil.rmtree(path, ignore_errors=True)
        print(f"removed {path}: left by an interrupted job (process {match['pid']} is gone)")
        removed.append(path)
    return removed


def _alive_elsewhere(pid: int) -> bool:
    """Whether another process of this user with this pid is running (its folder may be live)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: not one of our jobs
        return False
    return True


def _readable(folder: Path) -> None:
    """Give every file the mode a plain ``open()`` would (0644 under umask 022): the folder was
    made with ``mkdir`` (0777 & ~umask), so its mode without the x bits is the target."""
    wanted = folder.stat().st_mode & 0o666
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            mode = path.stat().st_mode & 0o777
            if not mode & 0o111 and mode != wanted:
                path.chmod(wanted)


def config_hash(obj) -> str:
    """A short, stable hash of a JSON-able object (a cell's configuration)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
