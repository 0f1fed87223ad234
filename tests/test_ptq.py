"""GPTQ, AWQ, GGUF and the noflip counterfactual: names, hand-computed values, and the effective
weights against the real quantized models (GPTQModel's own kernels, gguf-py's dequantizer)."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch

from quantunlearn.data.calibration import calibration_texts, general_corpus
from quantunlearn.quantizers import parse_quantizer, quantizable_linears
from quantunlearn.quantizers.gguf import (
    GGUF,
    gguf_dequantize,
    gguf_quantize_bytes,
    gguf_tensor_type,
    use_more_bits,
)
from quantunlearn.quantizers.gptq_awq import (
    AWQ,
    GPTQ,
    dequantize_awq,
    dequantize_gptq,
    load_stored,
)
from quantunlearn.quantizers.noflip import NoFlip, noflip_weight
from quantunlearn.quantizers.rtn import RTN, rtn_quantize
from quantunlearn.reports import BY_NAME as REPORTS
from quantunlearn.study import load_study
from quantunlearn.study.config import ConfigError

# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gptq_w4g128", GPTQ("gptq_w4g128", 4, 128)),
        ("gptq_w8g128", GPTQ("gptq_w8g128", 8, 128)),
        ("gptq_w4", GPTQ("gptq_w4", 4)),
        ("awq_w4g64", AWQ("awq_w4g64", 4, 64)),
        ("gguf_q8_0", GGUF("gguf_q8_0", 8, gguf_type="q8_0")),
        ("gguf_q4_k_m", GGUF("gguf_q4_k_m", 4, gguf_type="q4_k_m")),
        (
            "noflip_rtn_w4g128",
            NoFlip("noflip_rtn_w4g128", 4, 128, base=RTN("rtn_w4g128", 4, 128)),
        ),
    ],
)
def test_parse_new_quantizers(name, expected):
    spec = parse_quantizer(name)
    assert spec == expected
    assert spec.stored == isinstance(spec, GPTQ | AWQ)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("gptq_w5g128", "GPTQ bit-width must be one of 4, 8"),
        ("gptq_w3g128", "GPTQ bit-width must be one of 4, 8"),
        ("awq_w8g128", "AWQ bit-width must be one of 4"),
        ("awq_w4", "AWQ needs a group size"),
        ("gptq_w4g0", "group size must be a positive integer"),
        ("gptq_w04g128", "GPTQ bit-width"),
        ("gguf_q3_k", "GGUF types are"),
        ("gguf_q4_k_l", "GGUF types are"),
        ("noflip_gptq_w4g128", "noflip_ needs an RTN quantizer"),
        ("noflip_rtn_w9", "RTN bit-width must be an integer in 2..8"),
    ],
)
def test_impossible_new_quantizers_are_errors(name, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        parse_quantizer(name)
    assert repr(name) in str(info.value)


def _config(quantizers, **tiny):
    return {
        "benchmarks": {"synthetic": {"source": "synthetic"}},
        "tiny_model": {"hidden_size": 256, "intermediate_size": 768, **tiny},
        "unlearn": {"methods": {"GA_GDR": {}}},
        "quantizers": quantizers,
        "evaluation": {},
    }


def test_config_rejects_impossible_quantizers_at_parse_time():
    with pytest.raises(ConfigError, match=r"quantizers\[1\]: unknown quantizer 'gptq_w5g128'"):
        load_study(_config(["none", "gptq_w5g128"]))
    with pytest.raises(ConfigError, match=r"quantizers\[1\]: gguf_q4_k_m: GGUF Q4_K_M packs"):
        load_study(_config(["none", "gguf_q4_k_m"], hidden_size=128, intermediate_size=384))
    with pytest.raises(ConfigError, match=r"quantizers\[1\]: awq_w4g96: group size 96"):
        load_study(_config(["none", "awq_w4g96"]))
    with pytest.raises(ConfigError, match=r"calibration.source"):
        load_study({**_config(["none"]), "calibration": {"source": "wikipedia"}})
    study = load_study({**_config(["none", "gptq_w4g128", "gguf_q4_k_m"]), "diagnostics": True})
    assert REPORTS["quant_tables"].applies(study)
    cell = study.cell_config("synthetic", study.runs.run.iloc[-1], "gptq_w4g128")
    assert cell["calibration"] == {"source": "general", "n_samples": 128, "max_len": 256, "seed": 0}
    assert len(study.diagnostic_files()) == 2  # one unlearned run x 2 quantizers


# ----------------------------------------------------------------------------- calibration


def test_general_corpus_is_deterministic_and_names_nobody(tmp_path):
    from quantunlearn.data.synthetic import FIRST_NAMES

    a, b = general_corpus(20, seed=0), general_corpus(20, seed=0)
    assert a == b and len(a) == 20 and general_corpus(20, seed=1) != a
    words = set(" ".join(a).replace(".", " ").replace(",", " ").split())
    assert not words & set(FIRST_NAMES)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "forget.txt").write_text("doc one\n\ndoc two\n\ndoc three\n")
    sample = calibration_texts("forget", 2, 0, bench_dir=tmp_path)
    assert len(sample) == 2 and set(sample) <= {"doc one", "doc two", "doc three"}
    with pytest.raises(ValueError, match="not one of"):
        calibration_texts("c4", 2)


# ----------------------------------------------------------------------------- RTN bit sweep


@pytest.mark.parametrize(
    ("bits", "expected_codes", "expected_values"),
    [
        # Delta = 0.8 / 2^(N-1); codes clamp(round(w / Delta), -2^(N-1), 2^(N-1) - 1)
        (2, [1, -1, 0, -2], [0.4, -0.4, 0.0, -0.8]),  # w/D = 2, -0.75, 0.125, -2
        (3, [3, -2, 0, -4], [0.6, -0.4, 0.0, -0.8]),  # w/D = 4, -1.5 (half to even), 0.25, -4
        (5, [15, -6, 1, -16], [0.75, -0.3, 0.05, -0.8]),  # w/D = 16, -6, 1, -16
        (8, [127, -48, 8, -128], [0.79375, -0.3, 0.05, -0.8]),  # w/D = 128, -48, 8, -128
    ],
)
def test_bit_sweep_against_eq2_by_hand(bits, expected_codes, expected_values):
    w = torch.tensor([[0.8, -0.3, 0.05, -0.8]])
    result = rtn_quantize(w, bits)
    assert result.codes.tolist() == [expected_codes]
    torch.testing.assert_close(result.dequantized, torch.tensor([expected_values]))
    assert result.scale.item() == pytest.approx(0.8 / 2 ** (bits - 1))


def test_bit_sweep_groups_by_hand():
    # two groups of 2 at 3 bits: Delta = 0.4/4 = 0.1 and 1.0/4 = 0.25
    w = torch.tensor([[0.4, 0.13, -1.0, 0.3]])
    result = rtn_quantize(w, 3, group_size=2)
    assert result.codes.tolist() == [[3, 1, -4, 1]]  # 4 -> clamp 3; 1.3 -> 1; -4; 1.2 -> 1
    torch.testing.assert_close(result.dequantized, torch.tensor([[0.3, 0.1, -1.0, 0.25]]))


# ----------------------------------------------------------------------------- noflip


def test_noflip_forces_target_codes_with_unlearned_step():
    # 3 bits, Delta = 0.8/4 = 0.2: target codes 3 (4 clipped), 2 (1.65), 0 (0.25), -4
    target = torch.tensor([[0.8, 0.33, 0.05, -0.8]])
    unlearned = torch.tensor([[0.8, 0.29, 0.11, -0.8]])  # 1.45 -> 1, 0.55 -> 1: two flips
    assert rtn_quantize(target, 3).codes.tolist() == [[3, 2, 0, -4]]
    assert rtn_quantize(unlearned, 3).codes.tolist() == [[3, 1, 1, -4]]
    noflip = noflip_weight(target, unlearned, 3, None)
    torch.testing.assert_close(noflip, torch.tensor([[0.6, 0.4, 0.0, -0.8]]))
    # a changed step is kept: the unlearned max grows to 1.0 -> Delta 0.25
    bigger = torch.tensor([[1.0, 0.33, 0.05, -0.8]])
    torch.testing.assert_close(
        noflip_weight(target, bigger, 3, None), torch.tensor([[0.75, 0.5, 0.0, -1.0]])
    )
    same = noflip_weight(unlearned, unlearned, 3, None)
    torch.testing.assert_close(same, rtn_quantize(unlearned, 3).dequantized)


def test_load_noflip_model(tiny_model, tiny_model_dir, tmp_path):
    unlearned = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in unlearned.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    unlearned.save_pretrained(tmp_path)
    spec = parse_quantizer("noflip_rtn_w4")
    model = spec.load(tmp_path, target_path=tiny_model_dir)
    target_lin = quantizable_linears(tiny_model)
    for name, module in quantizable_linears(model).items():
        expected = noflip_weight(
            target_lin[name].weight, quantizable_linears(unlearned)[name].weight, 4, None
        )
        torch.testing.assert_close(module.weight, expected)
    torch.testing.assert_close(model.model.embed_tokens.weight, unlearned.model.embed_tokens.weight)
    with pytest.raises(ValueError, match="needs the target"):
        spec.load(tmp_path)


# ----------------------------------------------------------------------------- GGUF


def test_q8_0_bytes_by_hand():
    # one block of 32: d = max|x| / 127 stored as fp16, q = round(x / d); GGML layout: d, 32 int8
    x = np.linspace(-1.0, 0.5, 32, dtype=np.float32).reshape(1, 32)
    data = gguf_quantize_bytes(torch.from_numpy(x), "Q8_0").reshape(-1)
    assert data.size == 34
    d = np.float16(1.0 / 127)
    assert data[:2].view(np.float16)[0] == d
    q = data[2:].view(np.int8)
    np.testing.assert_array_equal(q, np.round(x[0] / np.float32(d)).astype(np.int8))
    decoded = gguf_dequantize(data, "Q8_0", (1, 32))
    np.testing.assert_allclose(decoded.numpy()[0], q.astype(np.float32) * np.float32(d), rtol=0)


@pytest.mark.parametrize("tensor_type", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q4_K", "Q5_K", "Q6_K"])
def test_gguf_bytes_decode_with_gguf_py_and_gptqmodel_alike(tensor_type):
    """gguf-py's dequantizer (the reference) and GPTQModel's own (for the types it reads)
    decode the same bytes alike, and the error is that of a 4-8 bit quantizer."""
    from gptqmodel.nn_modules.qlinear.gguf import _dequantize_gguf_tensor_numpy

    torch.manual_seed(0)
    w = torch.randn(8, 512) * 0.05
    data = gguf_quantize_bytes(w, tensor_type)
    ours = gguf_dequantize(data, tensor_type, (8, 512))
    if tensor_type not in ("Q4_1", "Q5_0"):  # GPTQModel 7.6 does not read these two
        theirs = _dequantize_gguf_tensor_numpy(data.reshape(8, -1), tensor_type)
        theirs = np.asarray(theirs, dtype=np.float32).reshape(8, 512)
        np.testing.assert_array_equal(ours.numpy(), theirs)
    rel = ((ours - w).norm() / w.norm()).item()
    assert (
        0.0 < rel < {"Q8_0": 0.01, "Q6_K": 0.03, "Q5_0": 0.06, "Q5_K": 0.06}.get(tensor_type, 0.12)
    )


def test_gguf_row_length_must_fit_blocks():
    with pytest.raises(ValueError, match="multiple of 256"):
        gguf_quantize_bytes(torch.zeros(4, 128), "Q4_K")


def test_q4_k_m_mixture_follows_llama_cpp():
    # use_more_bits: first and last eighth, and every third layer in between
    # n = 32: layers 0-3 (first eighth), then 6, 9, ... ((i - 4) % 3 == 2), and 28-31
    assert [use_more_bits(i, 32) for i in range(10)] == [1, 1, 1, 1, 0, 0, 1, 0, 0, 1]
    assert use_more_bits(28, 32) and use_more_bits(27, 32) and not use_more_bits(26, 32)
    assert [use_more_bits(i, 2) for i in range(2)] == [False, True]
    assert gguf_tensor_type("q4_k_m", "model.layers.1.self_attn.v_proj", 2) == "Q6_K"
    assert gguf_tensor_type("q4_k_m", "model.layers.0.mlp.down_proj", 2) == "Q4_K"
    assert gguf_tensor_type("q4_k_m", "model.layers.1.mlp.up_proj", 2) == "Q4_K"
    assert gguf_tensor_type("q4_k_s", "model.layers.0.self_attn.v_proj", 32) == "Q5_K"
    assert gguf_tensor_type("q4_0", "model.layers.1.self_attn.v_proj", 2) == "Q4_0"


def test_gguf_model_holds_gguf_effective_weights(tiny_model_dir):
    """The gguf_q8_0 model computes with gguf-py's decoding of its Q8_0 bytes, nothing else."""
    from quantunlearn.models.loading import load_model

    source = load_model(str(tiny_model_dir))
    fake = parse_quantizer("gguf_q8_0").load(tiny_model_dir)
    for name, module in quantizable_linears(source).items():
        data = gguf_quantize_bytes(module.weight, "Q8_0")
        expected = gguf_dequantize(data, "Q8_0", tuple(module.weight.shape))
        torch.testing.assert_close(fake.get_submodule(name).weight, expected, rtol=0, atol=0)
    torch.testing.assert_close(fake.lm_head.weight, source.lm_head.weight, rtol=0, atol=0)


