"""A config as a tree of mappings: merging defaults into it, the nearest known key for a
message, and what a normalized config says about its benchmarks' models (the tiny model each
trains, which models the DAG trains).

The lowest of the config modules: `quantunlearn.study.config` (loading, defaults, error
wording), `quantunlearn.study.method_grid` and `quantunlearn.study.config_checks` build on it.
"""

from __future__ import annotations

import copy
import difflib


def deep_merge(base: dict, update: dict) -> dict:
    """``update`` over a copy of ``base``: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def did_you_mean(word: str, known) -> str:
    """`` (did you mean 'x'?)`` for the known word closest to ``word``; "" when none is close."""
    close = difflib.get_close_matches(str(word), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def benchmark_tiny_model(config: dict, bench: str) -> dict:
    """The tiny model a benchmark trains: the top-level ``tiny_model`` with its own overrides."""
    return deep_merge(config["tiny_model"], config["benchmarks"][bench].get("tiny_model") or {})


def trained_benchmarks(config: dict) -> list[str]:
    """The benchmarks whose models the DAG trains (no target named): tiny ones or fine-tuned."""
    return [b for b, spec in config["benchmarks"].items() if spec["models"]["target"] is None]


def tiny_benchmarks(config: dict) -> list[str]:
    """The benchmarks whose tiny Llama the DAG trains from scratch (no target, no base)."""
    return [
        b
        for b in trained_benchmarks(config)
        if config["benchmarks"][b]["models"].get("base") is None
    ]
