"""Pin and record every input: model and dataset sources, the project's git state, versions.

A *source* in a config is a local folder or a Hugging Face hub id with an optional revision,
``org/name@revision`` (a branch, a tag or a 40-hex commit); ``parse_source`` tells them apart.
The workflow's ``download`` rule fetches every hub source of a study once (``download_input``,
on the login node) and writes a *pin*: the commit the revision resolved to and the local
snapshot folder (``…/snapshots/<commit>/``). The compute jobs read the pins (`Pins`) and load
the snapshot folders, so they never talk to the hub (``HF_HUB_OFFLINE=1``); every metrics row
then carries each input's source and commit, the project's git commit and whether its tree was
dirty, and the versions of the packages that computed it (`provenance_columns`).

Only `dry_run_files` and `snapshot` call the hub, one call each; everything else works on local
files and is tested offline.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

COMMIT = re.compile(r"^[0-9a-f]{40}$")
#: A hub id with an optional revision: owner/name[@branch|tag|commit]
HUB_SPEC = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}(@[\w.\-/]+)?$")
_SNAPSHOT = re.compile(r"/snapshots/([0-9a-f]{40})(?:/|$)")

#: What the download step fetches of a model repo: configs, safetensors weights, tokenizer
#: files (not the .bin / .pth / .gguf copies of the same weights that many repos also hold).
MODEL_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt"]
#: Of a repo used only for its tokenizer: no weights.
TOKENIZER_PATTERNS = ["*.json", "*.model", "*.txt"]
#: The inputs that get columns of their own in a metrics row (all of them are in ``inputs``).
ROLES = ("model", "tokenizer", "target", "retrain", "benchmark")


class HubDownloadError(RuntimeError):
    """A hub dataset (MUSE split, RWKU config, ...) could not be loaded: no network, a wrong name
    or revision; the message names the dataset and what to do."""


@dataclass(frozen=True)
class Source:
    """A model, tokenizer or dataset source: a local folder or a hub repo at a revision."""

    spec: str  # as written in the config
    kind: str  # "local" or "hub"
    path: str | None = None  # local: the absolute folder
    repo_id: str | None = None  # hub: owner/name
    revision: str | None = None  # hub: as written; None = the default branch

    def __str__(self) -> str:
        return self.spec


def is_hub_spec(spec: str) -> bool:
    """True for ``owner/name[@revision]`` that is not an existing local path."""
    return bool(HUB_SPEC.match(spec)) and not Path(spec).exists() and "--" not in spec


def parse_source(spec: str) -> Source:
    """``spec`` as a local folder (if it exists) or ``owner/name[@revision]``.

    A folder that exists wins over a hub id of the same spelling, as in ``from_pretrained``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a model or dataset source must be a non-empty string, got {spec!r}")
    local = Path(spec).expanduser()
    if local.is_dir():
        return Source(spec=spec, kind="local", path=str(local.resolve()))
    if local.exists():
        raise ValueError(f"source {spec!r} is a file, not a folder (a checkpoint is a folder)")
    if not is_hub_spec(spec):
        raise ValueError(
            f"source {spec!r} is neither an existing folder nor a hub id like 'owner/name' or "
            "'owner/name@revision' (a branch, a tag or a 40-hex commit)"
        )
    repo_id, _, revision = spec.partition("@")
    return Source(spec=spec, kind="hub", repo_id=repo_id, revision=revision or None)


def pin_name(spec: str, repo_type: str) -> str:
    """``models/owner--name@revision`` (a revision's "/" as "+"), the pin file's stem."""
    source = parse_source(spec)
    name = source.repo_id.replace("/", "--")
    if source.revision:
        name += "@" + source.revision.replace("/", "+")
    return f"{repo_type}s/{name}"


def pin_file(results: str | Path, spec: str | None, repo_type: str) -> list[str]:
    """The pin of a hub source as a one-element list (a DAG input); [] for a local folder."""
    if spec is None or not is_hub_spec(spec):
        return []
    return [f"{results}/inputs/{pin_name(spec, repo_type)}.json"]


def split_spec(spec: str) -> tuple[str, str | None]:
    """(what ``from_pretrained`` takes, revision): a folder stays as it is; ``owner/name@rev``
    becomes ``("owner/name", "rev")``."""
    if "@" not in spec or Path(spec).exists():
        return spec, None
    source = parse_source(spec)
    return source.repo_id, source.revision


