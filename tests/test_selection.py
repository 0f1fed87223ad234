"""The selection rule and the mitigation tables, on small hand-made result frames."""

from __future__ import annotations

import pandas as pd
import pytest

from quantunlearn.reports.mitigations import make_mitigation_tables, paired_table, summary_table
from quantunlearn.reports.selection import mark_selected, select_runs
from quantunlearn.unlearning.families import SURE


def frame(rows):
    cols = ["benchmark", "method", "weight_dtype", "run", "quant", "knowmem_f", "knowmem_r"]
    out = pd.DataFrame(rows, columns=cols)
    out["verbmem_f"] = out["knowmem_f"] / 2
    out["privleak"] = -50.0
    return out


# GA_GDR fp32: a (f 30, r 60), b (f 20, r 70), c (f 45, r 90: over the threshold), d (f 20, r 70)
ROWS = [
    ("s", "target", None, "method~target", "none", 74, 66),
    ("s", "GA_GDR", "fp32", "a", "none", 30, 60),
    ("s", "GA_GDR", "fp32", "b", "none", 20, 70),
    ("s", "GA_GDR", "fp32", "c", "none", 45, 90),
    ("s", "GA_GDR", "fp32", "d", "none", 20, 70),
    ("s", "GA_GDR", "fp32", "b", "rtn_w4g128", 99, 99),  # 4-bit rows never decide
    ("s", "GA_GDR", "bf16", "e", "none", 70, 66),
    ("s", "GA_GDR", "bf16", "f", "none", 72, 67),
    ("s", "GA_GDR_SURE", "fp32", "g", "none", 10, 50),
]


def test_selection_rule_by_hand():
    sel = select_runs(frame(ROWS), threshold=40).set_index(["method", "weight_dtype"])
    # fp32: a and b/d qualify (c is over 40); b and d tie on utility and forget -> run name "b"
    assert sel.loc[("GA_GDR", "fp32"), "run"] == "b"
    assert bool(sel.loc[("GA_GDR", "fp32"), "meets_threshold"])
    assert sel.loc[("GA_GDR", "fp32"), "n_candidates"] == 4
    # bf16: nothing under 40 -> the lowest forget metric (e, 70), flagged
    assert sel.loc[("GA_GDR", "bf16"), "run"] == "e"
    assert not bool(sel.loc[("GA_GDR", "bf16"), "meets_threshold"])
    assert sel.loc[("GA_GDR_SURE", "fp32"), "run"] == "g"
    assert ("target", "–") not in sel.index  # references are never selected


def test_selection_threshold_is_inclusive_and_rule_checked():
    sel = select_runs(frame(ROWS), threshold=45).set_index(["method", "weight_dtype"])
    assert sel.loc[("GA_GDR", "fp32"), "run"] == "c"  # 45 <= 45, highest utility
    with pytest.raises(ValueError, match="unknown selection rule"):
        select_runs(frame(ROWS), "best", threshold=1)


def test_mark_selected():
    table = frame(ROWS)
    marked = mark_selected(table, select_runs(table, threshold=40))
    assert set(marked.loc[marked.selected, "run"]) == {"b", "e", "g"}


PAIR_ROWS = [
    ("s", "target", None, "method~target", "none", 74, 66),
    ("s", "target", None, "method~target", "rtn_w4g128", 70, 60),
    ("s", "GA_GDR", "fp32", "base", "none", 50, 70),
    ("s", "GA_GDR", "fp32", "base", "rtn_w4g128", 58, 65),
    ("s", "GA_GDR_SURE", "fp32", "sure", "none", 30, 60),
    ("s", "GA_GDR_SURE", "fp32", "sure", "rtn_w4g128", 31, 61),
]


def test_sure_table_and_summary_by_hand():
    table = frame(PAIR_ROWS)
    sel = select_runs(table, threshold=100)
    pairs = paired_table(table, sel, SURE, "rtn_w4g128", ("", "+ SURE"))
    # the target first (the paper's tables start with it), then the base and its SURE variant
    assert pairs["knowmem_f"].tolist() == [74, 50, 58, 30, 31]
    assert pairs["precision"].tolist() == ["full", "full", "4 bit", "full", "4 bit"]
    assert pairs["variant"].tolist()[0] == "Target"
    summary = summary_table(table, sel, "rtn_w4g128").set_index("method")
    assert summary.loc["GA_GDR", "d_knowmem_f"] == 8  # 58 - 50: knowledge given back
    assert summary.loc["GA_GDR_SURE", "d_knowmem_f"] == 1
    assert summary.loc["GA_GDR_SURE", "d_verbmem_f"] == 0.5
    assert summary.loc["target", "d_knowmem_f"] == -4
    assert summary.loc["GA_GDR_SURE", "family"] == "SURE"


