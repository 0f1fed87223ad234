"""The study's plan: every GPU job's memory, GPUs and time before it runs, and its SLURM request.

``python -m quantunlearn.study.plan CONFIG.yaml --gpu-memory 80`` prints, per rule, the jobs, the
GPU memory per job (largest), the GPUs per job, the GPU-hours, and the study's total and disk use;
the dry run prints the same (`plan_summary`). The SLURM profile's requests come from `request`
(`workflow/rules/common.smk`), with the node's GPU memory as the one cluster setting.
Formulas and assumptions: `quantunlearn.study.costs`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from quantunlearn.evaluation.metrics import BY_NAME as METRICS_BY_NAME
from quantunlearn.evaluation.metrics import METRICS
from quantunlearn.models.shape import LlamaShape
from quantunlearn.quantizers import FULL_PRECISION, parse_quantizer
from quantunlearn.study.costs import (
    BYTES,
    GB,
    GPU,
    KNOWN_SHAPES,
    eval_seconds,
    gpus_needed,
    load_seconds,
    quantize_seconds,
    step_flops,
    unlearn_memory,
)
from quantunlearn.study.grid import MUSE_FORGET_CHUNKS, Study, unlearned_here
from quantunlearn.study.runs import run_path
from quantunlearn.study.storage import disk_summary
from quantunlearn.unlearning.methods import RETRAIN

#: forget sequences where the benchmark's count is not known before its data is prepared
ASSUMED_SEQUENCES = 100
#: the SLURM time limit: the estimate x this margin + `RUNTIME_FLOOR_MIN` (x attempt on retries)
RUNTIME_MARGIN = 1.5
RUNTIME_FLOOR_MIN = 15


@dataclass(frozen=True)
class Job:
    """One job's plan: GPU memory (bytes), GPUs, hours, host memory (bytes)."""

    rule: str
    gpu_bytes: float
    gpus: int
    hours: float
    host_bytes: float

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.hours


