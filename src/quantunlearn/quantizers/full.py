"""``none``: the full-precision model (fp32 weights; a bf16 checkpoint loads exactly in fp32)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from quantunlearn.quantizers.base import Quantizer

#: The name of the full-precision "quantizer" in configs, cells and tables.
FULL_PRECISION = "none"


@dataclass(frozen=True)
class FullPrecision(Quantizer):
    PATTERN: ClassVar[str] = FULL_PRECISION
    SYNTAX: ClassVar[str] = FULL_PRECISION
    EXAMPLE: ClassVar[str] = FULL_PRECISION

    @classmethod
    def parse(cls, name: str) -> FullPrecision | None:
        return cls(name) if name == FULL_PRECISION else None

    @property
    def is_quantized(self) -> bool:
        return False

    @property
    def block(self) -> None:
        return None

    @property
    def nominal_grid(self):
        raise ValueError("'none' quantizes nothing: it has no grid")

    def load(
        self, model_path, *, compute_dtype="fp32", quant_dir=None, target_path=None, tokenizer=None
    ):
        from quantunlearn.models.loading import load_model

        return load_model(model_path, "fp32")
