"""The study configuration: defaults, and validation at parse time naming the key.

Every mistake a user can make in the config (an unknown method or quantizer, a bit-width a
backend cannot do, a learning rate given as text, a hyperparameter out of range, a missing data
folder) raises ``ConfigError`` naming the key, before any job starts. The hyperparameters'
names, defaults and checks come from `quantunlearn.unlearning.hyperparameters`; the schema from
`quantunlearn.study.schema`. Nothing here imports torch: the workflow parses in a second.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import jsonschema

from quantunlearn.data import (
    MUSE_ENTRY_DEFAULTS,
    SYNTHETIC_DEFAULTS,
    TEXT_KEYS,
    TWITTER_DEFAULTS,
    BenchmarkKind,
    benchmark_kind,
)
from quantunlearn.data.provenance import is_hub_spec
from quantunlearn.data.rwku import DOCUMENT_CONFIGS, REFUSAL_CONFIGS
from quantunlearn.quantizers import parse_quantizer
from quantunlearn.study.external import external_errors
from quantunlearn.unlearning.hyperparameters import HyperparameterError, RMUParams
from quantunlearn.unlearning.hyperparameters import defaults as hyperparameter_defaults
from quantunlearn.unlearning.methods import METHODS, get_method

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
    "unlearn": {
        "common": {},
        "batch_size": 16,
        "max_len": 64,
        "max_grad_norm": 1.0,
        "bf16_compute": "native",
        "gradient_checkpointing": False,
        "lr_schedule": "constant",
        "warmup_steps": 0,
    },
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
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
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


def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _coerce_numbers(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _coerce_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_coerce_numbers(v) for v in value]
    if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        text = value.strip()
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
    return value


def _key(path) -> str:
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


def _hint(word: str, known) -> str:
    close = difflib.get_close_matches(str(word), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_keys(error) -> list[str]:
    """One message per key the schema does not know, under its own key, with the nearest known
    key (in a method's section: the method's own hyperparameters)."""
    path = list(error.absolute_path)
    known = list(error.schema.get("properties", {}))
    errors = []
    for key in (k for k in error.instance if k not in known):
        if path[:2] == ["unlearn", "methods"] and len(path) in (3, 4) and path[2] in METHODS:
            where = f"methods.{path[2]}" + (f"[{path[3]}]" if len(path) == 4 else "")
            errors.append(_not_a_hyperparameter(path[2], key, where))
        else:
            errors.append(f"config key {_key([*path, key])}: unknown key{_hint(key, known)}")
    return errors


def _not_a_hyperparameter(name: str, key: str, where: str) -> str:
    """``where``: the section under ``unlearn`` (``methods.<name>`` or ``methods.<name>[i]``)."""
    own = get_method(name).hyperparameters
    return (
        f"config key unlearn.{where}.{key}: {name} has no {key}{_hint(key, own)} "
        f"(its hyperparameters: {', '.join(own)})"
    )


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
            hint = _hint(error.instance, error.validator_value)
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
    errors = _semantic_errors(config)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
    return _select_benchmarks(config)


def _normalize_benchmark(bench: dict) -> dict:
    """A benchmark entry with its kind's defaults (quantunlearn.data.benchmarks.BENCHMARKS): the entry's
    own, its generator's (embedded benchmarks) and, for RWKU, the list of targets."""
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


def _semantic_errors(config: dict) -> list[str]:
    """What the schema cannot say: names the parsers reject, paths, ranges, combinations."""
    errors = _folder_errors(config)
    errors += _quantizer_errors(config)
    errors += _benchmark_errors(config)
    errors += _method_benchmark_errors(config)
    errors += _hyperparameter_errors(config)
    errors += _rmu_layer_errors(config)
    errors += _scale_errors(config)
    errors += _utility_errors(config["evaluation"])
    errors += _selection_errors(config)
    errors += _diagnostics_errors(config)
    return errors


DIAGNOSTICS_DEFAULTS: dict[str, Any] = {"quantizers": None, "methods": None, "quail_table": False}


def _diagnostics_spec(value: bool | dict) -> dict | None:
    """``diagnostics`` as a mapping (true: every run and quantizer), None when off."""
    if value is False or value is None:
        return None
    return {**DIAGNOSTICS_DEFAULTS, **(value if isinstance(value, dict) else {})}


