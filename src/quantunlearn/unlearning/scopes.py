"""Update scopes of the unlearning loop: which weights AdamW may move, and how they are saved.

- ``full``: every parameter (the six methods of Zhang et al.).
- ``sure``: SURE's module-level saliency mask (Zhang et al. section 6, eq. 4-6). A *module* is every
  ``nn.Module`` that directly holds parameters (``parameters(recurse=False)``): for a Llama each
  q/k/v/o/gate/up/down projection of each layer, each RMSNorm, the token embedding and
  ``lm_head``. The *candidates* (``sure_modules``) are either ``linear``, the Linear layers that
  the quantizers quantize (every nn.Linear but ``lm_head``: the attention and feed-forward
  sub-layers that Zhang et al. section 6.1 names), or ``all`` weight modules; every non-candidate is
  frozen. Its saliency is eq. 4, s_i = || grad_{theta_i} L_forget ||_F at the target
  weights: the Frobenius norm over all of the module's own parameters of the gradient of the
  method's forget loss (GA or NPO), summed over the whole forget set (batch losses weighted by
  their number of counted tokens / sequences, so it is the gradient of the loss over the whole
  set). The mask is eq. 5 with gamma = Percentile(s, gamma_pct) over the candidates' scores
  (numpy's linear interpolation), m_i = [candidate_i and s_i >= gamma]. Eq. 6 is applied for
  real: the parameters of non-salient modules get ``requires_grad = False`` and are not given
  to AdamW, so they stay bit-identical to the target's (the published code computes the mask
  but never applies it, because its ``optimizer_step`` override is never called by the HF
  Trainer).
- ``lora``: peft LoRA adapters (rank r, alpha, target modules, no dropout, no bias) on the frozen
  target (Abitante et al. section IV); after training they are merged (``merge_and_unload``) so the
  saved model, and every quantizer after it, sees W0 + (alpha / r) B A.
- ``rmu``: RMU's scope (Li et al. 2024, the WMDP code's defaults): only the MLP down-projection
  weights of decoder layers ``rmu_layer - 2 .. rmu_layer`` (those that exist) are trained; the
  loss reads the output of decoder layer ``rmu_layer`` (0-based: the residual stream after that
  layer) through a forward hook. The control vector is u ~ Uniform[0, 1)^d drawn once from the
  run's seed, normalised to unit length and scaled by ``rmu_steering``; it is saved with the
  run (``rmu_control.pt``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd

from quantunlearn.io import write_parquet
from quantunlearn.unlearning import families
from quantunlearn.unlearning.families import Family
from quantunlearn.unlearning.hyperparameters import (
    HyperparameterError,
    LATParams,
    LoRAParams,
    RMUParams,
    SUREParams,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from quantunlearn.unlearning.lat import LatentAdversary

#: peft target modules of each `lora_targets` choice (Llama projection names).
LORA_TARGETS = {
    "all_linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}
SURE_MODULES = ("linear", "all")
SALIENCY_FILE = "saliency.parquet"
ADAPTER_DIR = "lora_adapter"
CONTROL_FILE = "rmu_control.pt"


@dataclass
class Trainable:
    """What the loop trains: the model, the parameters AdamW updates, the frozen reference."""

    model: nn.Module
    params: list
    #: (input_ids, attention_mask) -> the frozen target's logits (RMU: its activations of the
    #: steered layer); None if the method needs none
    reference: Callable | None
    #: SURE: the saliency scores and mask, saved with the run
    saliency: pd.DataFrame | None = None
    info: dict = field(default_factory=dict)
    #: RMU: the steered layer's activations and the control vector
    steering: Steering | None = None
    #: LoRA: adapters merged into the weights before saving (and the adapter saved beside)
    adapters: bool = False
    #: names of the saved model's parameters that training may change (the scope's contract)
    may_change: set[str] = field(default_factory=set)
    #: RMU_LAT: the latent adversary, run on every batch before its optimizer step(s)
    adversary: LatentAdversary | None = None
    #: optimizer steps per batch (RMU_LAT: lat_model_steps on the same batch and attack)
    steps_per_batch: int = 1

    def final_model(self) -> nn.Module:
        """The model to save: LoRA adapters merged into the weights, else the model itself."""
        return self.model.merge_and_unload() if self.adapters else self.model

    def save_extras(self, folder: str | Path) -> None:
        """SURE's saliency, the LoRA adapter (before merging), RMU's control vector."""
        import torch

        folder = Path(folder)
        if self.saliency is not None:
            write_parquet(self.saliency, folder / SALIENCY_FILE)
        if self.adapters:
            self.model.save_pretrained(folder / ADAPTER_DIR)
        if self.steering is not None:
            torch.save(
                {"layer": self.steering.layer, "control": self.steering.control.cpu()},
                folder / CONTROL_FILE,
            )


class Scope:
    """Which weights a method trains. ``build`` turns the loaded target into a `Trainable`."""

    params: ClassVar[tuple[type, ...]] = ()
    #: the family of the methods with this scope in the mitigation tables (None: base)
    family: ClassVar[Family | None] = None

    #: a method that needs the frozen target keeps a copy of its weights (LoRA: no, the
    #: adapter-free model is the reference)
    copies_reference: ClassVar[bool] = True
    #: the loss reads the vocabulary logits (RMU: the activations of one layer, no lm_head)
    reads_logits: ClassVar[bool] = True
    #: the trained parameters' dtype when it is not the weight dtype (LoRA: peft keeps bf16
    #: models' adapters in fp32)
    trained_dtype: ClassVar[str | None] = None
    #: the hyperparameter that sets the optimizer steps taken on each batch (None: one)
    steps_key: ClassVar[str | None] = None

    def build(self, model, method, run, forget: list, pad_id: int, batch_size: int) -> Trainable:
        raise NotImplementedError

    def steps_per_batch(self, run) -> int:
        """Optimizer steps on each batch (RMU_LAT: ``lat_model_steps`` per attack)."""
        return int(getattr(run, self.steps_key)) if self.steps_key else 1

    def trained_params(self, shape, run) -> int:
        """Parameters AdamW updates, for a `LlamaShape` (an upper bound where the run chooses:
        SURE's mask)."""
        return shape.params

    def graph_layers(self, shape, run) -> int:
        """Decoder layers whose activations the backward pass keeps."""
        return shape.layers

    def layer_extra_bytes(self, shape, run, weight_bytes: int) -> int:
        """Bytes per token that the scope's own modules save in one decoder layer."""
        return 0

    def check(self, run) -> None:
        """Checks across hyperparameter groups (raise `HyperparameterError` naming the key)."""


def _names(model, params) -> set[str]:
    """The names of ``params`` in ``model``."""
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def _frozen_copy(model):
    import torch

    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)

    @torch.no_grad()
    def reference(ids, mask):
        return ref(input_ids=ids, attention_mask=mask).logits

    return reference


