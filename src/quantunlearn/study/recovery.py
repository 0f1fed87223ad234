"""A failed job leaves a finished study as it was: nothing to do afterwards.

The benchmark folder, the tiny tokenizer and the target and retrain models are Snakemake
``update()`` outputs: when their job fails, Snakemake restores the previous version. But it
records the failed job's settings as if it had written them (Snakemake 9 calls its
``persistence.finished`` after a failed job too), and restores a single file with a new time
stamp. A config that failed (a prepare job refused at run time, a target training from a second
config killed half-way) then made the finished study re-plan that output and every cell after
it, about 60 jobs for the micro study, until ``--cleanup-metadata``.

`keep` runs when a run starts (the Snakefile's ``onstart``): for every ``update()`` output of a
job about to run, it keeps the output's content stamp, its time stamp and Snakemake's record.
`restore` runs when the run failed (``onerror``): an output whose content is what it was (the
failed job's output was restored) gets its record and time stamp back; one a job replaced keeps
the new record (that job succeeded).
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Kept:
    """One ``update()`` output as it was when the run started."""

    path: str
    content: tuple
    mtime_ns: int
    record: Any  # Snakemake's MetadataRecord (None: none was recorded)


def content_stamp(path: str | os.PathLike) -> tuple:
    """What an output holds: a file's size and SHA-256; a folder's files with their sizes and
    modification times (a restored folder is copied with its files' times, so they stay)."""
    path = Path(path)
    if path.is_file():
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 23):
                digest.update(chunk)
        return ("file", path.stat().st_size, digest.hexdigest())
    files = []
    for root, _, names in os.walk(path):
        for name in names:
            full = Path(root, name)
            stat = full.stat()
            files.append((str(full.relative_to(path)), stat.st_size, stat.st_mtime_ns))
    return ("folder", *sorted(files))


def keep(workflow) -> list[Kept]:
    """The ``update()`` outputs of the jobs this run will execute, as they are now."""
    from snakemake.io import is_flagged

    kept = []
    persistence = workflow.persistence
    for job in workflow.dag.needrun_jobs():
        for output in job.output:
            if is_flagged(output, "update") and os.path.exists(output):
                record = persistence._read_record(str(output))  # Snakemake's own key: the path
                stamp = content_stamp(output)
                mtime = os.stat(output).st_mtime_ns
                kept.append(Kept(str(output), stamp, mtime, copy.deepcopy(record)))
    return kept


def restore(workflow, kept: list[Kept]) -> list[str]:
    """After a failed run: the outputs restored to what they were get back their record (and a
    file its time stamp); returns their paths."""
    persistence = workflow.persistence
    persistence._clear_cache()
    restored = []
    for item in kept:
        if not os.path.exists(item.path) or content_stamp(item.path) != item.content:
            continue  # gone, or a job that succeeded replaced it: its new record stands
        now = persistence._read_record(item.path)
        changed = _as_dict(now) != _as_dict(item.record)
        if changed and item.record is None:
            persistence._delete_record(item.path)
        elif changed:
            persistence._write_record(item.path, item.record)
        if os.stat(item.path).st_mtime_ns != item.mtime_ns and Path(item.path).is_file():
            os.utime(item.path, ns=(item.mtime_ns, item.mtime_ns))  # restored by a copy
            changed = True
        if changed:
            restored.append(item.path)
    persistence._clear_cache()
    return restored


def _as_dict(record) -> dict | None:
    return None if record is None else dict(record.items())


__all__ = ["Kept", "content_stamp", "keep", "restore"]