def _diagnostics_errors(config: dict) -> list[str]:
    """The diagnosed quantizers and methods must be in the study, and analysable."""
    spec = config["diagnostics"]
    if spec is None:
        return []
    errors = []
    for i, name in enumerate(spec["quantizers"] or []):
        key = f"config key diagnostics.quantizers[{i}]"
        if name not in config["quantizers"]:
            errors.append(f"{key}: {name!r} is not one of the quantizers {config['quantizers']}")
        elif not parse_quantizer(name).diagnosable:
            errors.append(
                f"{key}: the weight diagnostics cannot analyse {name!r} (none, the noflip "
                "counterfactual and QUAIL's grid, which diagnostics.quail_table covers)"
            )
    for i, name in enumerate(spec["methods"] or []):
        if name not in config["unlearn"]["methods"]:
            errors.append(
                f"config key diagnostics.methods[{i}]: {name!r} is not one of unlearn.methods"
            )
    return errors


def _folder_errors(config: dict) -> list[str]:
    """results_dir and tables_dir: folders that exist and can be written, or can be created."""
    errors = []
    for key in ("results_dir", "tables_dir"):
        if config[key] is not None:
            problem = unwritable(Path(config[key]))
            if problem:
                errors.append(f"config key {key}: {problem}")
    return errors


def unwritable(folder: Path) -> str | None:
    """Why ``folder`` cannot be created or written (None: it can). Tries it: creates and removes
    a probe folder in it or in its nearest existing parent (permission bits do not say what
    root, ACLs or a read-only file system allow)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return f"cannot create {str(folder)!r}: {str(existing)!r} is a file, not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".quantunlearn-probe-", dir=existing))
    except OSError as err:
        verb = "write to" if existing == folder else "create"
        return f"cannot {verb} {str(folder)!r} ({str(existing)!r}: {err.strerror})"
    return None


def _quantizer_errors(config: dict) -> list[str]:
    """Names the table accepts, 'none' present, and groups / GGUF blocks that divide every
    Linear input dimension of the tiny models (the only models whose shape is known here)."""
    errors = []
    dims = sorted(
        {
            benchmark_tiny_model(config, b)[key]
            for b in tiny_benchmarks(config)
            for key in ("hidden_size", "intermediate_size")
        }
    )
    for i, name in enumerate(config["quantizers"]):
        try:
            quantizer = parse_quantizer(name)
        except ValueError as exc:
            errors.append(f"config key quantizers[{i}]: {exc}")
            continue
        bad = [d for d in dims if quantizer.block and d % quantizer.block]
        if bad:
            errors.append(
                f"config key quantizers[{i}]: {name}: {quantizer.block_description}, which does "
                f"not divide the tiny model's Linear input size(s) {bad} "
                "(tiny_model.hidden_size / intermediate_size)"
            )
    if "none" not in config["quantizers"]:
        errors.append("config key quantizers: must include 'none' (the full-precision column)")
    return errors


def _benchmark_errors(config: dict) -> list[str]:
    errors = []
    for name, bench in config["benchmarks"].items():
        key = f"benchmarks.{name}"
        kind = benchmark_kind(bench)
        tiny = benchmark_tiny_model(config, name)
        if tiny["hidden_size"] % tiny["num_heads"]:
            where = f"{key}.tiny_model" if "tiny_model" in bench else "tiny_model"
            errors.append(
                f"config key {where}: hidden_size {tiny['hidden_size']} is not divisible by "
                f"num_heads {tiny['num_heads']}"
            )
        if "tiny_model" in bench and name not in tiny_benchmarks(config):
            errors.append(
                f"config key {key}.tiny_model: this benchmark names its models, so no tiny model "
                "is trained; remove the key"
            )
        errors += _base_errors(bench, key)
        errors += [f"config key {key}.{sub}: {message}" for sub, message in kind.check(bench)]
        errors += [
            f"config key {key}.{sub}: {message}" for sub, message in _kind_errors(kind, bench)
        ]
        models = bench["models"]
        named = {which: models[which] for which in ("target", "retrain", "tokenizer")}
        named |= {f"unlearned.{k}": v for k, v in (models.get("unlearned") or {}).items()}
        for which, value in named.items():
            if value is not None and not Path(value).exists() and not is_hub_spec(value):
                errors.append(
                    f"config key {key}.models.{which}: no such path {value!r} (nor a hub id "
                    "owner/name[@revision])"
                )
        if not errors:  # audit mode: each local checkpoint read (no weights), and compared
            errors += external_errors(config, name, tiny)
    return errors


def _base_errors(bench: dict, key: str) -> list[str]:
    """A base model is fine-tuned into target and retrain: it excludes naming them."""
    base = bench["models"].get("base")
    if base is None:
        if "finetune" in bench:
            return [f"config key {key}.finetune: only a benchmark with models.base is fine-tuned"]
        return []
    if bench["models"]["target"] is not None or bench["models"]["retrain"] is not None:
        return [
            f"config key {key}.models.base: the target and retrain are fine-tuned from the base "
            "model; give either base or target and retrain"
        ]
    if not Path(base).exists() and not is_hub_spec(base):
        return [
            f"config key {key}.models.base: no such path {base!r} (nor a hub id "
            "owner/name[@revision])"
        ]
    return []


def _kind_errors(kind: BenchmarkKind, bench: dict) -> list[tuple[str, str]]:
    """Keys that the benchmark's kind does not take or whose values it cannot use."""
    what = f"this is a {kind.name} benchmark ({kind.describe})"
    models = bench["models"]
    if kind.layout == "muse":
        problems = [
            (extra, f"only an RWKU-layout benchmark takes it; {what}")
            for extra in ("targets", "refusal_corpus", "synthetic_rwku")
            if extra in bench
        ]
        given = [models["target"] is not None, models["retrain"] is not None]
        if any(given) and not all(given):
            problems.append(("models", "give both target and retrain, or neither"))
        return problems
    problems = []
    if "synthetic" in bench:
        problems.append(("synthetic", f"only the embedded MUSE benchmark takes it; {what}"))
    if models["retrain"] is not None:
        problems.append(("models.retrain", "RWKU has no retrain model (zero-shot unlearning)"))
    if bench.get("retain_corpus") is not None:
        problems.append(("retain_corpus", "RWKU has no retain corpus: leave it null"))
    for sub, allowed in (("forget_corpus", DOCUMENT_CONFIGS), ("refusal_corpus", REFUSAL_CONFIGS)):
        if bench[sub] not in allowed:
            problems.append((sub, f"{bench[sub]!r} is not one of the RWKU configs {list(allowed)}"))
    targets = bench["targets"]
    if len(set(targets)) != len(targets):
        problems.append(("targets", f"repeats a target: {targets}"))
    if kind.generator:
        n = bench[kind.generator]["n_targets"]
        if any(t > n for t in targets):
            bad = [t for t in targets if t > n]
            problems.append(("targets", f"{bad} do not exist: {kind.generator}.n_targets is {n}"))
    return problems


