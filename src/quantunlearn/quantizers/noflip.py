"""``noflip_rtn_w{N}[g{G}]``: the counterfactual of the weight diagnostics (not a quantizer
anyone deploys): the unlearned model's RTN weights with every integer code forced back to the
quantized target's code.

Q_noflip(w') = Delta(w') * code(w): the unlearned model's own RTN step (eq. 2 of Zhang et al.,
computed from the unlearned weights) with the *target's* integer codes. Plain Q(w') = Delta(w') *
code(w') differs from this only where a code flipped, so evaluating this model against plain
Q(w') isolates what the flipped codes carry: if noflip recovers the knowledge and plain Q(w')
does not, the forgetting lives in the few weights that crossed a bucket boundary. Everything not
quantized (embeddings, norms, lm_head) stays the unlearned model's; the residual gap between
noflip and Q(target) is what those parameters and the step changes carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from quantunlearn.quantizers.base import Quantizer, quantizable_linears
from quantunlearn.quantizers.rtn import RTN, rtn_quantize


@dataclass(frozen=True)
class NoFlip(Quantizer):
    base: RTN | None = None  # the RTN quantizer whose codes are forced back

    PATTERN: ClassVar[str] = "noflip_" + RTN.PATTERN
    SYNTAX: ClassVar[str] = "noflip_rtn_w{N}[g{G}]"
    EXAMPLE: ClassVar[str] = "noflip_rtn_w4g128"
    needs_target: ClassVar[bool] = True
    counterfactual: ClassVar[bool] = True

    @classmethod
    def parse(cls, name: str) -> NoFlip | None:
        if not name.startswith("noflip_"):
            return None
        inner = name.removeprefix("noflip_")
        try:
            base = RTN.parse(inner)
        except ValueError as err:
            raise ValueError(f"unknown quantizer {name!r}: {err}") from None
        if base is None:
            raise ValueError(
                f"unknown quantizer {name!r}: the counterfactual noflip_ needs an RTN quantizer "
                f"(noflip_rtn_w{{N}} or noflip_rtn_w{{N}}g{{G}}), whose integer codes are defined"
            )
        return cls(name, base.bits, base.group_size, base=base)

    @property
    def diagnosed_as(self) -> RTN:
        return self.base

    def codes(self, weight):
        return self.base.codes(weight)

    def load(
        self, model_path, *, compute_dtype="fp32", quant_dir=None, target_path=None, tokenizer=None
    ):
        import torch

        from quantunlearn.models.loading import load_model

        if target_path is None:
            raise ValueError(f"{self.name} needs the target model (target_path)")
        model = load_model(str(model_path), "fp32")
        target = quantizable_linears(load_model(str(target_path), "fp32"))
        with torch.no_grad():
            for name, module in quantizable_linears(model).items():
                module.weight.copy_(
                    noflip_weight(target[name].weight, module.weight, self.bits, self.group_size)
                )
        return model.eval()


def noflip_weight(target, unlearned, bits: int, group_size: int | None):
    """Q_noflip(w') = Delta(w') * code(w) for one [out, in] weight (see the module docstring)."""
    import torch

    if target.shape != unlearned.shape:
        raise ValueError(
            f"shapes differ: target {tuple(target.shape)}, unlearned {tuple(unlearned.shape)}"
        )
    codes = rtn_quantize(target, bits, group_size).codes.to(torch.float32)
    scale = rtn_quantize(unlearned, bits, group_size).scale  # [out, n_groups]
    out_features, in_features = unlearned.shape
    group = in_features if group_size is None else group_size
    per_weight = scale.repeat_interleave(group, dim=1)
    return (codes * per_weight).reshape(out_features, in_features)
