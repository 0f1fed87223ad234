"""Config validation at parse time, and the grid of runs."""

import pickle
import re
from pathlib import Path

import pytest
import yaml

from quantunlearn.io import config_hash
from quantunlearn.study import load_study, load_study_file
from quantunlearn.study.config import ConfigError
from quantunlearn.study.runs import PLAIN_TRAINING, training_tag, unlearned_here

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "config" / "config.yaml"


def _config(**changes) -> dict:
    config = yaml.safe_load(DEFAULT.read_text())
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    return config


def test_default_config_grid():
    study = load_study_file(DEFAULT)
    runs = study.runs
    assert len(runs) == 2 + 1 * 2  # target, retrain, NPO_GDR x two weight dtypes
    assert set(runs.method) == {"target", "retrain", "NPO_GDR"}
    npo_gdr = "method~NPO_GDR/weight_dtype~bf16/lr~1e-05/epochs~64/alpha~1/beta~0.1/"
    # the papers' batch of 2 is not PLAIN_TRAINING: the run's path ends in its train~ tag
    run = npo_gdr + f"npo_klr_form~paper/seed~0/train~{training_tag(study.config, 'bf16')}"
    assert run in set(runs.run)
    assert len(study.cells()) == len(runs) * len(study.quantizers)
    params = study.run("synthetic", run).params
    assert params["lr"] == 1e-05 and isinstance(params["lr"], float)
    assert params["alpha"] == 1.0 and isinstance(params["alpha"], float) and params["beta"] == 0.1
    assert isinstance(params["epochs"], int) and params["epochs"] == 64
    typed = study.run("synthetic", run).typed  # the job's typed groups, from the same values
    assert (typed.method.name, typed.lr, typed.epochs) == ("NPO_GDR", 1e-05, 64)
    with pytest.raises(ConfigError, match="method~GA' of benchmark 'synthetic' is not in"):
        study.run("synthetic", "method~GA")
    assert study.cell_config("synthetic", run)["unlearn"]["batch_size"] == 2  # the papers' batch


def test_jobs_get_typed_runs_and_cells_they_can_unpickle():
    """Snakemake pickles a rule's params into the job's script: the typed Run and CellJob are
    plain values, and a cell's job carries exactly the cell's config and the run's parameters."""
    from quantunlearn.study.jobs import cell_job, diagnostic_job

    study = load_study_file(DEFAULT)
    run = next(r for r in study.all_runs if r.unlearned)
    assert pickle.loads(pickle.dumps(run)) == run and study.run(run.benchmark, run.path) is run
    job = cell_job(study, run.benchmark, run.path, "rtn_w4")
    assert pickle.loads(pickle.dumps(job)) == job
    assert job.cell_config == study.cell_config(run.benchmark, run.path, "rtn_w4")
    assert job.params == run.params and job.kind == study.kind(run.benchmark).name
    assert job.model == study.model_path(run.benchmark, run.path) and job.model.endswith("/model")
    assert job.target == study.model_path(run.benchmark, "method~target")
    diagnostic = diagnostic_job(study, run.benchmark, run.path, "rtn_w4")
    assert diagnostic.data_source is None and diagnostic.tokenizer is None
    bench = study.bench(run.benchmark)
    assert study.kind(run.benchmark) is bench.kind and study.benchmark(bench.name) is bench.entry


def test_yaml_exponent_trap_is_converted():
    # PyYAML (YAML 1.1) reads 1e-5 without a dot as the *string* "1e-5"
    text = DEFAULT.read_text().replace("lr: 1.0e-5", "lr: [1e-5, 3e-5]")
    loaded = yaml.safe_load(text)
    assert loaded["unlearn"]["common"]["lr"] == ["1e-5", "3e-5"]
    lrs = sorted(set(load_study(loaded).runs.lr.dropna()))
    assert lrs == [1e-5, 3e-5]


