"""General utility beyond KnowMem on retain: Zhang et al. section 6.2 (Table 3: Gen, Tru, Fac,
Flu), in two protocols (the data: `quantunlearn.data.utility`).

The seeds' protocol (``*_rwku``), RWKU's evaluation code (Jin et al., GitHub jinzhuoran/RWKU,
LLaMA-Factory/src/llmtuner/eval/eval_{mmlu,truthfulqa,triviaqa,fluency}.py) as Zhang et al.
ran it on MUSE's models, on RWKU's small utility files of target 1. Every prompt is one user
message through the tokenizer's chat template (``evaluation.chat_template``; the MUSE configs
name Llama-2's, which the seeds' transformers 4.40 applied by default), then a cue:

* ``mmlu_rwku`` (Gen): the subject line, the row's 5 examples ("Question: ...\nA. ...\nAnswer:
  X"), "Please following the previous examples and answer the given question." (sic), the
  question; after the template "Answer:". The prediction is the arg max of the next-token
  distribution over the last tokens of " A", " B", " C", " D"; accuracy x 100.
* ``truthfulqa_rwku`` (Tru): the TruthfulQA paper's 6-pair QA primer and "\n\nQ: {question}";
  after the template "A:"; each MC choice scored by its summed log-likelihood after the prompt
  (the continuation: the tokens of prompt + " " + choice beyond those of the prompt). Tru is
  MC2 x 100: per question, the probability mass (exp of the scores) of the mc2 choices that
  lies on the true ones, averaged. Zhang et al.'s Tru values are MC2 (none of their 28 ordinary
  values is a multiple of 2, which MC1 on 50 questions would be; their collapsed rows print raw
  fractions such as 0.18). MC1 (1 when the first true choice scores strictly above every false
  one) is recorded per row beside it (records columns ``mc1``, ``mc2``).
* ``triviaqa_rwku`` (Fac): five fixed Q/A pairs (eval_triviaqa.py's few-shot prompt), "Please
  briefly answer the following question:", "Q: {question}"; after the template "A:"; greedy, 30
  new tokens, stopping at EOS / end of turn; SQuAD token F1 against the best of the answers,
  x 100.
* ``fluency_rwku`` (Flu): "Instruction: {instruction}"; greedy, 256 new tokens; Meng et al.'s
  weighted bi-/tri-gram entropy (weights 2/3, 4/3), x 100 (Tables 3 and 8: about 500-670).

The full benchmarks: ``mmlu`` and ``truthfulqa_mc1`` through lm-evaluation-harness
(`quantunlearn.evaluation.harness`); ``triviaqa`` (rc.nocontext, 6-shot, token F1) and
``fluency`` (the 805 AlpacaEval instructions) with the code below, which the harness has no
equivalent of. Fluency tokenizes words with a regex instead of nltk's punkt (a download).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

import torch

from quantunlearn.data.rwku import chat_prompt
from quantunlearn.evaluation.generation import Execution, greedy_generate

LETTERS = "ABCD"
TRIVIAQA_SHOTS = 6
# TruthfulQA's fixed 6-shot "QA prompt" (Lin et al. 2022), as RWKU's code and lm-evaluation-harness
# use it
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


def _encode_pairs(tokenizer, pairs, whole: bool, max_length: int):
    """(token sequence, continuation length) of each (context, continuation)."""
    seqs, n_cont = [], []
    for context, continuation in pairs:
        ctx = tokenizer(context)["input_ids"]
        if whole:  # RWKU (and lm-eval): the continuation is what tokenizing it with its context
            full = tokenizer(context + continuation)["input_ids"]  # adds beyond the context
            cont = full[len(ctx) :]
            seq = full
        else:
            cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
            seq = ctx + cont
        if not cont:
            raise ValueError(f"empty continuation after {context[-40:]!r}")
        seqs.append(seq[-max_length:])
        n_cont.append(len(cont))
    return seqs, n_cont


@torch.no_grad()
def continuation_logprobs(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 16,
    max_length=2048,
    whole: bool = False,
) -> list[float]:
    """Sum of log p(continuation tokens | context) for each (context, continuation).

    Context and continuation are tokenized apart (the context with BOS, the continuation without
    special tokens) and concatenated; with ``whole``, context + continuation is tokenized as one
    string and the continuation is the tokens beyond those of the context alone (RWKU's
    score_completions). Sequences longer than ``max_length`` lose tokens on the left.
    """
    seqs, n_cont = _encode_pairs(tokenizer, pairs, whole, max_length)
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


@torch.no_grad()
def next_token_choice(model, tokenizer, prompts: Sequence[str], candidates: Sequence[int],
                      batch_size: int) -> list[int]:  # fmt: skip
    """For each prompt, the index in ``candidates`` (token ids) of the most likely next token
    (RWKU's get_next_word_predictions: the prompt tokenized with special tokens, left-padded)."""
    picks: list[int] = []
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt",
                            padding=True).to(model.device)  # fmt: skip
            logits = model(**enc).logits[:, -1, :].float()
            picks += logits[:, list(candidates)].argmax(dim=-1).tolist()
    finally:
        tokenizer.padding_side = padding_side
    return picks


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
        execution=Execution("triviaqa", batch_invariant),
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
        execution=Execution("fluency", batch_invariant),
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


