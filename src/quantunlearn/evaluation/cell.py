"""Evaluate one (run, quantizer) cell with every metric of the METRICS table; write its files.

Each cell writes two files: the metrics in long format (one row per metric, with the cell's
parameters, its config hash, package versions and the provenance of every input as columns, so
that aggregation is a plain concatenation) and the per-sample records (metric, index, prompt,
reference, output, score), so that every number can be audited. PrivLeak's records are the
per-text Min-K% scores of the model (``mink_auc``) and of the retrain reference
(``mink_auc_retrain``), each with its ``split`` (forget | holdout) and ``index``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from quantunlearn.data import BY_NAME as BENCHMARKS_BY_NAME
from quantunlearn.data import provenance
from quantunlearn.data.muse import load_benchmark
from quantunlearn.data.provenance import Pins
from quantunlearn.data.utility import utility_sources
from quantunlearn.evaluation import metrics
from quantunlearn.evaluation.metrics import Context
from quantunlearn.io import config_hash, write_json, write_parquet
from quantunlearn.models.chat import use_chat_template
from quantunlearn.models.loading import load_model, load_tokenizer
from quantunlearn.quantizers import parse_quantizer
from quantunlearn.unlearning.hyperparameters import all_fields, column_dtype

#: The packages whose versions every metric row records (None where one is not installed):
#: every dependency of pyproject.toml (tests/test_environment.py checks it) and the optional
#: ones a model may need.
PACKAGES = (
    "quantunlearn",
    "torch",
    "transformers",
    "tokenizers",
    "accelerate",
    "peft",
    "bitsandbytes",
    "gptqmodel",
    "gguf",
    "llama-cpp-python",
    "optimum",
    "datasets",
    "rouge-score",
    "lm-eval",
    "pandas",
    "pyarrow",
    "numpy",
    "snakemake",
    "jsonschema",
    "pyyaml",
    "matplotlib",
    "tqdm",
    "huggingface_hub",
    "safetensors",
    "sentencepiece",
    "protobuf",
)


@dataclass(frozen=True)
class CellJob:
    """One cell as its job sees it: an evaluation (run x quantizer: metrics and records) or a
    weight diagnostic (the run against the target under one quantizer). The study layer builds
    it from a job's wildcards (`quantunlearn.study.jobs.cell_job`); the job swaps its hub ids
    for the snapshot folders the download step pinned (`pinned`)."""

    #: the run's parameters (benchmark, run, method, hyperparameters, subject): the first
    #: columns of every row the cell writes
    params: dict
    quant: str
    #: the parts of the config that determine the cell; its hash names the cell in its files
    cell_config: dict
    #: the model: a folder or a hub id (after `pinned`: a folder)
    model: str
    #: its tokenizer (None: the model's own)
    tokenizer: str | None = None
    #: the target: what the noflip counterfactual and the diagnostics compare with
    target: str | None = None
    #: the stored checkpoints of a GPTQ/AWQ quantizer: of the model, of the target
    quant_dir: str | None = None
    target_quant_dir: str | None = None
    #: the benchmark's row of quantunlearn.data.benchmarks.BENCHMARKS (its name), its data
    #: source (as the rows record it; None for a weight diagnostic, which reads no data) and the
    #: RWKU targets the cell evaluates (None: MUSE)
    kind: str = "muse"
    data_source: str | None = None
    subjects: list[int] | None = None
    #: the evaluation settings (the cell config's; `pinned`: with the utility data's folders)
    evaluation: dict | None = None
    #: role -> {"source", "commit"} of every input (`Pins.record`); None: the folders'
    inputs: dict | None = None

    @property
    def compute_dtype(self) -> str:
        """The compute dtype of a bitsandbytes quantizer (fp32 where the cell has none)."""
        return self.cell_config.get("bnb_compute_dtype", "fp32")

    @property
    def settings(self) -> dict:
        """The evaluation settings the cell measures with."""
        return self.cell_config["evaluation"] if self.evaluation is None else self.evaluation

    def pinned(self, pins: Pins) -> CellJob:
        """The cell with its hub models and datasets read from their pinned snapshot folders,
        and the provenance of each input recorded: the model and the target; for an evaluation
        also its tokenizer, the benchmark's data and each utility dataset."""
        inputs = {"model": pins.record(self.model), "target": pins.record(self.target)}
        evaluation = self.evaluation
        if self.data_source is not None:
            evaluation = dict(self.settings)
            named, sources = evaluation.get("utility") or [], utility_sources(evaluation)
            if named:  # hub datasets: their pinned snapshots
                evaluation["utility_data"] = {k: pins.local(sources[k]) for k in named}
            inputs = {"model": inputs["model"],
                      "tokenizer": pins.record(self.tokenizer or self.model),
                      "target": inputs["target"], "benchmark": pins.record(self.data_source),
                      **{f"utility:{k}": pins.record(sources[k]) for k in named}}  # fmt: skip
        return replace(
            self,
            model=pins.local(self.model),
            tokenizer=pins.local(self.tokenizer),
            target=pins.local(self.target),
            evaluation=evaluation,
            inputs=inputs,
        )


def package_versions() -> str:
    """JSON of the versions of PACKAGES (and Python)."""
    return json.dumps(provenance.package_versions(PACKAGES), sort_keys=True)


def local_inputs(**paths: str | Path | None) -> dict[str, dict]:
    """role -> {"source", "commit"} of inputs given as folders (the commit of a hub snapshot
    folder, None for others); what a cell records when its caller names no sources."""
    return {role: Pins(()).record(str(p)) for role, p in paths.items() if p is not None}


