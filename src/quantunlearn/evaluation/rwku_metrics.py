"""RWKU's forget and neighbor probes: answer matching, generation, per-sample records.

Jin et al., "RWKU: Benchmarking Real-World Knowledge Unlearning for Large Language Models"
(NeurIPS 2024), section 3.3 and appendix F.1. Their code (GitHub jinzhuoran/RWKU,
LLaMA-Factory/src/llmtuner/eval/eval_forget.py and eval_neighbor.py) generates a greedy answer
of at most 30 new tokens to each probe's prompt (`quantunlearn.data.rwku.probe_prompt`),
strips it (an empty answer becomes "NOANSWER") and scores it by the ROUGE-L *recall* of the
reference answer, computed with the PyPI package ``rouge`` 1.0.1
(``Rouge().get_scores(hyps, refs, avg=True)["rouge-l"]["r"]``), whose rule `rouge_l_recall`
implements:

1. a text is cut into "sentences" at every ``.``; empty pieces are dropped and the whitespace of
   each piece is collapsed to single spaces;
2. words are the pieces of a sentence split on " ": no lower-casing, punctuation other than
   ``.`` stays attached ("Portland," is not "Portland");
3. words are counted as a *set* (``exclusive=True``, the package's default): m = the number of
   distinct words of the reference;
4. for each reference sentence and each prediction sentence, one longest common subsequence of
   words is reconstructed (backtracking from the end: take a match, else step in the reference
   if that keeps the longer prefix, else step in the prediction); the set union U of the words
   of all these LCSs is accumulated over all sentence pairs;
5. recall = |U| / m.

The package raises on a prediction with no sentence left (e.g. "..."), which scores 0 here.

The probe file's level gives the kind: forget_level1 = FB (fill-in-the-blank), forget_level2 =
QA, forget_level3 = AA (adversarial attack, every attack type pooled); neighbor_level1/2 =
neighbor FB / QA. A cell's value is RWKU's average: per target the mean recall over its probes
of that kind, then the mean over the cell's targets (RWKU Table 1: "averaged over 100 unlearning
targets"), x 100.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from quantunlearn.data.rwku import RWKUBenchmark, probe_prompt
from quantunlearn.evaluation.generation import Execution, greedy_generate

NOANSWER = "NOANSWER"
MAX_NEW_TOKENS = 30  # eval_forget.py: greedy, max_new_tokens=30
#: (probe set, kind) -> the RWKU config it reads
PROBES = {
    ("forget", "FB"): "forget_level1",
    ("forget", "QA"): "forget_level2",
    ("forget", "AA"): "forget_level3",
    ("neighbor", "FB"): "neighbor_level1",
    ("neighbor", "QA"): "neighbor_level2",
}


def rouge_sentences(text: str) -> list[str]:
    """Pieces of ``text`` between periods, whitespace collapsed, empty pieces dropped (a piece
    of spaces only is kept as "": the package tests the length before collapsing)."""
    return [" ".join(piece.split()) for piece in text.split(".") if len(piece) > 0]


def lcs_words(reference: Sequence[str], prediction: Sequence[str]) -> list[str]:
    """One longest common subsequence of two word lists, chosen as the ``rouge`` package does."""
    n, m = len(reference), len(prediction)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            if reference[i - 1] == prediction[j - 1]:
                table[i][j] = table[i - 1][j - 1] + 1
            else:
                table[i][j] = max(table[i - 1][j], table[i][j - 1])
    out: list[str] = []
    i, j = n, m
    while i > 0 and j > 0:
        if reference[i - 1] == prediction[j - 1]:
            out.append(reference[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return out[::-1]


def rouge_l_recall(prediction: str, reference: str) -> float:
    """Summary-level ROUGE-L recall of ``reference`` in ``prediction`` (rule: module doc)."""
    ref_sents = rouge_sentences(reference)
    if not ref_sents:
        raise ValueError(f"reference {reference!r} has no words: RWKU answers are never empty")
    hyp_sents = rouge_sentences(prediction)
    if not hyp_sents:
        return 0.0
    vocabulary = {w for s in ref_sents for w in s.split(" ")}
    union: set[str] = set()
    for r in ref_sents:
        for h in hyp_sents:
            union.update(lcs_words(r.split(" "), h.split(" ")))
    return len(union) / len(vocabulary)


def clean_prediction(output: str) -> str:
    """RWKU's post-processing of a generated answer: strip; empty -> "NOANSWER"."""
    return output.strip() or NOANSWER


def probe_records(
    bench: RWKUBenchmark, probe_set: str, kind: str, metric: str, outputs: Sequence[str]
) -> list[dict]:
    """One record per probe of (``probe_set``, ``kind``) of every target, in order."""
    config = PROBES[(probe_set, kind)]
    probes = [(t, p) for t in bench.targets for p in t.probes[config]]
    records = []
    for index, ((target, probe), output) in enumerate(zip(probes, outputs, strict=True)):
        prediction = clean_prediction(output)
        records.append(
            {
                "metric": metric,
                "index": index,
                "prompt": probe["query"],
                "reference": probe["answer"],
                "output": prediction,
                "score": 100.0 * rouge_l_recall(prediction, probe["answer"]),
                "target": target.target,
                "subject": target.subject,
                "probe_type": probe["type"],
                "neighbor": probe.get("neighbor"),
            }
        )
    return records


def target_average(records: Sequence[dict]) -> float:
    """RWKU's average: the mean score of each target's records, then the mean over targets."""
    per_target: dict[str, list[float]] = defaultdict(list)
    for r in records:
        per_target[r["target"]].append(r["score"])
    means = [sum(v) / len(v) for v in per_target.values()]
    return sum(means) / len(means)


def probe_metric(
    model,
    tokenizer,
    bench: RWKUBenchmark,
    probe_set: str,
    kind: str,
    metric: str,
    batch_size: int,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> tuple[float, list[dict]]:
    """Generate the answers to one kind of probe of every target of ``bench`` and score them;
    (RWKU's average x 100, per-probe records)."""
    config = PROBES[(probe_set, kind)]
    prompts = [probe_prompt(p, tokenizer) for t in bench.targets for p in t.probes[config]]
    if not prompts:
        raise ValueError(f"no {config} probes for targets {[t.target for t in bench.targets]}")
    outputs = greedy_generate(
        model, tokenizer, prompts, max_new_tokens, batch_size, execution=Execution(metric)
    )
    records = probe_records(bench, probe_set, kind, metric, outputs)
    return target_average(records), records


def mia_loss(
    model, tokenizer, bench: RWKUBenchmark, which: str, metric: str, batch_size: int, max_length
) -> tuple[float, list[dict]]:
    """RWKU's LOSS membership score of the ``which`` ("mia_forget" / "mia_retain") texts: the
    mean token NLL of BOS + text (no template; eval_mia.py), x 100, per target then averaged."""
    from quantunlearn.evaluation.muse_metrics import min_k_scores  # k = 1: the mean log-probability

    rows = [(t, r) for t in bench.targets for r in getattr(t, which)]
    if not rows:
        raise ValueError(f"no {which} texts for targets {[t.target for t in bench.targets]}")
    texts = [r["text"] for _, r in rows]
    logprobs = min_k_scores(model, tokenizer, texts, 1.0, max_length, batch_size)
    records = [
        {"metric": metric, "index": i, "prompt": text, "reference": "", "output": "",
         "score": -100.0 * float(lp), "target": t.target, "subject": t.subject}
        for i, ((t, _), text, lp) in enumerate(zip(rows, texts, logprobs, strict=True))
    ]  # fmt: skip
    return target_average(records), records