def snapshot_commit(path: str | os.PathLike | None) -> str | None:
    """The commit of a folder inside a hub cache snapshot (``…/snapshots/<commit>/…``)."""
    if path is None:
        return None
    match = _SNAPSHOT.search(Path(path).resolve().as_posix())
    return match.group(1) if match else None


# ------------------------------------------------------------------------------ the hub calls
def dry_run_files(source: Source, repo_type: str, allow_patterns=None) -> list:
    """What ``snapshot_download`` would fetch (huggingface_hub ``DryRunFileInfo``s); needs the
    hub (offline it raises huggingface_hub's DryRunError)."""
    from huggingface_hub import snapshot_download

    return snapshot_download(
        source.repo_id,
        repo_type=repo_type,
        revision=source.revision,
        allow_patterns=allow_patterns,
        dry_run=True,
    )


def snapshot(source: Source, repo_type: str, allow_patterns=None) -> str:
    """The local snapshot folder of a hub source: downloaded, or found in the cache offline."""
    from huggingface_hub import snapshot_download

    return snapshot_download(
        source.repo_id, repo_type=repo_type, revision=source.revision, allow_patterns=allow_patterns
    )


# ------------------------------------------------------------------------------ sizing
def download_plan(files: Iterable) -> dict:
    """Sum a dry run: files and bytes of the snapshot, and what still has to be downloaded.

    ``files`` are huggingface_hub ``DryRunFileInfo`` (``filename``, ``file_size``,
    ``will_download``, ``commit_hash``). A size the hub does not report is counted in
    ``unknown_sizes``, never guessed.
    """
    files = list(files)
    commits = {f.commit_hash for f in files}
    if len(commits) > 1:
        raise ValueError(f"a dry run spans several commits {sorted(commits)}; expected one")
    known = [f for f in files if f.file_size is not None]
    return {
        "commit": commits.pop() if commits else None,
        "n_files": len(files),
        "bytes_total": sum(f.file_size for f in known),
        "bytes_to_download": sum(f.file_size for f in known if f.will_download),
        "n_to_download": sum(bool(f.will_download) for f in files),
        "unknown_sizes": len(files) - len(known),
    }


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units, one decimal)."""
    if n < 0:
        raise ValueError(f"a size cannot be negative, got {n}")
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"


def check_free_space(needed: int, folder: str | os.PathLike) -> None:
    """Raise OSError naming both sizes when ``folder``'s file system has less than ``needed``."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise OSError(
            f"the download needs {human_bytes(needed)} but {existing} has {human_bytes(free)} "
            "free; point HF_HOME / HF_HUB_CACHE at a larger file system"
        )


# ------------------------------------------------------------------------------ pins
def download_input(
    spec: str,
    repo_type: str,
    out_json: str | os.PathLike,
    allow_patterns=None,
    check: Callable[[str], None] | None = None,
) -> dict:
    """Fetch one hub source into the hub cache and write its pin (``out_json``).

    Online, a dry run sizes the download first and the free disk is checked; offline
    (``HF_HUB_OFFLINE=1``) the snapshot must already be in the cache. ``check(folder)`` then
    loads what the jobs will load; the pin (the source as configured, the commit it resolved
    to, the snapshot folder the jobs load) is written only when it passes.
    """
    from huggingface_hub import constants

    from quantunlearn.io import write_json

    source = parse_source(spec)
    if source.kind != "hub":
        raise ValueError(f"{spec!r} is a local folder: there is nothing to download")
    offline = constants.HF_HUB_OFFLINE
    where = "the local hub cache (HF_HUB_OFFLINE=1)" if offline else "the hub"
    try:
        plan = None if offline else download_plan(dry_run_files(source, repo_type, allow_patterns))
        if plan is not None:
            todo = human_bytes(plan["bytes_to_download"])
            print(f"{spec}: {plan['n_to_download']} of {plan['n_files']} files to fetch, {todo}")
            check_free_space(plan["bytes_to_download"], constants.HF_HUB_CACHE)
        path = snapshot(source, repo_type, allow_patterns)
    except Exception as err:  # the hub's errors (and a full disk), said with what to do
        raise LookupError(
            f"the download step cannot fetch {spec} ({repo_type}) from {where}: {err}. Run it "
            "where the hub is reachable (and logged in, for gated models like Llama-2)."
        ) from err
    files = [p for p in Path(path).rglob("*") if p.is_file()]
    pin = {
        "spec": spec,
        "repo_id": source.repo_id,
        "revision": source.revision,
        "repo_type": repo_type,
        "commit": snapshot_commit(path),
        "path": str(path),
        "allow_patterns": list(allow_patterns) if allow_patterns else None,
        "n_files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
    }
    if pin["commit"] is None:
        raise ValueError(f"{spec}: {path} is not a hub snapshot folder (no commit in its path)")
    if check is not None:
        check(path)
    write_json(pin, out_json)
    return pin


