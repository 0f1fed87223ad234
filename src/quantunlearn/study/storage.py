"""Disk use of a study: how much its unlearned checkpoints take, kept or temporary.

A 7B checkpoint in bf16 is about 13.5 GB and a grid has many unlearning runs, so the footprint is
a choice (config ``storage.unlearned_models``): ``keep`` every unlearned model, or ``temp``
(Snakemake ``temp()``): each model is deleted once all of its evaluation cells are done (adding a
quantizer later then unlearns again). LoRA runs also save their adapter (megabytes) inside the
model folder (``lora_adapter/``); an adapter-only storage mode would be one more value here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from quantunlearn.study.grid import unlearned_here

BYTES_PER_PARAM = {"bf16": 2, "fp16": 2, "fp32": 4}
# Parameter counts of the hub models the shipped configs name (their config.json, Llama-2-7B
# shape: 32 layers, hidden 4096, MLP 11008, vocabulary 32000), so that a dry run needs no network.
LLAMA2_7B_PARAMS = 6_738_415_616
KNOWN_PARAMS = {
    "muse-bench/MUSE-News_target": LLAMA2_7B_PARAMS,
    "muse-bench/MUSE-News_retrain": LLAMA2_7B_PARAMS,
    "muse-bench/MUSE-Books_target": LLAMA2_7B_PARAMS,
    "muse-bench/MUSE-Books_retrain": LLAMA2_7B_PARAMS,
    "meta-llama/Llama-2-7b-hf": LLAMA2_7B_PARAMS,
    # Llama-3-8B(-Instruct): 32 layers, hidden 4096, MLP 14336, 8 key/value heads of 128
    # (kv 1024), vocabulary 128256 (config/rwku.yaml)
    "meta-llama/Meta-Llama-3-8B-Instruct": 8_030_261_248,
}


def llama_params(
    vocab: int, hidden: int, intermediate: int, layers: int, kv_hidden: int | None = None
) -> int:
    """Parameters of a Llama with untied embeddings: embeddings + lm_head + layers + final norm.

    Per layer: q and o (hidden^2 each), k and v (hidden x kv_hidden each), gate/up/down
    (3 x hidden x intermediate) and two RMSNorm weights.
    """
    kv = hidden if kv_hidden is None else kv_hidden
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * intermediate + 2 * hidden
    return 2 * vocab * hidden + layers * per_layer + hidden


def params_of_config(config: dict) -> int:
    """Parameter count from a transformers Llama config.json dict."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    return llama_params(
        config["vocab_size"],
        hidden,
        config["intermediate_size"],
        config["num_hidden_layers"],
        hidden // heads * kv_heads,
    )


def model_params(study, bench: str) -> int | None:
    """Parameters of a benchmark's target model: tiny (from the config), local or a known id."""
    if study.trains_models(bench) and study.base_model(bench) is None:
        tiny = study.config["tiny_model"]
        vocab = -(-tiny["tokenizer_vocab"] // 128) * 128  # models.build_llama rounds up to 128
        return llama_params(vocab, tiny["hidden_size"], tiny["intermediate_size"],
                            tiny["num_layers"])  # fmt: skip
    models = study.bench(bench).models
    target = models["target"] or models["base"]
    config = Path(target) / "config.json"
    if config.is_file():
        return params_of_config(json.loads(config.read_text()))
    return KNOWN_PARAMS.get(target)


def disk_estimate(study) -> pd.DataFrame:
    """One row per benchmark: unlearning runs, size of one checkpoint, total written and kept."""
    policy = study.config["storage"]["unlearned_models"]
    rows = []
    for bench in study.benchmarks:
        runs = study.runs[(study.runs.benchmark == bench) & study.runs.method.map(unlearned_here)]
        params = model_params(study, bench)
        sizes = [
            params * BYTES_PER_PARAM[str(dtype)] if params is not None else float("nan")
            for dtype in runs.weight_dtype
        ]
        written = float(sum(sizes))
        rows.append(
            {
                "benchmark": bench,
                "unlearning_runs": len(runs),
                "params": params,
                "checkpoint_gb": (max(sizes) if sizes else 0.0) / 1e9,
                "written_gb": written / 1e9,
                "kept_gb": written / 1e9 if policy == "keep" else 0.0,
                "policy": policy,
            }
        )
    return pd.DataFrame(rows)


def disk_summary(study) -> str:
    """The lines a dry run prints: per benchmark, what the unlearned checkpoints take."""
    lines = []
    for r in disk_estimate(study).itertuples():
        if r.unlearning_runs == 0:  # an audit of external checkpoints only
            lines.append(f"disk ({r.benchmark}): no unlearning runs, nothing written")
            continue
        if r.params is None or pd.isna(r.params):
            lines.append(
                f"disk ({r.benchmark}): {r.unlearning_runs} unlearned models of unknown size "
                f"(the target is a hub id this estimate does not know)"
            )
            continue
        kept = (
            f"all kept ({r.kept_gb:.1f} GB)"
            if r.policy == "keep"
            else "temp: each deleted once its evaluation cells are done"
        )
        lines.append(
            f"disk ({r.benchmark}): {r.unlearning_runs} unlearned models x "
            f"{r.checkpoint_gb:.3g} GB ({r.params / 1e9:.3g}B parameters) = "
            f"{r.written_gb:.1f} GB written; {kept} [storage.unlearned_models: {r.policy}]"
        )
    return "\n".join(lines)
