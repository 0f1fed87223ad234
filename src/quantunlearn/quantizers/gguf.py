"""GGUF, llama.cpp's formats: ``gguf_{q8_0,q4_0,q4_1,q5_0,q5_1,q4_k_s,q4_k_m,q5_k_m,q6_k}``,
quantized at load time (the format most people run quantized open models in).

Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 come from gguf-py's own quantizer; K-quants (super-blocks of 256
weights in sub-blocks of 32 or 16) from GPTQModel's GGUF quantizer, byte-identical to GGML. The
_M/_S mixtures follow llama.cpp's `llama_tensor_get_type` for attn_v (v_proj) and ffn_down
(down_proj). Every weight is decoded with gguf-py's own dequantizer into an fp32 model. The
output projection and embeddings stay in float, as for every quantizer in this project (llama.cpp
would store lm_head as Q6_K).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from quantunlearn.quantizers.base import Quantizer, file_type_of, layer_of

#: llama.cpp types: (bits, block of weights sharing a scale) -> the nominal step of diagnostics.
GGUF_TYPES = {
    "q8_0": (8, 32),
    "q4_0": (4, 32),
    "q4_1": (4, 32),
    "q5_0": (5, 32),
    "q5_1": (5, 32),
    "q4_k_s": (4, 32),
    "q4_k_m": (4, 32),
    "q5_k_m": (5, 32),
    "q6_k": (6, 16),
}
_GGUF_BASE = {
    "q8_0": "Q8_0",
    "q4_0": "Q4_0",
    "q4_1": "Q4_1",
    "q5_0": "Q5_0",
    "q5_1": "Q5_1",
    "q4_k_s": "Q4_K",
    "q4_k_m": "Q4_K",
    "q5_k_m": "Q5_K",
    "q6_k": "Q6_K",
}
_K_TYPES = ("Q4_K", "Q5_K", "Q6_K")
K_SUPER_BLOCK = 256


@dataclass(frozen=True)
class GGUF(Quantizer):
    gguf_type: str = "q8_0"  # llama.cpp's file type, lower case

    PATTERN: ClassVar[str] = r"gguf_(" + "|".join(GGUF_TYPES) + ")"
    SYNTAX: ClassVar[str] = "gguf_{" + "|".join(GGUF_TYPES) + "}"
    EXAMPLE: ClassVar[str] = "gguf_q4_0"

    @classmethod
    def parse(cls, name: str) -> GGUF | None:
        kind = file_type_of(name, "gguf_", GGUF_TYPES, "GGUF types")
        return None if kind is None else cls(name, GGUF_TYPES[kind][0], gguf_type=kind)

    @property
    def block(self) -> int:
        """Rows are packed in blocks of 32 (16 for Q6_K) weights; K-quants in blocks of 256."""
        return K_SUPER_BLOCK if "_k" in self.gguf_type else GGUF_TYPES[self.gguf_type][1]

    @property
    def block_description(self) -> str:
        return f"GGUF {self.gguf_type.upper()} packs rows in blocks of {self.block} weights"

    @property
    def nominal_grid(self):
        return self.bits, GGUF_TYPES[self.gguf_type][1]

    def quantize_weight(self, weight, name, n_layers):
        tensor_type = gguf_tensor_type(self.gguf_type, name, n_layers)
        data = gguf_quantize_bytes(weight, tensor_type)
        return gguf_dequantize(data, tensor_type, tuple(weight.shape))


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's rule for the layers that get more bits in the _M mixtures."""
    return (
        i_layer < n_layers // 8
        or i_layer >= 7 * n_layers // 8
        or (i_layer - n_layers // 8) % 3 == 2
    )


def gguf_tensor_type(gguf_type: str, module_name: str, n_layers: int) -> str:
    """The GGML type llama.cpp gives one Linear weight under a file type (llama-quant.cpp,
    `llama_tensor_get_type`, for a Llama: attn_v = v_proj, ffn_down = down_proj)."""
    base = _GGUF_BASE[gguf_type]
    layer = layer_of(module_name) or 0
    leaf = module_name.rsplit(".", 1)[-1]
    if gguf_type in ("q4_k_m", "q5_k_m") and leaf in ("v_proj", "down_proj"):
        return "Q6_K" if use_more_bits(layer, n_layers) else base
    if gguf_type == "q4_k_s":
        if leaf == "v_proj" and layer < 4:
            return "Q5_K"
        if leaf == "down_proj" and layer < n_layers // 8:
            return "Q5_K"
    return base


def gguf_quantize_bytes(weight, tensor_type: str):
    """GGML bytes of a [out, in] weight (blocks along each row, as llama.cpp stores them)."""
    import gguf
    import numpy as np
    import torch

    w = weight.detach().to(torch.float32).cpu().numpy()
    qtype = gguf.GGMLQuantizationType[tensor_type]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if w.shape[1] % block:
        raise ValueError(
            f"GGUF {tensor_type} needs rows of a multiple of {block} weights; this weight has "
            f"{w.shape[1]} columns (use a tiny_model hidden/intermediate size divisible by {block})"
        )
    if tensor_type in _K_TYPES:
        from quantunlearn.quantizers.gptq_awq import import_gptqmodel

        import_gptqmodel()
        from gptqmodel.nn_modules.qlinear.gguf import _fallback_gguf_quantize

        return np.ascontiguousarray(_fallback_gguf_quantize(w, tensor_type)).view(np.uint8)
    return gguf.quants.quantize(w, qtype)


def gguf_dequantize(data, tensor_type: str, shape: tuple[int, int]):
    """gguf-py's own dequantizer (the reference), as an fp32 [out, in] tensor."""
    import gguf
    import numpy as np
    import torch

    values = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[tensor_type])
    return torch.from_numpy(np.asarray(values, dtype=np.float32).reshape(shape).copy())
