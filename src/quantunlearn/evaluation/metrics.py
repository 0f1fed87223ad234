"""The metrics of an evaluation cell: one explicit table, each row a name, a label, a direction
and the function that measures it.

The MUSE metrics (Zhang et al., ICLR 2025, section 4.1 and appendix C; Shi et al. 2024b) are
measured in every cell of a MUSE-layout benchmark, RWKU's probes (Jin et al., NeurIPS 2024;
Zhang et al. Table 7) in every cell of an RWKU-layout one; the utility metrics of Zhang et al.
section 6.2 (Tables 3 and 8: Gen, Tru, Fac, Flu) when ``evaluation.utility`` names them. A
row's ``compute`` takes the cell's `Context` and returns (value, number of items, per-item
records). The tables take their columns, headers and arrows from this table; a new metric is
one function and one row. This module reads without torch (the workflow validates
``evaluation.utility`` against it); the measuring code is imported when a metric is computed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from quantunlearn.data.utility import benchmark_rows

ARROWS = {"lower": "↓", "higher": "↑", "zero": "→0"}


class Context:
    """What every metric of one cell reads: the (quantized) model, its tokenizer, the
    benchmark's evaluation files, the ``evaluation`` config and PrivLeak's reference AUC;
    ``batch_invariant``: the cell's `Quantizer.batch_invariant`, which tells generation whether
    it may regroup rows."""

    def __init__(
        self,
        model,
        tokenizer,
        benchmark,
        evaluation: dict,
        auc_retrain: float,
        batch_invariant: bool = True,
    ):
        self.model, self.tokenizer, self.benchmark = model, tokenizer, benchmark
        self.evaluation, self.auc_retrain = evaluation, auc_retrain
        self.batch_invariant = batch_invariant

    @cached_property
    def membership(self) -> tuple[float, list[dict]]:
        """Min-K% Prob AUC of the forget texts (label 0) against the holdout texts (label 1),
        and the per-text scores it comes from (`evaluation.muse_metrics.membership_scores`)."""
        from quantunlearn.evaluation.muse_metrics import membership_scores

        ev, bench = self.evaluation, self.benchmark
        return membership_scores(
            self.model,
            self.tokenizer,
            bench.privleak_forget,
            bench.privleak_holdout,
            k=ev["mink_k"],
            max_length=ev["max_length"],
            batch_size=ev["batch_size"],
        )

    @property
    def membership_auc(self) -> float:
        return self.membership[0]


#: The metric groups: a benchmark layout (its metrics read that layout's evaluation data and are
#: measured in every cell of such a benchmark) or "utility" (any benchmark, when
#: ``evaluation.utility`` names the metric).
METRIC_GROUPS = ("muse", "rwku", "utility")


@dataclass(frozen=True)
class Work:
    """What a metric runs on a model in a full-size cell, for the cost plan
    (`quantunlearn.study.costs`): prompts, tokens scored per prompt, tokens generated per prompt.
    The rows' values are the benchmarks' published sizes: MUSE (Shi et al., "MUSE: Machine
    Unlearning Six-Way Evaluation for Language Models") has 100 VerbMem excerpts, 100 KnowMem QA
    pairs per side with 10 in-context examples, and 100 texts each in the forget, retain and
    holdout sets of PrivLeak (2048 tokens at most); RWKU's small utility files (Jin et al.,
    "RWKU") 171 MMLU 5-shot questions, 50 TruthfulQA questions of 4 choices, 100 TriviaQA, 50
    AlpacaEval instructions. Assumptions, not measurements."""

    prompts: int
    prompt_tokens: int
    new_tokens: int = 0


@dataclass(frozen=True)
class Metric:
    name: str  # the value's key in the metric files (column ``metric``)
    label: str  # the column header of the paper's tables
    direction: str | None  # lower | higher | zero (closer to 0 is better) | None
    compute: Callable[[Context], tuple[float, int, list[dict]]]
    group: str = "muse"  # muse | rwku: the layout whose data it reads; utility: configured
    table: bool = True  # shown in the paper-style tables
    #: a Benchmark field the metric reads that some benchmarks leave empty (the Twitter
    #: benchmark has no question-answer pairs, the MUSE corpora no labels): skipped there
    needs: str | None = None
    # how the value follows from the per-item records: "mean" of their scores, or "auc": the
    # ROC AUC of their scores with the holdout texts as positives (Min-K% membership)
    summary: str = "mean"
    #: its work in a full-size cell (the cost plan); a row without one is planned at 100
    #: prompts of 512 tokens with 32 generated
    work: Work = Work(100, 512, 32)

    @property
    def header(self) -> str:
        """The label with the paper's arrow: "VerbMem_f ↓"."""
        return f"{self.label} {ARROWS[self.direction]}" if self.direction else self.label

    def applies(self, ctx: Context) -> bool:
        """Measured in this cell: a layout's metric on a benchmark of that layout (MUSE has no
        FB probes, RWKU no VerbMem) that has what it ``needs`` (the Twitter set no KnowMem
        questions), a utility metric when the config names it."""
        if self.group == "utility":
            return self.name in (ctx.evaluation.get("utility") or [])
        if self.group != ctx.benchmark.layout:
            return False
        return self.needs is None or bool(getattr(ctx.benchmark, self.needs))


