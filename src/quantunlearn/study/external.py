"""Audit mode's checkpoints at parse time (``benchmarks.<b>.models.unlearned``): what a local one
is (its content, `identity`, part of its cells' config) and whether it can be evaluated beside
the benchmark's target (`external_errors`), read from ``config.json`` and the safetensors headers
without loading any weight (`quantunlearn.models.checkpoint`).

What a checkpoint is compared with depends on what the target is at parse time:

* a local folder: everything (architecture, widths, vocabulary, every tensor name and shape);
* a hub id whose download is already pinned (``results/inputs/models/...json``): the same,
  against the pinned snapshot folder;
* a tiny model the workflow trains: the architecture and widths of ``tiny_model`` (its
  vocabulary follows the tokenizer the DAG trains, so it is not known yet);
* a hub id not yet downloaded, or a target fine-tuned from a base model: the checkpoint's own
  files only.

Whatever was not compared here is compared by the evaluate and diagnose jobs before they load
anything (`quantunlearn.models.checkpoint.check`, against the target folder they are given).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from quantunlearn.data.provenance import is_hub_spec, pin_file
from quantunlearn.models import checkpoint


def is_local(spec: str) -> bool:
    """A checkpoint given as a folder on disk (not a hub id)."""
    return Path(spec).is_dir()


def content_cache(results: str | Path, spec: str) -> Path:
    """Where the file hashes of a local checkpoint are kept (one JSON file per folder)."""
    key = hashlib.sha256(str(Path(spec).resolve()).encode()).hexdigest()[:16]
    return Path(results) / "inputs" / "checkpoints" / f"{key}.json"


def identity(spec: str, results: str | Path) -> dict:
    """What makes an external checkpoint's cells: its source as configured and, for a local
    folder, its content (`checkpoint.fingerprint`, the file hashes kept in `content_cache`):
    files replaced by another model's make new cells, which the workflow evaluates again. A hub
    id's revision is its identity (the download step pins the commit it resolves to)."""
    if not is_local(spec):
        return {"external": spec}
    content = checkpoint.fingerprint(spec, content_cache(results, spec))
    return {"external": spec, "external_content": content}


def check_before_loading(spec: str, folder: str, target: str | None, content: str | None) -> None:
    """The evaluate and diagnose jobs' check of an external checkpoint, before anything is
    loaded: a local one still has the content its cells were planned for (``content``, from the
    cell's config), and the checkpoint (a local folder, or the snapshot the download pinned)
    has the target's architecture, vocabulary and tensors (``target``: its folder)."""
    if content is not None:
        now = checkpoint.fingerprint(spec)
        if now != content:
            raise checkpoint.CheckpointError(
                f"external checkpoint {spec}: its files changed after the workflow was planned "
                f"(content {now}, planned for {content}); run Snakemake again to evaluate the "
                "new files"
            )
    checkpoint.check(folder, target, f"external checkpoint {spec}")


def _pinned_folder(results: str, spec: str) -> str | None:
    """The snapshot folder the download step pinned for a hub model, if it has run."""
    for pin in pin_file(results, spec, "model"):
        try:
            folder = json.loads(Path(pin).read_text(encoding="utf-8"))["path"]
        except (OSError, ValueError, KeyError):
            return None
        return folder if Path(folder).is_dir() else None
    return None


def target_reference(config: dict, bench: str, tiny: dict) -> str | dict | None:
    """What a checkpoint of benchmark ``bench`` is compared with at parse time (module doc);
    ``tiny``: the tiny model the benchmark would train."""
    models = config["benchmarks"][bench]["models"]
    target = models["target"]
    if target is None:
        if models.get("base") is not None:
            return None
        return {
            "model_type": "llama",
            "hidden_size": tiny["hidden_size"],
            "intermediate_size": tiny["intermediate_size"],
            "num_hidden_layers": tiny["num_layers"],
            "num_attention_heads": tiny["num_heads"],
            "num_key_value_heads": tiny["num_heads"],
        }
    if Path(target).is_dir():
        return target
    if is_hub_spec(target):
        return _pinned_folder(config["results_dir"], target)
    return None


def external_errors(config: dict, bench: str, tiny: dict) -> list[str]:
    """Every local checkpoint of the benchmark: whole, and of the target's kind (module doc;
    ``tiny``: the tiny model the benchmark would train); each error names the key, the folder
    and the first mismatch."""
    unlearned = config["benchmarks"][bench]["models"].get("unlearned") or {}
    local = {name: spec for name, spec in unlearned.items() if is_local(spec)}
    if not local:
        return []
    reference = target_reference(config, bench, tiny)
    errors = []
    for name, spec in local.items():
        problem = checkpoint.problems(spec, reference)
        if problem:
            errors.append(
                f"config key benchmarks.{bench}.models.unlearned.{name}: {spec}: {problem}"
            )
    return errors


__all__ = [
    "check_before_loading",
    "content_cache",
    "external_errors",
    "identity",
    "is_local",
    "target_reference",
]
