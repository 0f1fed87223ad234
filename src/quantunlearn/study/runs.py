"""The typed model of a study's grid: its `Benchmark` entries and its `Run` folders.

A `Run` is one folder of the grid: a reference model (target, retrain), an external checkpoint
(audit mode) or an unlearning run. Its ``path`` is the ``{run}`` wildcard, Paramspace style:
``method~NPO_GDR/weight_dtype~bf16/lr~1e-05/epochs~10/alpha~1/beta~0.1/npo_klr_form~paper/seed~0``,
the keys in the method's run-path order (`quantunlearn.unlearning.methods.Method`). The runs are
built once, when the study is loaded (`expand`); a job gets its `Run` back from its wildcards
with `quantunlearn.study.grid.Study.run`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from quantunlearn.data import benchmark_kind
from quantunlearn.data.benchmarks import BenchmarkKind
from quantunlearn.io import config_hash
from quantunlearn.study.config import ConfigError
from quantunlearn.study.config_tree import benchmark_tiny_model
from quantunlearn.study.method_grid import grid_cells, method_grids
from quantunlearn.unlearning import methods
from quantunlearn.unlearning.hyperparameters import BASE_HYPER_COLUMNS, HYPER_COLUMNS, group_of
from quantunlearn.unlearning.methods import REFERENCES, get_method

#: Audit mode: a checkpoint unlearned elsewhere (benchmarks.<b>.models.unlearned) is a run whose
#: method is "external:<name>", labelled "<name> (external)" in every table.
EXTERNAL_PREFIX = "external:"


def external_method(name: str) -> str:
    """The method of an external checkpoint's run ("X" -> "external:X")."""
    return EXTERNAL_PREFIX + name


def is_external(method: Any) -> bool:
    """Whether a run's method names a checkpoint unlearned elsewhere (audit mode)."""
    return isinstance(method, str) and method.startswith(EXTERNAL_PREFIX)


def external_name(method: str) -> str:
    """The configured name of an external checkpoint's method ("external:X" -> "X")."""
    if not is_external(method):
        raise ValueError(f"{method!r} is not an external checkpoint's method")
    return method.removeprefix(EXTERNAL_PREFIX)


def unlearned_here(method: str) -> bool:
    """An unlearning run of the DAG (not a reference model, not an external checkpoint)."""
    return method not in REFERENCES and not is_external(method)


