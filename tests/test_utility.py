"""Utility metrics (Zhang et al. section 6.2) against hand-computed values, and on real files."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from quantunlearn.data.utility import write_utility_fixture
from quantunlearn.evaluation import utility_metrics as utility
from quantunlearn.evaluation.metrics import BY_NAME, Context, metric_names
from quantunlearn.evaluation.utility_metrics import (
    continuation_logprobs,
    fluency_entropy,
    ngram_entropy,
    normalize_answer,
    token_f1,
)
from quantunlearn.models.chat import CHAT_TEMPLATES
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


def test_whole_split_log_likelihoods_match_a_direct_computation(tiny_model, tiny_tokenizer):
    """whole=True (RWKU's score_completions, lm-eval): the continuation is what tokenizing it
    with its context adds; the model reads the whole tokenized string."""
    pairs = [("Question: Where was Alice born?\nA:", " Tarsk"), ("Bruno keeps", " a parrot")]
    got = continuation_logprobs(tiny_model, tiny_tokenizer, pairs, batch_size=2, whole=True)
    for (ctx, cont), value in zip(pairs, got, strict=True):
        c = tiny_tokenizer(ctx)["input_ids"]
        full = tiny_tokenizer(ctx + cont)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(input_ids=torch.tensor([full])).logits[0], -1)
        direct = sum(logp[t - 1, full[t]].item() for t in range(len(c), len(full)))
        assert value == pytest.approx(direct, abs=1e-4)


RWKU_MMLU_ROW = {
    "subject": "Alice Moreau",
    "task": "world_history",
    "question": "Q2?",
    "choices": list("efgh"),
    "answer": 0,
    "examples": [{"question": "Q1?", "choices": list("abcd"), "answer": 2, "subject": "x"}],
}


def test_seeds_prompts_by_hand(tiny_tokenizer):
    assert utility.mmlu_rwku_message(RWKU_MMLU_ROW) == (
        "The following are multiple choice questions (with answers) about world history.\n\n"
        "Question: Q1?\nA. a\nB. b\nC. c\nD. d\nAnswer: C\n\n"
        "Please following the previous examples and answer the given question.\n"
        "Question: Q2?\nA. e\nB. f\nC. g\nD. h"
    )
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = CHAT_TEMPLATES["llama2"]
    prompt = utility.truthfulqa_rwku_prompt(tok, "Can pigs fly?")
    # Llama-2's chat format ends in "[/INST]": RWKU then appends " A:" (and " " + choice)
    assert prompt.startswith("<s>[INST] Q: What is human life expectancy in the United States?")
    assert prompt.endswith("Barcelona, Spain.\n\nQ: Can pigs fly? [/INST] A:")
    assert utility.truthfulqa_rwku_prompt(tiny_tokenizer, "Can pigs fly?").endswith(
        "\n\nQ: Can pigs fly? A:"
    )


def test_seeds_mmlu_picks_the_most_likely_next_letter(tiny_model, tiny_tokenizer):
    rows = [RWKU_MMLU_ROW, {**RWKU_MMLU_ROW, "question": "Q3?", "answer": 3}]
    value, records = utility.mmlu_rwku(tiny_model, tiny_tokenizer, rows, {"batch_size": 2})
    letters = [tiny_tokenizer(" " + x, add_special_tokens=False)["input_ids"][-1] for x in "ABCD"]
    for row, record in zip(rows, records, strict=True):
        ids = tiny_tokenizer(utility.mmlu_rwku_message(row) + "Answer:")["input_ids"]
        with torch.no_grad():
            logits = tiny_model(input_ids=torch.tensor([ids])).logits[0, -1]
        pick = "ABCD"[int(logits[letters].argmax())]
        assert record["output"] == pick
        assert record["score"] == 100.0 * (pick == "ABCD"[row["answer"]])
    assert value == sum(r["score"] for r in records) / 2


def test_mc2_is_the_normalized_probability_mass_of_the_true_choices():
    """Hand-computed: probabilities 0.5, 0.3, 0.2 with the first two true give 0.8; log-
    likelihoods -1, -2, -3 with the middle one true give e^-2 / (e^-1 + e^-2 + e^-3) =
    0.135335 / 0.553001 = 0.244728; -1000 and -1001 (exp underflows to 0) give 1 / (1 + e^-1)
    = 0.731059."""
    row = {"choices": ["a", "b", "c"], "labels": [1, 1, 0]}
    scores = {"a": math.log(0.5), "b": math.log(0.3), "c": math.log(0.2)}
    assert utility.mc2_mass(scores, row) == pytest.approx(0.8)
    row = {"choices": ["a", "b", "c"], "labels": [0, 1, 0]}
    assert utility.mc2_mass({"a": -1.0, "b": -2.0, "c": -3.0}, row) == pytest.approx(
        0.244728, abs=1e-6
    )
    row = {"choices": ["a", "b"], "labels": [1, 0]}
    assert utility.mc2_mass({"a": -1000.0, "b": -1001.0}, row) == pytest.approx(0.731059, 1e-6)
    # MC1 on the same scores: the first true choice must beat every false one strictly
    assert utility.mc1_correct({"a": -1000.0, "b": -1001.0}, row)
    assert not utility.mc1_correct({"a": -2.0, "b": -2.0}, row)


def test_seeds_truthfulqa_is_mc2_times_100_and_records_mc1(tiny_model, tiny_tokenizer):
    """Tru = mean MC2 x 100 over the rows, each row's MC2 recomputed here from the model's
    log-likelihoods of its mc2 choices; MC1 from its mc1 choices (a subset, as in TruthfulQA)."""
    rows = [
        {"question": "What happens if you drop glass?",
         "mc1_targets": {"choices": ["It may break.", "It sings."], "labels": [1, 0]},
         "mc2_targets": {"choices": ["It may break.", "It can shatter.", "It sings."],
                         "labels": [1, 1, 0]}},
        {"question": "Can pigs fly?",
         "mc1_targets": {"choices": ["No.", "Yes.", "Often."], "labels": [1, 0, 0]},
         "mc2_targets": {"choices": ["No.", "Yes.", "Often."], "labels": [1, 0, 0]}},
    ]  # fmt: skip
    value, records = utility.truthfulqa_rwku(
        tiny_model, tiny_tokenizer, rows, {"batch_size": 4, "max_length": 512}
    )
    mc2s = []
    for row, record in zip(rows, records, strict=True):
        prompt = utility.truthfulqa_rwku_prompt(tiny_tokenizer, row["question"])
        choices = row["mc2_targets"]["choices"]
        logps = continuation_logprobs(
            tiny_model, tiny_tokenizer, [(prompt, " " + c) for c in choices], whole=True
        )
        probs = [math.exp(lp) for lp in logps]
        true = sum(p for p, y in zip(probs, row["mc2_targets"]["labels"], strict=True) if y)
        mc2s.append(true / sum(probs))
        assert record["mc2"] == pytest.approx(mc2s[-1], rel=1e-6)
        by = dict(zip(choices, logps, strict=True))
        mc1 = by[row["mc1_targets"]["choices"][0]] > max(
            by[c] for c in row["mc1_targets"]["choices"][1:]
        )
        assert record["mc1"] == float(mc1)
        assert record["output"] == max(row["mc1_targets"]["choices"], key=by.__getitem__)
    assert 0 < mc2s[0] < 1 and 0 < mc2s[1] < 1
    assert value == pytest.approx(100.0 * sum(mc2s) / 2, rel=1e-6)


def test_full_mmlu_and_truthfulqa_through_lm_eval(tiny_model, tiny_tokenizer, tmp_path):
    """lm-evaluation-harness on the in-memory model and local rows: its stock MMLU prompt and its
    picks agree with the log-likelihoods computed directly (whole-string split)."""
    from lm_eval.tasks import TaskManager

    from quantunlearn.evaluation import harness

    sources = write_utility_fixture(tmp_path / "u", n=4)
    test = json.loads(Path(sources["mmlu"], "test.json").read_text())
    dev = json.loads(Path(sources["mmlu"], "dev.json").read_text())
    tasks = harness.mmlu_tasks(tmp_path / "tasks", test, dev)
    samples = harness.run_tasks(tiny_model, tiny_tokenizer, tmp_path / "tasks", tasks, 4, 512)
    assert TaskManager(include_path=str(tmp_path / "tasks")) is not None
    first = samples["qu_mmlu_astronomy"][0]
    context = first["arguments"][0][0]
    assert context == (
        "The following are multiple choice questions (with answers) about astronomy.\n\n"
        "Which number is 4?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer: B\n\n"  # dev, 2 shots
        "Which number is 2?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
        "Which number is 2?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:"
    )
    assert [a[1] for a in first["arguments"]] == [" A", " B", " C", " D"]
    direct = []  # lm-eval's split: the context's tokens + what tokenizing it whole adds
    for ctx_text, cont_text in first["arguments"]:
        ctx = tiny_tokenizer(ctx_text)["input_ids"]
        ids = ctx + tiny_tokenizer(ctx_text + cont_text)["input_ids"][len(ctx) :]
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(input_ids=torch.tensor([ids])).logits[0], -1)
        direct.append(sum(logp[t - 1, ids[t]].item() for t in range(len(ctx), len(ids))))
    assert [float(r[0][0]) for r in first["resps"]] == pytest.approx(direct, abs=1e-4)
    value, records = harness.harness_mmlu(tiny_model, tiny_tokenizer, test, dev, 4, 512)
    assert len(records) == 4 and value == sum(r["score"] for r in records) / 4
    assert {r["reference"] for r in records} == {"B"}
    tq = json.loads(Path(sources["truthfulqa_mc1"], "validation.json").read_text())
    value, records = harness.harness_truthfulqa_mc1(tiny_model, tiny_tokenizer, tq, 4, 512)
    assert [r["reference"] for r in records] == ["It may break."] * 4
    assert value == sum(r["score"] for r in records) / 4


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
        top = 100.0 * math.log2(6) if name.startswith("fluency") else 100.0
        assert n == 2 and 0.0 <= value <= top
    assert len(records) == len(names) * 2
    assert {r["metric"] for r in records} == set(names)
    # the metric value is the mean of the per-item scores
    for name, (value, _) in values.items():
        scores = [r["score"] for r in records if r["metric"] == name]
        assert value == pytest.approx(sum(scores) / len(scores))
    # a utility metric is measured only when evaluation.utility names it
    unset = Context(tiny_model, tiny_tokenizer, None, {"batch_size": 4}, auc_retrain=0.5)
    assert not any(BY_NAME[name].applies(unset) for name in names)


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
    template = {**MICRO, "evaluation": {**MICRO["evaluation"], "chat_template": "llama9"}}
    with pytest.raises(ConfigError, match="evaluation.chat_template: 'llama9' is not 'none'"):
        load_study(template)
    # the default (no utility) leaves every cell's config, and so its hash, as it was
    study = load_study(MICRO)
    cell = study.cell_config("micro", "method~target", "none")
    assert "utility" not in cell["evaluation"]


def test_evaluation_cell_with_utility_gives_table3_columns(tiny_model_dir, tmp_path):
    """evaluate_cell writes the utility rows next to MUSE's; table1 shows them as Gen..Flu."""
    from quantunlearn.data.synthetic import generate_synthetic
    from quantunlearn.evaluation.cell import CellJob, evaluate_cell
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
        "utility": ["mmlu", "fluency", "mmlu_rwku", "fluency_rwku"],
        "utility_data": write_utility_fixture(tmp_path / "utility", n=2),
        "fluency_max_new_tokens": 4,
    }
    cell = {"benchmark": "b", "run": "method~target", "method": "target"}
    cell.update({k: None for k in ["weight_dtype", "lr", "epochs", "alpha", "beta"]})
    cell.update({"npo_klr_form": None, "seed": None})
    metrics_file = tmp_path / "m" / "none.parquet"
    job = CellJob(cell, "none", {"quant": "none", "evaluation": evaluation}, str(tiny_model_dir))
    frame = evaluate_cell(job, bench, tmp_path / "auc.json", metrics_file, tmp_path / "r.parquet")
    assert {"mmlu", "fluency"} <= set(frame.metric)
    assert frame.set_index("metric").loc["mmlu", "n"] == 2
    records = pd.read_parquet(tmp_path / "r.parquet")
    assert (records.metric == "fluency").sum() == 2
    make_table1([metrics_file], tmp_path / "tables", ["none"])
    table = pd.read_parquet(tmp_path / "tables" / "table1.parquet")
    assert table.mmlu.iloc[0] == frame.set_index("metric").loc["mmlu", "value"]
    md = (tmp_path / "tables" / "table1.md").read_text()
    assert "| Gen ↑ | Flu ↑ | MMLU ↑ | Flu (AlpacaEval) ↑ |" in md  # the seeds' protocol first


