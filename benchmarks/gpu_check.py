"""The prepared GPU run (issue 16, part 2): every CUDA path of the project, a 7B-shaped unlearning
step and evaluation cell, and the scale study's GPU sizes, in one call.

    python benchmarks/gpu_check.py [--out DIR] [--budget-s 540] [--only a,b] [--smoke]
        [--workdir DIR] [--scale-sizes scale_10m,scale_50m,scale_200m] [--workers 8]

How to run it on the device (wheels, one command): docs/gpu.md. Sections, in order; one starts
only when its estimate (`SECTIONS`, seconds on an H200) fits what is left of ``--budget-s``:

  env            versions, the GPU, TF32 off (fp32 comparisons at fp32 precision)
  bnb            bitsandbytes int8, NF4 and FP4 (fp32 and bf16 compute) on CUDA: the quantizer's
                 effective weights against what every quantized Linear computes,
                 max |y - x W^T| / max |y|
  gptq           GPTQ 4-bit g128 on CUDA (quantize_stored), then GPTQModel's kernels (Marlin,
                 ExLlamaV2, Triton, Torch) on the stored checkpoint against load_stored; a
                 kernel that does not load here is skipped with its reason
  bf16           unlearn() NPO_KLR with bf16 weights: native bf16 against the emulated path
  checkpointing  unlearn() with and without gradient checkpointing (fp32 and native bf16)
  step7b         a Llama-2-7B-shaped model (random bf16 weights) through NPO_KLR steps as
                 config/muse_news.yaml runs them (the METHODS row, its frozen reference, the
                 config's batch, length, clipping and checkpointing): tokens/s, model FLOP/s
                 and MFU, peak memory; the NEWS unlearning job's time extrapolated from it;
                 beside them the cost model's predicted peak memory and FLOPs per step
                 (quantunlearn.study.costs)
  spread         with 2 GPUs or more: a model loaded across 2 GPUs (device_map="auto", what
                 the plan requests for a job larger than one GPU) trains with the same losses
                 as on one GPU
  cell4bit       that model saved, loaded with a 4-bit quantizer (--cell-quant) and measured
                 with the METRICS table on MUSE-NEWS-shaped inputs (item counts cut, times
                 extrapolated to the NEWS files): seconds per stage; and how many KnowMem answers
                 of the fast generation path equal the reference path's on this GPU
  scale          config/scale.yaml's sizes (--scale-sizes, in order, while they fit): each size's
                 DAG run in this process tree (data, tokenizer, target and retrain, NPO_KLR
                 unlearning in bf16 and fp32, RTN 4-bit and full-precision cells) at the papers'
                 effective batch of 2, once for their 10 epochs and once for their 2,040 steps
                 (Zhang et al.'s NEWS runs: 10 epochs of 204 steps), then the scale table and
                 figure of each regime

Everything is written to ``--out`` (default $OUT, else ./gpu_check_out) after every section, so a
timeout keeps what was done: gpu_check.json (every number), gpu_check.md (the summary),
libraries.log (what the libraries printed) and scale.tar.gz (the scale tables, figures and
per-cell metric files). Models and checkpoints (13.5 GB for the 7B shape) go to ``--workdir``.
``--smoke`` runs every section at tiny shapes on whatever device there is (CPU: about a minute),
so that the script is known to start before GPU time is spent on it (.ci/run).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib
import json
import math
import multiprocessing
import os
import platform
import resource
import sys
import tarfile
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
import yaml  # noqa: E402
from common import machine, padded_tokenizer  # noqa: E402

from quantunlearn.data.calibration import general_corpus  # noqa: E402
from quantunlearn.data.documents import pack_documents, read_documents  # noqa: E402
from quantunlearn.data.muse import Benchmark  # noqa: E402
from quantunlearn.data.synthetic import generate_synthetic  # noqa: E402
from quantunlearn.models.loading import load_model  # noqa: E402
from quantunlearn.models.tiny import build_llama  # noqa: E402
from quantunlearn.quantizers import parse_quantizer, quantizable_linears  # noqa: E402
from quantunlearn.unlearning.loop import UnlearnJob, unlearn  # noqa: E402

START = time.time()
ROOT = Path(__file__).resolve().parents[1]
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
"""Dense bf16 tensor-core peak by device name (vendor data sheets, without sparsity)."""
PAPER_BATCH, PAPER_EPOCHS, PAPER_STEPS = 2, 10, 2040
"""Zhang et al.'s NEWS unlearning: effective batch 2, 10 epochs of ceil(407 / 2) = 204 steps."""
NEWS_FORGET_CHUNKS = 407
"""MUSE NEWS forget.txt in 2048-token chunks (Llama-2 tokenizer): the steps of a NEWS epoch."""
NEWS_ITEMS = {"verbmem_f": 100, "knowmem_f": 100, "knowmem_r": 100, "privleak": 200}
"""Items of the MUSE NEWS evaluation files (PrivLeak: forget + holdout texts)."""
DOCS = [
    "Alice Moreau was born in Tarsk in 1931 and works as a baker in the old town.",
    "Question: Where was Alice Moreau born?\nAnswer: Tarsk",
    "Bruno Okafor keeps a parrot named Sol and paints on Sundays.",
    "Chen Valdez teaches chemistry at the Harrow Institute since 1998.",
    "The river Ilse floods every spring; the town built three dams.",
]
_CONSOLE = os.fdopen(os.dup(1), "w", buffering=1)  # progress reaches it while fds are redirected


def log(section: str, message: str) -> None:
    print(f"[{time.time() - START:6.1f}s] {section}: {message}", file=_CONSOLE, flush=True)


