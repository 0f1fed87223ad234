"""The study configuration: loading, defaults, and the wording of its errors.

Every mistake a user can make in the config (an unknown method or quantizer, a bit-width a
backend cannot do, a learning rate given as text, a hyperparameter out of range, a missing data
folder) raises ``ConfigError`` naming the key, before any job starts. `normalize_config` applies
the defaults, converts numbers YAML left as text, validates against the schema
(`quantunlearn.study.schema`) and then runs the checks the schema cannot express: those of the
other sections (`quantunlearn.study.config_checks`), of each benchmark's BENCHMARKS row, of each
hyperparameter's group (`quantunlearn.study.method_grid`). The defaults of the ``unlearn``
settings are `UnlearnSettings`' (`quantunlearn.unlearning.hyperparameters`), those of the
hyperparameters their groups'. Nothing here imports torch: the workflow parses in a second.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema

from quantunlearn.data import (
    MUSE_ENTRY_DEFAULTS,
    SYNTHETIC_DEFAULTS,
    TEXT_KEYS,
    TWITTER_DEFAULTS,
    benchmark_kind,
)
from quantunlearn.io import parse_number
from quantunlearn.quantizers import parse_quantizer
from quantunlearn.study.config_checks import semantic_errors
from quantunlearn.study.config_tree import deep_merge, did_you_mean
from quantunlearn.study.method_grid import not_a_hyperparameter
from quantunlearn.unlearning.hyperparameters import UnlearnSettings
from quantunlearn.unlearning.methods import METHODS

DEFAULTS: dict[str, Any] = {
    "results_dir": "results",
    "run_benchmarks": None,
    "tables_dir": None,
    "tiny_model": {
        "tokenizer_vocab": 2048,
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_layers": 2,
        "num_heads": 4,
        "max_len": 256,
        "train": {
            "lr": 2e-3,
            "target_epochs": 30,
            "retrain_epochs": 34,
            "batch_size": 8,
            "warmup_steps": 50,
            "weight_decay": 0.01,
            "seed": 0,
        },
    },
    # the study-wide settings: the defaults of their dataclass
    "unlearn": {"common": {}, **UnlearnSettings.defaults()},
    "bnb_compute_dtype": "fp32",
    # keep | temp: unlearned models deleted once all their evaluation cells are done
    "storage": {"unlearned_models": "keep"},
    # GPTQ/AWQ calibration text (quantunlearn.data.calibration): general | retain | forget
    "calibration": {"source": "general", "n_samples": 128, "max_len": 256, "seed": 0},
    # weight-level diagnostics (quantunlearn.evaluation.diagnostics) per unlearned run x quantizer
    "diagnostics": False,
    "selection": {
        "rule": "max_knowmem_r_under_forget_threshold",
        "forget_metric": "knowmem_f",
        "threshold": 100.0,
        "utility_metric": "knowmem_r",
        "low_bit_quantizer": None,
    },
    "evaluation": {
        "verbmem_max_new_tokens": 128,
        "knowmem_max_new_tokens": 32,
        "mink_k": 0.4,
        "batch_size": 64,
        "max_length": 2048,
    },
    # the verdicts of the audit reports (external checkpoints, models.unlearned)
    "audit": {
        "metrics": ["knowmem_f", "verbmem_f"],
        "min_forgetting": 5.0,
        "min_survival_pct": 80.0,
    },
}
#: The scale study's table (config/scale.yaml): the 4-bit column it compares with full
#: precision, and the memorisation a target needs before its size counts (else it is flagged).
SCALE_DEFAULTS: dict[str, Any] = {
    "quant": "rtn_w4g128",
    "min_target_knowmem_f": 50.0,
    "min_target_verbmem_f": 50.0,
}
#: A benchmark that names a base model (``models.base``) and no target: its target and retrain
#: are fine-tuned from it (`quantunlearn.models.finetune`; defaults: the Twitter study's notebook).
FINETUNE_DEFAULTS: dict[str, Any] = {
    "epochs": 5,
    "lr": 1e-5,
    "batch_size": 3,
    "max_len": 2048,
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "weight_dtype": "bf16",
    "gradient_checkpointing": True,
    "seed": 0,
    "adam_beta2": 0.999,
    "packing": "stream",
}
# Sections whose values are numbers or lists of numbers: YAML 1.1 (PyYAML) reads `1e-5`
# (no dot) as the *string* "1e-5", so numeric-looking strings there are converted.
_NUMERIC_SECTIONS = ("unlearn", "tiny_model", "evaluation", "calibration", "selection", "audit")
#: The defaults of a MUSE benchmark's entry (other kinds: their row's, quantunlearn.data).
BENCHMARK_DEFAULTS = MUSE_ENTRY_DEFAULTS
__all__ = [
    "BENCHMARK_DEFAULTS",
    "SYNTHETIC_DEFAULTS",
    "TWITTER_DEFAULTS",
    "ConfigError",
    "normalize_config",
]


class ConfigError(ValueError):
    """A problem in the user's config, with the key that holds it."""