def test_make_mitigation_tables_from_metric_files(tmp_path):
    from quantunlearn.unlearning.hyperparameters import BASE_HYPER_COLUMNS

    files = []
    for i, (bench, method, dtype, run, quant, kf, kr) in enumerate(PAIR_ROWS):
        hyper = dict.fromkeys(BASE_HYPER_COLUMNS)
        if method != "target":
            hyper.update(weight_dtype=dtype, lr=1e-4, epochs=10, alpha=1.0, seed=0)
        extra = {"gamma_pct": 90.0} if method.endswith("SURE") else {}
        rows = [
            {"benchmark": bench, "run": run, "method": method, "quant": quant, **hyper, **extra,
             "metric": m, "value": float(v), "n": 10, "config_hash": "h", "versions": "{}"}
            for m, v in (("knowmem_f", kf), ("knowmem_r", kr), ("verbmem_f", kf / 2),
                         ("privleak", -50.0))
        ]  # fmt: skip
        path = tmp_path / f"cell{i}.parquet"
        pd.DataFrame(rows).to_parquet(path)
        files.append(path)
    out = tmp_path / "tables"
    sel = {"rule": "max_knowmem_r_under_forget_threshold", "threshold": 40.0}
    sel |= {"forget_metric": "knowmem_f", "utility_metric": "knowmem_r"}
    make_mitigation_tables(files, out, ["none", "rtn_w4g128"], sel, "rtn_w4g128")
    for stem in ("grid", "selection", "table_sure", "table_lora", "table_quail", "summary"):
        assert (out / f"{stem}.md").stat().st_size > 0
        assert (out / f"{stem}.parquet").exists()
    assert (out / "summary.png").stat().st_size > 0 and (out / "summary.svg").exists()
    sure_md = (out / "table_sure.md").read_text()
    assert "GA_GDR + SURE + Quan. (4 bit)" in sure_md
    assert "No run of this kind" in (out / "table_lora.md").read_text()
    grid = pd.read_parquet(out / "grid.parquet")
    # GA_GDR (50) is over the threshold 40 but is its group's only run: selected, flagged
    assert set(grid.loc[grid.selected, "run"]) == {"base", "sure"}


def _cell_files(rows, folder):
    from quantunlearn.unlearning.hyperparameters import BASE_HYPER_COLUMNS

    files = []
    for i, (bench, method, dtype, run, quant, kf, kr) in enumerate(rows):
        hyper = dict.fromkeys(BASE_HYPER_COLUMNS)
        if method != "target":
            hyper.update(weight_dtype=dtype, lr=1e-4, epochs=10, alpha=1.0, seed=0)
        extra = {"lora_rank": 16, "lora_alpha": 32.0} if method.endswith("LORA") else {}
        frame_rows = [
            {"benchmark": bench, "run": run, "method": method, "quant": quant, **hyper, **extra,
             "metric": m, "value": float(v), "n": 10, "config_hash": "h", "versions": "{}"}
            for m, v in (("knowmem_f", kf), ("knowmem_r", kr), ("verbmem_f", kf / 2),
                         ("privleak", -50.0))
        ]  # fmt: skip
        path = folder / f"cell{i}.parquet"
        pd.DataFrame(frame_rows).to_parquet(path)
        files.append(path)
    return files


def test_the_lora_table_shows_abitante_et_als_4_bit_format(tmp_path):
    """Where the study holds bnb_nf4_bf16 (NF4 with bf16 compute), table_lora's "4 bit" rows are
    that quantizer's cells, while the other tables keep selection.low_bit_quantizer (RTN)."""
    quants = ("none", "rtn_w4g128", "bnb_nf4_bf16")
    values = {"none": (50, 70), "rtn_w4g128": (58, 65), "bnb_nf4_bf16": (61, 64)}
    rows = [("s", "target", None, "method~target", q, 74, 66) for q in quants]
    for method, run in (("GA_GDR", "base"), ("GA_GDR_LORA", "lora")):
        rows += [("s", method, "fp32", run, q, *values[q]) for q in quants]
    out = tmp_path / "tables"
    sel = {"rule": "max_knowmem_r_under_forget_threshold", "threshold": 100.0}
    sel |= {"forget_metric": "knowmem_f", "utility_metric": "knowmem_r"}
    make_mitigation_tables(_cell_files(rows, tmp_path), out, list(quants), sel, "rtn_w4g128")
    lora = pd.read_parquet(out / "table_lora.parquet")
    four = lora[lora.precision == "4 bit"]
    assert set(four.quant) == {"bnb_nf4_bf16"} and set(four.knowmem_f) == {61}
    assert "'4 bit' is bnb_nf4_bf16" in (out / "table_lora.md").read_text()
    summary = pd.read_parquet(out / "summary.parquet")
    assert set(summary.d_knowmem_f.dropna()) == {8.0, 0.0}  # RTN: 58 - 50; the target 74 - 74
