"""llama.cpp itself: ``llamacpp_{f32,q8_0,q4_0,q4_k_s,q4_k_m,q5_k_m,q6_k}``, cells evaluated
inside the runtime most people run GGUF models with.

The `gguf_*` rows reproduce GGUF's weight codes and evaluate the decoded fp32 weights in torch.
llama.cpp computes differently: its CPU kernels quantize the activations too (to Q8_0 or Q8_K)
for the dot products with quantized weights, `llama_model_quantize` picks each tensor's type by
its own rules (the token embeddings and the output projection included; a row that a K-quant's
256-weight super-block does not divide falls back to a legacy type), and attention keeps its
keys and values in an f16 cache. A ``llamacpp_*`` cell therefore

1. writes the model as an fp32 GGUF file (`quantunlearn.quantizers.gguf_export`);
2. quantizes it with llama.cpp's own ``llama_model_quantize`` (llama-cpp-python's low-level
   API; ``llamacpp_f32`` keeps the fp32 file: the parity cell);
3. evaluates it through llama.cpp (`LlamaCppModel`): greedy generation for VerbMem and KnowMem
   with the torch cells' prompts and stop rules, per-token log-probabilities for Min-K%.

**The seam.** ``load`` returns a `RuntimeModel` instead of a torch module; the two functions every
MUSE metric goes through, `evaluation.generation.greedy_generate` and
`evaluation.muse_metrics.min_k_scores`, hand such a model the token ids of the cell's tokenizer and
take back generated ids or per-token log-probabilities. Tokenizing, prompts, stop strings, decoding
and scoring stay the torch cells' own code, so a difference between a ``llamacpp_*`` cell and a
torch cell is the runtime's arithmetic, nothing else. Metrics that need a torch forward (RWKU's MIA,
classification, the utility harness) are refused with the metric's name.

The files live in a temporary folder as long as the model object (the f32 file of a 7B model is
28 GB: a cell of a real model needs that much free space in ``$TMPDIR``).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from quantunlearn.quantizers.base import Quantizer, RuntimeModel, file_type_of

#: llama.cpp's file types (``LLAMA_FTYPE_*`` of llama.h) by lower-case name; f32 is not
#: quantized. Their weight bits give the nominal width.
LLAMACPP_TYPES = {
    "f32": ("ALL_F32", 32),
    "q8_0": ("MOSTLY_Q8_0", 8),
    "q4_0": ("MOSTLY_Q4_0", 4),
    "q4_k_s": ("MOSTLY_Q4_K_S", 4),
    "q4_k_m": ("MOSTLY_Q4_K_M", 4),
    "q5_k_m": ("MOSTLY_Q5_K_M", 5),
    "q6_k": ("MOSTLY_Q6_K", 6),
}


@dataclass(frozen=True)
class LlamaCpp(Quantizer):
    file_type: str = "q8_0"  # llama.cpp's file type, lower case

    PATTERN: ClassVar[str] = r"llamacpp_(" + "|".join(LLAMACPP_TYPES) + ")"
    SYNTAX: ClassVar[str] = "llamacpp_{" + "|".join(LLAMACPP_TYPES) + "}"
    EXAMPLE: ClassVar[str] = "llamacpp_f32"
    runtime: ClassVar[bool] = True

    @classmethod
    def parse(cls, name: str) -> LlamaCpp | None:
        kind = file_type_of(name, "llamacpp_", LLAMACPP_TYPES, "llama.cpp file types")
        return None if kind is None else cls(name, LLAMACPP_TYPES[kind][1], file_type=kind)

    @property
    def is_quantized(self) -> bool:
        return self.file_type != "f32"

    @property
    def quantizes_activations(self) -> bool:
        return self.is_quantized

    @property
    def runs_in_unlearning_job(self) -> bool:
        return False  # QUAIL's margin needs torch weights

    @property
    def block(self) -> None:
        """None: llama.cpp falls back to a type whose block divides the row (its own rule)."""
        return None

    @property
    def diagnosable(self) -> bool:
        return False  # the weights live in llama.cpp, not in a torch model

    def load(
        self, model_path, *, compute_dtype="fp32", quant_dir=None, target_path=None, tokenizer=None
    ):
        """The model at ``model_path`` in llama.cpp: written as GGUF with the tokenizer at
        ``tokenizer`` (default: ``model_path``), quantized to this file type."""
        from quantunlearn.quantizers.gguf_export import write_gguf

        folder = tempfile.TemporaryDirectory(prefix="quantunlearn-gguf-")
        f32 = write_gguf(model_path, tokenizer or model_path, Path(folder.name) / "model-f32.gguf")
        path = f32
        if self.is_quantized:
            path = quantize_gguf(f32, Path(folder.name) / f"model-{self.file_type}.gguf", self)
            f32.unlink()
        return LlamaCppModel(path, self.name, keep=folder)


def quantize_gguf(source: Path, out: Path, quantizer: LlamaCpp) -> Path:
    """``llama_model_quantize`` of ``source`` to the quantizer's file type (llama.cpp's rules
    for each tensor's type), with as many threads as torch uses."""
    import llama_cpp

    import_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{LLAMACPP_TYPES[quantizer.file_type][0]}")
    params.nthread = _threads()
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if status != 0:
        raise RuntimeError(f"llama_model_quantize failed ({status}) for {quantizer.name}")
    return out