def collapsed_flag(model_path: str | Path) -> bool | None:
    """The unlearning job's collapse flag (``unlearn_info.json``, `unlearning.loop.collapse`);
    None for a model no unlearning job wrote (the target, the retrain model)."""
    info = Path(model_path) / "unlearn_info.json"
    if not info.is_file():
        return None
    return json.loads(info.read_text(encoding="utf-8")).get("collapsed")


def reference_auc(
    retrain_model: str,
    bench_dir: str | Path,
    out_json: str | Path,
    evaluation: dict,
    tokenizer: str | None = None,
    inputs: dict | None = None,
) -> float:
    """PrivLeak's denominator: the full-precision retrain model's Min-K% AUC (forget vs
    holdout), written with the per-text scores it is computed from and the model's source."""
    bench = load_benchmark(bench_dir)
    tok = load_tokenizer(tokenizer or retrain_model)
    model = load_model(retrain_model, "fp32")
    context = Context(model, tok, bench, evaluation, auc_retrain=float("nan"))
    auc, records = context.membership
    scores = [{k: r[k] for k in ("split", "index", "score")} for r in records]
    inputs = inputs or local_inputs(retrain=retrain_model, tokenizer=tokenizer or retrain_model)
    info = {"auc_retrain": auc, "model": str(retrain_model), "mink_k": evaluation["mink_k"]}
    provenance_info = provenance.provenance_columns(inputs)
    write_json({**info, "scores": scores, "provenance": provenance_info}, out_json)
    return auc


def _reference(reference_auc_json) -> dict:
    """PrivLeak's reference (`reference_auc`'s file); {} for a benchmark without a retrain model
    (RWKU), whose cells have no PrivLeak."""
    if reference_auc_json is None:
        return {}
    return json.loads(Path(reference_auc_json).read_text())


def _measure(context: Context) -> tuple[dict, list[dict]]:
    """Every metric of the METRICS table that applies to the cell: {name: (value, n)}, records."""
    values, records = {}, []
    with torch.inference_mode():
        for metric in metrics.METRICS:
            if metric.applies(context):
                value, n, recs = metric.compute(context)
                values[metric.name] = (value, n)
                records += recs
    return values, records


def evaluate_cell(
    cell: CellJob,
    bench_dir: str | Path,
    reference_auc_json: str | Path | None,
    metrics_out: str | Path,
    records_out: str | Path,
) -> pd.DataFrame:
    """Quantize (at load time, or decode a stored checkpoint) and evaluate one cell's model
    with every metric that applies; write its metrics and records. bench_dir: the benchmark's
    folder; reference_auc_json: PrivLeak's reference (None without a retrain model: RWKU)."""
    quant, model_path, tokenizer, evaluation = cell.quant, cell.model, cell.tokenizer, cell.settings
    quantizer = parse_quantizer(quant)
    bench = BENCHMARKS_BY_NAME[cell.kind].load(bench_dir, cell.subjects)
    reference = _reference(reference_auc_json)
    auc_retrain = reference.get("auc_retrain", float("nan"))
    inputs = cell.inputs or local_inputs(
        model=model_path, tokenizer=tokenizer or model_path, target=cell.target
    )
    inputs = {**_reference_inputs(reference), **inputs}
    tok = use_chat_template(load_tokenizer(tokenizer or model_path), evaluation)
    start = time.time()
    model = quantizer.load(
        model_path,
        compute_dtype=cell.compute_dtype,
        quant_dir=cell.quant_dir,
        target_path=cell.target,
        tokenizer=tokenizer or model_path,
    )
    quantize_seconds = time.time() - start
    values, records = _measure(
        Context(model, tok, bench, evaluation, auc_retrain, quantizer.batch_invariant)
    )
    shared = {
        **cell.params,
        "quant": quant,
        "collapsed": collapsed_flag(model_path),
        "config_hash": config_hash(cell.cell_config),
        "cell_config": json.dumps(cell.cell_config, sort_keys=True, default=str),
        "versions": package_versions(),
        "eval_seconds": time.time() - start,
        "quantize_seconds": quantize_seconds,
        **provenance.provenance_columns(inputs),
    }
    if cell.subjects is not None:  # RWKU: how many targets the cell's values average
        shared["n_targets"] = len(cell.subjects)
    rows = [{**shared, "metric": m, "value": float(v), "n": n} for m, (v, n) in values.items()]
    frame = pd.DataFrame(rows)
    hyper = [key for key in all_fields() if key in frame.columns]
    frame = frame.astype({"n": "Int64", **{key: column_dtype(key) for key in hyper}})
    write_parquet(_records_frame(records, reference, cell.params, quant), records_out)
    write_parquet(frame, metrics_out)
    summary = ", ".join(f"{m} {v:.1f}" for m, (v, _) in values.items())
    print(f"{cell.params['benchmark']} {cell.params['run']} {quant}: {summary}")
    return frame


def _reference_inputs(reference: dict) -> dict:
    """PrivLeak's denominator: the retrain model the reference AUC came from (its file's
    provenance), as a cell's ``retrain`` input."""
    if "provenance" not in reference:  # written before the provenance was recorded
        return {}
    retrain = json.loads(reference["provenance"]["inputs"]).get("retrain")
    return {"retrain": retrain} if retrain else {}


def _records_frame(records: list[dict], reference: dict, cell: dict, quant: str) -> pd.DataFrame:
    """The cell's per-item records, with the retrain model's per-text Min-K% scores
    (``mink_auc_retrain``): PrivLeak recomputes from this file alone."""
    records = records + [{"metric": "mink_auc_retrain", **r} for r in reference.get("scores", [])]
    frame = pd.DataFrame(records)
    frame.insert(0, "quant", quant)
    frame.insert(0, "run", cell["run"])
    frame.insert(0, "benchmark", cell["benchmark"])
    return frame