@pytest.mark.parametrize(
    ("changes", "key", "why"),
    [
        ({"unlearn.common.lr": "fast"}, "unlearn.common.lr", "not a number"),
        ({"unlearn.common.lr": -1e-5}, "unlearn.common.lr", "must be > 0"),
        ({"unlearn.methods": {"GA_XYZ": {}}}, "unlearn.methods.GA_XYZ", "unknown method"),
        ({"quantizers": ["none", "bnb_int3"]}, "quantizers[1]", "bitsandbytes"),
        ({"quantizers": ["none", "rtn_w9"]}, "quantizers[1]", "2"),
        ({"quantizers": ["rtn_w4"]}, "quantizers", "none"),
        (
            {"benchmarks.synthetic.source": "./no/such/folder"},
            "benchmarks.synthetic.source",
            "no folder",
        ),
        ({"unlearn.methods.GA": {"alpha": 2}}, "unlearn.methods.GA.alpha", "has no alpha"),
        ({"unlearn.common.weight_dtype": "int8"}, "unlearn.common.weight_dtype", "bf16"),
        ({"unlearn.common.epochs": 0}, "unlearn.common.epochs", ""),
        ({"unlern": {}}, "unlern", "unknown key"),
        ({"tiny_model.hidden_size": 100}, "tiny_model.hidden_size", "multiple of 128"),
        ({"benchmarks.synthetic.models": {"target": "x/y"}}, "benchmarks.synthetic.models", "both"),
    ],
)
def test_bad_configs_name_the_key(changes, key, why):
    with pytest.raises(ConfigError) as info:
        load_study(_config(**changes))
    message = str(info.value)
    assert f"config key {key}" in message
    assert why in message


def test_hub_ids_and_local_folders_are_accepted(tmp_path):
    hub = load_study(_config(**{"benchmarks.synthetic.source": "muse-bench/MUSE-News"}))
    assert hub.benchmark("synthetic")["source"] == "muse-bench/MUSE-News"
    from quantunlearn.data.synthetic import generate_synthetic

    generate_synthetic(tmp_path / "b", n_people=40, n_retain_qa_people=4, n_icl=2)
    local = load_study(_config(**{"benchmarks.synthetic.source": str(tmp_path / "b")}))
    assert local.benchmark("synthetic")["source"] == str(tmp_path / "b")


def test_cell_hash_ignores_unrelated_config_changes():
    base = load_study(_config())
    run = base.runs[base.runs.method == "NPO_GDR"].run.iloc[0]
    methods = {"NPO_GDR": {}, "GA": {}}
    grown = load_study(
        _config(**{"quantizers": ["none", "rtn_w8", "rtn_w3"], "unlearn.methods": methods})
    )
    assert config_hash(base.cell_config("synthetic", run, "none")) == config_hash(
        grown.cell_config("synthetic", run, "none")
    )
    changed = load_study(_config(**{"unlearn.batch_size": 8}))
    moved = run.split("/train~")[0] + "/train~" + training_tag(changed.config, "bf16")
    assert moved in set(changed.runs.run)
    assert config_hash(base.cell_config("synthetic", run, "none")) != config_hash(
        changed.cell_config("synthetic", moved, "none")
    )


@pytest.mark.parametrize(
    "change",
    [
        {"unlearn.batch_size": 8},
        {"unlearn.max_len": 32},
        {"unlearn.max_grad_norm": None},
        {"unlearn.lr_schedule": "cosine"},
        {"unlearn.warmup_steps": 20},
    ],
)
def test_a_setting_that_changes_the_weights_changes_every_unlearning_run_path(change):
    """Two studies that differ only in a training setting write disjoint run folders (the
    references, which they do not train, are shared)."""
    base, other = load_study(_config()), load_study(_config(**change))
    (mine, theirs), (my_refs, their_refs) = (
        [set(s.runs.run[s.runs.method.map(unlearned_here) == trained]) for s in (base, other)]
        for trained in (True, False)
    )
    assert len(mine) == len(theirs) > 0
    assert not mine & theirs
    assert my_refs == their_refs == {"method~target", "method~retrain"}