class Pins:
    """The pins a job was given: where each hub source is on disk, and its commit."""

    def __init__(self, pins: Iterable[Mapping]):
        self.by_spec = {pin["spec"]: dict(pin) for pin in pins}

    @classmethod
    def read(cls, files: Iterable[str | os.PathLike]) -> Pins:
        return cls(json.loads(Path(f).read_text(encoding="utf-8")) for f in files)

    def folder(self, spec: str | None) -> str | None:
        """The pinned snapshot folder of a hub source; None when ``spec`` has no pin."""
        if spec is None or spec not in self.by_spec:
            return None
        path = self.by_spec[spec]["path"]
        if not Path(path).is_dir():
            raise FileNotFoundError(
                f"{spec}: the pinned snapshot {path} is gone (hub cache cleaned?); delete its pin "
                "and run the download step again"
            )
        return path

    def local(self, spec: str | None) -> str | None:
        """What to load: the pinned snapshot of a hub source, a local folder as it is; a hub
        source without a pin stays a hub id (resolved online)."""
        return self.folder(spec) or spec

    def record(self, spec: str | None) -> dict:
        """``{"source": spec, "commit": …}``: the pinned commit, or that of a snapshot folder."""
        if spec is None:
            return {"source": None, "commit": None}
        pin = self.by_spec.get(spec)
        return {"source": spec, "commit": pin["commit"] if pin else snapshot_commit(spec)}


# ------------------------------------------------------------------------------ git, versions
def git_state(repo_dir: str | os.PathLike, *, untracked: bool = True) -> dict:
    """``{"commit": sha | None, "dirty": bool | None}`` of the checkout at ``repo_dir``.

    Dirty: tracked files differ from HEAD or, with ``untracked``, a file git does not ignore is
    not committed (a new module counts). Not a git checkout (or no git): both None.
    """

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo_dir), *args], capture_output=True, text=True, check=True
        ).stdout

    try:
        commit = git("rev-parse", "--verify", "HEAD").strip()
        status = git(
            "status", "--porcelain", f"--untracked-files={'normal' if untracked else 'no'}"
        )
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


@lru_cache(maxsize=1)
def code_state() -> dict:
    """The git state of the checkout this package is imported from (an editable install);
    both None for an installed copy, which is then identified by its version alone."""
    return git_state(Path(__file__).resolve().parents[1])


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Installed version of each distribution (None when absent) plus the Python version (the
    metric rows record `quantunlearn.evaluation.cell.PACKAGES`)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance_columns(inputs: Mapping[str, Mapping]) -> dict:
    """The columns every metrics row carries: the code's git commit and dirty flag, every input
    (role -> ``{"source", "commit"}``) as JSON, ``{role}_source`` / ``{role}_commit`` of
    the `ROLES` (None where a cell has no such input), and ``model_content``: the content of a
    local audited checkpoint (``sha256:...``, `quantunlearn.models.checkpoint.fingerprint`)."""
    for role, record in inputs.items():
        commit = record.get("commit")
        if commit is not None and not COMMIT.match(commit):
            raise ValueError(f"input {role}: {commit!r} is not a 40-hex commit")
    code = code_state()
    columns = {
        "git_commit": code["commit"],
        "git_dirty": code["dirty"],
        "inputs": json.dumps({k: dict(v) for k, v in inputs.items()}, sort_keys=True),
    }
    for role in ROLES:
        record = inputs.get(role) or {}
        columns[f"{role}_source"] = record.get("source")
        columns[f"{role}_commit"] = record.get("commit")
    # a local audited checkpoint has no commit: its content (sha256 of its files) instead
    columns["model_content"] = (inputs.get("model") or {}).get("content")
    return columns
