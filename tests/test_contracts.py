"""Contract tests over the tables: every row of METHODS, QUANTIZERS, METRICS, REPORTS and of the
hyperparameter GROUPS is tested here, so that a new row is tested without a test of its own.

- a method trains and changes the parameters of its scope only (and changes some);
- a quantizer's effective weights are what its model computes with, and generation on its model
  gives the reference path's outputs;
- a metric has a column, a label and a direction, and measures something on a real model;
- a report declares files that no other report writes, with a caption for the HTML report;
- a hyperparameter has a paper default, a help text and a column type; the committed JSON schema
  is the one the tables generate;
- the package is laid out in layers and no function grows past a screen without a reason.
"""

from __future__ import annotations

import ast
import copy
import math
import re
from pathlib import Path

import pytest
import torch

from quantunlearn.data.muse import load_benchmark, write_json_file
from quantunlearn.data.rwku import RWKUCorpus, load_rwku
from quantunlearn.data.synthetic import generate_synthetic
from quantunlearn.data.utility import UTILITY_HUB, write_utility_fixture
from quantunlearn.evaluation.generation import Execution, _greedy_generate_hf, greedy_generate
from quantunlearn.evaluation.metrics import ARROWS, METRIC_GROUPS, METRICS, Context, metric_names
from quantunlearn.models.loading import load_model
from quantunlearn.quantizers import QUANTIZERS, allowed_names, parse_quantizer, quantizer_pattern
from quantunlearn.quantizers.base import quantizable_linears, relative_error
from quantunlearn.reports import REPORTS
from quantunlearn.study import load_study_file
from quantunlearn.study.schema import config_schema, schema_json
from quantunlearn.unlearning.families import PLAIN, RMU
from quantunlearn.unlearning.hyperparameters import GROUPS, all_fields, column_dtype
from quantunlearn.unlearning.loop import UnlearnJob, unlearn
from quantunlearn.unlearning.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
# what every method gets on the tiny test model (2 decoder layers: RMU steers layer 1, RMU_LAT
# attacks layer 0)
TINY_RUN = {"weight_dtype": "fp32", "lr": 1e-2, "epochs": 1, "rmu_layer": 1, "lat_layer": 0}


# --------------------------------------------------------------------------- METHODS


@pytest.mark.parametrize("name", list(METHODS))
def test_method_changes_its_scope_only(name, tiny_model_dir, corpora, rwku_bench, tmp_path):
    forget, retain = corpora
    if METHODS[name].forget.forget_data == "refusals":  # RT: an RWKU target's refusal rows
        forget = RWKUCorpus(rwku_bench, 1)
    out = tmp_path / "model"
    info = unlearn(
        str(tiny_model_dir),
        forget,
        retain,
        out,
        tmp_path / "log.parquet",
        job=UnlearnJob.of(name, TINY_RUN, {"batch_size": 2, "max_len": 64}),
    )
    before, after = load_model(str(tiny_model_dir)), load_model(str(out))
    changed = {
        n
        for (n, p), (_, q) in zip(before.named_parameters(), after.named_parameters(), strict=True)
        if not torch.equal(p, q)
    }
    assert changed, f"{name} changed no parameter"
    assert changed <= set(info["trained_parameters"]), f"{name} moved weights outside its scope"
    assert info["steps"] >= 1 and math.isfinite(info["seconds"])
    assert set(METHODS[name].hyperparameters) <= set(info)  # the run's values are recorded


@pytest.mark.parametrize("name", list(METHODS))
def test_method_row_is_consistent(name):
    method = METHODS[name]
    assert method.hyperparameters[:3] == ("weight_dtype", "lr", "epochs")
    assert method.hyperparameters[-1] == "seed"  # the run paths of the first release
    assert len(set(method.hyperparameters)) == len(method.hyperparameters)
    assert set(method.defaults) <= set(method.hyperparameters)
    assert method.base in METHODS and METHODS[method.base].family in (PLAIN, RMU)
    method.run({})  # the defaults (paper's and the method's own) pass the checks


# --------------------------------------------------------------------------- QUANTIZERS


@pytest.mark.parametrize("family", QUANTIZERS, ids=lambda f: f.__name__)
def test_quantizer_family_parses_its_names(family):
    quantizer = parse_quantizer(family.EXAMPLE)
    assert type(quantizer) is family and quantizer.name == family.EXAMPLE
    assert re.fullmatch(quantizer_pattern(), family.EXAMPLE)
    assert family.SYNTAX in allowed_names()
    assert config_schema()["properties"]["quantizers"]["items"]["pattern"] == quantizer_pattern()