def model_shape(study: Study, bench: str) -> LlamaShape | None:
    """The target's shape: the tiny model of the config, a local config.json or a known hub id."""
    if study.trains_models(bench) and study.base_model(bench) is None:
        tiny = study.tiny_model(bench)
        vocab = -(-tiny["tokenizer_vocab"] // 128) * 128  # models.build_llama rounds up to 128
        return LlamaShape(vocab, tiny["hidden_size"], tiny["intermediate_size"],
                          tiny["num_layers"], tiny["num_heads"])  # fmt: skip
    models = study.bench(bench).models
    target = str(models["target"] or models["base"]).split("@")[0]
    config = Path(target) / "config.json"
    if config.is_file():
        return LlamaShape.from_config(json.loads(config.read_text()))
    return KNOWN_SHAPES.get(target)


def _host_bytes(shape: LlamaShape, dtype: str) -> float:
    """Host RAM to load and save a checkpoint: two copies of its weights and 4 GB."""
    return 2 * shape.params * BYTES[dtype] + 4 * GB


def unlearn_job(study: Study, bench: str, run: str, gpu: GPU) -> Job:
    """The unlearning job of one run."""
    shape = model_shape(study, bench)
    hp = study.run(bench, run).typed
    method = hp.method
    unlearn = study.config["unlearn"]
    batch, length = unlearn["batch_size"], unlearn["max_len"]
    ckpt = bool(unlearn["gradient_checkpointing"])
    memory = unlearn_memory(method, hp, shape, batch, length, ckpt).total
    sequences = MUSE_FORGET_CHUNKS.get(study.benchmark(bench).get("source"), ASSUMED_SEQUENCES)
    steps = method.optimizer_steps(hp, sequences, sequences, batch)
    flops = step_flops(method, hp, shape, batch, length, ckpt) * steps
    dtype = str(hp.weight_dtype)
    seconds = flops / gpu.flops_per_s(dtype) + 2 * load_seconds(shape, dtype, gpu)
    return Job("unlearn", memory, gpus_needed(memory, gpu), seconds / 3600,
               _host_bytes(shape, dtype))  # fmt: skip


def _eval_memory(shape: LlamaShape, metrics: list[str], batch: int, length: int) -> float:
    """bf16 weights and the larger of a scoring batch's logits (bf16 and their fp32 log-softmax,
    at ``length`` tokens, no cache) and a generation batch's KV cache (bf16, at the longest
    prompt and continuation of the metrics)."""
    works = [METRICS_BY_NAME[m].work for m in metrics]
    generated = [w for w in works if w.new_tokens]
    longest = max((w.prompt_tokens + w.new_tokens for w in generated), default=0)
    kv = 2 * shape.layers * batch * longest * shape.kv_hidden * 2
    return shape.params * 2 + max(kv, batch * length * shape.vocab * (2 + 4))


def _cell_metrics(study: Study, bench: str) -> list[str]:
    layout = study.layout(bench)
    utility = list(study.config["evaluation"].get("utility") or [])
    return [m.name for m in METRICS if m.group == layout] + utility


def evaluate_job(study: Study, bench: str, quant: str, gpu: GPU, rule: str = "evaluate") -> Job:
    """One evaluation cell (``rule`` reference_auc: the retrain model's Min-K% scores only)."""
    shape = model_shape(study, bench)
    ev = study.config["evaluation"]
    metrics = ["privleak"] if rule == "reference_auc" else _cell_metrics(study, bench)
    quantizer = parse_quantizer(quant)
    seconds = load_seconds(shape, "bf16", gpu) + eval_seconds(shape, metrics, ev["batch_size"], gpu)
    if not quantizer.stored:  # RTN, bitsandbytes: quantized at load
        seconds += quantize_seconds(quantizer, shape, study.config["calibration"], gpu)
    memory = _eval_memory(shape, metrics, ev["batch_size"], ev["max_length"])
    return Job(rule, memory, gpus_needed(memory, gpu), seconds / 3600,
               _host_bytes(shape, "bf16"))  # fmt: skip


def quantize_job(study: Study, bench: str, quant: str, gpu: GPU) -> Job:
    """GPTQ/AWQ: load, calibrate layer by layer, save."""
    shape = model_shape(study, bench)
    quantizer = parse_quantizer(quant)
    seconds = 2 * load_seconds(shape, "bf16", gpu)
    seconds += quantize_seconds(quantizer, shape, study.config["calibration"], gpu)
    cal = study.config["calibration"]
    # the model in bf16 and the calibration activations of one layer (fp32)
    memory = shape.params * 2 + 4 * cal["n_samples"] * cal["max_len"] * shape.hidden * 4
    return Job("quantize", memory, gpus_needed(memory, gpu), seconds / 3600,
               _host_bytes(shape, "bf16"))  # fmt: skip


def jobs(study: Study, gpu: GPU) -> pd.DataFrame:
    """Every GPU job of the study: rule, benchmark, run, quant and its `Job`."""
    rows = []
    for r in study.runs.itertuples():
        if unlearned_here(r.method) and model_shape(study, r.benchmark) is not None:
            rows.append((r.benchmark, r.run, "", unlearn_job(study, r.benchmark, r.run, gpu)))
    for c in study.cells():
        if model_shape(study, c.benchmark) is None:
            continue
        rows.append((c.benchmark, c.run, c.quant, evaluate_job(study, c.benchmark, c.quant, gpu)))
        if parse_quantizer(c.quant).stored:
            rows.append(
                (c.benchmark, c.run, c.quant, quantize_job(study, c.benchmark, c.quant, gpu))
            )
    for bench in study.benchmarks:
        if RETRAIN in study.kind(bench).references and model_shape(study, bench) is not None:
            job = evaluate_job(study, bench, FULL_PRECISION, gpu, "reference_auc")
            rows.append((bench, run_path(RETRAIN, {}), FULL_PRECISION, job))
    return pd.DataFrame(
        [
            {"benchmark": b, "run": run, "quant": q, "rule": j.rule, "job": j}
            for b, run, q, j in rows
        ]
    )


def per_rule(study: Study, gpu: GPU) -> pd.DataFrame:
    """Per rule: jobs, largest GPU memory per job (GB), GPUs per job (range), GPU-hours."""
    table = jobs(study, gpu)
    rows = []
    for rule, group in table.groupby("rule", sort=False):
        js = list(group.job)
        gpus = sorted({j.gpus for j in js})
        rows.append({
            "rule": rule,
            "jobs": len(js),
            "gpu_memory_gb": max(j.gpu_bytes for j in js) / GB,
            "gpus_per_job": "-".join(str(g) for g in (gpus[0], gpus[-1]) if g) if len(gpus) > 1
            else str(gpus[0]),
            "jobs_over_1_gpu": sum(j.gpus > 1 for j in js),
            "gpu_hours": sum(j.gpu_hours for j in js),
        })  # fmt: skip
    return pd.DataFrame(rows)


def plan_summary(study: Study, gpu_memory_gb: float = 80.0) -> str:
    """The plan's lines (the dry run prints them)."""
    gpu = replace(GPU(), memory_gb=float(gpu_memory_gb))
    table = per_rule(study, gpu)
    if table.empty:
        return "plan: no GPU job of a known model size"
    head = (f"plan on {gpu.memory_gb:g} GB GPUs ({gpu.name}-class throughput, {gpu.mfu:.0%} MFU "
            "assumed; quantunlearn.study.costs):")  # fmt: skip
    lines = [head, f"  {'rule':<14} {'jobs':>6} {'GB/job':>8} {'GPUs/job':>9} {'GPU-h':>9}"]
    for r in table.itertuples():
        lines.append(f"  {r.rule:<14} {r.jobs:>6} {r.gpu_memory_gb:>8.1f} {r.gpus_per_job:>9} "
                     f"{r.gpu_hours:>9.1f}")  # fmt: skip
    lines.append(f"  {'total':<14} {int(table.jobs.sum()):>6} {'':>8} {'':>9} "
                 f"{table.gpu_hours.sum():>9.1f}")  # fmt: skip
    return "\n".join(lines)


@dataclass(frozen=True)
class Request:
    """A job's SLURM request at its first attempt: GPUs, host memory (MB), time (minutes)."""

    gpu: int
    mem_mb: int
    runtime: int

    def at(self, attempt: int) -> dict:
        """The request of a retry: memory and time grow with the attempt, GPUs do not."""
        return {"gpu": self.gpu, "mem_mb": self.mem_mb * attempt, "runtime": self.runtime * attempt}


def request(study: Study, rule: str, bench: str, run: str, quant: str, gpu_memory_gb: float):
    """One job's `Request` from its plan, on nodes whose GPUs hold ``gpu_memory_gb``: as many
    GPUs as its memory needs, the estimated time x `RUNTIME_MARGIN` + `RUNTIME_FLOOR_MIN`."""
    gpu = replace(GPU(), memory_gb=float(gpu_memory_gb))
    if model_shape(study, bench) is None:
        raise ValueError(
            f"benchmark {bench!r}: the plan does not know its model's size (a hub id that "
            f"quantunlearn.study.costs.KNOWN_SHAPES lacks, or a local folder without config.json)"
        )
    if rule == "unlearn":
        job = unlearn_job(study, bench, run, gpu)
    elif rule == "quantize":
        job = quantize_job(study, bench, quant, gpu)
    else:
        job = evaluate_job(study, bench, quant, gpu, rule)
    minutes = math.ceil(job.hours * 60 * RUNTIME_MARGIN) + RUNTIME_FLOOR_MIN
    return Request(job.gpus, math.ceil(job.host_bytes / 1e6), minutes)


def main(argv: list[str] | None = None) -> int:
    from quantunlearn.study.grid import load_study_file

    parser = argparse.ArgumentParser(prog="python -m quantunlearn.study.plan", description=__doc__)
    parser.add_argument("config", help="the study's config file (YAML)")
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="GB per GPU (default 80)")
    args = parser.parse_args(argv)
    study = load_study_file(args.config)
    try:
        print(plan_summary(study, args.gpu_memory))
        print(disk_summary(study))
    except BrokenPipeError:  # `| head`
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