def read_config_file(path: str | Path) -> dict:
    """A config file's mapping; a YAML syntax error says ``file:line:column`` and what is wrong
    (Snakemake, which loads ``--configfile`` itself, says only that the file is not valid)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            loaded = yaml.safe_load(fh)
    except yaml.MarkedYAMLError as err:
        raise ConfigError(_yaml_message(path, err)) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: YAML syntax error: {err}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys, not a {type(loaded).__name__}")
    return loaded or {}


def _yaml_message(path, err) -> str:
    """file:line:column: the problem (and where the construct it broke began)."""
    mark, context = err.problem_mark, err.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    message = f"{where}: YAML syntax error: {err.problem or err.context}"
    if err.context and context and err.problem:
        message += f" ({err.context} at line {context.line + 1}, column {context.column + 1})"
    return message


def _coerce_numbers(value: Any) -> Any:
    """``value`` with every string that spells a number (at any depth) as that number."""
    if isinstance(value, dict):
        return {k: _coerce_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_coerce_numbers(v) for v in value]
    if isinstance(value, str):
        number = parse_number(value)
        return value if number is None else number
    return value


def _key(path) -> str:
    """A schema error's path as a config key: ``unlearn.methods.NPO[1].lr``."""
    parts = [f"[{p}]" if isinstance(p, int) else f".{p}" for p in path]
    return "".join(parts).lstrip(".") or "<config>"


#: A JSON-schema type said plainly.
_TYPE_NAMES = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}


def _type_message(instance: Any, types: Any, suffix: str = "") -> str:
    """``'x' is not a number or a string``: what the value is not."""
    kinds = [types] if isinstance(types, str) else list(types)
    return f"{instance!r} is not {' or '.join(_TYPE_NAMES[k] for k in kinds)}{suffix}"


def _schema_message(error) -> str:
    """A schema error said plainly: what the value is not."""
    if error.validator == "pattern" and isinstance(error.instance, str):
        try:  # a quantizer name: the parser says what is wrong with it
            parse_quantizer(error.instance)
        except ValueError as exc:
            return str(exc)
    if error.validator == "type":
        return _type_message(error.instance, error.validator_value)
    if error.validator != "oneOf" or not error.context:
        return error.message
    kinds = [
        k
        for e in error.context
        if e.validator == "type"
        for k in ([e.validator_value] if isinstance(e.validator_value, str) else e.validator_value)
    ]
    kinds = [k for k in dict.fromkeys(kinds) if k != "array"]
    enums = [e.validator_value for e in error.context if e.validator == "enum"]
    low = [e for e in error.context if e.validator in ("minimum", "minItems")]
    if low:  # the right type, too small or empty (targets: 0, targets: [])
        where = f"item [{low[0].relative_path[0]}] " if low[0].relative_path else ""
        return f"{where}{low[0].message}"
    if enums:
        return f"{error.instance!r} is not one of {enums[0]}"
    if kinds:
        return _type_message(error.instance, kinds, " (nor a list of them)")
    return jsonschema.exceptions.best_match([error]).message


def _unknown_keys(error) -> list[str]:
    """One message per key the schema does not know, under its own key, with the nearest known
    key (in a method's section: the method's own hyperparameters)."""
    path = list(error.absolute_path)
    known = list(error.schema.get("properties", {}))
    errors = []
    for key in (k for k in error.instance if k not in known):
        if path[:2] == ["unlearn", "methods"] and len(path) in (3, 4) and path[2] in METHODS:
            where = f"methods.{path[2]}" + (f"[{path[3]}]" if len(path) == 4 else "")
            errors.append(not_a_hyperparameter(path[2], key, where))
        else:
            errors.append(f"config key {_key([*path, key])}: unknown key{did_you_mean(key, known)}")
    return errors


def _section_errors(error) -> list:
    """A method's section is a mapping (or null) or a list of them (the schema's oneOf): the
    errors of the branch the value's type picks, so that each names the key inside it."""
    path = list(error.absolute_path)
    if error.validator != "oneOf" or path[:2] != ["unlearn", "methods"] or len(path) != 3:
        return [error]
    branch = 1 if isinstance(error.instance, list) else 0
    inner = [e for e in error.context if e.relative_schema_path[0] == branch]
    return [e for sub in inner for e in _section_errors(sub)] or [error]


