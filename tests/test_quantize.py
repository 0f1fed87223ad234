"""Quantizers: name parsing, RTN (eq. 2 of Zhang et al., ICLR 2025) by hand, and real
bitsandbytes models checked against their own forward pass and against first principles."""

from __future__ import annotations

import copy
import re

import bitsandbytes as bnb
import jsonschema
import pytest
import torch
from torch import nn

from quantunlearn.quantizers import (
    FullPrecision,
    parse_quantizer,
    quantizable_linears,
    quantizer_pattern,
)
from quantunlearn.quantizers.base import relative_error
from quantunlearn.quantizers.bnb import BitsAndBytes, dequantize_4bit_manual
from quantunlearn.quantizers.rtn import RTN, rtn_quantize

QUANTIZER_PATTERN = quantizer_pattern()

BNB_MESSAGE = re.escape(
    "bitsandbytes quantizes to 8 bits (bnb_int8) or 4 bits (bnb_nf4, bnb_fp4) only"
)

# The 16 levels of NF4 (QLoRA, Dettmers et al. 2023, appendix E) and of bitsandbytes' own FP4
# (levels 0, 0.03125, 1, 1.5, 2, 3, 4, 6 and their negatives, divided by 6), written out here
# rather than read from the library, indexed by the 4-bit code.
NF4_TABLE = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]  # fmt: skip
FP4_TABLE = [
    0.0, 0.0052083333, 0.6666666667, 1.0, 0.3333333333, 0.5, 0.1666666667, 0.25,
    0.0, -0.0052083333, -0.6666666667, -1.0, -0.3333333333, -0.5, -0.1666666667, -0.25,
]  # fmt: skip

PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
QUANTIZERS = ["rtn_w4", "rtn_w4g128", "rtn_w8", "bnb_nf4", "bnb_fp4", "bnb_int8"]

# Relative Frobenius error of the effective weights against the original ones, per quantizer
# (measured on the tiny model: rtn_w4 0.104-0.118, rtn_w4g128 0.104-0.107, rtn_w8 0.0064-0.0073,
# nf4 0.092-0.093, fp4 0.121-0.123, int8 0.0063-0.0073; notes: nf4 0.092, fp4 0.122).
WEIGHT_ERROR_BOUNDS = {
    "rtn_w4": (0.07, 0.16),
    "rtn_w4g128": (0.07, 0.16),
    "rtn_w8": (0.003, 0.012),
    "bnb_nf4": (0.07, 0.15),
    "bnb_fp4": (0.09, 0.18),
    "bnb_int8": (0.003, 0.012),
}


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("none", FullPrecision("none")),
        ("bnb_int8", BitsAndBytes("bnb_int8", 8, bnb_type="int8")),
        ("bnb_nf4", BitsAndBytes("bnb_nf4", 4, bnb_type="nf4")),
        ("bnb_fp4", BitsAndBytes("bnb_fp4", 4, bnb_type="fp4")),
        ("rtn_w2", RTN("rtn_w2", 2)),
        ("rtn_w4", RTN("rtn_w4", 4)),
        ("rtn_w8", RTN("rtn_w8", 8)),
        ("rtn_w4g128", RTN("rtn_w4g128", 4, 128)),
        ("rtn_w3g1", RTN("rtn_w3g1", 3, 1)),
    ],
)
def test_parse_valid_names(name, expected):
    assert parse_quantizer(name) == expected


@pytest.mark.parametrize("name", ["bnb_int4", "bnb_w3", "bnb_int3", "bnb_nf8", "bnb_fp8", "bnb_4"])
def test_parse_bad_bnb_bit_width(name):
    with pytest.raises(ValueError, match=BNB_MESSAGE) as info:
        parse_quantizer(name)
    assert repr(name) in str(info.value)


@pytest.mark.parametrize(
    "name", ["rtn_w1", "rtn_w9", "rtn_w16", "rtn_w0", "rtn_w16g128", "rtn_w04"]
)
def test_parse_bad_rtn_bit_width(name):
    with pytest.raises(ValueError, match=r"RTN bit-width must be an integer in 2\.\.8") as info:
        parse_quantizer(name)
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("name", ["rtn_w4g0", "rtn_w4g0128"])
def test_parse_bad_group_size(name):
    with pytest.raises(ValueError, match=re.escape(repr(name)) + ".*group size"):
        parse_quantizer(name)


