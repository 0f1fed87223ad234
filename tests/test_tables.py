"""Table 1 aggregation: reading cells, pivoting, ordering, retention numbers, files and figure.

Expected values are chosen by hand below (and, for the headline, taken from the paper's own
Table 1), never recomputed with the code under test.
"""

from __future__ import annotations

import math
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest

from quantunlearn.reports.cells import build_table1, metric_columns, read_cells, table1_columns
from quantunlearn.reports.render import row_label, to_markdown
from quantunlearn.reports.table1 import (
    MIN_FORGETTING_POINTS,
    POOLED_METRIC,
    given_back_pct,
    headline_retention,
    make_table1,
    plot_retention,
    retention_summary,
    table1_markdown,
    write_table,
)
from quantunlearn.unlearning.hyperparameters import HYPER_COLUMNS

QUANTS = ["none", "rtn_w8", "rtn_w4g128"]
HASH = "cfg0123abcd"

# hand-chosen forget metrics: {(method, dtype): {quant: (verbmem_f, knowmem_f)}}
FORGET = {
    ("target", None): {"none": (40, 80), "rtn_w8": (0, 50), "rtn_w4g128": (20, 60)},
    ("retrain", None): {"none": (11, 31), "rtn_w8": (12, 32), "rtn_w4g128": (13, 33)},
    ("GA_GDR", "bf16"): {"none": (4, 20), "rtn_w8": (3, 10), "rtn_w4g128": (18, 45)},
    ("NPO_KLR", "bf16"): {"none": (8, 40), "rtn_w8": (1, 25), "rtn_w4g128": (14, 54)},
    ("GA_GDR", "fp32"): {"none": (0, 8), "rtn_w8": (2, 5), "rtn_w4g128": (10, 30)},
    ("NPO_KLR", "fp32"): {"none": (2, 16), "rtn_w8": (2, 15), "rtn_w4g128": (6, 42)},
}


def hypers(method: str, dtype: str | None, **over) -> dict:
    if method in ("target", "retrain"):
        base = dict.fromkeys(HYPER_COLUMNS)
    else:
        base = {
            "weight_dtype": dtype,
            "lr": 1e-5,
            "epochs": 10,
            "alpha": 1.0,
            "beta": 0.1 if method.startswith("NPO") else None,
            "npo_klr_form": "paper",
            "seed": 0,
        }
    base.update(over)
    return base


def run_name(method: str, h: dict) -> str:
    parts = [f"method~{method}"]
    for key in ["weight_dtype", "lr", "epochs", "alpha", "beta", "npo_klr_form", "seed"]:
        if h.get(key) is not None:
            parts.append(f"{'dtype' if key == 'weight_dtype' else key}~{h[key]}")
    return "/".join(parts)


def cell_rows(benchmark: str, method: str, quant: str, h: dict, metrics: dict) -> list[dict]:
    run = run_name(method, h)
    return [
        {
            "benchmark": benchmark,
            "run": run,
            "method": method,
            "quant": quant,
            **h,
            "metric": metric,
            "value": float(value),
            "n": 100,
            "config_hash": HASH,
            "versions": '{"quantunlearn": "0.1.0"}',
        }
        for metric, value in metrics.items()
    ]


def secondary(method: str, dtype: str | None, quant: str) -> tuple[float, float]:
    """Distinct, hand-decodable privleak / knowmem_r values for a cell."""
    m = ["target", "retrain", "GA_GDR", "NPO_KLR"].index(method)
    d = {None: 0, "bf16": 1, "fp32": 2}[dtype]
    q = QUANTS.index(quant)
    return -(100 * m + 10 * d + q), 1000 + 100 * m + 10 * d + q