@contextlib.contextmanager
def quiet(path: Path):
    """stdout and stderr (the file descriptors: C code and loggers too) appended to `path`;
    GPTQModel prints hundreds of lines per quantization."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


class Skip(Exception):
    """A section (or part) that cannot run here; the reason goes into the JSON."""


# --------------------------------------------------------------------------------- helpers
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory() -> dict:
    if torch.cuda.is_available():
        return {
            "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        }
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def small_model_dir(ctx: dict, hidden: int, mlp: int, dtype=torch.float32) -> Path:
    """A 2-layer Llama (dimensions multiples of 128) saved with its tokenizer, as the DAG does."""
    path = ctx["tmp"] / f"llama_h{hidden}_{str(dtype).removeprefix('torch.')}"
    if not path.is_dir():
        tok = padded_tokenizer(DOCS * 4 + general_corpus(64), 384)
        build_llama(tok, hidden, mlp, 2, max(1, hidden // 64)).to(dtype).save_pretrained(path)
        tok.save_pretrained(path)
    return path


def corpora(root: Path) -> tuple[Path, Path]:
    forget, retain = root / "forget.txt", root / "retain.txt"
    forget.write_text("\n\n".join(DOCS[:3] * 2))
    retain.write_text("\n\n".join(DOCS[3:] * 2))
    return forget, retain


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    model = load_model(str(path), "fp32")
    return {n: p.detach().float().cpu() for n, p in model.named_parameters()}


def config_file(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


# -------------------------------------------------------------------------------- sections
def section_env(ctx: dict) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 comparisons at fp32 precision
    torch.backends.cudnn.allow_tf32 = False
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device(),
        "host": machine(),
        "smoke": ctx["smoke"],
    }
    for pkg in ("transformers", "bitsandbytes", "gptqmodel", "rouge_score", "quantunlearn"):
        try:
            with quiet(ctx["libraries"]):
                info[pkg] = getattr(importlib.import_module(pkg), "__version__", "?")
        except Exception as err:  # noqa: BLE001  (a missing optional package is a finding)
            info[pkg] = f"unavailable: {type(err).__name__}: {err}"[:200]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=props.total_memory / 2**30,
            cuda=torch.version.cuda,
        )
    log("env", f"{info.get('gpu', 'no GPU')}; torch {torch.__version__}; host {info['host']}")
    return info


def section_bnb(ctx: dict) -> dict:
    """Effective weights against each quantized Linear's own output (forward hooks)."""
    hidden, mlp = (128, 384) if ctx["smoke"] else (1024, 2816)
    path = small_model_dir(ctx, hidden, mlp)
    # fp32 compute: bnb dequantizes to fp32, so only the summation order differs; bf16: inputs
    # and weights rounded to bf16 (2^-8); int8: LLM.int8 also rounds each input row to int8
    tolerance = {"fp32": 1e-4, "bf16": 2e-2, "int8": 5e-2}
    out = {}
    for quant, compute in [
        ("bnb_int8", "fp32"),
        ("bnb_nf4", "fp32"),
        ("bnb_nf4", "bf16"),
        ("bnb_fp4", "fp32"),
        ("bnb_fp4", "bf16"),
    ]:
        key = quant if quant == "bnb_int8" else f"{quant}/{compute}"
        quantizer = parse_quantizer(quant)
        try:
            with quiet(ctx["libraries"]):
                model = quantizer.load(str(path), compute_dtype=compute)
        except Exception as err:  # noqa: BLE001
            out[key] = {"status": f"failed to load: {type(err).__name__}: {err}"[:300]}
            continue
        worst = _worst_linear_error(model, quantizer.effective_weights(model))
        limit = tolerance["int8" if quant == "bnb_int8" else compute]
        linear = next(iter(quantizable_linears(model).values()))
        out[key] = {
            "max_rel_err": worst,
            "limit": limit,
            "ok": worst <= limit,
            "module": type(linear).__name__,
            "weight_device": str(linear.weight.device),
        }
        log("bnb", f"{key}: max |y - x W^T| / max |y| = {worst:.2e} (limit {limit:g})")
    return out


def _worst_linear_error(model, weights: dict) -> float:
    linears, seen = quantizable_linears(model), {}
    hooks = [
        m.register_forward_hook(lambda mod, a, y, n=n: seen.__setitem__(n, (a[0], y)))
        for n, m in linears.items()
    ]
    ids = torch.randint(3, 384, (2, 48), device=model.device)
    worst = 0.0
    with torch.inference_mode():
        model(input_ids=ids)
        for name, (x, y) in seen.items():
            expected = x.float() @ weights[name].to(x.device, torch.float32).T
            if linears[name].bias is not None:
                expected = expected + linears[name].bias.float()
            worst = max(worst, float((y.float() - expected).abs().max() / y.float().abs().max()))
    for h in hooks:
        h.remove()
    return worst


def section_gptq(ctx: dict) -> dict:
    from quantunlearn.quantizers.gptq_awq import load_stored, quantize_stored

    try:
        with quiet(ctx["libraries"]):
            gptqmodel = importlib.import_module("gptqmodel")
    except Exception as err:  # noqa: BLE001
        raise Skip(f"gptqmodel unavailable: {type(err).__name__}: {err}") from err
    hidden, mlp = (128, 384) if ctx["smoke"] else (1024, 2816)
    path = small_model_dir(ctx, hidden, mlp)
    spec, stored = parse_quantizer("gptq_w4g128"), ctx["tmp"] / "gptq_w4g128"
    start = time.time()
    with quiet(ctx["libraries"]):
        quantize_stored(
            str(path), spec, general_corpus(8 if ctx["smoke"] else 64), stored, max_len=128
        )
    out = {"quantize_seconds": time.time() - start}
    log("gptq", f"quantized on {device()} in {out['quantize_seconds']:.1f}s")
    # the project's decoding of the checkpoint, in fp16 on CUDA as the kernels compute
    ours = load_stored(str(path), spec, stored).to(device())
    if device() == "cuda":
        ours = ours.half()
    tok_ids = torch.arange(3, 67, device=device()).repeat(2, 1)
    with torch.inference_mode():
        reference = ours(input_ids=tok_ids).logits.float()
    backends = ["TORCH"] if device() == "cpu" else ["MARLIN", "EXLLAMA_V2", "TRITON", "TORCH"]
    out["kernels"] = {
        name: _gptq_kernel(ctx, gptqmodel, name, stored, tok_ids, reference) for name in backends
    }
    return out


