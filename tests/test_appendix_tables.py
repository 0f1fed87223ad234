"""Zhang et al.'s Tables 9, 10 and 11 (and Table 3's utility columns) from hand-made cells."""

from __future__ import annotations

import pandas as pd

from quantunlearn.reports.appendix import gamma_table, make_appendix_tables, rmu_table, sure_s_table
from quantunlearn.reports.mitigations import paired_table
from quantunlearn.reports.selection import select_runs
from quantunlearn.unlearning.families import SURE

# method, run, quant, knowmem_f, knowmem_r, gamma_pct, mmlu (Gen)
ROWS = [
    ("target", "method~target", "none", 74, 66, None, 40),
    ("target", "method~target", "q4", 70, 60, None, 38),
    ("GA_GDR", "ga", "none", 50, 70, None, 35),
    ("GA_GDR", "ga", "q4", 58, 65, None, 34),
    ("GA_GDR_SURE", "s50", "none", 35, 50, 50.0, 30),
    ("GA_GDR_SURE", "s90", "none", 30, 60, 90.0, 31),
    ("GA_GDR_SURE", "s90", "q4", 31, 61, 90.0, 32),
    ("GA_GDR_SURE_S", "ss", "none", 20, 40, None, 25),
    ("RMU", "rmu", "none", 10, 55, None, 33),
    ("RMU", "rmu", "q4", 40, 56, None, 33),
    ("RMU_LAT", "lat", "none", 12, 54, None, 32),
    ("RMU_LAT", "lat", "q4", 30, 53, None, 31),
]


def table():
    out = pd.DataFrame(ROWS, columns=["method", "run", "quant", "knowmem_f", "knowmem_r",
                                      "gamma_pct", "mmlu"])  # fmt: skip
    out["benchmark"] = "books"
    out["weight_dtype"] = out["method"].map(lambda m: None if m == "target" else "bf16")
    out["verbmem_f"] = out["knowmem_f"] / 2
    out["privleak"] = -50.0
    return out


def test_tables_nine_ten_eleven_by_hand(tmp_path):
    t = table()
    sel = select_runs(t, threshold=100)  # highest full-precision KnowMem_r: SURE s90
    assert sel.set_index("method").loc["GA_GDR_SURE", "run"] == "s90"
    nine = gamma_table(t)
    assert nine["label"].tolist() == [
        "Target", "GA_GDR + SURE (γ=Percent.(s, 50))", "GA_GDR + SURE (γ=Percent.(s, 90))"
    ]  # fmt: skip
    assert nine["knowmem_f"].tolist() == [74, 35, 30] and nine["mmlu"].tolist() == [40, 30, 31]
    ten = sure_s_table(t, sel)
    assert ten["label"].tolist() == ["Target", "GA_GDR + SURE/S", "GA_GDR + SURE"]
    assert ten["knowmem_f"].tolist() == [74, 20, 30] and (ten["quant"] == "none").all()
    eleven = rmu_table(t, sel, "q4")
    assert eleven["label"].tolist() == [
        "Target", "RMU", "RMU + Quan.", "RMU_LAT", "RMU_LAT + Quan."
    ]  # fmt: skip
    assert eleven["knowmem_f"].tolist() == [74, 10, 40, 12, 30]
    assert eleven["mmlu"].tolist() == [40, 33, 33, 32, 31]
    # Table 3 with its utility column
    three = paired_table(t, sel, SURE, "q4", ("", "+ SURE"))
    assert three["knowmem_f"].tolist() == [74, 50, 58, 30, 31]
    assert three["mmlu"].tolist() == [40, 35, 34, 31, 32]
    make_appendix_tables(t, sel, tmp_path, "q4", "rule")
    md = (tmp_path / "table_rmu.md").read_text()
    assert "| RMU_LAT + Quan. |" in md and "MMLU ↑" in md and "Table 11" in md
    assert "Table 10" in (tmp_path / "table_sure_s.md").read_text()


def test_tables_without_their_methods_say_so(tmp_path):
    t = table()
    t = t[~t["method"].isin(["RMU", "RMU_LAT", "GA_GDR_SURE_S"])]
    sel = select_runs(t, threshold=100)
    assert rmu_table(t, sel, "q4").empty and sure_s_table(t, sel).empty
    make_appendix_tables(t, sel, tmp_path, "q4", "rule")
    assert "No run of this kind" in (tmp_path / "table_rmu.md").read_text()