def test_bf16_compute_is_part_of_a_bf16_runs_identity_only():
    change = {"unlearn.common.weight_dtype": ["bf16", "fp32"]}
    a = load_study(_config(**change, **{"unlearn.bf16_compute": "emulated"}))
    b = load_study(_config(**change, **{"unlearn.bf16_compute": "native"}))
    for dtype, same in (("fp32", True), ("bf16", False)):
        runs_a = set(a.runs.run[a.runs.weight_dtype == dtype])
        runs_b = set(b.runs.run[b.runs.weight_dtype == dtype])
        assert (runs_a == runs_b) is same


def test_the_plain_training_settings_keep_plain_run_paths():
    """At `PLAIN_TRAINING` (the default study's settings when the train~ segment came) a run's
    path is its method and hyperparameters, as before: those cells keep their config hashes."""
    study = load_study(_config(**{f"unlearn.{k}": v for k, v in PLAIN_TRAINING.items()}))
    assert training_tag(study.config, "bf16") is None
    assert training_tag(study.config, "fp32") is None
    plain = "method~NPO_GDR/weight_dtype~bf16/lr~1e-05/epochs~64/alpha~1/beta~0.1/"
    plain += "npo_klr_form~paper/seed~0"
    assert plain in set(study.runs.run)
    assert not any("train~" in r for r in study.runs.run)
    other = load_study(_config(**{"unlearn.batch_size": 2}))
    tag = training_tag(other.config, "bf16")
    assert re.fullmatch("[0-9a-f]{8}", tag)
    assert f"{plain}/train~{tag}" in set(other.runs.run)


def test_method_overrides_expand_their_own_grid():
    study = load_study(
        _config(**{"unlearn.methods": {"GA_GDR": {"alpha": [1, 5], "weight_dtype": "fp32"}}})
    )
    runs = study.runs[study.runs.method == "GA_GDR"]
    assert sorted(runs.alpha) == [1.0, 5.0]
    assert set(runs.weight_dtype) == {"fp32"}


# ----------------------------------------------------------- issue 12: every mistake at parse time


@pytest.mark.parametrize(
    ("synthetic", "key", "why"),
    [
        # 108 forget + 12 holdout people leave no retain people
        ({"forget_frac": 0.9, "holdout_frac": 0.1}, "synthetic.synthetic", "0 retain people"),
        # 96 retain people cannot hold 90 evaluated + 2 x 10 ICL people
        ({"n_retain_qa_people": 90}, "synthetic.synthetic", "cannot hold n_retain_qa_people=90"),
        # 120 x 0.001 rounds to no forget person at all
        ({"forget_frac": 0.001}, "synthetic.synthetic.forget_frac", "0 forget"),
        ({"holdout_frac": 0.001}, "synthetic.synthetic.holdout_frac", "0 holdout"),
        ({"n_people": 5000}, "synthetic.synthetic.n_people", "distinct names"),
        ({"n_icl": 60}, "synthetic.synthetic", "2 x n_icl=60"),
    ],
)
def test_impossible_synthetic_splits_fail_at_parse_time(synthetic, key, why):
    """Every constraint of the generator (data.synthetic.check_synthetic) is checked before any
    job runs, under the key that holds it."""
    section = {**yaml.safe_load(DEFAULT.read_text())["benchmarks"]["synthetic"]["synthetic"]}
    section.update(synthetic)
    with pytest.raises(ConfigError) as info:
        load_study(_config(**{"benchmarks.synthetic.synthetic": section}))
    assert f"config key benchmarks.{key}:" in str(info.value)
    assert why in str(info.value)


def test_a_local_folder_not_in_the_muse_layout_fails_at_parse_time(tmp_path):
    from quantunlearn.data.synthetic import generate_synthetic

    generate_synthetic(tmp_path / "bench", n_people=40, n_retain_qa_people=4, n_icl=2)
    load_study(_config(**{"benchmarks.synthetic.source": str(tmp_path / "bench")}))
    (tmp_path / "bench" / "knowmem" / "retain_qa.json").unlink()
    with pytest.raises(ConfigError) as info:
        load_study(_config(**{"benchmarks.synthetic.source": str(tmp_path / "bench")}))
    message = str(info.value)
    assert "config key benchmarks.synthetic.source: not a benchmark in the MUSE layout" in message
    assert "knowmem/retain_qa.json is missing" in message