def _verbmem(ctx: Context):
    from quantunlearn.evaluation.muse_metrics import verbmem

    ev = ctx.evaluation
    items = ctx.benchmark.verbmem_forget
    value, records = verbmem(
        ctx.model,
        ctx.tokenizer,
        items,
        ev["verbmem_max_new_tokens"],
        ev["batch_size"],
        batch_invariant=ctx.batch_invariant,
    )
    return value, len(records), records


def _knowmem(split: str) -> Callable[[Context], tuple[float, int, list[dict]]]:
    def compute(ctx: Context):
        from quantunlearn.evaluation.muse_metrics import knowmem

        ev, bench = ctx.evaluation, ctx.benchmark
        value, records = knowmem(
            ctx.model,
            ctx.tokenizer,
            getattr(bench, f"knowmem_{split}_qa"),
            getattr(bench, f"knowmem_{split}_icl"),
            ev["knowmem_max_new_tokens"],
            ev["batch_size"],
            metric=f"knowmem_{split[0]}",
            batch_invariant=ctx.batch_invariant,
        )
        return value, len(records), records

    return compute


def _privleak(ctx: Context):
    from quantunlearn.evaluation.muse_metrics import privleak

    value = privleak(ctx.membership_auc, ctx.auc_retrain)
    return value, len(ctx.benchmark.privleak_forget), []


def _mink_auc(ctx: Context):
    auc, records = ctx.membership
    return auc, len(records), records


def _accuracy(split: str) -> Callable[[Context], tuple[float, int, list[dict]]]:
    def compute(ctx: Context):
        from quantunlearn.evaluation.classification import accuracy

        rows = getattr(ctx.benchmark, f"classification_{split}")
        ev = ctx.evaluation
        value, records = accuracy(ctx.model, ctx.tokenizer, rows, ev["batch_size"],
                                  ev["max_length"], f"acc_{split[0]}")  # fmt: skip
        return value, len(records), records

    return compute


def _probe(probe_set: str, kind: str) -> Callable[[Context], tuple]:
    """RWKU's ``kind`` probes (FB, QA, AA) of ``probe_set`` (forget, neighbor): fb_forget, ..."""
    name = f"{kind.lower()}_{probe_set}"

    def compute(ctx: Context):
        from quantunlearn.evaluation.rwku_metrics import probe_metric

        ev = ctx.evaluation
        value, records = probe_metric(
            ctx.model, ctx.tokenizer, ctx.benchmark, probe_set, kind, name, ev["batch_size"]
        )
        return value, len(records), records

    return compute


