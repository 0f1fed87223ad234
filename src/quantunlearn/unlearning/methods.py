"""The unlearning methods: one explicit table, each row a composition of terms and a scope.

Zhang et al. eq. 1: min E_forget[L_forget] + alpha * E_retain[L_retain], with L_forget in {GA, NPO}
(appendix B.1) and L_retain in {none, GDR, KLR} (appendix B.2). The quantization-robust methods
compose the same objective with an update scope (`quantunlearn.unlearning.scopes`: SURE's
salient modules, LoRA adapters merged before quantization) or an extra term (QUAIL's hinge).
RMU (Zhang et al. appendix J; Li et al. 2024) steers the activations of one layer instead of the
logits, and trains only the MLP down-projections around it.

A method's hyperparameters (its config keys, and the order of its run path) are the groups its
terms and scope declare (`quantunlearn.unlearning.hyperparameters`), plus `Optimization` and
`Seed`; ``defaults`` holds the paper's own defaults where they differ from the group defaults.
This module reads without torch: the workflow builds its grid from it.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from quantunlearn.unlearning.families import PLAIN, Family
from quantunlearn.unlearning.hyperparameters import (
    Group,
    HyperparameterError,
    Optimization,
    Seed,
    path_order,
)
from quantunlearn.unlearning.objectives import (
    GA,
    GDR,
    KLR,
    NPO,
    QUAILHinge,
    RejectionTuning,
    RMUForget,
    RMURetain,
    Term,
)
from quantunlearn.unlearning.scopes import RMU as RMU_SCOPE
from quantunlearn.unlearning.scopes import RMULAT, SURE, Full, LoRA, Scope, SUREWithoutSaliency

REFERENCES = ("target", "retrain")
#: the references' methods: the model unlearning starts from, and the one trained without the
#: forget set (the reports compare with these, never with their names)
TARGET, RETRAIN = REFERENCES


@dataclass(frozen=True)
class Method:
    name: str
    forget: Term
    retain: Term | None = None
    scope: Scope = field(default_factory=Full)
    extras: tuple[Term, ...] = ()
    #: the paper's defaults for this method, applied under the user's `common` and method keys
    defaults: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    #: eq1: forget + alpha * retain + extras, one joint step per (forget, retain) batch pair
    #: (Zhang et al. eq. 1; QUAIL's code). eq15: Mishra and Mehreen's eq. 15 as printed, alpha *
    #: forget + (1 - alpha) * retain + extras with alpha in [0, 1], in Algorithm 1's schedule: per
    #: epoch a pass over the forget batches (forget and extra terms), then one over the retain
    #: batches (retain term)
    objective: str = "eq1"

    @property
    def terms(self) -> tuple[Term, ...]:
        return (self.forget, *([self.retain] if self.retain else []), *self.extras)

    @property
    def groups(self) -> list[type[Group]]:
        """The hyperparameter groups of this method, in run-path order."""
        found = [Optimization, Seed, *self.scope.params]
        for term in self.terms:
            found += [g for g in term.params if g not in found]
        return path_order(dict.fromkeys(found))

    @property
    def hyperparameters(self) -> tuple[str, ...]:
        """The grid axes that change this method's result, in run-path order."""
        return tuple(f.name for group in self.groups for f in group.fields())

    @property
    def needs_reference(self) -> bool:
        """Whether a term compares with the frozen target (NPO, KLR, QUAIL, RMU)."""
        return any(term.needs_reference for term in self.terms)

    @property
    def family(self) -> Family:
        """How the mitigation tables group methods (`quantunlearn.unlearning.families`): its
        scope's family, else an extra term's, else `PLAIN`."""
        extra = next((t.family for t in self.extras if t.family), None)
        return self.scope.family or extra or PLAIN

    @property
    def base(self) -> str:
        """The plain method with the same forget and retain terms (itself for a plain one)."""
        for method in METHODS.values():
            if (
                type(method.forget) is type(self.forget)
                and type(method.retain) is type(self.retain)
                and method.family is PLAIN
            ):
                return method.name
        return self.name

    @property
    def alternating(self) -> bool:
        """Separate forget and retain passes (eq15, Mishra and Mehreen's Algorithm 1)."""
        return self.objective == "eq15"

    def optimizer_steps(self, run: Run, n_forget: int, n_retain: int, batch_size: int) -> int:
        """The run's optimizer steps: epochs x batches per epoch (Algorithm 1: forget and retain
        batches) x steps per batch (its scope's: RMU_LAT's lat_model_steps)."""
        batches = math.ceil(n_forget / batch_size)
        if self.alternating:
            batches += math.ceil(n_retain / batch_size)
        return run.epochs * batches * self.scope.steps_per_batch(run)

    def run(self, values: dict[str, Any]) -> Run:
        """This method's typed hyperparameters from a dict (missing keys: the defaults), checked
        across groups (`HyperparameterError` naming the key)."""
        run = Run(self, {**dict(self.defaults), **values})
        self.scope.check(run)
        if self.objective == "eq15" and not 0 <= run.alpha <= 1:
            raise HyperparameterError(
                "alpha",
                f"{self.name} weighs forget by alpha and retain by 1 - alpha (Mishra and "
                f"Mehreen eq. 15): alpha must be in [0, 1], got {run.alpha!r}",
            )
        return run

    def loss(self, step, run: Run):
        """The objective of one step: forget + alpha * retain + each extra term times its
        weight (eq15: alpha * forget + (1 - alpha) * retain + extras, each side only when its
        batch is in the step). Returns the loss and its parts for the training log."""
        if self.objective == "eq15":
            return self._eq15_loss(step, run)
        forget = self.forget.loss(step, run)
        parts = {"forget_loss": forget.item()}
        total = forget
        if self.retain is not None:
            retain = self.retain.loss(step, run)
            parts["retain_loss"] = retain.item()
            total = total + run.alpha * retain
        return self._extras(step, run, total, parts)

    def _extras(self, step, run: Run, total, parts: dict):
        for extra in self.extras:
            value = extra.loss(step, run)
            parts[f"{extra.name}_loss"] = value.item()
            total = total + extra.weight(run) * value
        return total, parts

    def _eq15_loss(self, step, run: Run):
        if step.forget is not None:
            forget = self.forget.loss(step, run)
            return self._extras(step, run, run.alpha * forget, {"forget_loss": forget.item()})
        retain = self.retain.loss(step, run)
        return (1 - run.alpha) * retain, {"retain_loss": retain.item()}