def test_home_folder_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    study = load_study(_config(results_dir="~/qu_results", tables_dir="~/qu_tables"))
    assert study.results == tmp_path / "qu_results"
    assert study.tables == tmp_path / "qu_tables"
    assert not (tmp_path / "~").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # checked, nothing created


def test_unwritable_results_folders_fail_at_parse_time(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError) as info:
        load_study(_config(results_dir=str(tmp_path / "a_file" / "results")))
    assert "config key results_dir: cannot create" in str(info.value)
    assert "is a file, not a folder" in str(info.value)
    # /proc refuses new folders, even to root
    with pytest.raises(ConfigError, match=r"config key tables_dir: cannot create '/proc/qu"):
        load_study(_config(tables_dir="/proc/qu_tables"))


def test_read_only_results_folder_fails_at_parse_time(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder (the /proc case covers root)")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=r"config key results_dir: cannot write to"):
            load_study(_config(results_dir=str(folder)))
    finally:
        folder.chmod(0o700)


def test_two_configs_writing_the_same_tables_are_told(tmp_path):
    from quantunlearn.study.grid import TABLES_MARKER, config_owner

    study = load_study(_config(results_dir=str(tmp_path / "results")))
    assert study.tables_owner_error("config/config.yaml") is None  # nothing written yet
    study.claim_tables("config/config.yaml")
    marker = tmp_path / "results" / "tables" / TABLES_MARKER
    assert marker.is_file()
    assert study.tables_owner_error("config/config.yaml") is None  # its own tables
    error = study.tables_owner_error("my_study.yaml")
    assert error.startswith("config key tables_dir:")
    assert "holds the tables of config/config.yaml" in error
    assert "tables_dir: " + str(tmp_path / "results" / "tables" / "my_study") in error
    with pytest.raises(ConfigError, match="holds the tables of config/config.yaml"):
        study.claim_tables("my_study.yaml")
    # a config of its own tables_dir is free to go
    own = load_study(_config(results_dir=str(tmp_path / "results"), tables_dir=str(tmp_path / "t")))
    assert own.tables_owner_error("my_study.yaml") is None
    # the owner is the config file relative to the working directory (a moved clone keeps it)
    assert config_owner([tmp_path / "config" / "config.yaml"], tmp_path) == "config/config.yaml"
    assert config_owner(["/elsewhere/x.yaml"], tmp_path) == "/elsewhere/x.yaml"
    assert config_owner([], tmp_path) == "--config"


@pytest.mark.parametrize(
    ("changes", "key", "why"),
    [
        ({"unlearn.methods": {"GA_GDR_LORA": {"lora_rank": 0}}}, "GA_GDR_LORA.lora_rank", ">= 1"),
        ({"unlearn.methods": {"GA_GDR": {"epochs": 0}}}, "GA_GDR.epochs", "at least one epoch"),
        (
            {"unlearn.methods": {"GA_GDR": {"epochs": 2.5}}},
            "GA_GDR.epochs",
            "2.5 is not an integer (nor a list of them)",
        ),
        (
            {"unlearn.methods": {"GA_GDR_LORA": {"lora_rnk": 4}}},
            "GA_GDR_LORA.lora_rnk",
            "GA_GDR_LORA has no lora_rnk (did you mean 'lora_rank'?)",
        ),
        ({"unlearn.methods": {"GA_GRD": {}}}, "GA_GRD", "unknown method (did you mean 'GA_GDR'?)"),
        ({"unlearn.methods": {"GA": 3}}, "GA", "3 is not a mapping or null"),
        ({"unlearn.methods": {"RMU": {"lr": float("inf")}}}, "RMU.lr", "must be finite"),
        # a list of sections (each a grid of its own): the key names the section's index
        (
            {"unlearn.methods": {"GA_GDR": [{"alpha": 1.0}, {"epochs": 2.5}]}},
            "GA_GDR[1].epochs",
            "2.5 is not an integer (nor a list of them)",
        ),
        (
            {"unlearn.methods": {"GA_GDR_LORA": [{}, {"lora_rnk": 4}]}},
            "GA_GDR_LORA[1].lora_rnk",
            "GA_GDR_LORA has no lora_rnk (did you mean 'lora_rank'?)",
        ),
        ({"unlearn.methods": {"GA_GDR": [{}, {"epochs": 0}]}}, "GA_GDR[1].epochs", "one epoch"),
    ],
)
def test_method_section_errors_name_the_key(changes, key, why):
    with pytest.raises(ConfigError) as info:
        load_study(_config(**changes))
    assert f"config key unlearn.methods.{key}: " in str(info.value)
    assert why in str(info.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tiny_model.num_layers": 2.5}, "config key tiny_model.num_layers: 2.5 is not an integer"),
        ({"unlearn.common.epochs": 2.5}, "config key unlearn.common.epochs: 2.5 is not an integer"),
        (
            {"diagnostics": "yes"},
            "config key diagnostics: 'yes' is not true or false or null or a mapping",
        ),
        ({"unlearn.common.gama_pct": 90}, "unlearn.common.gama_pct: unknown key (did you mean "),
        ({"unlern": {}}, "config key unlern: unknown key (did you mean 'unlearn'?)"),
    ],
)
def test_type_and_key_errors_read_plainly(changes, message):
    with pytest.raises(ConfigError) as info:
        load_study(_config(**changes))
    assert message in str(info.value)
    assert "a integer" not in str(info.value) and "of type" not in str(info.value)


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    from quantunlearn.study.config import read_config_file

    text = DEFAULT.read_text().replace("  batch_size: 2 ", "  batch_size: [2 ", 1)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    line = text.splitlines().index(next(s for s in text.splitlines() if "[2 " in s)) + 1
    with pytest.raises(ConfigError) as info:
        load_study_file(bad)
    message = str(info.value)
    # the parser notices the unclosed list on the next line, and says where the list began
    assert message.startswith(f"{bad}:{line + 1}:")
    assert f"while parsing a flow sequence at line {line}, column 15" in message
    tab = tmp_path / "tab.yaml"
    tab.write_text("results_dir: results\n\tquantizers: [none]\n")
    with pytest.raises(ConfigError, match=rf"^{tab}:2:1: YAML syntax error: .*'\\t'"):
        read_config_file(tab)