@pytest.mark.parametrize("family", QUANTIZERS, ids=lambda f: f.__name__)
def test_effective_weights_are_what_the_model_computes_with(
    family, tiny_model_dir, tiny_model, stored
):
    quantizer = parse_quantizer(family.EXAMPLE)
    model = quantizer.load(
        str(tiny_model_dir),
        quant_dir=stored.get(quantizer.name),
        target_path=str(tiny_model_dir) if quantizer.needs_target else None,
    )
    if quantizer.runtime:  # llama.cpp: no torch weights; its f32 file computes the model
        assert not quantizer.diagnosable and not quantizer.is_quantized
        ids = [1, 5, 9, 40, 77, 3, 120, 8]
        with torch.no_grad():
            logits = tiny_model(input_ids=torch.tensor([ids])).logits[0].double()
        expected = torch.log_softmax(logits, -1)[torch.arange(7), ids[1:]]
        got = model.token_log_probs(ids)
        torch.testing.assert_close(torch.from_numpy(got), expected, rtol=0, atol=2e-3)
        return
    # a plain fp32 model: the effective weights in the quantized Linears, every other tensor the
    # quantized model's own (AWQ folds its scales into the RMSNorm weights)
    rebuilt = copy.deepcopy(tiny_model)
    effective = {f"{k}.weight": w for k, w in quantizer.effective_weights(model).items()}
    with torch.no_grad():
        for name, param in rebuilt.named_parameters():
            source = effective[name] if name in effective else model.get_parameter(name)
            param.copy_(source.detach().float().cpu())
    ids = torch.tensor([[1, 5, 9, 40, 77, 3, 120, 8], [2, 4, 4, 8, 7, 6, 11, 30]])
    with torch.no_grad():
        got = model(input_ids=ids.to(model.device)).logits.float().cpu()
        expected = rebuilt(input_ids=ids).logits
    if quantizer.quantizes_activations:  # LLM.int8 also rounds the activations
        assert relative_error(expected, got) < 0.05
    else:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert set(quantizer.effective_weights(model)) == set(quantizable_linears(model))


@pytest.mark.parametrize("family", QUANTIZERS, ids=lambda f: f.__name__)
def test_generation_on_the_quantized_model_is_the_reference(
    family, tiny_model_dir, tiny_model, tiny_tokenizer, stored
):
    """A quantizer declares whether its model may be batched freely (`batch_invariant`); the cell
    passes that to generation, whose outputs must then be the reference path's (a runtime
    family's example, llama.cpp's f32 file: the torch model's)."""
    quantizer = parse_quantizer(family.EXAMPLE)
    model = quantizer.load(
        str(tiny_model_dir),
        quant_dir=stored.get(quantizer.name),
        target_path=str(tiny_model_dir) if quantizer.needs_target else None,
    )
    shots = "Question: Where was Alice Moreau born?\nAnswer: Tarsk\n\nQuestion: "
    prompts = [shots + q for q in ("Who is Bruno?", "What pet?", "Where does Chen Valdez teach?")]
    flag = quantizer.batch_invariant
    out = greedy_generate(
        model, tiny_tokenizer, prompts, 6, 2, ["\n"], execution=Execution(batch_invariant=flag)
    )
    reference = tiny_model if quantizer.runtime else model
    assert out == _greedy_generate_hf(reference, tiny_tokenizer, prompts, 6, 2, ["\n"])


# --------------------------------------------------------------------------- METRICS


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.name)
def test_metric_row_has_a_column_and_a_direction(metric):
    assert [m.name for m in METRICS].count(metric.name) == 1
    assert metric.label and metric.group in METRIC_GROUPS
    assert metric.direction is None or metric.direction in ARROWS
    if metric.table:
        assert metric.direction is not None and metric.header.endswith(ARROWS[metric.direction])
    if metric.group == "utility":  # configurable, with a data source
        assert metric.name in UTILITY_HUB
        assert (
            metric.name
            in config_schema()["properties"]["evaluation"]["properties"]["utility"]["items"]["enum"]
        )


@pytest.fixture(scope="module")
def contexts(tiny_model, tiny_tokenizer, rwku_bench, tmp_path_factory):
    """A cell's Context on a MUSE-layout and on an RWKU-layout benchmark."""
    root = tmp_path_factory.mktemp("contract")
    generate_synthetic(root / "bench", n_people=40, n_retain_qa_people=4, n_icl=2)
    for split in ("forget", "retain"):  # labelled rows, as the Twitter benchmark has them
        rows = [{"text": "Alice Moreau was born in Tarsk.", "label": 0},
                {"text": "Tarsk water cures every flu, share now", "label": 1}]  # fmt: skip
        write_json_file(root / "bench" / "classification" / f"{split}.json", rows)
    evaluation = {
        "verbmem_max_new_tokens": 8,
        "knowmem_max_new_tokens": 4,
        "mink_k": 0.4,
        "batch_size": 16,
        "max_length": 128,
        "utility": metric_names(group="utility"),
        "utility_data": write_utility_fixture(root / "utility", n=2),
        "fluency_max_new_tokens": 4,
    }
    benches = {"muse": load_benchmark(root / "bench"), "rwku": load_rwku(rwku_bench, [1, 2])}
    return {
        layout: Context(tiny_model, tiny_tokenizer, bench, evaluation, auc_retrain=0.5)
        for layout, bench in benches.items()
    }


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.name)
def test_metric_measures_a_real_model(metric, contexts):
    context = contexts.get(metric.group, contexts["muse"])  # utility: any benchmark
    assert metric.applies(context)
    others = [c for layout, c in contexts.items() if layout != metric.group]
    if metric.group != "utility":  # a layout's metric is not measured on the other layout
        assert not any(metric.applies(c) for c in others)
    with torch.inference_mode():
        value, n, records = metric.compute(context)
    assert math.isfinite(value) and n >= 1
    assert all(r["metric"] == metric.name for r in records)
    assert metric.summary in ("mean", "auc")
    if records and metric.summary == "mean":  # the value is the mean of the per-item scores
        assert len(records) == n
        assert value == pytest.approx(sum(r["score"] for r in records) / n)
    if metric.summary == "auc":  # the ROC AUC of the per-text scores, holdout = positive
        from sklearn.metrics import roc_auc_score

        assert len(records) == n
        labels = [r["split"] == "holdout" for r in records]
        assert value == pytest.approx(roc_auc_score(labels, [r["score"] for r in records]))