def _mia(which: str) -> Callable[[Context], tuple]:
    """RWKU's MIA LOSS of the ``which`` texts (mia_forget, mia_retain), the metric's name."""

    def compute(ctx: Context):
        from quantunlearn.evaluation.rwku_metrics import mia_loss

        ev, bench = ctx.evaluation, ctx.benchmark
        batch, length = ev["batch_size"], ev["max_length"]
        value, records = mia_loss(ctx.model, ctx.tokenizer, bench, which, which, batch, length)
        return value, len(records), records

    return compute


def _mmlu(ctx: Context):
    from quantunlearn.evaluation.harness import harness_mmlu

    test, dev = benchmark_rows("mmlu", ctx.evaluation)
    ev = ctx.evaluation
    value, records = harness_mmlu(
        ctx.model, ctx.tokenizer, test, dev, ev["batch_size"], ev["max_length"]
    )
    return value, len(test), records


def _truthfulqa_mc1(ctx: Context):
    from quantunlearn.evaluation.harness import harness_truthfulqa_mc1

    rows, _ = benchmark_rows("truthfulqa_mc1", ctx.evaluation)
    ev = ctx.evaluation
    value, records = harness_truthfulqa_mc1(
        ctx.model, ctx.tokenizer, rows, ev["batch_size"], ev["max_length"]
    )
    return value, len(rows), records


def _triviaqa(ctx: Context):
    from quantunlearn.evaluation import utility_metrics as utility

    rows, shots = benchmark_rows("triviaqa", ctx.evaluation)
    value, records = utility.triviaqa(
        ctx.model,
        ctx.tokenizer,
        rows,
        shots,
        ctx.evaluation["batch_size"],
        batch_invariant=ctx.batch_invariant,
    )
    return value, len(rows), records


def _fluency(ctx: Context):
    from quantunlearn.evaluation import utility_metrics as utility

    rows, _ = benchmark_rows("fluency", ctx.evaluation)
    ev = ctx.evaluation
    max_new = ev.get("fluency_max_new_tokens", 128)
    value, records = utility.fluency(
        ctx.model,
        ctx.tokenizer,
        rows,
        ev["batch_size"],
        max_new,
        batch_invariant=ctx.batch_invariant,
    )
    return value, len(rows), records


def _seeds(name: str, protocol: Callable[[Any], Callable]) -> Callable[[Context], tuple]:
    """The seeds' protocol on RWKU's utility files of ``name``: ``protocol(utility_metrics)`` is
    its function in evaluation/utility_metrics.py (imported when the metric is computed)."""

    def compute(ctx: Context):
        from quantunlearn.evaluation import utility_metrics

        rows, _ = benchmark_rows(name, ctx.evaluation)
        measure = protocol(utility_metrics)
        value, records = measure(ctx.model, ctx.tokenizer, rows, ctx.evaluation)
        return value, len(rows), records

    return compute


