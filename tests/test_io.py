"""Atomic folders: leftovers of killed jobs are removed, saved files are readable (issue 12)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from quantunlearn.io import atomic_dir, remove_leftovers

# A job killed while saving: a real process enters atomic_dir, writes half a model, is SIGKILLed.
KILLED_WHILE_SAVING = """
import os, signal, sys
from quantunlearn.io import atomic_dir
with atomic_dir(sys.argv[1]) as tmp:
    (tmp / "model.safetensors").write_bytes(b"half of the weights")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _umask_mode() -> int:
    """The mode a plain open() gives a new file here (0644 under umask 022)."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe"
        probe.write_text("x")
        return stat.S_IMODE(probe.stat().st_mode)


def test_a_killed_jobs_temporary_folder_is_removed_by_the_next_run(tmp_path):
    final = tmp_path / "model"
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_SAVING, str(final)])
    assert killed.returncode == -signal.SIGKILL
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".model.tmp-")]
    assert len(leftovers) == 1 and (leftovers[0] / "model.safetensors").is_file()
    assert not final.exists()  # nothing looks complete
    with atomic_dir(final) as tmp:
        (tmp / "model.safetensors").write_bytes(b"all of the weights")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert (final / "model.safetensors").read_bytes() == b"all of the weights"


def test_only_our_pattern_of_dead_processes_is_removed(tmp_path):
    final = tmp_path / "model"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    live_pid = os.getppid()  # the process that started pytest: alive, ours
    keep = [
        f".model.tmp-{live_pid}",  # a live writer: maybe another job still saving
        f".other.tmp-{dead_pid}",  # another output's folder
        f"model.tmp-{dead_pid}",  # not hidden: not our name
        ".model.tmp-abc",  # not a pid
        f".model.tmp-{dead_pid}.bak",
    ]
    for name in keep:
        (tmp_path / name).mkdir()
    (tmp_path / f".model.tmp-{dead_pid}").mkdir()
    (tmp_path / f".model.tmp-{os.getpid()}").mkdir()  # this process's own, from a failed try
    removed = remove_leftovers(final)
    assert sorted(p.name for p in removed) == sorted(
        [f".model.tmp-{dead_pid}", f".model.tmp-{os.getpid()}"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_saved_models_are_readable_like_every_other_file(tmp_path, tiny_model, tiny_tokenizer):
    """transformers writes model.safetensors through mkstemp (mode 0600); atomic_dir gives
    every file the mode of a plain open() under the umask (0644)."""
    wanted = _umask_mode()
    with atomic_dir(tmp_path / "model") as tmp:
        tiny_model.save_pretrained(tmp)
        tiny_tokenizer.save_pretrained(tmp)
        fd, raw = tempfile.mkstemp(dir=tmp)  # a 0600 file, as mkstemp makes them
        os.close(fd)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "model").iterdir()}
    assert "model.safetensors" in modes
    assert set(modes.values()) == {wanted}, modes