def _method_benchmark_errors(config: dict) -> list[str]:
    """Each method's data must exist in each benchmark: RT's refusals, a retain term's corpus."""
    errors = []
    for name in config["unlearn"]["methods"]:
        method = get_method(name)
        for bench_name, bench in config["benchmarks"].items():
            kind = benchmark_kind(bench)
            if method.forget.forget_data not in kind.forget_data:
                errors.append(
                    f"config key unlearn.methods.{name}: {name} trains on "
                    f"{method.forget.forget_data}, which benchmark {bench_name} ({kind.name}) "
                    f"does not have (it has {sorted(kind.forget_data)})"
                )
            if method.retain is not None and not kind.has_retain:
                errors.append(
                    f"config key unlearn.methods.{name}: {name} has a retain term, but benchmark "
                    f"{bench_name} ({kind.name}) has no retain corpus"
                )
    return errors


def as_list(value: Any) -> list:
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


def _hyperparameter_errors(config: dict) -> list[str]:
    """Every value of every grid cell checked by its group (`HyperparameterError`), reported
    under the key the value came from (unlearn.common or unlearn.methods.<name>[i])."""
    errors = []
    common = config["unlearn"].get("common") or {}
    for name, raw in config["unlearn"]["methods"].items():
        method = get_method(name)
        for i, section in enumerate(method_sections(config, name)):
            where_own = f"methods.{name}" + (f"[{i}]" if isinstance(raw, list) else "")
            for key in section:
                if key not in method.hyperparameters:
                    errors.append(_not_a_hyperparameter(name, key, where_own))
            params = method_params(config, name, section)
            axes = {k: as_list(params[k]) for k in method.hyperparameters}
            for combo in itertools.product(*axes.values()):
                try:
                    method.run(dict(zip(axes, combo, strict=True)))
                except HyperparameterError as err:
                    own = err.key in section or err.key not in common
                    where = where_own if own else "common"
                    errors.append(f"config key unlearn.{where}.{err.key}: {err.message}")
    return sorted(set(errors), key=errors.index)


def config_warnings(config: dict) -> list[str]:
    """Values that are valid but almost surely a mistake, or whose effect is easy to miss (the
    workflow prints them when it parses the config), each naming its key."""
    warnings = _percentile_warnings(config) + _lr_warnings(config)
    return warnings + _unused_warnings(config) + _override_warnings(config)


def _sections(config: dict) -> list[tuple[str, dict]]:
    """(key, section) of unlearn.common and of every method's own section(s) (a list's as
    ``unlearn.methods.<name>[i]``)."""
    sections = [("unlearn.common", config["unlearn"].get("common") or {})]
    for name, raw in config["unlearn"]["methods"].items():
        for i, section in enumerate(method_sections(config, name)):
            where = f"unlearn.methods.{name}" + (f"[{i}]" if isinstance(raw, list) else "")
            sections.append((where, section))
    return sections


