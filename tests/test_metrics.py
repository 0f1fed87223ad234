"""MUSE metrics against hand-computed values and first principles, on a real (random) Llama."""

from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import pytest
import torch

from quantunlearn.evaluation.generation import _decode_until_eos, cut_at_stop, greedy_generate
from quantunlearn.evaluation.muse_metrics import (
    KNOWMEM_STOP,
    knowmem,
    knowmem_prompt,
    min_k_scores,
    privleak,
    privleak_auc,
    roc_auc,
    rouge_l_f1,
    truncate_tokens,
    verbmem,
)

PROMPTS = [
    "Alice",
    "Question: Where was Alice Moreau born?\nAnswer:",
    "The river Ilse floods every spring;",
    "Bruno",
    "Chen Valdez teaches chemistry at the Harrow Institute since",
]
TEXTS = [
    "Alice Moreau was born in Tarsk.",
    "Bruno Okafor keeps a parrot named Sol and paints on Sundays.",
    "The river",
    "Question: What pet does Bruno Okafor keep?\nAnswer: a parrot",
    "Chen Valdez teaches chemistry at the Harrow Institute since 1998, and so on.",
]


# ----------------------------------------------------------------------------------------- ROUGE
def test_rouge_l_hand_computed_lcs():
    # prediction 6 words, reference 5 words, LCS "the cat on the mat" = 5:
    # P = 5/6, R = 5/5, F = 2PR/(P+R) = (10/6)/(11/6) = 10/11.
    assert rouge_l_f1("the cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)
    # LCS is a subsequence, not a substring: "a c e" in "a b c d e" -> LCS 3, P=1, R=3/5,
    # F = 2 * 0.6 / 1.6 = 0.75.
    assert rouge_l_f1("a c e", "a b c d e") == pytest.approx(0.75)
    # order matters: reversed words share an LCS of 1 out of 3 -> P = R = F = 1/3.
    assert rouge_l_f1("x y z", "z y x") == pytest.approx(1 / 3)


def test_rouge_l_identical_disjoint_and_tokenization():
    assert rouge_l_f1("Tarsk in 1931", "Tarsk in 1931") == 1.0
    assert rouge_l_f1("a parrot", "three dams") == 0.0
    assert rouge_l_f1("", "three dams") == 0.0
    # rouge_score lowercases and turns every non-[a-z0-9] character into a space:
    assert rouge_l_f1("Hello, World!", "hello world") == 1.0
    assert rouge_l_f1("£55,000", "55 000") == 1.0
    assert rouge_l_f1("Zürich", "Zurich") == 0.0  # "z rich" vs "zurich"


# -------------------------------------------------------------------------------------- ROC-AUC
def test_roc_auc_extremes_and_ties():
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert roc_auc([0.3] * 5, [0, 1, 0, 1, 1]) == 0.5


def test_roc_auc_hand_computed_with_ties():
    # negatives {1, 2, 3}, positives {2, 3}; each (pos, neg) pair scores 1 if pos > neg,
    # 1/2 on a tie: pos 2 -> 1 + 1/2 + 0 = 1.5, pos 3 -> 1 + 1 + 1/2 = 2.5; 4 of 6 pairs = 2/3.
    assert roc_auc([1, 2, 3, 2, 3], [0, 0, 0, 1, 1]) == pytest.approx(2 / 3)
    # negatives {0.1, 0.4}, positives {0.4, 0.8}: 1/2 + 1 + 1 + 1 = 3.5 of 4 pairs.
    assert roc_auc([0.4, 0.1, 0.8, 0.4], [1, 0, 1, 0]) == pytest.approx(0.875)


def test_roc_auc_equals_pairwise_definition():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=40).astype(float)  # many ties
    labels = rng.integers(0, 2, size=40)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
    assert roc_auc(scores, labels) == pytest.approx(np.mean(pairs), abs=1e-12)


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([0.1, 0.2], [1, 1], "both classes"),
        ([0.1, 0.2], [0, 2], "0 or 1"),
        ([0.1, 0.2, 0.3], [0, 1], "equal length"),
        ([np.nan, 0.2], [0, 1], "NaN"),
    ],
)
def test_roc_auc_rejects_bad_input(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        roc_auc(scores, labels)


def test_privleak_arithmetic():
    assert privleak(0.0, 0.5) == -100
    assert privleak(0.5, 0.5) == 0
    assert privleak(0.75, 0.5) == pytest.approx(50)
    with pytest.raises(ValueError, match="auc_retrain"):
        privleak(0.5, 0.0)


# ---------------------------------------------------------------------------------------- Min-K
def test_min_k_all_tokens_is_minus_transformers_loss(tiny_model, tiny_tokenizer):
    scores = min_k_scores(tiny_model, tiny_tokenizer, TEXTS, k=1.0, batch_size=2)
    for text, score in zip(TEXTS, scores, strict=True):
        ids = tiny_tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            loss = tiny_model(input_ids=ids, labels=ids).loss.item()
        assert score == pytest.approx(-loss, abs=1e-5)


def test_min_k_lowest_fraction_by_hand(tiny_model, tiny_tokenizer):
    text = TEXTS[1]
    ids = tiny_tokenizer(text)["input_ids"]
    with torch.no_grad():
        logits = tiny_model(input_ids=torch.tensor([ids])).logits[0]
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    # log p(x_i | x_<i) for i = 1..n-1 (BOS at position 0 is never scored)
    token_lp = sorted(log_probs[i - 1, ids[i]].item() for i in range(1, len(ids)))
    n = len(token_lp)
    assert n == len(ids) - 1 > 10
    k = 0.2
    expected = np.mean(token_lp[: int(n * k)])
    got = min_k_scores(tiny_model, tiny_tokenizer, [text], k=k)
    assert got[0] == pytest.approx(expected, abs=1e-5)
    # a k small enough that int(n k) = 0 still takes one token: the minimum
    assert min_k_scores(tiny_model, tiny_tokenizer, [text], k=0.01)[0] == pytest.approx(
        token_lp[0], abs=1e-5
    )
    # truncation to max_length keeps the first max_length tokens (7 tokens -> 6 log-probs)
    first = sorted(log_probs[i - 1, ids[i]].item() for i in range(1, 7))
    got = min_k_scores(tiny_model, tiny_tokenizer, [text], k=0.5, max_length=7)
    assert got[0] == pytest.approx(np.mean(first[:3]), abs=1e-5)


def test_min_k_batched_equals_unbatched(tiny_model, tiny_tokenizer):
    lengths = {len(tiny_tokenizer(t)["input_ids"]) for t in TEXTS}
    assert len(lengths) == len(TEXTS)  # really different lengths, so padding is exercised
    batched = min_k_scores(tiny_model, tiny_tokenizer, TEXTS, batch_size=3)
    single = np.array([min_k_scores(tiny_model, tiny_tokenizer, [t])[0] for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)
    assert np.all(batched < 0)


def test_min_k_rejects_bad_input(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="k="):
        min_k_scores(tiny_model, tiny_tokenizer, TEXTS, k=0.0)
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        min_k_scores(tiny_model, tiny_tokenizer, ["Alice", ""])


def test_privleak_auc_label_convention(tiny_model, tiny_tokenizer):
    scores = min_k_scores(tiny_model, tiny_tokenizer, TEXTS)
    ranked = [TEXTS[i] for i in np.argsort(scores)]
    low, high = ranked[:2], ranked[-2:]
    # forget = label 0: a forget set the model finds likelier than the holdout gives AUC 0
    assert privleak_auc(tiny_model, tiny_tokenizer, high, low) == 0.0
    assert privleak_auc(tiny_model, tiny_tokenizer, low, high) == 1.0
    # identical sets cannot be told apart: every cross pair is a tie or cancels out
    assert privleak_auc(tiny_model, tiny_tokenizer, TEXTS, TEXTS) == 0.5


# ------------------------------------------------------------------------------------ generation
def _argmax_loop(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy decoding from first principles: full forward pass per step, no cache, no padding."""
    ids = tokenizer(prompt)["input_ids"]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids + new])).logits[0, -1]
            new.append(int(logits.argmax()))
            if new[-1] == tokenizer.eos_token_id:
                break
    return _decode_until_eos(tokenizer, new)


def test_greedy_generate_matches_argmax_loop(tiny_model, tiny_tokenizer):
    outputs = greedy_generate(tiny_model, tiny_tokenizer, PROMPTS[:3], 8, batch_size=3)
    expected = [_argmax_loop(tiny_model, tiny_tokenizer, p, 8) for p in PROMPTS[:3]]
    assert outputs == expected
    assert all(outputs)  # the random model does produce text, so the comparison means something


def test_greedy_generate_batched_equals_single(tiny_model, tiny_tokenizer):
    batched = greedy_generate(tiny_model, tiny_tokenizer, PROMPTS, 16, batch_size=4)
    single = [
        greedy_generate(tiny_model, tiny_tokenizer, [p], 16, batch_size=1)[0] for p in PROMPTS
    ]
    assert batched == single
    assert len(set(batched)) > 1  # outputs are in input order, not all alike
    assert tiny_tokenizer.padding_side == "left"


def test_greedy_generate_ignores_sampling_defaults(tiny_model, tiny_tokenizer):
    model = copy.deepcopy(tiny_model)
    config = model.generation_config
    config.do_sample, config.temperature, config.top_p = True, 0.6, 0.9  # Llama-2's defaults
    config.repetition_penalty, config.num_beams = 1.5, 1
    expected = greedy_generate(tiny_model, tiny_tokenizer, PROMPTS[:2], 12)
    assert greedy_generate(model, tiny_tokenizer, PROMPTS[:2], 12) == expected


def test_greedy_generate_stops_at_eos(tiny_model, tiny_tokenizer):
    model = copy.deepcopy(tiny_model)
    hidden, vocab = model.lm_head.in_features, model.lm_head.out_features
    model.lm_head = torch.nn.Linear(hidden, vocab, bias=True)
    torch.nn.init.zeros_(model.lm_head.weight)
    torch.nn.init.zeros_(model.lm_head.bias)
    with torch.no_grad():
        model.lm_head.bias[tiny_tokenizer.eos_token_id] = 1.0  # always predicts EOS
    assert greedy_generate(model, tiny_tokenizer, PROMPTS[:2], 8) == ["", ""]
    eos, a, b = (
        tiny_tokenizer.eos_token_id,
        *tiny_tokenizer("ab", add_special_tokens=False)["input_ids"][:2],
    )
    assert _decode_until_eos(tiny_tokenizer, [a, eos, b]) == tiny_tokenizer.decode([a])


def test_cut_at_stop():
    assert cut_at_stop("Tarsk\n\nQuestion: x", KNOWMEM_STOP) == "Tarsk"
    assert cut_at_stop("Tarsk\nQuestion", KNOWMEM_STOP) == "Tarsk"
    assert cut_at_stop("a parrot Question: b", KNOWMEM_STOP) == "a parrot "
    # the earliest occurrence wins, whatever the order of the stop strings
    assert cut_at_stop("ab Question: c\n\nd", KNOWMEM_STOP) == "ab "
    assert cut_at_stop("no stop here", KNOWMEM_STOP) == "no stop here"
    assert cut_at_stop("\n\nlead", KNOWMEM_STOP) == ""
    with pytest.raises(ValueError, match="empty"):
        cut_at_stop("x", ["", "y"])


def test_greedy_generate_stop_strings(tiny_model, tiny_tokenizer):
    full = greedy_generate(tiny_model, tiny_tokenizer, PROMPTS[:3], 16)
    stop = full[0][3]  # a character the first output really contains
    cut = greedy_generate(tiny_model, tiny_tokenizer, PROMPTS[:3], 16, stop_strings=[stop])
    assert cut[0] == full[0][: full[0].index(stop)]
    assert cut == [text.split(stop)[0] for text in full]


# ---------------------------------------------------------------------------- VerbMem, KnowMem
def test_knowmem_prompt_exact():
    icl = [{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"}]
    expected = "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: A2\n\nQuestion: Q3?\nAnswer: "
    assert knowmem_prompt(icl, "Q3?") == expected
    assert knowmem_prompt([], "Q3?") == "Question: Q3?\nAnswer: "
    with pytest.raises(ValueError, match="answer"):
        knowmem_prompt([{"question": "Q1?"}], "Q3?")


def test_knowmem_scores_and_records(tiny_model, tiny_tokenizer):
    icl = [{"question": "Where was Alice Moreau born?", "answer": "Tarsk"}]
    qa = [
        {"question": "What pet does Bruno Okafor keep?", "answer": "a parrot"},
        {"question": "Where does Chen Valdez teach?", "answer": "the Harrow Institute"},
    ]
    score, records = knowmem(tiny_model, tiny_tokenizer, qa, icl, metric="knowmem_r")
    assert 0 <= score <= 100
    assert [r["index"] for r in records] == [0, 1]
    for record, item in zip(records, qa, strict=True):
        assert set(record) == {"metric", "index", "prompt", "reference", "output", "score"}
        assert record["metric"] == "knowmem_r"
        assert record["prompt"] == item["question"]
        assert record["reference"] == item["answer"]
        assert record["output"] == record["output"].strip()
        assert not any(stop in record["output"] for stop in KNOWMEM_STOP)
        assert record["score"] == pytest.approx(rouge_l_f1(record["output"], item["answer"]) * 100)
    assert score == pytest.approx(np.mean([r["score"] for r in records]))


def test_verbmem_cuts_ground_truth(tiny_model, tiny_tokenizer):
    gt = " Tarsk in 1931 and works as a baker in the old town by the river."
    items = [{"prompt": "Alice Moreau was born in", "gt": gt}, {"prompt": "Bruno", "gt": " Okafor"}]
    score, records = verbmem(tiny_model, tiny_tokenizer, items, max_new_tokens=5)
    assert 0 <= score <= 100 and len(records) == 2
    cut = records[0]["reference"]
    ids = tiny_tokenizer(gt, add_special_tokens=False)["input_ids"]
    assert len(ids) > 5
    assert cut == tiny_tokenizer.decode(ids[:5]) and gt.startswith(cut) and cut != gt
    assert records[1]["reference"] == " Okafor"  # shorter than the budget: unchanged
    assert records[0]["metric"] == "verbmem_f" and records[0]["prompt"] == items[0]["prompt"]
    # the output is the 5-token greedy continuation (re-tokenizing decoded random tokens need
    # not give back 5 tokens, so compare with the generation itself)
    assert (
        records[0]["output"]
        == greedy_generate(tiny_model, tiny_tokenizer, [items[0]["prompt"]], 5)[0]
    )
    with pytest.raises(ValueError, match="gt"):
        verbmem(tiny_model, tiny_tokenizer, [{"prompt": "x"}])


# ------------------------------------------------------------------------------ real MUSE files
@pytest.mark.muse
def test_real_knowmem_prompt(shared_muse):
    icl = json.loads((shared_muse / "news/knowmem/forget_qa_icl.json").read_text())
    qa = json.loads((shared_muse / "news/knowmem/forget_qa.json").read_text())
    prompt = knowmem_prompt(icl, qa[0]["question"])
    assert len(icl) == 10
    assert prompt.count("Question:") == 11 and prompt.count("\nAnswer: ") == 11
    assert prompt.endswith(f"Question: {qa[0]['question']}\nAnswer: ")
    assert all(f"Answer: {ex['answer']}\n\n" in prompt for ex in icl)


@pytest.mark.muse
def test_real_verbmem_items_and_cut(shared_muse, tiny_tokenizer):
    items = json.loads((shared_muse / "news/verbmem/forget.json").read_text())
    assert len(items) == 100 and all(set(item) == {"prompt", "gt"} for item in items)
    for item in items[:3]:
        cut = truncate_tokens(tiny_tokenizer, item["gt"], 128)
        ids = tiny_tokenizer(cut, add_special_tokens=False)["input_ids"]
        assert (
            len(ids) <= 128 < len(tiny_tokenizer(item["gt"], add_special_tokens=False)["input_ids"])
        )
        assert item["gt"].startswith(cut)


@pytest.mark.muse
def test_real_privleak_texts_score(shared_muse, tiny_model, tiny_tokenizer):
    forget = json.loads((shared_muse / "news/privleak/forget.json").read_text())[:2]
    holdout = json.loads((shared_muse / "news/privleak/holdout.json").read_text())[:2]
    scores = min_k_scores(tiny_model, tiny_tokenizer, forget + holdout, max_length=256)
    assert scores.shape == (4,) and np.isfinite(scores).all() and (scores < 0).all()
    auc = privleak_auc(tiny_model, tiny_tokenizer, forget, holdout, max_length=256)
    assert auc in {0.0, 0.25, 0.5, 0.75, 1.0}  # 2 x 2 pairs of distinct real-valued scores
