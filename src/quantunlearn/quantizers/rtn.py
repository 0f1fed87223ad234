"""RTN: symmetric round-to-nearest, eq. 2 of Zhang et al. (ICLR 2025), per output channel or
per group of input columns: ``rtn_w{N}`` and ``rtn_w{N}g{G}`` (N in 2..8).

Zhang et al. explain the recovery of forgotten knowledge (section 5) by the step size Delta of
this equation: a weight change smaller than about Delta/2 cannot move a weight out of its
quantization interval (eq. 3). The model is fake-quantized: an fp32 model whose quantized Linear
weights are replaced by their dequantized values, as the paper's RTN experiments do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, NamedTuple

from quantunlearn.quantizers.base import Quantizer

if TYPE_CHECKING:
    import torch

RTN_MIN_BITS, RTN_MAX_BITS = 2, 8
_RTN_RE = re.compile(r"rtn_w([0-9]+)(?:g([0-9]+))?")


@dataclass(frozen=True)
class RTN(Quantizer):
    PATTERN: ClassVar[str] = r"rtn_w[2-8](g[1-9][0-9]*)?"
    SYNTAX: ClassVar[str] = (
        "rtn_w{N} (N in 2..8, one scale per output channel), "
        "rtn_w{N}g{G} (groups of G >= 1 input columns)"
    )
    EXAMPLE: ClassVar[str] = "rtn_w4g128"

    @classmethod
    def parse(cls, name: str) -> RTN | None:
        match = _RTN_RE.fullmatch(name)
        if not match:
            return None
        bits_text, group_text = match.groups()
        bits = int(bits_text)
        if not RTN_MIN_BITS <= bits <= RTN_MAX_BITS or bits_text != str(bits):
            raise ValueError(
                f"unknown quantizer {name!r}: RTN bit-width must be an integer in "
                f"{RTN_MIN_BITS}..{RTN_MAX_BITS} (rtn_w2 ... rtn_w8)"
            )
        return cls(name, bits, _group(name, group_text, "RTN", "rtn_w4g128"))

    def codes(self, weight):
        return rtn_quantize(weight, self.bits, self.group_size).codes

    def quantize_weight(self, weight, name, n_layers):
        return rtn_quantize(weight, self.bits, self.group_size).dequantized


def _group(name: str, text: str | None, what: str, example: str) -> int | None:
    """A group size written after 'g': a positive integer without leading zeros."""
    if text is None:
        return None
    group = int(text)
    if group < 1 or text != str(group):
        raise ValueError(
            f"unknown quantizer {name!r}: {what} group size must be a positive integer "
            f"without leading zeros (e.g. {example})"
        )
    return group


class RTNResult(NamedTuple):
    codes: torch.Tensor  # int8, same shape as the weight: the indices i of eq. 3
    scale: torch.Tensor  # fp32 [out, n_groups]: Delta of each group
    dequantized: torch.Tensor  # fp32, same shape as the weight: Q(w) = Delta * code


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int | None = None) -> RTNResult:
    """Symmetric round-to-nearest quantization, eq. 2 of Zhang et al. (ICLR 2025), exactly.

    For each group w (one row of the [out, in] weight, or `group_size` consecutive input
    columns of a row):

        Delta = max(|w|) / 2^(N-1)
        code  = clamp(Round(w / Delta), -2^(N-1), 2^(N-1) - 1)
        Q(w)  = Delta * code

    Round is `torch.round`, i.e. round half to even (2.5 -> 2, 3.5 -> 4), not the half-up
    rounding suggested by the intervals [(i - 1/2) Delta, (i + 1/2) Delta) of eq. 3; the two
    differ only on exact ties. The clamp is the paper's own index range [-2^(N-1), 2^(N-1) - 1]
    (section 5). With this Delta the group's largest positive weight maps to 2^(N-1) and is
    clipped to 2^(N-1) - 1 (an error of one full step, Delta), while a largest negative weight is
    represented exactly; we implement the equation as written. (AWQ's code divides by
    2^(N-1) - 1 instead, which avoids the clip.)

    A group of zeros has Delta = 0: its codes and dequantized values are 0 (no NaN). Computation
    is in fp32 whatever the input dtype; codes are int8, scale is [out, n_groups].
    """
    import torch

    if weight.dim() != 2:
        raise ValueError(
            f"rtn_quantize needs a 2-D [out, in] weight, got shape {tuple(weight.shape)}"
        )
    if not isinstance(bits, int) or not RTN_MIN_BITS <= bits <= RTN_MAX_BITS:
        raise ValueError(f"bits={bits!r} is not supported; RTN uses {RTN_MIN_BITS}..{RTN_MAX_BITS}")
    out_features, in_features = weight.shape
    group = in_features if group_size is None else group_size
    if not isinstance(group, int) or group < 1 or in_features % group:
        raise ValueError(
            f"group_size={group_size!r} does not divide the input dimension of the weight of "
            f"shape {tuple(weight.shape)} ({in_features} columns); use a positive divisor of "
            f"{in_features}, or None for one scale per output channel"
        )
    w = weight.detach().to(torch.float32)
    if not torch.isfinite(w).all():
        bad = int((~torch.isfinite(w)).sum())
        raise ValueError(f"weight of shape {tuple(weight.shape)} has {bad} non-finite values")
    grouped = w.reshape(out_features, in_features // group, group)
    levels = 2 ** (bits - 1)
    delta = grouped.abs().amax(dim=-1, keepdim=True) / levels
    safe_delta = torch.where(delta > 0, delta, torch.ones_like(delta))  # all-zero group -> codes 0
    codes = torch.clamp(torch.round(grouped / safe_delta), -levels, levels - 1)
    dequantized = (codes * delta).reshape(out_features, in_features)
    return RTNResult(
        codes=codes.to(torch.int8).reshape(out_features, in_features),
        scale=delta.squeeze(-1),
        dequantized=dequantized,
    )
