"""Time the MUSE metrics three ways, interleaved in one process, and check identical outputs.

    python benchmarks/eval_speed.py [--workloads tiny,100m] [--threads 1] [--repeats 2]
        [--tiny-model results/models/synthetic/target] [--muse-news DIR] [--json FILE]

Per metric (VerbMem on the forget prompts, KnowMem on forget + retain, PrivLeak's Min-K% on
forget + holdout), three implementations:

  batch1   a loop written from the MUSE protocol (Shi et al., "MUSE: Machine Unlearning Six-Way
           Evaluation for Language Models", 2024): one prompt at a time, greedy ``generate`` for
           the whole budget, the KnowMem answer cut at the stop strings afterwards; Min-K% one
           text per forward;
  current  the evaluation before issue 16: ``generate`` on left-padded batches of whole prompts
           (``batch_invariant=False``, the path LLM.int8 still takes);
  new      the evaluation now (quantunlearn.evaluation.generation: the shared prefix computed
           once, batches by suffix length, rows leaving when done, an in-place KV cache).

Min-K% did not change (one forward per batch is all it is): its "current" and "new" are the
same call, timed once per repeat. Each metric runs the implementations ``--repeats`` times in
rotating order and keeps the fastest wall and process-CPU time of each; the outputs (strings,
Min-K% scores) must be identical across all three, else the script says where and exits 1.

Workloads:
  tiny       the default study's target (hidden 256, MLP 768, 2 layers, vocab 2048) on its
             synthetic benchmark (12 VerbMem, 96 + 96 KnowMem, 12 + 12 PrivLeak), the full
             protocol (128 / 32 new tokens), batch 64: the trained target of a finished study
             (--tiny-model), else one trained here for 8 epochs (about a minute)
  100m       a random Llama of 106M parameters (hidden 768, MLP 2048, 8 layers, vocab 32000) on
             the same prompts, short generations (VerbMem 32, KnowMem 8 new tokens), batch 16
  100m-news  the same model on the MUSE NEWS evaluation files (--muse-news: a folder in the
             MUSE layout, quantunlearn.data.muse): the first 32 questions of each KnowMem split,
             8 VerbMem prompts (~880 tokens), 8 + 8 PrivLeak texts cut to 512 tokens
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the progress bars of the metrics, before tqdm loads

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import machine, padded_tokenizer  # noqa: E402

from quantunlearn.data.calibration import general_corpus  # noqa: E402
from quantunlearn.data.documents import read_documents, tokenize_documents  # noqa: E402
from quantunlearn.data.muse import load_benchmark  # noqa: E402
from quantunlearn.data.synthetic import generate_synthetic  # noqa: E402
from quantunlearn.evaluation.generation import _greedy_generate_hf, cut_at_stop  # noqa: E402
from quantunlearn.evaluation.muse_metrics import (  # noqa: E402
    KNOWMEM_STOP,
    knowmem,
    knowmem_prompt,
    min_k_scores,
    rouge_l_f1,
    truncate_tokens,
    verbmem,
)
from quantunlearn.models.loading import load_model, load_tokenizer  # noqa: E402
from quantunlearn.models.tiny import build_llama, train_tokenizer  # noqa: E402
from quantunlearn.models.training import LMRecipe, train_lm  # noqa: E402

IMPLS = ("batch1", "current", "new")
# config/config.yaml's benchmark
SYNTHETIC = dict(n_people=120, n_bio_variants=2, n_retain_qa_people=12, n_icl=10, seed=0)


# ------------------------------------------------------------------- the MUSE-protocol loop
def muse_generate(model, tok, prompt: str, max_new_tokens: int) -> str:
    """One prompt, batch 1: ``generate`` greedy for the whole budget (the reference path of
    quantunlearn.evaluation.generation with one prompt per call: no padding, nothing shared)."""
    return _greedy_generate_hf(model, tok, [prompt], max_new_tokens, batch_size=1)[0]


def verbmem_batch1(model, tok, items, max_new_tokens):
    outputs = [muse_generate(model, tok, it["prompt"], max_new_tokens) for it in items]
    refs = [truncate_tokens(tok, it["gt"], max_new_tokens) for it in items]
    [rouge_l_f1(o, r) for o, r in zip(outputs, refs, strict=True)]  # the scoring, timed too
    return outputs


def knowmem_batch1(model, tok, qa, icl, max_new_tokens):
    outputs = []
    for item in qa:  # MUSE generates the whole budget, then cuts at the first stop string
        text = muse_generate(model, tok, knowmem_prompt(icl, item["question"]), max_new_tokens)
        outputs.append(cut_at_stop(text, KNOWMEM_STOP).strip())
    [rouge_l_f1(o, it["answer"]) for o, it in zip(outputs, qa, strict=True)]
    return outputs


def min_k_batch1(model, tok, texts, k, max_length):
    scores = []
    with torch.inference_mode():
        for text in texts:
            ids = tok(text, truncation=True, max_length=max_length, return_tensors="pt")
            ids = ids["input_ids"].to(model.device)
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            token_lp = log_probs.gather(-1, ids[0, 1:, None]).squeeze(-1).double().cpu().numpy()
            scores.append(float(np.sort(token_lp)[: max(1, int(len(token_lp) * k))].mean()))
    return np.asarray(scores)


# ------------------------------------------------------------------------------ workloads
def tiny_model(bench_dir: Path, model_path: str | None):
    if model_path and Path(model_path, "config.json").is_file():
        return load_model(model_path, "fp32"), load_tokenizer(model_path), f"target {model_path}"
    docs = {s: read_documents(bench_dir / "raw" / f"{s}.txt") for s in ("forget", "retain")}
    holdout = read_documents(bench_dir / "raw" / "holdout.txt")
    tok = train_tokenizer(docs["forget"] + docs["retain"] + holdout, 2048)
    model = build_llama(tok, 256, 768, 2, 4)
    train = tokenize_documents(docs["forget"] + docs["retain"], tok)
    recipe = LMRecipe(
        max_len=256, epochs=8, lr=2e-3, batch_size=8, warmup_steps=50, weight_decay=0.01, seed=0
    )
    train_lm(model, train, tok.pad_token_id, recipe, desc="train tiny")
    return model.eval(), tok, "tiny Llama trained here for 8 epochs"


def model_100m(docs: list[str]):
    tok = padded_tokenizer(docs + general_corpus(2000), 32000)  # Llama-2's vocabulary size
    model = build_llama(tok, 768, 2048, 8, 12).eval()
    n = sum(p.numel() for p in model.parameters())
    return model, tok, f"random Llama {n / 1e6:.0f}M (768/2048/8 layers, vocab {len(tok)})"


def workloads(names: list[str], root: Path, args) -> list[dict]:
    synthetic = root / "synthetic"
    generate_synthetic(synthetic, **SYNTHETIC)
    bench = load_benchmark(synthetic)
    out = []
    if "tiny" in names:
        model, tok, what = tiny_model(synthetic, args.tiny_model)
        out.append(
            dict(
                name="tiny",
                model=model,
                tok=tok,
                what=what,
                bench=bench,
                verbmem_new=128,
                knowmem_new=32,
                max_length=2048,
                batch_size=64,
            )
        )
    if not any(n.startswith("100m") for n in names):
        return out
    news = Path(args.muse_news) if args.muse_news else None
    docs = read_documents(news / "raw" / "forget.txt") if news else bench_text(synthetic)
    model, tok, what = model_100m(docs)
    common = dict(model=model, tok=tok, what=what, verbmem_new=32, knowmem_new=8, batch_size=16)
    if "100m" in names:
        out.append(dict(name="100m", bench=bench, max_length=2048, **common))
    if "100m-news" in names:
        if news is None:
            print("100m-news skipped: no --muse-news folder given")
        else:
            out.append(dict(name="100m-news", bench=news_subset(news), max_length=512, **common))
    return out


def bench_text(folder: Path) -> list[str]:
    return [
        d
        for s in ("forget", "retain", "holdout")
        for d in read_documents(folder / "raw" / f"{s}.txt")
    ]


def news_subset(folder: Path, qa: int = 32, verb: int = 8, priv: int = 8):
    b = load_benchmark(folder)
    b.knowmem_forget_qa, b.knowmem_retain_qa = b.knowmem_forget_qa[:qa], b.knowmem_retain_qa[:qa]
    b.verbmem_forget = b.verbmem_forget[:verb]
    b.privleak_forget, b.privleak_holdout = b.privleak_forget[:priv], b.privleak_holdout[:priv]
    return b


# ------------------------------------------------------------------------------- the runs
def metric_calls(w: dict) -> dict:
    """metric -> {implementation: () -> comparable outputs}."""
    m, tok, b, bs = w["model"], w["tok"], w["bench"], w["batch_size"]
    texts = b.privleak_forget + b.privleak_holdout
    splits = [
        (b.knowmem_forget_qa, b.knowmem_forget_icl),
        (b.knowmem_retain_qa, b.knowmem_retain_icl),
    ]
    verb_new, know_new = w["verbmem_new"], w["knowmem_new"]

    def outs(result):
        return [r["output"] for r in result[1]]

    def verb(invariant):
        return lambda: outs(
            verbmem(m, tok, b.verbmem_forget, verb_new, bs, batch_invariant=invariant)
        )

    def know(invariant):
        return lambda: [
            o
            for qa, icl in splits
            for o in outs(knowmem(m, tok, qa, icl, know_new, bs, batch_invariant=invariant))
        ]

    def mink():
        return min_k_scores(m, tok, texts, 0.4, w["max_length"], bs)

    return {
        "VerbMem": {
            "batch1": lambda: verbmem_batch1(m, tok, b.verbmem_forget, verb_new),
            "current": verb(False),
            "new": verb(True),
        },
        "KnowMem": {
            "batch1": lambda: [
                o for qa, icl in splits for o in knowmem_batch1(m, tok, qa, icl, know_new)
            ],
            "current": know(False),
            "new": know(True),
        },
        "PrivLeak": {
            "batch1": lambda: min_k_batch1(m, tok, texts, 0.4, w["max_length"]),
            "current": mink,
            "new": None,
        },
    }


def compare(metric: str, results: dict) -> str | None:
    ref = results["current"]
    for impl, value in results.items():
        if metric == "PrivLeak":
            diff = float(np.max(np.abs(np.asarray(value) - np.asarray(ref))))
            if diff > 1e-5:
                return f"{metric}: {impl} Min-K% scores differ from current by {diff:.2e}"
        elif value != ref:
            bad = [i for i, (a, c) in enumerate(zip(value, ref, strict=True)) if a != c]
            return (
                f"{metric}: {impl} differs at items {bad[:5]}: {value[bad[0]]!r} vs {ref[bad[0]]!r}"
            )
    return None


def time_metric(fns: dict, repeats: int) -> tuple[dict, dict, dict]:
    """Fastest wall and CPU seconds of each implementation over `repeats` rotated rounds."""
    wall, cpu, results = {i: [] for i in IMPLS}, {i: [] for i in IMPLS}, {}
    for r in range(repeats):
        for impl in IMPLS[r % 3 :] + IMPLS[: r % 3]:
            if fns[impl] is None:  # unchanged: the same call as "current"
                continue
            start, start_cpu = time.perf_counter(), time.process_time()
            results[impl] = fns[impl]()
            wall[impl].append(time.perf_counter() - start)
            cpu[impl].append(time.process_time() - start_cpu)
    for impl in IMPLS:
        if fns[impl] is None:
            wall[impl], cpu[impl], results[impl] = (
                wall["current"],
                cpu["current"],
                results["current"],
            )
    return {i: min(wall[i]) for i in IMPLS}, {i: min(cpu[i]) for i in IMPLS}, results


def run(w: dict, threads: int, repeats: int) -> tuple[list[dict], list[str]]:
    torch.set_num_threads(threads)
    with torch.inference_mode():  # warm-up: allocator, one-time kernels
        w["model"](input_ids=torch.tensor([[w["tok"].bos_token_id] * 4]))
    rows, problems = [], []
    for metric, fns in metric_calls(w).items():
        wall, cpu, results = time_metric(fns, repeats)
        problem = compare(metric, results)
        if problem:
            problems.append(f"{w['name']} threads={threads} {problem}")
        row = {
            "workload": w["name"],
            "threads": threads,
            "metric": metric,
            "identical": problem is None,
            "load": os.getloadavg()[0],
        }
        row |= {f"{i}_wall": wall[i] for i in IMPLS} | {f"{i}_cpu": cpu[i] for i in IMPLS}
        rows.append(row)
        report(row)
    total = {**rows[0], "metric": "overall", "identical": not problems, "load": os.getloadavg()[0]}
    for key in total:
        if key.endswith(("_wall", "_cpu")):
            total[key] = sum(r[key] for r in rows)
    rows.append(total)
    report(total)
    return rows, problems


def report(row: dict) -> None:
    b, c, n = (row[f"{i}_wall"] for i in IMPLS)
    bc, cc, nc = (row[f"{i}_cpu"] for i in IMPLS)
    print(
        f"  {row['workload']:9s} t={row['threads']} {row['metric']:8s} wall: batch1 {b:7.2f}s "
        f"current {c:7.2f}s new {n:7.2f}s | batch1/new {b / n:5.1f}x current/new {c / n:4.1f}x "
        f"batch1/current {b / c:4.1f}x | cpu: batch1/new {bc / nc:5.1f}x current/new "
        f"{cc / nc:4.1f}x | identical {row['identical']} load {row['load']:.1f}",
        flush=True,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workloads", default="tiny,100m")
    ap.add_argument("--threads", default="1", help="comma-separated torch thread counts")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tiny-model", default="results/models/synthetic/target")
    ap.add_argument("--muse-news", help="a MUSE NEWS folder (MUSE layout) for 100m-news")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    print(f"machine: {machine()}; torch {torch.__version__}", flush=True)
    rows, problems = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for w in workloads(args.workloads.split(","), Path(tmp), args):
            print(f"{w['name']}: {w['what']}", flush=True)
            for threads in [int(t) for t in args.threads.split(",")]:
                new_rows, new_problems = run(w, threads, args.repeats)
                rows, problems = rows + new_rows, problems + new_problems
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    for p in problems:
        print("NOT IDENTICAL:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