# ----------------------------------------------------------------------------- GPTQ, AWQ


def _real(path, quant):
    from gptqmodel import BACKEND, GPTQModel

    backend = BACKEND.TORCH if quant.startswith("gptq") else BACKEND.AWQ_TORCH
    return GPTQModel.load(str(path), device="cpu", backend=backend, dtype=torch.float16)


@pytest.mark.parametrize("quant", ["gptq_w4g128", "gptq_w8g128", "awq_w4g128"])
def test_stored_effective_weights_reproduce_quantized_logits(stored, tiny_model_dir, quant):
    """The fp32 model of `load_stored` computes what GPTQModel's quantized model computes.

    Tolerance: GPTQModel's CPU kernels run in fp16, so the fp16 copy of our model must match
    to 2e-3 of the logit scale; the fp32 model to 1e-2 (fp16 activations in the real model).
    """
    spec = parse_quantizer(quant)
    fake = spec.load(tiny_model_dir, quant_dir=stored[quant])
    real = _real(stored[quant], quant)
    # decoded weights equal GPTQModel's own decoders (fp32 scales: exact)
    from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm

    for name, module in real.model.named_modules():
        if not hasattr(module, "qweight"):
            continue
        if isinstance(spec, GPTQ):
            module.scales = module.scales.float()
            ref = module.dequantize_weight().T.float()
        else:
            ref = dequantize_gemm(module.qweight, module.qzeros, module.scales.float(), 4, 128).T
        torch.testing.assert_close(fake.get_submodule(name).weight, ref.float(), rtol=0, atol=1e-6)
    real = _real(stored[quant], quant)  # fresh: the loop above changed its scales
    ids = torch.tensor([[1, 5, 9, 40, 77, 3, 120, 8, 200, 17]])
    with torch.no_grad():
        lr = real.model(ids).logits.float()
        lf = fake(ids).logits
        lh = copy.deepcopy(fake).half()(ids).logits.float()
    scale = lr.abs().max().item()
    assert (lh - lr).abs().max().item() < 2e-3 * max(scale, 1.0)
    assert (lf - lr).abs().max().item() < 1e-2 * max(scale, 1.0)
    # and it is quantized: the weights are not the original ones
    source = parse_quantizer("none").load(tiny_model_dir)
    w0 = quantizable_linears(source)["model.layers.0.mlp.up_proj"].weight
    w1 = quantizable_linears(fake)["model.layers.0.mlp.up_proj"].weight
    assert 0.001 < ((w1 - w0).norm() / w0.norm()).item() < 0.2


