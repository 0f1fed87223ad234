"""Config validation at parse time, and the grid of runs."""

from pathlib import Path

import pytest
import yaml

from quantunlearn.io import config_hash
from quantunlearn.study import load_study, load_study_file
from quantunlearn.study.config import ConfigError

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
    assert len(runs) == 2 + 6 * 2  # target, retrain, six methods x two weight dtypes
    assert set(runs.method) == {
        "target",
        "retrain",
        "GA",
        "GA_GDR",
        "GA_KLR",
        "NPO",
        "NPO_GDR",
        "NPO_KLR",
    }
    assert "method~GA/weight_dtype~bf16/lr~1e-05/epochs~10/seed~0" in set(runs.run)
    npo_klr = "method~NPO_KLR/weight_dtype~fp32/lr~1e-05/epochs~10/alpha~1/beta~0.1/"
    assert npo_klr + "npo_klr_form~paper/seed~0" in set(runs.run)
    assert len(study.cells()) == len(runs) * len(study.quantizers)
    params = study.run_params("synthetic", "method~GA/weight_dtype~bf16/lr~1e-05/epochs~10/seed~0")
    assert params["lr"] == 1e-05 and isinstance(params["lr"], float)
    assert params["alpha"] is None  # GA has no retain term
    assert isinstance(params["epochs"], int)


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
        ({"unlearn.methods": {"GA_XYZ": {}}}, "unlearn.methods", "GA_XYZ"),
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
        ({"unlern": {}}, "<config>", "unlern"),
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
    local = load_study(_config(**{"benchmarks.synthetic.source": str(tmp_path)}))
    assert local.benchmark("synthetic")["source"] == str(tmp_path)


def test_cell_hash_ignores_unrelated_config_changes():
    base = load_study(_config())
    run = "method~GA/weight_dtype~bf16/lr~1e-05/epochs~10/seed~0"
    grown = load_study(
        _config(
            **{"quantizers": ["none", "rtn_w8", "rtn_w3"], "unlearn.methods": {"GA": {}, "NPO": {}}}
        )
    )
    assert config_hash(base.cell_config("synthetic", run, "none")) == config_hash(
        grown.cell_config("synthetic", run, "none")
    )
    changed = load_study(_config(**{"unlearn.batch_size": 8}))
    assert config_hash(base.cell_config("synthetic", run, "none")) != config_hash(
        changed.cell_config("synthetic", run, "none")
    )


def test_method_overrides_expand_their_own_grid():
    study = load_study(
        _config(**{"unlearn.methods": {"GA_GDR": {"alpha": [1, 5], "weight_dtype": "fp32"}}})
    )
    runs = study.runs[study.runs.method == "GA_GDR"]
    assert sorted(runs.alpha) == [1.0, 5.0]
    assert set(runs.weight_dtype) == {"fp32"}
