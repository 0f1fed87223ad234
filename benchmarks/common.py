"""What the benchmark scripts share: the machine they ran on, and a tokenizer of a given size.

Imported by the scripts of this folder (``python benchmarks/<script>.py`` puts it on the path).
"""

from __future__ import annotations

import os
import platform
import subprocess


def machine() -> str:
    """`lscpu`'s model name, the CPU count and whether the CPU has AVX512-BF16 and AMX."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    except OSError:
        return f"{platform.processor() or '?'}, {os.cpu_count()} CPUs (no lscpu)"
    name = next((ln.split(":", 1)[1].strip() for ln in lscpu if ln.startswith("Model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in lscpu if ln.startswith("Flags")), [])
    has = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{name}, {os.cpu_count()} CPUs, flags: {' '.join(has) or 'no avx512f/bf16/amx'}"


def padded_tokenizer(texts: list[str], vocab: int):
    """The project's byte-level BPE trained on `texts`, grown with plain added tokens to exactly
    `vocab` ids, so that a random model of a real vocabulary size (Llama-2: 32000) has real
    shapes and every id it generates decodes."""
    from quantunlearn.models.tiny import train_tokenizer

    tok = train_tokenizer(texts, vocab)
    if len(tok) < vocab:
        tok.add_tokens([f"<x{i}>" for i in range(vocab - len(tok))])
    return tok