def test_awq_folds_scales_into_norms(stored, tiny_model_dir):
    """AWQ changes the RMSNorm weights; the fp32 model must take them from the checkpoint."""
    from quantunlearn.models.loading import load_model

    source = load_model(str(tiny_model_dir))
    fake = parse_quantizer("awq_w4g128").load(tiny_model_dir, quant_dir=stored["awq_w4g128"])
    norm = "model.layers.0.input_layernorm.weight"
    changed = (fake.state_dict()[norm] - source.state_dict()[norm]).abs().max().item()
    assert changed > 1e-3
    # without the folded norms the model is not the quantized one
    broken = copy.deepcopy(fake)
    with torch.no_grad():
        for name, p in broken.named_parameters():
            if "norm" in name:
                p.copy_(source.state_dict()[name])
    ids = torch.tensor([[1, 5, 9, 40, 77, 3, 120, 8]])
    real = _real(stored["awq_w4g128"], "awq_w4g128")
    with torch.no_grad():
        lr = real.model(ids).logits.float()
        good = (fake(ids).logits - lr).abs().max().item()
        bad = (broken(ids).logits - lr).abs().max().item()
    assert bad > 5 * good


def test_stored_checkpoint_checks(stored, tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="not gptq_w8g128"):
        load_stored(tiny_model_dir, parse_quantizer("gptq_w8g128"), stored["gptq_w4g128"])
    with pytest.raises(FileNotFoundError, match="quantize_config.json"):
        load_stored(tiny_model_dir, parse_quantizer("gptq_w4g128"), tmp_path)
    with pytest.raises(ValueError, match="pass its quant_dir"):
        parse_quantizer("awq_w4g128").load(tiny_model_dir)


