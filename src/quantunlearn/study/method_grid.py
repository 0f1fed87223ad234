"""The methods' sections of a config turned into hyperparameter grids, checked and warned about.

``unlearn.methods.<name>`` is one mapping (or null) or a list of mappings; each is a grid over
the method's hyperparameters, on top of the groups' defaults, the method's own defaults and
``unlearn.common`` (`method_params`). Every value of every grid cell is checked by its group
(`quantunlearn.unlearning.hyperparameters`): its ``__post_init__`` for errors, its ``warnings``
for valid values that are almost surely a mistake, its ``depth_problems`` against the depth of
each tiny model the DAG trains. Errors and warnings name the key the value came from.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from quantunlearn.study.config_tree import benchmark_tiny_model, did_you_mean, tiny_benchmarks
from quantunlearn.unlearning.hyperparameters import GROUPS, HyperparameterError
from quantunlearn.unlearning.hyperparameters import defaults as hyperparameter_defaults
from quantunlearn.unlearning.methods import get_method


def as_list(value: Any) -> list:
    """A config value that may be one value or a list (a grid axis) as a list."""
    return list(value) if isinstance(value, list | tuple) else [value]


def method_sections(config: dict, name: str) -> list[dict]:
    """A method's section(s) under ``unlearn.methods``: one mapping (or null), or a list of
    mappings, each a grid of its own (the run set is their union: Mishra and Mehreen's Table II
    cells, Abitante et al.'s lora_alpha in {0.5r, r, 2r} for each rank r)."""
    section = config["unlearn"]["methods"][name]
    return [s or {} for s in section] if isinstance(section, list) else [section or {}]


def method_params(config: dict, name: str, section: dict | None = None) -> dict:
    """A method's hyperparameters (values or grid lists): the groups' defaults, the method's own
    defaults (SURE / LoRA: lr 1e-4; RMU: lr 5e-5, alpha 1200), ``unlearn.common``, then the
    method's own section (its first, or ``section``), each over the one before."""
    common = config["unlearn"].get("common") or {}
    overrides = method_sections(config, name)[0] if section is None else section
    own = dict(get_method(name).defaults)
    return {**hyperparameter_defaults(), **own, **common, **overrides}


def method_grids(config: dict, name: str) -> list[dict]:
    """`method_params` of each of the method's sections."""
    return [method_params(config, name, s) for s in method_sections(config, name)]


def grid_cells(name: str, params: dict) -> Iterator[dict]:
    """Every cell of one grid of method ``name`` (its `method_params`): one value of each of
    its hyperparameters, the product of the axes in the method's run-path order."""
    keys = get_method(name).hyperparameters
    for combo in itertools.product(*(as_list(params[k]) for k in keys)):
        yield dict(zip(keys, combo, strict=True))


def not_a_hyperparameter(name: str, key: str, where: str) -> str:
    """The error for a key method ``name`` does not take; ``where``: the section under
    ``unlearn`` (``methods.<name>`` or ``methods.<name>[i]``)."""
    own = get_method(name).hyperparameters
    return (
        f"config key unlearn.{where}.{key}: {name} has no {key}{did_you_mean(key, own)} "
        f"(its hyperparameters: {', '.join(own)})"
    )


def hyperparameter_errors(config: dict) -> list[str]:
    """Every value of every grid cell checked by its group (`HyperparameterError`), reported
    under the key the value came from (unlearn.common or unlearn.methods.<name>[i]); then each
    group's `depth_problems` against every tiny model the DAG trains."""
    errors = []
    common = config["unlearn"].get("common") or {}
    for name, raw in config["unlearn"]["methods"].items():
        method = get_method(name)
        for i, section in enumerate(method_sections(config, name)):
            where_own = f"methods.{name}" + (f"[{i}]" if isinstance(raw, list) else "")
            for key in section:
                if key not in method.hyperparameters:
                    errors.append(not_a_hyperparameter(name, key, where_own))
            for cell in grid_cells(name, method_params(config, name, section)):
                try:
                    method.run(cell)
                except HyperparameterError as err:
                    own = err.key in section or err.key not in common
                    where = where_own if own else "common"
                    errors.append(f"config key unlearn.{where}.{err.key}: {err.message}")
    errors = sorted(set(errors), key=errors.index)
    return errors + _depth_errors(config)


def _depth_errors(config: dict) -> list[str]:
    """The layers a method's groups name must exist in every tiny model the DAG trains (a
    named model's depth is checked when its unlearning job starts, before any training)."""
    errors = []
    for name in config["unlearn"]["methods"]:
        grids = method_grids(config, name)
        values = {key: [v for p in grids for v in as_list(p[key])] for key in grids[0]}
        for bench in tiny_benchmarks(config):
            depth = benchmark_tiny_model(config, bench)["num_layers"]
            model = f"the tiny model of benchmark {bench}"
            for group in get_method(name).groups:
                for key, message in group.depth_problems(values, depth, model):
                    errors.append(f"config key unlearn.methods.{name}.{key}: {message}")
    return errors


def config_warnings(config: dict) -> list[str]:
    """Values that are valid but almost surely a mistake, or whose effect is easy to miss (the
    workflow prints them when it parses the config), each naming its key."""
    warnings = [
        f"config key {where}.{key}: {message}"
        for where, section, groups in _sections(config)
        for group in groups
        for key, message in group.warnings(section)
    ]
    return warnings + _unused_warnings(config) + _override_warnings(config)


def _sections(config: dict) -> list[tuple[str, dict, tuple]]:
    """(key, section, the groups it may hold) of unlearn.common (every group) and of every
    method's own section(s) (a list's as ``unlearn.methods.<name>[i]``; the method's groups)."""
    sections = [("unlearn.common", config["unlearn"].get("common") or {}, GROUPS)]
    for name, raw in config["unlearn"]["methods"].items():
        groups = tuple(get_method(name).groups)
        for i, section in enumerate(method_sections(config, name)):
            where = f"unlearn.methods.{name}" + (f"[{i}]" if isinstance(raw, list) else "")
            sections.append((where, section, groups))
    return sections


def _unused_warnings(config: dict) -> list[str]:
    """A key under unlearn.common that no configured method takes has no effect."""
    methods = config["unlearn"]["methods"]
    taken = {key for name in methods for key in get_method(name).hyperparameters}
    return [
        f"config key unlearn.common.{key}: none of the configured methods ({', '.join(methods)}) "
        f"takes {key}; it has no effect"
        for key in config["unlearn"].get("common") or {}
        if key not in taken
    ]


def _override_warnings(config: dict) -> list[str]:
    """unlearn.common overrides a method's own paper default (SURE / LoRA: lr 1e-4; RMU: lr 5e-5,
    alpha 1200) unless the method's section sets the key: say so, once per key and default."""
    common = config["unlearn"].get("common") or {}
    overridden: dict[tuple[str, Any], list[str]] = {}
    for name in config["unlearn"]["methods"]:
        sections = method_sections(config, name)
        for key, own in get_method(name).defaults.items():
            if key in common and as_list(common[key]) != [own]:
                if any(key not in section for section in sections):
                    overridden.setdefault((key, own), []).append(name)
    return [
        f"config key unlearn.common.{key}: {common[key]} replaces the paper default {key} "
        f"{own:g} of {', '.join(names)} (unlearn.common overrides a method's own defaults); set "
        f"unlearn.methods.<method>.{key} to choose it explicitly and silence this warning"
        for (key, own), names in overridden.items()
    ]
