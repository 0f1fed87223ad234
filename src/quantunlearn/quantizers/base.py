"""The quantizer interface: what every backend of the QUANTIZERS table implements.

A quantizer is a parsed name (``rtn_w4g128``, ``bnb_nf4``, ...): a frozen dataclass holding its
bit width and grouping, whose class says what the workflow needs to know about it (is its
checkpoint a DAG output? does it need the target model or calibration text? can the unlearning
job run it?) and how to quantize: ``load`` returns the quantized model, ready for generation;
``effective_weights`` returns, for every quantized Linear, the fp32 [out, in] weight that model
really computes with, so weight-space analyses (Zhang et al. section 5) use the numbers of the
forward pass. A backend that quantizes each weight on its own from its plain value (RTN, GGUF)
implements ``quantize_weight`` and inherits ``load`` (fake quantization in an fp32 model).

The modules of this package import torch and the quantization libraries inside their functions,
so that the workflow can parse names and check configs without loading torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import nn

# Modules never quantized: the output projection, as bitsandbytes/GPTQ/AWQ do by default.
SKIP_MODULES = ["lm_head"]
LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def file_type_of(name: str, prefix: str, types, label: str) -> str | None:
    """The file type a ``{prefix}{type}`` quantizer name asks for (None: not this prefix); an
    unknown type is an error that lists the `types` (GGUF emulated and llama.cpp rows)."""
    if not name.startswith(prefix):
        return None
    kind = name.removeprefix(prefix)
    if kind not in types:
        raise ValueError(
            f"unknown quantizer {name!r}: {label} are " + ", ".join(f"{prefix}{t}" for t in types)
        )
    return kind


def layer_of(name: str) -> int | None:
    """The decoder layer index in a parameter or module name (``model.layers.3.mlp...`` -> 3)."""
    match = LAYER_RE.search(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Quantizer:
    """A parsed quantizer name. Subclasses set the class attributes and implement ``parse``,
    ``load`` (or ``quantize_weight``) and, where the model is not a plain fp32 one,
    ``effective_weights``."""

    name: str
    bits: int | None = None
    #: consecutive input columns sharing one scale; None: one scale per output channel
    group_size: int | None = None

    #: regex of the names this family accepts (the config schema's pattern is their union)
    PATTERN: ClassVar[str]
    #: how the names are written, for error messages
    SYNTAX: ClassVar[str]
    #: the `quantize` rule writes its checkpoint (GPTQ, AWQ); `load` then needs ``quant_dir``
    stored: ClassVar[bool] = False
    #: GPTQ/AWQ calibrate on text (config key `calibration`)
    calibrated: ClassVar[bool] = False
    #: `load` needs the target model (the noflip counterfactual)
    needs_target: ClassVar[bool] = False
    #: the config key `bnb_compute_dtype` changes its results (bitsandbytes 4-bit)
    uses_compute_dtype: ClassVar[bool] = False
    #: a counterfactual for the diagnostics, not a quantizer anyone deploys
    counterfactual: ClassVar[bool] = False
    #: `load` returns a `RuntimeModel` that evaluates outside torch (llama.cpp)
    runtime: ClassVar[bool] = False
    #: a name of this family, for the contract tests and the docs
    EXAMPLE: ClassVar[str]

    @classmethod
    def parse(cls, name: str) -> Quantizer | None:
        """The quantizer named ``name``, None if the name is not of this family; ValueError
        (naming the problem) if it is of this family but not a valid one."""
        raise NotImplementedError

    @property
    def is_quantized(self) -> bool:
        return True

    @property
    def quantizes_activations(self) -> bool:
        """Whether the forward also quantizes activations (LLM.int8), so that a model rebuilt
        from the effective weights computes close to, not exactly, the quantized model."""
        return False

    @property
    def batch_invariant(self) -> bool:
        """Whether each row of a batch computes what it computes alone (up to floating-point
        rounding), so that generation may share a prompt prefix and regroup rows
        (`quantunlearn.evaluation.generation`); False where a batch's rows change each other's
        numbers (LLM.int8 picks its outlier columns over the whole batch)."""
        return True

    @property
    def runs_in_unlearning_job(self) -> bool:
        """QUAIL's quantizer-derived margin quantizes the target inside the unlearning job:
        possible unless the quantizer needs a stored checkpoint or the target as a second model."""
        return self.is_quantized and not self.stored and not self.needs_target

    @property
    def block(self) -> int | None:
        """Input columns that must divide every Linear's input size (checked at parse time on
        the tiny models); None when any size works."""
        return self.group_size

    @property
    def block_description(self) -> str:
        """What ``block`` is, for the config error when it does not divide a weight."""
        return f"group size {self.block}"

    @property
    def nominal_grid(self) -> tuple[int, int | None]:
        """(bits, group) of the symmetric absmax grid whose half step the diagnostics compare
        weight changes with (its own grid for RTN, the nominal one of that width for others)."""
        return self.bits, self.group_size

    @property
    def diagnosable(self) -> bool:
        """Whether the weight diagnostics (`evaluation.diagnostics`, steps of a symmetric absmax
        grid of at most 8 bits) can analyse it."""
        return self.is_quantized and not self.counterfactual

    @property
    def diagnosed_as(self) -> Quantizer:
        """The quantizer the weight diagnostics analyse for this one (noflip: its RTN base)."""
        return self

    def codes(self, weight: torch.Tensor) -> torch.Tensor | None:
        """Integer codes of a weight when the quantizer has a shared code book (RTN), so that
        bucket overlap compares codes; None: overlap compares effective weights."""
        return None

    def quantize_weight(self, weight: torch.Tensor, name: str, n_layers: int) -> torch.Tensor:
        """Q(w) of one [out, in] Linear weight (module ``name`` of an ``n_layers`` model), for
        quantizers that quantize each weight from its plain value (RTN, GGUF)."""
        raise NotImplementedError(f"{self.name} does not quantize a weight on its own")

    @property
    def shares_codes(self) -> bool:
        """Whether ``codes`` is implemented (bucket overlap compares integer codes)."""
        return type(self).codes is not Quantizer.codes

    @property
    def weightwise(self) -> bool:
        """Whether ``quantize_weight`` is implemented (the diagnostics need no model load)."""
        return type(self).quantize_weight is not Quantizer.quantize_weight

    def load(
        self,
        model_path: str,
        *,
        compute_dtype: str = "fp32",
        quant_dir: str | None = None,
        target_path: str | None = None,
        tokenizer: str | None = None,
    ) -> nn.Module | RuntimeModel:
        """The saved model at ``model_path`` quantized, in eval mode (CUDA if available);
        ``tokenizer``: the folder of its tokenizer, for a quantizer that writes it into the
        quantized file (llama.cpp's GGUF).

        Default: fake quantization, an fp32 model whose quantized Linears hold Q(w)."""
        import torch

        from quantunlearn.models.loading import load_model

        model = load_model(model_path, "fp32")
        n_layers = getattr(model.config, "num_hidden_layers", 1)
        with torch.no_grad():
            for name, module in quantizable_linears(model).items():
                module.weight.copy_(self.quantize_weight(module.weight, name, n_layers))
        return model.eval()

    def effective_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """{module name: fp32 [out, in] weight} of each quantized Linear, as the model computes.

        Default: the weight itself (fake-quantized fp32 models, and 'none')."""
        import torch

        weights = {}
        for name, module in quantizable_linears(model).items():
            if type(module).__module__.startswith("bitsandbytes"):
                raise ValueError(
                    f"{name} is a bitsandbytes {type(module).__name__}, but the quantizer is "
                    f"{self.name!r}; use the quantizer the model was loaded with"
                )
            weights[name] = module.weight.detach().to(torch.float32)
        return weights


class RuntimeModel:
    """A quantized model that computes in another runtime than torch (llama.cpp), as a
    quantizer's ``load`` returns it. The evaluation's two entry points hand it token ids of the
    cell's own tokenizer: `evaluation.generation.greedy_generate` calls ``greedy_ids`` and
    `evaluation.muse_metrics.min_k_scores` calls ``token_log_probs``; everything else (prompts, stop
    rules, decoding, scores) is the torch cells' code. Calling it as a torch module is an error
    naming what it supports."""

    name: str

    def greedy_ids(self, prompt_ids, max_new_tokens: int, end_ids, stop) -> list[list[int]]:
        """Greedy generated ids of each prompt, ending at a token of ``end_ids``, when
        ``stop(generated ids)`` is true, or after ``max_new_tokens``."""
        raise NotImplementedError

    def token_log_probs(self, ids: list[int]):
        """log p(x_i | x_<i) for i = 2..n of one sequence (numpy, fp64)."""
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"{self.name} evaluates in its own runtime: greedy generation (VerbMem, KnowMem, "
            "RWKU's probes) and Min-K% (PrivLeak) only; this metric needs a torch forward"
        )


def quantizable_linears(model: nn.Module) -> dict[str, nn.Module]:
    """The Linear layers that get quantized, by module name (their weight is `name + ".weight"`).

    Every `nn.Linear` of the model except the output projection (`lm_head`), i.e. for a Llama the
    q/k/v/o/gate/up/down projections of every decoder layer. This matches the default of
    bitsandbytes/GPTQ/AWQ and the paper's setup. In a bitsandbytes model these modules are
    `Linear8bitLt` / `Linear4bit` (both subclasses of `nn.Linear`).
    """
    from torch import nn

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linears = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and module is not output
        and name.split(".")[-1] not in SKIP_MODULES
    }
    if not linears:
        raise ValueError(f"{type(model).__name__} has no Linear layer to quantize")
    return linears


def relative_error(w: torch.Tensor, q: torch.Tensor) -> float:
    """Relative Frobenius error ||w - q|| / ||w||, in fp64 (0 if both are 0, inf if only w)."""
    import math

    import torch

    w64, q64 = w.detach().double(), q.detach().double().to(w.device)
    denom = torch.linalg.vector_norm(w64).item()
    num = torch.linalg.vector_norm(w64 - q64).item()
    if denom == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / denom
