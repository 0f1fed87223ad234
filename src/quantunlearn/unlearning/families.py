"""The families of unlearning methods: how the reports group the METHODS rows.

A method's family is declared by its scope (SURE, SURE/S, LoRA, RMU) or by an extra term
(QUAIL's hinge); a method with neither is a plain one (`PLAIN`: Zhang et al.'s six methods and
RT). The mitigation tables select rows by these objects (``method.family is SURE``), never by
the methods' names; ``name`` is what the tables print in their ``family`` column.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One family of methods in the report tables."""

    name: str  # the tables' label (the summary's ``family`` column, the figure's legend)


#: full fine-tuning on the plain objective (Zhang et al. appendix B; RT)
PLAIN = Family("base")
#: SURE's salient modules (Zhang et al. section 6)
SURE = Family("SURE")
#: SURE without the saliency map (Zhang et al. appendix I)
SURE_S = Family("SURE/S")
#: LoRA adapters merged before quantization (Abitante et al.)
LORA = Family("LoRA")
#: QUAIL's hinge on the quantized logits (Mishra and Mehreen)
QUAIL = Family("QUAIL")
#: representation misdirection, with or without the latent adversary (Zhang et al. appendix J)
RMU = Family("RMU")

FAMILIES: tuple[Family, ...] = (PLAIN, SURE, SURE_S, LORA, QUAIL, RMU)

__all__ = ["FAMILIES", "LORA", "PLAIN", "QUAIL", "RMU", "SURE", "SURE_S", "Family"]