@pytest.mark.parametrize(
    "name", ["gptq", "", "None", "RTN_W4", " none", "bnb_int8 ", "rtn_w4g", "rtn_w4g128x", "rtn4"]
)
def test_parse_unknown_name_lists_allowed(name):
    with pytest.raises(ValueError) as info:
        parse_quantizer(name)
    message = str(info.value)
    assert repr(name) in message
    for allowed in ("none", "bnb_int8", "bnb_nf4", "bnb_fp4", "rtn_w{N}", "rtn_w{N}g{G}"):
        assert allowed in message


NAMES_FOR_PATTERN = [
    "none", "bnb_int8", "bnb_nf4", "bnb_fp4", "rtn_w2", "rtn_w8", "rtn_w4g128", "rtn_w3g1",
    "rtn_w8g4096", "rtn_w1", "rtn_w9", "rtn_w10", "rtn_w4g0", "rtn_w4g012", "rtn_w4g", "bnb_int4",
    "bnb_w3", "gptq", "", "none ", "xnone", "rtn_w4g128\n", "RTN_W4", "bnb_nf4_dq",
    # GPTQ / AWQ / GGUF / noflip names
    "gptq_w4g128", "gptq_w8", "gptq_w5g128", "awq_w4g128", "awq_w4", "awq_w8g128",
    "gguf_q8_0", "gguf_q4_k_m", "gguf_q6_k", "gguf_q3_k", "gguf_", "noflip_rtn_w4g128",
    "noflip_rtn_w2", "noflip_bnb_nf4", "noflip_rtn_w9", "gptq_w4g0128", "awq_w4g128\n",
]  # fmt: skip


@pytest.mark.parametrize("name", NAMES_FOR_PATTERN)
def test_pattern_agrees_with_parser(name):
    try:
        parse_quantizer(name)
        accepted = True
    except ValueError:
        accepted = False
    # jsonschema applies "pattern" with re.search semantics, as a JSON-schema validator must.
    schema = {"type": "string", "pattern": QUANTIZER_PATTERN}
    valid = jsonschema.Draft202012Validator(schema).is_valid(name)
    assert valid == accepted
    assert (re.fullmatch(QUANTIZER_PATTERN, name) is not None) == accepted


# ----------------------------------------------------------------------------- RTN by hand


def test_rtn_per_channel_4bit_by_hand():
    # All values are exact in binary, so every code below is unambiguous, ties included.
    w = torch.tensor(
        [
            [1.0, 0.3125, 0.4375, -0.0625],  # Delta = 1/8: codes 8 -> 7 (clipped), 2.5, 3.5, -0.5
            [-0.8, 0.2, 0.05, 0.0],  # Delta = 0.1 (0.8/8): -8 is representable, 0.5 -> 0
            [0.0, 0.0, 0.0, 0.0],  # Delta = 0: codes 0, no NaN
        ]
    )
    result = rtn_quantize(w, bits=4)
    assert result.codes.dtype == torch.int8
    assert result.scale.shape == (3, 1)
    torch.testing.assert_close(result.scale, torch.tensor([[0.125], [0.1], [0.0]]))
    # Round half to even (torch.round): 2.5 -> 2, 3.5 -> 4, -0.5 -> 0, 0.5 -> 0.
    expected_codes = torch.tensor([[7, 2, 4, 0], [-8, 2, 0, 0], [0, 0, 0, 0]], dtype=torch.int8)
    assert torch.equal(result.codes, expected_codes)
    expected = torch.tensor([[0.875, 0.25, 0.5, 0.0], [-0.8, 0.2, 0.0, 0.0], [0.0] * 4])
    torch.testing.assert_close(result.dequantized, expected, rtol=0, atol=1e-7)
    assert torch.isfinite(result.dequantized).all()


