"""config/README.md is the generator's output, and every config key has a description."""

from __future__ import annotations

from pathlib import Path

from quantunlearn.study.config_docs import COMMAND, render
from quantunlearn.study.schema import config_schema

ROOT = Path(__file__).resolve().parents[1]


def keys(node: dict, path: str = ""):
    """(dotted key, schema node) of every key of the schema, $defs included."""
    for name, child in node.get("properties", {}).items():
        here = f"{path}.{name}" if path else name
        yield here, child
        yield from keys(child, here)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        yield from keys(extra, f"{path}.<name>")
    for name, child in node.get("$defs", {}).items():
        yield from keys(child, f"$defs.{name}")


def test_config_readme_is_generated():
    committed = (ROOT / "config" / "README.md").read_text(encoding="utf-8")
    assert committed == render(), f"config/README.md is stale: run `{COMMAND}`"


def test_every_key_has_a_description():
    missing = []
    for key, node in keys(config_schema()):
        if not str(node.get("description", "")).strip():
            missing.append(key)
    assert not missing, f"schema keys without a description: {missing}"


def test_the_walk_sees_every_kind_of_key():
    found = {key for key, _ in keys(config_schema())}
    assert {"results_dir", "tiny_model", "unlearn.methods", "storage.unlearned_models"} <= found
    assert "benchmarks.<name>.synthetic.n_people" in found  # under additionalProperties
    assert "$defs.tiny_model.train.lr" in found  # the shared tiny model
    assert "$defs.hyperparameters.lr" in found  # generated from the dataclasses
