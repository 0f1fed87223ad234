"""The walk-throughs of docs/extending.md, done for real with throwaway rows: a new method is an
objective (a Term) plus one METHODS row, a new load-time quantizer is a module (a Quantizer)
plus one QUANTIZERS entry, a new metric is a function plus one METRICS row; each then works in
the config, the grid, the jobs and the tables without any other change."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest
import torch
import yaml
from test_contracts import ROOT, TINY_RUN

import quantunlearn.data.benchmarks as benchmarks_table
import quantunlearn.quantizers.families as quantizers_table
from quantunlearn.data.benchmarks import MuseKind, benchmark_kind
from quantunlearn.data.synthetic import generate_synthetic
from quantunlearn.evaluation import metrics as metrics_table
from quantunlearn.evaluation.cell import CellJob, evaluate_cell
from quantunlearn.models.loading import load_model
from quantunlearn.models.training import IGNORE
from quantunlearn.quantizers import Quantizer, parse_quantizer, quantizer_pattern
from quantunlearn.reports.cells import build_table1, read_cells
from quantunlearn.reports.table1 import make_table1
from quantunlearn.study import ConfigError, load_study
from quantunlearn.study.schema import _config_schema
from quantunlearn.unlearning.hyperparameters import BASE_HYPER_COLUMNS
from quantunlearn.unlearning.loop import UnlearnJob, unlearn
from quantunlearn.unlearning.methods import METHODS, Method
from quantunlearn.unlearning.objectives import GDR, Term

MICRO = yaml.safe_load((ROOT / "tests" / "configs" / "micro.yaml").read_text())


@pytest.fixture(autouse=True)
def fresh_schema():
    """The schema is built once from the tables: rebuild it around each added row."""
    _config_schema.cache_clear()
    yield
    _config_schema.cache_clear()


# --------------------------------------------------------------------------- (a) a method


class MaximumEntropy(Term):
    """ME (Yuan et al., "A Closer Look at Machine Unlearning for Large Language Models", ICLR
    2025): pull the model's next-token distribution on every forget token towards uniform,
    L = mean over counted positions of KL(p_theta(.|x_<t) || U)."""

    def loss(self, step, run):
        logits = step.forget_logits[:, :-1].float()
        mask = step.forget["labels"][:, 1:] != IGNORE
        logp = torch.log_softmax(logits, dim=-1)
        kl = (logp.exp() * (logp + torch.log(torch.tensor(float(logits.shape[-1]))))).sum(-1)
        return (kl * mask).sum() / mask.sum().clamp(min=1)


def test_a_new_method_is_an_objective_and_a_row(monkeypatch, tiny_model_dir, corpora, tmp_path):
    monkeypatch.setitem(METHODS, "ME_GDR", Method("ME_GDR", MaximumEntropy(), GDR()))
    # the config takes it, with the keys of its terms; the grid gives it a run path
    config = {**MICRO, "unlearn": {**MICRO["unlearn"], "methods": {"ME_GDR": {"alpha": [1, 2]}}}}
    study = load_study(config)
    runs = study.runs[study.runs.method == "ME_GDR"]["run"].tolist()
    assert runs[0].startswith("method~ME_GDR/weight_dtype~") and "/alpha~2/" in runs[1]
    bad = {**config, "unlearn": {**config["unlearn"], "methods": {"ME_GDR": {"beta": 0.1}}}}
    with pytest.raises(ValueError, match="unlearn.methods.ME_GDR.beta: ME_GDR has no beta"):
        load_study(bad)
    # the loop trains it, within its scope, and logs its terms
    forget, retain = corpora
    out = tmp_path / "me"
    info = unlearn(str(tiny_model_dir), forget, retain, out, tmp_path / "log.parquet",
                   job=UnlearnJob.of("ME_GDR", TINY_RUN,
                                     {"batch_size": 2, "max_len": 64}))  # fmt: skip
    before, after = load_model(str(tiny_model_dir)), load_model(str(out))
    moved = [n for (n, p), (_, q) in zip(before.named_parameters(), after.named_parameters(),
                                         strict=True) if not torch.equal(p, q)]  # fmt: skip
    assert moved and set(moved) <= set(info["trained_parameters"])
    log = pd.read_parquet(tmp_path / "log.parquet")
    assert {"forget_loss", "retain_loss"} <= set(log.columns)


# --------------------------------------------------------------------------- (b) a quantizer


@dataclass(frozen=True)
class Truncate(Quantizer):
    """trunc_w{N}: eq. 2 of Zhang et al. with the rounding replaced by truncation towards zero."""

    PATTERN: ClassVar[str] = r"trunc_w[2-8]"
    SYNTAX: ClassVar[str] = "trunc_w{N}"
    EXAMPLE: ClassVar[str] = "trunc_w4"

    @classmethod
    def parse(cls, name):
        match = re.fullmatch(r"trunc_w(\d)", name)
        if not match:
            return None
        bits = int(match.group(1))
        if not 2 <= bits <= 8:
            raise ValueError(f"unknown quantizer {name!r}: trunc_w{{N}} takes N in 2..8")
        return cls(name, bits)

    def quantize_weight(self, weight, name, n_layers):
        levels = 2 ** (self.bits - 1)
        step = weight.detach().float().abs().amax(dim=1, keepdim=True) / levels
        codes = torch.trunc(weight.detach().float() / step.clamp_min(1e-12))
        return codes.clamp(-levels, levels - 1) * step


@pytest.fixture
def bench(tmp_path):
    """A small embedded benchmark and PrivLeak's reference AUC, as the rules hand them over."""
    generate_synthetic(tmp_path / "bench", n_people=40, n_retain_qa_people=4, n_icl=2)
    auc = tmp_path / "auc.json"
    auc.write_text(json.dumps({"auc_retrain": 0.5}))
    return tmp_path / "bench", auc