def test_rtn_grouped_by_hand():
    # Two groups of 2 columns per row: group 0 max 1.0 (Delta 1/8), group 1 max 0.5 (Delta 1/16).
    w = torch.tensor([[1.0, 0.3125, -0.5, 0.125], [0.0, 0.0, 0.25, -0.125]])
    result = rtn_quantize(w, bits=4, group_size=2)
    assert torch.equal(result.scale, torch.tensor([[0.125, 0.0625], [0.0, 0.03125]]))
    assert torch.equal(
        result.codes,
        torch.tensor([[7, 2, -8, 2], [0, 0, 7, -4]], dtype=torch.int8),  # 8 clipped to 7
    )
    assert torch.equal(
        result.dequantized, torch.tensor([[0.875, 0.25, -0.5, 0.125], [0.0, 0.0, 0.21875, -0.125]])
    )


def test_rtn_8_and_2_bits_by_hand():
    w8 = torch.tensor([[1.0, -0.5, 0.00390625, 0.01171875]])  # Delta = 1/128; 0.5 and 1.5 steps
    r8 = rtn_quantize(w8, bits=8)
    assert torch.equal(r8.codes, torch.tensor([[127, -64, 0, 2]], dtype=torch.int8))
    assert torch.equal(r8.dequantized, torch.tensor([[127 / 128, -0.5, 0.0, 0.015625]]))
    w2 = torch.tensor(
        [[1.0, -1.0, 0.25, 0.75]]
    )  # Delta = 1/2; codes 2 -> 1, -2, 0.5 -> 0, 1.5 -> 1
    r2 = rtn_quantize(w2, bits=2)
    assert torch.equal(r2.codes, torch.tensor([[1, -2, 0, 1]], dtype=torch.int8))
    assert torch.equal(r2.dequantized, torch.tensor([[0.5, -1.0, 0.0, 0.5]]))


def test_rtn_computes_in_fp32_for_bf16_input():
    w = torch.tensor([[1.0, 0.3125, 0.4375, -0.0625]], dtype=torch.bfloat16)
    result = rtn_quantize(w, bits=4)
    assert result.dequantized.dtype == torch.float32 and result.scale.dtype == torch.float32
    assert torch.equal(result.dequantized, torch.tensor([[0.875, 0.25, 0.5, 0.0]]))


def test_rtn_error_bound_on_random_weights():
    # From eq. 2/3: every weight is within Delta/2 of its level, except the clipped ones
    # (w / Delta > 2^(N-1) - 1/2), which are within one Delta; levels are integer multiples.
    torch.manual_seed(0)
    w = torch.randn(16, 96)
    result = rtn_quantize(w, bits=3, group_size=32)
    delta = w.reshape(16, 3, 32).abs().amax(-1) / 4
    torch.testing.assert_close(result.scale, delta)
    per_element = delta.repeat_interleave(32, dim=1)
    ratio = w / per_element
    clipped = ratio > 3.5
    err = (w - result.dequantized).abs()
    assert (err[~clipped] <= per_element[~clipped] / 2 + 1e-6).all()
    assert clipped.sum() >= 16 and (err[clipped] <= per_element[clipped] + 1e-6).all()
    assert result.codes.min() >= -4 and result.codes.max() <= 3
    torch.testing.assert_close(result.dequantized, result.codes.float() * per_element)


def test_rtn_rejects_bad_input():
    with pytest.raises(ValueError, match=r"group_size=4.*\(2, 6\).*6 columns"):
        rtn_quantize(torch.zeros(2, 6), bits=4, group_size=4)
    with pytest.raises(ValueError, match="bits=9"):
        rtn_quantize(torch.zeros(2, 6), bits=9)
    with pytest.raises(ValueError, match=r"2-D.*\(6,\)"):
        rtn_quantize(torch.zeros(6), bits=4)
    with pytest.raises(ValueError, match="non-finite"):
        rtn_quantize(torch.tensor([[1.0, float("nan")]]), bits=4)


def test_relative_error_by_hand():
    assert relative_error(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 0.0])) == pytest.approx(0.8)
    assert relative_error(torch.zeros(3), torch.zeros(3)) == 0.0


# ----------------------------------------------------------------------------- real models


@pytest.fixture(scope="module")
def batch(tiny_tokenizer):
    texts = ["Alice Moreau was born in Tarsk in 1931.", "Question: What pet does Bruno keep?"]
    return tiny_tokenizer(texts, return_tensors="pt", padding=True)