def format_value(value: Any) -> str:
    """Path-safe and stable: 1e-05, 0.1, 1, bf16."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def grid_value(key: str, value: Any) -> Any:
    """A hyperparameter as the grid holds it (and a run's cell config hashes it): a number of
    its field's type (YAML's ``1`` for a float field is 1.0), a ``float | str`` field (a number
    or a quantizer name) as text, anything else as given."""
    kind = group_of(key).field_types()[key]
    if value is None:
        return None
    if kind is float:
        return float(value)
    if kind is int:
        return int(value)
    if kind == (float | str):
        return format_value(value)
    return value


#: The study-wide ``unlearn`` settings that change an unlearned model's weights (and so are part
#: of its run's identity): `training_settings`. gradient_checkpointing is not one of them (it
#: recomputes the same activations).
TRAINING_KEYS = ("batch_size", "max_len", "max_grad_norm", "bf16_compute", "lr_schedule",
                 "warmup_steps")  # fmt: skip
#: The training settings under which a run's path is its method and hyperparameters alone (no
#: ``train~`` segment): those of the default study (config/config.yaml) when the segment was
#: introduced, so that its run paths and cell config hashes stayed as they were. Any other
#: settings add ``train~<hash>`` (`training_tag`).
PLAIN_TRAINING = {
    "batch_size": 16,
    "max_len": 64,
    "max_grad_norm": 1.0,
    "bf16_compute": "emulated",
    "lr_schedule": "constant",
    "warmup_steps": 0,
}


def training_settings(config: dict, weight_dtype: str) -> dict:
    """The ``unlearn`` settings that determine the weights of a run of this weight dtype
    (bf16_compute only for bf16 weights: fp32 runs compute the same either way)."""
    keys = [k for k in TRAINING_KEYS if k != "bf16_compute" or weight_dtype == "bf16"]
    return {k: config["unlearn"][k] for k in keys}


def training_tag(config: dict, weight_dtype: str) -> str | None:
    """The ``train~`` segment of a run's path: a short hash of its `training_settings`, or None
    when they are `PLAIN_TRAINING`. Two studies that differ only in these settings (e.g.
    ``unlearn.batch_size``) then write disjoint run folders in one results_dir."""
    settings = training_settings(config, weight_dtype)
    if settings == {k: PLAIN_TRAINING[k] for k in settings}:
        return None
    return config_hash(settings)[:8]


def run_path(
    method: str, params: dict, subject: int | None = None, train: str | None = None
) -> str:
    """The run's folder name, Paramspace style: method~NPO_GDR/weight_dtype~bf16/lr~1e-05/...;
    then ``/train~<hash>`` where the study's training settings are not the plain ones
    (`training_tag`); an RWKU run ends in the number of its unlearning target (``/subject~3``)."""
    if is_external(method):
        return f"method~external/checkpoint~{external_name(method)}"
    parts = [f"method~{method}"]
    if method not in REFERENCES:
        parts += [f"{k}~{format_value(params[k])}" for k in get_method(method).hyperparameters]
        if train is not None:
            parts.append(f"train~{train}")
    if subject is not None:
        parts.append(f"subject~{subject}")
    return "/".join(parts)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark of the study, resolved once when the study is loaded."""

    name: str
    #: its config entry without its external checkpoints: what its data, models and cells
    #: depend on (adding a checkpoint to audit changes none)
    entry: dict
    #: its row of quantunlearn.data.benchmarks.BENCHMARKS
    kind: BenchmarkKind
    #: audit mode: {name: hub id or folder} of the checkpoints unlearned elsewhere
    external: dict[str, str] = field(default_factory=dict)
    #: the tiny model the DAG trains for it (global spec + its overrides); None where the DAG
    #: trains none (named reference models, or fine-tuning from ``models.base``)
    tiny_model: dict | None = None

    @property
    def models(self) -> dict:
        """Its ``models`` section (target, retrain, tokenizer, base), without ``unlearned``."""
        return self.entry["models"]

    @property
    def trains_models(self) -> bool:
        """Whether the DAG makes its reference models (trains a tiny one or fine-tunes base)."""
        return self.models["target"] is None

    @property
    def subjects(self) -> list[int] | None:
        """Its unlearning targets (RWKU: one run each), or None (MUSE: the whole forget set)."""
        return self.kind.subjects(self.entry)


def read_benchmark(config: dict, name: str) -> Benchmark:
    """The typed `Benchmark` of a validated config's entry ``benchmarks.<name>``."""
    entry = dict(config["benchmarks"][name])
    external = dict(entry["models"].get("unlearned") or {})
    entry["models"] = {k: v for k, v in entry["models"].items() if k != "unlearned"}
    trains_tiny = entry["models"]["target"] is None and entry["models"].get("base") is None
    tiny = benchmark_tiny_model(config, name) if trains_tiny else None
    return Benchmark(name, entry, benchmark_kind(entry), external, tiny)


