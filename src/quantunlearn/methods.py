"""The unlearning methods: one explicit table, each a forget loss plus an optional retain term.

Seed 000 eq. 1: min E_forget[L_forget] + alpha * E_retain[L_retain], with L_forget in {GA, NPO}
(appendix B.1) and L_retain in {none, GDR, KLR} (appendix B.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantunlearn import losses


@dataclass(frozen=True)
class Method:
    name: str
    forget: str  # "ga" | "npo"
    retain: str | None  # None | "gdr" | "klr"

    @property
    def needs_reference(self) -> bool:
        """NPO and KLR compare against the frozen target model."""
        return self.forget == "npo" or self.retain == "klr"

    @property
    def hyperparameters(self) -> tuple[str, ...]:
        """The grid axes that change this method's result, in run-path order."""
        keys = ["weight_dtype", "lr", "epochs"]
        if self.retain:
            keys.append("alpha")
        if self.forget == "npo":
            keys.append("beta")
        if self.forget == "npo" or self.retain == "klr":
            keys.append("npo_klr_form")
        keys.append("seed")
        return tuple(keys)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("GA", "ga", None),
        Method("GA_GDR", "ga", "gdr"),
        Method("GA_KLR", "ga", "klr"),
        Method("NPO", "npo", None),
        Method("NPO_GDR", "npo", "gdr"),
        Method("NPO_KLR", "npo", "klr"),
    )
}

REFERENCES = ("target", "retrain")


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown unlearning method {name!r}; known: {sorted(METHODS)}") from None


def objective(
    method: Method,
    forget_logits: torch.Tensor,
    forget_labels: torch.Tensor,
    ref_forget_logits: torch.Tensor | None = None,
    retain_logits: torch.Tensor | None = None,
    retain_labels: torch.Tensor | None = None,
    ref_retain_logits: torch.Tensor | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 0.1,
    form: str = "paper",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Seed 000 eq. 1 for one batch; returns the loss and its parts for the training log."""
    if method.forget == "ga":
        forget = losses.ga_loss(forget_logits, forget_labels)
    else:
        forget = losses.npo_loss(forget_logits, ref_forget_logits, forget_labels, beta, form)
    parts = {"forget_loss": forget.item()}
    loss = forget
    if method.retain == "gdr":
        retain = losses.gdr_loss(retain_logits, retain_labels)
    elif method.retain == "klr":
        retain = losses.klr_loss(retain_logits, ref_retain_logits, retain_labels, form)
    else:
        return loss, parts
    parts["retain_loss"] = retain.item()
    return loss + alpha * retain, parts