def _percentile_warnings(config: dict) -> list[str]:
    """gamma_pct is a percentile (0..100): 0.9 keeps nearly every module, not the top 10 %."""
    warnings = []
    for where, section in _sections(config):
        fractions = [v for v in as_list(section.get("gamma_pct", [])) if 0 < v < 1]
        if fractions:
            warnings.append(
                f"config key {where}.gamma_pct: {fractions} looks like a fraction, but gamma_pct "
                f"is a percentile in [0, 100] (SURE's paper: 90); {fractions[0]:g} selects the "
                f"modules above the {fractions[0]:g}th percentile, nearly all of them"
            )
    return warnings


#: Above this AdamW learning rate fine-tuning wrecks a language model within a few steps (the
#: papers' unlearning rates: 5e-6 to 7e-4).
LR_WARNING = 1e-2


def _lr_warnings(config: dict) -> list[str]:
    warnings = []
    for where, section in _sections(config):
        large = [v for v in as_list(section.get("lr", [])) if v > LR_WARNING]
        if large:
            warnings.append(
                f"config key {where}.lr: {large} is far above any unlearning learning rate (the "
                f"papers: 5e-6 to 7e-4); above {LR_WARNING:g} AdamW wrecks the model within a few "
                "steps (a collapsed run is flagged, a diverging one stops)"
            )
    return warnings


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


def _rmu_layer_errors(config: dict) -> list[str]:
    """RMU's steered layer must exist in every tiny model the DAG trains (a named model's depth
    is checked when its unlearning job starts, before any training)."""
    errors = []
    for name in config["unlearn"]["methods"]:
        if RMUParams not in get_method(name).groups:
            continue
        layers = [v for p in method_grids(config, name) for v in as_list(p["rmu_layer"])]
        for bench in tiny_benchmarks(config):
            depth = benchmark_tiny_model(config, bench)["num_layers"]
            bad = [v for v in layers if v >= depth]
            if bad:
                errors.append(
                    f"config key unlearn.methods.{name}.rmu_layer: layer(s) {bad} do not exist in "
                    f"the tiny model of benchmark {bench} ({depth} layers, 0..{depth - 1})"
                )
    return errors


def _scale_errors(config: dict) -> list[str]:
    if "scale" not in config:
        return []
    errors = []
    try:
        parse_quantizer(config["scale"]["quant"])
    except ValueError as exc:
        errors.append(f"config key scale.quant: {exc}")
    external = [b for b in config["benchmarks"] if b not in tiny_benchmarks(config)]
    if external:
        errors.append(
            f"config key scale: benchmarks {external} name their models; the scale study "
            "compares tiny models the DAG trains (models: null)"
        )
    if config["scale"]["quant"] not in config["quantizers"]:
        errors.append(
            f"config key scale.quant: {config['scale']['quant']!r} is not among the "
            "evaluated quantizers"
        )
    return errors


def _utility_errors(evaluation: dict) -> list[str]:
    """Every utility benchmark named under evaluation.utility needs a source of a form it can
    load (a hub id, a JSON file, a local folder); the chat template must exist. The sources are
    loaded and checked by the workflow's first job (check_utility_data), not here."""
    from quantunlearn.data.utility import source_problem, utility_sources
    from quantunlearn.models.chat import CHAT_TEMPLATES

    errors = []
    sources = utility_sources(evaluation)
    for name in evaluation.get("utility") or []:
        problem = source_problem(name, sources[name])
        if problem:
            errors.append(f"config key evaluation.utility_data.{name}: {problem}")
    template = evaluation.get("chat_template")
    if template is not None and template != "none" and template not in CHAT_TEMPLATES:
        errors.append(
            f"config key evaluation.chat_template: {template!r} is not 'none' nor one of "
            f"{sorted(CHAT_TEMPLATES)}"
        )
    return errors


def _selection_errors(config: dict) -> list[str]:
    low = config["selection"].get("low_bit_quantizer")
    if low is not None and low not in config["quantizers"]:
        return [
            f"config key selection.low_bit_quantizer: {low!r} is not one of the quantizers "
            f"{config['quantizers']}"
        ]
    return []


def low_bit_quantizer(config: dict) -> str | None:
    """The quantizer of the tables' '+ 4 bit' rows: the configured one, else the first 4-bit."""
    if config["selection"].get("low_bit_quantizer"):
        return config["selection"]["low_bit_quantizer"]
    for name in config["quantizers"]:
        if name != "none" and parse_quantizer(name).bits == 4:
            return name
    return None
