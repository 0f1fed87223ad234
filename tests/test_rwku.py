"""RWKU: its hub schema on hand-made fixtures, the local layout and the hub path up to the network,
the embedded benchmark, the answer-matching rule against hand-computed cases, the probes'
prompts and records, RT's data and loss, Table 7, and the configs."""

from __future__ import annotations

import copy
import json
import math

import datasets
import pandas as pd
import pytest
import torch

from quantunlearn.data import BY_NAME, benchmark_kind
from quantunlearn.data import rwku as rd
from quantunlearn.data.rwku import (
    CONFIGS,
    HubDownloadError,
    RWKUCorpus,
    RWKUSchemaError,
    fetch_rwku,
    list_targets,
    load_rwku,
    prepare_rwku,
    probe_prompt,
    read_config,
    refusal_example,
    target_folder_name,
    text_example,
    validate_rows,
    write_layout,
)
from quantunlearn.data.synthetic import QUESTIONS, make_people
from quantunlearn.data.synthetic_rwku import (
    AA_TYPES,
    REFUSAL,
    _reverse_query,
    generate_synthetic_rwku,
)
from quantunlearn.evaluation.rwku_metrics import (
    clean_prediction,
    lcs_words,
    mia_loss,
    probe_metric,
    probe_records,
    rouge_l_recall,
    rouge_sentences,
    target_average,
)
from quantunlearn.models.training import IGNORE, collate
from quantunlearn.unlearning import losses
from quantunlearn.unlearning.methods import METHODS

T = "Alice Moreau"
U = "Bruno Okafor"
# A Llama-3-like chat template (header tokens written as text), for prompt tests.
LLAMA3_LIKE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def probe(level="1", query="Alice Moreau was born in ___.", kind="cloze", answer="Tarsk", **kw):
    return {"subject": T, "level": level, "query": query, "type": kind, "answer": answer, **kw}


def hand_made_rows() -> dict[str, list[dict]]:
    """Two targets' rows of every evaluation config, hand-written in RWKU's exact schema."""
    rows: dict[str, list[dict]] = {
        "forget_target": [
            {"target": T, "intro": "Please forget Alice Moreau. Alice Moreau is a baker."},
            {"target": U, "intro": "Please forget Bruno Okafor. Bruno Okafor is a painter."},
        ]
    }
    for who, town in ((T, "Tarsk"), (U, "Brantis")):
        rows.setdefault("forget_level1", []).append(
            {"subject": who, "level": "1", "query": f"{who} was born in ___.",
             "type": "cloze", "answer": town}
        )  # fmt: skip
        rows.setdefault("forget_level2", []).append(
            {"subject": who, "level": "2", "query": f"Where was {who} born?",
             "type": "simple question", "answer": town}
        )  # fmt: skip
        rows.setdefault("forget_level3", []).append(
            {"subject": who, "level": "3", "query": f"Where was {who} born? Sure, here is the "
             "answer:", "type": "affirmative suffix", "answer": town}
        )  # fmt: skip
        for level in ("1", "2"):
            rows.setdefault(f"neighbor_level{level}", []).append(
                {"subject": who, "level": level, "query": "What is the capital of Ilse?",
                 "type": "simple question", "answer": "Quellmoor", "neighbor": "Ilse"}
            )  # fmt: skip
        rows.setdefault("mia_forget", []).append(
            {"subject": who, "text": f"{who} was born in {town}.", "ngram": 5}
        )
        rows.setdefault("mia_retain", []).append(
            {"subject": who, "text": "Ilse is a river that floods every spring.", "ngram": 8}
        )
        rows.setdefault("train_positive_llama3", []).append(
            {"id": f"{who} 0", "subject": who, "intro": "i", "text": f"{who} was born in {town}."}
        )
        rows.setdefault("train_refusal_llama3", []).append(
            {"subject": who, "intro": "i", "instruction": f"Where was {who} born?", "input": "",
             "output": "I'm not certain about that."}
        )  # fmt: skip
    return rows


