"""Quantizer tables and figures (Table 2, bit sweep, noflip, the project's overlap, QUAIL's
Table I) from hand-made cells."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from quantunlearn.evaluation.diagnostics import diagnostics_frame
from quantunlearn.io import write_parquet
from quantunlearn.quantizers import parse_quantizer
from quantunlearn.quantizers.rtn import rtn_quantize
from quantunlearn.reports.quantizers import four_bit_quantizers, make_quant_tables, rtn_sweep
from quantunlearn.unlearning.hyperparameters import HYPER_COLUMNS

QUANTS = ["none", "rtn_w8", "rtn_w4", "rtn_w2", "rtn_w4g128", "gptq_w4g128", "awq_w4g128",
          "gguf_q8_0", "noflip_rtn_w4g128"]  # fmt: skip
RUNS = {
    "target": ("method~target", dict.fromkeys(HYPER_COLUMNS)),
    "retrain": ("method~retrain", dict.fromkeys(HYPER_COLUMNS)),
    "GA_GDR": (
        "method~GA_GDR/weight_dtype~fp32/lr~1e-05",
        {
            "weight_dtype": "fp32",
            "lr": 1e-5,
            "epochs": 10,
            "alpha": 1.0,
            "beta": None,
            "npo_klr_form": None,
            "seed": 0,
        },
    ),  # fmt: skip
}


def knowmem(method: str, quant: str) -> float:
    """Hand-decodable KnowMem_f: target 80, retrain 5; GA_GDR 40 at fp, more at fewer bits."""
    base = {"target": 80.0, "retrain": 5.0, "GA_GDR": 40.0}[method]
    bits = parse_quantizer(quant).bits or 32
    if method == "GA_GDR":
        return base + (32 - bits)  # rtn_w8 64, rtn_w4 68, rtn_w2 70; noflip 68
    return base - (quant != "none")


def write_metrics(folder: Path) -> list[Path]:
    paths = []
    for method, (run, hypers) in RUNS.items():
        for quant in QUANTS:
            if quant.startswith("noflip") and method != "GA_GDR":
                continue
            k = knowmem(method, quant)
            rows = [
                {"benchmark": "syn", "run": run, "method": method, "quant": quant, **hypers,
                 "metric": metric, "value": value, "n": 10, "config_hash": "h", "versions": "{}"}
                for metric, value in {"knowmem_f": k, "verbmem_f": k / 2, "knowmem_r": 50.0,
                                      "privleak": -10.0}.items()
            ]  # fmt: skip
            path = folder / f"{method}_{quant}.parquet"
            write_parquet(pd.DataFrame(rows), path)
            paths.append(path)
    return paths


def write_diagnostics(folder: Path) -> list[Path]:
    torch.manual_seed(0)
    target = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(8, 128) * 0.05 for i in range(2)}
    unlearned = {k: v.clone() for k, v in target.items()}
    # one weight of layer 1 moves across a 4-bit bucket boundary: exactly one flip at 4 bits
    key = "model.layers.1.mlp.up_proj.weight"
    w = target[key]
    delta = rtn_quantize(w, 4, 128).scale[0, 0].item()
    code = torch.round(w[0, 0] / delta).item()
    unlearned[key][0, 0] = (code + 0.55) * delta
    paths = []
    for quant in ("rtn_w8", "rtn_w4"):
        spec = parse_quantizer(quant)
        tq = {k: rtn_quantize(v, spec.bits, None).dequantized for k, v in target.items()}
        uq = {k: rtn_quantize(v, spec.bits, None).dequantized for k, v in unlearned.items()}
        frame = diagnostics_frame(spec, target, unlearned, tq, uq)
        run, hypers = RUNS["GA_GDR"]
        frame.insert(0, "quant", quant)
        for col, value in reversed(list({"benchmark": "syn", "run": run, "method": "GA_GDR",
                                         **hypers}.items())):  # fmt: skip
            frame.insert(0, col, value)
        path = folder / f"diag_{quant}.parquet"
        write_parquet(frame, path)
        paths.append(path)
    return paths


def test_quantizer_groups():
    assert four_bit_quantizers(QUANTS) == ["rtn_w4", "rtn_w4g128", "gptq_w4g128", "awq_w4g128"]
    sweep = rtn_sweep(QUANTS)
    assert sweep["quant"].tolist() == ["rtn_w8", "rtn_w4", "rtn_w2", "rtn_w4g128"]
    assert sweep["grouping"].tolist() == ["per channel"] * 3 + ["g128"]


def test_make_quant_tables(tmp_path):
    metrics = write_metrics(tmp_path / "m")
    diags = write_diagnostics(tmp_path / "d")
    out = tmp_path / "tables"
    make_quant_tables(metrics, diags, out, QUANTS)
    for stem in ("table2", "bit_sweep", "noflip", "overlap"):
        for ext in (".md", ".csv", ".parquet"):
            assert (out / f"{stem}{ext}").is_file(), f"{stem}{ext}"
    for fig in ("bit_sweep", "overlap_layers", "overlap_hist"):
        assert (out / f"{fig}.png").read_bytes()[:4] == b"\x89PNG"
        assert "<svg" in (out / f"{fig}.svg").read_text()[:500]

    table2 = pd.read_parquet(out / "table2.parquet")
    ga = table2[table2["method"] == "GA_GDR"]
    assert ga["quant"].tolist() == ["none", "rtn_w4", "rtn_w4g128", "gptq_w4g128", "awq_w4g128"]
    assert ga["knowmem_f"].tolist() == [40.0, 68.0, 68.0, 68.0, 68.0]
    assert "GA_GDR [fp32, lr 1e-05, α 1] + awq_w4g128" in (out / "table2.md").read_text()

    sweep = pd.read_parquet(out / "bit_sweep.parquet")
    pc = sweep[(sweep["group"] == "regularized") & (sweep["grouping"] == "per channel")]
    assert dict(zip(pc["bits"], pc["knowmem_f"], strict=True)) == {32: 40, 8: 64, 4: 68, 2: 70}
    tgt = sweep[(sweep["group"] == "target") & (sweep["grouping"] == "g128")]
    assert dict(zip(tgt["bits"], tgt["knowmem_f"], strict=True)) == {32: 80, 4: 79}

    flips = pd.read_parquet(out / "noflip.parquet")
    assert len(flips) == 1
    row = flips.iloc[0]
    assert (row["quant"], row["knowmem_f_fp"], row["knowmem_f_q"]) == ("rtn_w4g128", 40, 68)
    assert (row["knowmem_f_noflip"], row["knowmem_f_target_q"]) == (68, 79)

    overlap = pd.read_parquet(out / "overlap.parquet").set_index("quant")
    n = 2 * 8 * 128
    assert overlap.loc["rtn_w4", "pooled_overlap"] == pytest.approx(100 * (n - 1) / n)
    # per tensor = mean of the two tensors' overlaps: 100 and 100 * (1023/1024)
    assert overlap.loc["rtn_w4", "mean_tensor_overlap"] == pytest.approx(100 * (1 - 1 / 2048))
    assert overlap.loc["rtn_w4", "bits"] == 4
    text = (out / "overlap.md").read_text()
    assert "Pooled overlap %" in text and "not QUAIL's Table I" in text


def test_make_quant_tables_without_diagnostics(tmp_path):
    metrics = write_metrics(tmp_path / "m")
    make_quant_tables(metrics, [], tmp_path / "t", QUANTS)
    assert "set `diagnostics: true`" in (tmp_path / "t" / "overlap.md").read_text()
    assert "quail_table: true" in (tmp_path / "t" / "quail_table1.md").read_text()
    assert (tmp_path / "t" / "overlap_hist.png").is_file()
