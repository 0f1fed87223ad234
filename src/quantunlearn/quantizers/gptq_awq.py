"""GPTQ (Frantar et al. 2023) and AWQ (Lin et al. 2024) through GPTQModel: ``gptq_w{4|8}[g{G}]``
and ``awq_w4g{G}``, calibrated on text and stored as checkpoints by the `quantize` rule.

(Zhang et al., ICLR 2025, Table 2) reports that GPTQ and AWQ restore forgotten knowledge
like RTN does. GPTQModel 7.6 is the maintained successor of auto-gptq and autoawq (both broken on
this stack); `quantize_stored` writes its checkpoint (GPTQ v1 format, AWQ GEMM format) as a DAG
output, and `load` decodes the packed integers by hand into an fp32 model (tests/test_ptq.py:
equal to GPTQModel's own decoders, and to its kernels' logits). GPTQ runs on the fp32 weights;
GPTQModel's CPU AWQ kernel needs fp16, so AWQ sees the weights rounded to fp16. AWQ folds its
per-channel scales into the preceding RMSNorm weights (and into v_proj/up_proj rows); `load`
therefore takes every non-quantized tensor (norms included) from the checkpoint, so the fp32
model is the quantized model.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from quantunlearn.io import atomic_dir, write_json
from quantunlearn.quantizers.base import Quantizer, quantizable_linears

if TYPE_CHECKING:
    import torch
    from torch import nn

#: On a 2-core machine GPTQModel's loader pool asks for 2 workers but gets 1 by default
#: (`ValueError: Virtual pool 'model_loader:cpu' requests 2 workers ...`); set before GPTQModel
#: is first imported (it reads it once at import).
CPU_WORKERS_ENV = "GPTQMODEL_CPU_WORKERS"
STORED_INFO = "quantunlearn_quantize.json"
_PTQ_RE = re.compile(r"(gptq|awq)_w([0-9]+)(?:g([0-9]+))?")


def import_gptqmodel():
    os.environ.setdefault(CPU_WORKERS_ENV, str(max(2, os.cpu_count() or 2)))
    import gptqmodel

    return gptqmodel


@dataclass(frozen=True)
class _Calibrated(Quantizer):
    """GPTQ and AWQ: names ``{kind}_w{bits}[g{group}]``, checkpoint written by `quantize_stored`."""

    KIND: ClassVar[str]
    BITS: ClassVar[tuple[int, ...]]
    NEEDS_GROUP: ClassVar[bool] = False
    stored: ClassVar[bool] = True
    calibrated: ClassVar[bool] = True

    @classmethod
    def parse(cls, name: str):
        match = _PTQ_RE.fullmatch(name)
        if not match or match.group(1) != cls.KIND:
            return None
        _, bits_text, group_text = match.groups()
        if bits_text != str(int(bits_text)) or int(bits_text) not in cls.BITS:
            raise ValueError(
                f"unknown quantizer {name!r}: {cls.KIND.upper()} bit-width must be one of "
                f"{', '.join(map(str, cls.BITS))}"
            )
        if group_text is None and cls.NEEDS_GROUP:
            raise ValueError(
                f"unknown quantizer {name!r}: {cls.KIND.upper()} needs a group size "
                f"({cls.KIND}_w4g128)"
            )
        group = None if group_text is None else int(group_text)
        if group is not None and (group < 1 or group_text != str(group)):
            raise ValueError(
                f"unknown quantizer {name!r}: the group size must be a positive integer "
                f"without leading zeros (e.g. {cls.KIND}_w4g128)"
            )
        return cls(name, int(bits_text), group)

    def load(
        self, model_path, *, compute_dtype="fp32", quant_dir=None, target_path=None, tokenizer=None
    ):
        if quant_dir is None:
            raise ValueError(f"{self.name} is a stored quantizer: pass its quant_dir")
        return load_stored(model_path, self, quant_dir)


@dataclass(frozen=True)
class GPTQ(_Calibrated):
    KIND: ClassVar[str] = "gptq"
    BITS: ClassVar[tuple[int, ...]] = (4, 8)
    PATTERN: ClassVar[str] = r"gptq_w[48](g[1-9][0-9]*)?"
    SYNTAX: ClassVar[str] = "gptq_w{4|8}[g{G}]"
    EXAMPLE: ClassVar[str] = "gptq_w4g128"

    def gptqmodel_config(self, gptqmodel, group: int):
        """GPTQ on the fp32 weights: symmetric, no act-order."""
        import torch
        from gptqmodel.quantization.config import GPTQConfig

        config = GPTQConfig(bits=self.bits, group_size=group, sym=True, desc_act=False)
        return config, torch.float32, {}

    def decode(self, tensors, group: int):
        return dequantize_gptq(tensors, self.bits)


@dataclass(frozen=True)
class AWQ(_Calibrated):
    KIND: ClassVar[str] = "awq"
    BITS: ClassVar[tuple[int, ...]] = (4,)
    NEEDS_GROUP: ClassVar[bool] = True
    PATTERN: ClassVar[str] = r"awq_w4g[1-9][0-9]*"
    SYNTAX: ClassVar[str] = "awq_w4g{G}"
    EXAMPLE: ClassVar[str] = "awq_w4g128"

    def gptqmodel_config(self, gptqmodel, group: int):
        """AWQ in GEMM format; GPTQModel's only CPU path (AWQ_TORCH) runs on fp16 weights."""
        import torch
        from gptqmodel.quantization.config import AWQConfig

        config = AWQConfig(bits=self.bits, group_size=group)
        return config, torch.float16, {"backend": gptqmodel.BACKEND.AWQ_TORCH}

    def decode(self, tensors, group: int):
        return dequantize_awq(tensors, self.bits, group)