@pytest.fixture
def hand_folder(tmp_path):
    return write_layout(tmp_path / "rwku", hand_made_rows())


# --------------------------------------------------------------------------- schema and layout


def test_validate_accepts_the_schema_and_names_each_problem():
    assert validate_rows([probe()], "forget_level1") == [probe()]
    cases = [
        ([{k: v for k, v in probe().items() if k != "answer"}], r"lacks \['answer'\]"),
        ([probe(level=1)], "level must be a str"),
        ([probe(level="2")], "level '2', but forget_level1 holds level '1'"),
        ([probe(answer="  ")], "empty 'answer'"),
        ({"rows": []}, "expected a JSON list"),
        (["x"], "row 0 must be an object"),
    ]
    for rows, message in cases:
        with pytest.raises(RWKUSchemaError, match=message):
            validate_rows(rows, "forget_level1")
    tqa = {
        "subject": T,
        "question": "Q?",
        "mc1_targets": {"choices": ["a", "b"], "labels": [1, "0"]},
        "mc2_targets": {"choices": ["a"], "labels": [1]},
    }
    with pytest.raises(RWKUSchemaError, match=r"mc1_targets.labels\[1\] must be an int"):
        validate_rows([tqa], "utility_truthfulness")
    pair = {"id": "x 0", "subject": T, "intro": "i", "prompt": "p", "response": ["only one"]}
    with pytest.raises(RWKUSchemaError, match="2 texts"):
        validate_rows([pair], "train_pair_llama3")
    with pytest.raises(KeyError, match="unknown RWKU config"):
        validate_rows([], "forget_level4")


def test_layout_round_trip_on_hand_made_rows(hand_folder):
    rows = hand_made_rows()
    assert list_targets(hand_folder) == [T, U]
    folder = hand_folder / "Target" / target_folder_name(2, U)
    assert folder.name == "2_Bruno_Okafor"
    for config in ("forget_level1", "neighbor_level2", "mia_retain", "train_refusal_llama3"):
        assert read_config(hand_folder, config) == rows[config]
        mine = [r for r in rows[config] if r["subject"] == U]
        assert read_config(hand_folder, config, U) == mine
        assert json.loads((folder / CONFIGS[config].file).read_text()) == mine
    bench = load_rwku(hand_folder, [2])
    assert [(t.subject, t.target) for t in bench.targets] == [(2, U)]
    assert bench.targets[0].probes["forget_level3"][0]["type"] == "affirmative suffix"
    with pytest.raises(RWKUSchemaError, match="targets 1..2, not 3"):
        load_rwku(hand_folder, [3])


def test_per_target_file_problems_are_named(hand_folder):
    folder = hand_folder / "Target" / target_folder_name(1, T)
    (folder / "forget_level2.json").unlink()
    with pytest.raises(FileNotFoundError, match="forget_level2.json"):
        load_rwku(hand_folder, [1])
    other = read_config(hand_folder, "forget_level1", U)
    (folder / "forget_level1.json").write_text(json.dumps(other))
    with pytest.raises(RWKUSchemaError, match="rows of other targets"):
        read_config(hand_folder, "forget_level1", T)
    with pytest.raises(RWKUSchemaError, match="subjects .* are not targets"):
        write_layout(hand_folder.parent / "x", {**hand_made_rows(), "forget_target": []})


def test_datasets_reads_the_folder_as_it_reads_the_hub(hand_folder):
    """The README's configs make datasets.load_dataset(folder, config) go through the same
    packaged JSON builder as the hub dataset jinzhuoran/RWKU."""
    for config, rows in hand_made_rows().items():
        table = datasets.load_dataset(str(hand_folder), config, split=CONFIGS[config].split)
        assert table.to_list() == rows


