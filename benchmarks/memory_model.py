"""The cost model's unlearning memory (`quantunlearn.study.costs.unlearn_memory`) against the peak
memory of real unlearning steps on this machine's CPU.

Every case runs in a fresh process: a random transformers Llama (Llama-2's vocabulary, 32000) is
saved once per size, and the case loads it with the project's loader in the weight dtype, builds
the METHODS row's scope (its frozen reference, LoRA adapters, RMU's layers), and runs
`--steps` optimizer steps of the project's loop (`quantunlearn.unlearning.loop._train`: the
method's loss, backward, clipping, AdamW). Measured: the process's peak resident memory during
the steps (VmHWM, reset after the load by writing 5 to /proc/self/clear_refs) minus its resident
memory before the model was loaded, after one warm-up step of the same case on a micro model
(the code and caches a first training step touches are not the case's memory). Predicted: the
cost model's peak with ``device="cpu"``.

    nice -n 10 python benchmarks/memory_model.py --out results/memory_model.csv
    python benchmarks/memory_model.py --sizes 10M --methods GA_GDR --dtypes fp32  # one case

Linux only (/proc). Prints one line per case: predicted, measured, ratio (predicted / measured).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).parent))

from quantunlearn.models.shape import LlamaShape  # noqa: E402

VOCAB = 32000
#: ~10M, ~60M, ~130M parameters at Llama-2's vocabulary (untied embeddings)
SIZES = {
    "10M": LlamaShape(VOCAB, 128, 344, 4, 4),
    "60M": LlamaShape(VOCAB, 512, 1376, 8, 8),
    "130M": LlamaShape(VOCAB, 768, 2048, 12, 12),
}
METHODS = ("GA_GDR", "NPO_KLR", "NPO_KLR_LORA", "RMU")
#: RMU's steered layer within the smallest model's 4 layers (layers 1..3 trained)
RUN_VALUES = {"RMU": {"rmu_layer": 3}}


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def save_model(shape: LlamaShape, folder: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads or shape.heads, max_position_embeddings=4096,
        tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)


def case(model_dir: str, method_name: str, dtype: str, batch: int, length: int, steps: int,
         checkpointing: bool) -> dict:  # fmt: skip
    """One case, in this process: the measured peak (bytes) and the step time."""
    import torch

    from quantunlearn.models.loading import load_model
    from quantunlearn.models.training import set_checkpointing
    from quantunlearn.unlearning.hyperparameters import UnlearnSettings
    from quantunlearn.unlearning.loop import _train
    from quantunlearn.unlearning.methods import get_method

    torch.manual_seed(0)
    method = get_method(method_name)
    run = method.run({"weight_dtype": dtype, "epochs": 1, **RUN_VALUES.get(method_name, {})})
    settings = UnlearnSettings(
        batch_size=batch, max_len=length, gradient_checkpointing=checkpointing
    )
    seqs = [torch.randint(3, VOCAB, (length,)).tolist() for _ in range(batch * steps)]
    _warm_up(method, run, settings)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _rss("VmRSS")
    model = load_model(model_dir, dtype)
    trainable = method.scope.build(model, method, run, seqs, 0, batch)
    if checkpointing:
        set_checkpointing(trainable.model, True)
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # the load's freed temporaries back to the system
    Path("/proc/self/clear_refs").write_text(
        "5"
    )  # VmHWM := VmRSS (the load's own peak is not a step's)
    start = time.time()
    _train(run, trainable, seqs, seqs, 0, settings, False, {})
    seconds = (time.time() - start) / steps
    return {"measured": _rss("VmHWM") - before, "seconds_per_step": seconds}


def _warm_up(method, run, settings) -> None:
    """One step of the same case on a micro Llama first: the libraries' code pages, thread pools
    and kernel caches that a first training step touches count in the resident memory, and
    would otherwise be measured as the case's (about 150 MB here)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from quantunlearn.unlearning.loop import _train

    config = LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        tie_word_embeddings=False,
    )
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[str(run.weight_dtype)]
    model = LlamaForCausalLM(config).to(dtype)
    seqs = [torch.randint(3, 256, (settings.max_len,)).tolist() for _ in range(settings.batch_size)]
    trainable = method.scope.build(model, method, run, seqs, 0, settings.batch_size)
    _train(run, trainable, seqs, seqs, 0, settings, False, {})