def test_check_command_reports_what_snakemake_cannot(tmp_path, capsys):
    from quantunlearn.study.check import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("unlearn:\n  common: {lr: 1e-5\n")
    assert main([str(bad)]) == 1
    assert f"{bad}:3:1: YAML syntax error" in capsys.readouterr().err
    assert main([str(ROOT / "config" / "mitigations.yaml")]) == 0
    out = capsys.readouterr().out
    # the effective hyperparameters of every run: SURE at its own lr, not common's 1e-5
    assert "method GA_GDR_SURE  weight_dtype fp32  lr 0.0001  " in out


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_give_no_warnings(path):
    assert load_study_file(path).warnings == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"unlearn.methods": {"GA_GDR_SURE": {"gamma_pct": 0.9}}},
            "config key unlearn.methods.GA_GDR_SURE.gamma_pct: [0.9] looks like a fraction",
        ),
        (
            {"unlearn.common.gamma_pct": 0.9},
            "config key unlearn.common.gamma_pct: none of the configured methods",
        ),
        (  # a list of sections: the one that says it
            {"unlearn.methods": {"GA_GDR_SURE": [{"gamma_pct": 90}, {"gamma_pct": 0.9}]}},
            "config key unlearn.methods.GA_GDR_SURE[1].gamma_pct: [0.9] looks like a fraction",
        ),
        (
            {"unlearn.methods": {"GA_GDR_SURE": {}, "NPO_GDR_SURE": {}}},
            "config key unlearn.common.lr: 1e-05 replaces the paper default lr 0.0001 of "
            "GA_GDR_SURE, NPO_GDR_SURE",
        ),
        (
            {"unlearn.methods": {"RMU": {"rmu_layer": 1}}},
            "config key unlearn.common.alpha: 1.0 replaces the paper default alpha 1200 of RMU",
        ),
        ({"unlearn.common.lr": 10}, "config key unlearn.common.lr: [10] is far above"),
    ],
)
def test_almost_surely_mistaken_values_warn(changes, message):
    study = load_study(_config(**changes))
    assert any(w.startswith(message) for w in study.warnings), study.warnings