# ----------------------------------------------------------------------------------------------
# The seeds' protocol: RWKU's evaluation of its small utility files (module doc)
# ----------------------------------------------------------------------------------------------

#: eval_triviaqa.py's few-shot prompt (five fixed question/answer pairs and the instruction).
TRIVIAQA_RWKU_SHOTS = (
    "\nQ: When did men's figure skating become a summer Olympic sport?\nA: 1908\n"
    "Q: When did the all india workers and peasants party came in to existence?\nA: November 1925\n"
    "Q: Flight that went down in the hudson river?\nA: US Airways Flight 1549\n"
    "Q: Where are most of the world's earthquakes located?\nA: Rim of Fire\n"
    "Q: Csi when do grissom and sara reunite?\nA: series finale\n"
    "Please briefly answer the following question:\n"
)
MMLU_RWKU_INSTRUCTION = "Please following the previous examples and answer the given question.\n"


def _mmlu_block(row: dict, answer: bool) -> str:
    text = "Question: " + row["question"]
    text += "".join(f"\n{LETTERS[j]}. {c}" for j, c in enumerate(row["choices"]))
    return text + (f"\nAnswer: {LETTERS[row['answer']]}\n\n" if answer else "")


def mmlu_rwku_message(row: dict) -> str:
    """The user message of one RWKU MMLU row: subject line, its 5 examples, the question."""
    head = (
        "The following are multiple choice questions (with answers) about "
        f"{row['task'].replace('_', ' ')}.\n\n"
    )
    shots = "".join(_mmlu_block(shot, True) for shot in row["examples"])
    return head + shots + MMLU_RWKU_INSTRUCTION + _mmlu_block(row, False)


def mmlu_rwku(model, tok, rows: list[dict], ev: dict):
    """Gen: accuracy x 100 of the next-token arg max over " A" .. " D" (module doc)."""
    prompts = [chat_prompt(tok, mmlu_rwku_message(row)) + "Answer:" for row in rows]
    candidates = [
        tok(" " + letter, add_special_tokens=False)["input_ids"][-1] for letter in LETTERS
    ]
    picks = next_token_choice(model, tok, prompts, candidates, ev["batch_size"])
    records = []
    for i, (row, pick) in enumerate(zip(rows, picks, strict=True)):
        records.append(_record("mmlu_rwku", i, row["question"], LETTERS[row["answer"]],
                               LETTERS[pick]))  # fmt: skip
        records[-1]["score"] = 100.0 * (pick == row["answer"])
    return sum(r["score"] for r in records) / len(records), records


def truthfulqa_rwku_prompt(tok, question: str) -> str:
    prompt = chat_prompt(tok, f"{TRUTHFULQA_PROMPT}\n\nQ: {question}")
    return prompt + ("A:" if prompt[-1:] in ("\n", " ") else " A:")


