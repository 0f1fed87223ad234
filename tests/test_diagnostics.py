"""Weight diagnostics: bucket overlap and change-to-half-step ratios against hand-computed values,
and the per-run Parquet on real (tiny) saved models."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

from quantunlearn.evaluation.cell import CellJob
from quantunlearn.evaluation.diagnostics import (
    bucket_overlap,
    diagnose_run,
    half_step,
    linear_state,
    quantized_state,
)
from quantunlearn.models.loading import load_model
from quantunlearn.quantizers import parse_quantizer
from quantunlearn.quantizers.rtn import RTN

# One row of 8 weights, 4 bits per channel: Delta = 1.0 / 8 = 0.125, half step 0.0625.
# Codes: 8 -> clamp 7, 2.4 -> 2, 0.8 -> 1, -1.6 -> -2, 4 -> 4, -8, 0, 5.6 -> 6.
ROW = torch.tensor([[1.0, 0.30, 0.10, -0.20, 0.50, -1.0, 0.0, 0.70]])


def test_half_step_is_eq2_delta_over_two():
    assert torch.allclose(half_step(ROW, 4, None), torch.full_like(ROW, 0.0625))
    assert torch.allclose(half_step(ROW, 8, None), torch.full_like(ROW, 1.0 / 128 / 2))
    grouped = half_step(ROW, 4, 4)  # groups [1, .3, .1, -.2] and [.5, -1, 0, .7]: max 1 both
    assert torch.allclose(grouped, torch.full_like(ROW, 0.0625))
    two = torch.tensor([[0.4, 0.1, 1.0, 0.2]])
    assert half_step(two, 3, 2)[0].tolist() == pytest.approx([0.05, 0.05, 0.125, 0.125])


def test_identical_models_overlap_one():
    state = {"w": ROW.clone()}
    for quant in ("rtn_w4", "rtn_w8g4", "rtn_w2"):
        result = bucket_overlap(state, {"w": ROW.clone()}, quant)
        assert result["overlap"] == 1.0
        assert result["n_flipped"] == 0
        assert result["mean_change_to_half_step"] == 0.0
        assert result["share_unchanged"] == 1.0


def test_overlap_falls_when_a_change_crosses_the_boundary():
    # 0.30 sits at code 2 (2.4); the boundary to code 3 is at 2.5 * 0.125 = 0.3125
    target = {"w": ROW.clone()}
    below = ROW.clone()
    below[0, 1] = 0.31  # change 0.01 = 0.16 half steps, stays in its bucket
    r = bucket_overlap(target, {"w": below}, "rtn_w4")
    assert r["overlap"] == 1.0 and r["n_flipped"] == 0
    assert r["max_change_to_half_step"] == pytest.approx(0.01 / 0.0625, rel=1e-4)
    assert r["share_unchanged"] == pytest.approx(7 / 8)
    across = ROW.clone()
    across[0, 1] = 0.32  # change 0.02 = 0.32 half steps, but crosses 0.3125 -> code 3
    r = bucket_overlap(target, {"w": across}, "rtn_w4")
    assert r["overlap"] == pytest.approx(7 / 8) and r["n_flipped"] == 1
    assert r["max_change_to_half_step"] == pytest.approx(0.32, rel=1e-4)
    assert r["mean_change_to_half_step"] == pytest.approx(0.32 / 8, rel=1e-4)
    assert r["share_beyond_half_step"] == 0.0
    far = ROW.clone()
    far[0, 2] = 0.25  # 0.10 -> 0.25: 0.15 = 2.4 half steps, code 1 -> 2
    far[0, 3] = -0.21  # -1.6 -> -1.68: stays at -2
    r = bucket_overlap(target, {"w": far}, "rtn_w4")
    assert r["n_flipped"] == 1 and r["share_beyond_half_step"] == pytest.approx(1 / 8)


def test_overlap_falls_monotonically_as_noise_crosses_the_step():
    torch.manual_seed(0)
    w = torch.randn(64, 256) * 0.05
    target = {"w": w}
    delta_half = half_step(w, 4, 128)
    overlaps = []
    for fraction in (0.0, 0.01, 0.1, 0.5, 2.0):
        noisy = {"w": w + torch.randn_like(w) * delta_half * fraction}
        overlaps.append(bucket_overlap(target, noisy, "rtn_w4g128")["overlap"])
    assert overlaps[0] == 1.0
    assert all(a > b for a, b in zip(overlaps, overlaps[1:], strict=False))
    assert overlaps[1] > 0.99 and overlaps[-1] < 0.6


def test_gguf_overlap_and_effective_weight_inputs():
    torch.manual_seed(1)
    w = {"model.layers.0.mlp.up_proj.weight": torch.randn(4, 256) * 0.05}
    assert bucket_overlap(w, {k: v.clone() for k, v in w.items()}, "gguf_q4_k_m")["overlap"] == 1.0
    with pytest.raises(ValueError, match="pass the quantized effective weights"):
        bucket_overlap(w, w, "gptq_w4g128")
    with pytest.raises(ValueError, match="not 'none'"):
        bucket_overlap(w, w, "none")
    # given effective weights: equality of effective weights is the bucket
    q = {k: torch.round(v * 10) / 10 for k, v in w.items()}
    q2 = {k: v.clone() for k, v in q.items()}
    key = next(iter(q2))
    q2[key][0, 0] += 0.1
    r = bucket_overlap(w, w, "gptq_w4g128", target_quantized=q, unlearned_quantized=q2)
    assert r["n_flipped"] == 1 and r["overlap"] == pytest.approx(1 - 1 / 1024)


@pytest.fixture(scope="module")
def perturbed_dir(tmp_path_factory, tiny_model):
    model = copy.deepcopy(tiny_model)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 2e-3)
    path = tmp_path_factory.mktemp("perturbed")
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("quant", ["rtn_w4", "rtn_w8g128", "bnb_nf4", "gguf_q8_0"])
def test_diagnose_run_rows(tiny_model_dir, perturbed_dir, tmp_path, quant):
    out = tmp_path / "d.parquet"
    cell = {"benchmark": "b", "run": "method~GA/lr~1", "method": "GA", "weight_dtype": "fp32"}
    job = CellJob(cell, quant, {"x": 1}, model=str(perturbed_dir), target=str(tiny_model_dir))
    frame = diagnose_run(job, out)
    back = pd.read_parquet(out)
    assert len(back) == len(frame)
    assert set(back["pair"]) == {"target_vs_unlearned", "unlearned_vs_quantized"}
    n_tensors = 14  # 2 layers x 7 projections
    for pair in ("target_vs_unlearned", "unlearned_vs_quantized"):
        rows = back[back["pair"] == pair]
        assert (rows["level"] == "tensor").sum() == n_tensors
        assert (rows["level"] == "layer").sum() == 2
        glob = rows[rows["level"] == "pooled"].iloc[0]
        tensors = rows[rows["level"] == "tensor"]
        assert glob["n_weights"] == tensors["n_weights"].sum()
        weighted = (tensors["overlap"] * tensors["n_weights"]).sum() / tensors["n_weights"].sum()
        assert glob["overlap"] == pytest.approx(weighted)
        assert 0.0 < glob["overlap"] <= 1.0
    spec = parse_quantizer(quant)
    target = linear_state(load_model(str(tiny_model_dir)))
    unlearned = linear_state(load_model(str(perturbed_dir)))
    kwargs = {}
    if not spec.weightwise:
        kwargs = {
            "target_quantized": quantized_state(tiny_model_dir, spec),
            "unlearned_quantized": quantized_state(perturbed_dir, spec),
        }
    direct = bucket_overlap(target, unlearned, quant, **kwargs)
    glob = back[(back["pair"] == "target_vs_unlearned") & (back["level"] == "pooled")].iloc[0]
    assert glob["overlap"] == pytest.approx(direct["overlap"])
    assert glob["mean_change_to_half_step"] == pytest.approx(direct["mean_change_to_half_step"])
    assert back["config_hash"].nunique() == 1 and (back["quant"] == quant).all()
    if isinstance(spec, RTN):  # round to nearest: the quantization error is at most half a step
        self_rows = back[(back["pair"] == "unlearned_vs_quantized") & (back["level"] == "tensor")]
        assert self_rows["overlap"].min() > 0.9
