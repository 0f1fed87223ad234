"""Utility metrics (Zhang et al. section 6.2) against hand-computed values, and on real files."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
import yaml

from quantunlearn.data.utility import write_utility_fixture
from quantunlearn.evaluation import utility
from quantunlearn.evaluation.metrics import BY_NAME, Context, metric_names
from quantunlearn.evaluation.utility import (
    continuation_logprobs,
    fluency_entropy,
    ngram_entropy,
    normalize_answer,
    token_f1,
)
from quantunlearn.reports.table1 import join_utility_columns
from quantunlearn.study import load_study
from quantunlearn.study.config import ConfigError


def test_ngram_entropy_by_hand():
    # tokens a b a b: bigrams (a,b) x2, (b,a) x1; trigrams (a,b,a), (b,a,b)
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))  # 0.9183 bits
    assert ngram_entropy("a b a b", 2) == pytest.approx(h2)
    assert ngram_entropy("a b a b", 3) == pytest.approx(1.0)
    # Meng et al.: mean of (2/3 H2, 4/3 H3)
    assert fluency_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert fluency_entropy("a b a b") == pytest.approx(0.97276, abs=1e-5)
    # a repeated word has one n-gram: zero entropy; punctuation marks are tokens
    assert fluency_entropy("the the the the the") == 0.0
    assert ngram_entropy("Hi, you.", 2) == pytest.approx(math.log2(3))  # (Hi ,) (, you) (you .)
    assert ngram_entropy("one", 2) == 0.0


def test_token_f1_and_normalization_by_hand():
    assert normalize_answer("The  Town, 5!") == "town 5"
    # pred {town, 5}, ref {town, 5, city}: P = 1, R = 2/3, F1 = 0.8
    assert token_f1("the Town 5", "town 5 city") == pytest.approx(0.8)
    assert token_f1("Paris", "paris") == 1.0
    assert token_f1("London", "Paris") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("a", "x") == 0.0  # "a" is an article: empty


def test_continuation_logprobs_match_a_direct_computation(tiny_model, tiny_tokenizer):
    pairs = [("Question: Where was Alice born?\nAnswer:", " Tarsk"), ("Bruno keeps", " a parrot")]
    got = continuation_logprobs(tiny_model, tiny_tokenizer, pairs, batch_size=2)
    for (ctx, cont), value in zip(pairs, got, strict=True):
        c = tiny_tokenizer(ctx)["input_ids"]
        k = tiny_tokenizer(cont, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([c + k])
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(input_ids=ids).logits[0].float(), -1)
        direct = sum(logp[len(c) - 1 + j, t].item() for j, t in enumerate(k))
        assert value == pytest.approx(direct, abs=1e-4)
    # batching (padding) changes nothing
    alone = [continuation_logprobs(tiny_model, tiny_tokenizer, [p], batch_size=1)[0] for p in pairs]
    assert got == pytest.approx(alone, abs=1e-4)


def test_multiple_choice_accuracy_on_a_hand_made_case(monkeypatch):
    """4 MMLU questions, answers B, B, B, B; the scores pick B, A, B, D: accuracy 50%."""
    rows = [
        {"question": f"q{i}", "subject": "astronomy", "choices": ["w", "x", "y", "z"], "answer": 1}
        for i in range(4)
    ]
    picks = [1, 0, 1, 3]
    scores = []
    for pick in picks:
        scores += [-1.0 if j == pick else -5.0 for j in range(4)]
    monkeypatch.setattr(utility, "continuation_logprobs", lambda *a, **k: scores)
    value, records = utility.mmlu(None, None, rows, rows[:1], batch_size=4, max_length=64)
    assert value == 50.0
    assert [r["output"] for r in records] == ["B", "A", "B", "D"]
    assert [r["score"] for r in records] == [100.0, 0.0, 100.0, 0.0]
    # TruthfulQA MC1: the true answer is where labels == 1
    tq = [{"question": "q", "mc1_targets": {"choices": ["t", "f1", "f2"], "labels": [1, 0, 0]}}]
    monkeypatch.setattr(utility, "continuation_logprobs", lambda *a, **k: [-2.0, -1.0, -3.0])
    assert utility.truthfulqa_mc1(None, None, tq, 4, 64)[0] == 0.0
    monkeypatch.setattr(utility, "continuation_logprobs", lambda *a, **k: [-0.5, -1.0, -3.0])
    assert utility.truthfulqa_mc1(None, None, tq, 4, 64)[0] == 100.0


def test_mmlu_prompt_layout():
    shot = {"question": "Q1?", "subject": "world_history", "choices": list("abcd"), "answer": 2}
    row = {"question": "Q2?", "subject": "world_history", "choices": list("efgh"), "answer": 0}
    prompt = utility.mmlu_prompt("world_history", [shot], row)
    assert prompt == (
        "The following are multiple choice questions (with answers) about world history.\n\n"
        "Q1?\nA. a\nB. b\nC. c\nD. d\nAnswer: C\n\n"
        "Q2?\nA. e\nB. f\nC. g\nD. h\nAnswer:"
    )


def test_evaluate_utility_on_fixture_files(tiny_model, tiny_tokenizer, tmp_path):
    sources = write_utility_fixture(tmp_path, n=3)
    # the fixture files are in the hub datasets' row schemas
    mmlu = json.loads((tmp_path / "mmlu" / "test.json").read_text())
    assert set(mmlu[0]) == {"question", "subject", "choices", "answer"}
    tq = json.loads((tmp_path / "truthfulqa_mc1" / "validation.json").read_text())
    assert set(tq[0]["mc1_targets"]) == {"choices", "labels"}
    trivia = json.loads((tmp_path / "triviaqa" / "train.json").read_text())
    assert {"value", "aliases", "normalized_aliases"} <= set(trivia[0]["answer"])
    names = metric_names(group="utility")
    evaluation = {
        "utility": names,
        "utility_data": sources,
        "utility_limit": 2,
        "fluency_max_new_tokens": 6,
        "batch_size": 4,
        "max_length": 256,
    }
    context = Context(tiny_model, tiny_tokenizer, None, evaluation, auc_retrain=0.5)
    values, records = {}, []
    for name in names:
        value, n, recs = BY_NAME[name].compute(context)
        values[name] = (value, n)
        records += recs
    for name, (value, n) in values.items():
        assert n == 2 and 0.0 <= value <= (100.0 if name != "fluency" else 100.0 * math.log2(6))
    assert len(records) == 4 * 2
    assert {r["metric"] for r in records} == set(names)
    # the metric value is the mean of the per-item scores
    for name, (value, _) in values.items():
        scores = [r["score"] for r in records if r["metric"] == name]
        assert value == pytest.approx(sum(scores) / len(scores))
    # a utility metric is measured only when evaluation.utility names it
    assert not any(BY_NAME[name].applies({"batch_size": 4}) for name in names)


def test_utility_columns_join_table1_rows():
    long = pd.DataFrame(
        [
            {"benchmark": "b", "run": "r", "quant": q, "metric": m, "value": v}
            for q, m, v in [
                ("none", "mmlu", 40.0),
                ("none", "fluency", 550.0),
                ("none", "knowmem_r", 30.0),
                ("rtn_w4", "mmlu", 35.0),
            ]
        ]
    )
    table = pd.DataFrame({"benchmark": ["b", "b"], "run": ["r", "r"], "quant": ["none", "rtn_w4"]})
    joined = join_utility_columns(table, long)
    assert list(joined.columns) == ["benchmark", "run", "quant", "mmlu", "fluency"]
    assert joined.mmlu.tolist() == [40.0, 35.0]
    assert joined.fluency.iloc[0] == 550.0 and pd.isna(joined.fluency.iloc[1])
    # no utility metric: Table 1 unchanged
    assert join_utility_columns(table, long[long.metric == "knowmem_r"]).equals(table)


MICRO = yaml.safe_load(open(__file__.replace("test_utility.py", "configs/micro.yaml")))


def test_config_names_bad_utility_keys(tmp_path):
    bad = {**MICRO, "evaluation": {**MICRO["evaluation"], "utility": ["mmlu", "hellaswag"]}}
    with pytest.raises(ConfigError, match=r"evaluation.utility\[1\]: 'hellaswag' is not one of"):
        load_study(bad)
    missing = {
        **MICRO,
        "evaluation": {
            **MICRO["evaluation"],
            "utility": ["fluency"],
            "utility_data": {"fluency": str(tmp_path / "nope")},
        },
    }
    with pytest.raises(ConfigError, match="evaluation.utility_data.fluency: no folder"):
        load_study(missing)
    # the default (no utility) leaves every cell's config, and so its hash, as it was
    study = load_study(MICRO)
    cell = study.cell_config("micro", "method~target", "none")
    assert "utility" not in cell["evaluation"]


def test_evaluation_cell_with_utility_gives_table3_columns(tiny_model_dir, tmp_path):
    """evaluate_cell writes the utility rows next to MUSE's; table1 shows them as Gen..Flu."""
    from quantunlearn.data.synthetic import generate_synthetic
    from quantunlearn.evaluation.cell import evaluate_cell
    from quantunlearn.reports.table1 import make_table1

    bench = tmp_path / "bench"
    generate_synthetic(bench, n_people=24, n_bio_variants=1, n_retain_qa_people=2, n_icl=2)
    (tmp_path / "auc.json").write_text(json.dumps({"auc_retrain": 0.5}))
    evaluation = {
        "verbmem_max_new_tokens": 4,
        "knowmem_max_new_tokens": 4,
        "mink_k": 0.4,
        "batch_size": 8,
        "max_length": 64,
        "utility": ["mmlu", "fluency"],
        "utility_data": write_utility_fixture(tmp_path / "utility", n=2),
        "fluency_max_new_tokens": 4,
    }
    cell = {"benchmark": "b", "run": "method~target", "method": "target"}
    cell.update({k: None for k in ["weight_dtype", "lr", "epochs", "alpha", "beta"]})
    cell.update({"npo_klr_form": None, "seed": None})
    metrics_file = tmp_path / "m" / "none.parquet"
    frame = evaluate_cell(
        str(tiny_model_dir),
        "none",
        bench,
        tmp_path / "auc.json",
        metrics_file,
        tmp_path / "r.parquet",
        cell=cell,
        cell_config={"quant": "none", "evaluation": evaluation},
        evaluation=evaluation,
    )
    assert {"mmlu", "fluency"} <= set(frame.metric)
    assert frame.set_index("metric").loc["mmlu", "n"] == 2
    records = pd.read_parquet(tmp_path / "r.parquet")
    assert (records.metric == "fluency").sum() == 2
    make_table1([metrics_file], tmp_path / "tables", ["none"])
    table = pd.read_parquet(tmp_path / "tables" / "table1.parquet")
    assert table.mmlu.iloc[0] == frame.set_index("metric").loc["mmlu", "value"]
    md = (tmp_path / "tables" / "table1.md").read_text()
    assert "| Gen ↑ | Flu ↑ |" in md