EVALUATION = {"verbmem_max_new_tokens": 8, "knowmem_max_new_tokens": 4, "mink_k": 0.4,
              "batch_size": 16, "max_length": 128}  # fmt: skip
CELL = {"benchmark": "b", "run": "method~target", "method": "target",
        **dict.fromkeys(BASE_HYPER_COLUMNS)}  # fmt: skip


def test_a_new_quantizer_is_a_module_and_a_row(monkeypatch, tiny_model_dir, bench, tmp_path):
    monkeypatch.setattr(quantizers_table, "QUANTIZERS", (*quantizers_table.QUANTIZERS, Truncate))
    quantizer = parse_quantizer("trunc_w4")
    assert isinstance(quantizer, Truncate) and re.fullmatch(quantizer_pattern(), "trunc_w4")
    with pytest.raises(ValueError, match="trunc_w9"):
        parse_quantizer("trunc_w9")
    study = load_study({**MICRO, "quantizers": ["none", "trunc_w4"]})
    assert "trunc_w4" in {c.quant for c in study.cells()}
    # fake quantization: the model holds its effective weights, and they are truncated
    model = quantizer.load(str(tiny_model_dir))
    original = load_model(str(tiny_model_dir))
    for name, weight in quantizer.effective_weights(model).items():
        w = original.get_submodule(name).weight
        assert (weight.abs() <= w.abs() + 1e-7).all() and not torch.equal(weight, w)
    cell = CellJob(CELL, "trunc_w4", {"quant": "trunc_w4"}, str(tiny_model_dir),
                   evaluation=EVALUATION)  # fmt: skip
    frame = evaluate_cell(cell, *bench, tmp_path / "m.parquet", tmp_path / "r.parquet")
    assert set(frame["quant"]) == {"trunc_w4"} and frame["value"].notna().all()


# --------------------------------------------------------------------------- (c) a metric


def knowmem_f_exact(ctx):
    """Share (x 100) of forget questions answered exactly (case and outer spaces ignored): a
    stricter KnowMem than ROUGE-L."""
    from quantunlearn.evaluation.muse_metrics import knowmem

    bench, ev = ctx.benchmark, ctx.evaluation
    _, records = knowmem(ctx.model, ctx.tokenizer, bench.knowmem_forget_qa,
                         bench.knowmem_forget_icl, ev["knowmem_max_new_tokens"],
                         ev["batch_size"], metric="knowmem_f_exact")  # fmt: skip
    for r in records:
        r["score"] = 100.0 * (r["output"].strip().lower() == r["reference"].strip().lower())
    return sum(r["score"] for r in records) / len(records), len(records), records


