"""The Twitter misinformation study (Mishra and Mehreen section VII-A, Table III): the loader on
generated fixtures in the hub dataset's schema, the MUSE-layout folder, the embedded stand-in,
the classification accuracy on a real model, the config and Table III's layout."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml
from test_contracts import ROOT

from quantunlearn.data.muse import load_benchmark
from quantunlearn.data.synthetic import SyntheticError
from quantunlearn.data.twitter import (
    SPLITS,
    clean,
    load_twitter,
    prepare_twitter,
    synthetic_twitter,
    verbmem_item,
    write_fixture,
)
from quantunlearn.evaluation.classification import LABEL_WORDS, PROMPT, accuracy, classify
from quantunlearn.evaluation.metrics import BY_NAME, Context
from quantunlearn.reports.twitter_table import twitter_benchmarks, twitter_table
from quantunlearn.study import ConfigError, load_study

HUBLIKE = {  # rows in the hub's schema, with its quirks: an empty text, a None, a newline
    "forget": [{"text": "Water in Velmor\ncures flu, share now", "label": 1},
               {"text": "", "label": 0}, {"text": None, "label": 0},
               {"text": "Velmor council approved 3 million for roads", "label": 0}],
    "retain1": [{"text": "Kavlum Foods recalled kettles", "label": 0},
                {"text": "5G masts melt birds, wake up", "label": 1}],
    "retain2": [{"text": "Solrix won the half marathon", "label": 0}],
}  # fmt: skip


def test_fixture_round_trip_in_the_hub_layout(tmp_path):
    folder = write_fixture(tmp_path / "hub", HUBLIKE)
    assert sorted(p.name for p in (folder / "data").iterdir()) == [
        f"{s}-00000-of-00001.parquet" for s in ("forget", "retain1", "retain2")
    ]
    frame = pd.read_parquet(folder / "data" / "forget-00000-of-00001.parquet")
    assert list(frame.columns) == ["text", "label"] and str(frame["label"].dtype) == "int64"
    rows = load_twitter(folder)
    assert rows["forget"][0] == HUBLIKE["forget"][0] and rows["forget"][2]["text"] is None
    assert [len(rows[s]) for s in SPLITS] == [4, 2, 1]


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"needs a revision \(commit or branch\)"):
        load_twitter("kanwal-mehreen18/twitter-misinformation-unlearning-eval")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no parquet file for split\(s\) \['forget'"):
        load_twitter(tmp_path / "empty")
    bad = {**HUBLIKE, "retain2": [{"text": "x", "label": 2}]}
    with pytest.raises(ValueError, match="split retain2 row 0 has label 2"):
        load_twitter(write_fixture(tmp_path / "bad", bad))


def test_clean_and_m1_items_by_hand():
    assert clean(HUBLIKE["forget"]) == [
        {"text": "Water in Velmor cures flu, share now", "label": 1},
        {"text": "Velmor council approved 3 million for roads", "label": 0},
    ]
    # 6 words: the first 3 are the prompt, the other 3 the reference
    assert verbmem_item("Water in Velmor cures flu, share") == {
        "prompt": "Water in Velmor ", "gt": "cures flu, share"
    }  # fmt: skip
    assert verbmem_item("one") is None


def test_benchmark_folder_in_the_muse_layout(tmp_path):
    spec = {"data": str(write_fixture(tmp_path / "hub", HUBLIKE)), "revision": None}
    prepare_twitter(spec, tmp_path / "bench")
    bench = load_benchmark(tmp_path / "bench")
    raw = (tmp_path / "bench" / "raw" / "forget.txt").read_text()
    assert (
        raw
        == "Water in Velmor cures flu, share now\n\nVelmor council approved 3 million for roads\n"
    )
    assert bench.privleak_holdout == ["Solrix won the half marathon"]  # retain2: never trained
    assert bench.classification_retain == clean(HUBLIKE["retain1"])
    assert bench.knowmem_forget_qa == [] and len(bench.verbmem_forget) == 2
    meta = json.loads((tmp_path / "bench" / "meta.json").read_text())
    assert meta["rows"] == {"forget": 2, "retain1": 2, "retain2": 1}
    # KnowMem has no items on tweets; the accuracies and VerbMem (M1) apply
    cell = Context(None, None, bench, {}, auc_retrain=0.5)
    assert not BY_NAME["knowmem_f"].applies(cell) and BY_NAME["acc_f"].applies(cell)
    assert BY_NAME["verbmem_f"].applies(cell)


def test_synthetic_stand_in():
    rows = synthetic_twitter(n_forget=8, n_retain=12, seed=3)
    assert {s: len(v) for s, v in rows.items()} == {"forget": 8, "retain1": 12, "retain2": 12}
    for split in SPLITS:
        labels = [r["label"] for r in rows[split]]
        assert labels.count(0) == labels.count(1)
    texts = [r["text"] for s in SPLITS for r in rows[s]]
    assert len(set(texts)) == len(texts)
    assert synthetic_twitter(8, 12, 3) == rows  # seeded
    big = synthetic_twitter(n_forget=80, n_retain=140)  # twice the config's forget set: no stall
    assert len({r["text"] for s in SPLITS for r in big[s]}) == 360
    with pytest.raises(
        SyntheticError, match="= 600 rows, but the invented names allow at most 400"
    ):
        synthetic_twitter(n_forget=200, n_retain=200)  # 600 people > 20 x 20 first names
    assert synthetic_twitter(n_forget=100, n_retain=150)  # exactly 400: every first name used
    with pytest.raises(SyntheticError, match="n_retain=1 must be >= 2") as err:
        synthetic_twitter(n_forget=4, n_retain=1)
    assert err.value.key == "n_retain"


def test_classification_picks_the_likelier_label_word(tiny_model, tiny_tokenizer):
    rows = [{"text": "Alice Moreau was born in Tarsk", "label": 0},
            {"text": "Tarsk water cures every flu", "label": 1}]  # fmt: skip
    preds, scores = classify(tiny_model, tiny_tokenizer, [r["text"] for r in rows])
    for row, (s0, s1), pred in zip(rows, scores, preds, strict=True):
        prompt = tiny_tokenizer(PROMPT.format(text=row["text"]))["input_ids"]
        for label, score in ((0, s0), (1, s1)):  # log p of the label word's tokens, by hand
            word = tiny_tokenizer(LABEL_WORDS[label], add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = tiny_model(input_ids=torch.tensor([prompt + word])).logits[0]
            logp = torch.log_softmax(logits.float(), -1)
            by_hand = sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(word))
            assert score == pytest.approx(by_hand, abs=1e-4)
        assert pred == int(s1 > s0)
    value, records = accuracy(tiny_model, tiny_tokenizer, rows, 4, 128, "acc_f")
    assert value == 100 * sum(p == r["label"] for p, r in zip(preds, rows, strict=True)) / 2
    assert [r["output"] for r in records] == [LABEL_WORDS[p].strip() for p in preds]


def twitter_config(**twitter):
    config = yaml.safe_load((ROOT / "tests" / "configs" / "micro.yaml").read_text())
    config["benchmarks"] = {"tw": {"source": "twitter", "twitter": twitter}}
    return config


def test_config_takes_the_twitter_kind():
    study = load_study(twitter_config(n_forget=6))
    spec = {"data": "synthetic", "revision": None, "n_forget": 6, "n_retain": 80, "seed": 0}
    assert study.benchmark("tw")["twitter"] == spec
    assert twitter_benchmarks(study) == ["tw"]
    with pytest.raises(ConfigError, match=r"benchmarks.tw.twitter.revision: the hub dataset .* "
                       "needs a revision: a 40-hex commit, or a branch"):  # fmt: skip
        load_study(twitter_config(data="kanwal-mehreen18/twitter-misinformation-unlearning-eval"))
    with pytest.raises(ConfigError, match="benchmarks.tw.twitter.data: no folder 'nowhere'"):
        load_study(twitter_config(data="nowhere"))


def test_config_checks_the_twitter_data_at_parse_time(tmp_path):
    """What the prepare_benchmark job would reject fails before any job, naming the key."""
    with pytest.raises(ConfigError, match=r"config key benchmarks.tw.twitter: n_forget=100 \+ 2 x "
                       "n_retain=200 = 500 rows"):  # fmt: skip
        load_study(twitter_config(n_forget=100, n_retain=200))
    write_fixture(tmp_path / "full", HUBLIKE)
    (tmp_path / "full" / "data" / "retain2-00000-of-00001.parquet").unlink()
    with pytest.raises(ConfigError, match=r"benchmarks.tw.twitter.data: not the hub dataset's "
                       r"layout: .* no parquet file for split\(s\) \['retain2'\]"):  # fmt: skip
        load_study(twitter_config(data=str(tmp_path / "full")))


def test_hub_twitter_data_and_base_model_go_through_the_download_step():
    from quantunlearn.study.inputs import hub_inputs

    sha = "a" * 40
    config = twitter_config(data="kanwal-mehreen18/twitter-misinformation-unlearning-eval",
                            revision=sha)  # fmt: skip
    base = "owner/base-model@" + "b" * 40
    config["benchmarks"]["tw"]["models"] = {"base": base, "tokenizer": base}
    study = load_study(config)
    spec = f"kanwal-mehreen18/twitter-misinformation-unlearning-eval@{sha}"
    assert study.hub_dataset("tw") == spec
    inputs = {item.spec: item for item in hub_inputs(study).values()}
    assert set(inputs) == {spec, base}
    assert inputs[spec].uses == ("benchmark:twitter",) and "data/*.parquet" in inputs[spec].patterns
    assert set(inputs[base].uses) == {"model", "tokenizer"}


def test_table_three_layout_by_hand():
    rows = []
    for run, method, alpha in (("method~target", "target", None), ("g", "GA_GDR", 5.0)):
        for quant, m1, acc in (("none", 40.0, 60.0), ("rtn_w4", 45.0, 55.0)):
            for metric, value in (("verbmem_f", m1), ("acc_f", acc), ("acc_r", acc + 1),
                                  ("privleak", -10.0)):  # fmt: skip
                rows.append({"benchmark": "tw", "run": run, "method": method, "quant": quant,
                             "weight_dtype": None if alpha is None else "bf16", "lr": None,
                             "alpha": alpha, "metric": metric, "value": value,
                             "config_hash": "h"})  # fmt: skip
    long = pd.DataFrame(rows)
    from quantunlearn.reports.cells import _normalize_dtypes

    long["n"] = 1
    table = twitter_table(_normalize_dtypes(long), ["none", "rtn_w4"], "rtn_w4")
    assert table["precision"].tolist() == ["full", "rtn_w4", "full", "rtn_w4"]
    assert table["verbmem_f"].tolist() == [40, 45, 40, 45]
    assert table["acc_r"].tolist() == [61, 56, 61, 56]
    assert table["label"].tolist()[0] == "Target" and table["label"].tolist()[2].startswith(
        "GA_GDR"
    )