def quantize_stored(
    model_path: str | Path,
    spec: _Calibrated,
    texts: list[str],
    out_dir: str | Path,
    *,
    max_len: int,
    tokenizer: str | None = None,
) -> dict:
    """Quantize a saved model with GPTQ or AWQ (GPTQModel) and write the checkpoint atomically.

    ``texts`` are the calibration samples, each cut to ``max_len`` tokens. Writes GPTQModel's
    checkpoint plus ``quantunlearn_quantize.json`` (quantizer, calibration size, seconds).
    """
    if not texts:
        raise ValueError(f"{spec.name}: no calibration text")
    import torch

    gptqmodel = import_gptqmodel()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer or str(model_path))
    calibration = []
    for text in texts:
        ids = tok(text, truncation=True, max_length=max_len)["input_ids"]
        calibration.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    group = -1 if spec.group_size is None else spec.group_size
    start = time.time()
    config, dtype, kwargs = spec.gptqmodel_config(gptqmodel, group)
    if hasattr(config, "fallback"):  # GPTQ proper on every module, never its RTN fallback
        config.fallback = None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with atomic_dir(out_dir) as tmp:
        # GPTQModel writes a per-module quantization log to ./logs (a hard-coded relative path):
        # keep it with the checkpoint instead of in the working directory
        from gptqmodel.looper import loop_processor

        loop_processor._PROJECT_LOG_DIR = Path(tmp) / "gptqmodel_logs"
        model = gptqmodel.GPTQModel.load(str(model_path), config, device=device, dtype=dtype)
        model.quantize(calibration, batch_size=1, **kwargs)
        seconds = time.time() - start
        info = _stored_info(spec, model_path, calibration, dtype, seconds, gptqmodel.__version__)
        model.save(str(tmp))
        write_json(info, Path(tmp) / STORED_INFO)
    return info


def _stored_info(spec, model_path, calibration, dtype, seconds, version) -> dict:
    return {
        "quant": spec.name,
        "source_model": str(model_path),
        "n_calibration": len(calibration),
        "calibration_tokens": int(sum(len(c["input_ids"]) for c in calibration)),
        "quantize_dtype": str(dtype).removeprefix("torch."),
        "quantize_seconds": seconds,
        "gptqmodel": version,
    }


def _unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [n / (32 / bits), m] -> int64 [n, m]: value j of a word sits at bits j*bits."""
    import torch

    per_word = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int64)
    words = packed.to(torch.int64) & 0xFFFFFFFF
    values = (words.unsqueeze(1) >> shifts.view(1, -1, 1)) & ((1 << bits) - 1)
    return values.reshape(packed.shape[0] * per_word, packed.shape[1])


def _unpack_cols(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [n, m / (32 / bits)] -> int64 [n, m], value j of a word at bits j*bits."""
    return _unpack_rows(packed.T.contiguous(), bits).T


#: AWQ's GEMM format stores the 8 nibbles of a word in the order 0, 2, 4, 6, 1, 3, 5, 7.
_AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def dequantize_gptq(tensors: dict[str, torch.Tensor], bits: int) -> torch.Tensor:
    """GPTQ v1 checkpoint (qweight [in/p, out], qzeros [g, out/p], scales [g, out], g_idx [in])
    -> fp32 [out, in]: w[i, o] = scales[g_idx[i], o] * (q[i, o] - (qzeros[g_idx[i], o] + 1)).

    The v1 format stores zero - 1 (the historical auto-gptq convention; GPTQModel converts to it
    on save), so a symmetric 4-bit weight has stored zeros 7 and effective zero 8.
    """
    import torch

    q = _unpack_rows(tensors["qweight"], bits)
    zeros = _unpack_cols(tensors["qzeros"], bits) + 1
    scales = tensors["scales"].to(torch.float32)
    g_idx = tensors["g_idx"].long()
    zeros = zeros[:, : scales.shape[1]]
    weight = scales[g_idx] * (q[: g_idx.numel()] - zeros[g_idx]).to(torch.float32)
    return weight.T.contiguous()


