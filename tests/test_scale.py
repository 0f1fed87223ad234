"""The scale study: per-benchmark tiny models, benchmark selection, and the recovery table.

Expected numbers are worked out by hand in the comments, never recomputed with the code.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_tables import cell_rows, hypers, write_cells
from test_workflow import job_counts, snakemake

from quantunlearn.reports.cells import build_table1
from quantunlearn.reports.scale import make_scale_table, model_sizes, scale_table
from quantunlearn.study import load_study
from quantunlearn.study.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SCALE = ROOT / "config" / "scale.yaml"
MICRO_SCALE = Path("tests") / "configs" / "micro_scale.yaml"
QUANTS = ["none", "rtn_w4g128"]

# {bench: {(method, dtype): {quant: (verbmem_f, knowmem_f, knowmem_r)}}}
CELLS = {
    "small": {
        ("target", None): {"none": (80, 70, 60), "rtn_w4g128": (78, 70, 58)},
        ("retrain", None): {"none": (30, 5, 65), "rtn_w4g128": (30, 5, 64)},
        # fp32: removed 40 (verb) / 40 (know); 4-bit gives back 10 / 20 -> 25 % / 50 %
        ("GA_GDR", "fp32"): {"none": (40, 30, 55), "rtn_w4g128": (50, 50, 54)},
        # bf16: removed 0.5 / 0 points (< 1) -> no share; 4-bit moves it anyway
        ("GA_GDR", "bf16"): {"none": (79.5, 70, 60), "rtn_w4g128": (78, 70, 58)},
    },
    "large": {
        # the target memorises too little (KnowMem_f 40 < 50): flagged
        ("target", None): {"none": (90, 40, 70), "rtn_w4g128": (90, 40, 70)},
        ("retrain", None): {"none": (30, 5, 70), "rtn_w4g128": (30, 5, 70)},
        # removed 60 / 30, recovered 60 / -10 -> 100 % / -33.3 %; pooled 50 / 90 = 55.6 %
        ("NPO_KLR", "fp32"): {"none": (30, 10, 66), "rtn_w4g128": (90, 0, 61)},
    },
}


def make_long() -> pd.DataFrame:
    rows = []
    for bench, cells in CELLS.items():
        for (method, dtype), per_q in cells.items():
            for quant, (verb, know, ret) in per_q.items():
                metrics = {"verbmem_f": verb, "knowmem_f": know, "knowmem_r": ret, "privleak": 0}
                rows += cell_rows(bench, method, quant, hypers(method, dtype), metrics)
    long = pd.DataFrame(rows)
    for col in ["epochs", "seed", "n"]:
        long[col] = long[col].astype("Int64")
    return long


def row(table: pd.DataFrame, bench: str, dtype: str) -> pd.Series:
    sel = table[(table.benchmark == bench) & (table.weight_dtype == dtype)]
    assert len(sel) == 1
    return sel.iloc[0]


@pytest.fixture
def table() -> pd.DataFrame:
    table1 = build_table1(make_long(), QUANTS)
    return scale_table(
        table1,
        {"small": 1_000_000, "large": 50_000_000},
        "rtn_w4g128",
        min_target_knowmem_f=50,
        min_target_verbmem_f=50,
    )


def test_scale_table_hand_computed(table):
    assert list(table.benchmark) == ["small", "small", "large"]  # by size, then GA_GDR bf16/fp32
    fp32 = row(table, "small", "fp32")
    assert fp32.removed_verbmem_f == 40 and fp32.removed_knowmem_f == 40
    assert fp32.recovered_verbmem_f == 10 and fp32.recovered_knowmem_f == 20
    assert fp32.share_verbmem_f == pytest.approx(25.0)
    assert fp32.share_knowmem_f == pytest.approx(50.0)
    assert fp32.share_pooled == pytest.approx(100 * 30 / 80)
    # given back, against the target under the same quantizer: verbmem 1 - (78-50)/(80-40),
    # knowmem 1 - (70-50)/(70-30); pooled 1 - (148-100)/(150-70)
    assert fp32.given_back_verbmem_f == pytest.approx(30.0)
    assert fp32.given_back_knowmem_f == pytest.approx(50.0)
    assert fp32.given_back_pooled == pytest.approx(40.0)
    assert fp32.knowmem_r_fp == 55 and fp32.knowmem_r_q == 54
    assert fp32.memorized and fp32.n_params == 1_000_000
    bf16 = row(table, "small", "bf16")
    assert bf16.removed_verbmem_f == pytest.approx(0.5)
    assert math.isnan(bf16.share_verbmem_f) and math.isnan(bf16.share_knowmem_f)
    assert math.isnan(bf16.share_pooled)  # 0.5 points removed in all: below MIN_REMOVED
    assert math.isnan(bf16.given_back_pooled)  # below the 5-point guard
    large = row(table, "large", "fp32")
    assert not large.memorized
    assert large.share_verbmem_f == pytest.approx(100.0)
    assert large.share_knowmem_f == pytest.approx(-100 / 3)
    assert large.share_pooled == pytest.approx(100 * 50 / 90)
    assert large.given_back_knowmem_f == pytest.approx(-100 / 3)
    assert large.given_back_pooled == pytest.approx(100 * (1 - 40 / 90))
    assert table.overlap.isna().all()


def test_scale_table_takes_overlap_and_rejects_gaps():
    table1 = build_table1(make_long(), QUANTS)
    run = table1[(table1.benchmark == "large") & (table1.method == "NPO_KLR")].run.iloc[0]
    overlap = pd.DataFrame({"benchmark": ["large"], "run": [run], "overlap": [0.975]})
    sizes = {"small": 1, "large": 2}
    kw = {"min_target_knowmem_f": 0, "min_target_verbmem_f": 0}
    got = scale_table(table1, sizes, "rtn_w4g128", overlap=overlap, **kw)
    assert row(got, "large", "fp32").overlap == 0.975
    assert math.isnan(row(got, "small", "fp32").overlap)
    with pytest.raises(ValueError, match="no model size for benchmark"):
        scale_table(table1, {"small": 1}, "rtn_w4g128", **kw)
    with pytest.raises(ValueError, match="no cell was evaluated with 'rtn_w8'"):
        scale_table(table1, sizes, "rtn_w8", **kw)


def test_model_sizes_read_train_info(tmp_path):
    folder = tmp_path / "target"
    folder.mkdir()
    (folder / "train_info.json").write_text(json.dumps({"n_parameters": 1234}))
    assert model_sizes({"b": folder}) == {"b": 1234}
    with pytest.raises(FileNotFoundError, match="train_info.json is missing"):
        model_sizes({"b": tmp_path})


def test_make_scale_table_files(tmp_path):
    paths = write_cells(make_long(), tmp_path / "cells")
    dirs = {}
    for bench, n in (("small", 1_000_000), ("large", 50_000_000)):
        dirs[bench] = tmp_path / bench
        dirs[bench].mkdir()
        (dirs[bench] / "train_info.json").write_text(json.dumps({"n_parameters": n}))
    scale = {"quant": "rtn_w4g128", "min_target_knowmem_f": 50, "min_target_verbmem_f": 50}
    out = tmp_path / "tables"
    make_scale_table(paths, dirs, out, scale, QUANTS)
    assert (out / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "given back by rtn_w4g128" in (out / "scale.svg").read_text(encoding="utf-8")
    md = (out / "scale.md").read_text(encoding="utf-8")
    assert "| 50M | NPO_KLR | fp32 | 10 | **no** | 40.0 | 10.0 | 0.0 | -33.3 |" in md
    assert (
        "| 1M | GA_GDR | fp32 | 10 | yes | 70.0 | 30.0 | 50.0 | 50.0 | 80.0 | 40.0 | 50.0 | 25.0 |"
        in (md)
    )
    assert len(pd.read_parquet(out / "scale.parquet")) == 3


# --------------------------------------------------------------------------- config


def scale_config() -> dict:
    return yaml.safe_load(SCALE.read_text())


def test_scale_config_grid_and_per_benchmark_models():
    study = load_study(scale_config())
    assert study.benchmarks == [
        "scale_1m",
        "synthetic",
        "scale_10m",
        "scale_50m",
        "scale_200m",
        "scale_1b",
    ]
    # 2 references + NPO_GDR x 3 step budgets (epochs) x 2 weight dtypes, per size
    assert len(study.runs) == 6 * (2 + 3 * 2)
    assert set(study.runs["epochs"].dropna()) == {2, 16, 64}
    assert study.tiny_model("scale_1b")["hidden_size"] == 2048
    assert study.tiny_model("scale_1b")["max_len"] == 256  # inherited from the top level
    assert study.tiny_model("scale_1b")["train"]["target_epochs"] == 30
    assert study.tiny_model("scale_1b")["train"]["lr"] == 3e-4
    assert study.tiny_model("synthetic") == study.config["tiny_model"]
    assert study.tables == Path("results/tables/scale")
    cell = study.cell_config("scale_1m", "method~target")
    assert cell["tiny_model"]["num_layers"] == 4


def test_scale_sizes_are_shared_with_the_default_study():
    """The scale config's `synthetic` size is the default study's: same cells, same hashes."""
    default = load_study(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    scale = load_study(scale_config())
    runs = default.runs.run
    run = runs[runs.str.startswith("method~NPO_GDR/weight_dtype~fp32/lr~1e-05/epochs~64/")].item()
    assert run in set(scale.runs.run)
    for quant in ("none", "rtn_w4g128"):
        assert scale.cell_config("synthetic", run, quant) == default.cell_config(
            "synthetic", run, quant
        )
    assert default.tables == Path("results/tables")


def test_run_benchmarks_selects_sizes():
    config = scale_config() | {"run_benchmarks": ["scale_1m", "synthetic"]}
    study = load_study(config)
    assert study.benchmarks == ["scale_1m", "synthetic"]
    assert set(study.runs.benchmark) == {"scale_1m", "synthetic"}
    with pytest.raises(ConfigError, match=r"run_benchmarks: no benchmark \['scale_2m'\]"):
        load_study(scale_config() | {"run_benchmarks": ["scale_2m"]})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["benchmarks"]["scale_1m"]["tiny_model"].update(num_heads=3),
            "benchmarks.scale_1m.tiny_model: hidden_size 128 is not divisible by num_heads 3",
        ),
        (
            lambda c: c["benchmarks"]["scale_1m"]["tiny_model"].update(hidden_size=100),
            "benchmarks.scale_1m.tiny_model.hidden_size: 100 is not a multiple of 128",
        ),
        (lambda c: c["scale"].update(quant="rtn_w3"), "scale.quant: 'rtn_w3' is not among"),
        (lambda c: c["scale"].update(quant="rtn_w9"), "scale.quant"),
        (lambda c: c["scale"].update(min_target_knowmem_f=120), "scale.min_target_knowmem_f"),
        (
            lambda c: c["benchmarks"]["synthetic"].update(
                models={"target": "org/t", "retrain": "org/r"}
            ),
            "benchmarks ['synthetic'] name their models",
        ),
        (
            lambda c: c["benchmarks"]["scale_1m"].update(
                models={"target": "org/t", "retrain": "org/r"}
            ),
            "this benchmark names its models, so no tiny model is trained",
        ),
    ],
)
def test_scale_config_errors(change, message):
    config = scale_config()
    change(config)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_study(config)


# --------------------------------------------------------------------------- the DAG


def test_scale_dry_run_lists_every_size_with_a_gpu_request(tmp_path):
    out = snakemake(tmp_path, "-n", "all_tables", config=SCALE)
    assert out.returncode == 0, out.stderr
    sizes, runs = 6, 2 + 3 * 2  # references + NPO_GDR x 3 step budgets x 2 weight dtypes
    assert job_counts(out.stdout) == {
        "prepare_benchmark": sizes,
        "train_tokenizer": sizes,
        "train_reference": 2 * sizes,
        "reference_auc": sizes,
        "unlearn": 3 * 2 * sizes,
        "evaluate": runs * 2 * sizes,  # none and rtn_w4g128
        "diagnose": 3 * 2 * sizes,  # the bucket overlap of every unlearned run at 4 bits
        "table1": 1,
        "provenance": 1,
        "scale_table": 1,
        "all_tables": 1,
    }
    train_1b = re.search(
        r"rule train_reference:\n(?:    .*\n)*?    wildcards: bench=scale_1b, which=target\n"
        r"    resources: (.*)",
        out.stdout,
    )
    assert train_1b and "gpu=1" in train_1b[1]


@pytest.mark.slow
def test_micro_scale_study_runs(tmp_path):
    out = snakemake(tmp_path, "--cores", "2", "all_tables", config=ROOT / MICRO_SCALE)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = pd.read_parquet(tmp_path / "results" / "tables" / "scale.parquet")
    assert list(table.benchmark) == ["narrow", "wide"]  # sorted by size
    infos = [
        json.loads((tmp_path / f"results/models/{b}/target/train_info.json").read_text())
        for b in ("narrow", "wide")
    ]
    assert list(table.n_params) == [i["n_parameters"] for i in infos]
    assert infos[1]["tiny_model"]["hidden_size"] == 256  # the benchmark's own model
    assert infos[0]["tiny_model"]["hidden_size"] == 128
    assert table[["knowmem_f_fp", "knowmem_f_q", "removed_verbmem_f"]].notna().all().all()
    # the overlap is the diagnostics' global target-vs-unlearned row of each run
    for r in table.itertuples():
        diag = pd.read_parquet(
            tmp_path / "results" / "diagnostics" / r.benchmark / r.run / "rtn_w4.parquet"
        )
        glob = diag[(diag.pair == "target_vs_unlearned") & (diag.level == "pooled")]
        assert r.overlap == glob.overlap.item()
        assert 0.5 < r.overlap < 1  # lr 1e-4 in fp32 flips some codes, not most
    assert (tmp_path / "results" / "tables" / "scale.png").is_file()


def test_model_size_does_not_touch_the_data():
    study = load_study(scale_config())
    assert "tiny_model" not in study.data_spec("scale_1m")
    assert study.data_spec("scale_1m")["synthetic"]["n_people"] == 100
    assert study.data_spec("synthetic") == study.benchmark("synthetic")
