"""The Study: a validated config, its typed `Benchmark` entries and `Run` folders
(`quantunlearn.study.runs`), and its cells; the one place that turns them into paths.

Jobs ask it: a rule's params are its answers for the job's wildcards (`Study.run` gives a job
its `Run` back from ``{bench}`` and ``{run}``; `Study.cell_config` the parts of the config that
determine a cell, whose hash names the cell in every file it writes). ``study.runs`` is a
read-only pandas view of the runs, for tabular questions (plan, storage, tests).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from quantunlearn.io import config_hash, write_json
from quantunlearn.quantizers import parse_quantizer
from quantunlearn.study.config import ConfigError, normalize_config, read_config_file
from quantunlearn.study.external import identity
from quantunlearn.study.method_grid import config_warnings
from quantunlearn.study.runs import (
    Benchmark,
    Run,
    expand,
    external_method,
    external_name,
    is_external,
    read_benchmark,
    run_path,
    training_settings,
    unlearned_here,
)
from quantunlearn.unlearning.hyperparameters import HYPER_COLUMNS, column_dtype
from quantunlearn.unlearning.methods import METHODS, REFERENCES

#: The file in a tables folder that names the config writing it: two configs that would write
#: the same table files are stopped at parse time (`Study.tables_owner_error`).
TABLES_MARKER = ".written_by.json"


def runs_frame(runs: tuple[Run, ...]) -> pd.DataFrame:
    """The read-only pandas view of the runs: one row per (benchmark, run), the columns
    benchmark, run, method, every hyperparameter (NA where the method takes none) and subject."""
    rows = [{**r.hyperparameters, "benchmark": r.benchmark, "run": r.path, "method": r.method,
             "subject": r.subject} for r in runs]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["benchmark", "run", "method", *HYPER_COLUMNS, "subject"])
    return frame.astype({key: column_dtype(key) for key in HYPER_COLUMNS} | {"subject": "Int64"})


def expand_runs(config: dict) -> pd.DataFrame:
    """`runs_frame` of a validated config's runs (`quantunlearn.study.runs.expand`)."""
    benchmarks = {name: read_benchmark(config, name) for name in config["benchmarks"]}
    return runs_frame(expand(config, benchmarks))


@dataclass(frozen=True)
class Cell:
    """One evaluated (benchmark, run, quantizer): it writes one metrics and one records file."""

    benchmark: str
    run: str  # the run's path, the {run} wildcard (`run_path`)
    method: str
    quant: str