def dequantize_awq(tensors: dict[str, torch.Tensor], bits: int, group_size: int) -> torch.Tensor:
    """AWQ GEMM checkpoint (qweight [in, out/p], qzeros [g, out/p], scales [g, out]) -> fp32
    [out, in]: w[i, o] = scales[i // group, o] * (q[i, o] - zeros[i // group, o])."""
    import torch

    if bits != 4:
        raise ValueError(f"AWQ GEMM packs 4 bits, got {bits}")
    order = torch.tensor(_AWQ_ORDER)

    def unpack(packed: torch.Tensor) -> torch.Tensor:
        values = _unpack_cols(packed, bits)  # [n, m], nibble j of word w at column w*8 + j
        values = values.reshape(values.shape[0], -1, 8)
        out = torch.empty_like(values)
        out[:, :, order] = values
        return out.reshape(values.shape[0], -1)

    q = unpack(tensors["qweight"])
    zeros = unpack(tensors["qzeros"])
    scales = tensors["scales"].to(torch.float32)
    zeros = zeros[:, : scales.shape[1]]
    groups = torch.arange(q.shape[0]) // group_size
    weight = scales[groups] * (q - zeros[groups]).to(torch.float32)
    return weight.T.contiguous()


def _read_checkpoint(quant_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(quant_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{quant_dir} holds no .safetensors: not a quantized checkpoint")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_file(str(file)))
    return tensors


def stored_config(quant_dir: str | Path) -> dict:
    path = Path(quant_dir) / "quantize_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {quant_dir} is not a GPTQModel checkpoint")
    return json.loads(path.read_text())


def load_stored(model_path: str | Path, spec: _Calibrated, quant_dir: str | Path) -> nn.Module:
    """The fp32 model that computes exactly what the stored GPTQ/AWQ checkpoint computes.

    The architecture comes from ``model_path`` (the unquantized model); every tensor comes from
    the checkpoint: quantized Linears decoded by hand in fp32, all other tensors (embeddings,
    lm_head, and the RMSNorm weights into which AWQ folded its scales) as stored.
    """
    quant_dir = Path(quant_dir)
    qconfig = stored_config(quant_dir)
    if qconfig.get("quant_method") != spec.KIND or qconfig.get("bits") != spec.bits:
        raise ValueError(
            f"{quant_dir} holds a {qconfig.get('quant_method')} {qconfig.get('bits')}-bit "
            f"checkpoint, not {spec.name}"
        )
    group = qconfig.get("group_size", -1)
    tensors = _read_checkpoint(quant_dir)
    import torch

    from quantunlearn.models.loading import load_model

    model = load_model(str(model_path), "fp32")
    linears = quantizable_linears(model)
    state = model.state_dict()
    with torch.no_grad():
        for name, module in linears.items():
            parts = {
                k.removeprefix(name + "."): v
                for k, v in tensors.items()
                if k.startswith(name + ".")
            }
            if "qweight" not in parts:
                raise RuntimeError(f"{quant_dir}: no quantized weight for {name}")
            in_features = module.weight.shape[1]
            weight = spec.decode(parts, in_features if group == -1 else group)
            if weight.shape != module.weight.shape:
                raise RuntimeError(
                    f"{name}: decoded {tuple(weight.shape)} != {tuple(module.weight.shape)}"
                )
            module.weight.copy_(weight)
        quantized = {f"{n}.weight" for n in linears}
        for key, value in tensors.items():
            if key in state and key not in quantized:
                state[key].copy_(value.to(torch.float32))
    return model.eval()


def quantize_run(
    model_path: str | Path,
    quantizer: _Calibrated,
    bench_dir: str | Path,
    out_dir: str | Path,
    *,
    calibration: dict,
    benchmark: dict | None = None,
    tokenizer: str | None = None,
) -> dict:
    """The `quantize` rule: calibration text from the config, then `quantize_stored`."""
    from quantunlearn.data.calibration import calibration_texts

    if not quantizer.stored:
        raise ValueError(f"{quantizer.name} is quantized at load time, not stored (GPTQ, AWQ are)")
    texts = calibration_texts(
        calibration["source"],
        calibration["n_samples"],
        calibration["seed"],
        bench_dir=bench_dir,
        benchmark=benchmark,
    )
    info = quantize_stored(
        model_path, quantizer, texts, out_dir, max_len=calibration["max_len"], tokenizer=tokenizer
    )
    print(json.dumps(info, indent=1))
    return info