def test_a_method_section_that_sets_its_own_value_silences_the_override_warning():
    methods = {"NPO_KLR": {}, "GA_GDR_SURE": {"lr": 1e-5}}  # NPO_KLR takes every common key
    study = load_study(_config(**{"unlearn.methods": methods}))
    assert study.warnings == []
    assert set(study.runs[study.runs.method == "GA_GDR_SURE"].lr) == {1e-5}


# ------------------------------------------- issue 22: the last inputs that failed late or misread
RWKU_MICRO = ROOT / "tests" / "configs" / "micro_rwku.yaml"


def _rwku(change) -> dict:
    config = yaml.safe_load(RWKU_MICRO.read_text())
    change(config["benchmarks"]["micro_rwku"])
    return config


def _hub_rwku(bench: dict) -> None:
    bench.pop("synthetic_rwku")
    bench.update(source="jinzhuoran/RWKU", targets=101)
    bench["models"] = {"target": "meta-llama/Meta-Llama-3-8B-Instruct"}


@pytest.mark.parametrize(
    "change, message",
    [
        # the generator has 800 distinct names: the prepare job used to be the first to say so
        (
            lambda b: b["synthetic_rwku"].update(n_people=801),
            "config key benchmarks.micro_rwku.synthetic_rwku.n_people: n_people=801 must be "
            "between 1 and 800",
        ),
        # the hub dataset has targets 1..100: 101 used to plan 303 runs
        (
            _hub_rwku,
            "config key benchmarks.micro_rwku.targets: targets [101] do not exist: the hub "
            "dataset jinzhuoran/RWKU has 1..100",
        ),
        # `targets: 0` used to read "[] is not an integer"
        (
            lambda b: b.update(targets=0),
            "config key benchmarks.micro_rwku.targets: 0 is less than the minimum of 1",
        ),
        (
            lambda b: b.update(targets=[2, 0]),
            "config key benchmarks.micro_rwku.targets: item [1] 0 is less than the minimum of 1",
        ),
    ],
)
def test_rwku_limits_are_checked_at_parse_time(change, message):
    with pytest.raises(ConfigError) as err:
        load_study(_rwku(change))
    assert message in str(err.value)
    assert "not an integer" not in str(err.value)


def test_a_refused_name_says_which_key_and_which_characters():
    """A benchmark name the pattern refuses used to be reported as an unknown quantizer."""
    config = _config()
    config["benchmarks"]["my-bench"] = config["benchmarks"].pop("synthetic")
    with pytest.raises(ConfigError) as err:
        load_study(config)
    message = str(err.value)
    assert "config key benchmarks.my-bench: 'my-bench' is not a valid name" in message
    assert "letters, digits and _" in message and "quantizer" not in message


@pytest.mark.parametrize(
    "section, key",
    [
        ([{"lr": 1e-5}, {"epochs": 3}, {"lr": [3e-5, 1e-5]}], "unlearn.methods.GA[0] and "
         "unlearn.methods.GA[2]"),
        ({"lr": [1e-5, 1e-5]}, "unlearn.methods.GA:"),
    ],
)  # fmt: skip
def test_a_repeated_grid_entry_names_the_method_and_list_index(section, key):
    config = _config()
    config["unlearn"]["methods"] = {"GA": section}
    with pytest.raises(ConfigError) as err:
        load_study(config)
    assert f"config key {key}" in str(err.value)
    assert "the grid of GA repeats the run method~GA/weight_dtype~" in str(err.value)


