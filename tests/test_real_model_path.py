"""config/muse_news.yaml end to end at micro scale, on look-alikes of the real inputs, offline.

The real study downloads a 7B Llama-2 fine-tune, Llama-2's SentencePiece tokenizer and MUSE
from the hub. Here every hub id of the config is served from a hub cache built in the test
(``HF_HUB_OFFLINE=1``): the target and retrain are random Llamas saved as hub checkpoints (bf16
safetensors shards, Llama-2's generation config, a SentencePiece tokenizer saved as Llama-2's
is: no pad token, BOS added, legacy spacing), ``muse-bench/MUSE-News`` is the real MUSE NEWS
evaluation files (the first items of each, from ../shared/muse) in the hub dataset's layout, and
two checkpoints unlearned beforehand are audited as external: one from the cache
(``owner/name@main``), one from a local folder. Snakemake runs the same rules as on a cluster:
the download step pins every hub input, the jobs run offline on the pinned folders, unlearning
uses bf16 weights and gradient checkpointing, the cells use RTN and bitsandbytes and the utility
metrics (on local fixtures), then the tables, the audit reports and the provenance report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from quantunlearn.data.documents import read_documents
from quantunlearn.data.muse import BENCHMARK_FILES, write_documents, write_json_file
from quantunlearn.data.utility import write_utility_fixture
from quantunlearn.reports.audit import VERDICTS
from quantunlearn.study import load_study_file
from quantunlearn.unlearning.loop import UnlearnJob, unlearn

ROOT = Path(__file__).resolve().parents[1]
N_ITEMS = 4  # items of each MUSE evaluation file
N_DOCS = 24  # paragraphs of each raw corpus
#: the unlearning run's path (batch 4, max_len 64 and the config's bf16_compute: a train~ hash)
RUN_PREFIX = (
    "method~NPO_GDR/weight_dtype~bf16/lr~0.0001/epochs~1/alpha~1/beta~0.1/npo_klr_form~paper/seed~0"
)


def _paragraphs(texts: list[str], n: int) -> list[str]:
    return [p.strip() for t in texts for p in t.split("\n\n") if p.strip()][:n]


def micro_muse(shared: Path, out: Path) -> Path:
    """The first items of every real MUSE NEWS file, in the MUSE layout. ../shared/muse has
    raw/forget.txt only: raw/retain1, retain2 and holdout take paragraphs of the real
    privleak retain and holdout texts (MUSE NEWS text of the same splits)."""
    for rel, _ in BENCHMARK_FILES.values():
        items = json.loads((shared / rel).read_text(encoding="utf-8"))
        write_json_file(out / rel, items if rel.endswith("_icl.json") else items[:N_ITEMS])
    privleak = {
        s: json.loads((shared / "privleak" / f"{s}.json").read_text())
        for s in ("retain", "holdout")
    }
    retain = _paragraphs(privleak["retain"], 2 * N_DOCS)
    raw = {
        "forget": read_documents(shared / "raw" / "forget.txt")[:N_DOCS],
        "retain1": retain[:N_DOCS],
        "retain2": retain[N_DOCS:],
        "holdout": _paragraphs(privleak["holdout"], N_DOCS),
    }
    for split, docs in raw.items():
        write_documents(out / "raw" / f"{split}.txt", docs)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, shared_muse):
    """The hub cache with every hub input of config/muse_news.yaml, and the config."""
    pytest.importorskip("sentencepiece")
    from realistic_fixture import build_checkpoint, install_in_hub_cache, write_muse_hub_dataset

    root = tmp_path_factory.mktemp("real_path")
    bench = micro_muse(shared_muse / "news", root / "muse_news")
    texts = [
        d
        for f in ("forget", "retain1", "holdout")
        for d in read_documents(bench / "raw" / f"{f}.txt")
    ]
    qa = json.loads((bench / "knowmem" / "forget_qa_icl.json").read_text())
    texts += [f"Question: {x['question']}\nAnswer: {x['answer']}" for x in qa]
    target, retrain = root / "target", root / "retrain"
    build_checkpoint(target, texts, vocab_size=1024, seed=0)
    build_checkpoint(retrain, texts, vocab_size=1024, seed=1)
    tokenizer = root / "tokenizer"
    tokenizer.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        (tokenizer / name).write_bytes((target / name).read_bytes())
    # a checkpoint unlearned elsewhere: NPO on the forget corpus, saved by the package
    external = root / "external"
    unlearn(
        str(target),
        bench / "raw" / "forget.txt",
        bench / "raw" / "retain1.txt",
        external,
        root / "external_log.parquet",
        job=UnlearnJob.of(
            "NPO",
            {"weight_dtype": "fp32", "lr": 1e-3, "epochs": 1, "beta": 0.1},
            {"batch_size": 4, "max_len": 64},
        ),
    )
    cache = root / "cache"
    folders = {
        "muse-bench/MUSE-News_target": target,
        "muse-bench/MUSE-News_retrain": retrain,
        "meta-llama/Llama-2-7b-hf": tokenizer,
        "example-org/NPO-MUSE-News-micro": external,
    }
    commits = {repo: install_in_hub_cache(folder, repo, cache) for repo, folder in folders.items()}
    muse_hub = write_muse_hub_dataset(bench, root / "muse_hub")
    commits["muse-bench/MUSE-News"] = install_in_hub_cache(
        muse_hub, "muse-bench/MUSE-News", cache, repo_type="dataset"
    )
    config = yaml.safe_load((ROOT / "config" / "muse_news.yaml").read_text())
    config["results_dir"] = str(root / "results")
    models = config["benchmarks"]["news"]["models"]
    models["unlearned"] = {"npo": "example-org/NPO-MUSE-News-micro@main"}
    unlearn_cfg = config["unlearn"]
    unlearn_cfg["common"].update(lr=1e-4, epochs=1)
    unlearn_cfg["methods"] = {"NPO_GDR": {"alpha": 1.0}}
    unlearn_cfg.update(batch_size=4, max_len=64)
    config["quantizers"] = ["none", "rtn_w4", "bnb_nf4"]
    config["diagnostics"] = False  # the external checkpoint's are made all the same
    config["storage"] = {"unlearned_models": "keep"}
    evaluation = config["evaluation"]
    evaluation.update(verbmem_max_new_tokens=4, knowmem_max_new_tokens=4, batch_size=8)
    evaluation.update(max_length=64, utility_limit=2, fluency_max_new_tokens=4)
    evaluation["utility_data"] = write_utility_fixture(root / "utility", n=2)
    path = root / "micro_news.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"root": root, "config": path, "commits": commits, "external": external}


def _snakemake(world, *args):
    root = world["root"]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(root / "cache"),
        "HF_HOME": str(root / "hf_home"),
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
    cmd += ["--directory", str(root), "--configfile", str(world["config"]), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env)


@pytest.mark.slow
@pytest.mark.muse
def test_muse_news_micro_runs_end_to_end_offline(world):
    root, commits = world["root"], world["commits"]
    run_path = load_study_file(world["config"]).runs.query("method == 'NPO_GDR'").run.item()
    assert run_path.startswith(RUN_PREFIX + "/train~")
    plan = _snakemake(world, "-n", "download_inputs")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "hub inputs: 5 (0 pinned already)" in plan.stderr
    assert "fetch model muse-bench/MUSE-News_target [model]: about 27.0 GB" in plan.stderr

    run = _snakemake(world, "--cores", "2", "all_tables")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    results = root / "results"
    # every hub input pinned to the commit the cache holds
    for pin in (results / "inputs").rglob("*.json"):
        record = json.loads(pin.read_text())
        assert record["commit"] == commits[record["repo_id"]], record
    check_metric_rows(results, commits, run_path)
    check_privleak_recomputes(results)
    check_tables(results)
    check_audit(results)
    # the audit and provenance reports are in the HTML report, with their captions
    html = _snakemake(world, "--report", str(root / "report.html"))
    assert html.returncode == 0, html.stderr[-3000:]
    page = (root / "report.html").read_text(errors="replace")
    assert "audit_news_npo.md" in page and "provenance.md" in page
    # the unlearned model's tokenizer is the target's own files (F2), its info has the pins
    model = results / "unlearn" / "news" / run_path / "model"
    info = json.loads((model / "unlearn_info.json").read_text())
    assert info["inputs"]["target"]["commit"] == commits["muse-bench/MUSE-News_target"]
    assert info["gradient_checkpointing"] is True and info["weight_dtype"] == "bf16"
    pin = results / "inputs" / "models" / "meta-llama--Llama-2-7b-hf.json"
    tokenizer = Path(json.loads(pin.read_text())["path"])
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        assert (model / name).read_bytes() == (tokenizer / name).read_bytes(), name


def check_metric_rows(results: Path, commits: dict, run: str) -> None:
    """Every metrics row: the model, tokenizer, target, retrain and benchmark revisions, the
    code's git commit and the package versions."""
    files = sorted((results / "metrics" / "news").rglob("*.parquet"))
    assert len(files) == 4 * 3  # target, retrain, NPO_GDR, the external x 3 quantizers
    rows = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    assert (rows["tokenizer_commit"] == commits["meta-llama/Llama-2-7b-hf"]).all()
    assert (rows["target_commit"] == commits["muse-bench/MUSE-News_target"]).all()
    assert (rows["retrain_commit"] == commits["muse-bench/MUSE-News_retrain"]).all()
    assert (rows["benchmark_commit"] == commits["muse-bench/MUSE-News"]).all()
    assert (rows["benchmark_source"] == "muse-bench/MUSE-News").all()
    by_run = rows.groupby("run")["model_commit"].first()
    assert by_run["method~target"] == commits["muse-bench/MUSE-News_target"]
    assert by_run["method~external/checkpoint~npo"] == commits["example-org/NPO-MUSE-News-micro"]
    assert pd.isna(by_run[run])  # this workflow's own model: a local folder, no commit
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert (rows["git_commit"] == head).all() and rows["git_dirty"].notna().all()
    versions = json.loads(rows["versions"].iloc[0])
    for package in ("torch", "transformers", "sentencepiece", "datasets", "huggingface_hub"):
        assert versions[package], package
    inputs = json.loads(rows["inputs"].iloc[0])
    assert set(inputs) >= {"model", "tokenizer", "target", "retrain", "benchmark"}


