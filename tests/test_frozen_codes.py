"""The predictor of frozen codes (evaluation/frozen_codes.py) on hand-made tensors."""

from __future__ import annotations

import pytest
import torch

from quantunlearn.evaluation.frozen_codes import (
    can_move,
    compare_run,
    movable_bound,
    predict_tensor,
    stored,
)
from quantunlearn.quantizers.rtn import rtn_quantize

# one row, 4-bit per channel: max 0.75 (exact in bf16), Delta = 0.75 / 8 = 0.09375, so the zero
# bucket's edge is at 0.046875 and the edge between codes 1 and 2 at 0.140625
ROW = torch.tensor([[0.75, 0.003, -0.003, 0.045, 0.2, 0.0, 0.1405, -0.5]])


def test_movable_bound_is_the_power_of_two_above_lr_times_2_to_the_p():
    assert movable_bound(1e-5, "bf16") == 2.0**-8  # log2(1e-5) + 8 = -8.6 -> 2^-8 = 3.9e-3
    assert movable_bound(1e-5, "fp32") == 2.0**8  # every weight of a model
    assert movable_bound(2.0**-10, "bf16") == 2.0**-2
    with pytest.raises(ValueError, match="lr must be positive"):
        movable_bound(0.0, "bf16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        movable_bound(1e-5, "fp16")


def test_can_move_matches_the_storage_rounding():
    w = torch.tensor([0.003, 0.0038, 0.0040, 0.005, 0.1, 0.0, -0.003])
    # bf16, lr 1e-5: 0.003 and 0.0038 lie in [2^-9, 2^-8), half an ulp 2^-17 = 7.6e-6 < 1e-5;
    # 0.004 and 0.005 lie in [2^-8, 2^-7), half an ulp 1.5e-5 > 1e-5: rounded away
    assert can_move(w, 1e-5, "bf16").tolist() == [True, True, False, False, False, True, True]
    assert can_move(w, 1e-5, "fp32").all()
    # the exact test agrees with tau below and above it
    tau = movable_bound(1e-5, "bf16")
    assert can_move(torch.tensor([tau * 0.99]), 1e-5, "bf16").item()
    assert not can_move(torch.tensor([tau * 1.01]), 1e-5, "bf16").item()


def test_predict_tensor_bf16_by_hand():
    pred = predict_tensor(ROW, bits=4, group=None, lr=1e-5, steps=1000, dtype="bf16")
    # only the weights below tau = 3.9e-3 (0.003, -0.003 and 0) can move
    assert pred["movable"].tolist() == [[False, True, True, False, False, True, False, False]]
    # 0.1405 (code round(1.4987) = 1) is stored as 0.140625 = 1.5 Delta, which rounds (half to
    # even) to code 2: a flip at load, before any step
    assert pred["load_flip"].tolist() == [[False] * 6 + [True, False]]
    # the movable weights cannot leave |w| < tau, far inside the zero bucket (edge 0.047)
    assert pred["can_flip"].tolist() == pred["load_flip"].tolist()
    # ten times the steps: still frozen (the drift stops at tau)
    more = predict_tensor(ROW, bits=4, group=None, lr=1e-5, steps=10_000, dtype="bf16")
    assert more["can_flip"].tolist() == pred["load_flip"].tolist()


def test_predict_tensor_fp32_by_hand():
    pred = predict_tensor(ROW, bits=4, group=None, lr=1e-5, steps=1000, dtype="fp32")
    assert pred["movable"].all() and not pred["load_flip"].any()
    # a drift of 0.01 takes 0.045 over 0.046875 and 0.1405 over 0.140625; nothing else is
    # within 0.01 of an edge (0.2: edges 0.1875 and 0.234; -0.5: -0.516 and -0.422; 0.75 is
    # clamped at code 7 both ways)
    assert pred["can_flip"].tolist() == [[False, False, False, True, False, False, True, False]]
    few = predict_tensor(ROW, bits=4, group=None, lr=1e-5, steps=100, dtype="fp32")
    assert few["can_flip"].tolist() == [[False] * 6 + [True, False]]  # 0.001 reaches one edge


def test_compare_run_counts_flips_outside_the_prediction():
    target = {"layer.weight": ROW.clone()}
    inside = stored(ROW, "bf16").clone()
    inside[0, 1] += 5e-4  # a movable weight that moved
    frame = compare_run(target, {"layer.weight": inside}, 4, None, 1e-5, 1000, "bf16")
    row = frame.iloc[0]
    assert row["measured_changed"] == pytest.approx(1 / 8)
    assert row["measured_flipped"] == pytest.approx(1 / 8)  # the load flip of 0.1405
    assert row["predicted_can_flip"] == pytest.approx(1 / 8)
    assert row["flipped_outside_prediction"] == 0.0
    outside = inside.clone()
    outside[0, 4] = 0.3  # a frozen weight that jumped two buckets: not a bf16 AdamW run
    row = compare_run(target, {"layer.weight": outside}, 4, None, 1e-5, 1000, "bf16").iloc[0]
    assert row["flipped_outside_prediction"] == pytest.approx(1 / 8)


def test_prediction_bounds_a_real_bf16_adamw_run():
    """Real AdamW steps on bf16-stored weights (fp32 compute, rounded after every step, as the
    emulated path does) with a constant gradient, so every step moves by exactly lr: every code
    that changes is one the predictor allowed, and some allowed ones do change."""
    torch.manual_seed(0)
    weight = torch.randn(16, 128) * 0.002
    weight[:, 0] = 0.06  # every row's max: Delta/2 = 0.06 / 16 = 3.75e-3, just under tau
    lr, steps = 1e-4, 300  # tau = 2^ceil(log2(1e-4) + 8) = 2^-5 = 0.031
    p = torch.nn.Parameter(stored(weight, "bf16").clone())
    opt = torch.optim.AdamW([p], lr=lr, weight_decay=0.0)
    grad = torch.sign(torch.randn_like(weight))
    grad[:, 0] = 0.0  # the max stays: Delta stays the target's
    for _ in range(steps):
        p.grad = grad.clone()
        opt.step()
        with torch.no_grad():
            p.copy_(stored(p, "bf16"))
    pred = predict_tensor(weight, 4, None, lr, steps, "bf16")
    flipped = rtn_quantize(p.detach(), 4).codes != rtn_quantize(weight, 4).codes
    assert flipped.any()
    assert not (flipped & ~pred["can_flip"]).any()


def test_pooled_weights_each_tensor_by_its_size():
    import pandas as pd

    from quantunlearn.reports.frozen_codes_report import pooled

    keys = dict(benchmark="b", run="r", method="NPO_GDR", weight_dtype="bf16", lr=1e-5, steps=10)
    frame = pd.DataFrame(
        [
            {**keys, "name": "a", "n_weights": 100, "measured_flipped": 0.10},
            {**keys, "name": "b", "n_weights": 300, "measured_flipped": 0.02},
        ]
    )
    out = pooled(frame)
    assert len(out) == 1
    assert out["measured_flipped"].iloc[0] == pytest.approx((10 + 6) / 400)