class Full(Scope):
    """Every parameter (the six methods of Zhang et al.)."""

    def build(self, model, method, run, forget, pad_id, batch_size):
        reference = _frozen_copy(model) if method.needs_reference else None
        params = list(model.parameters())
        return Trainable(model, params, reference, may_change=_names(model, params))


class SUREWithoutSaliency(Full):
    """SURE/S (Zhang et al. appendix I, Table 10): SURE without the saliency map, i.e. every
    parameter at SURE's learning rate and retain weights; a scope of its own only so that the
    tables tell it from the base methods."""

    family = families.SURE_S


# --------------------------------------------------------------------------- SURE


def weight_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module that directly holds parameters, by name (SURE's unit of saliency)."""
    return {
        name: module
        for name, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False))
    }


def module_saliency(
    model: nn.Module,
    forget_seqs: Sequence[Sequence[int]],
    pad_id: int,
    method,
    run,
    *,
    batch_size: int,
) -> pd.DataFrame:
    """Zhang et al. eq. 4 for every weight module: one row per module with its score s_i.

    The gradient of the method's forget loss over the whole forget set, at the model's current
    weights: each batch's loss is weighted by its share of the mean over the set (the forget
    term's ``batch_weight``: counted tokens for GA, sequences for NPO). At these weights NPO's
    reference is the model itself, as in the first unlearning step. Columns: module, n_params,
    saliency; the model's gradients are cleared afterwards.
    """
    from quantunlearn.models.training import collate
    from quantunlearn.unlearning.objectives import Step

    device = next(model.parameters()).device
    model.zero_grad(set_to_none=True)
    for start in range(0, len(forget_seqs), batch_size):
        batch = collate(forget_seqs[start : start + batch_size], pad_id, device)
        step = Step(model, None, batch, None)
        loss = method.forget.loss(step, run) * method.forget.batch_weight(step, run)
        loss.backward()
    rows = []
    for name, module in weight_modules(model).items():
        sq = 0.0
        n = 0
        for p in module.parameters(recurse=False):
            n += p.numel()
            if p.grad is not None:
                sq += float(p.grad.detach().float().pow(2).sum())
        rows.append((name, n, sq**0.5))
    model.zero_grad(set_to_none=True)
    frame = pd.DataFrame(rows, columns=["module", "n_params", "saliency"])
    frame["n_params"] = frame["n_params"].astype("int64")
    return frame