@dataclass
class Study:
    """The validated config, its benchmarks and runs (typed, built once at load time) and the
    paths of their files; the only place that turns the grid into paths."""

    config: dict
    #: every benchmark of the config, by name, in config order
    benches: dict[str, Benchmark]
    #: every run of every benchmark, in grid order (`quantunlearn.study.runs.expand`)
    all_runs: tuple[Run, ...]
    #: `config_warnings`: valid values that are almost surely a mistake (printed at parse time)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._by_path = {(r.benchmark, r.path): r for r in self.all_runs}
        #: a pandas view derived from the runs (`runs_frame`), for tabular questions
        self.runs = runs_frame(self.all_runs)
        self._quantizers = {q: parse_quantizer(q) for q in self.quantizers}
        # every run x quantizer but the noflip counterfactuals of the reference models (for the
        # target itself noflip is plain RTN), in grid order: built once, asked by every rule
        self._cells = tuple(
            Cell(r.benchmark, r.path, r.method, q)
            for r in self.all_runs
            for q, quantizer in self._quantizers.items()
            if not (quantizer.counterfactual and r.method in REFERENCES)
        )

    def run(self, bench: str, run: str) -> Run:
        """The `Run` of a job's wildcards ``{bench}`` and ``{run}`` (the run's path)."""
        found = self._by_path.get((bench, run))
        if found is None:
            raise ConfigError(f"run {run!r} of benchmark {bench!r} is not in the config's grid")
        return found

    def bench(self, bench: str) -> Benchmark:
        """The typed `Benchmark` of a name of ``benchmarks``."""
        if bench not in self.benches:
            raise ConfigError(f"benchmark {bench!r} is not in the config's benchmarks")
        return self.benches[bench]

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
        return dict(self.bench(bench).external)

    @property
    def utility_check_file(self) -> str:
        """The manifest of the utility data check, named by the hash of the sources it checks."""
        from quantunlearn.data.utility import utility_sources

        names = self.config["evaluation"].get("utility") or []
        sources = utility_sources(self.config["evaluation"])
        tag = config_hash({name: sources[name] for name in names})
        return str(self.results / "data" / f"utility_check_{tag}.json")

    def benchmark(self, bench: str) -> dict:
        """The benchmark's entry without its external checkpoints (`external_checkpoints`):
        what its data, models and cells depend on (adding a checkpoint to audit changes none)."""
        return self.bench(bench).entry

    def kind(self, bench: str):
        """The benchmark's row of quantunlearn.data.benchmarks.BENCHMARKS."""
        return self.bench(bench).kind

    def layout(self, bench: str) -> str:
        """muse | rwku: the benchmark's folder layout."""
        return self.kind(bench).layout

    def eval_subjects(self, bench: str, run: str) -> list[int] | None:
        """The RWKU targets a cell evaluates: its run's target, or every target for the original
        model; None for a MUSE benchmark."""
        subjects = self.bench(bench).subjects
        if subjects is None:
            return None
        subject = self.run(bench, run).subject
        return subjects if subject is None else [subject]

    def trains_models(self, bench: str) -> bool:
        return self.bench(bench).trains_models

    def base_model(self, bench: str) -> str | None:
        """The base model the DAG fine-tunes into target and retrain (None: a tiny model)."""
        return self.bench(bench).models.get("base")

    def hub_dataset(self, bench: str) -> str | None:
        """The hub dataset the benchmark's data are read from (``owner/name[@revision]``: its
        source, or a Twitter benchmark's ``twitter.data`` at its revision); None for generated
        data and local folders."""
        return self.kind(bench).hub_dataset(self.benchmark(bench))

    def data_spec(self, bench: str) -> dict:
        """The benchmark's entry without its model size: what its data depends on."""
        return {k: v for k, v in self.benchmark(bench).items() if k != "tiny_model"}

    def tiny_model(self, bench: str) -> dict | None:
        """The tiny model the DAG trains for this benchmark (global spec + its overrides);
        None where it trains none."""
        return self.bench(bench).tiny_model

    def cells(self) -> tuple[Cell, ...]:
        """Every evaluated (benchmark, run, quantizer); the noflip counterfactuals only for
        unlearned runs (for the target itself noflip is plain RTN)."""
        return self._cells

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

    def model_path(self, bench: str, run: str) -> str:
        """Where the model of a run lives: a DAG output, or an external hub id / local path."""
        the_run = self.run(bench, run)
        if is_external(the_run.method):  # audit mode: a checkpoint unlearned elsewhere
            return self.bench(bench).external[external_name(the_run.method)]
        if not the_run.unlearned:  # a reference model: named in the config, or trained here
            named = self.bench(bench).models[the_run.method]
            return named or str(self.results / "models" / bench / the_run.method)
        return str(self.results / "unlearn" / bench / run / "model")

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
        diagnosed = set(self.diagnosed_runs().run)
        quantizers = spec["quantizers"] if spec and spec["quantizers"] is not None else None

        def chosen(cell: Cell) -> bool:
            return cell.run in diagnosed and (quantizers is None or cell.quant in quantizers)

        return tuple(
            c
            for c in self._cells
            if (chosen(c) or is_external(c.method)) and self._quantizers[c.quant].diagnosable
        )

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
        spec, the_run = self.bench(bench), self.run(bench, run)
        cell: dict[str, Any] = {"benchmark": {bench: spec.entry}, "run": the_run.params}
        if spec.tiny_model is not None:
            cell["tiny_model"] = spec.tiny_model
        if is_external(the_run.method):  # its source (and a folder's content): a new cell
            cell |= identity(spec.external[external_name(the_run.method)], self.results)
        elif the_run.unlearned:
            unlearn = training_settings(self.config, the_run.hyperparameters["weight_dtype"])
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
    repeats = [f" (x {m.scope.steps_key} for {m.name})" for m in METHODS.values()
               if m.scope.steps_key]  # fmt: skip
    lines = []
    for bench in study.benchmarks:
        chunks = MUSE_FORGET_CHUNKS.get(study.benchmark(bench)["source"])
        if chunks is None:
            lines.append(
                f"steps ({bench}): epochs x ceil(forget sequences / batch {batch}) per run"
                f"{''.join(repeats)}, counted by each unlearning job (unlearn_info.json)"
            )
            continue
        counts: dict[int, int] = {}
        for run in study.all_runs:
            if run.benchmark != bench or not run.unlearned:  # references, external checkpoints
                continue
            typed = run.typed
            steps = typed.method.optimizer_steps(typed, chunks, 0, batch)
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
    benches = {name: read_benchmark(normalized, name) for name in normalized["benchmarks"]}
    runs = expand(normalized, benches)
    return Study(normalized, benches, runs, config_warnings(normalized))


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
