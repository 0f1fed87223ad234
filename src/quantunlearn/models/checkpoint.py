"""What a saved checkpoint is, without loading it: its content's hash, its ``config.json`` and
its safetensors headers (the 8-byte length, the JSON table of every tensor's dtype, shape and
byte range).

Audit mode evaluates checkpoints made elsewhere (``benchmarks.<b>.models.unlearned``). A local
one is identified by its contents, not its path: `fingerprint` (the SHA-256 of every file, kept
per size and modification time so that a file is read once) is part of its cells' config, so
replacing its files makes new cells. `problems` reads the headers only and says whether the
files are whole (a truncated or random file is refused) and whether the checkpoint has the
target's architecture, width, vocabulary and tensors, naming the first mismatch. Torch-free:
the workflow runs both at parse time.
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct
from os import PathLike
from pathlib import Path

from quantunlearn.io import write_json

INDEX = "model.safetensors.index.json"
#: The config.json keys that must agree with the target's (the shapes follow from them)
ARCHITECTURE_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)
#: Above this a safetensors header is not one (the format caps it at 100 MB)
MAX_HEADER = 100_000_000


class CheckpointError(ValueError):
    """A checkpoint that is not whole, or not the target's kind of model; says which file."""


def weight_files(folder: str | PathLike) -> list[Path]:
    """The safetensors files of a saved model: its index's shards, or ``*.safetensors``."""
    folder = Path(folder)
    index = folder / INDEX
    if index.is_file():
        try:
            shards = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
        except (ValueError, KeyError, AttributeError) as err:
            raise CheckpointError(f"{index}: not a safetensors index ({err})") from None
        return [folder / name for name in sorted(set(shards))]
    return sorted(folder.glob("*.safetensors"))


def read_header(path: Path) -> dict:
    """{tensor name: {"dtype", "shape", "data_offsets"}} of one safetensors file, checked to be
    whole: its byte ranges tile the data that follows the header, to the last byte."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: {size} bytes, too short for a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER, size - 8):
            raise CheckpointError(
                f"{path}: not a safetensors file (its first 8 bytes announce a {length}-byte "
                f"header in a file of {size} bytes: truncated or another format)"
            )
        raw = fh.read(length)
    try:
        header = json.loads(raw)
    except ValueError:
        raise CheckpointError(f"{path}: not a safetensors file (its header is not JSON)") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
    if 8 + length + end != size:
        raise CheckpointError(
            f"{path}: {size} bytes, but its header describes {8 + length + end} (truncated or "
            "corrupt; save or copy the checkpoint again)"
        )
    return tensors


def _tensors(folder: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} over every weight file of the checkpoint."""
    files = weight_files(folder)
    if not files:
        raise CheckpointError(f"{folder} holds no safetensors weights (*.safetensors or {INDEX})")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{folder}: weight shards {missing} of its index are missing")
    return {k: tuple(v["shape"]) for f in files for k, v in read_header(f).items()}


def _config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{folder} holds no config.json (not a saved model)") from None
    except ValueError as err:
        raise CheckpointError(f"{path}: not JSON ({err})") from None
    return {**config, **(config.get("text_config") or {})}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 23):
            digest.update(chunk)
    return digest.hexdigest()


def _file_hashes(folder: Path, cache: Path | None) -> dict[str, list]:
    """{file name: [size, mtime_ns, sha256]} of every file of the folder; a file whose size and
    time are those of the cache (``cache``: a JSON file of the same) is not read again."""
    known: dict[str, list] = {}
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text(encoding="utf-8"))["files"]
        except (ValueError, KeyError):
            known = {}
    files = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        stat = path.stat()
        old = known.get(path.name)
        same = old is not None and old[:2] == [stat.st_size, stat.st_mtime_ns]
        files[path.name] = old if same else [stat.st_size, stat.st_mtime_ns, _sha256(path)]
    if cache is not None and files != known:
        write_json({"folder": str(folder.resolve()), "files": files}, cache)
    return files


@functools.lru_cache(maxsize=64)
def _fingerprint(folder: Path, cache: Path | None, stamp: tuple) -> str:
    files = _file_hashes(folder, cache)
    digest = hashlib.sha256()
    for name, (size, _, sha) in sorted(files.items()):
        digest.update(f"{name}:{size}:{sha}\n".encode())
    return "sha256:" + digest.hexdigest()


def fingerprint(folder: str | PathLike, cache: str | PathLike | None = None) -> str:
    """``sha256:<hex>`` of the checkpoint's contents: every file's name, size and SHA-256, so
    any other model (even one of the same shapes and size) gives another value. A file is read
    once per size and modification time: the hashes are kept in ``cache`` (a JSON file; None:
    in memory only), so a 13.5 GB checkpoint is hashed once, not at every parse."""
    folder = Path(folder)
    stamp = tuple(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
        if p.is_file()
    )
    return _fingerprint(folder, None if cache is None else Path(cache), stamp)


def problems(folder: str | PathLike, target: str | PathLike | dict | None) -> str | None:
    """The first reason the checkpoint cannot stand beside the target, or None: files that are
    not whole, then a config.json key of `ARCHITECTURE_KEYS` that differs, then a tensor the one
    has and the other has not, then a shape. ``target``: a saved model's folder (every check), a
    dict of the config.json keys it will have (a target the workflow trains: those keys only),
    or None (the checkpoint's own files only)."""
    folder = Path(folder)
    try:
        config, tensors = _config(folder), _tensors(folder)
        if target is None:
            return None
        if isinstance(target, dict):
            return _config_mismatch(config, target, "the target to be trained")
        target = Path(target)
        return _config_mismatch(config, _config(target), str(target)) or _tensor_mismatch(
            tensors, _tensors(target), target
        )
    except CheckpointError as err:
        return str(err)
    except OSError as err:
        return f"{folder}: cannot be read ({err.strerror or err})"


def _config_mismatch(config: dict, target: dict, where: str) -> str | None:
    for key in ARCHITECTURE_KEYS:
        if key in target and config.get(key) != target[key]:
            return (
                f"config.json has {key} {config.get(key)!r}, the target ({where}) "
                f"{target[key]!r}: not the target's kind of model"
            )
    return None


def _tensor_mismatch(tensors: dict, target: dict, where: Path) -> str | None:
    for name in sorted(set(tensors) | set(target)):
        if name not in tensors:
            return f"has no tensor {name} (the target {where} has)"
        if name not in target:
            return f"has a tensor {name} that the target {where} has not"
        if tensors[name] != target[name]:
            return (
                f"tensor {name} has shape {list(tensors[name])}, the target's ({where}) "
                f"{list(target[name])}"
            )
    return None


def check(folder: str | PathLike, target: str | PathLike | dict | None, what: str) -> None:
    """`problems` as an error (the jobs' check, before any evaluation): ``what`` names it."""
    problem = problems(folder, target)
    if problem:
        raise CheckpointError(f"{what} ({folder}): {problem}")


__all__ = ["CheckpointError", "check", "fingerprint", "problems", "read_header", "weight_files"]