@dataclass(frozen=True)
class Run:
    """One run folder of a benchmark: what its jobs (unlearn, evaluate, diagnose) need of it.

    Plain values only, so Snakemake can hand it to a job's script as a param.
    """

    benchmark: str
    method: str
    #: the run's folder (`run_path`), the ``{run}`` wildcard
    path: str
    #: the RWKU target it unlearns; None for a MUSE run and for the references
    subject: int | None = None
    #: the method's hyperparameters, in run-path order, as the grid holds them (`grid_value`);
    #: empty for the references and external checkpoints
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    #: the section of ``unlearn.methods.<method>`` that gave it (a list of grids: its index)
    section: int | None = None

    @property
    def unlearned(self) -> bool:
        """Whether an unlearning job of the DAG makes its model."""
        return unlearned_here(self.method)

    @property
    def typed(self) -> methods.Run:
        """Its typed hyperparameter groups (``run.typed.lr``, ``run.typed.groups``): what the
        unlearning job trains with."""
        if not self.unlearned:
            raise ValueError(f"{self.path} is not an unlearning run: it has no hyperparameters")
        return _typed_run(self.method, tuple(self.hyperparameters.items()))

    @property
    def params(self) -> dict[str, Any]:
        """Its parameters as every file of its cells records them (and its cell config hashes
        them): benchmark, run, method, the base methods' hyperparameters always (None where the
        method takes none, so the six base methods' files keep their exact columns), its own
        ones, and its RWKU subject. In the grid's column order: Snakemake compares a job's
        params by their text (a reordered dict would rerun every job)."""
        values = dict.fromkeys(BASE_HYPER_COLUMNS) | self.hyperparameters
        params = {"benchmark": self.benchmark, "run": self.path, "method": self.method}
        params |= {key: values[key] for key in HYPER_COLUMNS if key in values}  # the grid's order
        if self.subject is not None:
            params["subject"] = self.subject
        return params


@functools.cache
def _typed_run(method: str, hyperparameters: tuple[tuple[str, Any], ...]) -> methods.Run:
    """A run's typed groups, built once per process (the plan, the dry run's step counts and
    the job all ask for them)."""
    return get_method(method).run(dict(hyperparameters))


def _method_runs(config: dict, bench: Benchmark, name: str) -> list[Run]:
    """Every cell of one method's grid on one benchmark (times its targets, for RWKU)."""
    runs = []
    for section, params in enumerate(method_grids(config, name)):  # one grid per section
        for given in grid_cells(name, params):  # the path spells them as written
            values = {k: grid_value(k, v) for k, v in given.items()}
            train = training_tag(config, values["weight_dtype"])
            for subject in bench.subjects or [None]:
                path = run_path(name, given, subject, train)
                runs.append(Run(bench.name, name, path, subject, values, section))
    return runs


def _repeat_error(config: dict, runs: list[Run]) -> str | None:
    """A run the grid holds twice, named by the method's section(s) that give it; None: none."""
    seen: dict[tuple[str, str], Run] = {}
    dupes: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        key = (run.benchmark, run.path)
        if key in seen:
            dupes.setdefault(key, [seen[key]]).append(run)
        seen[key] = run
    if not dupes:
        return None
    first = min(dupes.values(), key=lambda group: runs.index(group[0]))  # in grid order
    same = [r for key, group in dupes.items() if key[1] == first[0].path for r in group]
    sections = sorted({r.section for r in same if r.section is not None})
    listed = isinstance(config["unlearn"]["methods"][first[0].method], list)
    where = [f"unlearn.methods.{first[0].method}" + (f"[{i}]" if listed else "") for i in sections]
    what = " and ".join(dict.fromkeys(where))
    more = len({path for _, path in dupes}) - 1
    return (
        f"config key {what}: the grid of {first[0].method} repeats the run {first[0].path}"
        + (f" (and {more} more)" if more else "")
        + "; each run may appear once"
    )


def expand(config: dict, benchmarks: dict[str, Benchmark]) -> tuple[Run, ...]:
    """Every run of a validated config, per benchmark: the references of its kind (MUSE: target
    and retrain; RWKU: the original model), its external checkpoints, then every cell of every
    method's grid (RWKU: one run per unlearning target)."""
    runs = []
    for bench in benchmarks.values():
        runs += [Run(bench.name, ref, run_path(ref, {})) for ref in bench.kind.references]
        for name in bench.external:
            method = external_method(name)
            runs.append(Run(bench.name, method, run_path(method, {})))
        for name in config["unlearn"]["methods"]:
            runs += _method_runs(config, bench, name)
    error = _repeat_error(config, runs)
    if error:
        raise ConfigError(error)
    return tuple(runs)