def check_privleak_recomputes(results: Path) -> None:
    """PrivLeak of every cell from its records alone, with scikit-learn's roc_auc_score."""
    for path in sorted((results / "records" / "news").rglob("*.parquet")):
        records = pd.read_parquet(path)
        own = records[records["metric"] == "mink_auc"]
        ref = records[records["metric"] == "mink_auc_retrain"]
        assert len(own) == len(ref) == 2 * N_ITEMS
        auc = roc_auc_score(own["split"] == "holdout", own["score"])
        auc_retrain = roc_auc_score(ref["split"] == "holdout", ref["score"])
        metrics = pd.read_parquet(results / "metrics" / path.relative_to(results / "records"))
        value = metrics.set_index("metric")["value"]
        assert value["mink_auc"] == pytest.approx(auc, abs=1e-12)
        assert value["privleak"] == pytest.approx((auc - auc_retrain) / auc_retrain * 100, abs=1e-9)


def check_tables(results: Path) -> None:
    table = pd.read_parquet(results / "tables" / "table1.parquet")
    assert len(table) == 4 * 3
    measured = ["verbmem_f", "knowmem_f", "privleak", "knowmem_r", "mmlu_rwku"]
    assert table[measured].notna().all().all()
    text = (results / "tables" / "table1.md").read_text()
    assert "npo (external)" in text and "npo (external) + bnb_nf4" in text
    provenance = (results / "tables" / "provenance.md").read_text()
    assert "muse-bench/MUSE-News_target" in provenance


def check_audit(results: Path) -> None:
    summary = pd.read_parquet(results / "tables" / "audit.parquet")
    assert set(summary["checkpoint"]) == {"npo"}
    judged = summary[summary["quant"] != "none"]
    assert set(judged["verdict"]) <= set(VERDICTS) and list(judged["quant"]) == [
        "rtn_w4",
        "bnb_nf4",
    ]
    assert judged["overlap_pct"].between(0, 100).all()  # the weight diagnostics reached it
    report = (results / "tables" / "audit_news_npo.md").read_text()
    assert "example-org/NPO-MUSE-News-micro@main" in report
    assert f"- knowmem_f: {N_ITEMS} questions on the forget set" in report
    assert f"- mink_auc: {2 * N_ITEMS} forget and holdout texts" in report
    assert "## Bucket overlap with the target" in report and "| rtn_w4 |" in report
