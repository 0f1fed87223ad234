"""Unlearning losses as pure functions of logits.

Shapes: ``logits`` is ``[B, T, V]`` (the model's output for ``input_ids`` ``[B, T]``); ``labels``
is ``[B, T]`` with ``IGNORE`` (-100) at positions that carry no loss (padding), exactly as
transformers' causal-LM loss expects; the shift (token t predicts token t+1) happens here.

Two forms exist for NPO and KLR (config key ``npo_klr_form``):

- ``paper`` (default): the definitions of Zhang et al. appendix B. NPO (eq. 8) on the *sequence*
  log-likelihood ratio log f_theta(x) - log f_target(x), summed over the sequence's tokens, as
  in the NPO paper (Zhang et al. 2024). KLR (eq. 10) as KL(p_target || p_current) over the
  vocabulary at every retain token, averaged over tokens, with the target frozen: the direction
  used by the NPO/TOFU reference code (eq. 10's comma notation leaves the order open).
- ``muse``: the forms of the MUSE / FailureLLMUnlearning code (baselines/iterative.py), kept so
  that a user can match published numbers. NPO is applied *elementwise to raw logits*:
  ``-logsigmoid(beta * (ref_logits - logits)).mean() * 2 / beta`` over all of ``[B, T, V]``,
  padding included; "KL" is ``F.kl_div(logits, ref_logits, reduction="batchmean",
  log_target=True)``, i.e. raw logits treated as log-probabilities, summed over ``[T, V]`` and
  divided by B. Neither is a log-likelihood ratio or a KL divergence; both still push in the
  intended direction, with very different scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from quantunlearn.models.training import IGNORE

FORMS = ("paper", "muse")


def _shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align position t's logits with token t+1."""
    # labels to the logits' device: a model spread over GPUs (device_map) ends on the last one
    return logits[:, :-1, :].float(), labels[:, 1:].to(logits.device)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of every next token, ``[B, T-1]``, and the mask of positions that count."""
    logits, labels = _shift(logits, labels)
    mask = labels != IGNORE
    safe = labels.masked_fill(~mask, 0)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token negative log-likelihood over all counted tokens of the batch.

    The same reduction as transformers' causal-LM loss (``outputs.loss``), which the papers use
    for GA (eq. 7, with the sign flipped) and GDR (eq. 9).
    """
    logp, mask = token_logprobs(logits, labels)
    return -logp.sum() / mask.sum().clamp(min=1)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log f(x) = sum_t log f(x_t | x_<t) for each sequence, ``[B]``."""
    logp, _ = token_logprobs(logits, labels)
    return logp.sum(dim=1)


def ga_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient ascent, Zhang et al. eq. 7: minimise E[log f(x_t | x_<t)] = -NLL on the forget
    set."""
    return -nll(logits, labels)


def npo_loss(
    logits: torch.Tensor,
    ref_logits: torch.Tensor,
    labels: torch.Tensor,
    beta: float = 0.1,
    form: str = "paper",
) -> torch.Tensor:
    """Negative preference optimisation, Zhang et al. eq. 8 (Zhang et al. 2024):

    L = -(2 / beta) * E_x[ log sigmoid( -beta * (log f_theta(x) - log f_target(x)) ) ].

    At f_theta == f_target the loss is (2 / beta) * log 2. ``form="muse"``: see the module doc.
    """
    _check_form(form)
    if beta <= 0:
        raise ValueError(f"NPO beta must be > 0, got {beta}")
    if form == "muse":
        neg_log_ratio = ref_logits.float() - logits.float()
        return -F.logsigmoid(beta * neg_log_ratio).mean() * 2 / beta
    log_ratio = sequence_logprob(logits, labels) - sequence_logprob(ref_logits.detach(), labels)
    return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()


