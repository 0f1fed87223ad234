"""The grid of a study: one pandas row per unlearning run (plus the two reference models),
turned into Snakemake paths here and nowhere else.

``{run}`` is a Paramspace-style path of the method and its hyperparameters, e.g.
``method~NPO_GDR/weight_dtype~bf16/lr~1e-05/epochs~10/alpha~1/beta~0.1/npo_klr_form~paper/seed~0``;
the keys come in the method's run-path order (`quantunlearn.unlearning.methods.Method`).
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from quantunlearn.data import benchmark_kind
from quantunlearn.io import config_hash, write_json
from quantunlearn.quantizers import parse_quantizer
from quantunlearn.study.config import ConfigError, normalize_config, read_config_file
from quantunlearn.study.config_tree import benchmark_tiny_model
from quantunlearn.study.external import identity
from quantunlearn.study.method_grid import as_list, config_warnings, method_grids
from quantunlearn.unlearning.hyperparameters import BASE_HYPER_COLUMNS, HYPER_COLUMNS, column_dtype
from quantunlearn.unlearning.methods import REFERENCES, get_method

#: The file in a tables folder that names the config writing it: two configs that would write
#: the same table files are stopped at parse time (`Study.tables_owner_error`).
TABLES_MARKER = ".written_by.json"


#: Audit mode: a checkpoint unlearned elsewhere (benchmarks.<b>.models.unlearned) is a run whose
#: method is "external:<name>", labelled "<name> (external)" in every table.
EXTERNAL_PREFIX = "external:"


def external_method(name: str) -> str:
    return EXTERNAL_PREFIX + name


def is_external(method: Any) -> bool:
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


def _method_runs(config: dict, bench: str, name: str) -> list[dict]:
    """Every cell of one method's grid on one benchmark (times its targets, for RWKU)."""
    method = get_method(name)
    subjects = benchmark_kind(config["benchmarks"][bench]).subjects(config["benchmarks"][bench])
    rows = []
    for section, params in enumerate(method_grids(config, name)):  # one grid per section
        if "quail_delta" in params:  # a number or a quantizer name: one text column
            params["quail_delta"] = [format_value(v) for v in as_list(params["quail_delta"])]
        axes = {k: as_list(params[k]) for k in method.hyperparameters}
        for combo in itertools.product(*axes.values()):
            row = dict(zip(axes, combo, strict=True))
            train = training_tag(config, row["weight_dtype"])
            for subject in subjects or [None]:
                run = run_path(name, row, subject, train)
                rows.append({"benchmark": bench, "method": name, "run": run, "subject": subject,
                             "section": section, **row})  # fmt: skip
    return rows


def _repeat_error(config: dict, runs: pd.DataFrame) -> str:
    """A run the grid holds twice, named by the method's section(s) that give it."""
    dupes = runs[runs.duplicated(["benchmark", "run"], keep=False)]
    first = dupes.iloc[0]
    sections = sorted(set(dupes[dupes.run == first.run].section.dropna().astype(int)))
    listed = isinstance(config["unlearn"]["methods"][first.method], list)
    where = [f"unlearn.methods.{first.method}" + (f"[{i}]" if listed else "") for i in sections]
    what = " and ".join(dict.fromkeys(where))
    more = dupes.run.nunique() - 1
    return (
        f"config key {what}: the grid of {first.method} repeats the run {first.run}"
        + (f" (and {more} more)" if more else "")
        + "; each run may appear once"
    )


def expand_runs(config: dict) -> pd.DataFrame:
    """One row per (benchmark, run): the references of the benchmark's kind (MUSE: target and
    retrain; RWKU: the original model), then every cell of every method's grid (RWKU: one run
    per unlearning target, column ``subject``)."""
    rows = []
    for bench, entry in config["benchmarks"].items():
        for ref in benchmark_kind(entry).references:
            rows.append({"benchmark": bench, "method": ref, "run": run_path(ref, {})})
        for name in config["benchmarks"][bench]["models"].get("unlearned") or {}:
            method = external_method(name)
            rows.append({"benchmark": bench, "method": method, "run": run_path(method, {})})
        for name in config["unlearn"]["methods"]:
            rows += _method_runs(config, bench, name)
    runs = pd.DataFrame(rows)
    for col in [*HYPER_COLUMNS, "subject"]:
        if col not in runs:
            runs[col] = pd.NA
    if "section" not in runs:
        runs["section"] = pd.NA
    runs = runs[["benchmark", "run", "method", *HYPER_COLUMNS, "subject", "section"]]
    runs = runs.astype({key: column_dtype(key) for key in HYPER_COLUMNS} | {"subject": "Int64"})
    if runs.duplicated(["benchmark", "run"]).any():
        raise ConfigError(_repeat_error(config, runs))
    return runs.drop(columns="section")