def make_long(shuffle: bool = True) -> pd.DataFrame:
    rows = []
    for (method, dtype), per_q in FORGET.items():
        for quant, (verb, know) in per_q.items():
            priv, ret = secondary(method, dtype, quant)
            metrics = {
                "verbmem_f": verb,
                "knowmem_f": know,
                "privleak": priv,
                "knowmem_r": ret,
                "mink_auc": 0.5,
            }
            rows += cell_rows("news", method, quant, hypers(method, dtype), metrics)
    if shuffle:
        random.Random(0).shuffle(rows)
    long = pd.DataFrame(rows)
    for col in ["epochs", "seed", "n"]:
        long[col] = long[col].astype("Int64")
    for col in ["lr", "alpha", "beta"]:
        long[col] = long[col].astype("float64")
    return long


@pytest.fixture
def long() -> pd.DataFrame:
    return make_long()


@pytest.fixture
def table(long) -> pd.DataFrame:
    return build_table1(long, QUANTS)


def write_cells(long: pd.DataFrame, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ((_, _), part) in enumerate(long.groupby(["run", "quant"], sort=True)):
        path = folder / f"cell{i:02d}.parquet"
        part.to_parquet(path, index=False)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- reading


def test_read_cells_concatenates_files(tmp_path, long):
    paths = write_cells(long, tmp_path / "cells")
    assert len(paths) == 18  # 6 runs x 3 quantizers
    got = read_cells(paths)
    assert len(got) == len(long) == 18 * 5
    key = ["run", "quant", "metric"]
    merged = got.merge(long, on=key, suffixes=("", "_want"))
    assert len(merged) == len(long)
    assert (merged["value"] == merged["value_want"]).all()
    # target files hold an all-null weight_dtype / lr column: still NA after concatenation
    target = got[got["method"] == "target"]
    assert target["weight_dtype"].isna().all() and target["lr"].isna().all()
    assert str(got["epochs"].dtype) == "Int64"
    assert (
        build_table1(got, QUANTS)["knowmem_f"].tolist()
        == build_table1(long, QUANTS)["knowmem_f"].tolist()
    )


def test_read_cells_rejects_duplicate_cells(tmp_path, long):
    paths = write_cells(long, tmp_path / "cells")
    copy = tmp_path / "cells" / "copy_of_first.parquet"
    copy.write_bytes(paths[0].read_bytes())
    with pytest.raises(ValueError, match="duplicate") as err:
        read_cells([*paths, copy])
    assert "copy_of_first.parquet" in str(err.value) and paths[0].name in str(err.value)


def test_read_cells_names_file_missing_a_column(tmp_path, long):
    paths = write_cells(long, tmp_path / "cells")
    bad = tmp_path / "cells" / "no_quant.parquet"
    pd.read_parquet(paths[3]).drop(columns=["quant"]).to_parquet(bad, index=False)
    with pytest.raises(ValueError, match=r"no_quant\.parquet.*'quant'"):
        read_cells([paths[0], bad])
    with pytest.raises(ValueError, match="no metric files"):
        read_cells([])


# --------------------------------------------------------------------------- Table 1


def test_table1_columns_and_row_order(table):
    assert list(table.columns) == table1_columns()
    order = list(zip(table["method"], table["weight_dtype"], table["quant"], strict=True))
    want = []
    for method, dtype in [
        ("target", None),
        ("retrain", None),
        ("GA_GDR", "bf16"),
        ("GA_GDR", "fp32"),
        ("NPO_KLR", "bf16"),
        ("NPO_KLR", "fp32"),
    ]:
        want += [(method, dtype, q) for q in QUANTS]
    got = [(m, None if pd.isna(d) else d, q) for m, d, q in order]
    assert got == want
    assert "mink_auc" not in table.columns
    assert (table["config_hash"] == HASH).all()


def test_table1_values_land_in_their_cells(table):
    def cell(method, dtype, quant):
        sel = (table["method"] == method) & (table["quant"] == quant)
        sel &= table["weight_dtype"].isna() if dtype is None else table["weight_dtype"] == dtype
        assert sel.sum() == 1
        return table[sel].iloc[0]

    row = cell("NPO_KLR", "fp32", "rtn_w4g128")
    assert (row["verbmem_f"], row["knowmem_f"]) == (6.0, 42.0)
    assert (row["privleak"], row["knowmem_r"]) == (-322.0, 1322.0)
    assert row["beta"] == 0.1 and row["lr"] == 1e-5 and row["epochs"] == 10
    assert (
        row["run"] == "method~NPO_KLR/dtype~fp32/lr~1e-05/epochs~10/alpha~1.0/beta~0.1/"
        "npo_klr_form~paper/seed~0"
    )
    row = cell("GA_GDR", "bf16", "rtn_w8")
    assert (row["verbmem_f"], row["knowmem_f"], row["privleak"], row["knowmem_r"]) == (
        3.0,
        10.0,
        -211.0,
        1211.0,
    )
    assert pd.isna(row["beta"])
    row = cell("target", None, "none")
    assert (row["verbmem_f"], row["knowmem_f"], row["privleak"]) == (40.0, 80.0, 0.0)
    assert pd.isna(row["lr"]) and pd.isna(row["seed"])


def test_table1_order_with_unknowns_na_and_two_benchmarks():
    rows = []
    m = {"verbmem_f": 1, "knowmem_f": 2, "privleak": 3, "knowmem_r": 4}
    for bench in ["books", "news"]:
        specs = [
            ("RMU", hypers("RMU", "bf16")),
            ("AAA", hypers("AAA", "bf16")),
            ("GA_GDR", hypers("GA_GDR", None)),  # NA dtype: after bf16 / fp32
            ("GA_GDR", hypers("GA_GDR", "fp32")),
            ("GA_GDR", hypers("GA_GDR", "bf16", lr=1e-5)),
            ("GA_GDR", hypers("GA_GDR", "bf16", lr=5e-6)),
            ("GA", hypers("GA", "bf16", alpha=None)),
            ("GA", hypers("GA", "bf16", alpha=None, lr=2e-6)),
            ("retrain", hypers("retrain", None)),
            ("target", hypers("target", None)),
        ]
        for method, h in specs:
            for quant in ["bnb_nf4", "rtn_w8", "none", "rtn_w4g128"]:
                rows += cell_rows(bench, method, quant, h, m)
    long = pd.DataFrame(rows)
    # quant_order without "none" and in a custom order; bnb_nf4 is unknown: last
    table = build_table1(long, ["rtn_w4g128", "rtn_w8"], benchmark_order=["news", "books"])
    quants = ["none", "rtn_w4g128", "rtn_w8", "bnb_nf4"]
    want = []
    for bench in ["news", "books"]:
        for method, dtype, lr in [
            ("target", None, None),
            ("retrain", None, None),
            ("GA", "bf16", 2e-6),
            ("GA", "bf16", 1e-5),
            ("GA_GDR", "bf16", 5e-6),
            ("GA_GDR", "bf16", 1e-5),
            ("GA_GDR", "fp32", 1e-5),
            ("GA_GDR", None, 1e-5),
            ("AAA", "bf16", 1e-5),
            ("RMU", "bf16", 1e-5),
        ]:
            want += [(bench, method, dtype, lr, q) for q in quants]
    na = lambda v: None if pd.isna(v) else v  # noqa: E731
    got = [
        (b, m, na(d), na(lr), q)
        for b, m, d, lr, q in zip(
            table["benchmark"],
            table["method"],
            table["weight_dtype"],
            table["lr"],
            table["quant"],
            strict=True,
        )
    ]
    assert got == want


def test_build_table1_rejects_duplicates_and_inconsistent_runs(long):
    with pytest.raises(ValueError, match="duplicate"):
        build_table1(pd.concat([long, long.iloc[:1]]), QUANTS)
    bad = long.copy()
    idx = bad.index[(bad["method"] == "GA_GDR") & (bad["quant"] == "rtn_w8")][0]
    bad.loc[idx, "lr"] = 3e-5
    with pytest.raises(ValueError, match="several values of"):
        build_table1(bad, QUANTS)


def test_missing_metric_is_nan(long):
    drop = (long["method"] == "retrain") & (long["metric"] == "privleak")
    table = build_table1(long[~drop], QUANTS)
    retrain = table[table["method"] == "retrain"]
    assert retrain["privleak"].isna().all() and retrain["knowmem_f"].notna().all()


def test_row_label():
    base = {"quant": "none", **dict.fromkeys(HYPER_COLUMNS)}
    assert row_label({**base, "method": "target"}) == "Target"
    assert row_label({**base, "method": "target", "quant": "bnb_nf4"}) == "Target + bnb_nf4"
    assert row_label({**base, "method": "retrain", "quant": "rtn_w4g128"}) == (
        "Retrain + rtn_w4g128"
    )
    npo = {**hypers("NPO_GDR", "bf16"), "method": "NPO_GDR", "quant": "rtn_w8"}
    assert row_label(npo) == "NPO_GDR [bf16, lr 1e-05, α 1] + rtn_w8"
    ga = {**hypers("GA", "fp32", alpha=float("nan"), lr=2e-5), "method": "GA", "quant": "none"}
    assert row_label(ga) == "GA [fp32, lr 2e-05]"
    assert row_label(npo, keys=["weight_dtype", "beta", "seed"]) == (
        "NPO_GDR [bf16, β 0.1, seed 0] + rtn_w8"
    )
    rmu = {**base, "method": "RMU", "rmu_layer": 1, "rmu_steering": 20.0, "lr": 1e-3}
    assert row_label(rmu, keys=["lr", "rmu_layer", "rmu_steering"]) == (
        "RMU [lr 0.001, rmu_layer 1, rmu_steering 20]"
    )


# --------------------------------------------------------------------------- Markdown / files


def test_to_markdown_exact():
    frame = pd.DataFrame(
        {
            "name": ["a|b", None],
            "x": [1.25, -0.04],
            "k": pd.Series([3, None], dtype="Int64"),
        }
    )
    text = to_markdown(frame, {"name": "Name", "x": "X ↓", "k": "K"}, floatfmt=".1f")
    assert text == (
        "| Name | X ↓ | K |\n| :--- | ---: | ---: |\n| a\\|b | 1.2 | 3 |\n| – | 0.0 | – |\n"
    )
    assert to_markdown(frame, ["x"], floatfmt=".2f").splitlines()[2] == "| 1.25 |"
    with pytest.raises(ValueError, match="lacks column"):
        to_markdown(frame, ["nope"])


def test_write_table_files(tmp_path, table):
    stem = tmp_path / "out" / "table1"
    write_table(table, stem, title="Table 1 (test)", notes="Tiny hand-made numbers.")
    for ext in ("parquet", "csv", "md"):
        assert stem.with_suffix(f".{ext}").is_file()
    assert not [p for p in stem.parent.iterdir() if p.name.endswith(".tmp")]
    back = pd.read_parquet(stem.with_suffix(".parquet"))
    assert list(back.columns) == table1_columns() and len(back) == len(table) == 18
    assert back["knowmem_f"].tolist() == table["knowmem_f"].tolist()
    assert len(pd.read_csv(stem.with_suffix(".csv"))) == 18

    md = stem.with_suffix(".md").read_text(encoding="utf-8")
    lines = md.splitlines()
    assert lines[0] == "# Table 1 (test)"
    assert "Tiny hand-made numbers." in md
    header = "| Method | VerbMem_f ↓ | KnowMem_f ↓ | PrivLeak →0 | KnowMem_r ↑ |"
    assert lines.count(header) == 1
    start = lines.index(header)
    body = [ln for ln in lines[start + 2 :] if ln.startswith("| ")]
    assert len(body) == 18
    assert body[0] == "| Target | 40.0 | 80.0 | 0.0 | 1000.0 |"
    assert body[7] == "| GA_GDR [bf16, lr 1e-05, α 1] + rtn_w8 | 3.0 | 10.0 | -211.0 | 1211.0 |"
    assert "Retrain + rtn_w4g128" in body[5]
    # 6 runs (target, retrain, 2 methods x 2 dtypes) x 3 quantizers, no train~ segment
    assert (
        "- news: 18 cells, 6 runs x 3 quantizers; unlearning runs' training settings: the "
        "default study's" in md
    )
    assert "config hash `" not in md  # not one line per hash


def test_table1_names_the_training_settings_of_its_runs(table):
    tagged = table.assign(run=[r + "/train~0123abcd" if "GA_GDR" in r else r for r in table["run"]])
    md = table1_markdown(tagged, "t")
    assert "training settings: `train~0123abcd`, the default study's" in md


# --------------------------------------------------------------------------- retention


def pct(summary, metric, dtype, quant, bench="news"):
    sel = summary[
        (summary["benchmark"] == bench)
        & (summary["metric"] == metric)
        & (summary["weight_dtype"] == dtype)
        & (summary["quant"] == quant)
    ]
    assert len(sel) == 1
    return float(sel["retained_pct"].iloc[0]), int(sel["n_runs"].iloc[0])


def test_retention_summary_hand_computed(table):
    s = retention_summary(table)
    assert list(s.columns) == [
        "benchmark",
        "weight_dtype",
        "quant",
        "metric",
        "retained_pct",
        "given_back_pct",
        "n_runs",
    ]
    assert len(s) == 2 * 3 * 2  # dtypes x quants x metrics
    # knowmem_f, bf16: GA_GDR 20/80=25%, NPO_KLR 40/80=50% -> 37.5%; 4 bit: 45/60=75%, 54/60=90%
    assert pct(s, "knowmem_f", "bf16", "none") == (pytest.approx((25 + 50) / 2), 2)
    assert pct(s, "knowmem_f", "bf16", "rtn_w4g128")[0] == pytest.approx(82.5)
    assert pct(s, "knowmem_f", "bf16", "rtn_w8")[0] == pytest.approx((20 + 50) / 2)
    # fp32: 8/80=10%, 16/80=20%; 30/60=50%, 42/60=70%
    assert pct(s, "knowmem_f", "fp32", "none") == (pytest.approx(15.0), 2)
    assert pct(s, "knowmem_f", "fp32", "rtn_w4g128")[0] == pytest.approx(60.0)
    # verbmem_f: target 40 / 20; bf16 4,8 -> 10%,20%; 18,14 -> 90%,70%; fp32 0,2 -> 0%,5%
    assert pct(s, "verbmem_f", "bf16", "none")[0] == pytest.approx(15.0)
    assert pct(s, "verbmem_f", "bf16", "rtn_w4g128")[0] == pytest.approx(80.0)
    assert pct(s, "verbmem_f", "fp32", "none")[0] == pytest.approx(2.5)
    # the target's verbmem_f is 0 under rtn_w8: NaN, not inf
    value, n = pct(s, "verbmem_f", "fp32", "rtn_w8")
    assert math.isnan(value) and n == 2
    assert s["retained_pct"].dropna().map(math.isfinite).all()


def back(summary, metric, dtype, quant, bench="news"):
    sel = summary[
        (summary["benchmark"] == bench)
        & (summary["metric"] == metric)
        & (summary["weight_dtype"] == dtype)
        & (summary["quant"] == quant)
    ]
    assert len(sel) == 1
    return float(sel["given_back_pct"].iloc[0])


def test_given_back_pct_hand_computed():
    # target 80 -> unlearned 20 in full precision (60 points forgotten); under q the target is
    # 60 and the unlearned model 45: 15 points of forgetting left, 75% of it given back
    assert given_back_pct(80, 20, 60, 45) == pytest.approx(75.0)
    # a quantizer that leaves the target alone: (model_q - model_fp) / (target - model_fp)
    assert given_back_pct(84.4, 62.5, 84.4, 69.8) == pytest.approx(100 * 7.3 / 21.9)
    assert given_back_pct(80, 20, 80, 20) == 0.0  # every point of forgetting kept
    assert given_back_pct(80, 20, 80, 80) == 100.0  # all of it undone
    assert given_back_pct(80, 20, 80, 10) == pytest.approx(-100 / 6)  # forgets more under q
    # the guard: a full-precision forgetting below MIN_FORGETTING_POINTS is too small to share
    assert math.isnan(given_back_pct(80, 80 - MIN_FORGETTING_POINTS / 2, 80, 80))
    assert given_back_pct(80, 80 - MIN_FORGETTING_POINTS, 80, 80) == 100.0
    assert math.isnan(given_back_pct(80, 90, 80, 80))  # no forgetting at all
    assert math.isnan(given_back_pct(80, 20, float("nan"), 45))
    assert math.isnan(given_back_pct(80, 20, 60, None))


def test_retention_summary_given_back_per_method_then_mean(table):
    s = retention_summary(table)
    # knowmem_f bf16, 4 bit: GA_GDR 1 - (60-45)/(80-20) = 75%; NPO_KLR 1 - (60-54)/(80-40) = 85%
    assert back(s, "knowmem_f", "bf16", "rtn_w4g128") == pytest.approx(80.0)
    # fp32: GA_GDR 1 - (60-30)/(80-8); NPO_KLR 1 - (60-42)/(80-16)
    expected = 100 * ((1 - 30 / 72) + (1 - 18 / 64)) / 2
    assert back(s, "knowmem_f", "fp32", "rtn_w4g128") == pytest.approx(expected)
    assert back(s, "knowmem_f", "bf16", "none") == 0.0  # full precision gives nothing back


def test_headline_given_back_pools_sums(table):
    head = headline_retention(table)
    row = head[(head["weight_dtype"] == "bf16") & (head["quant"] == "rtn_w4g128")].iloc[0]
    # knowmem_f: targets 80/60, GA_GDR 20/45, NPO_KLR 40/54; verbmem_f: targets 40/20,
    # GA_GDR 4/18, NPO_KLR 8/14 -> sums: target fp 240, model fp 72, target q 160, model q 131
    assert row["given_back_pct"] == pytest.approx(100 * (1 - (160 - 131) / (240 - 72)))


def test_retention_averages_cells_then_methods_and_skips_unregularized(long):
    # a second GA_GDR bf16 cell (lr 5e-6, knowmem_f 36 -> 45%) and an unregularized GA cell
    extra = []
    for quant in QUANTS:
        metrics = {"verbmem_f": 4, "knowmem_f": 36, "privleak": 0, "knowmem_r": 0}
        extra += cell_rows("news", "GA_GDR", quant, hypers("GA_GDR", "bf16", lr=5e-6), metrics)
        extra += cell_rows("news", "GA", quant, hypers("GA", "bf16", alpha=None), metrics)
    table = build_table1(pd.concat([long, pd.DataFrame(extra)], ignore_index=True), QUANTS)
    s = retention_summary(table)
    # GA_GDR: mean(25%, 45%) = 35%; NPO_KLR 50% -> 42.5% (GA ignored), over 3 cells
    assert pct(s, "knowmem_f", "bf16", "none") == (pytest.approx(42.5), 3)


def test_headline_reproduces_paper_21_and_83_percent():
    """Zhang et al. Table 1 (M1 VerbMem, M2 KnowMem): 21% at full precision, 83% at 4 bit."""
    paper = {  # (bench, method): {quant: (M1, M2)}
        ("news", "target"): {"none": (58.4, 63.9), "rtn_w4": (34.2, 54.4)},
        ("books", "target"): {"none": (99.8, 59.4), "rtn_w4": (85.3, 36.8)},
        ("news", "GA_GDR"): {"none": (0.0, 28.9), "rtn_w4": (25.0, 50.1)},
        ("books", "GA_GDR"): {"none": (0.0, 2.9), "rtn_w4": (17.9, 33.7)},
        ("news", "GA_KLR"): {"none": (14.1, 27.1), "rtn_w4": (33.8, 50.9)},
        ("books", "GA_KLR"): {"none": (13.0, 15.1), "rtn_w4": (75.6, 34.6)},
        ("news", "NPO_GDR"): {"none": (0.3, 46.1), "rtn_w4": (33.2, 51.4)},
        ("books", "NPO_GDR"): {"none": (0.4, 13.4), "rtn_w4": (66.0, 31.9)},
        ("news", "NPO_KLR"): {"none": (16.6, 36.6), "rtn_w4": (34.1, 53.7)},
        ("books", "NPO_KLR"): {"none": (12.4, 13.7), "rtn_w4": (70.9, 34.2)},
        ("news", "GA"): {"none": (0.0, 0.0), "rtn_w4": (0.0, 0.0)},
    }
    rows = []
    for (bench, method), per_q in paper.items():
        dtype = None if method == "target" else "bf16"
        for quant, (m1, m2) in per_q.items():
            rows.append(
                {
                    "benchmark": bench,
                    "method": method,
                    "quant": quant,
                    **hypers(method, dtype),
                    "verbmem_f": m1,
                    "knowmem_f": m2,
                    "privleak": None,
                    "knowmem_r": None,
                    "config_hash": HASH,
                    "run": f"method~{method}",
                }
            )
    table = pd.DataFrame(rows, columns=table1_columns())
    head = headline_retention(table)
    assert set(head["metric"]) == {POOLED_METRIC} and set(head["benchmark"]) == {"all"}
    full = head[head["quant"] == "none"].iloc[0]
    four = head[head["quant"] == "rtn_w4"].iloc[0]
    # sums by hand: full (0 + 28.9 + ... + 13.7 = 240.6) / (4 * 281.5 = 1126.0) = 21.4%;
    # 4 bit (25.0 + 50.1 + ... + 34.2 = 697.0) / (4 * 210.7 = 842.8) = 82.7%, vs the 4-bit target
    assert full["retained_pct"] == pytest.approx(100 * 240.6 / 1126.0, abs=1e-9)
    assert four["retained_pct"] == pytest.approx(100 * 697.0 / 842.8, abs=1e-9)
    assert round(full["retained_pct"]) == 21 and round(four["retained_pct"]) == 83
    # given back at 4 bit: 1 - (842.8 - 697.0) / (1126.0 - 240.6) = 83.5%
    assert four["given_back_pct"] == pytest.approx(100 * (1 - 145.8 / 885.4), abs=1e-9)
    assert full["given_back_pct"] == 0.0
    assert full["n_runs"] == 8  # 4 methods x 2 benchmarks (GA and the target excluded)
    # per benchmark and metric: NEWS KnowMem_f, full precision = mean(28.9, 27.1, 46.1, 36.6)/63.9
    s = retention_summary(table)
    assert pct(s, "knowmem_f", "bf16", "none")[0] == pytest.approx(100 * 138.7 / 4 / 63.9)


def test_zero_target_gives_nan_in_headline_only_when_everything_is_zero(table):
    head = headline_retention(table)
    # bf16, none: (20+40)+(4+8) = 72 over (80+80)+(40+40) = 240 -> 30%
    assert pct(head, POOLED_METRIC, "bf16", "none", bench="all") == (pytest.approx(30.0), 2)
    # rtn_w8: the zero verbmem_f target only adds 0 to the denominator: (10+25+3+1)/100
    assert pct(head, POOLED_METRIC, "bf16", "rtn_w8", bench="all")[0] == pytest.approx(39.0)
    zero = table.copy()
    zero.loc[zero["method"] == "target", ["verbmem_f", "knowmem_f"]] = 0.0
    assert retention_summary(zero)["retained_pct"].isna().all()
    assert headline_retention(zero)["retained_pct"].isna().all()


# --------------------------------------------------------------------------- figure / end to end


def check_figures(png: Path, svg: Path) -> None:
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    assert "% of target knowledge retained" in svg.read_text(encoding="utf-8")


def test_plot_retention_writes_valid_files(tmp_path, table):
    summary = retention_summary(table)
    png, svg = tmp_path / "fig" / "r.png", tmp_path / "fig" / "r.svg"
    plot_retention(summary, png, svg, QUANTS)
    check_figures(png, svg)
    assert png.stat().st_size > 10_000


def test_make_table1_end_to_end(tmp_path, long):
    paths = write_cells(long, tmp_path / "cells")
    out = tmp_path / "results"
    make_table1(paths, out, QUANTS, benchmark_notes="Embedded tiny benchmark.")
    for name in ["table1.parquet", "table1.csv", "table1.md", "retention.parquet"]:
        assert (out / name).is_file(), name
    for name in ["retention.csv", "retention.md", "retention.png", "retention.svg"]:
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    check_figures(out / "retention.png", out / "retention.svg")
    table = pd.read_parquet(out / "table1.parquet")
    assert len(table) == 18 and list(table.columns[-7:-3]) == metric_columns()
    ret = pd.read_parquet(out / "retention.parquet")
    assert len(ret) == 12 + 6  # per-benchmark rows + pooled rows (2 dtypes x 3 quants)
    assert pct(ret, "knowmem_f", "bf16", "rtn_w4g128")[0] == pytest.approx(82.5)
    assert pct(ret, POOLED_METRIC, "bf16", "none", bench="all")[0] == pytest.approx(30.0)
    md = (out / "retention.md").read_text(encoding="utf-8")
    assert (
        "| Benchmark | Metric | Weights | Quantizer | Retained % of target "
        "| Given back % of fp forgetting | Cells |"
    ) in md
    assert "Embedded tiny benchmark." in (out / "table1.md").read_text(encoding="utf-8")


def test_collapsed_runs_are_marked_in_the_tables(tmp_path, long):
    """A run whose unlearning job flagged a collapse (its metric files carry collapsed=True)
    reads "(collapsed)" in every row label, with a note under the table; metric files without
    the column (written before the flag existed) and the references read as before."""
    collapsed_run = run_name("GA_GDR", hypers("GA_GDR", "fp32"))
    flag = long["run"].eq(collapsed_run).astype(object)
    long = long.assign(collapsed=flag.where(~long["method"].isin(["target", "retrain"]), None))
    npo_klr = long["method"] == "NPO_KLR"
    paths = write_cells(long[~npo_klr], tmp_path / "cells")
    paths += write_cells(long[npo_klr].drop(columns="collapsed"), tmp_path / "old")
    make_table1(paths, tmp_path / "out", QUANTS)
    table = pd.read_parquet(tmp_path / "out" / "table1.parquet")
    assert table.loc[table["run"] == collapsed_run, "collapsed"].tolist() == [True] * 3
    assert table.loc[table["method"] == "NPO_KLR", "collapsed"].isna().all()
    md = (tmp_path / "out" / "table1.md").read_text(encoding="utf-8")
    marked = [line for line in md.splitlines() if "(collapsed)" in line and line.startswith("|")]
    assert len(marked) == 3 and all(line.startswith("| GA_GDR [fp32") for line in marked)
    assert "(collapsed): the unlearned model collapsed" in md
    plain = make_long()
    make_table1(write_cells(plain, tmp_path / "plain"), tmp_path / "plain_out", QUANTS)
    assert "collapsed" not in (tmp_path / "plain_out" / "table1.md").read_text(encoding="utf-8")