def import_llama_cpp():
    """llama_cpp, or an ImportError saying how to install it."""
    try:
        import llama_cpp
    except ImportError as error:
        raise ImportError(
            "the llamacpp_* quantizers need llama-cpp-python: "
            'pip install -c constraints.txt -e ".[llamacpp]" (docs/quantizers.md)'
        ) from error
    return llama_cpp


def _threads() -> int:
    import torch

    return max(1, torch.get_num_threads())


@contextmanager
def _standard_cpu_buffers(llama_cpp):
    """llama.cpp's standard CPU weight buffers (``use_extra_bufts = false``, llama-cli's
    ``--no-extra-bufts``): with the extra ones (AMX tiles, weights repacked for AVX512) decoding
    a quantized tiny model segfaults in llama-cpp-python 0.3.36 on a Xeon with AMX (2026-12-05).
    The standard kernels still quantize the activations (Q8_0 / Q8_K dot products). `Llama`
    takes its model parameters from ``llama_model_default_params``, so the default is changed
    while it loads."""
    module = llama_cpp.llama.llama_cpp
    default = module.llama_model_default_params

    def standard():
        params = default()
        params.use_extra_bufts = False
        return params

    module.llama_model_default_params = standard
    try:
        yield
    finally:
        module.llama_model_default_params = default


class LlamaCppModel(RuntimeModel):
    """A GGUF file loaded in llama.cpp (llama-cpp-python's `Llama`, one sequence at a time,
    llama.cpp's default f16 KV cache, its context length the model's, its standard CPU buffers);
    the cache is reused for the common token prefix of consecutive calls, as llama.cpp's server
    does."""

    def __init__(self, path: Path, name: str, keep=None):
        llama_cpp = import_llama_cpp()
        self.path, self.name, self._keep = Path(path), name, keep
        with _standard_cpu_buffers(llama_cpp):
            self.llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=0,  # the model's context length
                logits_all=True,
                n_threads=_threads(),
                n_threads_batch=_threads(),
                verbose=bool(os.environ.get("QU_LLAMACPP_VERBOSE")),
            )
        self.n_ctx = self.llm.n_ctx()

    def _logits_after(self, ids: list[int]):
        """Logits (fp32 numpy [len(ids), vocab]) of every position of ``ids``, computing only
        the positions after the prefix they share with what the cache holds."""
        if len(ids) > self.n_ctx:
            raise ValueError(f"{len(ids)} tokens exceed {self.name}'s context of {self.n_ctx}")
        held = self.llm.input_ids[: self.llm.n_tokens]
        keep = 0
        while keep < min(len(held), len(ids) - 1) and held[keep] == ids[keep]:
            keep += 1
        self.llm.n_tokens = keep  # eval() drops the cache after n_tokens
        self.llm.eval(ids[keep:])
        return self.llm.scores[: len(ids)]

    def greedy_ids(self, prompt_ids, max_new_tokens: int, end_ids, stop) -> list[list[int]]:
        """Greedy continuation of each prompt (token ids): argmax of llama.cpp's fp32 logits
        (first index on ties), ending at a token of ``end_ids``, when ``stop(ids)`` holds, or
        after ``max_new_tokens``, as `evaluation.generation` does for torch."""
        out = []
        for ids in prompt_ids:
            ids, generated = list(ids), []
            for _ in range(max_new_tokens):
                if len(ids) >= self.n_ctx:
                    break
                token = int(self._logits_after(ids)[-1].argmax())
                generated.append(token)
                ids.append(token)
                if token in end_ids or stop(generated):
                    break
            out.append(generated)
        return out

    def token_log_probs(self, ids: list[int]):
        """log p(x_i | x_<i) of tokens 2..n of ``ids`` (fp64 numpy), from llama.cpp's logits."""
        import numpy as np

        logits = self._logits_after(list(ids))[: len(ids) - 1].astype(np.float64)
        top = logits.max(axis=-1, keepdims=True)
        log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=-1))
        return logits[np.arange(len(ids) - 1), ids[1:]] - log_z