def test_a_new_metric_is_a_function_and_a_row(monkeypatch, tiny_model_dir, bench, tmp_path):
    row = metrics_table.Metric("knowmem_f_exact", "KnowMem_f EM", "lower", knowmem_f_exact)
    monkeypatch.setattr(metrics_table, "METRICS", (*metrics_table.METRICS, row))
    monkeypatch.setitem(metrics_table.BY_NAME, row.name, row)
    out = tmp_path / "m.parquet"
    cell = CellJob(CELL, "none", {}, str(tiny_model_dir), evaluation=EVALUATION)
    evaluate_cell(cell, *bench, out, tmp_path / "r.parquet")
    records = pd.read_parquet(tmp_path / "r.parquet")
    assert (records["metric"] == "knowmem_f_exact").sum() == 4 * 8  # 4 forget people x 8 facts
    table = build_table1(read_cells([out]), ["none"])
    assert "knowmem_f_exact" in table.columns
    make_table1([out], tmp_path / "tables", ["none"])
    assert "KnowMem_f EM ↓" in (tmp_path / "tables" / "table1.md").read_text()


# --------------------------------------------------------------------------- (d) a benchmark kind
# What docs/extending.md (d) has the reader write: the module src/quantunlearn/data/qa_corpus.py
# (QA_SPLITS, write_qa_benchmark, qa_corpus_problems, is_qa_corpus) and its row in BENCHMARKS
# (QA_CORPUS, in src/quantunlearn/data/benchmarks.py).

QA_SPLITS = ("forget", "retain", "holdout")


def write_qa_benchmark(source, out_dir, n_icl: int = 2) -> None:
    """Convert ``source`` ({"documents": [{"split", "text"}], "qa": [{"split", "question",
    "answer"}]}) into a MUSE-layout folder ``out_dir``."""
    from quantunlearn.data.muse import (
        LAYOUT_VERSION,
        load_benchmark,
        write_documents,
        write_json_file,
    )
    from quantunlearn.io import atomic_dir

    data = json.loads(Path(source).read_text(encoding="utf-8"))
    docs = {s: [d["text"] for d in data["documents"] if d["split"] == s] for s in QA_SPLITS}
    qa = {s: [] for s in QA_SPLITS}
    for q in data["qa"]:
        qa[q["split"]].append({"question": q["question"], "answer": q["answer"]})
    icl, retain_qa = qa["retain"][:n_icl], qa["retain"][n_icl:]  # examples are never evaluated
    with atomic_dir(out_dir) as tmp:  # renamed into place only when complete
        for split in QA_SPLITS:
            write_documents(tmp / "raw" / f"{split}.txt", docs[split])
            write_json_file(tmp / "privleak" / f"{split}.json", docs[split])
        verbmem = []
        for text in docs["forget"]:  # the first half of a document prompts, the rest is the truth
            words = text.split()
            half = len(words) // 2
            verbmem.append({"prompt": " ".join(words[:half]) + " ", "gt": " ".join(words[half:])})
        write_json_file(tmp / "verbmem" / "forget.json", verbmem)
        write_json_file(tmp / "knowmem" / "forget_qa.json", qa["forget"])
        write_json_file(tmp / "knowmem" / "retain_qa.json", retain_qa)
        for split in ("forget", "retain"):
            write_json_file(tmp / "knowmem" / f"{split}_qa_icl.json", icl)
        write_json_file(
            tmp / "meta.json", {"benchmark": str(source), "layout_version": LAYOUT_VERSION}
        )
        load_benchmark(tmp)  # every evaluation file present and well-formed


