"""What the thin workflow scripts share: logging a job to its Snakemake log file."""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from pathlib import Path


@contextlib.contextmanager
def logged(log_path: str | Path | None, threads: int | None = None):
    """Send the job's stdout, stderr (progress bars included) and tracebacks to its log file.

    The traceback also goes to the real stderr, so that Snakemake's console names the error.
    """
    from quantunlearn.training import set_threads

    set_threads(threads)
    if not log_path:
        yield
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    real_stderr = sys.stderr
    with open(log_path, "w", buffering=1) as fh:
        logging.basicConfig(stream=fh, level=logging.INFO, force=True)
        with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            try:
                yield
            except BaseException as exc:
                traceback.print_exc(file=fh)
                print(f"{type(exc).__name__}: {exc} (log: {log_path})", file=real_stderr)
                raise
