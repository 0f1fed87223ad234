"""bitsandbytes: ``bnb_int8`` (LLM.int8, Dettmers et al. 2022), ``bnb_nf4`` and ``bnb_fp4``
(QLoRA's 4-bit types, Dettmers et al. 2023), quantized at load time through transformers.

lm_head and the embeddings stay in fp32. 4-bit uses blocks of 64, no double quantization and
``bnb_4bit_compute_dtype`` = the dtype the name ends in (``bnb_nf4_bf16``, ``bnb_fp4_fp32``,
``_fp16``), or, for a bare ``bnb_nf4`` / ``bnb_fp4``, the config's study-wide
``bnb_compute_dtype`` (default fp32). So one study holds both papers' formats: Zhang et al.'s FP4
with fp32 compute (``bnb_fp4_fp32``) and Abitante et al.'s NF4 with bf16 compute
(``bnb_nf4_bf16``, "Quantization-Robust LLM Unlearning via Low-Rank Adaptation"). int8 is
LLM.int8 with its default outlier threshold 6.0 (activations cast to fp16 and quantized to int8
per row; the compute dtype does not apply).

bitsandbytes 0.50 on CPUs with AVX512-BF16 repacks 4-bit weights in place on the first forward
(absmax rounded to bf16, another layout), which breaks ``dequantize_4bit`` and
``save_pretrained``; right after loading, every module's ``support_avx512bf16_for_cpu`` is set to
False, so the weights stay in the standard layout and ``effective_weights`` stays valid.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import ClassVar

from quantunlearn.quantizers.base import SKIP_MODULES, Quantizer, quantizable_linears

#: name -> (bitsandbytes type, bits)
BNB_TYPES = {"bnb_int8": ("int8", 8), "bnb_nf4": ("nf4", 4), "bnb_fp4": ("fp4", 4)}
#: blocks of weights sharing one absmax (4-bit); int8 scales whole rows
BNB_BLOCKS = {"nf4": 64, "fp4": 64, "int8": None}
BNB_BITS_MESSAGE = "bitsandbytes quantizes to 8 bits (bnb_int8) or 4 bits (bnb_nf4, bnb_fp4) only"
_BNB_BITS_RE = re.compile(r"bnb_(?:int|w|nf|fp|q)?[0-9]+")
COMPUTE_DTYPES = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class BitsAndBytes(Quantizer):
    bnb_type: str = "nf4"  # "int8" | "nf4" | "fp4"
    #: the 4-bit compute dtype the name fixes (bnb_nf4_bf16); None: the study's bnb_compute_dtype
    compute_dtype: str | None = None

    PATTERN: ClassVar[str] = r"bnb_(int8|(nf4|fp4)(_(fp32|bf16|fp16))?)"
    SYNTAX: ClassVar[str] = (
        "bnb_int8, bnb_nf4, bnb_fp4, or a 4-bit one with its compute dtype: bnb_nf4_bf16, "
        "bnb_fp4_fp32, ... (fp32, bf16, fp16)"
    )
    EXAMPLE: ClassVar[str] = "bnb_nf4"  # fp32 compute: the contract compares logits at 1e-5

    @classmethod
    def parse(cls, name: str) -> BitsAndBytes | None:
        base, dtype = name, ""
        for suffix in COMPUTE_DTYPES:
            if name.endswith("_" + suffix) and name[: -len(suffix) - 1] in ("bnb_nf4", "bnb_fp4"):
                base, dtype = name[: -len(suffix) - 1], suffix
        if base in BNB_TYPES:
            bnb_type, bits = BNB_TYPES[base]
            return cls(name, bits, bnb_type=bnb_type, compute_dtype=dtype or None)
        four_bit = re.fullmatch(r"(bnb_(?:nf4|fp4))_(\w+)", name)
        if four_bit:
            raise ValueError(
                f"unknown quantizer {name!r}: the compute dtype of {four_bit[1]} is one of "
                f"{', '.join(COMPUTE_DTYPES)} ({four_bit[1]}_bf16), got {four_bit[2]!r}"
            )
        if _BNB_BITS_RE.fullmatch(name):
            raise ValueError(f"unknown quantizer {name!r}: {BNB_BITS_MESSAGE}")
        return None

    @property
    def uses_compute_dtype(self) -> bool:  # type: ignore[override]
        """The study-wide bnb_compute_dtype applies (and is part of the cell's config) where the
        name does not fix the compute dtype (int8 as before, though it ignores it)."""
        return self.compute_dtype is None

    @property
    def quantizes_activations(self) -> bool:
        return self.bnb_type == "int8"  # LLM.int8 quantizes activations to int8 per row

    @property
    def batch_invariant(self) -> bool:
        # LLM.int8 keeps in fp16 the input columns where any row of the batch exceeds the outlier
        # threshold (Dettmers et al. 2022), so a prompt's logits depend on its batch mates
        return self.bnb_type != "int8"

    @property
    def block(self) -> None:
        return None  # any shape (blocks run over the flattened weight)

    @property
    def nominal_grid(self):
        return self.bits, BNB_BLOCKS[self.bnb_type]

    def load(
        self, model_path, *, compute_dtype="fp32", quant_dir=None, target_path=None, tokenizer=None
    ):
        import torch
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        from quantunlearn.models.loading import DTYPES, check_model_path

        compute_dtype = self.compute_dtype or compute_dtype
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"unknown compute_dtype {compute_dtype!r}; one of {COMPUTE_DTYPES}")
        if self.bnb_type == "int8":
            config = BitsAndBytesConfig(
                load_in_8bit=True, llm_int8_threshold=6.0, llm_int8_skip_modules=SKIP_MODULES
            )
        else:
            config = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=self.bnb_type,
                bnb_4bit_compute_dtype=DTYPES[compute_dtype],
                bnb_4bit_use_double_quant=False,
                llm_int8_skip_modules=SKIP_MODULES,
            )
        _silence_int8_cast_warning()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = AutoModelForCausalLM.from_pretrained(
            check_model_path(model_path),
            quantization_config=config,
            dtype=torch.float32,
            device_map=device,
        )
        disable_cpu_repacking(model)
        model.eval()
        unquantized = [n for n, m in quantizable_linears(model).items() if not _is_bnb(m)]
        if unquantized:
            raise RuntimeError(f"bitsandbytes left these Linear layers unquantized: {unquantized}")
        return model

    def effective_weights(self, model):
        """4-bit (NF4/FP4): unpacked by hand from the packed nibbles (two per byte, first element
        in the high nibble, row-major over [out, in]) and the per-block absmax: w =
        code[nibble] * absmax (QLoRA), which avoids bnb's CPU ``dequantize_4bit`` (wrong when
        in_features is not a multiple of the block size). int8: w = CB * SCB / 127 (row-wise
        absmax). A 4-bit weight repacked for the AVX512-BF16 kernel raises RuntimeError."""
        read = _int8_weight if self.bnb_type == "int8" else self._4bit_weight
        return {name: read(name, module) for name, module in quantizable_linears(model).items()}

    def _4bit_weight(self, name, module):
        import bitsandbytes as bnb

        if not isinstance(module, bnb.nn.Linear4bit):
            raise ValueError(f"{name} is a {type(module).__name__}, not bitsandbytes Linear4bit")
        state = module.weight.quant_state
        if state is None:
            raise RuntimeError(f"{name}: Linear4bit has no quant_state (was it quantized?)")
        if state.quant_type != self.bnb_type:
            raise ValueError(f"{name} is quantized as {state.quant_type}, not {self.name!r}")
        if getattr(state, "packing_format_for_cpu", False):
            raise RuntimeError(
                f"{name}: bitsandbytes repacked this 4-bit weight for its AVX512-BF16 CPU kernel "
                "(absmax rounded to bf16, layout changed); load the model with "
                "BitsAndBytes.load, which disables that repacking before any forward"
            )
        return dequantize_4bit_manual(module.weight.data, state)


def _is_bnb(module) -> bool:
    return type(module).__module__.startswith("bitsandbytes")


def _int8_weight(name, module):
    import bitsandbytes as bnb
    import torch

    if not isinstance(module, bnb.nn.Linear8bitLt):
        raise ValueError(f"{name} is a {type(module).__name__}, not bitsandbytes Linear8bitLt")
    # Before the first forward CB/SCB live on the weight; the forward moves them to module.state.
    cb = module.weight.CB if module.weight.CB is not None else module.state.CB
    scb = module.weight.SCB if module.weight.SCB is not None else module.state.SCB
    if cb is None:
        cb = module.weight.data
    if cb.dtype != torch.int8 or scb is None:
        raise RuntimeError(f"{name}: Linear8bitLt holds no int8 weight (was it quantized?)")
    return cb.to(torch.float32) * (scb.to(torch.float32).unsqueeze(1) / 127.0)


def dequantize_4bit_manual(packed, state):
    """Dequantize a bitsandbytes 4-bit weight in its standard layout: code[nibble] * absmax.

    `packed` holds two 4-bit indices per byte (first element in the high nibble) of the weight
    flattened row-major; block b covers flat elements [b * blocksize, (b + 1) * blocksize).
    A nested ("double quant") absmax is itself dequantized by hand: state2.code[byte] *
    state2.absmax[block] + offset.
    """
    import torch

    out_features, in_features = state.shape
    numel = out_features * in_features
    data = packed.reshape(-1).view(torch.uint8)
    nibbles = torch.stack((data >> 4, data & 0x0F), dim=-1).reshape(-1)[:numel].long()
    code = state.code.to(device=data.device, dtype=torch.float32)
    absmax = _absmax_fp32(state).to(data.device)
    per_element = absmax.repeat_interleave(state.blocksize)[:numel]
    return (code[nibbles] * per_element).reshape(out_features, in_features)


def _absmax_fp32(state):
    import torch

    if not state.nested:
        return state.absmax.to(torch.float32)
    inner = state.state2
    idx = state.absmax.view(torch.uint8).long()
    scales = inner.absmax.to(torch.float32).repeat_interleave(inner.blocksize)[: idx.numel()]
    return inner.code.to(torch.float32)[idx] * scales + float(state.offset)


class _DropInt8CastWarning(logging.Filter):
    """Drop bnb's per-matmul 'MatMul8bitLt: inputs will be cast from ... to float16' record
    (a `logging` warning emitted on every int8 matmul of every forward)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


def _silence_int8_cast_warning() -> None:
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropInt8CastWarning) for f in logger.filters):
        logger.addFilter(_DropInt8CastWarning())


def disable_cpu_repacking(model) -> int:
    """Workaround for bitsandbytes 0.50 on AVX512-BF16 CPUs: `Linear4bit.forward` otherwise
    repacks its weight in place on the first CPU inference forward (bf16 absmax, a layout that
    `dequantize_4bit` and `save_pretrained` mishandle). Must run before any forward. Returns the
    number of modules changed."""
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count