def _logits(model: nn.Module, batch) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(**{k: v.to(device) for k, v in batch.items()}).logits
    return out.float().cpu()[batch["attention_mask"].bool()]


@pytest.fixture(scope="module", params=QUANTIZERS)
def quantized(request, tiny_model_dir, batch):
    spec = parse_quantizer(request.param)
    model = spec.load(tiny_model_dir)
    before = {k: v.clone() for k, v in spec.effective_weights(model).items()}
    logits = _logits(model, batch)
    after = spec.effective_weights(model)
    return {"spec": spec, "model": model, "before": before, "after": after, "logits": logits}


def test_quantized_layers_are_the_decoder_projections(quantized, tiny_model):
    spec, model = quantized["spec"], quantized["model"]
    names = set(quantizable_linears(model))
    assert len(names) == 2 * 7 and {n.split(".")[-1] for n in names} == PROJECTIONS
    assert all(n.startswith("model.layers.") for n in names)
    expected_type = {
        "rtn": nn.Linear,
        "int8": bnb.nn.Linear8bitLt,
        "nf4": bnb.nn.Linear4bit,
        "fp4": bnb.nn.Linear4bit,
    }[getattr(spec, "bnb_type", "rtn")]
    assert all(type(m) is expected_type for m in quantizable_linears(model).values())
    # lm_head and the embeddings stay full precision, untouched.
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight.dtype == torch.float32
    assert torch.equal(model.lm_head.weight.cpu(), tiny_model.lm_head.weight)
    assert torch.equal(model.model.embed_tokens.weight.cpu(), tiny_model.model.embed_tokens.weight)


def test_logits_match_model_rebuilt_from_effective_weights(quantized, tiny_model, batch):
    """The effective weights are what the quantized model computes with.

    Tolerances: RTN is fake quantization in fp32, so identical. bnb 4-bit with fp32 compute
    dequantizes to fp32 and runs a plain fp32 matmul: measured identical (max diff 0.0, as in the
    notes after the workaround); we allow 1e-5 for summation order. LLM.int8 also quantizes the
    activations to int8 per row (after a cast to fp16), so the logits differ: measured 0.0096
    relative (Frobenius); we allow 0.05.
    """
    spec = quantized["spec"]
    reference = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for name, module in quantizable_linears(reference).items():
            module.weight.copy_(quantized["before"][name].cpu())
    expected = _logits(reference, batch)
    if getattr(spec, "bnb_type", None) == "int8":
        assert relative_error(expected, quantized["logits"]) < 0.05
    elif isinstance(spec, BitsAndBytes):
        torch.testing.assert_close(quantized["logits"], expected, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(quantized["logits"], expected)
    # ... and it is not the unquantized model.
    assert relative_error(_logits(tiny_model, batch), quantized["logits"]) > 1e-4


def test_effective_weights_unchanged_by_forward(quantized):
    before, after = quantized["before"], quantized["after"]
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_effective_weights_really_quantized(quantized, tiny_model):
    original = {n: m.weight for n, m in quantizable_linears(tiny_model).items()}
    low, high = WEIGHT_ERROR_BOUNDS[quantized["spec"].name]
    for name, weight in quantized["before"].items():
        assert weight.shape == original[name].shape and weight.dtype == torch.float32
        assert low < relative_error(original[name], weight.cpu()) < high, name


@pytest.mark.parametrize("quantized", ["rtn_w4", "rtn_w4g128", "rtn_w8"], indirect=True)
def test_rtn_model_weights_are_on_the_eq2_grid(quantized, tiny_model):
    """Effective RTN weights are Delta * integer, with Delta = max|group| / 2^(N-1) computed
    here from the original weights (one Delta per row, or per group of G input columns)."""
    spec = quantized["spec"]
    levels = 2 ** (spec.bits - 1)
    for name, module in quantizable_linears(tiny_model).items():
        w = module.weight.detach()
        out_features, in_features = w.shape
        group = spec.group_size or in_features
        n_groups = in_features // group
        if name.endswith("down_proj") and spec.group_size == 128:
            assert n_groups == 3  # 384 input columns
        delta = w.reshape(out_features, n_groups, group).abs().amax(-1, keepdim=True) / levels
        q = quantized["before"][name].cpu().reshape(out_features, n_groups, group)
        codes = q / delta
        torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-4)
        assert codes.round().min() >= -levels and codes.round().max() <= levels - 1
        # Round to nearest: each weight within half a step, or one step where clipped.
        err = (q - w.reshape(q.shape)).abs()
        assert (err <= delta + 1e-7).all() and (err <= delta / 2 + 1e-7).float().mean() > 0.95


