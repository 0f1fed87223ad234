"""The MUSE evaluation metrics: VerbMem, KnowMem and PrivLeak (Min-K% Prob AUC).

Definitions follow Zhang et al. (ICLR 2025), appendix C.2, eqs. 11-13, which take them from MUSE
(Shi et al., 2024b). Details that the equations leave open follow the public MUSE evaluation code:

- generation is greedy, `max_new_tokens` 128 (VerbMem) or 32 (KnowMem), continuation only
  (`quantunlearn.evaluation.generation`);
- ROUGE is `rouge_score`'s ROUGE-L F-measure without stemming, reported x 100;
- PrivLeak's AUC uses Min-K% Prob (Shi et al., 2024a) with k = 40 %, forget texts as label 0 and
  holdout texts as label 1, so a model that still knows the forget set scores an AUC near 0.

Every function works on whatever device the model is on and runs under `torch.inference_mode`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from rouge_score import rouge_scorer
from tqdm.auto import tqdm

from quantunlearn.evaluation.generation import Execution, check_positive, greedy_generate
from quantunlearn.quantizers.base import RuntimeModel

KNOWMEM_STOP = ("\n\n", "\nQuestion", "Question:")
"""MUSE cuts a KnowMem answer at the first of these (metrics/knowmem.py)."""


# --------------------------------------------------------------------------------------- ROUGE
@lru_cache(maxsize=1)
def _rouge_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (Lin, 2004) of `prediction` against `reference`, in [0, 1].

    F = 2PR / (P + R) with P = LCS / |prediction| and R = LCS / |reference| over word tokens.
    `rouge_score` lowercases and replaces every non-[a-z0-9] character with a space before
    splitting, so punctuation and non-Latin scripts do not count.
    """
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


# ------------------------------------------------------------------------------ VerbMem, KnowMem
def _check_keys(items: list[dict], keys: tuple[str, ...], what: str) -> None:
    for i, item in enumerate(items):
        missing = [key for key in keys if key not in item]
        if missing:
            raise ValueError(f"{what}[{i}] lacks keys {missing}; each item needs {list(keys)}")