def test_gptq_decoder_by_hand():
    # 4 bits, one group; v1 format stores zero - 1 = 7; word packs 8 rows, row j at bits 4j
    rows = torch.tensor([0, 1, 7, 8, 9, 15, 3, 12])  # q for input rows 0..7, one output column
    word = sum(int(v) << (4 * j) for j, v in enumerate(rows.tolist()))
    word = word - (1 << 32) if word >= 1 << 31 else word
    zeros_word = sum(7 << (4 * j) for j in range(8))
    zeros_word = zeros_word - (1 << 32) if zeros_word >= 1 << 31 else zeros_word
    tensors = {
        "qweight": torch.tensor([[word]], dtype=torch.int32),
        "qzeros": torch.tensor([[zeros_word]], dtype=torch.int32),
        "scales": torch.tensor([[0.5]], dtype=torch.float16),
        "g_idx": torch.zeros(8, dtype=torch.int32),
    }
    w = dequantize_gptq(tensors, 4)
    assert w.shape == (1, 8)
    torch.testing.assert_close(w[0], (rows.float() - 8) * 0.5)


def test_awq_decoder_by_hand():
    # AWQ GEMM: column c of a word of 8 output columns sits at nibble position order^-1(c)
    q = [3, 14, 0, 9, 5, 1, 15, 7]  # output columns 0..7, one input row
    order = [0, 2, 4, 6, 1, 3, 5, 7]  # nibble j holds column order[j]
    word = sum(q[order[j]] << (4 * j) for j in range(8))
    word = word - (1 << 32) if word >= 1 << 31 else word
    zword = sum(8 << (4 * j) for j in range(8)) - (1 << 32)
    tensors = {
        "qweight": torch.tensor([[word]], dtype=torch.int32),
        "qzeros": torch.tensor([[zword]], dtype=torch.int32),
        "scales": torch.full((1, 8), 0.25, dtype=torch.float16),
    }
    w = dequantize_awq(tensors, 4, group_size=1)
    torch.testing.assert_close(w[:, 0], (torch.tensor(q).float() - 8) * 0.25)