@pytest.mark.parametrize(
    "text, number",
    [("16", 16), (" -3 ", -3), ("1e-5", 1e-5), ("1.0", 1.0), (".5", 0.5), ("+2E3", 2000.0),
     ("abc", None), ("1e", None), ("", None), ("1_000", None), ("0x10", None)],
)  # fmt: skip
def test_one_number_parser_for_the_config_and_the_hyperparameters(text, number):
    """io.parse_number: digits alone an int, else a float; the config's numeric sections and the
    hyperparameter groups both convert with it."""
    from quantunlearn.io import parse_number
    from quantunlearn.study.config import _coerce_numbers
    from quantunlearn.unlearning.hyperparameters import Optimization

    got = parse_number(text)
    assert got == number and type(got) is type(number)
    assert _coerce_numbers({"x": [text]}) == {"x": [text if number is None else number]}
    if isinstance(number, float):
        assert Optimization.coerce("lr", text) == number
    if isinstance(number, int):
        assert Optimization.coerce("epochs", text) == number


def test_the_unlearn_settings_are_declared_once_by_their_dataclass():
    """DEFAULTS["unlearn"], the schema's unlearn keys and config/README.md come from
    UnlearnSettings: its defaults, types, choices, bounds and help texts."""
    from quantunlearn.study.config import DEFAULTS
    from quantunlearn.study.config_docs import render
    from quantunlearn.study.schema import config_schema
    from quantunlearn.unlearning.hyperparameters import UnlearnSettings

    fields = {f.name: f for f in UnlearnSettings.fields()}
    assert DEFAULTS["unlearn"] == {"common": {}, **{k: f.default for k, f in fields.items()}}
    properties = config_schema()["properties"]["unlearn"]["properties"]
    for key, f in fields.items():
        assert properties[key]["description"] == f.metadata["help"]
        assert f.metadata["help"].split(":")[0] in render()
    assert properties["lr_schedule"]["enum"] == ["constant", "cosine"]
    assert properties["max_grad_norm"]["type"] == ["number", "null"]
    assert properties["batch_size"] == {**properties["batch_size"], "type": "integer", "minimum": 1}
    with pytest.raises(ValueError, match="batch_size: 0 is less than the minimum of 1"):
        UnlearnSettings(batch_size=0)
    with pytest.raises(ValueError, match="max_grad_norm: 0.0 is less than or equal"):
        UnlearnSettings(max_grad_norm=0.0)
    assert UnlearnSettings(max_grad_norm=None).max_grad_norm is None
    with pytest.raises(ConfigError, match="config key unlearn.max_len: 8 is less than the min"):
        load_study(_config(**{"unlearn.max_len": 8}))


def test_groups_answer_for_their_warnings_and_the_model_depth():
    """A group's warnings and its checks against a model's depth are its own; the config asks
    every group of every section and names the key."""
    from quantunlearn.unlearning.hyperparameters import (
        GROUPS,
        Optimization,
        RMUParams,
        SUREParams,
    )

    assert SUREParams.warnings({"gamma_pct": [90, 0.9]})[0][0] == "gamma_pct"
    assert SUREParams.warnings({"gamma_pct": 90}) == [] == Optimization.warnings({"lr": 1e-4})
    assert Optimization.warnings({"lr": [1e-5, 0.5]})[0][1].startswith("[0.5] is far above")
    assert RMUParams.depth_problems({"rmu_layer": [0, 2, 3]}, 2, "a model") == [
        ("rmu_layer", "layer(s) [2, 3] do not exist in a model (2 layers, 0..1)")
    ]
    quiet = [g for g in GROUPS if g not in (Optimization, SUREParams)]
    assert all(g.warnings({"lr": 1, "gamma_pct": 0.5}) == [] for g in quiet)