def predict(shape: LlamaShape, method_name: str, dtype: str, batch, length, checkpointing):
    from quantunlearn.study.costs import unlearn_memory
    from quantunlearn.unlearning.methods import get_method

    method = get_method(method_name)
    run = method.run({"weight_dtype": dtype, **RUN_VALUES.get(method_name, {})})
    return unlearn_memory(method, run, shape, batch, length, checkpointing, device="cpu")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--checkpointing", nargs="+", default=["off"], choices=["off", "on"])
    p.add_argument("--out", help="CSV of the cases")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case in this process
    p.add_argument("--repredict", help="a CSV of this script: the cost model's prediction again")
    args = p.parse_args()
    if args.case:
        print(json.dumps(case(**json.loads(args.case))))
        return 0
    if args.repredict:
        return repredict(args.repredict, args)
    import pandas as pd
    from common import machine

    print(f"# {machine()}; load {os.getloadavg()[0]:.2f}; torch threads: default")
    print(f"{'size':>5} {'params':>11} {'method':>13} {'dtype':>5} {'ckpt':>4} "
          f"{'predicted MB':>12} {'measured MB':>12} {'ratio':>6} {'s/step':>7}")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            shape, folder = SIZES[size], Path(tmp, size)
            save_model(shape, folder)
            for method in args.methods:
                for dtype in args.dtypes:
                    for ckpt in args.checkpointing:
                        rows.append(
                            _run_case(size, shape, folder, method, dtype, ckpt == "on", args)
                        )
                        if args.out:  # after every case: a stopped run keeps what it measured
                            pd.DataFrame(rows).to_csv(args.out, index=False)
    return 0


def repredict(path: str, args) -> int:
    """The cost model's predictions for the cases of a CSV (measured values kept), rewritten."""
    import pandas as pd

    table = pd.read_csv(path)
    for i, r in table.iterrows():
        memory = predict(SIZES[r["size"]], r["method"], r["dtype"], args.batch, args.length,
                         bool(r["checkpointing"]))  # fmt: skip
        table.loc[i, "predicted_mb"] = memory.total / 1e6
        for k, v in vars(memory).items():
            table.loc[i, k] = v / 1e6
    table["ratio"] = table["predicted_mb"] / table["measured_mb"]
    table.to_csv(path, index=False)
    print(table[["size", "method", "dtype", "predicted_mb", "measured_mb", "ratio"]].round(2))
    return 0


def _run_case(size, shape, folder, method, dtype, ckpt, args) -> dict:
    spec = {"model_dir": str(folder), "method_name": method, "dtype": dtype, "batch": args.batch,
            "length": args.length, "steps": args.steps, "checkpointing": ckpt}  # fmt: skip
    # every block of 64 KiB or more mmapped and returned to the system when freed, so that the
    # resident memory follows the live tensors (glibc's default threshold grows to 32 MiB and
    # keeps freed blocks below it in its heap, which RSS still counts)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, __file__, "--case", json.dumps(spec)],
                         capture_output=True, text=True, check=False, env=env)  # fmt: skip
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    memory = predict(shape, method, dtype, args.batch, args.length, ckpt)
    row = {"size": size, "params": shape.params, "method": method, "dtype": dtype,
           "checkpointing": ckpt, "predicted_mb": memory.total / 1e6,
           "measured_mb": measured["measured"] / 1e6,
           **{k: v / 1e6 for k, v in vars(memory).items()},
           "seconds_per_step": measured["seconds_per_step"]}  # fmt: skip
    row["ratio"] = row["predicted_mb"] / row["measured_mb"]
    print(f"{size:>5} {shape.params:>11,} {method:>13} {dtype:>5} {'on' if ckpt else 'off':>4} "
          f"{row['predicted_mb']:>12.0f} {row['measured_mb']:>12.0f} {row['ratio']:>6.2f} "
          f"{row['seconds_per_step']:>7.2f}", flush=True)  # fmt: skip
    return row


if __name__ == "__main__":
    sys.exit(main())
