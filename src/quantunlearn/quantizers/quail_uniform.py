"""QUAIL's uniform min-max quantizer (Mishra and Mehreen, "QUAIL: Quantization Aware Unlearning
for Mitigating Misinformation in LLMs", section III eq. 2, section IV-A eq. 7, section V-A):
``quail_w{N}`` (one range over every quantized weight: "global") and ``quail_w{N}_tensor`` (one
range per tensor), N in 2..16.

    Delta = (w_max - w_min) / 2^N                  (eq. 2)
    Q(w)  = Delta * Round((w - w_min) / Delta) + w_min,   Round(x) = floor(x + 1/2)   (eq. 7)

The grid points are w_min + k Delta, k = 0 .. 2^N (w_max is itself a level; nothing is clipped);
halves round up. Section III and V-A print a second reading, index floor((w - w_min) / Delta)
with the bucket's midpoint as value (``rounding="floor"``: 2^N buckets, w_max clipped into the
last); the two differ by half a step, and QUAIL's Table I (`quantunlearn.evaluation.quail_table`)
can use either.

Section V-A also says the experiments "use symmetric ranges", which eq. 2's min-max range is not;
the paper gives no formula for it. The default follows eq. 2 (its only equation); the names
``quail_w{N}_sym`` / ``quail_w{N}_tensor_sym`` take the symmetric reading, w_min = -max|w| and
w_max = max|w| in the same eq. 2 / eq. 7 (so 0 is a level when 2^N is even). Unlike RTN
(Zhang et al. eq. 2: symmetric, absmax, per output channel) the range
is asymmetric and shared by a whole tensor or the whole model, and "16 bit" is a uniform grid of
65,536 levels, not fp16/bf16.

As a row of the QUANTIZERS table it fake-quantizes the quantizable Linears (every nn.Linear but
lm_head, like every other row); the global range is the min and max over those Linears. Table I
itself compares all parameters, as the paper says (V-B).

Torch is imported inside the functions: the table must import without it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from quantunlearn.quantizers.base import Quantizer, quantizable_linears

if TYPE_CHECKING:
    import torch

ROUNDINGS = ("nearest", "floor")
GRANULARITIES = ("global", "tensor")
QUAIL_MIN_BITS, QUAIL_MAX_BITS = 2, 16
_QUAIL_RE = re.compile(r"quail_w([0-9]+)(_tensor)?(_sym)?")


@dataclass(frozen=True)
class Grid:
    """The quantizer's range and step: Delta = (w_max - w_min) / 2^bits."""

    w_min: float
    w_max: float
    bits: int

    @property
    def step(self) -> float:
        return (self.w_max - self.w_min) / 2**self.bits


def grid_of(tensors: Iterable[torch.Tensor], bits: int, symmetric: bool = False) -> Grid:
    """The min-max range of all the given tensors (one tensor: the per-tensor range); with
    ``symmetric``, [-max|w|, max|w|] (section V-A's "symmetric ranges")."""
    if not isinstance(bits, int) or bits < 1:
        raise ValueError(f"bits must be a positive integer, got {bits!r}")
    lo, hi, seen = float("inf"), float("-inf"), False
    for t in tensors:
        if t.numel():
            seen = True
            lo, hi = min(lo, float(t.detach().min())), max(hi, float(t.detach().max()))
    if not seen:
        raise ValueError("cannot build a quantization grid from no weights")
    if symmetric:
        lo, hi = -max(abs(lo), abs(hi)), max(abs(lo), abs(hi))
    return Grid(lo, hi, bits)


def quantize(w: torch.Tensor, grid: Grid, rounding: str = "nearest"):
    """(integer codes, dequantized values) of ``w`` on ``grid``, computed in float64.

    nearest (eq. 7): code floor((w - w_min) / Delta + 1/2), value w_min + code Delta. floor
    (section III / V-A): code floor((w - w_min) / Delta) clipped to 0 .. 2^N - 1, value the
    bucket's midpoint. A degenerate grid (w_max == w_min: a constant tensor) has one point:
    weights equal to w_min get code 0, those below or above it -1 or +1 (a moved weight never
    counts as the same bucket), and every value is w_min.
    """
    import torch

    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    x = w.detach().to(torch.float64)
    step = grid.step
    if step == 0:
        return torch.sign(x - grid.w_min).to(torch.int64), torch.full_like(x, grid.w_min)
    scaled = (x - grid.w_min) / step
    if rounding == "nearest":
        codes = torch.floor(scaled + 0.5).to(torch.int64)
        return codes, codes.to(torch.float64) * step + grid.w_min
    codes = torch.floor(scaled).to(torch.int64).clamp(0, 2**grid.bits - 1)
    return codes, (codes.to(torch.float64) + 0.5) * step + grid.w_min


@dataclass(frozen=True)
class QUAILUniform(Quantizer):
    granularity: str = "global"
    #: section V-A's "symmetric ranges" ([-max|w|, max|w|]) instead of eq. 2's min-max
    symmetric: bool = False

    PATTERN: ClassVar[str] = r"quail_w([2-9]|1[0-6])(_tensor)?(_sym)?"
    SYNTAX: ClassVar[str] = (
        "quail_w{N} (N in 2..16: QUAIL's asymmetric min-max grid, one range over all quantized "
        "weights), quail_w{N}_tensor (one range per tensor), either with _sym (symmetric range)"
    )
    EXAMPLE: ClassVar[str] = "quail_w4"

    @classmethod
    def parse(cls, name: str) -> QUAILUniform | None:
        match = _QUAIL_RE.fullmatch(name)
        if not match:
            return None
        bits = int(match.group(1))
        if not QUAIL_MIN_BITS <= bits <= QUAIL_MAX_BITS or match.group(1) != str(bits):
            raise ValueError(
                f"unknown quantizer {name!r}: QUAIL's bit-width must be an integer in "
                f"{QUAIL_MIN_BITS}..{QUAIL_MAX_BITS} (quail_w2 ... quail_w16)"
            )
        granularity = "tensor" if match.group(2) else "global"
        return cls(name, bits, None, granularity, symmetric=bool(match.group(3)))

    @property
    def diagnosable(self) -> bool:
        """Its step is not an RTN step: QUAIL's Table I (diagnostics.quail_table) analyses it."""
        return False

    def load(
        self, model_path, *, compute_dtype="fp32", quant_dir=None, target_path=None, tokenizer=None
    ):
        import torch

        from quantunlearn.models.loading import load_model

        model = load_model(model_path, "fp32")
        linears = quantizable_linears(model)
        shared = grid_of((m.weight for m in linears.values()), self.bits, self.symmetric)
        with torch.no_grad():
            for module in linears.values():
                own = self.granularity == "tensor"
                grid = grid_of([module.weight], self.bits, self.symmetric) if own else shared
                values = quantize(module.weight, grid)[1]
                module.weight.copy_(values.to(module.weight.dtype))
        return model.eval()
