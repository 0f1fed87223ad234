"""The terms of the unlearning objective: Zhang et al. eq. 1, L = L_forget + alpha * L_retain, plus
the extra terms of the quantization-robust methods.

Each term is one small class (in the style of open-unlearning's methods): the hyperparameter
groups it takes, whether it needs the frozen target, and its loss on one optimizer step, written
as the equation it implements. The math itself lives in `quantunlearn.unlearning.losses` (pure
functions, tested against hand-computed values), imported when a loss is computed, so that the
method table can be read without torch. A `Step` computes each model output once, when the
first term asks for it.

A new forget loss (SimNPO, say) is a class here (or in a module of its own) with ``params``,
``needs_reference`` and ``loss``, plus a row of `quantunlearn.unlearning.methods.METHODS`.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from quantunlearn.unlearning import families
from quantunlearn.unlearning.families import Family
from quantunlearn.unlearning.hyperparameters import (
    LossForm,
    NPOParams,
    QUAILParams,
    RetainWeight,
)

if TYPE_CHECKING:
    import torch


class Step:
    """One optimizer step: the forget and retain batches, and the model outputs the terms ask
    for, each computed once (logits of the trained model and of the frozen reference; the
    activations of a steered layer for RMU)."""

    def __init__(
        self,
        model,
        scope,
        forget: dict | None,
        retain: dict | None,
        state: dict | None = None,
        attack=None,
    ):
        self.model, self.scope, self.forget, self.retain = model, scope, forget, retain
        #: what the terms' `setup` computed before training (e.g. QUAIL's margin)
        self.state = state or {}
        #: RMU_LAT: the latent perturbation of this batch (`lat.Attack`), applied to the forget
        #: activation pass only
        self.attack = attack

    def _logits(self, batch: dict):
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    @cached_property
    def forget_logits(self):
        return self._logits(self.forget).logits

    @cached_property
    def ref_forget_logits(self):
        if self.scope is None:  # SURE's saliency, at the target weights: the model itself
            return self.forget_logits.detach()
        return self.scope.reference(self.forget["input_ids"], self.forget["attention_mask"])

    @cached_property
    def retain_logits(self):
        return self._logits(self.retain).logits

    @cached_property
    def ref_retain_logits(self):
        return self.scope.reference(self.retain["input_ids"], self.retain["attention_mask"])

    @cached_property
    def ref_retain_activations(self):
        return self.scope.reference(self.retain["input_ids"], self.retain["attention_mask"])

    @cached_property
    def forget_activations(self):
        steer = self.scope.steering
        ids, mask = self.forget["input_ids"], self.forget["attention_mask"]
        if self.attack is None:
            return steer.activations(self.model, ids, mask)
        with self.attack.applied(self.model):
            return steer.activations(self.model, ids, mask)

    @cached_property
    def retain_activations(self):
        steer = self.scope.steering
        return steer.activations(
            self.model, self.retain["input_ids"], self.retain["attention_mask"]
        )


class Term:
    """One term of the objective."""

    #: the family of the methods this extra term defines in the mitigation tables
    family: ClassVar[Family | None] = None

    #: the hyperparameter groups this term takes (config keys of the methods that use it)
    params: ClassVar[tuple[type, ...]] = ()
    #: the term compares with the frozen target model
    needs_reference: ClassVar[bool] = False
    #: fp32 [tokens, vocabulary] tensors its loss keeps for the backward pass (the cost model,
    #: quantunlearn.study.costs): a log-softmax's output; KLR also the target's probabilities
    vocab_tensors: ClassVar[int] = 1
    #: its column in the training log (``{name}_loss``)
    name: ClassVar[str] = "forget"
    #: what a forget term trains on: "documents" (the forget texts, language-modelled) or
    #: "refusals" ((question, refusal) pairs); a benchmark kind says which it provides
    forget_data: ClassVar[str] = "documents"

    def examples(self, corpus, tokenizer, max_len: int) -> list:
        """The forget examples this term trains on, from a corpus of `quantunlearn.data`
        (`TextCorpus`, `RWKUCorpus`): token lists or ``{input_ids, labels}`` dicts."""
        return corpus.document_examples(tokenizer, max_len)

    def loss(self, step: Step, run) -> torch.Tensor:
        raise NotImplementedError

    def batch_weight(self, step: Step, run) -> int:
        """A forget term's weight of one batch in the mean over the whole forget set (SURE sums
        the batches' gradients with these weights to get the gradient over the set)."""
        raise NotImplementedError(f"{type(self).__name__} has no batch_weight: SURE needs one")

    def setup(self, context: dict) -> dict[str, Any]:
        """Once before training: values the loss reads from ``step.state`` (e.g. QUAIL's
        quantizer-derived margin), also recorded in the run's info."""
        return {}