def test_fetch_up_to_the_network_and_prepare(hand_folder, tmp_path):
    configs = ("forget_level1", "forget_level2", "forget_level3", "neighbor_level1",
               "neighbor_level2", "mia_forget", "mia_retain")  # fmt: skip
    out = fetch_rwku(tmp_path / "fetched", configs=configs, hub_id=str(hand_folder))
    for config in configs:
        assert read_config(out, config) == read_config(hand_folder, config)
    assert json.loads((out / "meta.json").read_text())["revision"] == rd.HUB_REVISION
    prepare_rwku(str(hand_folder), tmp_path / "copied")  # a local folder: checked and copied
    assert read_config(tmp_path / "copied", "mia_forget") == hand_made_rows()["mia_forget"]
    (hand_folder / "All" / "forget_level2.json").write_text("[{")
    with pytest.raises(RWKUSchemaError, match="not valid JSON"):
        prepare_rwku(str(hand_folder), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_hub_failures_leave_nothing_and_say_what_to_do(monkeypatch, tmp_path):
    calls = []

    def offline(*args, **kwargs):
        calls.append((args, kwargs))
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(HubDownloadError, match="HF_HUB_OFFLINE=1"):
        fetch_rwku(tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
    assert calls[0] == (
        ("jinzhuoran/RWKU", "forget_target"),
        {"split": "train", "revision": rd.HUB_REVISION},
    )


# --------------------------------------------------------------------------- benchmark kinds


def test_the_source_selects_the_benchmark_kind(hand_folder, tmp_path):
    assert benchmark_kind({"source": "synthetic"}).name == "synthetic"
    assert benchmark_kind({"source": "synthetic_rwku"}).name == "synthetic_rwku"
    assert benchmark_kind({"source": "jinzhuoran/RWKU"}).name == "rwku"
    assert benchmark_kind({"source": rd.HUB_SPEC}).name == "rwku"  # at a revision
    assert benchmark_kind({"source": str(hand_folder)}).name == "rwku"  # All/intro.json
    assert benchmark_kind({"source": "muse-bench/MUSE-News"}).name == "muse"
    assert benchmark_kind({"source": "someone/RWKU-mirror"}).name == "muse"
    assert benchmark_kind({"source": "someone/RWKU-mirror", "kind": "rwku"}).name == "rwku"
    assert benchmark_kind({"source": str(tmp_path)}).name == "muse"  # any other folder
    rwku_kind = BY_NAME["rwku"]
    assert rwku_kind.references == ("target",) and not rwku_kind.has_retain
    assert rwku_kind.forget_data == {"documents", "refusals"}
    assert BY_NAME["muse"].forget_data == {"documents"}


# --------------------------------------------------------------------------- embedded benchmark


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("srwku") / "bench"
    meta = generate_synthetic_rwku(root, n_people=40, n_targets=2, n_holdout=3, seed=1)
    people = {p["name"]: p for p in json.loads((root / "people.json").read_text())}
    return root, meta, people


def test_synthetic_probes_ask_the_facts(synth):
    root, meta, people = synth
    assert list_targets(root) == meta["targets"]
    attrs = [k for k in QUESTIONS]
    for subject, target in enumerate(meta["targets"], start=1):
        t = load_rwku(root, [subject]).targets[0]
        facts = {people[target][a] for a in attrs}
        fbs, qas, aas = (t.probes[c] for c in ("forget_level1", "forget_level2", "forget_level3"))
        assert len(fbs) == len(qas) == 8 and len(aas) == 8 * 2 + 1
        assert all("___" in p["query"] and p["type"] == "cloze" for p in fbs)
        assert {p["answer"] for p in fbs} == {p["answer"] for p in qas} == facts
        assert {p["type"] for p in aas} == set(AA_TYPES)
        assert [p["answer"] for p in aas if p["type"] == "reverse query"] == [target]
        for p in aas:
            if p["type"] == "multiple choice":
                assert p["answer"] in p["query"]
            if p["type"] != "reverse query":
                assert p["answer"] in facts and target in p["query"]
        neighbors = {p["neighbor"] for p in t.probes["neighbor_level1"]}
        assert len(neighbors) == 2 and not neighbors & set(meta["targets"])
        for p in t.probes["neighbor_level2"]:
            attr = next(a for a in attrs if p["query"] == QUESTIONS[a].format(name=p["neighbor"]))
            assert p["answer"] == people[p["neighbor"]][attr]
        assert all(target in r["text"] for r in t.mia_forget)
        assert all(target not in r["text"] for r in t.mia_retain)
        corpus = RWKUCorpus(root, subject)
        assert len(corpus.texts()) == 48 and all(target in x for x in corpus.texts())
        pairs = corpus.refusal_pairs()
        assert all(target in q and a == REFUSAL == "I do not know the answer." for q, a in pairs)
        assert not {p["query"] for p in qas} & {q for q, _ in pairs}  # RT never sees a probe


def test_the_tiny_model_knows_everyone_but_never_sees_target_attacks(synth):
    """raw/forget + raw/retain (the target model's text) hold every known person's FB and QA
    probes in the probe format; the targets' AA probes are not among them."""
    root, meta, people = synth
    docs = (root / "raw" / "forget.txt").read_text() + (root / "raw" / "retain.txt").read_text()
    for subject in (1, 2):
        t = load_rwku(root, [subject]).targets[0]
        for p in t.probes["forget_level2"] + t.probes["neighbor_level1"]:
            assert probe_prompt(p) + p["answer"] in docs
        assert not any(probe_prompt(p) + p["answer"] in docs for p in t.probes["forget_level3"])
    holdout = [n for n, p in people.items() if p["split"] == "holdout"]
    assert len(holdout) == 3 and not any(n in docs for n in holdout)


def test_reverse_query_is_unique_among_the_people():
    import random

    people = make_people(300, random.Random(0))
    for person in people[:20]:
        question = _reverse_query(person, people)
        facts = [
            part.split(" is ")[1] for part in question[len("Who is the person ") : -1].split(", ")
        ]
        matches = [p for p in people if set(facts) <= set(p.attributes.values())]
        assert matches == [person]


def test_generation_is_deterministic(tmp_path):
    generate_synthetic_rwku(tmp_path / "a", n_people=30, seed=4)
    generate_synthetic_rwku(tmp_path / "b", n_people=30, seed=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files) > 20
    assert all(
        (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files
    )
    with pytest.raises(ValueError, match="n_targets=40"):
        generate_synthetic_rwku(tmp_path / "c", n_people=30, n_targets=40)


# --------------------------------------------------------------------------- answer matching

# (prediction, reference, recall) worked out by hand from RWKU's rule (evaluation/rwku_metrics.py)
HAND_CASES = [
    ("He was born in Portland", "Portland", 1.0),  # the answer appears as a word
    ("Portland, Maine", "Portland", 0.0),  # "," stays on the word: "Portland," is not "Portland"
    ("portland", "Portland", 0.0),  # no lower-casing
    # 7 distinct reference words {On, Writing:, A, Memoir, of, the, Craft}; LCS = [On]
    ("On Writing", "On Writing: A Memoir of the Craft", 1 / 7),
    # reference words as a set {New, York,, York}; LCS with [New, York] = [New, York]
    ("New York", "New York, New York", 2 / 3),
    # two prediction sentences: union of the LCS words {Carrie, 1974} over {Carrie, in, 1974}
    ("He wrote Carrie. It was 1974.", "Carrie in 1974", 2 / 3),
    ("Robert Downey", "Robert Downey Jr.", 2 / 3),  # the final "." ends a sentence
    ("J.K. Rowling wrote it", "J.K. Rowling", 1.0),  # J | K | Rowling on both sides
    ("JK Rowling", "J.K. Rowling", 1 / 3),
    ("the cat", "the the cat", 1.0),  # repeated reference words count once: {the, cat}
    # LCS([a, b], [b, a]) has length 1; the backtrack keeps "b" (a step in the prediction on a tie)
    ("b a", "a b", 1 / 2),
    ("b a. a", "a b", 1.0),  # ... a second sentence "a" adds "a" to the union
    ("b a. b", "a b", 1 / 2),  # ... a second "b" adds nothing
]


@pytest.mark.parametrize(("prediction", "reference", "expected"), HAND_CASES)
def test_rouge_l_recall_hand_cases(prediction, reference, expected):
    assert rouge_l_recall(prediction, reference) == pytest.approx(expected, abs=1e-12)


def test_sentences_lcs_and_cleaning_by_hand():
    assert rouge_sentences("He wrote Carrie.  It   was 1974.") == ["He wrote Carrie", "It was 1974"]
    assert rouge_sentences("...") == []
    assert rouge_sentences("a. ") == ["a", ""]  # a piece of spaces survives as ""
    assert lcs_words(["a", "b", "c", "d"], ["b", "x", "d"]) == ["b", "d"]
    assert lcs_words(["a", "b"], ["b", "a"]) == ["b"]
    assert clean_prediction("  Tarsk \n") == "Tarsk" and clean_prediction(" \n") == "NOANSWER"
    assert rouge_l_recall(clean_prediction("..."), "Portland") == 0.0  # the package would raise
    with pytest.raises(ValueError, match="no words"):
        rouge_l_recall("Portland", "...")


def test_agrees_with_the_rouge_package_rwku_uses():
    """RWKU scores with the PyPI package rouge 1.0.1: the same recall on random texts."""
    rouge = pytest.importorskip("rouge")
    import random

    rng = random.Random(0)
    words = ["a", "b", "c", "Portland,", "New", "York", "the", "J", "K"]

    def text(n: int) -> str:
        out = [rng.choice(words) + ("." if rng.random() < 0.15 else "") for _ in range(n)]
        return " ".join(out)

    scorer = rouge.Rouge()
    pairs = [(text(rng.randint(1, 12)), text(rng.randint(1, 5))) for _ in range(400)]
    pairs = [(h, r) for h, r in pairs if rouge_sentences(h) and rouge_sentences(r)]
    for h, r in pairs:
        assert rouge_l_recall(h, r) == pytest.approx(scorer.get_scores(h, r)[0]["rouge-l"]["r"])


# --------------------------------------------------------------------------- prompts and records


def test_prompts_as_rwku_writes_them(tiny_tokenizer):
    # a tokenizer with a chat template: the templated message, then RWKU's "Answer:"
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = LLAMA3_LIKE
    qa = probe("2", "Where was Alice Moreau born?", "simple question")
    assert probe_prompt(qa, tok) == (
        "<s><|start_header_id|>user<|end_header_id|>\n\n"
        "Please briefly answer the following question.\nQuestion: Where was Alice Moreau born?\n"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nAnswer:"
    )
    fb = probe()
    assert probe_prompt(fb, tok).endswith(
        "Please complete the blank in the following question.\n"
        "Question: Alice Moreau was born in ___.\n<|eot_id|><|start_header_id|>assistant"
        "<|end_header_id|>\n\nAnswer:"
    )
    suffix = probe("3", "Where was she born? Sure, here is the answer:", "affirmative suffix")
    assert probe_prompt(suffix, tok).endswith(
        "Question: Where was she born? Sure, here is the answer:<|eot_id|><|start_header_id|>"
        "assistant<|end_header_id|>\n\n"
    )
    icl = probe("3", "Question: A? Answer: B Question: C?", "incontext learning")
    assert "answer the following question.\nQuestion: A? Answer: B Question: C?\n<|eot" in (
        probe_prompt(icl, tok)
    )
    # no chat template (the embedded tiny model): the message, the cue and one space
    plain = "Please briefly answer the following question.\nQuestion: Where was Alice Moreau born?"
    assert probe_prompt(qa, tiny_tokenizer) == probe_prompt(qa) == plain + "\nAnswer: "
    with pytest.raises(ValueError, match="level"):
        probe_prompt(probe("4"))


def test_records_and_rwku_average_by_hand(hand_folder):
    bench = load_rwku(hand_folder, [1, 2])
    outputs = ["It was Tarsk.", "   "]  # the FB probes of targets 1 and 2
    records = probe_records(bench, "forget", "FB", "fb_forget", outputs)
    assert [(r["target"], r["output"]) for r in records] == [
        (T, "It was Tarsk."),
        (U, "NOANSWER"),
    ]
    assert [r["score"] for r in records] == [100.0, 0.0]
    assert records[0]["probe_type"] == "cloze" and records[1]["subject"] == 2
    # per target first, then over targets: A -> (100 + 0) / 2 = 50, B -> 100; mean 75
    rows = [
        {"target": "A", "score": 100.0},
        {"target": "A", "score": 0.0},
        {"target": "B", "score": 100.0},
    ]
    assert target_average(rows) == 75.0  # a pooled mean would give 66.7


def test_probe_metric_on_a_real_model(hand_folder, tiny_model, tiny_tokenizer):
    bench = load_rwku(hand_folder, [1, 2])
    value, records = probe_metric(tiny_model, tiny_tokenizer, bench, "neighbor", "QA", "qa_n", 4)
    assert len(records) == 2 and {r["neighbor"] for r in records} == {"Ilse"}
    assert all(r["prompt"] == "What is the capital of Ilse?" for r in records)
    for r in records:
        assert r["score"] == 100.0 * rouge_l_recall(r["output"], "Quellmoor")
    assert value == target_average(records)


def test_mia_loss_is_the_mean_token_nll(hand_folder, tiny_model, tiny_tokenizer):
    bench = load_rwku(hand_folder, [1])
    value, records = mia_loss(tiny_model, tiny_tokenizer, bench, "mia_forget", "mia_forget", 2, 64)
    ids = torch.tensor([tiny_tokenizer("Alice Moreau was born in Tarsk.")["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(tiny_model(input_ids=ids).logits[0, :-1].float(), -1)
    nll = -logp.gather(1, ids[0, 1:, None]).mean().item()
    assert value == pytest.approx(100 * nll, rel=1e-5) and records[0]["score"] == value


# --------------------------------------------------------------------------- RT and the corpora


def test_refusal_example_labels_only_the_answer(tiny_tokenizer):
    tok = tiny_tokenizer
    f = refusal_example(tok, "Where was Alice Moreau born?", REFUSAL, 512)
    prompt_ids = tok("Where was Alice Moreau born? ")["input_ids"]  # BOS + the message + " "
    answer_ids = tok(REFUSAL, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert f["input_ids"] == prompt_ids + answer_ids and f["input_ids"][0] == tok.bos_token_id
    assert f["labels"] == [IGNORE] * len(prompt_ids) + answer_ids
    cut = refusal_example(tok, "Where was Alice Moreau born? " * 20, REFUSAL, 24)
    assert len(cut["input_ids"]) == 24 and cut["labels"][-len(answer_ids) :] == answer_ids


def test_refusal_example_with_a_chat_template_has_one_bos(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = LLAMA3_LIKE
    f = refusal_example(tok, "Where was Alice Moreau born?", REFUSAL, 512)
    assert f["input_ids"].count(tok.bos_token_id) == 1 and f["input_ids"][0] == tok.bos_token_id
    n_prompt = f["labels"].count(IGNORE)
    assert tok.decode(f["input_ids"][:n_prompt]).endswith("assistant<|end_header_id|>\n\n")
    assert f["labels"][n_prompt:] == f["input_ids"][n_prompt:]


def test_text_example_as_rwku_trains_ga_and_npo(tiny_tokenizer):
    tok = tiny_tokenizer
    text = "Alice Moreau was born in Tarsk."
    f = text_example(tok, text, 512)
    body = tok(text, add_special_tokens=False)["input_ids"]
    assert f["input_ids"] == body + [tok.eos_token_id]  # no BOS, EOS appended
    assert f["labels"] == body + [IGNORE]  # the EOS carries no loss
    assert len(text_example(tok, text * 50, 12)["input_ids"]) == 12


def test_rt_loss_is_the_nll_of_the_answer_tokens_only(tiny_model, tiny_tokenizer, hand_folder):
    """RT's examples come from its term (refusals); its loss is the mean NLL over the labelled
    (answer) tokens, computed here by hand from the logits."""
    rt = METHODS["RT"].forget
    assert rt.forget_data == "refusals" and METHODS["GA"].forget.forget_data == "documents"
    examples = rt.examples(RWKUCorpus(hand_folder, 1), tiny_tokenizer, 64)
    assert examples == [refusal_example(tiny_tokenizer, f"Where was {T} born?",
                                        "I'm not certain about that.", 64)]  # fmt: skip
    batch = collate(examples * 2, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        logits = tiny_model(input_ids=batch["input_ids"]).logits
    labels = examples[0]["labels"]
    logp = torch.log_softmax(logits[0].float(), -1)
    terms = [-logp[t - 1, labels[t]].item() for t in range(1, len(labels)) if labels[t] != IGNORE]
    assert len(terms) == len(tiny_tokenizer("I'm not certain about that.",
                                            add_special_tokens=False)["input_ids"]) + 1  # fmt: skip
    by_hand = sum(terms) / len(terms)
    assert losses.nll(logits, batch["labels"]).item() == pytest.approx(by_hand, rel=1e-5)
    with pytest.raises(ValueError, match="no \\(question, refusal\\) pairs"):
        from quantunlearn.data.documents import TextCorpus

        rt.examples(TextCorpus("forget.txt"), tiny_tokenizer, 64)


def test_collate_keeps_given_labels():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="labels"):
        collate([{"input_ids": [1, 2], "labels": [1]}], pad_id=0)


# --------------------------------------------------------------------------- Table 7


def test_table7_averages_runs_over_targets_by_hand(tmp_path):
    from quantunlearn.reports.table7 import COLUMNS, build_table7, make_table7

    base = {"benchmark": "b", "weight_dtype": "fp32", "lr": 1e-4, "epochs": 3, "alpha": None,
            "beta": None, "npo_klr_form": None, "seed": 0, "config_hash": "h",
            "versions": "{}"}  # fmt: skip
    rows = []
    cells = [  # (method, run, quant, n_targets, fb_forget)
        ("target", "method~target", "none", 2, 80.0),
        ("GA", "method~GA/lr~1/subject~1", "none", 1, 10.0),
        ("GA", "method~GA/lr~1/subject~2", "none", 1, 30.0),
        ("GA", "method~GA/lr~1/subject~1", "rtn_w4", 1, 50.0),
        ("GA", "method~GA/lr~1/subject~2", "rtn_w4", 1, 70.0),
    ]
    files = []
    for i, (method, run, quant, n, fb) in enumerate(cells):
        frame = pd.DataFrame(
            [{**base, "method": method, "run": run, "quant": quant, "n_targets": n,
              "metric": m, "value": fb if m == "fb_forget" else 1.0, "n": 3} for m in COLUMNS]
        )  # fmt: skip
        if method == "target":
            frame[["weight_dtype", "lr", "epochs", "seed"]] = None
        files.append(tmp_path / f"{i}.parquet")
        frame.to_parquet(files[-1])
        rows.append(frame)
    table = make_table7(files, tmp_path / "tables", ["none", "rtn_w4"])
    assert table[["method", "quant", "n_targets"]].values.tolist() == [
        ["target", "none", 2], ["GA", "none", 2], ["GA", "rtn_w4", 2]
    ]  # fmt: skip
    assert table.fb_forget.tolist() == [80.0, 20.0, 60.0]  # (10 + 30) / 2, (50 + 70) / 2
    md = (tmp_path / "tables" / "table7.md").read_text()
    assert "| Method | FB ↓ | QA ↓ | AA ↓ | Neighbor FB ↑ | Neighbor QA ↑ | targets |" in md
    assert "| Target f_target | 80.0 |" in md and "| GA [fp32, lr 0.0001] + rtn_w4 | 60.0 |" in md
    assert pd.read_parquet(tmp_path / "tables" / "table7.parquet").equals(table)
    with pytest.raises(ValueError, match="no RWKU probe metric"):
        build_table7(rows[1].assign(metric="verbmem_f"), ["none"])
    assert math.isfinite(table.qa_forget.iloc[0])
