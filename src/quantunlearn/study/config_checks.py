"""The checks of a config that the schema cannot express: names the parsers reject, paths,
ranges and combinations across sections (a quantizer's group against the tiny models' sizes, a
method's data against each benchmark, the scale study's benchmarks, the diagnosed quantizers).

Each check returns its messages, each naming the config key (``config key <key>: ...``);
`semantic_errors` collects them for `quantunlearn.study.config.normalize_config`, which raises
them together. A benchmark's own problems are its BENCHMARKS row's (`BenchmarkKind.check`), a
hyperparameter's its group's (`quantunlearn.study.method_grid`); nothing here imports torch.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from quantunlearn.data import benchmark_kind
from quantunlearn.data.provenance import is_hub_spec
from quantunlearn.quantizers import FULL_PRECISION, parse_quantizer
from quantunlearn.study.config_tree import benchmark_tiny_model, tiny_benchmarks
from quantunlearn.study.external import external_errors
from quantunlearn.study.method_grid import hyperparameter_errors
from quantunlearn.unlearning.hyperparameters import HyperparameterError, UnlearnSettings
from quantunlearn.unlearning.methods import get_method


def semantic_errors(config: dict) -> list[str]:
    """What the schema cannot say: names the parsers reject, paths, ranges, combinations."""
    errors = _folder_errors(config)
    errors += _quantizer_errors(config)
    errors += _benchmark_errors(config)
    errors += _method_benchmark_errors(config)
    errors += _unlearn_settings_errors(config["unlearn"])
    errors += hyperparameter_errors(config)
    errors += _scale_errors(config)
    errors += _utility_errors(config["evaluation"])
    errors += _selection_errors(config)
    errors += _diagnostics_errors(config)
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
    if FULL_PRECISION not in config["quantizers"]:
        errors.append("config key quantizers: must include 'none' (the full-precision column)")
    return errors


def _benchmark_errors(config: dict) -> list[str]:
    """Each benchmark: its tiny model's shape, its models, and its row's `check` (the source
    and the keys its layout takes); audit mode's checkpoints once all that is sound."""
    errors = []
    for name, bench in config["benchmarks"].items():
        key = f"benchmarks.{name}"
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
        errors += [
            f"config key {key}.{sub}: {text}" for sub, text in benchmark_kind(bench).check(bench)
        ]
        errors += _model_path_errors(bench, key)
        if not errors:  # audit mode: each local checkpoint read (no weights), and compared
            errors += external_errors(config, name, tiny)
    return errors


def _model_path_errors(bench: dict, key: str) -> list[str]:
    """Every model a benchmark names is a local path or a hub id."""
    models = bench["models"]
    named = {which: models[which] for which in ("target", "retrain", "tokenizer")}
    named |= {f"unlearned.{k}": v for k, v in (models.get("unlearned") or {}).items()}
    return [
        f"config key {key}.models.{which}: no such path {value!r} (nor a hub id "
        "owner/name[@revision])"
        for which, value in named.items()
        if value is not None and not Path(value).exists() and not is_hub_spec(value)
    ]


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


def _method_benchmark_errors(config: dict) -> list[str]:
    """Each method's data must exist in each benchmark (its row says: RT's refusals, a retain
    term's corpus)."""
    errors = []
    for name in config["unlearn"]["methods"]:
        method = get_method(name)
        retain = method.retain is not None
        for bench_name, bench in config["benchmarks"].items():
            kind = benchmark_kind(bench)
            problems = kind.training_problems(name, method.forget.forget_data, retain, bench_name)
            errors += [f"config key unlearn.methods.{name}: {p}" for p in problems]
    return errors


def _unlearn_settings_errors(unlearn: dict) -> list[str]:
    """The study-wide ``unlearn`` settings, checked by their dataclass (`UnlearnSettings`)."""
    try:
        UnlearnSettings.build(unlearn)
    except HyperparameterError as err:
        return [f"config key unlearn.{err.key}: {err.message}"]
    return []


def _scale_errors(config: dict) -> list[str]:
    """The scale study compares the tiny models the DAG trains, at one of the quantizers."""
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
    """The tables' low-bit quantizer, when named, is one of the study's."""
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
        if name != FULL_PRECISION and parse_quantizer(name).bits == 4:
            return name
    return None


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