def gdr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient descent on the retain set, Zhang et al. eq. 9: the retain NLL."""
    return nll(logits, labels)


def klr_loss(
    logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, form: str = "paper"
) -> torch.Tensor:
    """KL regulariser on the retain set, Zhang et al. eq. 10.

    paper: mean over counted retain tokens of KL(p_target(.|x_<t) || p_theta(.|x_<t)), with
    the target frozen. ``form="muse"``: see the module doc.
    """
    _check_form(form)
    if form == "muse":
        return F.kl_div(
            logits.float(), ref_logits.float().detach(), reduction="batchmean", log_target=True
        )
    cur, shifted = _shift(logits, labels)
    ref, _ = _shift(ref_logits.detach(), labels)
    mask = shifted != IGNORE
    log_p_ref = torch.log_softmax(ref, dim=-1)
    log_p_cur = torch.log_softmax(cur, dim=-1)
    kl = (log_p_ref.exp() * (log_p_ref - log_p_cur)).sum(dim=-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def quail_hinge(
    logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, delta: float
) -> torch.Tensor:
    """QUAIL's quantization-aware hinge, Mishra and Mehreen eq. 14 and 18:

    L = mean over counted positions t of (1/K) sum_k max(0, delta/2 - |z'_tk - z_tk|),

    z' the current and z the (frozen, cached) target logits over the K vocabulary entries. A
    position counts when it holds a real token (``labels != IGNORE``); unlike the published
    code, padding positions are masked out, so the margin is never enforced on logits that no
    text produced. Zero once every counted logit is at least delta/2 away from the target's;
    below the margin its gradient w.r.t. z' is -sign(z' - z) / (K * positions), which pushes
    |z' - z| up (eq. 19).
    """
    if not delta > 0:
        raise ValueError(f"the QUAIL margin delta must be > 0, got {delta}")
    mask = labels != IGNORE
    gap = (logits.float() - ref_logits.detach().float()).abs()
    per_position = torch.clamp(delta / 2 - gap, min=0).mean(dim=-1)
    return (per_position * mask).sum() / mask.sum().clamp(min=1)


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"npo_klr_form must be one of {FORMS}, got {form!r}")


def rmu_forget_loss(
    activations: torch.Tensor, control: torch.Tensor, token_mask: torch.Tensor
) -> torch.Tensor:
    """RMU's forget term (Li et al. 2024, the WMDP paper): push the layer's activations on the
    forget tokens towards the fixed control vector c * u,

    L = mean over real tokens t of (1/d) || h_t - c u ||^2,

    ``activations`` ``[B, T, d]``, ``control`` ``[d]``, ``token_mask`` ``[B, T]`` (True at real
    tokens). The published code takes ``F.mse_loss`` over all of ``[B, T, d]``, padding included;
    here padding positions are masked out (the two agree on a batch without padding).
    """
    return _masked_mse(activations, control.to(activations.device), token_mask)


def rmu_retain_loss(
    activations: torch.Tensor, ref_activations: torch.Tensor, token_mask: torch.Tensor
) -> torch.Tensor:
    """RMU's retain term (Li et al. 2024): keep the layer's activations on the retain
    tokens where the frozen model has them, mean over real tokens of (1/d) || h_t - h^frozen_t ||^2.
    """
    return _masked_mse(activations, ref_activations.detach(), token_mask)


def _masked_mse(x: torch.Tensor, y: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    per_token = (x.float() - y.float()).pow(2).mean(dim=-1)
    mask = token_mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def away_loss(logits: torch.Tensor, labels: torch.Tensor, threshold: float = -5.0) -> torch.Tensor:
    """The latent adversary's away term (Sheshadri et al. 2024, their RMU + LAT code, which takes
    it from HarmBench): mean over the counted tokens of -log(1 - p(token)), where tokens the model
    already gives log p < ``threshold`` contribute 0 (they still count in the mean).
    log(1 - p) = logsumexp over the other tokens - logsumexp over all."""
    logits, labels = _shift(logits, labels)
    counted = labels != IGNORE
    safe = labels.masked_fill(~counted, 0).unsqueeze(-1)
    lse_all = torch.logsumexp(logits, dim=-1)
    label_logit = logits.gather(-1, safe).squeeze(-1)
    log_1mp = torch.logsumexp(logits.scatter(-1, safe, float("-inf")), dim=-1) - lse_all
    keep = counted & ((label_logit - lse_all) >= threshold)
    return -(log_1mp * keep).sum() / counted.sum().clamp(min=1)