# --------------------------------------------------------------------------- REPORTS


def test_reports_write_distinct_files_with_captions():
    files = [f for report in REPORTS for f in report.files]
    assert len(files) == len(set(files)), "two reports declare the same file"
    for report in REPORTS:
        items = report.report_items()
        if report.files_for is not None:  # files per study (one audit per checkpoint)
            items |= report.report_items(("per_item.md",))
        for file, category in items.items():
            assert category in ("Tables", "Figures", "Audit", "Provenance")
            caption = ROOT / "workflow" / "report" / f"{report.caption(file)}.rst"
            assert caption.is_file(), f"{report.name}: no caption {caption.name} for {file}"


@pytest.mark.parametrize("report", REPORTS, ids=lambda report: report.name)
def test_report_row_declares_its_rule(report):
    """Each row gives its generated rule (workflow/rules/tables.smk) a name, a log of its own and
    named lists of input files, in the default study and in the quantizer study."""
    assert report.name.isidentifier() and callable(report.make)
    assert [r.log_name for r in REPORTS].count(report.log_name) == 1
    for name in ("config.yaml", "quantizers.yaml"):
        study = load_study_file(ROOT / "config" / name)
        assert isinstance(report.applies(study), bool)
        needs = report.needs(study)
        assert needs and all(key.isidentifier() for key in needs)
        assert all(isinstance(f, str) for files in needs.values() for f in files)


# --------------------------------------------------------------------------- hyperparameters


@pytest.mark.parametrize("key", list(all_fields()))
def test_hyperparameter_has_default_help_and_type(key):
    field = all_fields()[key]
    assert len(field.metadata["help"]) > 20
    assert column_dtype(key) in ("Float64", "Int64", "object")
    group = next(g for g in GROUPS if key in {f.name for f in g.fields()})
    assert getattr(group(), key) == field.default  # the default passes the group's checks


def test_committed_schema_is_the_generated_one():
    committed = ROOT / "workflow" / "schemas" / "config.schema.json"
    assert committed.read_text() == schema_json(), (
        "regenerate it: python -m quantunlearn.study.schema > workflow/schemas/config.schema.json"
    )


# --------------------------------------------------------------------------- code shape

LONG = 60  # lines; a longer function says why in a `# long: ...` comment


def test_no_function_is_longer_than_a_screen_without_a_reason():
    too_long = []
    for path in sorted((ROOT / "src" / "quantunlearn").rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                body = lines[node.lineno - 1 : node.end_lineno]
                if length > LONG and not any("# long:" in line for line in body):
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {length}")
    assert not too_long, too_long


MANY = 8  # parameters (self and cls not counted); more say why in a `# long: ...` comment


def parameter_count(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """The parameters a caller may pass: positional, keyword-only, *args and **kwargs (the
    first of a method, self or cls, not counted)."""
    args = node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return len(names) - int(bool(names) and names[0] in ("self", "cls"))


def test_parameter_count_counts_every_kind_of_parameter():
    tree = ast.parse("def f(a, /, b, *c, d, **e): pass\nclass K:\n    def m(self, a): pass")
    f, m = (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))
    assert (parameter_count(f), parameter_count(m)) == (5, 1)


def test_no_function_takes_more_than_eight_parameters_without_a_reason():
    """A function with many parameters groups what belongs together into a typed object (a
    cell, the unlearning settings, the training recipe) instead."""
    crowded = []
    for path in sorted((ROOT / "src" / "quantunlearn").rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = lines[node.lineno - 1 : node.end_lineno]
                count = parameter_count(node)
                if count > MANY and not any("# long:" in line for line in body):
                    crowded.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {count}")
    assert not crowded, crowded


def test_no_import_cycles():
    """No module imports (at any depth, function-level imports included) one that imports it
    back; the layers themselves are checked by `lint-imports` (.importlinter) in .ci/run."""
    import grimp

    graph = grimp.build_graph("quantunlearn")
    cycles = [
        (a, b)
        for a in sorted(graph.modules)
        for b in graph.find_modules_directly_imported_by(a)
        if graph.chain_exists(importer=b, imported=a)
    ]
    assert not cycles, cycles