def _plain(value: Any) -> Any:
    """numpy / pandas scalars to JSON-able Python."""
    if value is pd.NA or (isinstance(value, float) and value != value):
        return None
    return value.item() if hasattr(value, "item") else value


@dataclass(frozen=True)
class Cell:
    """One evaluated (benchmark, run, quantizer): it writes one metrics and one records file."""

    benchmark: str
    run: str  # the run's path, the {run} wildcard (`run_path`)
    method: str
    quant: str


def _cells(frame: pd.DataFrame) -> tuple[Cell, ...]:
    return tuple(Cell(c.benchmark, c.run, c.method, c.quant) for c in frame.itertuples())


@dataclass
class Study:
    """The validated config and its grid; the only place that turns the grid into paths."""

    config: dict
    runs: pd.DataFrame
    #: `config_warnings`: valid values that are almost surely a mistake (printed at parse time)
    warnings: list[str] = field(default_factory=list)

    @property
    def results(self) -> Path:
        return Path(self.config["results_dir"])

    @property
    def tables(self) -> Path:
        """Where this config's tables go: several configs may share one results_dir (and so
        reuse each other's models and cells) but each writes its own tables."""
        return Path(self.config["tables_dir"] or self.results / "tables")

    def tables_owner_error(self, owner: str) -> str | None:
        """Why this study may not write its tables folder: another config's tables are there
        (its marker, `TABLES_MARKER`, names that config). None: the folder is free or ours."""
        marker = self.tables / TABLES_MARKER
        if not marker.is_file():
            return None
        written_by = json.loads(marker.read_text(encoding="utf-8")).get("config")
        if written_by == owner:
            return None
        mine = "" if self.config["tables_dir"] is None else f" (tables_dir: {self.tables})"
        suggestion = self.results / "tables" / Path(owner.split(",")[0]).stem
        return (
            f"config key tables_dir: {self.tables} holds the tables of {written_by} (recorded in "
            f"{marker}); this config ({owner}) would overwrite them{mine}. Give it a tables "
            f"folder of its own (e.g. tables_dir: {suggestion}), or delete {marker} to hand the "
            "folder over"
        )

    def claim_tables(self, owner: str) -> None:
        """Record in the tables folder that this config writes it (checked by
        `tables_owner_error` whenever a config is parsed)."""
        error = self.tables_owner_error(owner)
        if error:
            raise ConfigError(error)
        write_json({"config": owner}, self.tables / TABLES_MARKER)

    @property
    def quantizers(self) -> list[str]:
        return list(self.config["quantizers"])

    @property
    def benchmarks(self) -> list[str]:
        return list(self.config["benchmarks"])

    def external_checkpoints(self, bench: str) -> dict[str, str]:
        """Audit mode: {name: hub id or folder} of the benchmark's external checkpoints."""
        return dict(self.config["benchmarks"][bench]["models"].get("unlearned") or {})

    @property
    def utility_check_file(self) -> str:
        """The manifest of the utility data check, named by the hash of the sources it checks."""
        from quantunlearn.data.utility import utility_sources
        from quantunlearn.io import config_hash

        names = self.config["evaluation"].get("utility") or []
        sources = utility_sources(self.config["evaluation"])
        tag = config_hash({name: sources[name] for name in names})
        return str(self.results / "data" / f"utility_check_{tag}.json")

    def benchmark(self, bench: str) -> dict:
        """The benchmark's entry without its external checkpoints (`external_checkpoints`):
        what its data, models and cells depend on (adding a checkpoint to audit changes none)."""
        entry = dict(self.config["benchmarks"][bench])
        entry["models"] = {k: v for k, v in entry["models"].items() if k != "unlearned"}
        return entry

    def kind(self, bench: str):
        """The benchmark's row of quantunlearn.data.benchmarks.BENCHMARKS."""
        return benchmark_kind(self.benchmark(bench))

    def layout(self, bench: str) -> str:
        """muse | rwku: the benchmark's folder layout."""
        return self.kind(bench).layout

    def eval_subjects(self, bench: str, run: str) -> list[int] | None:
        """The RWKU targets a cell evaluates: its run's target, or every target for the original
        model; None for a MUSE benchmark."""
        subjects = self.kind(bench).subjects(self.benchmark(bench))
        if subjects is None:
            return None
        subject = self.run_params(bench, run).get("subject")
        return subjects if subject is None else [subject]

    def trains_models(self, bench: str) -> bool:
        return self.benchmark(bench)["models"]["target"] is None

    def base_model(self, bench: str) -> str | None:
        """The base model the DAG fine-tunes into target and retrain (None: a tiny model)."""
        return self.benchmark(bench)["models"].get("base")

    def hub_dataset(self, bench: str) -> str | None:
        """The hub dataset the benchmark's data are read from (``owner/name[@revision]``: its
        source, or a Twitter benchmark's ``twitter.data`` at its revision); None for generated
        data and local folders."""
        entry = self.benchmark(bench)
        return benchmark_kind(entry).hub_dataset(entry)

    def data_spec(self, bench: str) -> dict:
        """The benchmark's entry without its model size: what its data depends on."""
        return {k: v for k, v in self.benchmark(bench).items() if k != "tiny_model"}

    def tiny_model(self, bench: str) -> dict:
        """The tiny model the DAG trains for this benchmark (global spec + its overrides)."""
        return benchmark_tiny_model(self.config, bench)

    def run_params(self, bench: str, run: str) -> dict:
        match = self.runs[(self.runs.benchmark == bench) & (self.runs.run == run)]
        if len(match) != 1:
            raise ConfigError(f"run {run!r} of benchmark {bench!r} is not in the config's grid")
        row = match.iloc[0]
        # the base columns always (as before the extra methods existed, so the six base
        # methods' jobs keep their exact parameters); the others where the method takes them
        method = row["method"]
        takes = get_method(method).hyperparameters if unlearned_here(method) else ()
        keep = set(BASE_HYPER_COLUMNS) | set(takes) | {"benchmark", "run", "method"}
        if not pd.isna(row["subject"]):  # an RWKU run's target (MUSE runs: no key, same hash)
            keep.add("subject")
        return {k: _plain(v) for k, v in row.items() if k in keep}

    def cells(self) -> tuple[Cell, ...]:
        """Every evaluated (benchmark, run, quantizer); the noflip counterfactuals only for
        unlearned runs (for the target itself noflip is plain RTN)."""
        return _cells(self._cell_frame())

    def _cell_frame(self) -> pd.DataFrame:
        quants = pd.DataFrame({"quant": self.quantizers})
        cells = self.runs[["benchmark", "run", "method"]].merge(quants, how="cross")
        counterfactual = cells.quant.map(lambda q: parse_quantizer(q).counterfactual)
        noflip_ref = counterfactual & cells.method.isin(list(REFERENCES))
        return cells[~noflip_ref].reset_index(drop=True)

    def metric_file(self, bench: str, run: str, quant: str) -> str:
        return str(self.results / "metrics" / bench / run / f"{quant}.parquet")

    def record_files(self) -> list[str]:
        """Every cell's records (the per-item outputs behind its metrics): part of the cell's
        output, so a missing one is rebuilt (the `all_tables` target names them)."""
        return [self.record_file(c.benchmark, c.run, c.quant) for c in self.cells()]

    def record_file(self, bench: str, run: str, quant: str) -> str:
        return str(self.results / "records" / bench / run / f"{quant}.parquet")

    def metric_files(self, layout: str | None = None) -> list[str]:
        """Every cell's metric file, or those of the benchmarks of one layout (muse | rwku)."""
        return [
            self.metric_file(c.benchmark, c.run, c.quant)
            for c in self.cells()
            if layout is None or self.layout(c.benchmark) == layout
        ]

    def quant_dir(self, bench: str, run: str, quant: str) -> str:
        """Where a stored (GPTQ/AWQ) checkpoint of a run lives: a DAG output."""
        return str(self.results / "quantize" / bench / run / quant)

    def diagnosed_runs(self) -> pd.DataFrame:
        """The unlearned runs the diagnostics cover (``diagnostics.methods``; none when off)."""
        spec = self.config.get("diagnostics")
        runs = self.runs[self.runs.method.map(unlearned_here)]
        if not spec:
            return runs.iloc[:0]
        if spec["methods"] is not None:
            runs = runs[runs.method.isin(spec["methods"])]
        return runs.reset_index(drop=True)

    def diagnostic_cells(self) -> tuple[Cell, ...]:
        """(benchmark, run, quant) of the weight diagnostics: every diagnosed run x quantizer
        (``diagnostics.quantizers``; by default every quantizer but 'none', the noflip
        counterfactuals, whose codes are the target's by design, and QUAIL's grid), and every
        external checkpoint's always (its audit report shows them)."""
        spec = self.config.get("diagnostics")
        cells = self._cell_frame()
        keep = cells.run.isin(set(self.diagnosed_runs().run))
        if spec and spec["quantizers"] is not None:
            keep &= cells.quant.isin(spec["quantizers"])
        keep = (keep | cells.method.map(is_external)) & cells.quant.map(
            lambda q: parse_quantizer(q).diagnosable
        )
        return _cells(cells[keep])

    def diagnostic_file(self, bench: str, run: str, quant: str) -> str:
        return str(self.results / "diagnostics" / bench / run / f"{quant}.parquet")

    def diagnostic_files(self) -> list[str]:
        cells = self.diagnostic_cells()
        return [self.diagnostic_file(c.benchmark, c.run, c.quant) for c in cells]

    def cell_config(self, bench: str, run: str, quant: str | None = None) -> dict:
        """The parts of the config that determine one cell (or one run, without quant).

        Its hash is the cell's ``config_hash``: unchanged when unrelated parts of the config
        change (adding a method or a quantizer), so re-runs stay incremental.
        """
        params = self.run_params(bench, run)
        cell: dict[str, Any] = {"benchmark": {bench: self.benchmark(bench)}, "run": params}
        if self.trains_models(bench) and self.base_model(bench) is None:
            cell["tiny_model"] = self.tiny_model(bench)
        if is_external(params["method"]):  # its source (and a folder's content): a new cell
            spec = self.external_checkpoints(bench)[external_name(params["method"])]
            cell |= identity(spec, self.results)
        elif params["method"] not in REFERENCES:
            unlearn = training_settings(self.config, params["weight_dtype"])
            for key, default in (("lr_schedule", "constant"), ("warmup_steps", 0)):
                if unlearn[key] == default:  # added later: at the default, hashes as before
                    del unlearn[key]
            if self.config["unlearn"].get("gradient_checkpointing"):
                unlearn["gradient_checkpointing"] = True  # only when on: default hashes unchanged
            cell["unlearn"] = unlearn
        if quant is not None:
            cell["quant"] = quant
            quantizer = parse_quantizer(quant)
            if quantizer.uses_compute_dtype:
                cell["bnb_compute_dtype"] = self.config["bnb_compute_dtype"]
            if quantizer.calibrated:
                cell["calibration"] = self.config["calibration"]
            cell["evaluation"] = self.config["evaluation"]
        return cell