@pytest.mark.parametrize(("quant_type", "table"), [("nf4", NF4_TABLE), ("fp4", FP4_TABLE)])
def test_bnb_4bit_blocks_by_hand(tiny_model_dir, tiny_model, quant_type, table):
    """Rebuild one Linear from its packed nibbles and the published code table; check each
    block's absmax is the max |w| of 64 consecutive weights of the original, and each value is
    the table level nearest to w / absmax (QLoRA's quantization)."""
    spec = parse_quantizer(f"bnb_{quant_type}")
    model = spec.load(tiny_model_dir)
    name = "model.layers.1.mlp.down_proj"
    module = dict(model.named_modules())[name]
    state = module.weight.quant_state
    assert state.blocksize == 64 and not state.nested and tuple(state.shape) == (128, 384)
    packed = module.weight.data.cpu().reshape(-1)
    assert packed.dtype == torch.uint8 and packed.numel() == 128 * 384 // 2
    nibbles = torch.empty(2 * packed.numel(), dtype=torch.long)
    nibbles[0::2] = (packed // 16).long()  # first element in the high nibble
    nibbles[1::2] = (packed % 16).long()
    original = dict(tiny_model.named_modules())[name].weight.detach().reshape(-1, 64)
    absmax = state.absmax.cpu().float()
    torch.testing.assert_close(absmax, original.abs().amax(1), rtol=0, atol=0)
    table_t = torch.tensor(table)
    by_hand = (table_t[nibbles].reshape(-1, 64) * absmax[:, None]).reshape(128, 384)
    torch.testing.assert_close(
        spec.effective_weights(model)[name].cpu(), by_hand, rtol=1e-6, atol=1e-9
    )
    nearest = (original / absmax[:, None]).unsqueeze(-1).sub(table_t).abs().argmin(-1)
    assert torch.equal(table_t[nearest], table_t[nibbles].reshape(-1, 64))  # FP4 has +0 and -0


def test_bnb_int8_rows_by_hand(tiny_model_dir, tiny_model):
    """LLM.int8 weights (bnb casts the weight to fp16 first): SCB is each row's max |w16|,
    CB = round(127 w16 / SCB), and CB * SCB / 127 is within half a step of w (+ fp16 rounding)."""
    spec = parse_quantizer("bnb_int8")
    model = spec.load(tiny_model_dir)
    name = "model.layers.0.self_attn.q_proj"
    module = dict(model.named_modules())[name]
    w = dict(tiny_model.named_modules())[name].weight.detach()
    w16 = w.half().float()
    scb = w16.abs().amax(1)
    torch.testing.assert_close(module.weight.SCB.cpu(), scb, rtol=0, atol=0)
    codes = module.weight.data.cpu()
    assert codes.dtype == torch.int8
    expected_codes = torch.round(127 * w16 / scb[:, None])
    assert (codes.float() - expected_codes).abs().max() <= 1  # ties after fp16 division
    assert (codes.float() == expected_codes).float().mean() > 0.999
    effective = spec.effective_weights(model)[name].cpu()
    bound = scb[:, None] / 254 + w.abs() * 2.0**-11 + 1e-7
    assert ((effective - w).abs() <= bound).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU repacking only")
def test_cpu_repacking_disabled_and_repacked_weights_refused(tiny_model_dir, batch):
    spec = parse_quantizer("bnb_nf4")
    model = spec.load(tiny_model_dir)
    flagged = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    # bnb sets the flag to has_avx512bf16() (an int); the workaround sets the bool False.
    assert len(flagged) == 14 and all(m.support_avx512bf16_for_cpu is False for m in flagged)
    # Force what bnb does on AVX512-BF16 CPUs for one layer: the forward repacks it in place.
    module = model.model.layers[0].mlp.down_proj
    module.support_avx512bf16_for_cpu = True
    _logits(model, batch)
    assert module.weight.quant_state.packing_format_for_cpu
    with pytest.raises(RuntimeError, match=r"model\.layers\.0\.mlp\.down_proj.*repacked"):
        spec.effective_weights(model)


def test_dequantize_manual_handles_double_quant():
    torch.manual_seed(0)
    w = torch.randn(64, 256) * 0.02
    packed, state = bnb.functional.quantize_4bit(w, blocksize=64, quant_type="nf4",
                                                 compress_statistics=True)  # fmt: skip
    assert state.nested
    ours = dequantize_4bit_manual(packed, state)
    theirs = bnb.functional.dequantize_4bit(packed, state).float()  # correct for 64-multiples
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    assert 0.05 < relative_error(w, ours) < 0.15


def test_effective_weights_rejects_wrong_spec(tiny_model_dir):
    model = parse_quantizer("bnb_fp4").load(tiny_model_dir)
    with pytest.raises(ValueError, match="Linear4bit.*'rtn_w4'"):
        parse_quantizer("rtn_w4").effective_weights(model)
    with pytest.raises(ValueError, match="fp4.*'bnb_nf4'"):
        parse_quantizer("bnb_nf4").effective_weights(model)


def test_bf16_compute_and_generation(tiny_model_dir, tiny_tokenizer, batch):
    # NF4 with bf16 compute (Abitante et al.'s setting): close to the fp32-compute model (measured
    # 0.0048 relative), but not identical since activations are rounded to bf16.
    spec = parse_quantizer("bnb_nf4")
    fp32 = _logits(spec.load(tiny_model_dir, compute_dtype="fp32"), batch)
    model = spec.load(tiny_model_dir, compute_dtype="bf16")
    bf16 = _logits(model, batch)
    assert 0 < relative_error(fp32, bf16) < 0.03
    prompt = tiny_tokenizer(["Question: Where was Alice Moreau born?"], return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, prompt["input_ids"].shape[1] + 3)
    with pytest.raises(ValueError, match="'fp64'.*bf16"):
        spec.load(tiny_model_dir, compute_dtype="fp64")


def test_a_bnb_name_can_fix_its_compute_dtype(tiny_model_dir, batch):
    """bnb_nf4_bf16 computes in bf16 whatever the study-wide bnb_compute_dtype says (Abitante et
    al.'s format beside Zhang et al.'s FP4 with fp32); a bare bnb_nf4 still takes the study's."""
    named = parse_quantizer("bnb_nf4_bf16")
    assert (named.bnb_type, named.bits, named.compute_dtype) == ("nf4", 4, "bf16")
    assert not named.uses_compute_dtype and parse_quantizer("bnb_nf4").uses_compute_dtype
    assert parse_quantizer("bnb_fp4_fp32").compute_dtype == "fp32"
    bare = parse_quantizer("bnb_nf4").load(tiny_model_dir, compute_dtype="bf16")
    fixed = named.load(tiny_model_dir, compute_dtype="fp32")  # the name wins
    assert torch.equal(_logits(bare, batch), _logits(fixed, batch))
    assert not torch.equal(
        _logits(parse_quantizer("bnb_nf4_fp32").load(tiny_model_dir), batch), _logits(fixed, batch)
    )
    for bad in ("bnb_nf4_fp64", "bnb_int8_bf16", "bnb_nf4bf16"):
        with pytest.raises(ValueError, match="unknown quantizer"):
            parse_quantizer(bad)


def test_int8_forward_does_not_spam_cast_warning(tiny_model_dir, batch, caplog):
    model = parse_quantizer("bnb_int8").load(tiny_model_dir)
    with caplog.at_level("WARNING"):
        _logits(model, batch)
    assert not [r for r in caplog.records if "MatMul8bitLt" in r.getMessage()]


def test_missing_model_path(tmp_path):
    missing = tmp_path / "no_such_model"
    for spec in ("none", "rtn_w4", "bnb_nf4"):
        with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
            parse_quantizer(spec).load(str(missing))
    with pytest.raises(FileNotFoundError, match="config.json"):
        parse_quantizer("none").load(tmp_path)