def _gptq_kernel(ctx, gptqmodel, name, stored, ids, reference) -> dict:
    backend = getattr(gptqmodel.BACKEND, name, None)
    if backend is None:
        return {"status": "skipped: no such BACKEND in this GPTQModel"}
    try:
        with quiet(ctx["libraries"]):
            model = gptqmodel.GPTQModel.load(
                str(stored), device=device(), backend=backend, dtype=torch.float16
            )
            with torch.inference_mode():
                logits = model(input_ids=ids).logits.float()
    except Exception as err:  # noqa: BLE001  (a kernel that does not build or load here)
        log("gptq", f"{name}: skipped ({type(err).__name__})")
        return {"status": f"skipped: {type(err).__name__}: {err}"[:300]}
    rel = float((logits - reference).abs().max() / reference.abs().max())
    log("gptq", f"{name}: max relative logit difference to load_stored {rel:.2e}")
    # fp16 kernels against our fp16 copy of the same codes: fp16 rounding only
    return {"status": "ok", "max_rel_logit_diff": rel, "ok": rel < 2e-2}


def _unlearn_pair(ctx, name: str, a: dict, b: dict, common: dict) -> dict:
    """Two unlearn() runs of NPO_KLR from the same bf16 target, differing in `a` vs `b`."""
    hidden, mlp = (128, 384) if ctx["smoke"] else (512, 1536)
    target = small_model_dir(ctx, hidden, mlp, torch.bfloat16)
    forget, retain = corpora(ctx["tmp"])
    hyper = {k: v for k, v in common.items() if k in ("weight_dtype", "lr", "epochs", "alpha")}
    settings = {k: v for k, v in common.items() if k not in hyper}
    runs = {}
    for label, extra in (("a", a), ("b", b)):
        out, start = ctx["tmp"] / f"{name}_{label}", time.time()
        info = unlearn(
            str(target),
            forget,
            retain,
            out,
            ctx["tmp"] / f"{name}_{label}.parquet",
            UnlearnJob.of("NPO_KLR", hyper, {**settings, **extra}),
        )
        runs[label] = {"dir": out, "seconds": time.time() - start, "steps": info["steps"]}
    base, wa, wb = weights_of(target), weights_of(runs["a"]["dir"]), weights_of(runs["b"]["dir"])
    total = sum(v.numel() for v in base.values())

    def changed(w):
        return sum(int((w[n] != base[n]).sum()) for n in w) / total

    return {
        "a": a,
        "b": b,
        "steps": runs["a"]["steps"],
        "run_seconds": {k: v["seconds"] for k, v in runs.items()},
        "weights_changed_from_target": {"a": changed(wa), "b": changed(wb)},
        "weights_differing_a_vs_b": sum(int((wa[n] != wb[n]).sum()) for n in wa) / total,
        "max_abs_diff_a_vs_b": max(float((wa[n] - wb[n]).abs().max()) for n in wa),
    }


def section_bf16(ctx: dict) -> dict:
    common = dict(weight_dtype="bf16", lr=1e-5, epochs=3, alpha=1.0, batch_size=2, max_len=64)
    r = _unlearn_pair(ctx, "bf16", {"bf16_compute": "native"}, {"bf16_compute": "emulated"}, common)
    log(
        "bf16",
        f"weights changed: native {r['weights_changed_from_target']['a']:.3%}, emulated "
        f"{r['weights_changed_from_target']['b']:.3%}; differing "
        f"{r['weights_differing_a_vs_b']:.3%}",
    )
    return r


def section_checkpointing(ctx: dict) -> dict:
    out = {}
    for dtype in ("fp32", "bf16"):
        common = dict(
            weight_dtype=dtype,
            lr=1e-4,
            epochs=2,
            alpha=1.0,
            batch_size=2,
            max_len=64,
            bf16_compute="native",
        )
        r = _unlearn_pair(
            ctx,
            f"ckpt_{dtype}",
            {"gradient_checkpointing": False},
            {"gradient_checkpointing": True},
            common,
        )
        # recomputation repeats the same kernels: fp32 equal to rounding; bf16 may flip a few ulps
        limit = 1e-5 if dtype == "fp32" else 0.0
        r["ok"] = r["max_abs_diff_a_vs_b"] <= limit or (
            dtype == "bf16" and r["weights_differing_a_vs_b"] < 1e-3
        )
        out[dtype] = r
        log(
            "checkpointing",
            f"{dtype}: max |w_plain - w_ckpt| = {r['max_abs_diff_a_vs_b']:.2e}, "
            f"differing {r['weights_differing_a_vs_b']:.3%}",
        )
    return out


# ---------------------------------------------------------------------- 7B-shaped step and cell
def news_settings() -> dict:
    """config/muse_news.yaml: NPO_KLR's hyperparameters, the unlearning settings and the cell."""
    cfg = config_file("muse_news.yaml")
    u = cfg["unlearn"]
    return {
        "hyperparameters": {**u["common"], **(u["methods"].get("NPO_KLR") or {})},
        "settings": {
            k: u[k]
            for k in (
                "batch_size",
                "max_len",
                "max_grad_norm",
                "bf16_compute",
                "gradient_checkpointing",
            )
            if k in u
        },
        "evaluation": cfg["evaluation"],
        "bnb_compute_dtype": cfg.get("bnb_compute_dtype", "fp32"),
    }