#: Forget chunks of the MUSE corpora as the seeds' code cuts them (BOS + 2047 tokens of the
#: Llama-2 tokenizer, MUSE's dataset.py; counted for docs/methods.md): what their optimizer steps
#: follow from. The project packs paragraphs instead, so its own count (in each run's
#: unlearn_info.json) is somewhat larger.
MUSE_FORGET_CHUNKS = {"muse-bench/MUSE-News": 407, "muse-bench/MUSE-Books": 553}


def steps_summary(study: Study) -> str:
    """The lines a dry run prints about the optimizer steps of the unlearning runs."""
    batch = study.config["unlearn"]["batch_size"]
    lines = []
    for bench in study.benchmarks:
        chunks = MUSE_FORGET_CHUNKS.get(study.benchmark(bench)["source"])
        if chunks is None:
            lines.append(
                f"steps ({bench}): epochs x ceil(forget sequences / batch {batch}) per run (x "
                "lat_model_steps for RMU_LAT), counted by each unlearning job (unlearn_info.json)"
            )
            continue
        counts: dict[int, int] = {}
        for r in study.runs[study.runs.benchmark == bench].itertuples():
            if not unlearned_here(r.method):  # references, external checkpoints
                continue
            method = get_method(r.method)
            run = method.run(study.run_params(bench, r.run))
            steps = method.optimizer_steps(run, chunks, 0, batch)
            counts[steps] = counts.get(steps, 0) + 1
        spread = ", ".join(f"{n} runs x {s}" for s, n in sorted(counts.items()))
        lines.append(
            f"steps ({bench}): batch {batch}, the seeds' {chunks} forget chunks of 2048 tokens: "
            f"{spread} optimizer steps (this project's packing: see each unlearn_info.json)"
        )
    return "\n".join(lines)


def config_owner(configfiles, workdir: str | Path = ".") -> str:
    """How a tables folder's marker names the config that writes it: its file(s), relative to
    the working directory where inside it (so a moved clone keeps its name); "--config" when
    the config came from the command line only."""
    base = Path(os.path.abspath(workdir))
    names = []
    for file in configfiles:
        full = Path(os.path.abspath(file))
        names.append(str(full.relative_to(base)) if full.is_relative_to(base) else str(full))
    return ", ".join(names) or "--config"


def load_study(config: dict) -> Study:
    """Validate a config dict (as Snakemake loaded it) and expand its grid."""
    normalized = normalize_config(config)
    return Study(normalized, expand_runs(normalized), config_warnings(normalized))


def load_study_file(path: str | Path) -> Study:
    """`load_study` of a YAML file (a syntax error names file:line:column)."""
    return load_study(read_config_file(path))


__all__ = [
    "Cell",
    "ConfigError",
    "Study",
    "config_owner",
    "expand_runs",
    "external_method",
    "is_external",
    "load_study",
    "load_study_file",
    "run_path",
    "unlearned_here",
]
