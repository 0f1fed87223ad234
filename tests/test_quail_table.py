"""QUAIL's min-max quantizer (quail_w{N}, quail_w{N}_tensor) and its Table I (Mishra and
Mehreen, section III-V) against values worked out by hand (dyadic numbers: every division below
is exact in floating point)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from quantunlearn.evaluation.quail_table import (
    bucket_overlap,
    quail_table_run,
    table_one,
    weight_change_stats,
)
from quantunlearn.models.loading import load_model
from quantunlearn.quantizers import parse_quantizer, quantizable_linears
from quantunlearn.quantizers.quail_uniform import Grid, grid_of, quantize
from quantunlearn.reports.quantizers import needs as quant_tables_needs
from quantunlearn.reports.quantizers import quail_table


def t(*xs, dtype=torch.float32):
    return torch.tensor(xs, dtype=dtype)


def test_eq7_rounds_half_up_onto_two_to_the_n_plus_one_levels():
    g = Grid(0.0, 1.0, 2)  # Delta = 1/4
    assert g.step == 0.25
    # x / Delta = 0, 0.5, 1, 2, 3.5, 4 -> floor(x + 0.5) = 0, 1, 1, 2, 4, 4 (w_max is a level)
    codes, values = quantize(t(0.0, 0.125, 0.25, 0.5, 0.875, 1.0), g)
    assert codes.tolist() == [0, 1, 1, 2, 4, 4]
    assert values.tolist() == [0.0, 0.25, 0.25, 0.5, 1.0, 1.0]


def test_section_three_floor_reading_uses_bucket_midpoints():
    codes, values = quantize(t(0.0, 0.125, 0.25, 0.5, 0.875, 1.0), Grid(0.0, 1.0, 2), "floor")
    assert codes.tolist() == [0, 0, 1, 2, 3, 3]  # w_max gives 4, clipped into the last bucket
    assert values.tolist() == [0.125, 0.125, 0.375, 0.625, 0.875, 0.875]


def test_grids_and_degenerate_tensors():
    assert grid_of([t(0.5, 2.0), t(-3.0, 1.0)], 4) == Grid(-3.0, 2.0, 4)  # global range
    assert [grid_of([t(-2.0, 2.0)], b).step for b in (4, 8, 16)] == [4 / 16, 4 / 256, 4 / 65536]
    codes, values = quantize(t(2.0, 2.0, 2.5, 1.5), Grid(2.0, 2.0, 4))  # a constant tensor
    assert codes.tolist() == [0, 0, 1, -1] and values.tolist() == [2.0] * 4
    with pytest.raises(ValueError, match="rounding"):
        quantize(t(1.0), Grid(0, 1, 2), "stochastic")
    with pytest.raises(ValueError, match="bits"):
        grid_of([t(1.0)], 0)


def test_the_symmetric_reading_of_section_five_a():
    """[-1, 0.5, 0.25] at 2 bits: eq. 2's min-max range [-1, 0.5] has Delta 0.375 and puts
    0.25 at -1 + round(3.33) x 0.375 = 0.125; the symmetric range [-1, 1] has Delta 0.5 and puts
    it at -1 + round(2.5) x 0.5 = 0.5 (halves up)."""
    w = t(-1.0, 0.5, 0.25)
    assert grid_of([w], 2) == Grid(-1.0, 0.5, 2)
    assert grid_of([w], 2, symmetric=True) == Grid(-1.0, 1.0, 2)
    assert quantize(w, grid_of([w], 2))[1].tolist() == [-1.0, 0.5, 0.125]
    assert quantize(w, grid_of([w], 2, symmetric=True))[1].tolist() == [-1.0, 0.5, 0.5]
    assert grid_of([t(0.5, 2.0), t(-3.0, 1.0)], 4, symmetric=True) == Grid(-3.0, 3.0, 4)
    sym = parse_quantizer("quail_w4_tensor_sym")
    assert (sym.bits, sym.granularity, sym.symmetric) == (4, "tensor", True)
    assert not parse_quantizer("quail_w4").symmetric and parse_quantizer("quail_w8_sym").symmetric


def test_symmetric_quantizer_uses_the_symmetric_global_range(tiny_model_dir):
    plain = quantizable_linears(load_model(str(tiny_model_dir)).requires_grad_(False))
    top = max(float(m.weight.abs().max()) for m in plain.values())
    model = parse_quantizer("quail_w3_sym").load(str(tiny_model_dir))
    for key, module in quantizable_linears(model).items():
        w, step = plain[key].weight.double(), 2 * top / 8
        expected = torch.floor((w + top) / step + 0.5) * step - top
        torch.testing.assert_close(module.weight.double(), expected.float().double())


REF = {"a": t(0.0, 0.25, 0.625, 1.0), "b": t(2.0, 2.0, 2.0, 2.0), "ids": torch.arange(4)}
NEW = {"a": t(0.0625, 0.25, 1.125, 1.0), "b": t(2.0, 2.0, 2.0, 2.5), "ids": torch.arange(4)}


def test_weight_change_stats_by_hand():
    # |diff| = a: 1/16, 0, 1/2, 0; b: 0, 0, 0, 1/2 (the integer tensor is not a weight)
    assert weight_change_stats(REF, NEW) == {
        "n_weights": 8,
        "share_bitwise_unchanged": 5 / 8,
        "mean_abs_change": (1 / 16 + 1 / 2 + 1 / 2) / 8,
        "max_abs_change": 0.5,
    }
    one_ulp = {"w": torch.tensor([1.0, 1.0 + 2**-7], dtype=torch.bfloat16)}  # bf16 ulp at 1
    s = weight_change_stats({"w": torch.tensor([1.0, 1.0], dtype=torch.bfloat16)}, one_ulp)
    assert s["share_bitwise_unchanged"] == 0.5 and s["max_abs_change"] == 2**-7


def test_global_and_tensorwise_overlap_by_hand():
    # global grid [0, 2], 2 bits, Delta 1/2, floor(w / Delta + 1/2):
    #   ref a 0, 1, 1, 2; b 4 x4        new a 0, 1, 2, 2; b 4, 4, 4, 5     -> 6 of 8
    o = bucket_overlap(REF, NEW, 2, "global")
    assert (o["n_same"], o["n_weights"], o["overlap"], o["step"]) == (6, 8, 6 / 8, 0.5)
    # per tensor: a on [0, 1], Delta 1/4: ref 0, 1, 3 (2.5 -> 3), 4; new 0 (0.25 -> 0), 1,
    # 5 (4.5 -> 5), 4 -> 3 of 4; b constant: the moved weight gets +1 -> 3 of 4
    o = bucket_overlap(REF, NEW, 2, "tensor")
    assert (o["n_same"], o["overlap"], o["step"]) == (6, 0.75, (0.25 * 4 + 0.0 * 4) / 8)
    # section III's floor reading on the global grid: ref a 0,0,1,3 (4 clipped) b 3 x4;
    # new a 0,0,2,3, b 3 x4 (5 clipped) -> 7 of 8
    assert bucket_overlap(REF, NEW, 2, "global", rounding="floor")["n_same"] == 7
    # each model its own global range: new [1/16, 5/2], Delta 39/64; x/Delta + 1/2 for new a:
    # 0.5, 0.81, 2.24, 2.04 -> 0, 0, 2, 2; b: 3.68 x3, 4.5 -> 3, 3, 3, 4; against ref a 0, 1,
    # 1, 2 and b 4 x4: a 2 of 4, b 1 of 4
    assert bucket_overlap(REF, NEW, 2, "global", range_from="each")["n_same"] == 3
    with pytest.raises(ValueError, match="granularity"):
        bucket_overlap(REF, NEW, 4, "layer")
    with pytest.raises(ValueError, match="shapes differ"):
        bucket_overlap({"w": t(1.0)}, {"w": t(1.0, 2.0)}, 4)


def test_table_one_rows_and_a_change_that_survives_only_coarse_grids():
    rows = table_one(REF, NEW, bits=(16, 2))
    assert [r["bits"] for r in rows] == [16, 2] and rows[0]["bucket_size"] == 2 / 65536
    assert rows[1]["global_overlap"] == 6 / 8 and rows[1]["tensorwise_overlap"] == 0.75
    assert rows[1]["share_bitwise_unchanged"] == 5 / 8  # the V-B statistics on every row
    # at 16 bits every moved weight leaves its bucket: 5 of 8 stay
    assert rows[0]["global_overlap"] == 5 / 8
    ref = {"w": torch.linspace(-2, 2, 101, dtype=torch.float64)}
    new = {"w": ref["w"].clone()}
    new["w"][37] += 1e-3  # far below Delta/2 = 0.125 at 4 bits, far above 3e-5 at 16
    assert bucket_overlap(ref, new, 4)["n_same"] == 101
    assert bucket_overlap(ref, new, 16)["n_same"] == 100


def test_quantizer_rows_parse():
    q = parse_quantizer("quail_w16")
    assert (q.bits, q.granularity, q.diagnosable) == (16, "global", False)
    assert parse_quantizer("quail_w4_tensor").granularity == "tensor"
    for bad in ("quail_w1", "quail_w17", "quail_w04"):
        with pytest.raises(ValueError, match="QUAIL's bit-width"):
            parse_quantizer(bad)


def test_quantizer_global_range_spans_every_quantized_linear(tiny_model_dir):
    plain = quantizable_linears(load_model(str(tiny_model_dir)).requires_grad_(False))
    lo = min(float(m.weight.min()) for m in plain.values())
    hi = max(float(m.weight.max()) for m in plain.values())
    step = (hi - lo) / 2**3
    for name, quant in (("quail_w3", None), ("quail_w3_tensor", "tensor")):
        model = parse_quantizer(name).load(str(tiny_model_dir))
        for key, module in quantizable_linears(model).items():
            w = plain[key].weight.double()
            if quant == "tensor":
                lo_t, step_t = float(w.min()), (float(w.max()) - float(w.min())) / 8
            else:
                lo_t, step_t = lo, step
            expected = torch.floor((w - lo_t) / step_t + 0.5) * step_t + lo_t
            torch.testing.assert_close(module.weight.double(), expected.float().double())
            levels = torch.round((module.weight.double() - lo_t) / step_t)
            assert levels.min() >= 0 and levels.max() <= 8  # 2^3 + 1 levels


def test_quail_table_job_and_report(tiny_model_dir, tiny_model, tmp_path):
    moved = tmp_path / "moved"
    model = load_model(str(tiny_model_dir))
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] += 0.5
    model.save_pretrained(moved)
    cell = {"benchmark": "b", "run": "method~GA_GDR/weight_dtype~fp32", "method": "GA_GDR",
            "weight_dtype": "fp32", "lr": 1e-5, "epochs": 1, "alpha": 1.0}  # fmt: skip
    out = tmp_path / "t.parquet"
    frame = quail_table_run(tiny_model_dir, moved, out, cell=cell, cell_config={"x": 1})
    n = sum(p.numel() for p in tiny_model.parameters())
    assert frame["bits"].tolist() == [16, 8, 4]
    assert (frame["n_weights"] == n).all()
    assert frame["share_bitwise_unchanged"].iloc[0] == pytest.approx((n - 1) / n)
    assert frame["max_abs_change"].iloc[0] == pytest.approx(0.5, rel=1e-6)
    assert (frame["global_overlap"] >= (n - 1) / n).all()  # one moved weight at most
    # provenance like every result row: the two models' folders (no hub snapshot: no commit)
    assert (frame["model_source"] == str(moved)).all()
    assert (frame["target_source"] == str(tiny_model_dir)).all()
    assert frame["target_commit"].isna().all() and "git_commit" in frame
    table = quail_table([out])
    assert table["global_overlap"].iloc[0] == pytest.approx(100 * frame["global_overlap"].iloc[0])
    assert isinstance(table, pd.DataFrame) and table["label"].iloc[0].startswith("GA_GDR")


def test_diagnostics_restricted_by_quantizers_and_methods():
    import yaml
    from test_contracts import ROOT

    from quantunlearn.study import ConfigError, load_study

    config = yaml.safe_load((ROOT / "tests" / "configs" / "micro.yaml").read_text())
    config["quantizers"] = ["none", "rtn_w4", "bnb_nf4", "quail_w4"]
    config["diagnostics"] = {"quantizers": ["rtn_w4"], "methods": ["GA_GDR"], "quail_table": True}
    study = load_study(config)
    cells = study.diagnostic_cells()
    assert [(c.method, c.quant) for c in cells] == [("GA_GDR", "rtn_w4")]
    ga = study.runs.query("method == 'GA_GDR'").run.item()
    assert quant_tables_needs(study)["quail_table"] == [f"results/quail_table1/micro/{ga}.parquet"]
    config["diagnostics"] = True  # every run and every quantizer the diagnostics can analyse
    everything = load_study(config).diagnostic_cells()
    # not none, not QUAIL's grid
    assert sorted({c.quant for c in everything}) == ["bnb_nf4", "rtn_w4"]
    assert len(everything) == 2 * 2 and not quant_tables_needs(load_study(config))["quail_table"]
    config["diagnostics"] = {"quantizers": ["quail_w4", "rtn_w8"], "methods": ["GA"]}
    with pytest.raises(ConfigError) as err:
        load_study(config)
    text = str(err.value)
    assert "diagnostics.quantizers[0]: the weight diagnostics cannot analyse 'quail_w4'" in text
    assert "diagnostics.quantizers[1]: 'rtn_w8' is not one of the quantizers" in text
    assert "diagnostics.methods[0]: 'GA' is not one of unlearn.methods" in text
