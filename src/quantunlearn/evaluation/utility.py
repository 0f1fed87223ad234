"""General utility beyond KnowMem on retain: Zhang et al. section 6.2 (Table 3: Gen, Tru, Fac,
Flu).

* ``mmlu`` (Gen): MMLU, 5-shot accuracy; each answer letter scored by its log-likelihood after the
  few-shot prompt (the lm-evaluation-harness `mmlu` prompt: the subject's first 5 dev questions).
* ``truthfulqa_mc1`` (Tru): TruthfulQA MC1, the 6-shot QA prompt of the TruthfulQA paper (as in
  lm-evaluation-harness), accuracy of the highest-likelihood answer.
* ``triviaqa`` (Fac): TriviaQA (rc.nocontext), 6-shot, greedy answer, SQuAD token F1 against
  the best alias.
* ``fluency`` (Flu): greedy answers to the AlpacaEval instructions, scored by the weighted mean
  of their bi- and tri-gram entropies (Meng et al. 2022, weights 2/3 and 4/3), x 100 as
  Zhang et al. Table 3 reports it (values around 500-600).

All four are reported x 100. The data come from the hub in real runs (``UTILITY_HUB``) or from
a local folder holding one JSON list per split in the same row schema (what
``write_utility_fixture`` writes for the tests). Our own code rather than lm-evaluation-harness:
its tasks read only from the hub (no local files for tests without rewriting its task YAMLs),
and the model here is the one quantized in memory by the evaluation job.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

import torch

from quantunlearn.evaluation.generation import greedy_generate

LETTERS = "ABCD"
MMLU_SHOTS, TRIVIAQA_SHOTS = 5, 6
# TruthfulQA's fixed 6-shot "QA prompt" (Lin et al. 2022), as lm-evaluation-harness uses it
TRUTHFULQA_PROMPT = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)
FLUENCY_PROMPT = "Instruction: {instruction}\nResponse:"


def _require(rows: list[dict], keys: Sequence[str], where: str) -> None:
    for i, row in enumerate(rows):
        missing = [k for k in keys if k not in row]
        if missing:
            raise ValueError(f"{where}: row {i} lacks {missing} (has {sorted(row)})")


# ----------------------------------------------------------------------------------------------
# Scoring primitives
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def continuation_logprobs(
    model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 16, max_length=2048
) -> list[float]:
    """Sum of log p(continuation tokens | context) for each (context, continuation).

    Context and continuation are tokenized apart (the context with BOS, the continuation without
    special tokens) and concatenated, as lm-evaluation-harness does; sequences longer than
    ``max_length`` lose tokens on the left.
    """
    seqs, n_cont = [], []
    for context, continuation in pairs:
        ctx = tokenizer(context)["input_ids"]
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not cont:
            raise ValueError(f"empty continuation after {context[-40:]!r}")
        seqs.append((ctx + cont)[-max_length:])
        n_cont.append(len(cont))
    device = model.device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = [0.0] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(seqs[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):  # right padding: positions stay 0..n-1
            ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
            mask[row, : len(seqs[i])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits, dim=-1).cpu()
        for row, i in enumerate(batch):
            n, k = len(seqs[i]), n_cont[i]
            targets = torch.tensor(seqs[i][n - k :])
            # the token at position t is predicted by the logits at position t - 1
            out[i] = logp[row, n - k - 1 : n - 1].gather(1, targets[:, None]).sum().item()
    return out


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 of the normalized strings, in [0, 1]."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


_WORDS = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str, n: int) -> float:
    """Entropy in bits of the frequency distribution of the word n-grams of ``text``."""
    tokens = _WORDS.findall(text)
    grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    total = sum(grams.values())
    return -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0


def fluency_entropy(text: str) -> float:
    """Meng et al. (2022)'s generation entropy: mean of (2/3 H2, 4/3 H3), in bits.

    Their code tokenizes with nltk.word_tokenize (punkt data: a download); here words and
    punctuation marks are split by a regex, which agrees on plain English text.
    """
    return (2 / 3 * ngram_entropy(text, 2) + 4 / 3 * ngram_entropy(text, 3)) / 2


# ----------------------------------------------------------------------------------------------
# The four benchmarks: (score x 100, per-item records)
# ----------------------------------------------------------------------------------------------


def mmlu_prompt(subject: str, shots: list[dict], row: dict) -> str:
    def block(r: dict, answer: str | None) -> str:
        lines = [r["question"].strip()]
        lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(r["choices"])]
        return "\n".join(lines) + "\nAnswer:" + (f" {answer}\n\n" if answer else "")

    head = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"  # noqa: E501
    return head + "".join(block(s, LETTERS[s["answer"]]) for s in shots) + block(row, None)


def mmlu(model, tok, test: list[dict], dev: list[dict], batch_size: int, max_length: int):
    _require(test + dev, ("question", "subject", "choices", "answer"), "mmlu")
    by_subject: dict[str, list[dict]] = {}
    for row in dev:
        by_subject.setdefault(row["subject"], []).append(row)
    pairs, records = [], []
    for row in test:
        prompt = mmlu_prompt(row["subject"], by_subject.get(row["subject"], [])[:MMLU_SHOTS], row)
        pairs += [(prompt, f" {LETTERS[i]}") for i in range(len(row["choices"]))]
    scores = continuation_logprobs(model, tok, pairs, batch_size, max_length)
    at, correct = 0, 0
    for i, row in enumerate(test):
        k = len(row["choices"])
        pick = max(range(k), key=lambda j: scores[at + j])
        at += k
        correct += pick == row["answer"]
        records.append(_record("mmlu", i, row["question"], LETTERS[row["answer"]], LETTERS[pick]))
        records[-1]["score"] = 100.0 * (pick == row["answer"])
    return 100.0 * correct / len(test), records


def truthfulqa_mc1(model, tok, rows: list[dict], batch_size: int, max_length: int):
    _require(rows, ("question", "mc1_targets"), "truthfulqa_mc1")
    pairs = []
    for row in rows:
        prompt = f"{TRUTHFULQA_PROMPT}\n\nQ: {row['question']}\nA:"
        pairs += [(prompt, f" {c}") for c in row["mc1_targets"]["choices"]]
    scores = continuation_logprobs(model, tok, pairs, batch_size, max_length)
    at, correct, records = 0, 0, []
    for i, row in enumerate(rows):
        choices, labels = row["mc1_targets"]["choices"], row["mc1_targets"]["labels"]
        pick = max(range(len(choices)), key=lambda j: scores[at + j])
        at += len(choices)
        truth = labels.index(1)
        correct += pick == truth
        records.append(_record("truthfulqa_mc1", i, row["question"], choices[truth], choices[pick]))
        records[-1]["score"] = 100.0 * (pick == truth)
    return 100.0 * correct / len(rows), records


def triviaqa_prompt(shots: list[dict], question: str) -> str:
    done = "".join(f"Question: {s['question']}\nAnswer: {s['answer']['value']}\n\n" for s in shots)
    return done + f"Question: {question}\nAnswer:"


def triviaqa(
    model, tok, rows, train, batch_size: int, max_new_tokens: int = 32, *, batch_invariant=True
):
    _require(rows + train, ("question", "answer"), "triviaqa")
    shots = train[:TRIVIAQA_SHOTS]
    prompts = [triviaqa_prompt(shots, row["question"]) for row in rows]
    outputs = greedy_generate(
        model,
        tok,
        prompts,
        max_new_tokens,
        batch_size,
        stop_strings=["\n"],
        desc="triviaqa",
        batch_invariant=batch_invariant,
    )
    records, total = [], 0.0
    for i, (row, out) in enumerate(zip(rows, outputs, strict=True)):
        aliases = [row["answer"]["value"], *row["answer"].get("aliases", [])]
        f1 = max(token_f1(out, a) for a in aliases)
        total += f1
        records.append(_record("triviaqa", i, row["question"], row["answer"]["value"], out))
        records[-1]["score"] = 100.0 * f1
    return 100.0 * total / len(rows), records


def fluency(
    model, tok, rows: list[dict], batch_size: int, max_new_tokens=128, *, batch_invariant=True
):
    _require(rows, ("instruction",), "fluency")
    prompts = [FLUENCY_PROMPT.format(instruction=row["instruction"]) for row in rows]
    outputs = greedy_generate(
        model,
        tok,
        prompts,
        max_new_tokens,
        batch_size,
        desc="fluency",
        batch_invariant=batch_invariant,
    )
    records, total = [], 0.0
    for i, (row, out) in enumerate(zip(rows, outputs, strict=True)):
        h = fluency_entropy(out)
        total += h
        records.append(_record("fluency", i, row["instruction"], "", out))
        records[-1]["score"] = 100.0 * h
    return 100.0 * total / len(rows), records


def _record(metric: str, index: int, prompt: str, reference: str, output: str) -> dict:
    return {"metric": metric, "index": index, "prompt": prompt, "reference": reference,
            "output": output}  # fmt: skip
