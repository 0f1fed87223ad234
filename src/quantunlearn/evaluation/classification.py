"""Classification accuracy on a labelled benchmark (the Twitter misinformation study of Mishra and
Mehreen, section VII-A, `quantunlearn.data.twitter`): the accuracy on the forget and retain
tweets that a reader of their Table III would expect next to M1.

Zero-shot label-word likelihood, as lm-evaluation-harness scores multiple choice: after the
prompt ``"Tweet: {text}\\nLabel:"`` the model's summed log-likelihood of " factual" (label 0) and
of " misinformation" (label 1) are compared and the likelier word is the prediction (ties:
label 0). The papers' code never evaluates the labels; this is our addition.
"""

from __future__ import annotations

from collections.abc import Sequence

from quantunlearn.evaluation.utility_metrics import continuation_logprobs

PROMPT = "Tweet: {text}\nLabel:"
LABEL_WORDS = {0: " factual", 1: " misinformation"}


def classify(model, tokenizer, texts: Sequence[str], batch_size: int = 16, max_length=2048):
    """The predicted label of each text, and the two label words' log-likelihoods."""
    pairs = [(PROMPT.format(text=t), LABEL_WORDS[k]) for t in texts for k in (0, 1)]
    scores = continuation_logprobs(model, tokenizer, pairs, batch_size, max_length)
    per_text = [(scores[2 * i], scores[2 * i + 1]) for i in range(len(texts))]
    return [int(s1 > s0) for s0, s1 in per_text], per_text


def accuracy(model, tokenizer, rows: Sequence[dict], batch_size: int, max_length: int, metric: str):
    """100 x the share of rows ({"text", "label"}) classified right, and per-row records."""
    if not rows:
        raise ValueError(f"{metric}: no labelled rows to classify")
    preds, _ = classify(model, tokenizer, [r["text"] for r in rows], batch_size, max_length)
    records = []
    for i, (row, pred) in enumerate(zip(rows, preds, strict=True)):
        records.append({"metric": metric, "index": i, "prompt": row["text"],
                        "reference": LABEL_WORDS[row["label"]].strip(),
                        "output": LABEL_WORDS[pred].strip(),
                        "score": 100.0 * (pred == row["label"])})  # fmt: skip
    return sum(r["score"] for r in records) / len(records), records
