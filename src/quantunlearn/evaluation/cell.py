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
from pathlib import Path

import pandas as pd
import torch

from quantunlearn.data import BY_NAME as BENCHMARKS_BY_NAME
from quantunlearn.data import provenance
from quantunlearn.data.muse import load_benchmark
from quantunlearn.data.provenance import Pins
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
    model_path: str,
    quant: str,
    bench_dir: str | Path,
    reference_auc_json: str | Path,
    metrics_out: str | Path,
    records_out: str | Path,
    *,
    cell: dict,
    cell_config: dict,
    evaluation: dict,
    bnb_compute_dtype: str = "fp32",
    tokenizer: str | None = None,
    quant_dir: str | Path | None = None,
    target_model: str | None = None,
    kind: str = "muse",
    subjects: list[int] | None = None,
    inputs: dict | None = None,
) -> pd.DataFrame:
    """Quantize (at load time, or decode a stored checkpoint) and evaluate one model; `cell`
    holds the row's parameters. quant_dir: the stored checkpoint of a GPTQ/AWQ quantizer;
    target_model: the target, which the noflip counterfactual needs; kind: the benchmark's row
    of quantunlearn.data.benchmarks.BENCHMARKS; subjects: the RWKU targets the cell evaluates;
    reference_auc_json: None without a retrain model (RWKU); inputs: role -> {"source",
    "commit"} of every input (`provenance.Pins.record`), else the folders'."""
    # long: a cell's every input is a keyword (the rule's params); the body is one straight line
    quantizer = parse_quantizer(quant)
    bench = BENCHMARKS_BY_NAME[kind].load(bench_dir, subjects)
    reference = _reference(reference_auc_json)
    auc_retrain = reference.get("auc_retrain", float("nan"))
    if inputs is None:
        inputs = local_inputs(
            model=model_path, tokenizer=tokenizer or model_path, target=target_model
        )
    inputs = {**_reference_inputs(reference), **inputs}
    tok = use_chat_template(load_tokenizer(tokenizer or model_path), evaluation)
    start = time.time()
    model = quantizer.load(
        model_path,
        compute_dtype=bnb_compute_dtype,
        quant_dir=quant_dir,
        target_path=target_model,
        tokenizer=tokenizer or model_path,
    )
    quantize_seconds = time.time() - start
    values, records = _measure(
        Context(model, tok, bench, evaluation, auc_retrain, quantizer.batch_invariant)
    )
    shared = {
        **cell,
        "quant": quant,
        "collapsed": collapsed_flag(model_path),
        "config_hash": config_hash(cell_config),
        "cell_config": json.dumps(cell_config, sort_keys=True, default=str),
        "versions": package_versions(),
        "eval_seconds": time.time() - start,
        "quantize_seconds": quantize_seconds,
        **provenance.provenance_columns(inputs),
    }
    if subjects is not None:  # RWKU: how many targets the cell's values average
        shared["n_targets"] = len(subjects)
    rows = [{**shared, "metric": m, "value": float(v), "n": n} for m, (v, n) in values.items()]
    frame = pd.DataFrame(rows)
    hyper = [key for key in all_fields() if key in frame.columns]
    frame = frame.astype({"n": "Int64", **{key: column_dtype(key) for key in hyper}})
    write_parquet(_records_frame(records, reference, cell, quant), records_out)
    write_parquet(frame, metrics_out)
    summary = ", ".join(f"{m} {v:.1f}" for m, (v, _) in values.items())
    print(f"{cell['benchmark']} {cell['run']} {quant}: {summary}")
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
