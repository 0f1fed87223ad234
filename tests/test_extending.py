"""The walk-throughs of docs/extending.md, done for real with throwaway rows: a new method is an
objective (a Term) plus one METHODS row, a new load-time quantizer is a module (a Quantizer)
plus one QUANTIZERS entry, a new metric is a function plus one METRICS row; each then works in
the config, the grid, the jobs and the tables without any other change."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd
import pytest
import torch
import yaml
from test_contracts import ROOT, TINY_RUN

import quantunlearn.quantizers as quantizers_table
from quantunlearn.data.synthetic import generate_synthetic
from quantunlearn.evaluation import metrics as metrics_table
from quantunlearn.evaluation.cell import CellJob, evaluate_cell
from quantunlearn.models.loading import load_model
from quantunlearn.models.training import IGNORE
from quantunlearn.quantizers import Quantizer, parse_quantizer, quantizer_pattern
from quantunlearn.reports.cells import build_table1, read_cells
from quantunlearn.reports.table1 import make_table1
from quantunlearn.study import load_study
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
