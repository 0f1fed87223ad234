"""The latent adversary of RMU_LAT (Zhang et al. appendix J, Table 11): RMU (Li et al. 2024)
trained against the targeted latent adversarial training of Sheshadri et al. 2024, "Targeted
Latent Adversarial Training Improves Robustness to Persistent Harmful Behaviors in LLMs".

Zhang et al. name the method and its learning-rate grid only; the adversary follows the public
RMU + LAT code of Sheshadri et al. (repository aengusl/latent-adversarial-training,
``latent_at/lat_methods.py`` ``run_rmu`` and ``laa/attacks.py``; defaults in
`quantunlearn.unlearning.hyperparameters.LATParams`):

* a perturbation delta[b, t, :] of the residual stream, one d-vector per token, added to the
  output of decoder layer ``lat_layer`` (their code wraps that layer's MLP, whose output is added
  straight into the residual stream: the same sum), only at the forget batch's real tokens;
* started at zero for every batch, then ``lat_steps`` AdamW steps (lr ``lat_lr``, PyTorch's
  default weight decay 0.01, as their code leaves it) on the adversary's loss, each followed by
  the projection of every token's vector onto the L2 ball of radius ``lat_epsilon``;
* the adversary's loss (minimised): the forget batch's cross-entropy ("toward": make the model
  say the forgotten text again) + ``lat_away`` x -log(1 - p) on the retain batch ("away"), both
  with the perturbation applied (the same delta at the same positions: their code pads the two
  batches to one shape, so do we); the model gets no gradient during the search.

The RMU step(s) that follow run the forget activation pass with the found delta applied and the
retain and frozen passes clean, and update only RMU's scope (`scopes.RMULAT`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from quantunlearn.models.loading import decoder_layers
from quantunlearn.models.training import IGNORE


def project_l2_ball(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Each token's vector (last dim) scaled back onto the L2 ball of radius epsilon."""
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    norms = delta.norm(dim=-1, keepdim=True)
    return delta * torch.clamp(epsilon / norms.clamp_min(torch.finfo(delta.dtype).tiny), max=1.0)