def mc1_correct(scores: dict[str, float], targets: dict) -> bool:
    """MC1 of one question: the first true choice scores strictly above every false one."""
    pairs = list(zip(targets["choices"], targets["labels"], strict=True))
    true = [scores[c] for c, y in pairs if y == 1]
    false = [scores[c] for c, y in pairs if y != 1]
    return bool(true) and (not false or true[0] > max(false))


def mc2_mass(scores: dict[str, float], targets: dict) -> float:
    """MC2 of one question (RWKU's eval_truthfulqa.py, after the TruthfulQA paper): the share
    of the probability mass of all the choices (exp of their summed log-likelihoods) that falls
    on the true ones. Computed from the shifted log-likelihoods (the same ratio, no underflow
    where every choice is very unlikely)."""
    logps = [scores[c] for c in targets["choices"]]
    top = max(logps)
    mass = [math.exp(lp - top) for lp in logps]
    true = sum(m for m, y in zip(mass, targets["labels"], strict=True) if y == 1)
    return true / sum(mass)


def truthfulqa_rwku(model, tok, rows: list[dict], ev: dict):
    """Tru: MC2 x 100, as Zhang et al. report it (module doc); each row's record also holds its
    MC1 (0 or 1) and MC2. Every choice of mc2_targets and mc1_targets is scored once after the
    prompt."""
    pairs, spans = [], []
    for row in rows:
        prompt = truthfulqa_rwku_prompt(tok, row["question"])
        sep = "" if prompt[-1:] in ("\n", " ") else " "
        choices = list(dict.fromkeys(row["mc2_targets"]["choices"] + row["mc1_targets"]["choices"]))
        spans.append((len(pairs), choices))
        pairs += [(prompt, sep + choice) for choice in choices]
    scores = continuation_logprobs(
        model, tok, pairs, ev["batch_size"], ev["max_length"], whole=True
    )
    records = []
    for i, (row, (at, choices)) in enumerate(zip(rows, spans, strict=True)):
        by_choice = {c: scores[at + j] for j, c in enumerate(choices)}
        mc1, mc2 = row["mc1_targets"], row["mc2_targets"]
        pick = max(mc1["choices"], key=by_choice.__getitem__)
        records.append(_record("truthfulqa_rwku", i, row["question"],
                               mc1["choices"][mc1["labels"].index(1)], pick))  # fmt: skip
        records[-1]["mc1"] = float(mc1_correct(by_choice, mc1))
        records[-1]["mc2"] = mc2_mass(by_choice, mc2)
        records[-1]["score"] = 100.0 * records[-1]["mc2"]
    return sum(r["score"] for r in records) / len(records), records


def triviaqa_rwku(model, tok, rows: list[dict], ev: dict):
    """Fac: the best token F1 x 100 of the greedy answer against the row's answers."""
    prompts = [
        chat_prompt(tok, TRIVIAQA_RWKU_SHOTS + f"Q: {row['question']}\n") + "A:" for row in rows
    ]
    outputs = greedy_generate(
        model, tok, prompts, 30, ev["batch_size"], execution=Execution("triviaqa")
    )
    records = []
    for i, (row, out) in enumerate(zip(rows, outputs, strict=True)):
        records.append(_record("triviaqa_rwku", i, row["question"], row["answers"][0], out))
        records[-1]["score"] = 100.0 * max(token_f1(out, a) for a in row["answers"])
    return sum(r["score"] for r in records) / len(records), records


def fluency_rwku(model, tok, rows: list[dict], ev: dict):
    """Flu: the mean generation entropy x 100 of the greedy answers to the instructions (at most
    ``fluency_max_new_tokens``, RWKU: 256)."""
    max_new_tokens = ev.get("fluency_max_new_tokens", 256)
    prompts = [chat_prompt(tok, f"Instruction: {row['instruction']}\n") for row in rows]
    outputs = greedy_generate(
        model, tok, prompts, max_new_tokens, ev["batch_size"], execution=Execution("fluency")
    )
    records = []
    for i, (row, out) in enumerate(zip(rows, outputs, strict=True)):
        records.append(_record("fluency_rwku", i, row["instruction"], "", out))
        records[-1]["score"] = 100.0 * fluency_entropy(out)
    return sum(r["score"] for r in records) / len(records), records