class GA(Term):
    """Gradient ascent, Zhang et al. eq. 7: minimise -NLL of the forget set."""

    def loss(self, step, run):
        from quantunlearn.unlearning import losses

        return losses.ga_loss(step.forget_logits, step.forget["labels"])

    def batch_weight(self, step, run) -> int:
        """The batch's weight in the mean over the whole forget set: a token mean."""
        from quantunlearn.models.training import IGNORE

        return int((step.forget["labels"][:, 1:] != IGNORE).sum())


class RejectionTuning(Term):
    """RT, rejection tuning (Jin et al., "RWKU", section 4.2 and appendix H): fine-tune on
    questions about the target paired with a refusal ("I do not know the answer."), with the
    ordinary LM loss (mean NLL) on the answer tokens only; the prompt carries no loss."""

    forget_data = "refusals"

    def examples(self, corpus, tokenizer, max_len: int) -> list:
        from quantunlearn.data.rwku import refusal_example

        return [refusal_example(tokenizer, q, a, max_len) for q, a in corpus.refusal_pairs()]

    def loss(self, step, run):
        from quantunlearn.unlearning import losses

        return losses.nll(step.forget_logits, step.forget["labels"])

    def batch_weight(self, step, run) -> int:
        """A token mean, as GA's."""
        return GA().batch_weight(step, run)


class NPO(Term):
    """Negative preference optimisation, Zhang et al. eq. 8 (Zhang et al. 2024)."""

    params = (NPOParams, LossForm)
    needs_reference = True

    def loss(self, step, run):
        from quantunlearn.unlearning import losses

        return losses.npo_loss(
            step.forget_logits,
            step.ref_forget_logits,
            step.forget["labels"],
            run.beta,
            run.npo_klr_form,
        )

    def batch_weight(self, step, run) -> int:
        """A sequence mean (paper form) or a mean over every logit (muse form)."""
        logits = step.forget_logits
        return logits.numel() if run.npo_klr_form == "muse" else logits.shape[0]


class GDR(Term):
    """Gradient descent on the retain set, Zhang et al. eq. 9."""

    params = (RetainWeight,)
    name = "retain"

    def loss(self, step, run):
        from quantunlearn.unlearning import losses

        return losses.gdr_loss(step.retain_logits, step.retain["labels"])


class KLR(Term):
    """KL between the frozen target and the model on the retain set, Zhang et al. eq. 10."""

    vocab_tensors = 2

    params = (RetainWeight, LossForm)
    needs_reference = True
    name = "retain"

    def loss(self, step, run):
        from quantunlearn.unlearning import losses

        return losses.klr_loss(
            step.retain_logits, step.ref_retain_logits, step.retain["labels"], run.npo_klr_form
        )


class QUAILHinge(Term):
    """QUAIL's hinge (Mishra and Mehreen, eq. 14 and 18), weighted by quail_gamma: push every
    forget logit at least Delta_q / 2 away from the target's."""

    params = (QUAILParams,)
    family = families.QUAIL
    needs_reference = True
    name = "quail"

    def weight(self, run) -> float:
        return run.quail_gamma

    def setup(self, context):
        from quantunlearn.unlearning.quail_margin import quail_margin

        margin = quail_margin(
            context["run"].quail_delta,
            context["target"],
            context["model"],
            context["forget"],
            context["pad_id"],
            context["batch_size"],
        )
        return {"quail_margin": margin}

    def loss(self, step, run):
        from quantunlearn.unlearning import losses

        return losses.quail_hinge(
            step.forget_logits,
            step.ref_forget_logits,
            step.forget["labels"],
            step.state["quail_margin"],
        )


class RMUForget(Term):
    """RMU's forget term (Li et al. 2024): the steered layer's activations on the forget tokens
    pulled towards the fixed control vector c * u."""

    vocab_tensors = 0

    def loss(self, step, run):
        from quantunlearn.unlearning import losses

        mask = step.forget["attention_mask"].bool()
        return losses.rmu_forget_loss(step.forget_activations, step.scope.steering.control, mask)


class RMURetain(Term):
    """RMU's retain term (Li et al. 2024): the steered layer's activations on the retain tokens
    kept where the frozen model has them."""

    vocab_tensors = 0

    params = (RetainWeight,)
    needs_reference = True
    name = "retain"

    def loss(self, step, run):
        from quantunlearn.unlearning import losses

        mask = step.retain["attention_mask"].bool()
        return losses.rmu_retain_loss(step.retain_activations, step.ref_retain_activations, mask)