METRICS: tuple[Metric, ...] = (
    Metric("verbmem_f", "VerbMem_f", "lower", _verbmem, work=Work(100, 128, 128)),
    Metric(
        "knowmem_f",
        "KnowMem_f",
        "lower",
        _knowmem("forget"),
        needs="knowmem_forget_qa",
        work=Work(100, 600, 32),
    ),
    Metric("privleak", "PrivLeak", "zero", _privleak, work=Work(300, 2048)),
    Metric(
        "knowmem_r",
        "KnowMem_r",
        "higher",
        _knowmem("retain"),
        needs="knowmem_retain_qa",
        work=Work(100, 600, 32),
    ),
    # PrivLeak's input, recorded so that PrivLeak can be recomputed from the metric files; its
    # records are the per-text Min-K% scores (split, index, score) the AUC is computed from (no
    # work of its own: it reuses PrivLeak's scores)
    Metric("mink_auc", "Min-K% AUC", None, _mink_auc, table=False, summary="auc", work=Work(0, 0)),
    # a labelled benchmark's classification accuracy (the Twitter study, Mishra and Mehreen
    # Table III's layout): forget tweets (not judged) and retain tweets
    Metric(
        "acc_f",
        "Acc_f",
        None,
        _accuracy("forget"),
        table=False,
        needs="classification_forget",
        work=Work(100, 128),
    ),
    Metric(
        "acc_r",
        "Acc_r",
        "higher",
        _accuracy("retain"),
        table=False,
        needs="classification_retain",
        work=Work(100, 128),
    ),
    # RWKU (Jin et al., NeurIPS 2024; Zhang et al. Table 7): the forget probes at three levels and
    # the neighbor probes, ROUGE-L recall of the answer x 100 (evaluation/rwku_metrics.py)
    Metric(
        "fb_forget", "FB", "lower", _probe("forget", "FB"), group="rwku", work=Work(100, 64, 32)
    ),
    Metric(
        "qa_forget", "QA", "lower", _probe("forget", "QA"), group="rwku", work=Work(100, 64, 32)
    ),
    Metric(
        "aa_forget", "AA", "lower", _probe("forget", "AA"), group="rwku", work=Work(100, 64, 32)
    ),
    Metric(
        "fb_neighbor",
        "Neighbor FB",
        "higher",
        _probe("neighbor", "FB"),
        group="rwku",
        work=Work(100, 64, 32),
    ),
    Metric(
        "qa_neighbor",
        "Neighbor QA",
        "higher",
        _probe("neighbor", "QA"),
        group="rwku",
        work=Work(100, 64, 32),
    ),
    # RWKU's membership-inference sets: LOSS x 100 of forget members (FM, should rise) and of
    # retain members (RM, should not)
    Metric(
        "mia_forget",
        "MIA FM",
        "higher",
        _mia("mia_forget"),
        group="rwku",
        table=False,
        work=Work(100, 512),
    ),
    Metric(
        "mia_retain",
        "MIA RM",
        "lower",
        _mia("mia_retain"),
        group="rwku",
        table=False,
        work=Work(100, 512),
    ),
    # Zhang et al. section 6.2 (Table 3): general knowledge, truthfulness, factuality, fluency, as
    # the seeds measured them: RWKU's code on RWKU's small utility files of target 1
    Metric(
        "mmlu_rwku",
        "Gen",
        "higher",
        _seeds("mmlu_rwku", lambda u: u.mmlu_rwku),
        group="utility",
        work=Work(171, 700),
    ),
    Metric(
        "truthfulqa_rwku",
        "Tru",
        "higher",
        _seeds("truthfulqa_rwku", lambda u: u.truthfulqa_rwku),
        group="utility",
        work=Work(200, 100),
    ),
    Metric(
        "triviaqa_rwku",
        "Fac",
        "higher",
        _seeds("triviaqa_rwku", lambda u: u.triviaqa_rwku),
        group="utility",
        work=Work(100, 64, 32),
    ),
    Metric(
        "fluency_rwku",
        "Flu",
        "higher",
        _seeds("fluency_rwku", lambda u: u.fluency_rwku),
        group="utility",
        work=Work(50, 64, 512),
    ),
    # the same four on the full public benchmarks (MMLU and TruthfulQA through lm-eval)
    Metric("mmlu", "MMLU", "higher", _mmlu, group="utility", work=Work(14042, 700)),
    Metric(
        "truthfulqa_mc1",
        "TruthfulQA MC1",
        "higher",
        _truthfulqa_mc1,
        group="utility",
        work=Work(3268, 100),
    ),
    Metric(
        "triviaqa", "TriviaQA F1", "higher", _triviaqa, group="utility", work=Work(17944, 64, 32)
    ),
    Metric(
        "fluency", "Flu (AlpacaEval)", "higher", _fluency, group="utility", work=Work(805, 64, 512)
    ),
)
BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}


def metric_names(group: str | None = None, table: bool | None = None) -> list[str]:
    """Names of the metrics of a group (muse / utility), optionally only those in tables."""
    return [
        m.name
        for m in METRICS
        if (group is None or m.group == group) and (table is None or m.table == table)
    ]


def headers(names) -> dict[str, Any]:
    """{name: header} of the named metrics, in the given order."""
    return {name: BY_NAME[name].header for name in names}