def qa_corpus_problems(entry: dict, n_icl: int = 2) -> list[tuple[str, str]]:
    """Parse time, before any job: the source is the corpus JSON, every item names a split, every
    split has documents, and there are more retain questions than in-context examples."""
    try:
        data = json.loads(Path(entry["source"]).read_text(encoding="utf-8"))
        parts = {part: list(data[part]) for part in ("documents", "qa")}
    except (OSError, ValueError, TypeError, KeyError) as err:
        return [("source", f"not a corpus of documents and qa pairs: {err!r}")]
    problems = [
        ("source", f"{part}[{i}].split: {item.get('split')!r} is not one of {list(QA_SPLITS)}")
        for part, items in parts.items()
        for i, item in enumerate(items)
        if item.get("split") not in QA_SPLITS
    ]
    empty = [s for s in QA_SPLITS if not any(d.get("split") == s for d in parts["documents"])]
    if empty:
        problems.append(("source", f"no documents in the split(s) {empty}"))
    if sum(q.get("split") == "retain" for q in parts["qa"]) <= n_icl:
        problems.append(("source", f"needs more than n_icl={n_icl} retain qa pairs"))
    return problems


def is_qa_corpus(source: str) -> bool:
    """A local source of the row: a JSON file (a folder is the MUSE row's)."""
    return Path(source).suffix == ".json" and Path(source).is_file()


# the row: of the MUSE layout (its references, metrics and unlearning data follow from it)
QA_CORPUS = MuseKind(
    "qa_corpus",
    "a JSON file of documents and question-answer pairs, converted to the MUSE layout",
    lambda entry, out, snapshot: write_qa_benchmark(entry["source"], out),
    qa_corpus_problems,
    recognise=is_qa_corpus,
)


def qa_corpus(n_forget: int = 3) -> dict:
    """A small corpus in the walk-through's format: one document and one question per person."""
    people = [(f"Person{i}", f"Town{i}") for i in range(n_forget + 6)]
    splits = ["forget"] * n_forget + ["retain"] * 4 + ["holdout"] * 2
    documents = [
        {"split": s, "text": f"{name} was born in {town} and has lived there ever since."}
        for (name, town), s in zip(people, splits, strict=True)
    ]
    qa = [
        {"split": s, "question": f"Where was {name} born?", "answer": town}
        for (name, town), s in zip(people, splits, strict=True)
        if s != "holdout"
    ]
    return {"documents": documents, "qa": qa}


def test_a_new_benchmark_kind_is_a_module_and_a_row(monkeypatch, tmp_path):
    monkeypatch.setattr(benchmarks_table, "BENCHMARKS", (*benchmarks_table.BENCHMARKS, QA_CORPUS))
    monkeypatch.setitem(benchmarks_table.BY_NAME, QA_CORPUS.name, QA_CORPUS)
    source = tmp_path / "my_qa.json"
    source.write_text(json.dumps(qa_corpus()))
    # the config takes a benchmark whose source the row recognises; the MUSE layout's defaults
    config = {**MICRO, "results_dir": str(tmp_path / "results"),
              "benchmarks": {"my_qa": {"source": str(source)}}}  # fmt: skip
    study = load_study(config)
    entry = study.config["benchmarks"]["my_qa"]
    assert benchmark_kind(entry) is QA_CORPUS and entry["forget_corpus"] == "raw/forget.txt"
    # the grid follows from its layout: MUSE's references (target and retrain), one run per
    # method and hyperparameters for the whole forget set (no RWKU targets)
    runs = study.runs[study.runs.benchmark == "my_qa"]
    assert {"method~target", "method~retrain"} <= set(runs.run)
    assert runs.subject.isna().all() and {"GA_GDR", "NPO_KLR"} <= set(runs.method)
    # a bad entry fails at parse time, naming the key (the layout's own checks hold as well)
    broken = qa_corpus()
    broken["qa"][1]["split"] = "forgot"
    source.write_text(json.dumps(broken))
    with pytest.raises(ConfigError, match=r"benchmarks\.my_qa\.source: qa\[1\]\.split: 'forgot'"):
        load_study(config)
    source.write_text(json.dumps(qa_corpus()))
    both = {"source": str(source), "targets": 2}
    with pytest.raises(ConfigError, match=r"benchmarks\.my_qa\.targets: only an RWKU-layout"):
        load_study({**config, "benchmarks": {"my_qa": both}})
    # the prepare_benchmark job's call writes a folder the MUSE loaders read
    out = tmp_path / "data" / "my_qa"
    QA_CORPUS.prepare(entry, out, None)
    bench = QA_CORPUS.load(out)
    assert [q["answer"] for q in bench.knowmem_forget_qa] == ["Town0", "Town1", "Town2"]
    assert len(bench.knowmem_retain_qa) == 2 and len(bench.privleak_holdout) == 2
    forget, retain = QA_CORPUS.corpora(out, entry)
    assert len(forget.texts()) == 3 and len(retain.texts()) == 4


