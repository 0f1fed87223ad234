"""The real study's configs (MUSE NEWS/BOOKS on a SLURM GPU cluster): parse, grid, dry run.

Nothing here downloads: the dry run lists the jobs with their SLURM resources and prints the
disk use; the MUSE files in ../shared/muse (when present) stand in for the hub dataset.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from quantunlearn.data.muse import load_benchmark, prepare_benchmark
from quantunlearn.evaluation.muse_metrics import knowmem_prompt
from quantunlearn.study import load_study, load_study_file
from quantunlearn.study.plan import request
from quantunlearn.study.storage import LLAMA2_7B_PARAMS, disk_estimate, llama_params

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"news": ROOT / "config" / "muse_news.yaml", "books": ROOT / "config" / "muse_books.yaml"}
# Zhang et al. appendix D.1: epochs and Table 4's retain weights
EPOCHS = {"news": 10, "books": 5}
ALPHA = {
    "news": {"GA_GDR": 1, "GA_KLR": 1, "NPO_GDR": 1, "NPO_KLR": 1},
    "books": {"GA_GDR": 100, "GA_KLR": 2, "NPO_GDR": 300, "NPO_KLR": 2},
}
# both papers' bitsandbytes formats: Zhang et al.'s FP4 with fp32 compute, Abitante et al.'s NF4
# with bf16 compute
QUANTIZERS = [
    "none", "rtn_w8", "rtn_w4", "bnb_int8", "bnb_fp4_fp32", "bnb_nf4_bf16", "gptq_w4g128",
    "awq_w4g128"
]  # fmt: skip
BASE = ["GA", "GA_GDR", "GA_KLR", "NPO", "NPO_GDR", "NPO_KLR"]
# unlearning runs: 6 base methods; 4 LoRA methods x 48 (Abitante et al.: 4 ranks x 3 lora_alpha
# x lr {1e-4, 7e-4} x epochs {5, 10}); NEWS: GA_GDR at alpha 5 (QUAIL's baseline), SURE with
# Table 9's gamma sweep for GA_KLR and NPO_GDR (1 + 4 + 4 + 1), QUAIL's 10 Table II cells;
# BOOKS: 4 SURE + 4 SURE/S (Table 10), RMU's and RMU_LAT's 3 lr (Table 11)
RUNS = {"news": 6 + 1 + 192 + 10 + 10, "books": 6 + 192 + 4 + 4 + 3 + 3}
# the regularized runs whose weights are diagnosed at 4 bits (NEWS: GA_GDR at alpha 1 and 5)
DIAGNOSED = {"news": 5, "books": 4}
# Zhang et al. Tables 6 (NEWS) and 5 (BOOKS): SURE's retain weight and saliency percentile(s)
SURE = {
    "news": {("GA_GDR_SURE", 50, 95), ("NPO_KLR_SURE", 10, 90)}
    | {("GA_KLR_SURE", 10, g) for g in (50, 90, 95, 99)}
    | {("NPO_GDR_SURE", 50, g) for g in (50, 90, 95, 99)},
    "books": {("GA_GDR_SURE", 400, 99), ("GA_KLR_SURE", 20, 90), ("NPO_GDR_SURE", 300, 99),
              ("NPO_KLR_SURE", 20, 90)},
}  # fmt: skip
# Mishra and Mehreen Table II's printed (alpha, gamma) cells
QUAIL_CELLS = {
    (1, 1),
    (1, 5),
    (5, 1),
    (5, 5),
    (5, 8),
    (5, 9),
    (5, 10),
    (20, 10),
    (20, 20),
    (20, 50),
}


@pytest.mark.parametrize("bench", ["news", "books"])
def test_muse_config_has_the_seeds_settings(bench):
    study = load_study_file(CONFIGS[bench])
    assert study.benchmarks == [bench]
    models = study.benchmark(bench)["models"]
    name = {"news": "News", "books": "Books"}[bench]
    assert models == {
        "target": f"muse-bench/MUSE-{name}_target",
        "retrain": f"muse-bench/MUSE-{name}_retrain",
        "tokenizer": "meta-llama/Llama-2-7b-hf",
    }
    assert study.benchmark(bench)["source"] == f"muse-bench/MUSE-{name}"
    assert study.quantizers == QUANTIZERS
    unlearn = study.config["unlearn"]
    assert unlearn["gradient_checkpointing"] is True and unlearn["bf16_compute"] == "native"
    every = study.runs[~study.runs.method.isin(["target", "retrain"])]
    assert len(every) == RUNS[bench]
    base = every[every.method.isin(BASE)]
    runs = base[~((base.method == "GA_GDR") & (base.alpha == 5))].set_index("method")
    assert sorted(runs.index) == sorted(BASE)
    assert (runs.weight_dtype == "bf16").all() and (runs.lr == 1e-5).all()
    assert (runs.epochs == EPOCHS[bench]).all()
    assert {m: runs.alpha[m] for m in ALPHA[bench]} == ALPHA[bench]
    assert (runs.loc[["NPO", "NPO_GDR", "NPO_KLR"], "beta"] == 0.1).all()
    # the seeds' utility protocol: RWKU's small files of target 1, Llama-2's chat template
    evaluation = study.config["evaluation"]
    seeds = ["mmlu_rwku", "truthfulqa_rwku", "triviaqa_rwku", "fluency_rwku"]
    assert evaluation["utility"] == seeds and evaluation["chat_template"] == "llama2"
    assert evaluation["utility_data"] == dict.fromkeys(
        seeds, "jinzhuoran/RWKU@d72f493d481d1b0a9bdc6e869d32baeffad8904f"
    )
    assert unlearn["batch_size"] == 2  # the seeds' code: per-device 2, no accumulation
    sure = every[every.method.str.endswith("_SURE")]
    assert set(zip(sure.method, sure.alpha, sure.gamma_pct, strict=True)) == SURE[bench]
    assert (sure.lr == 1e-4).all()
    lora = every[every.method.str.endswith("_LORA")]
    assert set(lora.method) == {"GA_GDR_LORA", "GA_KLR_LORA", "NPO_GDR_LORA", "NPO_KLR_LORA"}
    cells = set(zip(lora.lora_rank, lora.lora_alpha, strict=True))
    assert cells == {(r, a * r) for r in (16, 32, 64, 128) for a in (0.5, 1, 2)}
    assert set(lora.lr) == {1e-4, 7e-4} and set(lora.epochs) == {5, 10}
    quail = every[every.method == "GA_GDR_QUAIL"]
    if bench == "news":  # Mishra and Mehreen Table II's printed cells, and their GA_GDR baseline
        assert set(zip(quail.alpha, quail.quail_gamma, strict=True)) == QUAIL_CELLS
        assert len(quail) == 10 and set(runs_alpha(every, "GA_GDR")) == {1, 5}
    else:
        assert quail.empty
    sure_s = every[every.method.str.endswith("_SURE_S")]
    if bench == "books":  # Zhang et al. Table 10: SURE's lr and (Table 5's) retain weights
        assert dict(zip(sure_s.method, sure_s.alpha, strict=True)) == {
            "GA_GDR_SURE_S": 400, "GA_KLR_SURE_S": 20, "NPO_GDR_SURE_S": 300, "NPO_KLR_SURE_S": 20
        }  # fmt: skip
        assert (sure_s.lr == 1e-4).all()
    else:
        assert sure_s.empty
    assert study.config["diagnostics"] == {
        "quantizers": ["rtn_w4"], "methods": ["GA_GDR", "GA_KLR", "NPO_GDR", "NPO_KLR"],
        "quail_table": True,
    }  # fmt: skip
    rmu = every[every.method.isin(["RMU", "RMU_LAT"])]
    if bench == "books":  # Zhang et al. appendix J: BOOKS, lr over {5e-6, 1e-5, 5e-5}
        for method in ("RMU", "RMU_LAT"):
            part = rmu[rmu.method == method]
            assert sorted(part.lr) == [5e-6, 1e-5, 5e-5]
            assert set(zip(part.alpha, part.rmu_layer, part.rmu_steering, strict=True)) == {
                (1200, 7, 6.5)
            }
        lat = rmu[rmu.method == "RMU_LAT"]  # Sheshadri et al.'s code: one layer below, eps 2
        assert set(zip(lat.lat_layer, lat.lat_epsilon, lat.lat_steps, lat.lat_lr,
                       lat.lat_model_steps, strict=True)) == {(6, 2.0, 16, 0.05, 4)}  # fmt: skip
    else:
        assert rmu.empty
    # gradient checkpointing reaches the unlearning job (and its config hash)
    run = runs.run["GA_GDR"]
    assert study.cell_config(bench, run)["unlearn"]["gradient_checkpointing"] is True


def runs_alpha(every, method):
    return every[every.method == method].alpha.tolist()


def test_llama2_7b_parameter_count_by_hand():
    # embeddings + lm_head 2 x 32000 x 4096; per layer 4 x 4096^2 (q, k, v, o) +
    # 3 x 4096 x 11008 (MLP) + 2 x 4096 (norms); 32 layers; final norm 4096
    by_hand = 2 * 32000 * 4096 + 32 * (4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096) + 4096
    assert llama_params(32000, 4096, 11008, 32) == by_hand == LLAMA2_7B_PARAMS == 6_738_415_616


def test_disk_estimate_keep_and_temp():
    config = yaml.safe_load(CONFIGS["news"].read_text())
    n = RUNS["news"]
    temp = disk_estimate(load_study(config)).iloc[0]  # the config deletes them when evaluated
    assert temp.unlearning_runs == n and temp.kept_gb == 0.0
    assert temp.checkpoint_gb == pytest.approx(LLAMA2_7B_PARAMS * 2 / 1e9)  # bf16: 13.48 GB
    assert temp.written_gb == pytest.approx(n * LLAMA2_7B_PARAMS * 2 / 1e9)
    config["storage"] = {"unlearned_models": "keep"}
    config["unlearn"]["common"]["weight_dtype"] = ["bf16", "fp32"]
    keep = disk_estimate(load_study(config)).iloc[0]
    assert keep.unlearning_runs == 2 * n
    assert keep.written_gb == pytest.approx(n * LLAMA2_7B_PARAMS * (2 + 4) / 1e9)
    assert keep.kept_gb == keep.written_gb


def _dry_run(workdir: Path, config: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "snakemake", "-n", "all_tables"]
    cmd += ["--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), *args]
    cmd += ["--configfile", str(config)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def _wildcards(log: str, rule: str) -> list[dict[str, str]]:
    blocks = re.findall(rf"^(?:local)?rule {rule}:\n(.*?)(?=^\[|\Z)", log, re.M | re.S)
    found = [re.search(r"wildcards: (.*)", b) for b in blocks]
    return [dict(kv.split("=", 1) for kv in m[1].split(", ")) for m in found if m]


def _resources(log: str, rule: str) -> list[dict[str, str]]:
    blocks = re.findall(rf"^(?:local)?rule {rule}:\n(.*?)(?=^\[|\Z)", log, re.M | re.S)
    found = [re.search(r"resources: (.*)", b) for b in blocks]
    return [dict(kv.split("=", 1) for kv in m[1].split(", ")) for m in found if m]


@pytest.mark.parametrize("bench", ["news", "books"])
def test_muse_dry_run_through_the_slurm_profile(bench, tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    log = _dry_run(tmp_path, CONFIGS[bench], "--profile", str(ROOT / "profiles" / "slurm"))
    block = log.split("Job stats:")[1]
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}
    # external target/retrain: no training; every run + 2 references at 8 precisions, and a
    # stored GPTQ and AWQ checkpoint of each; 5 hub inputs downloaded once (the dataset,
    # target, retrain, tokenizer and RWKU, which holds the 4 utility files of the seeds'
    # protocol), on the submitting machine
    n, d = RUNS[bench], DIAGNOSED[bench]
    assert counts == {
        "check_utility_data": 1,  # every utility source loaded before any model (a localrule)
        "download": 5,
        "prepare_benchmark": 1,
        "reference_auc": 1,
        "unlearn": n,
        "quantize": 2 * (n + 2),
        "evaluate": 8 * (n + 2),
        "diagnose": d,  # the regularized runs at rtn_w4
        "quail_table": d,  # QUAIL's Table I of the same runs
        "table1": 1,
        "quant_tables": 1,
        "mitigation_tables": 1,
        "provenance": 1,
        "all_tables": 1,
        "total": 13 + n + 10 * (n + 2) + 2 * d,
    }
    # the downloads: a localrule (a dry run does not say so), no GPU
    assert [r.get("gpu") for r in _resources(log, "download")] == [None] * 5
    # the GPU jobs' requests come from the plan, per job (profile: gpu_memory_gb 80): the
    # regularized NPO_KLR-like runs do not fit one 80 GB GPU and get 2, the others 1
    study = load_study_file(CONFIGS[bench])
    unlearn = _resources(log, "unlearn")
    assert len(unlearn) == n
    for r, wc in zip(unlearn, _wildcards(log, "unlearn"), strict=True):
        want = request(study, "unlearn", wc["bench"], wc["run"], "none", 80).at(1)
        assert (r["gpu"], r["mem_mb"], r["runtime"]) == tuple(str(want[k]) for k in want), wc
        assert r["cpus_per_task"] == "4"
    gpus = {r["gpu"] for r in unlearn}
    assert gpus == {"1", "2"} and len({r["runtime"] for r in unlearn}) > 1  # per job
    evaluate = _resources(log, "evaluate")
    assert len(evaluate) == 8 * (n + 2)
    for r, wc in zip(evaluate, _wildcards(log, "evaluate"), strict=True):
        want = request(study, "evaluate", wc["bench"], wc["run"], wc["quant"], 80).at(1)
        assert (r["gpu"], r["mem_mb"], r["runtime"]) == tuple(str(want[k]) for k in want), wc
    assert all(r["gpu"] == "1" for r in _resources(log, "quantize"))
    assert _resources(log, "reference_auc")[0]["gpu"] == "1"
    assert "plan on 80 GB GPUs" in log and "GPU-h" in log
    assert "gpu" not in _resources(log, "prepare_benchmark")[0]
    # table1 is a localrule (a dry run does not say so; tests/test_slurm.py checks it for real)
    assert "gpu" not in _resources(log, "table1")[0]
    # the expected disk use of the unlearned checkpoints
    gb = n * LLAMA2_7B_PARAMS * 2 / 1e9
    disk = (
        f"disk ({bench}): {n} unlearned models x 13.5 GB (6.74B parameters) = {gb:.1f} GB written"
    )
    assert disk in log and "temp: each deleted once its evaluation cells are done" in log
    # the optimizer steps of the seeds' code: batch 2 over NEWS's 407 / BOOKS's 553 chunks
    steps = {"news": "2040 optimizer steps", "books": "1385"}[bench]
    assert f"steps ({bench}): batch 2, the seeds'" in log and steps in log


def test_temp_storage_deletes_unlearned_models_after_their_evaluations(tmp_path):
    config = yaml.safe_load((ROOT / "tests" / "configs" / "slurm.yaml").read_text())
    config["storage"] = {"unlearned_models": "temp"}
    path = tmp_path / "temp.yaml"
    path.write_text(yaml.safe_dump(config))
    log = _dry_run(tmp_path, path)
    run = load_study(config).runs.query("method == 'GA_GDR'").run.item()  # ends in train~<hash>
    assert f"Would remove temporary output results/unlearn/micro/{run}/model" in log
    assert "temp: each deleted once its evaluation cells are done" in log


@pytest.mark.muse
@pytest.mark.parametrize("bench", ["news", "books"])
def test_muse_config_runs_on_a_local_folder_in_the_muse_layout(shared_muse, bench, tmp_path):
    config = yaml.safe_load(CONFIGS[bench].read_text())
    config["benchmarks"][bench]["source"] = str(shared_muse / bench)
    study = load_study(config)  # a local folder is a valid source
    assert study.benchmark(bench)["source"] == str(shared_muse / bench)
    out = tmp_path / bench
    prepare_benchmark(str(shared_muse / bench), out)  # what the prepare_benchmark job does
    loaded = load_benchmark(out)
    assert len(loaded.knowmem_forget_icl) == 10
    prompt = knowmem_prompt(loaded.knowmem_forget_icl, loaded.knowmem_forget_qa[0]["question"])
    first = loaded.knowmem_forget_icl[0]
    assert prompt.startswith(f"Question: {first['question']}\nAnswer: {first['answer']}\n\n")
    assert prompt.endswith(f"Question: {loaded.knowmem_forget_qa[0]['question']}\nAnswer: ")
    assert prompt.count("Question: ") == 11


def test_twitter_config_names_main_and_dry_runs_through_the_slurm_profile(tmp_path):
    """config/twitter.yaml as shipped: the dataset at @main (the download step pins the commit),
    the target fine-tuned as the authors' notebook does, a dry run through the SLURM profile."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    config = yaml.safe_load((ROOT / "config" / "twitter.yaml").read_text())
    unpinned = copy.deepcopy(config)
    unpinned["benchmarks"]["twitter"]["twitter"]["revision"] = None
    with pytest.raises(ValueError, match="benchmarks.twitter.twitter.revision: the hub dataset"):
        load_study(unpinned)  # a hub dataset is never loaded without a revision
    study = load_study(config)
    assert study.hub_dataset("twitter") == (
        "kanwal-mehreen18/twitter-misinformation-unlearning-eval@main"
    )
    finetune = study.benchmark("twitter")["finetune"]
    assert {k: finetune[k] for k in ("epochs", "batch_size", "lr", "warmup_steps",
            "weight_decay", "adam_beta2", "packing", "max_len")} == {
        "epochs": 5, "batch_size": 3, "lr": 1e-5, "warmup_steps": 0, "weight_decay": 0.0,
        "adam_beta2": 0.999, "packing": "stream", "max_len": 2048}  # fmt: skip
    every = study.runs[~study.runs.method.isin(["target", "retrain"])]
    # Mishra and Mehreen Table III: GA_GDR alpha 5, GA_GDR + hinge alpha 5 gamma 8
    assert set(zip(every.method, every.alpha, every.quail_gamma.fillna(0), strict=True)) == {
        ("GA_GDR", 5, 0), ("GA_GDR_QUAIL", 5, 8)
    }  # fmt: skip
    path = tmp_path / "twitter.yaml"
    path.write_text(yaml.safe_dump(config))
    log = _dry_run(tmp_path, path, "--profile", str(ROOT / "profiles" / "slurm"))
    block = log.split("Job stats:")[1]
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}
    # the tweets, target and retrain fine-tuned from Llama-2-7B, 2 runs + 2 references at 2
    # precisions, Table 1, the QUAIL tables and Table III; the dataset at its revision and the
    # base model (also the tokenizer) downloaded once
    assert counts == {
        "download": 2,
        "prepare_benchmark": 1,
        "train_reference": 2,
        "reference_auc": 1,
        "unlearn": 2,
        "evaluate": 8,
        "table1": 1,
        "mitigation_tables": 1,
        "twitter_table": 1,
        "provenance": 1,
        "all_tables": 1,
        "total": 21,
    }
    assert all(r["gpu"] == "1" for r in _resources(log, "train_reference"))
    assert "disk (twitter): 2 unlearned models x 13.5 GB" in log