def truncate_tokens(tokenizer, text: str, max_tokens: int) -> str:
    """`text` cut to its first `max_tokens` tokens (no special tokens), decoded back."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def verbmem(
    model,
    tokenizer,
    items: list[dict],
    max_new_tokens: int = 128,
    batch_size: int = 32,
    *,
    batch_invariant: bool = True,
) -> tuple[float, list[dict]]:
    """VerbMem (eq. 11): mean ROUGE-L F1 x 100 of the greedy continuation of each passage prefix.

    `items` are MUSE verbmem records {"prompt", "gt"}; the ground truth is cut to its first
    `max_new_tokens` tokens. MUSE's code tokenizes gt *with* BOS before cutting (127 text tokens
    for 128); we cut text tokens only, as the paper states (x_{[l+1:]} limited to the generation
    budget).
    """
    _check_keys(items, ("prompt", "gt"), "verbmem items")
    references = [truncate_tokens(tokenizer, item["gt"], max_new_tokens) for item in items]
    prompts = [item["prompt"] for item in items]
    outputs = greedy_generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens,
        batch_size=batch_size,
        execution=Execution("verbmem", batch_invariant),
    )
    return _rouge_records("verbmem_f", prompts, references, outputs)


def knowmem_prompt(icl: list[dict], question: str) -> str:
    """MUSE's few-shot QA prompt.

    Every ICL pair as "Question: q\\nAnswer: a\\n\\n", then "Question: `question`\\nAnswer: ".
    """
    _check_keys(icl, ("question", "answer"), "icl")
    shots = "".join(f"Question: {ex['question']}\nAnswer: {ex['answer']}\n\n" for ex in icl)
    return f"{shots}Question: {question}\nAnswer: "


def knowmem(
    model,
    tokenizer,
    qa: list[dict],
    icl: list[dict],
    max_new_tokens: int = 32,
    batch_size: int = 32,
    metric: str = "knowmem_f",
    *,
    batch_invariant: bool = True,
) -> tuple[float, list[dict]]:
    """KnowMem (eq. 12): mean ROUGE-L F1 x 100 of greedy few-shot answers against the true answers.

    Answers are cut at `KNOWMEM_STOP` and stripped. Records keep the bare question as "prompt".
    """
    _check_keys(qa, ("question", "answer"), "qa")
    prompts = [knowmem_prompt(icl, item["question"]) for item in qa]
    outputs = greedy_generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens,
        batch_size=batch_size,
        stop_strings=list(KNOWMEM_STOP),
        execution=Execution(metric, batch_invariant),
    )
    return _rouge_records(
        metric,
        [item["question"] for item in qa],
        [item["answer"] for item in qa],
        [output.strip() for output in outputs],
    )


def _rouge_records(
    metric: str, prompts: list[str], references: list[str], outputs: list[str]
) -> tuple[float, list[dict]]:
    records = [
        {
            "metric": metric,
            "index": i,
            "prompt": prompt,
            "reference": reference,
            "output": output,
            "score": rouge_l_f1(output, reference) * 100,
        }
        for i, (prompt, reference, output) in enumerate(
            zip(prompts, references, outputs, strict=True)
        )
    ]
    if not records:
        raise ValueError(f"{metric}: no items to evaluate")
    return float(np.mean([r["score"] for r in records])), records


# ------------------------------------------------------------------------------------ PrivLeak
def min_k_scores(
    model,
    tokenizer,
    texts: list[str],
    k: float = 0.4,
    max_length: int = 2048,
    batch_size: int = 8,
) -> np.ndarray:
    """Min-K% Prob (Shi et al., 2024a) of each text: mean of its lowest k-fraction token log-probs.

    For tokens x_1..x_n (x_1 = BOS, context only) the log-probs are log p(x_i | x_<i), i = 2..n;
    the score averages the max(1, int((n-1) k)) smallest. Texts are truncated to `max_length`
    tokens and batched with right padding (real tokens keep positions 0..n-1 and never attend to
    padding under the causal mask; padded positions are dropped before the minimum).
    """
    if not 0 < k <= 1:
        raise ValueError(f"k={k} must lie in (0, 1]")
    check_positive(max_length=max_length, batch_size=batch_size)
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    for i, ids in enumerate(encoded):
        if len(ids) < 2:
            raise ValueError(f"texts[{i}] has {len(ids)} token(s); Min-K% needs at least 2")
    if isinstance(model, RuntimeModel):  # llama.cpp: the same ids, its own log-probs
        lowest = [_mean_lowest(model.token_log_probs(ids), k) for ids in encoded]
        return np.asarray(lowest, dtype=np.float64)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = model.device
    scores = np.empty(len(encoded), dtype=np.float64)
    with torch.inference_mode():
        for batch in tqdm(batches, desc="min-k", unit="batch", leave=False):
            width = max(len(encoded[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                attention_mask[row, : len(encoded[i])] = 1
            logits = model(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)
            ).logits
            for row, i in enumerate(batch):
                n = len(encoded[i])
                log_probs = torch.log_softmax(logits[row, : n - 1].float(), dim=-1)
                targets = input_ids[row, 1:n].to(log_probs.device)
                token_lp = log_probs.gather(-1, targets[:, None]).squeeze(-1)
                scores[i] = _mean_lowest(token_lp.double().cpu().numpy(), k)
    return scores


def _mean_lowest(values: np.ndarray, k: float) -> float:
    count = max(1, int(len(values) * k))
    return float(np.sort(values)[:count].mean())


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """ROC-AUC = P(score of a random positive > score of a random negative), ties counting 1/2.

    Computed as the Mann-Whitney U statistic with average ranks: (R_pos - n_pos (n_pos+1)/2) /
    (n_pos n_neg), where R_pos is the sum of the positives' ranks.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must be 1-D of equal length")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1; got {sorted(set(y.tolist()))}")
    n_pos = int((y == 1).sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC-AUC needs both classes; got {n_pos} positives, {n_neg} negatives")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # 1-based rank of the last member of each tie group
    average_rank = ends - (counts - 1) / 2.0
    rank_sum = average_rank[inverse][y == 1].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def membership_scores(
    model,
    tokenizer,
    forget_texts: list[str],
    holdout_texts: list[str],
    k: float = 0.4,
    max_length: int = 2048,
    batch_size: int = 8,
    metric: str = "mink_auc",
) -> tuple[float, list[dict]]:
    """AUC(f, D_forget, D_holdout) of eq. 13 and the per-text Min-K% scores it is computed from.

    Forget texts are labelled 0 and holdout texts 1. Each record is one text: ``split``
    (forget | holdout), ``index`` (its position in the benchmark's privleak/{split}.json) and
    ``score``, so that the AUC (and PrivLeak) can be recomputed from the records alone.
    """
    scores = min_k_scores(
        model, tokenizer, list(forget_texts) + list(holdout_texts), k, max_length, batch_size
    )
    labels = [0] * len(forget_texts) + [1] * len(holdout_texts)
    splits = [("forget", i) for i in range(len(forget_texts))]
    splits += [("holdout", i) for i in range(len(holdout_texts))]
    records = [
        {"metric": metric, "split": split, "index": i, "score": float(score)}
        for (split, i), score in zip(splits, scores, strict=True)
    ]
    return roc_auc(scores, labels), records


def privleak_auc(*args, **kwargs) -> float:
    """AUC(f, D_forget, D_holdout) of eq. 13 alone (the arguments of `membership_scores`)."""
    return membership_scores(*args, **kwargs)[0]


def privleak(auc: float, auc_retrain: float) -> float:
    """PrivLeak (eq. 13) in percent: (AUC_unlearn - AUC_retrain) / AUC_retrain x 100.

    The denominator is AUC of the retrained model, as in eq. 13 (appendix C.2) and the MUSE code
    (`eval.py`). The paper's "Metrics" paragraph in section 4 divides by AUC(f_unlearn) instead;
    we follow the equation and the code. Near 0 is ideal, negative means under-unlearning.
    """
    if not auc_retrain > 0:
        raise ValueError(f"auc_retrain={auc_retrain} must be > 0")
    return (auc - auc_retrain) / auc_retrain * 100
