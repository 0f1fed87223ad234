"""What each job costs before it runs: GPU memory, time and FLOPs, from the model's shape.

Unlearning (one job per run; ``b_w`` bytes per weight of the run's ``weight_dtype``, ``P`` the
model's parameters, ``P_t`` the trained ones: the METHODS row's scope says which,
`Scope.trained_params`; ``b_t`` their bytes: the weight dtype, or fp32 for peft's LoRA adapters,
`Scope.trained_dtype`)::

    weights     P x b_w  (+ P_t x 4 for LoRA adapters)
    reference   P x b_w  where the method needs the frozen target (`Method.needs_reference`) and
                         its scope keeps a copy (`Scope.copies_reference`; LoRA's reference is
                         the adapter-free model itself)
    gradients   P_t x b_t
    AdamW       2 x P_t x b_t  (exp_avg, exp_avg_sq, in the parameters' dtype)
    step        P_t x b_t on CUDA (torch's foreach AdamW: one copy of the states for the
                square root, divided and shifted in place); twice the largest trained tensor on
                a CPU (the per-tensor loop: the square root and its quotient, one tensor at a
                time)
    peak        weights + reference + AdamW + max(activations + lm_head's gradient,
                gradients + step): the backward pass frees the activations as it makes the
                gradients, and the step comes after it
    activations per forward pass with a gradient (forget, and retain where the method has a
                retain term; both graphs live until the backward pass), N = batch x max_len
                tokens, L_g = `Scope.graph_layers` decoder layers:
                  without checkpointing: N x L_g x [b_a (5 h + 2 kv + 4 i) + 8 h]
                  with checkpointing:    N x (L_g x b_a h) + one layer's full activations
    logits      where the loss reads them (`Scope.reads_logits`), N x V x per token: b_w for
                each pass's logits, 4 x `Term.vocab_tensors` for each term (a log-softmax's
                output; KLR also the target's probabilities), b_w for the target's logits of
                a term that needs them, and 2 x 4 + b_w for the backward pass of a
                log-softmax-and-gather loss (the softmax's gradient, the slice's full-size
                gradient, the logits' gradient)

with ``h`` hidden, ``kv`` the key/value width, ``i`` the MLP width, ``V`` the vocabulary and
``b_a = b_w`` the activation bytes. The layer term counts what autograd saves in a Llama decoder
layer with SDPA attention (no T x T matrix): the two RMSNorms' fp32 inputs (4 h bytes each), their
outputs, q, k, v, the attention output and its contiguous copy, and the MLP's gate, SiLU(gate),
up and their product; a scope's own modules add theirs (`Scope.layer_extra_bytes`: LoRA's
adapters, and peft's fp32 copy of each adapted input with bf16 weights). The reference's
forward runs without a gradient and keeps only its logits.

Time: FLOPs per optimizer step / (GPU peak x MFU), x the run's optimizer steps
(`Method.optimizer_steps`). Per token a pass with a gradient costs 2 P (forward) + 2 P_g (the
input gradients through the layers that keep a graph) + 2 P_t (the weight gradients), plus the
forward again with gradient checkpointing, plus 6 L T h for causal attention; a reference pass
2 P. ``MFU`` (model FLOPs utilization) is an assumption, named by `GPU`.

Evaluation cells: load (checkpoint bytes / the file system's read rate), quantize at load
(RTN, bitsandbytes: one more pass over the weights), then the tokens each metric scores (prefill:
2 P FLOPs per token at the MFU) and generates (decoding is memory-bound: one read of the weights
per step of a batch, at a share of the GPU's memory bandwidth). GPTQ/AWQ calibration (the
`quantize` job of a stored, calibrated quantizer): a forward of the calibration set
(``n_samples x max_len`` tokens) plus a per-layer solve, counted at `GPU.calibration_layer_s`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from quantunlearn.evaluation.metrics import BY_NAME as METRICS_BY_NAME
from quantunlearn.models.shape import LLAMA2_7B, LLAMA3_8B, LlamaShape

GB = 1e9
BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
#: the hub models of the shipped configs, so that a plan needs no network
KNOWN_SHAPES = {
    "muse-bench/MUSE-News_target": LLAMA2_7B,
    "muse-bench/MUSE-News_retrain": LLAMA2_7B,
    "muse-bench/MUSE-Books_target": LLAMA2_7B,
    "muse-bench/MUSE-Books_retrain": LLAMA2_7B,
    "meta-llama/Llama-2-7b-hf": LLAMA2_7B,
    "meta-llama/Meta-Llama-3-8B-Instruct": LLAMA3_8B,
}


@dataclass(frozen=True)
class GPU:
    """The assumed accelerator. Defaults: an NVIDIA A100-SXM 80 GB (dense bf16 312 TFLOP/s; fp32
    without TF32, torch's default for matmuls, 19.5), at an assumed 35% MFU for training and
    prefill and 50% of its 2.0 TB/s memory bandwidth for decoding."""

    name: str = "A100-80GB"
    memory_gb: float = 80.0
    tflops: tuple[tuple[str, float], ...] = (("bf16", 312.0), ("fp16", 312.0), ("fp32", 19.5))
    mfu: float = 0.35
    bandwidth_tb_s: float = 2.0
    bandwidth_share: float = 0.5
    #: usable share of a GPU's memory (the CUDA context, the caching allocator's fragmentation)
    usable: float = 0.9
    #: the shared file system's read rate for a checkpoint (GB/s)
    read_gb_s: float = 1.0
    #: GPTQ/AWQ: seconds per decoder layer for the per-layer solve (GPTQModel, 7B, measured by
    #: others at 10-30 s a layer; the middle)
    calibration_layer_s: float = 20.0

    def flops_per_s(self, dtype: str) -> float:
        return dict(self.tflops)[dtype] * 1e12 * self.mfu


@dataclass(frozen=True)
class Memory:
    """Bytes of one unlearning job, by part."""

    weights: float
    reference: float
    gradients: float
    optimizer: float
    step: float
    activations: float
    #: lm_head's gradient, the first one the backward pass makes while the activations live
    head_gradient: float = 0.0

    @property
    def total(self) -> float:
        """The peak: what lives throughout (weights, reference, AdamW states) plus the larger of
        the backward pass's start (every activation and lm_head's gradient) and the optimizer
        step (every gradient and the step's temporaries)."""
        static = self.weights + self.reference + self.optimizer
        return static + max(self.activations + self.head_gradient, self.gradients + self.step)


def _layer_bytes(shape: LlamaShape, b_a: int) -> int:
    """Bytes autograd saves per token in one decoder layer (module docstring)."""
    h, kv, i = shape.hidden, shape.kv_hidden, shape.intermediate
    return b_a * (5 * h + 2 * kv + 4 * i) + 8 * h


def activation_bytes(
    shape: LlamaShape, tokens: int, b_a: int, graph_layers: int, checkpointing: bool
) -> float:
    """The decoder layers' activations of one forward pass with a gradient (module docstring)."""
    layer = _layer_bytes(shape, b_a)
    if checkpointing:
        return float(tokens * (graph_layers * b_a * shape.hidden + layer))
    return float(tokens * graph_layers * layer)


def logit_bytes(method, tokens: int, vocab: int, b_w: int) -> float:
    """The vocabulary-wide tensors of one step: each pass's logits, each term's fp32 tensors
    (`Term.vocab_tensors`) and the target's logits for a term that compares with it, plus the
    backward transient of a log-softmax loss (2 fp32 tensors and the logits' gradient)."""
    passes = 1 + (method.retain is not None)
    per_token = passes * b_w + (2 * 4 + b_w)
    for term in method.terms:
        per_token += 4 * term.vocab_tensors + (b_w if term.needs_reference else 0)
    return float(tokens * vocab * per_token)


def unlearn_memory(
    method, run, shape: LlamaShape, batch: int, length: int, checkpointing: bool,
    device: str = "cuda",
) -> Memory:  # fmt: skip
    """The memory of one unlearning job of ``method`` (a METHODS row) at ``run``."""
    scope = method.scope
    b_w = BYTES[str(run.weight_dtype)]
    b_t = BYTES[scope.trained_dtype or str(run.weight_dtype)]
    trained = scope.trained_params(shape, run)
    adapters = trained * b_t if scope.trained_dtype else 0
    copies = method.needs_reference and scope.copies_reference
    tokens = batch * length
    passes = 1 + (method.retain is not None)
    graph = scope.graph_layers(shape, run)
    acts = passes * activation_bytes(shape, tokens, b_w, graph, checkpointing)
    acts += (
        passes * tokens * (1 if checkpointing else graph) * scope.layer_extra_bytes(shape, run, b_w)
    )
    if scope.reads_logits:
        acts += logit_bytes(method, tokens, shape.vocab, b_w)
    largest = min(trained, max(shape.vocab * shape.hidden, shape.hidden * shape.intermediate))
    return Memory(
        weights=float(shape.params * b_w + adapters),
        reference=float(shape.params * b_w if copies else 0),
        gradients=float(trained * b_t),
        optimizer=float(2 * trained * b_t),
        step=float((trained if device == "cuda" else 2 * largest) * b_t),
        activations=acts,
        head_gradient=float(shape.vocab * shape.hidden * b_t if trained == shape.params else 0),
    )


def step_flops(method, run, shape: LlamaShape, batch: int, length: int, checkpointing: bool):
    """FLOPs of one optimizer step (module docstring)."""
    scope = method.scope
    graph = scope.graph_layers(shape, run)
    body = shape.layers * shape.layer_params
    head = shape.vocab * shape.hidden if scope.reads_logits else 0
    with_graph = graph / shape.layers * body + head
    attention = 6 * graph * length * shape.hidden
    per_token = 2 * shape.params + 2 * with_graph + 2 * scope.trained_params(shape, run)
    per_token += attention + (2 * shape.params if checkpointing else 0)
    passes = 1 + (method.retain is not None)
    references = passes if method.needs_reference else 0
    return batch * length * (passes * per_token + references * 2 * shape.params)


def gpus_needed(bytes_: float, gpu: GPU) -> int:
    """GPUs a job's memory needs, its model split across them by layers (device_map)."""
    return max(1, math.ceil(bytes_ / (gpu.memory_gb * GB * gpu.usable)))


def eval_seconds(shape: LlamaShape, metrics: list[str], batch: int, gpu: GPU) -> float:
    """Prefill and scoring at the MFU, decoding at the memory bandwidth (module docstring), of
    the work each metric's METRICS row declares (`quantunlearn.evaluation.metrics.Work`)."""
    weights = shape.params * BYTES["bf16"]
    seconds = 0.0
    for name in metrics:
        work = METRICS_BY_NAME[name].work
        seconds += work.prompts * work.prompt_tokens * 2 * shape.params / gpu.flops_per_s("bf16")
        steps = math.ceil(work.prompts / batch) * work.new_tokens
        seconds += steps * weights / (gpu.bandwidth_tb_s * 1e12 * gpu.bandwidth_share)
    return seconds


def load_seconds(shape: LlamaShape, dtype: str, gpu: GPU) -> float:
    """Reading a checkpoint from the shared file system."""
    return shape.params * BYTES[dtype] / (gpu.read_gb_s * GB)


def quantize_seconds(quantizer, shape: LlamaShape, calibration: dict, gpu: GPU) -> float:
    """The quantizer's own work (a QUANTIZERS row): none for full precision (no bits), one more
    pass over the weights at load for RTN and bitsandbytes, calibration for GPTQ/AWQ."""
    if quantizer.bits is None:
        return 0.0
    if not quantizer.calibrated:
        return load_seconds(shape, "bf16", gpu)
    tokens = calibration["n_samples"] * calibration["max_len"]
    forward = tokens * 2 * shape.params / gpu.flops_per_s("bf16")
    return forward + shape.layers * gpu.calibration_layer_s