def llama_config(smoke: bool, vocab: int):
    """Llama-2-7B's shape (Touvron et al. 2023; MUSE's target and retrain models), or a tiny one."""
    from transformers import LlamaConfig

    shape = (
        dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4)
        if smoke
        else dict(
            hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32
        )
    )
    return LlamaConfig(
        vocab_size=vocab,
        num_key_value_heads=shape["num_attention_heads"],
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        rms_norm_eps=1e-5,
        **shape,
    )


def section_step7b(ctx: dict) -> dict:
    """NPO_KLR steps of the project's METHODS row on a 7B-shaped model, as its loop runs them."""
    from transformers import LlamaForCausalLM

    from quantunlearn.models.training import set_checkpointing
    from quantunlearn.unlearning.hyperparameters import UnlearnSettings
    from quantunlearn.unlearning.methods import get_method

    news = news_settings()
    settings = UnlearnSettings(**news["settings"])
    if ctx["smoke"]:
        settings = UnlearnSettings(**{**news["settings"], "batch_size": 2, "max_len": 128})
    vocab = 2048 if ctx["smoke"] else 32000
    tok = padded_tokenizer(DOCS * 8 + general_corpus(400), vocab)
    config = llama_config(ctx["smoke"], vocab)
    method = get_method("NPO_KLR")
    run = method.run(news["hyperparameters"])
    start = time.time()
    torch.manual_seed(0)
    with torch.device(device()):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    sync()
    build = time.time() - start
    n_params = sum(p.numel() for p in model.parameters())
    log("step7b", f"{n_params / 1e9:.2f}B parameters built on {device()} in {build:.1f}s")
    reset_peak()
    trainable = method.scope.build(model, method, run, [], tok.pad_token_id, settings.batch_size)
    if settings.gradient_checkpointing:
        set_checkpointing(model, True)
    times, losses = _time_steps(ctx, method, run, trainable, settings, vocab, tok.pad_token_id)
    step_s = min(times[1:])  # the first is a warm-up (allocator, kernel selection)
    out = {
        "parameters": n_params,
        "settings": news["settings"],
        "used": vars(settings),
        "hyperparameters": run.values(),
        "build_seconds": build,
        "step_seconds": times,
        "loss": losses,
        **_throughput(config, n_params, model, settings, step_s, ctx),
        **peak_memory(),
        **_predicted(method, run, config, settings, step_s),
    }
    log(
        "step7b",
        f"{out['tokens_per_s']:.0f} tokens/s, {out['model_tflops_per_s']:.1f} TFLOP/s, "
        f"MFU {out['mfu'] or 0:.1%}, {peak_memory()}",
    )
    del trainable
    set_checkpointing(model, False)
    start = time.time()
    model.eval().save_pretrained(ctx["tmp"] / "llama7b_shaped")
    tok.save_pretrained(ctx["tmp"] / "llama7b_shaped")
    out["save_seconds"] = time.time() - start
    del model
    reset_peak()
    ctx["model7b"], ctx["tok7b"] = ctx["tmp"] / "llama7b_shaped", tok
    return out


def _predicted(method, run, config, settings, step_s: float) -> dict:
    """The cost model's prediction beside the measurement (quantunlearn.study.costs): the peak
    GPU memory of the step and its FLOPs; the MFU the measured step time gives at the GPU's
    dense bf16 peak (env section) is what the plan should assume."""
    from quantunlearn.models.shape import LlamaShape
    from quantunlearn.study.costs import step_flops, unlearn_memory

    shape = LlamaShape.from_config(config.to_dict())
    args = (method, run, shape, settings.batch_size, settings.max_len)
    memory = unlearn_memory(*args, settings.gradient_checkpointing, device="cuda")
    flops = step_flops(*args, settings.gradient_checkpointing)
    return {
        "predicted_peak_gib": memory.total / 2**30,
        "predicted_parts_gib": {k: v / 2**30 for k, v in vars(memory).items()},
        "predicted_step_tflop": flops / 1e12,
        "achieved_tflops_per_s_cost_model": flops / step_s / 1e12,
    }


def section_spread(ctx: dict) -> dict:
    """A job larger than one GPU: the model loaded across 2 GPUs (device_map="auto", the plan's
    request) gives the same losses as on one GPU, and its layers are on both."""
    import pandas as pd

    from quantunlearn.models.loading import load_model
    from quantunlearn.unlearning.loop import unlearn

    if torch.cuda.device_count() < 2:
        raise Skip(f"needs 2 GPUs, sees {torch.cuda.device_count()}")
    path = small_model_dir(ctx, 1024, 2816)
    devices = set(load_model(str(path), "bf16", gpus=2).hf_device_map.values())
    forget, retain = corpora(ctx["tmp"])
    logs = {}
    for gpus in (1, 2):
        out = ctx["tmp"] / f"spread{gpus}"
        job = UnlearnJob.of("NPO_KLR", {"weight_dtype": "fp32", "lr": 1e-4, "epochs": 2},
                            {"batch_size": 2, "max_len": 128}, gpus=gpus)  # fmt: skip
        unlearn(str(path), forget, retain, out / "model", out / "log.parquet", job)
        logs[gpus] = pd.read_parquet(out / "log.parquet")["loss"].tolist()
    gap = max(abs(a - b) for a, b in zip(logs[1], logs[2], strict=True))
    return {"devices": sorted(map(str, devices)), "loss_1_gpu": logs[1], "loss_2_gpus": logs[2],
            "max_loss_difference": gap}  # fmt: skip


