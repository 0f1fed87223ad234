"""Post-training quantizers: one backend class per module (`base.Quantizer`), the QUANTIZERS
table and name parsing (`families`). This file only re-exports the table."""

from quantunlearn.quantizers.families import (
    FULL_PRECISION,
    QUANTIZERS,
    FullPrecision,
    Quantizer,
    allowed_names,
    family_pattern,
    parse_quantizer,
    quantizable_linears,
    quantizer_pattern,
)

__all__ = [
    "FULL_PRECISION",
    "QUANTIZERS",
    "FullPrecision",
    "Quantizer",
    "allowed_names",
    "family_pattern",
    "parse_quantizer",
    "quantizable_linears",
    "quantizer_pattern",
]