class Run:
    """The typed hyperparameters of one run: the instances of its method's groups (checked on
    construction), read as attributes (``run.lr``, ``run.alpha``)."""

    def __init__(self, method: Method, values: dict[str, Any]):
        self.method = method
        self.groups = {group: group.build(values) for group in method.groups}

    def __getattr__(self, key: str):
        for instance in self.__dict__.get("groups", {}).values():
            if key in instance.__dataclass_fields__:
                return getattr(instance, key)
        raise AttributeError(f"{self.method.name} has no hyperparameter {key!r}")

    def values(self) -> dict[str, Any]:
        """Every hyperparameter of the run, in run-path order."""
        return {key: getattr(self, key) for key in self.method.hyperparameters}


_SURE_LR = MappingProxyType({"lr": 1e-4})
_RMU_DEFAULTS = MappingProxyType({"lr": 5e-5, "alpha": 1200.0})
# RMU + LAT as Sheshadri et al.'s code runs it: RMU at layer 8, the adversary at 7 (LATParams)
_RMU_LAT_DEFAULTS = MappingProxyType({**_RMU_DEFAULTS, "rmu_layer": 8})
# eq. 15 needs alpha in [0, 1]; Mishra and Mehreen VI-B: alpha in [0.5, 0.9] works well
_EQ15_DEFAULTS = MappingProxyType({"alpha": 0.5})

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("GA", GA()),
        Method("GA_GDR", GA(), GDR()),
        Method("GA_KLR", GA(), KLR()),
        Method("NPO", NPO()),
        Method("NPO_GDR", NPO(), GDR()),
        Method("NPO_KLR", NPO(), KLR()),
        # SURE (Zhang et al. section 6): the regularized methods on the salient modules, lr 1e-4
        # (Zhang et al. Tables 5-6).
        Method("GA_GDR_SURE", GA(), GDR(), SURE(), defaults=_SURE_LR),
        Method("GA_KLR_SURE", GA(), KLR(), SURE(), defaults=_SURE_LR),
        Method("NPO_GDR_SURE", NPO(), GDR(), SURE(), defaults=_SURE_LR),
        Method("NPO_KLR_SURE", NPO(), KLR(), SURE(), defaults=_SURE_LR),
        # QUAIL (Mishra and Mehreen section VI): the hinge added to a base objective (theirs:
        # GA_GDR).
        Method("GA_GDR_QUAIL", GA(), GDR(), extras=(QUAILHinge(),)),
        Method("GA_KLR_QUAIL", GA(), KLR(), extras=(QUAILHinge(),)),
        Method("NPO_GDR_QUAIL", NPO(), GDR(), extras=(QUAILHinge(),)),
        Method("NPO_KLR_QUAIL", NPO(), KLR(), extras=(QUAILHinge(),)),
        # LoRA unlearning (Abitante et al.): adapters on the frozen target, merged before
        # quantization, lr 1e-4 (the lower end of their grid).
        Method("GA_GDR_LORA", GA(), GDR(), LoRA(), defaults=_SURE_LR),
        Method("GA_KLR_LORA", GA(), KLR(), LoRA(), defaults=_SURE_LR),
        Method("NPO_GDR_LORA", NPO(), GDR(), LoRA(), defaults=_SURE_LR),
        Method("NPO_KLR_LORA", NPO(), KLR(), LoRA(), defaults=_SURE_LR),
        # RT, rejection tuning (Jin et al., "RWKU", section 4.2; Zhang et al. Table 7): the LM loss
        # on refusals to questions about the target (an RWKU-layout benchmark's refusal corpus).
        Method("RT", RejectionTuning()),
        # RMU (Zhang et al. appendix J): the WMDP code's lr 5e-5 (the top of Zhang et al.'s grid
        # {5e-6, 1e-5, 5e-5}) and retain weight alpha 1200.
        Method("RMU", RMUForget(), RMURetain(), RMU_SCOPE(), defaults=_RMU_DEFAULTS),
        # SURE/S (Zhang et al. appendix I, Table 10): SURE without the saliency map, every
        # parameter at SURE's lr 1e-4 (and, in the configs, SURE's retain weights)
        Method("GA_GDR_SURE_S", GA(), GDR(), SUREWithoutSaliency(), defaults=_SURE_LR),
        Method("GA_KLR_SURE_S", GA(), KLR(), SUREWithoutSaliency(), defaults=_SURE_LR),
        Method("NPO_GDR_SURE_S", NPO(), GDR(), SUREWithoutSaliency(), defaults=_SURE_LR),
        Method("NPO_KLR_SURE_S", NPO(), KLR(), SUREWithoutSaliency(), defaults=_SURE_LR),
        # RMU_LAT (Zhang et al. appendix J, Table 11): RMU against a latent adversary
        # (Sheshadri et al. 2024; quantunlearn.unlearning.lat)
        Method("RMU_LAT", RMUForget(), RMURetain(), RMULAT(), defaults=_RMU_LAT_DEFAULTS),
        # QUAIL's objective as printed (Mishra and Mehreen eq. 15, Algorithm 1); GA_GDR_QUAIL
        # is the form their code runs (docs/methods.md)
        Method(
            "GA_GDR_QUAIL_EQ15",
            GA(),
            GDR(),
            extras=(QUAILHinge(),),
            defaults=_EQ15_DEFAULTS,
            objective="eq15",
        ),  # fmt: skip
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(METHODS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"unknown unlearning method {name!r}{hint}; known: {sorted(METHODS)}"
        ) from None
