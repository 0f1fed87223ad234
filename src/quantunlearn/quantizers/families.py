"""The QUANTIZERS table, name parsing and the schema's pattern.

Each row is a backend class (`quantunlearn.quantizers.base.Quantizer`) in a module of its own;
a name of the study's grid (``rtn_w4g128``, ``gptq_w4g128``, ...) is parsed by the first row
whose family it belongs to. The config schema's pattern and the list of allowed names in error
messages are built from the same rows, so a new quantizer is one module plus one row here
(the package re-exports the table).
"""

from __future__ import annotations

from quantunlearn.quantizers.base import Quantizer, quantizable_linears
from quantunlearn.quantizers.bnb import BitsAndBytes
from quantunlearn.quantizers.full import FULL_PRECISION, FullPrecision
from quantunlearn.quantizers.gguf import GGUF
from quantunlearn.quantizers.gptq_awq import AWQ, GPTQ
from quantunlearn.quantizers.llamacpp import LlamaCpp
from quantunlearn.quantizers.noflip import NoFlip
from quantunlearn.quantizers.quail_uniform import QUAILUniform
from quantunlearn.quantizers.rtn import RTN

QUANTIZERS: tuple[type[Quantizer], ...] = (
    FullPrecision,
    BitsAndBytes,
    RTN,
    GPTQ,
    AWQ,
    GGUF,
    LlamaCpp,
    NoFlip,
    QUAILUniform,
)


def allowed_names() -> str:
    return ", ".join(family.SYNTAX for family in QUANTIZERS)


def family_pattern(families=None) -> str:
    """Regex (unanchored) of the names the families accept (default: all of QUANTIZERS)."""
    return "|".join(f"(?:{family.PATTERN})" for family in families or QUANTIZERS)


def quantizer_pattern(families=None) -> str:
    """Regex matching exactly the names the families accept (anchored, for JSON schema; `(?!\\n)`
    because Python's `$`, which jsonschema's `re.search` uses, also matches before a newline)."""
    return f"^({family_pattern(families)})$(?!\n)"


def parse_quantizer(name: str) -> Quantizer:
    """The quantizer named ``name``; ValueError quoting the name and what is allowed."""
    if not isinstance(name, str):
        raise ValueError(
            f"quantizer name must be a string, got {name!r}; allowed: {allowed_names()}"
        )
    for family in QUANTIZERS:
        quantizer = family.parse(name)
        if quantizer is not None:
            return quantizer
    raise ValueError(f"unknown quantizer {name!r}; allowed: {allowed_names()}")


__all__ = [
    "FULL_PRECISION",
    "QUANTIZERS",
    "FullPrecision",
    "Quantizer",
    "parse_quantizer",
    "quantizable_linears",
    "quantizer_pattern",
]