# --------------------------------------------------------------------------- (e) a report

SPREAD_FILES = ("spread.md", "spread.csv", "spread.parquet")


def spread_applies(study):
    """A study with a MUSE-layout benchmark (KnowMem_f is a MUSE metric)."""
    from quantunlearn.reports.cell_files import MUSE, layouts

    return MUSE in layouts(study)


def spread_needs(study):
    """The metric files of every MUSE-layout cell."""
    from quantunlearn.reports.cell_files import MUSE, layout_metric_files

    return {"metrics": layout_metric_files(study, MUSE)}


def spread_make(study, inputs, out_dir):
    """spread.{md,csv,parquet}: per (benchmark, run), KnowMem_f's range over the quantizers."""
    from pathlib import Path

    from quantunlearn.reports.render import to_markdown, write_frames, write_text

    table = build_table1(read_cells(inputs["metrics"]), study.quantizers)
    by_run = table.groupby(["benchmark", "method", "run"], sort=False)["knowmem_f"]
    spread = (by_run.max() - by_run.min()).rename("spread").reset_index()
    write_frames(spread, Path(out_dir) / "spread")
    text = to_markdown(spread, {"method": "Method", "spread": "KnowMem_f range"})
    write_text(Path(out_dir) / "spread.md", "# KnowMem_f over the quantizers\n\n" + text)


def parsed_workflow(config: dict, workdir):
    """The workflow of the Snakefile for ``config``, parsed in this process (so that it sees
    the rows added to the tables here); nothing runs."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings()) as api:
        api_workflow = api.workflow(
            snakefile=ROOT / "Snakefile",
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(config=config),
            workdir=workdir,
        )
        return api_workflow._workflow


def test_a_new_report_is_a_module_and_a_row(monkeypatch, tiny_model_dir, bench, tmp_path):
    from quantunlearn.reports import registry

    row = registry.Report("spread", SPREAD_FILES, spread_applies, spread_needs, spread_make)
    monkeypatch.setattr(registry, "REPORTS", (*registry.REPORTS, row))
    monkeypatch.setitem(registry.BY_NAME, row.name, row)
    monkeypatch.chdir(tmp_path)  # the workflow's working directory (results/)
    study = load_study(MICRO)
    assert row.applies(study) and row.all_files(study) == SPREAD_FILES
    cells = [(c.benchmark, c.run, c.quant) for c in study.cells()]
    assert row.needs(study) == {"metrics": [study.metric_file(*c) for c in cells]}
    # the workflow generates its rule: the row's inputs, its files, in the all_tables target
    workflow = parsed_workflow(MICRO, tmp_path)
    rule = workflow.get_rule("spread")
    assert (
        list(rule.input.keys()) == ["metrics"] and list(rule.input) == row.needs(study)["metrics"]
    )
    outputs = [f"results/tables/{file}" for file in SPREAD_FILES]
    assert list(rule.output) == outputs and list(rule.params.keys()) == ["report"]
    assert set(outputs) <= set(workflow.get_rule("all_tables").input)
    # its make (what the rule's script calls) on real metric files: the target's two cells
    files = []
    for quant in ("none", "rtn_w4"):
        files.append(study.metric_file("micro", "method~target", quant))
        cell = CellJob({**CELL, "benchmark": "micro"}, quant, {"quant": quant},
                       str(tiny_model_dir), evaluation=EVALUATION)  # fmt: skip
        evaluate_cell(cell, *bench, files[-1], tmp_path / f"{quant}.r")
    row.make(study, {"metrics": files}, study.tables)
    knowmem = read_cells(files).query("metric == 'knowmem_f'").set_index("quant")["value"]
    spread = pd.read_parquet(study.tables / "spread.parquet")
    assert spread["spread"].tolist() == [pytest.approx(abs(knowmem["none"] - knowmem["rtn_w4"]))]
    assert "KnowMem_f range" in (study.tables / "spread.md").read_text()