class LatentPerturbation:
    """Context manager: adds ``delta * attack_mask`` to the output of decoder layer ``layer``.

    ``delta`` is ``[B, T, d]``, ``attack_mask`` ``[B, T]`` (True where it applies); a forward pass
    whose batch is not ``[B, T]`` raises (the perturbation is per token of one batch).
    """

    def __init__(self, model: nn.Module, layer: int, delta: torch.Tensor, attack_mask):
        layers = decoder_layers(model)
        if not 0 <= layer < len(layers):
            raise ValueError(f"lat_layer {layer} does not exist (the model has {len(layers)})")
        if delta.dim() != 3 or tuple(attack_mask.shape) != tuple(delta.shape[:2]):
            raise ValueError(
                f"delta must be [B, T, d] and attack_mask [B, T]; got {tuple(delta.shape)} and "
                f"{tuple(attack_mask.shape)}"
            )
        self.module, self.delta, self.mask = layers[layer], delta, attack_mask.to(torch.bool)
        self.handle = None

    def _hook(self, _module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if hidden.shape[:2] != self.delta.shape[:2]:
            raise ValueError(
                f"the perturbation is for batches of shape {tuple(self.delta.shape[:2])}, "
                f"the forward pass has {tuple(hidden.shape[:2])}"
            )
        add = self.delta * self.mask.unsqueeze(-1).to(self.delta.dtype)
        hidden = hidden + add.to(device=hidden.device, dtype=hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def __enter__(self):
        self.handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        self.handle = None
        return False


@dataclass
class PGDResult:
    delta: torch.Tensor  # [B, T, d], zero outside the attack mask, every token in the ball
    losses: list[float] = field(default_factory=list)  # adversary loss before each step
    final_loss: float = float("nan")  # adversary loss at the returned delta


def latent_pgd(
    model: nn.Module,
    layer: int,
    attack_mask: torch.Tensor,
    loss_fn: Callable[[nn.Module], torch.Tensor],
    *,
    epsilon: float,
    steps: int,
    lr: float,
    weight_decay: float = 0.01,
) -> PGDResult:
    """The adversary's perturbation: from zero, ``steps`` AdamW steps on ``loss_fn`` (minimised),
    each followed by the per-token L2 projection onto the epsilon ball. The model's parameters get
    no gradient and are not changed (their ``requires_grad`` flags are restored afterwards)."""
    if steps < 0 or not lr > 0:
        raise ValueError(f"the adversary needs steps >= 0 and lr > 0, got {steps} and {lr}")
    param = next(model.parameters())
    mask = attack_mask.to(device=param.device, dtype=torch.bool)
    m = mask.unsqueeze(-1).float()
    delta = torch.zeros((*mask.shape, model.config.hidden_size), device=param.device)
    delta.requires_grad_(True)
    opt = torch.optim.AdamW([delta], lr=lr, weight_decay=weight_decay)
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    losses = []
    try:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            with LatentPerturbation(model, layer, delta, mask):
                loss = loss_fn(model)
            loss.backward()
            losses.append(loss.item())
            opt.step()
            with torch.no_grad():
                delta.copy_(project_l2_ball(delta, epsilon) * m)
        with torch.no_grad(), LatentPerturbation(model, layer, delta, mask):
            final = loss_fn(model).item()
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    return PGDResult(delta.detach(), losses, final)


def pad_batch(batch: dict, rows: int, width: int) -> dict:
    """A collated batch cut or right-padded (rows and positions) to ``[rows, width]``, padding
    with attention 0 and label IGNORE, so that the forget and retain batches share the
    perturbation's shape (as the published code pads both)."""
    out = {}
    for key, fill in (("input_ids", 0), ("attention_mask", 0), ("labels", IGNORE)):
        x = batch[key][:rows, :width]
        pad = (0, width - x.shape[1], 0, rows - x.shape[0])
        out[key] = torch.nn.functional.pad(x, pad, value=fill)
    return out


def adversary_loss(forget: dict, retain: dict | None, away: float):
    """The published RMU + LAT adversary objective as ``loss_fn(model)`` for `latent_pgd`:
    CE(forget) + away * away_loss(retain) (the retain term off when ``retain`` is None or
    ``away`` is 0)."""
    from quantunlearn.unlearning import losses

    def loss_fn(model: nn.Module) -> torch.Tensor:
        out = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"])
        loss = losses.nll(out.logits, forget["labels"])
        if retain is not None and away:
            out_r = model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"])
            loss = loss + away * losses.away_loss(out_r.logits, retain["labels"])
        return loss

    return loss_fn


@dataclass
class LatentAdversary:
    """RMU_LAT's adversary with one run's settings; ``attack`` finds delta for one batch."""

    layer: int
    epsilon: float
    steps: int
    lr: float
    away: float

    def attack(self, model: nn.Module, forget: dict, retain: dict | None) -> Attack:
        rows, width = forget["input_ids"].shape
        use_retain = retain is not None and self.away > 0
        if use_retain:
            width = max(width, retain["input_ids"].shape[1])
        f = pad_batch(forget, rows, width)
        r = pad_batch(retain, rows, width) if use_retain else None
        mask = f["attention_mask"].bool()
        result = latent_pgd(
            model, self.layer, mask, adversary_loss(f, r, self.away),
            epsilon=self.epsilon, steps=self.steps, lr=self.lr,
        )  # fmt: skip
        t = forget["input_ids"].shape[1]
        return Attack(self.layer, result.delta[:, :t], forget["attention_mask"].bool(), result)


@dataclass
class Attack:
    """A found perturbation, applied to the forget activation pass of the RMU step(s)."""

    layer: int
    delta: torch.Tensor
    mask: torch.Tensor
    result: PGDResult

    def applied(self, model: nn.Module) -> LatentPerturbation:
        return LatentPerturbation(model, self.layer, self.delta, self.mask)