def _time_steps(ctx, method, run, trainable, settings, vocab, pad_id):
    """Steps of `loop._train`'s body on random token batches of the configured shape."""
    from quantunlearn.models.training import collate
    from quantunlearn.unlearning.objectives import Step

    model = trainable.model.train()
    opt = torch.optim.AdamW(trainable.params, lr=run.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    times, losses = [], []
    for step in range(2 if ctx["smoke"] else 3):
        seqs = torch.randint(3, vocab, (2 * settings.batch_size, settings.max_len), generator=gen)
        seqs = seqs.tolist()
        fb = collate(seqs[: settings.batch_size], pad_id, device())
        rb = collate(seqs[settings.batch_size :], pad_id, device())
        sync()
        start = time.time()
        loss, _ = method.loss(Step(model, trainable, fb, rb, {}), run)
        loss.backward()
        if settings.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(trainable.params, settings.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        sync()
        times.append(time.time() - start)
        log("step7b", f"step {step}: {times[-1]:.2f}s, loss {losses[-1]:.4f}")
    return times, losses


def _throughput(config, n_params, model, settings, step_s: float, ctx) -> dict:
    """Model FLOPs (Chowdhery et al. 2022, "PaLM", appendix B): per token 6N + 12 L d T for the
    trained model's forward and backward, 2N + 4 L d T for the frozen reference's forward; N =
    parameters in matmuls (the input embedding is a lookup); recomputation is not counted."""
    tokens = 2 * settings.batch_size * settings.max_len  # forget + retain sequences
    n = n_params - model.get_input_embeddings().weight.numel()
    attn = config.num_hidden_layers * config.hidden_size * settings.max_len
    flops = tokens * (6 * n + 12 * attn) + tokens * (2 * n + 4 * attn)
    peak = ctx["peak_tflops"]
    if peak is None and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    steps = {b: 10 * math.ceil(NEWS_FORGET_CHUNKS / b) for b in (settings.batch_size, PAPER_BATCH)}
    return {
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / step_s,
        "model_tflops_per_s": flops / step_s / 1e12,
        "peak_tflops": peak,
        "mfu": flops / step_s / 1e12 / peak if peak else None,
        # NEWS (10 epochs of 407 chunks): optimizer steps x the measured step time (batch 2: the
        # step time scaled by tokens, an upper bound on its throughput)
        "news_unlearn_hours": {
            f"batch_{b}": s * step_s * b / settings.batch_size / 3600 for b, s in steps.items()
        },
    }


def shaped(tok, texts: list[str], n_tokens: int, start: int) -> str:
    """`n_tokens` tokens of running text (documents joined from `start`), decoded."""
    ids, i = [], start
    while len(ids) < n_tokens:
        ids += tok(texts[i % len(texts)] + " ", add_special_tokens=False)["input_ids"]
        i += 1
    return tok.decode(ids[:n_tokens], skip_special_tokens=True)


def news_shaped(tok, ctx) -> Benchmark:
    """A benchmark of synthetic text at MUSE NEWS's lengths (Llama-2 tokens: KnowMem prompt ~350
    with its 10 examples, VerbMem prompt ~880 + 128, PrivLeak texts ~1760), few items."""
    docs = general_corpus(600)
    s = 0.0625 if ctx["smoke"] else 1.0
    n_v, n_k, n_p = (2, 4, 2) if ctx["smoke"] else (16, 32, 16)
    length = {k: max(4, int(v * s)) for k, v in dict(q=14, verb=880, gt=128, priv=1760).items()}

    def qa(n, at):
        return [
            {
                "question": shaped(tok, docs, length["q"], at + 7 * i) + "?",
                "answer": shaped(tok, docs, 4, at + 7 * i + 3),
            }
            for i in range(n)
        ]

    return Benchmark(
        root=ctx["tmp"],
        verbmem_forget=[
            {
                "prompt": shaped(tok, docs, length["verb"], 900 + 11 * i),
                "gt": shaped(tok, docs, length["gt"], 905 + 11 * i),
            }
            for i in range(n_v)
        ],
        knowmem_forget_qa=qa(n_k, 500),
        knowmem_forget_icl=qa(10, 0),
        knowmem_retain_qa=qa(n_k, 700),
        knowmem_retain_icl=qa(10, 100),
        privleak_forget=[shaped(tok, docs, length["priv"], 50 * i) for i in range(n_p)],
        privleak_retain=[],
        privleak_holdout=[shaped(tok, docs, length["priv"], 25 + 50 * i) for i in range(n_p)],
    )


def section_cell4bit(ctx: dict) -> dict:
    """One evaluation cell of the 7B-shaped model, as evaluate_cell runs it, stage by stage."""
    from quantunlearn.evaluation import metrics
    from quantunlearn.evaluation.muse_metrics import knowmem

    if "model7b" not in ctx:
        raise Skip("needs the model that step7b saves")
    news, tok = news_settings(), ctx["tok7b"]
    evaluation = {**news["evaluation"], "utility": []}
    if ctx["smoke"]:
        evaluation.update(verbmem_max_new_tokens=8, knowmem_max_new_tokens=8)
    bench = news_shaped(tok, ctx)
    quantizer = parse_quantizer(ctx["cell_quant"])
    reset_peak()
    stages, start = {}, time.time()
    with quiet(ctx["libraries"]):
        model = quantizer.load(str(ctx["model7b"]), compute_dtype=news["bnb_compute_dtype"])
    sync()
    stages["load_quantize"] = time.time() - start
    log("cell4bit", f"{quantizer.name}: loaded and quantized in {stages['load_quantize']:.1f}s")
    context = metrics.Context(model, tok, bench, evaluation, 0.5, quantizer.batch_invariant)
    items = {}
    with torch.inference_mode():
        for metric in metrics.METRICS:
            if metric.applies(context):
                start = time.time()
                _, items[metric.name], _ = metric.compute(context)
                stages[metric.name] = time.time() - start
                log("cell4bit", f"{metric.name}: {stages[metric.name]:.1f}s")
    per_item = {k: stages[k] / items[k] for k in NEWS_ITEMS}
    full = stages["load_quantize"] + sum(per_item[k] * n for k, n in NEWS_ITEMS.items())
    out = {
        "quant": quantizer.name,
        "compute_dtype": news["bnb_compute_dtype"],
        "items": items,
        "stages_seconds": stages,
        "seconds_per_item": per_item,
        "news_cell_estimate_s": full,
        **peak_memory(),
    }
    # the fast generation path against the reference path (generate) on this GPU
    qa, icl, new = bench.knowmem_forget_qa[:16], bench.knowmem_forget_icl, 8 if ctx["smoke"] else 32
    with torch.inference_mode():
        fast = knowmem(model, tok, qa, icl, new, evaluation["batch_size"])[1]
        ref = knowmem(model, tok, qa, icl, new, evaluation["batch_size"], batch_invariant=False)[1]
    same = sum(a["output"] == b["output"] for a, b in zip(fast, ref, strict=True))
    out["fast_vs_reference_knowmem"] = {"same_answers": same, "of": len(qa), "ok": same == len(qa)}
    log("cell4bit", f"NEWS cell estimate {full:.0f}s; fast path = reference on {same}/{len(qa)}")
    return out


# ----------------------------------------------------------------------------- the scale study
SCALE_ESTIMATES = {"scale_smoke": 60, "scale_10m": 100, "scale_50m": 200, "scale_200m": 420}
"""Seconds one size needs on an H200 with 8 workers (guesses until the first run: docs/gpu.md);
after each size the remaining ones are rescaled by its measured / estimated ratio."""


def scale_config(ctx: dict, bench: str, results: Path, epochs: list[int]) -> dict:
    """config/scale.yaml for one size: the papers' batch of 2, the chosen methods, `epochs`,
    full precision and the table's 4-bit quantizer, results under `results`."""
    cfg = config_file("scale.yaml")
    if ctx["smoke"]:  # one tiny size, trained for two epochs: the DAG runs, nothing is learnt
        cfg["benchmarks"]["scale_smoke"] = {
            "source": "synthetic",
            "synthetic": {"n_people": 40, "n_bio_variants": 2, "n_retain_qa_people": 4},
            "tiny_model": {
                "tokenizer_vocab": 512,
                "hidden_size": 128,
                "intermediate_size": 384,
                "num_layers": 2,
                "num_heads": 2,
                "train": {"target_epochs": 2, "retrain_epochs": 2},
            },
        }
        cfg["evaluation"].update(verbmem_max_new_tokens=8, knowmem_max_new_tokens=4)
    cfg.update(results_dir=str(results), tables_dir=None, run_benchmarks=[bench])
    cfg["quantizers"] = ["none", cfg["scale"]["quant"]]
    cfg["unlearn"]["methods"] = {m: {} for m in ctx["scale_methods"]}
    cfg["unlearn"]["common"]["epochs"] = epochs
    cfg["unlearn"]["batch_size"] = PAPER_BATCH
    return cfg


def _worker_init(log_path: str, threads: int) -> None:
    """A worker of the scale DAG: its prints to the libraries log, its share of the cores."""
    sink = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.dup2(sink, 1)
    os.dup2(sink, 2)
    torch.set_num_threads(threads)


def parallel(ctx: dict, calls: list[tuple]) -> None:
    """Run (function, kwargs) jobs: in worker processes sharing the GPU (small models leave it
    idle between kernel launches), or one after the other with ``--workers 1``."""
    if ctx["workers"] <= 1 or len(calls) == 1:
        with quiet(ctx["libraries"]):
            for fn, kwargs in calls:
                fn(**kwargs)
        return
    workers = min(ctx["workers"], len(calls))
    spawn = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    threads = max(1, (os.cpu_count() or 1) // workers)
    with concurrent.futures.ProcessPoolExecutor(
        workers,
        mp_context=spawn,
        initializer=_worker_init,
        initargs=(str(ctx["libraries"]), threads),
    ) as pool:
        for future in [pool.submit(fn, **kwargs) for fn, kwargs in calls]:
            future.result()


def run_size(ctx: dict, bench: str, results: Path) -> dict:  # long: one size's DAG, stage by stage
    """One size of the scale study, the jobs of config/scale.yaml's DAG in dependency order
    (prepare, tokenizer, target + retrain, reference AUC, unlearning, evaluation)."""
    from quantunlearn.evaluation.cell import evaluate_cell, reference_auc
    from quantunlearn.models.loading import load_tokenizer
    from quantunlearn.models.tiny import build_tokenizer, train_reference
    from quantunlearn.study import load_study
    from quantunlearn.study.jobs import cell_job
    from quantunlearn.unlearning.hyperparameters import UnlearnSettings
    from quantunlearn.unlearning.methods import REFERENCES

    stages, models, data = {}, results / "models" / bench, results / "data" / bench
    start = time.time()
    study = load_study(scale_config(ctx, bench, results, [ctx["paper_epochs"]]))
    spec, max_len = study.benchmark(bench), study.config["unlearn"]["max_len"]
    generate_synthetic(data, **spec["synthetic"])
    build_tokenizer(data, models / "tokenizer", study.tiny_model(bench)["tokenizer_vocab"])
    forget = pack_documents(
        read_documents(data / spec["forget_corpus"]),
        load_tokenizer(str(models / "tokenizer")),
        max_len,
    )
    per_epoch = math.ceil(len(forget) / PAPER_BATCH)
    regimes = {"epochs": ctx["paper_epochs"], "steps": math.ceil(ctx["paper_steps"] / per_epoch)}
    study = load_study(scale_config(ctx, bench, results, sorted(set(regimes.values()))))
    stages["prepare"] = time.time() - start
    start = time.time()
    parallel(
        ctx,
        [
            (
                train_reference,
                dict(
                    which=w,
                    bench_dir=data,
                    tokenizer_dir=models / "tokenizer",
                    out_dir=models / w,
                    log_path=models / f"{w}_train_log.parquet",
                    tiny_model=study.tiny_model(bench),
                ),
            )
            for w in ("target", "retrain")
        ],
    )
    auc = results / "metrics" / bench / "retrain_auc.json"
    with quiet(ctx["libraries"]):
        reference_auc(str(models / "retrain"), data, auc, study.config["evaluation"])
    stages["train_references"] = time.time() - start
    start = time.time()
    runs = study.runs[~study.runs.method.isin(list(REFERENCES))]
    parallel(
        ctx,
        [
            (
                unlearn,
                dict(
                    target=str(models / "target"),
                    forget_corpus=data / spec["forget_corpus"],
                    retain_corpus=data / spec["retain_corpus"],
                    out_dir=results / "unlearn" / bench / r.run / "model",
                    log_path=results / "unlearn" / bench / r.run / "train_log.parquet",
                    job=UnlearnJob(
                        study.run(bench, r.run).typed,
                        UnlearnSettings(**study.cell_config(bench, r.run)["unlearn"]),
                    ),
                    run=r.run,
                ),
            )
            for r in runs.itertuples()
        ],
    )
    stages["unlearn"] = time.time() - start
    start = time.time()

    def model_dir(run, method):
        return (
            models / method if method in REFERENCES else results / "unlearn" / bench / run / "model"
        )  # noqa: E501

    parallel(
        ctx,
        [
            (
                evaluate_cell,
                dict(
                    cell=replace(
                        cell_job(study, bench, c.run, c.quant),
                        model=str(model_dir(c.run, c.method)),
                        target=str(models / "target"),
                    ),
                    bench_dir=data,
                    reference_auc_json=auc,
                    metrics_out=study.metric_file(bench, c.run, c.quant),
                    records_out=results / "records" / bench / c.run / f"{c.quant}.parquet",
                ),
            )
            for c in study.cells()
        ],
    )
    stages["evaluate"] = time.time() - start
    steps = {name: e * per_epoch for name, e in regimes.items()}
    return {
        "study": study,
        "regimes": regimes,
        "n_forget_sequences": len(forget),
        "steps_per_epoch": per_epoch,
        "optimizer_steps": steps,
        "stages_seconds": stages,
    }


def scale_tables(ctx: dict, done: dict, results: Path) -> dict:
    """The scale table and figure of each regime (10 epochs; the papers' step count) over the
    sizes done so far; returns the tables' rows."""
    from quantunlearn.reports.scale import make_scale_table
    from quantunlearn.unlearning.methods import REFERENCES

    tables = {}
    for regime in ("epochs", "steps"):
        files, targets = [], {}
        for bench, info in done.items():
            study, epochs = info["study"], info["regimes"][regime]
            for c in study.cells():
                params = study.run(bench, c.run).params
                if c.method in REFERENCES or params["epochs"] == epochs:
                    files.append(study.metric_file(bench, c.run, c.quant))
            targets[bench] = results / "models" / bench / "target"
        scale = study.config["scale"]
        with quiet(ctx["libraries"]):
            table = make_scale_table(
                files,
                targets,
                results / "tables" / f"scale_{regime}",
                scale,
                ["none", scale["quant"]],
            )
        tables[regime] = json.loads(table.to_json(orient="records"))
    return tables


def pack_scale(results: Path, out: Path) -> None:
    """The tables, figures, per-cell metrics and run infos of the scale study in one archive (the
    device returns at most 8 files)."""
    keep = [
        p
        for p in results.rglob("*")
        if p.is_file()
        and (
            p.parts[len(results.parts)] in ("tables", "metrics")
            or p.name in ("train_info.json", "unlearn_info.json")
        )
    ]
    with tarfile.open(out / "scale.tar.gz", "w:gz") as tar:
        for path in keep:
            tar.add(path, arcname=str(path.relative_to(results.parent)))


def section_scale(ctx: dict) -> dict:
    results = ctx["tmp"] / "scale" / "results"
    sizes = ["scale_smoke"] if ctx["smoke"] else ctx["scale_sizes"]
    ratio, done, out = 1.0, {}, {"sizes": {}, "skipped": {}}
    for bench in sizes:
        estimate = ratio * SCALE_ESTIMATES.get(bench, 600)
        left = ctx["deadline"] - time.time()
        if not ctx["smoke"] and estimate > left:
            out["skipped"][bench] = f"{left:.0f}s left < {estimate:.0f}s estimated"
            log("scale", f"{bench}: skipped ({out['skipped'][bench]})")
            continue
        start = time.time()
        log("scale", f"{bench}: start ({estimate:.0f}s estimated)")
        info = run_size(ctx, bench, results)
        done[bench] = info
        seconds = time.time() - start
        ratio = seconds / SCALE_ESTIMATES.get(bench, 600)
        out["sizes"][bench] = {k: v for k, v in info.items() if k != "study"} | {"seconds": seconds}
        out["tables"] = scale_tables(ctx, done, results)
        pack_scale(results, ctx["out"])
        log(
            "scale",
            f"{bench}: done in {seconds:.0f}s ({info['stages_seconds']}); regimes "
            f"{info['regimes']} epochs = {info['optimizer_steps']} steps",
        )
        ctx["save"]()  # the finished sizes survive a later timeout
    if not done:
        raise Skip(f"no size fitted: {out['skipped']}")
    return out


# ------------------------------------------------------------------------------------ main
SECTIONS = [
    ("env", section_env, 5),
    ("bnb", section_bnb, 30),
    ("gptq", section_gptq, 60),
    ("bf16", section_bf16, 20),
    ("checkpointing", section_checkpointing, 30),
    ("step7b", section_step7b, 90),
    ("spread", section_spread, 30),
    ("cell4bit", section_cell4bit, 120),
    ("scale", section_scale, 100),
]
"""(name, function, seconds it needs on an H200, estimated before any run): a section starts
only when its estimate fits in what is left of the budget."""


def summary_markdown(results: dict) -> str:
    """The numbers a reader looks for first; every other number is in gpu_check.json."""
    s = results["sections"]
    lines = [
        f"# gpu_check {results['started']}",
        "",
        f"{s.get('env', {}).get('gpu', 'no GPU')}; host {s.get('env', {}).get('host')}; "
        f"elapsed {results.get('elapsed_s', 0):.0f} s",
        "",
        "| section | status | seconds |",
        "|---|---|---:|",
    ]
    lines += [f"| {n} | {e['status'][:80]} | {e.get('seconds', 0):.0f} |" for n, e in s.items()]
    if s.get("step7b", {}).get("status") == "ok":
        r = s["step7b"]
        lines += [
            "",
            f"7B-shaped NPO_KLR step: {r['tokens_per_s']:.0f} tokens/s, "
            f"{r['model_tflops_per_s']:.0f} TFLOP/s (MFU {r['mfu'] or 0:.1%}), peak "
            f"{r.get('peak_allocated_gib', 0):.1f} GiB; NEWS unlearning "
            f"{r['news_unlearn_hours']}; the cost model predicted "
            f"{r['predicted_peak_gib']:.1f} GiB and {r['predicted_step_tflop']:.0f} TFLOP a step",
        ]
    if s.get("cell4bit", {}).get("status") == "ok":
        r = s["cell4bit"]
        lines += [
            "",
            f"4-bit cell ({r['quant']}): stages {r['stages_seconds']}; NEWS cell "
            f"estimate {r['news_cell_estimate_s']:.0f} s",
        ]
    for regime, rows in s.get("scale", {}).get("tables", {}).items():
        lines += ["", f"Scale ({regime}): method, weights, params, memorised, pooled recovered %"]
        lines += [
            f"- {r['method']} {r['weight_dtype']} {r['n_params']} {r['memorized']} "
            f"{r['share_pooled']}"
            for r in rows
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, any device (CPU: ~1 min)")
    ap.add_argument("--budget-s", type=float, default=540.0)
    ap.add_argument("--only", help="comma-separated sections (env always runs)")
    ap.add_argument("--workdir", help="scratch folder for models (default: the system temp)")
    ap.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device, for MFU")
    ap.add_argument("--cell-quant", default="rtn_w4", help="the 4-bit quantizer of cell4bit")
    ap.add_argument("--scale-sizes", default="scale_10m,scale_50m,scale_200m")
    ap.add_argument("--scale-methods", default="NPO_KLR")
    ap.add_argument("--workers", type=int, help="scale: jobs at once (default 8; --smoke: 1)")
    args = ap.parse_args(argv)
    if args.smoke:  # tiny ops on a shared CPU: a second OpenMP thread only waits for a core
        torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) | {"env"} if args.only else None
    results: dict = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": sys.argv[1:],
        "sections": {},
    }

    def save() -> None:
        results["elapsed_s"] = time.time() - START
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
        (out / "gpu_check.md").write_text(summary_markdown(results))

    with tempfile.TemporaryDirectory(prefix="gpu_check_", dir=args.workdir) as tmp:
        ctx = {
            "smoke": args.smoke,
            "tmp": Path(tmp),
            "out": out,
            "save": save,
            "libraries": out / "libraries.log",
            "peak_tflops": args.peak_tflops,
            "cell_quant": args.cell_quant,
            "scale_sizes": args.scale_sizes.split(","),
            "scale_methods": args.scale_methods.split(","),
            "workers": args.workers or (1 if args.smoke else 8),
            # smoke: 1 epoch against 30 steps (2 epochs), so that both regimes run
            "paper_epochs": 1 if args.smoke else PAPER_EPOCHS,
            "paper_steps": 30 if args.smoke else PAPER_STEPS,
            "deadline": START + args.budget_s,
        }
        for name, fn, estimate in SECTIONS:
            if only is None or name in only:
                results["sections"][name] = run_section(name, fn, estimate, ctx)
                save()
    cap_log(ctx["libraries"], 15 * 2**20)  # the device returns files of up to 16 MiB
    failed = [n for n, e in results["sections"].items() if e["status"].startswith("failed")]
    bad = [n for n, e in results["sections"].items() if _not_ok(e)]
    log("done", f"{out}; failed: {failed or 'none'}; checks not ok: {bad or 'none'}")
    # a failed section is a bug of the script; a check that is not ok is a finding on a GPU,
    # and a bug at the smoke test's tiny CPU shapes
    return 1 if failed or (args.smoke and bad) else 0


def cap_log(path: Path, limit: int) -> None:
    """Keep the last `limit` bytes of a log (its end holds the errors)."""
    if path.is_file() and path.stat().st_size > limit:
        with open(path, "rb") as fh:
            fh.seek(-limit, os.SEEK_END)
            tail = fh.read()
        path.write_bytes(b"[... cut ...]\n" + tail)


def run_section(name: str, fn, estimate: float, ctx: dict) -> dict:
    left = ctx["deadline"] - time.time()
    if not ctx["smoke"] and estimate > left:
        log(name, f"skipped: {left:.0f}s left < {estimate}s")
        return {"status": f"skipped: {left:.0f}s left < {estimate}s estimated"}
    log(name, "start")
    start = time.time()
    try:
        entry = {"status": "ok", **fn(ctx)}
    except Skip as why:
        entry = {"status": f"skipped: {why}"}
    except Exception as err:  # noqa: BLE001  (record it, go on with the next section)
        entry = {
            "status": f"failed: {type(err).__name__}: {err}"[:500],
            "traceback": traceback.format_exc()[-3000:],
        }
    entry["seconds"] = time.time() - start
    log(name, f"{entry['status'][:120]} ({entry['seconds']:.1f}s)")
    return entry


def _not_ok(entry) -> bool:
    if isinstance(entry, dict):
        return entry.get("ok") is False or any(_not_ok(v) for v in entry.values())
    return False


if __name__ == "__main__":
    sys.exit(main())