def sure_candidates(model: nn.Module, modules: str) -> set[str]:
    """The names of the modules SURE may select: ``linear`` (the quantized Linears) or ``all``."""
    from quantunlearn.quantizers import quantizable_linears

    if modules not in SURE_MODULES:
        raise ValueError(f"unknown sure_modules {modules!r}; known: {SURE_MODULES}")
    if modules == "all":
        return set(weight_modules(model))
    return set(quantizable_linears(model))


def saliency_mask(
    saliency: pd.DataFrame, gamma_pct: float, candidates: set[str] | None = None
) -> pd.DataFrame:
    """Zhang et al. eq. 5 over the candidates: salient = candidate and s_i >=
    Percentile(s, gamma_pct).

    Adds the columns candidate, threshold and salient (all modules are candidates by default).
    """
    if not 0 <= gamma_pct <= 100:
        raise ValueError(f"gamma_pct must be a percentile in [0, 100], got {gamma_pct}")
    out = saliency.copy()
    out["candidate"] = out["module"].isin(candidates) if candidates is not None else True
    if not out["candidate"].any():
        raise ValueError("SURE has no candidate module to select from")
    scores = out.loc[out["candidate"], "saliency"].to_numpy()
    threshold = float(np.percentile(scores, gamma_pct))
    out["threshold"] = threshold
    out["salient"] = out["candidate"] & (out["saliency"] >= threshold)
    return out


def apply_module_mask(model: nn.Module, mask: pd.DataFrame) -> list[nn.Parameter]:
    """Freeze every parameter of the non-salient modules; return the salient ones (eq. 6).

    A parameter shared by several modules (tied embeddings) is trained if any of them is salient.
    """
    modules = weight_modules(model)
    salient = {id(p) for name in mask.loc[mask["salient"], "module"] for p in _own(modules[name])}
    params = []
    for p in model.parameters():
        trained = id(p) in salient
        p.requires_grad_(trained)
        if trained:
            params.append(p)
    if not params:
        raise ValueError("the SURE mask selects no module: nothing would be unlearned")
    return params


def _own(module: nn.Module):
    return module.parameters(recurse=False)