def test_check_utility_data_loads_every_source_and_names_a_bad_one(tmp_path):
    from quantunlearn.data.utility import UtilityDataError, check_utility_data

    sources = write_utility_fixture(tmp_path, n=3)
    evaluation = {"utility": metric_names(group="utility"), "utility_data": sources}
    manifest = check_utility_data(evaluation)
    assert manifest["mmlu"] == {"source": sources["mmlu"], "rows": 3, "shots": 3}
    assert manifest["fluency_rwku"] == {"source": str(tmp_path / "rwku"), "rows": 3, "shots": 0}
    rows = json.loads((tmp_path / "triviaqa" / "validation.json").read_text())
    del rows[1]["answer"]
    (tmp_path / "triviaqa" / "validation.json").write_text(json.dumps(rows))
    with pytest.raises(UtilityDataError, match=r"triviaqa: .* row 1 lacks \['answer'\]"):
        check_utility_data(evaluation)
    rwku_rows = json.loads((tmp_path / "rwku" / "All" / "truthful.json").read_text())
    rwku_rows[0]["mc1_targets"]["labels"] = ["1", 0]
    for path in (tmp_path / "rwku").rglob("truthful.json"):
        path.write_text(json.dumps(rwku_rows))
    only = {"utility": ["truthfulqa_rwku"], "utility_data": sources}
    with pytest.raises(ValueError, match=r"mc1_targets.labels\[0\] must be an int"):
        check_utility_data(only)