def _schema_errors(config: dict) -> list[str]:
    """Every schema error of ``config`` as a message naming its key."""
    from quantunlearn.study.schema import config_schema

    validator = jsonschema.Draft202012Validator(config_schema())
    found = [e for error in validator.iter_errors(config) for e in _section_errors(error)]
    errors = sorted(found, key=lambda e: list(map(str, e.path)))
    messages = []
    for error in errors:
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            messages += _unknown_keys(error)
        elif error.validator == "enum" and "propertyNames" in error.schema_path:
            name = _key([*error.absolute_path, error.instance])
            known = ", ".join(error.validator_value)
            hint = did_you_mean(error.instance, error.validator_value)
            what = "method" if "methods" in error.schema_path else "name"
            messages.append(f"config key {name}: unknown {what}{hint}; known: {known}")
        elif error.validator == "pattern" and "propertyNames" in error.schema_path:
            # a name of the user's (a benchmark, an audited checkpoint): part of file paths
            name, under = _key([*error.absolute_path, error.instance]), _key(error.absolute_path)
            messages.append(
                f"config key {name}: {error.instance!r} is not a valid name; a name under "
                f"{under} may use only letters, digits and _ (it becomes part of file paths)"
            )
        else:
            messages.append(f"config key {_key(error.absolute_path)}: {_schema_message(error)}")
    return messages


def normalize_config(user: dict) -> dict:
    """Apply defaults, convert numeric strings, validate. Raises ConfigError naming the key."""
    if not isinstance(user, dict) or not user:
        raise ConfigError("the config is empty: pass --configfile or keep config/config.yaml")
    config = _expand_home(deep_merge(DEFAULTS, user))
    for section in _NUMERIC_SECTIONS:
        if section in config:
            config[section] = _coerce_numbers(config[section])
    for name, bench in (config.get("benchmarks") or {}).items():
        if isinstance(bench, dict):
            config["benchmarks"][name] = _normalize_benchmark(bench)
    if "scale" in config:
        config["scale"] = _coerce_numbers(deep_merge(SCALE_DEFAULTS, config["scale"] or {}))
    errors = _schema_errors(config)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
    config["diagnostics"] = _diagnostics_spec(config["diagnostics"])
    errors = semantic_errors(config)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
    return _select_benchmarks(config)


def _normalize_benchmark(bench: dict) -> dict:
    """A benchmark entry with its kind's defaults (its BENCHMARKS row, `benchmark_kind`): the
    entry's own, its generator's (embedded benchmarks) and, for RWKU, the list of targets."""
    kind = benchmark_kind(bench)
    merged = deep_merge(kind.entry_defaults, bench)
    if kind.generator:
        section = deep_merge(dict(kind.generator_defaults), merged.get(kind.generator) or {})
        text = {k: section[k] for k in TEXT_KEYS if k in section}  # a sha stays text
        merged[kind.generator] = {**_coerce_numbers(section), **text}
    if "tiny_model" in merged:
        merged["tiny_model"] = _coerce_numbers(merged["tiny_model"])
    if merged["models"].get("base") is not None:  # fine-tuned into target and retrain
        merged["finetune"] = _coerce_numbers(
            deep_merge(FINETUNE_DEFAULTS, merged.get("finetune") or {})
        )
        merged["models"]["tokenizer"] = merged["models"]["tokenizer"] or merged["models"]["base"]
    targets = kind.targets(merged)
    if targets is not None:
        merged["targets"] = targets
    return merged


def _expand_home(config: dict) -> dict:
    """``~`` in the folders and local paths is the home folder (not a folder named ``~``)."""
    for key in ("results_dir", "tables_dir"):
        if isinstance(config.get(key), str):
            config[key] = os.path.expanduser(config[key])
    for bench in (config.get("benchmarks") or {}).values():
        if not isinstance(bench, dict):
            continue
        if isinstance(bench.get("source"), str):
            bench["source"] = os.path.expanduser(bench["source"])
        for which, value in (bench.get("models") or {}).items():
            if isinstance(value, str):
                bench["models"][which] = os.path.expanduser(value)
    return config


def _select_benchmarks(config: dict) -> dict:
    """``run_benchmarks``: keep only the named benchmarks (e.g. the sizes a CPU can run)."""
    chosen = config.get("run_benchmarks")
    if chosen is None:
        return config
    unknown = [b for b in chosen if b not in config["benchmarks"]]
    if unknown:
        raise ConfigError(
            f"config key run_benchmarks: no benchmark {unknown} in this config "
            f"(its benchmarks: {', '.join(config['benchmarks'])})"
        )
    config["benchmarks"] = {b: config["benchmarks"][b] for b in chosen}
    return config


DIAGNOSTICS_DEFAULTS: dict[str, Any] = {"quantizers": None, "methods": None, "quail_table": False}


def _diagnostics_spec(value: bool | dict) -> dict | None:
    """``diagnostics`` as a mapping (true: every run and quantizer), None when off."""
    if value is False or value is None:
        return None
    return {**DIAGNOSTICS_DEFAULTS, **(value if isinstance(value, dict) else {})}