class SURE(Scope):
    """SURE's module-level saliency mask (Zhang et al. section 6, eq. 4-6; module docstring)."""

    params = (SUREParams,)
    family = families.SURE

    def build(self, model, method, run, forget, pad_id, batch_size):
        reference = _frozen_copy(model) if method.needs_reference else None
        candidates = sure_candidates(model, run.sure_modules)
        scores = module_saliency(model, forget, pad_id, method, run, batch_size=batch_size)
        mask = saliency_mask(scores, run.gamma_pct, candidates)
        params = apply_module_mask(model, mask)
        info = {
            "salient_modules": int(mask["salient"].sum()),
            "modules": len(mask),
            "salient_params": int(sum(p.numel() for p in params)),
            "saliency_threshold": float(mask["threshold"].iloc[0]),
        }
        return Trainable(model, params, reference, mask, info, may_change=_names(model, params))


# --------------------------------------------------------------------------- LoRA


class LoRA(Scope):
    """peft LoRA adapters on the frozen target, merged before saving (Abitante et al. section
    IV); the reference is the adapter-free model (peft's ``disable_adapter()`` computes with W0,
    so no copy of the weights is needed).

    Gradient checkpointing trap: with checkpointing on, the frozen embeddings give outputs that
    do not require grad, and the checkpointed LoRA layers then get no gradient at all, so input
    grads are enabled whenever the model checkpoints.
    """

    params = (LoRAParams,)
    family = families.LORA
    copies_reference = False
    trained_dtype = "fp32"

    def trained_params(self, shape, run) -> int:
        """r x (in + out) per adapted projection (A: r x in, B: out x r), every layer."""
        linears = shape.linear_shapes
        per_layer = sum(sum(linears[name]) for name in LORA_TARGETS[run.lora_targets])
        return int(run.lora_rank) * per_layer * shape.layers

    def layer_extra_bytes(self, shape, run, weight_bytes: int) -> int:
        """Per adapted projection: A's output (r, fp32), and with bf16 weights peft's fp32
        copy of the projection's input (cast to the adapters' dtype)."""
        names = LORA_TARGETS[run.lora_targets]
        cast = sum(shape.linear_shapes[n][0] for n in names) if weight_bytes != 4 else 0
        return 4 * (cast + int(run.lora_rank) * len(names))

    def build(self, model, method, run, forget, pad_id, batch_size):
        import torch
        from peft import LoraConfig, get_peft_model

        if run.lora_targets not in LORA_TARGETS:
            raise ValueError(
                f"unknown lora_targets {run.lora_targets!r}; known: {sorted(LORA_TARGETS)}"
            )
        config = LoraConfig(
            r=int(run.lora_rank),
            lora_alpha=float(run.lora_alpha),
            target_modules=list(LORA_TARGETS[run.lora_targets]),
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(model, config)
        base = peft_model.get_base_model()
        checkpointing = getattr(base, "is_activation_checkpointing", None)
        if checkpointing is None:  # transformers < 5.x names it is_gradient_checkpointing
            checkpointing = getattr(base, "is_gradient_checkpointing", False)
        if checkpointing:
            peft_model.enable_input_require_grads()
        params = [p for p in peft_model.parameters() if p.requires_grad]
        reference = None
        if method.needs_reference:

            @torch.no_grad()
            def reference(ids, mask):
                with peft_model.disable_adapter():
                    return peft_model(input_ids=ids, attention_mask=mask).logits

        info = {"lora_trainable_params": int(sum(p.numel() for p in params))}
        adapted = {f"{name}.weight" for name, m in base.named_modules() if hasattr(m, "lora_A")}
        return Trainable(
            peft_model, params, reference, info=info, adapters=True, may_change=adapted
        )


# --------------------------------------------------------------------------- RMU


def layer_activations(model: nn.Module, layer: int, ids: torch.Tensor, mask: torch.Tensor):
    """The output of decoder layer ``layer`` (the residual stream after it), ``[B, T, d]``."""
    from quantunlearn.models.loading import decoder_layers

    captured = []

    def hook(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    decoder = model.get_decoder()
    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        decoder(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        handle.remove()
    return captured[0]


@dataclass
class Steering:
    """RMU's steered layer and control vector c * u."""

    layer: int
    control: torch.Tensor  # [d]

    def activations(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor):
        return layer_activations(model, self.layer, ids, mask)


def control_vector(hidden_size: int, steering: float, seed: int) -> torch.Tensor:
    """c * u with u ~ Uniform[0, 1)^d normalised to unit length (the WMDP code's draw)."""
    import torch

    if not steering > 0:
        raise ValueError(f"rmu_steering must be > 0, got {steering}")
    u = torch.rand(hidden_size, generator=torch.Generator().manual_seed(seed))
    return steering * u / u.norm()


class RMU(Scope):
    """RMU's scope (Li et al. 2024): the down-projections of layers rmu_layer-2..rmu_layer; the
    reference is a frozen copy's activations at ``rmu_layer``."""

    params = (RMUParams,)
    family = families.RMU
    reads_logits = False

    def trained_params(self, shape, run) -> int:
        """The down-projections (intermediate x hidden) of layers rmu_layer-2..rmu_layer."""
        return self.graph_layers(shape, run) * shape.intermediate * shape.hidden

    def graph_layers(self, shape, run) -> int:
        """Only the trained layers keep activations: the frozen ones below see no input that
        needs a gradient, and the layers above do not reach the loss."""
        return min(int(run.rmu_layer) + 1, 3)

    def build(self, model, method, run, forget, pad_id, batch_size):
        import torch

        from quantunlearn.models.loading import decoder_layers

        layer = int(run.rmu_layer)
        layers = decoder_layers(model)
        if not 0 <= layer < len(layers):
            raise ValueError(
                f"rmu_layer {layer} does not exist: the model has {len(layers)} decoder layers "
                f"(0..{len(layers) - 1})"
            )
        trained_layers = list(range(max(0, layer - 2), layer + 1))
        trained = []
        for i in trained_layers:
            down = getattr(getattr(layers[i], "mlp", None), "down_proj", None)
            if down is None:
                raise ValueError(f"RMU trains mlp.down_proj, which decoder layer {i} does not have")
            trained.append(down.weight)
        ids = {id(p) for p in trained}
        for p in model.parameters():
            p.requires_grad_(id(p) in ids)
        frozen = copy.deepcopy(model).eval()
        frozen.requires_grad_(False)
        device = next(model.parameters()).device
        control = control_vector(model.config.hidden_size, run.rmu_steering, run.seed).to(device)

        @torch.no_grad()
        def reference(ids_, mask):
            return layer_activations(frozen, layer, ids_, mask)

        info = {
            "rmu_trained_layers": trained_layers,
            "rmu_trained_params": int(sum(p.numel() for p in trained)),
        }
        steering = Steering(layer, control)
        may_change = _names(model, trained)
        return Trainable(
            model, trained, reference, info=info, steering=steering, may_change=may_change
        )


class RMULAT(RMU):
    """RMU_LAT (Zhang et al. appendix J): RMU's scope, and a latent adversary
    (`quantunlearn.unlearning.lat`) that perturbs the residual stream after decoder layer
    ``lat_layer`` on every batch; the loop applies the perturbation to the forget activation pass
    and takes ``lat_model_steps`` optimizer steps per attack."""

    params = (RMUParams, LATParams)
    steps_key = "lat_model_steps"

    def check(self, run) -> None:
        if not run.lat_layer < run.rmu_layer:
            raise HyperparameterError(
                "lat_layer",
                f"the perturbation must act below RMU's steered layer (rmu_layer "
                f"{run.rmu_layer}; Sheshadri et al. attack the layer just below), got "
                f"{run.lat_layer}",
            )

    def build(self, model, method, run, forget, pad_id, batch_size):
        from quantunlearn.unlearning.lat import LatentAdversary

        trainable = super().build(model, method, run, forget, pad_id, batch_size)
        trainable.adversary = LatentAdversary(
            int(run.lat_layer), run.lat_epsilon, int(run.lat_steps), run.lat_lr, run.lat_away
        )
        trainable.steps_per_batch = self.steps_per_batch(run)
        return trainable
