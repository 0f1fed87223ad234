"""Audit mode: external checkpoints in the config and the grid, the hub inputs of a study (the
download step and its dry run), and the audit report's arithmetic and verdicts by hand."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from quantunlearn.io import config_hash
from quantunlearn.reports import BY_NAME as REPORTS
from quantunlearn.reports import audit as audit_report
from quantunlearn.reports.audit import (
    VERDICTS,
    audit_frame,
    checkpoint_files,
    make_audit,
    verdict,
)
from quantunlearn.reports.cells import table1_columns
from quantunlearn.reports.provenance_report import code_table, input_table, version_table
from quantunlearn.reports.render import row_label
from quantunlearn.study import load_study, load_study_file
from quantunlearn.study.config import ConfigError
from quantunlearn.study.inputs import download_summary, hub_inputs, pin_file, pin_name
from quantunlearn.study.storage import LLAMA2_7B_PARAMS, disk_estimate, disk_summary
from quantunlearn.unlearning.hyperparameters import BASE_HYPER_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
NEWS = ROOT / "config" / "muse_news.yaml"
AUDIT = ROOT / "config" / "muse_news_audit.yaml"
SHA = "0123456789abcdef0123456789abcdef01234567"
THRESHOLDS = {
    "metrics": ["knowmem_f", "verbmem_f"],
    "min_forgetting": 5.0,
    "min_survival_pct": 80.0,
}


def _news(**unlearned) -> dict:
    config = yaml.safe_load(NEWS.read_text())
    config["benchmarks"]["news"]["models"]["unlearned"] = unlearned
    return config


# --------------------------------------------------------------------------- config and grid
def test_external_checkpoints_are_runs_of_their_own(tmp_path, tiny_model_dir):
    shutil.copytree(tiny_model_dir, tmp_path / "ckpt")
    plain = load_study(_news())
    config = _news(
        simnpo=f"OPTML-Group/SimNPO-MUSE-News-Llama-2-7b@{SHA}", mine=str(tmp_path / "ckpt")
    )
    config["diagnostics"] = False  # the shipped config diagnoses its regularized runs
    study = load_study(config)
    external = study.runs[study.runs.method.str.startswith("external:")]
    assert list(external.run) == [
        "method~external/checkpoint~simnpo",
        "method~external/checkpoint~mine",
    ]
    assert audit_report.applies(study) and not audit_report.applies(plain)
    assert study.external_checkpoints("news")["mine"] == str(tmp_path / "ckpt")
    # every quantizer; diagnostics against the target even with `diagnostics: false`
    cells = study.cells()
    assert len([c for c in cells if c.run == "method~external/checkpoint~simnpo"]) == 8
    diag = study.diagnostic_cells()
    assert {c.run for c in diag} == set(external.run) and len(diag) == 2 * 7  # not 'none'
    # the checkpoint's source is in its cells' config (a new revision: a new cell) ...
    cell = study.cell_config("news", "method~external/checkpoint~simnpo", "rtn_w4")
    assert cell["external"].endswith(f"@{SHA}") and "unlearn" not in cell
    mine = study.cell_config("news", "method~external/checkpoint~mine", "rtn_w4")
    assert mine["external_content"].startswith("sha256:")  # a local folder: its content too
    # ... and adding checkpoints changes no other cell, nor what the data and models depend on
    run = plain.runs.query("method == 'GA' and weight_dtype == 'bf16'").run.iloc[0]
    for bench_run, quant in ((run, "rtn_w4"), ("method~target", "none")):
        assert config_hash(study.cell_config("news", bench_run, quant)) == config_hash(
            plain.cell_config("news", bench_run, quant)
        )
    assert study.data_spec("news") == plain.data_spec("news")
    # nothing is trained or stored for them
    assert (
        disk_estimate(study).unlearning_runs.iloc[0] == disk_estimate(plain).unlearning_runs.iloc[0]
    )
    label = row_label({"method": "external:simnpo", "quant": "rtn_w4", "lr": np.nan})
    assert label == "simnpo (external) + rtn_w4"
    assert checkpoint_files(study) == ("audit_news_simnpo.md", "audit_news_mine.md")
    assert REPORTS["audit"].applies(study) and not REPORTS["audit"].applies(plain)


@pytest.mark.parametrize(
    "unlearned, message",
    [
        ({"x": "not/a/folder/or hub"}, "models.unlearned.x: no such path"),
        ({"bad-name": "org/model"}, "benchmarks.news.models.unlearned"),
        ({"x": "org/model@"}, "models.unlearned.x: no such path"),
    ],
)
def test_bad_external_checkpoints_name_the_key(unlearned, message):
    with pytest.raises(ConfigError, match=message):
        load_study(_news(**unlearned))


def test_a_refused_checkpoint_name_says_which_key_and_characters():
    """It used to read "unknown quantizer 'my-ckpt'"."""
    with pytest.raises(ConfigError) as err:
        load_study(_news(**{"my-ckpt": "org/model"}))
    message = str(err.value)
    assert "config key benchmarks.news.models.unlearned.my-ckpt: 'my-ckpt' is not a valid name" in (
        message
    )
    assert "letters, digits and _" in message and "quantizer" not in message


def test_a_loading_script_dataset_is_refused_naming_its_json_file():
    config = yaml.safe_load(NEWS.read_text())
    config["evaluation"].update(
        utility=["fluency"], utility_data={"fluency": "tatsu-lab/alpaca_eval"}
    )
    with pytest.raises(ConfigError) as err:
        load_study(config)
    assert "config key evaluation.utility_data.fluency: 'tatsu-lab/alpaca_eval' is a " in str(
        err.value
    )
    assert "hf://datasets/tatsu-lab/alpaca_eval@" in str(err.value)  # the JSON file to name


def test_the_audit_shares_the_target_cells_of_the_news_study():
    """config/muse_news_audit.yaml's claim: its target's cells are muse_news.yaml's (same hash)."""
    news, audit = load_study_file(NEWS), load_study_file(AUDIT)
    shared = sorted(set(news.quantizers) & set(audit.quantizers))
    assert len(shared) == 8 and news.results == audit.results
    for run in ("method~target", "method~retrain"):
        for quant in shared:
            assert config_hash(audit.cell_config("news", run, quant)) == config_hash(
                news.cell_config("news", run, quant)
            ), (run, quant)


def test_a_folder_without_config_json_is_no_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match=r"models.unlearned.x: .* holds no config.json"):
        load_study(_news(x=str(tmp_path)))


# ------------------------------------------- issue 22: a local checkpoint is its content
MICRO = ROOT / "tests" / "configs" / "micro.yaml"
CKPT = "method~external/checkpoint~mine"


def _micro_audit(tmp_path: Path, checkpoint: Path, **tiny) -> dict:
    """The micro study auditing one local checkpoint (its target: the tiny model it trains)."""
    config = yaml.safe_load(MICRO.read_text())
    config["results_dir"] = str(tmp_path / "results")
    config["tiny_model"].update(tiny)
    config["benchmarks"]["micro"]["models"] = {"unlearned": {"mine": str(checkpoint)}}
    return config


def _save(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def test_a_local_checkpoint_is_identified_by_its_content(tmp_path, tiny_model, tiny_model_dir):
    """Files replaced by another model of the same shapes and size make new cells (they used
    to keep the first model's cells: the path was the identity)."""
    import torch

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, ckpt)
    study = load_study(_micro_audit(tmp_path, ckpt, hidden_size=128, intermediate_size=384,
                                    num_layers=2, num_heads=4))  # fmt: skip
    before = study.cell_config("micro", CKPT, "rtn_w4")
    again = load_study(_micro_audit(tmp_path, ckpt, hidden_size=128, intermediate_size=384,
                                    num_layers=2, num_heads=4))  # fmt: skip
    assert config_hash(again.cell_config("micro", CKPT, "rtn_w4")) == config_hash(before)

    other = type(tiny_model)(tiny_model.config)  # the same shapes, other weights
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    _save(other, tmp_path / "other")
    assert (tmp_path / "other" / "model.safetensors").stat().st_size == (
        ckpt / "model.safetensors"
    ).stat().st_size
    shutil.copy(tmp_path / "other" / "model.safetensors", ckpt / "model.safetensors")
    after = load_study(_micro_audit(tmp_path, ckpt, hidden_size=128, intermediate_size=384,
                                    num_layers=2, num_heads=4))  # fmt: skip
    cell = after.cell_config("micro", CKPT, "rtn_w4")
    assert cell["external_content"] != before["external_content"]
    assert config_hash(cell) != config_hash(before)
    # the file hashes are kept per size and time: a second parse reads no weights
    (cache,) = (tmp_path / "results" / "inputs" / "checkpoints").glob("*.json")
    assert "model.safetensors" in json.loads(cache.read_text())["files"]


def _truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _random(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))


@pytest.mark.parametrize(
    "spoil, message",
    [
        (_truncate, r"model.safetensors: \d+ bytes, but its header describes \d+ \(truncated"),
        (_random, r"model.safetensors: not a safetensors file"),
        (lambda f: (f / "model.safetensors").unlink(), r"holds no safetensors weights"),
    ],
)
def test_a_corrupt_local_checkpoint_fails_at_parse_time(tmp_path, tiny_model_dir, spoil, message):
    """It used to pass, and every evaluate job died after seconds with a raw SafetensorError."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, ckpt)
    spoil(ckpt)
    with pytest.raises(ConfigError) as err:
        load_study(_micro_audit(tmp_path, ckpt, hidden_size=128, intermediate_size=384,
                                num_layers=2, num_heads=4))  # fmt: skip
    text = str(err.value)
    assert f"config key benchmarks.micro.models.unlearned.mine: {ckpt}" in text
    assert re.search(message, text), text


def test_a_checkpoint_of_another_width_fails_at_parse_time(tmp_path, tiny_model_dir):
    """Against the tiny target the workflow will train: its architecture and widths."""
    with pytest.raises(ConfigError) as err:
        load_study(_micro_audit(tmp_path, tiny_model_dir, hidden_size=256, intermediate_size=384,
                                num_layers=2, num_heads=4))  # fmt: skip
    assert (
        f"config key benchmarks.micro.models.unlearned.mine: {tiny_model_dir}: config.json has "
        "hidden_size 128, the target (the target to be trained) 256"
    ) in str(err.value)


def test_a_checkpoint_unlike_a_local_target_names_the_first_mismatch(tmp_path, tiny_tokenizer):
    """Against a target folder: config keys first, then every tensor name and shape."""
    from quantunlearn.models.tiny import build_llama

    target = _save(build_llama(tiny_tokenizer, 128, 384, num_layers=2), tmp_path / "target")
    wide = _save(build_llama(tiny_tokenizer, 256, 384, num_layers=2), tmp_path / "wide")
    deep = _save(build_llama(tiny_tokenizer, 128, 384, num_layers=3), tmp_path / "deep")
    same = _save(build_llama(tiny_tokenizer, 128, 384, num_layers=2, seed=1), tmp_path / "same")
    # the same config.json but one tensor's shape edited in the header (a hand-made mismatch)
    odd = tmp_path / "odd"
    shutil.copytree(same, odd)
    name, shape = _reshape_first_tensor(odd / "model.safetensors")

    def audit(ckpt: Path) -> dict:
        config = yaml.safe_load(NEWS.read_text())
        config["benchmarks"]["news"]["models"].update(
            target=str(target), retrain=str(target), tokenizer=str(target)
        )
        config["benchmarks"]["news"]["models"]["unlearned"] = {"mine": str(ckpt)}
        config["diagnostics"] = False
        return config

    assert audit_report.applies(load_study(audit(same)))
    for ckpt, first in (
        (wide, f"config.json has hidden_size 256, the target ({target}) 128"),
        (deep, f"config.json has num_hidden_layers 3, the target ({target}) 2"),
        (odd, f"tensor {name} has shape {shape}, the target's ({target})"),
    ):
        with pytest.raises(ConfigError) as err:
            load_study(audit(ckpt))
        assert f"config key benchmarks.news.models.unlearned.mine: {ckpt}: {first}" in str(
            err.value
        )


def _reshape_first_tensor(path: Path) -> tuple[str, list[int]]:
    """Rewrite a safetensors header so that its first tensor (by name) claims another shape of
    the same byte size (the file stays whole)."""
    import struct

    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    first = sorted(k for k in header if k != "__metadata__")[0]
    rows, cols = header[first]["shape"]
    header[first]["shape"] = [1, rows * cols]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length :])
    return first, header[first]["shape"]


def test_the_shipped_audit_config():
    """config/muse_news_audit.yaml: the public unlearned MUSE NEWS checkpoints (the
    open-unlearning project publishes none for MUSE; these are other groups')."""
    study = load_study(yaml.safe_load(AUDIT.read_text()))
    checkpoints = study.external_checkpoints("news")
    repos = {spec.split("@")[0] for spec in checkpoints.values()}
    assert "OPTML-Group/SimNPO-MUSE-News-Llama-2-7b" in repos
    assert all("@" in spec for spec in checkpoints.values())  # each at a stated revision
    assert not study.runs.method.map(
        lambda m: m not in ("target", "retrain") and not m.startswith("external:")
    ).any()
    assert audit_report.applies(study)
    assert disk_summary(study) == "disk (news): no unlearning runs, nothing written"


# --------------------------------------------------------------------------- hub inputs
def test_hub_inputs_of_the_news_study():
    study = load_study(_news(simnpo="OPTML-Group/SimNPO-MUSE-News-Llama-2-7b@main"))
    inputs = hub_inputs(study)
    by_spec = {i.spec: i for i in inputs.values()}
    assert set(by_spec) == {
        "muse-bench/MUSE-News",
        "muse-bench/MUSE-News_target",
        "muse-bench/MUSE-News_retrain",
        "meta-llama/Llama-2-7b-hf",
        "OPTML-Group/SimNPO-MUSE-News-Llama-2-7b@main",
        # the 4 utility files of the seeds' protocol
        "jinzhuoran/RWKU@d72f493d481d1b0a9bdc6e869d32baeffad8904f",
    }
    tokenizer = by_spec["meta-llama/Llama-2-7b-hf"]
    assert tokenizer.uses == ("tokenizer",) and "*.safetensors" not in tokenizer.patterns
    assert "*.safetensors" in by_spec["muse-bench/MUSE-News_target"].patterns
    assert not any(
        p.endswith((".bin", ".pth")) for p in by_spec["muse-bench/MUSE-News_target"].patterns
    )
    muse = by_spec["muse-bench/MUSE-News"]
    assert muse.repo_type == "dataset" and set(muse.patterns) == {
        "README.md",
        "knowmem/*",
        "privleak/*",
        "raw/*",
        "verbmem/*",
    }
    rwku = by_spec["jinzhuoran/RWKU@d72f493d481d1b0a9bdc6e869d32baeffad8904f"]
    assert rwku.uses == ("utility:mmlu_rwku", "utility:truthfulqa_rwku", "utility:triviaqa_rwku",
                         "utility:fluency_rwku")  # fmt: skip
    files = ["intro", "retain_mmlu", "truthful", "triviaqa", "fluency"]
    assert set(rwku.patterns) == {"README.md", *(f"All/{f}.json" for f in files)}
    assert muse.pin == "datasets/muse-bench--MUSE-News"
    assert pin_name("org/m@refs/pr/3", "model") == "models/org--m@refs+pr+3"
    assert pin_file("results", "org/m@v1", "model") == ["results/inputs/models/org--m@v1.json"]
    assert (
        pin_file("results", None, "model") == [] and pin_file("results", str(ROOT), "model") == []
    )


def test_download_dry_run_says_what_and_how_much_offline(tmp_path):
    """The shipped config's download, sized offline: the target as the hub lists it (26.96 GB
    of fp32 shards), the retrain's 6,738,415,616 parameters at 2 or 4 bytes (13.48 to 26.95
    GB); 2 datasets of unknown size (MUSE NEWS and RWKU, whose files the utility metrics read)."""
    study = load_study(yaml.safe_load(NEWS.read_text()))
    text = download_summary(study, tmp_path)
    assert text.startswith("hub inputs: 5 (0 pinned already)")
    assert "fetch model muse-bench/MUSE-News_target [model]: about 27.0 GB (as the hub" in text
    assert "MUSE-News_retrain [model]: 13.5 GB to 27.0 GB (6.74B parameters at 2 or 4" in text
    assert "fetch model meta-llama/Llama-2-7b-hf [tokenizer]: tokenizer files only" in text
    assert "fetch dataset muse-bench/MUSE-News [benchmark:muse]: size unknown offline" in text
    low = 26_960_000_000 + 2 * LLAMA2_7B_PARAMS
    high = 26_960_000_000 + 4 * LLAMA2_7B_PARAMS
    assert f"download: {low / 1e9:.1f} GB to {high / 1e9:.1f} GB + 2 of unknown size" in text
    pinned = tmp_path / "inputs" / "models" / "muse-bench--MUSE-News_target.json"
    pinned.parent.mkdir(parents=True)
    pinned.write_text("{}")
    again = download_summary(study, tmp_path)
    assert again.startswith("hub inputs: 5 (1 pinned already)")
    assert "MUSE-News_target [model]" not in again
    assert (
        download_summary(
            load_study(yaml.safe_load((ROOT / "config" / "config.yaml").read_text())), tmp_path
        )
        == ""
    )


# --------------------------------------------------------------------------- the arithmetic
def test_verdicts_against_the_thresholds():
    # kept 25% < 80% on knowmem_f: does not survive; both judged and >= 80%: survives
    assert (
        verdict(
            {"knowmem_f": 25.0, "verbmem_f": 90.0},
            {"knowmem_f": 60.0, "verbmem_f": 20.0},
            THRESHOLDS,
        )
        == "does not survive"
    )
    assert (
        verdict(
            {"knowmem_f": 80.0, "verbmem_f": 95.0},
            {"knowmem_f": 60.0, "verbmem_f": 20.0},
            THRESHOLDS,
        )
        == "survives"
    )
    # verbmem_f's full-precision forgetting (3 points) is below 5: only knowmem_f is judged
    assert (
        verdict(
            {"knowmem_f": 85.0, "verbmem_f": 0.0}, {"knowmem_f": 60.0, "verbmem_f": 3.0}, THRESHOLDS
        )
        == "survives"
    )
    assert (
        verdict(
            {"knowmem_f": 0.0, "verbmem_f": 0.0}, {"knowmem_f": 4.9, "verbmem_f": 3.0}, THRESHOLDS
        )
        == "no verdict"
    )
    assert verdict({"knowmem_f": 50.0}, {"knowmem_f": float("nan")}, THRESHOLDS) == "not measured"
    assert {"survives", "does not survive", "no verdict", "not measured"} == set(VERDICTS)


def _wide(rows: list[tuple]) -> pd.DataFrame:
    """A wide Table 1 frame from (method, quant, verbmem_f, knowmem_f, knowmem_r)."""
    frame = pd.DataFrame(
        [
            {
                "benchmark": "news",
                "method": m,
                "quant": q,
                "run": f"run-{m}",
                "verbmem_f": v,
                "knowmem_f": k,
                "knowmem_r": r,
                "privleak": -50.0,
            }
            for m, q, v, k, r in rows
        ]
    )
    return frame.reindex(columns=table1_columns())


TABLE = _wide(
    [
        ("target", "none", 50.0, 80.0, 60.0),
        ("target", "rtn_w4", 45.0, 70.0, 55.0),
        ("target", "bnb_nf4", 48.0, 76.0, 58.0),
        ("external:ck", "none", 10.0, 20.0, 50.0),
        ("external:ck", "rtn_w4", 40.0, 55.0, 45.0),
        ("external:ck", "bnb_nf4", 12.0, 24.0, 49.0),
        ("external:ck", "noflip_rtn_w4", 44.0, 69.0, 54.0),
    ]
)


def test_audit_frame_by_hand():
    frame = audit_frame(TABLE, "news", "ck", THRESHOLDS).set_index("quant")
    # full precision: forgetting knowmem_f 80 - 20 = 60, verbmem_f 50 - 10 = 40
    assert (
        frame.at["none", "forgetting_knowmem_f"] == 60.0
        and frame.at["none", "verdict"] == "reference"
    )
    # rtn_w4: knowmem_f 70 - 55 = 15 of 60 = 25 %; verbmem_f 45 - 40 = 5 of 40 = 12.5 %
    assert frame.at["rtn_w4", "kept_knowmem_f"] == pytest.approx(25.0)
    assert frame.at["rtn_w4", "kept_verbmem_f"] == pytest.approx(12.5)
    assert frame.at["rtn_w4", "retained_knowmem_f"] == pytest.approx(100 * 55 / 70)
    assert frame.at["rtn_w4", "d_knowmem_f"] == 35.0 and frame.at["rtn_w4", "d_knowmem_r"] == -5.0
    assert frame.at["rtn_w4", "verdict"] == "does not survive"
    # given back = 100 - kept: 75 % of the knowmem_f forgetting, 87.5 % of the verbmem_f one
    assert frame.at["rtn_w4", "given_back_knowmem_f"] == pytest.approx(75.0)
    assert frame.at["rtn_w4", "given_back_verbmem_f"] == pytest.approx(87.5)
    assert frame.at["none", "given_back_knowmem_f"] == 0.0
    # bnb_nf4: knowmem_f 76 - 24 = 52 of 60 = 86.7 %; verbmem_f 48 - 12 = 36 of 40 = 90 %
    assert frame.at["bnb_nf4", "kept_knowmem_f"] == pytest.approx(100 * 52 / 60)
    assert frame.at["bnb_nf4", "kept_verbmem_f"] == pytest.approx(90.0)
    assert frame.at["bnb_nf4", "verdict"] == "survives"
    assert frame.at["bnb_nf4", "given_back_verbmem_f"] == pytest.approx(10.0)
    # noflip: compared with the target under its RTN base, shown, never judged
    assert frame.at["noflip_rtn_w4", "target_knowmem_f"] == 70.0
    assert frame.at["noflip_rtn_w4", "verdict"] == "counterfactual"


def _long(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in table.itertuples():
        for metric in ("verbmem_f", "knowmem_f", "knowmem_r", "privleak"):
            rows.append(
                {
                    "benchmark": r.benchmark,
                    "run": r.run,
                    "method": r.method,
                    "quant": r.quant,
                    **dict.fromkeys(BASE_HYPER_COLUMNS),
                    "metric": metric,
                    "value": getattr(r, metric),
                    "n": 4,
                    "config_hash": "h",
                    "versions": json.dumps({"torch": "2.13.0"}),
                    "git_commit": SHA,
                    "git_dirty": False,
                    "model_source": "org/ck@main" if r.method != "target" else "org/t",
                    "model_commit": SHA,
                    "inputs": json.dumps({"model": {"source": "org/ck@main", "commit": SHA}}),
                    "cell_config": "{}",
                }
            )
    return pd.DataFrame(rows)


def test_make_audit_writes_every_report(tmp_path):
    long = _long(TABLE)
    files = []
    for (run, quant), part in long.groupby(["run", "quant"]):
        files.append(tmp_path / "metrics" / f"{run}-{quant}.parquet")
        files[-1].parent.mkdir(exist_ok=True)
        part.to_parquet(files[-1])
    quants = ["none", "rtn_w4", "bnb_nf4", "noflip_rtn_w4"]
    summary = make_audit(files, [], tmp_path / "tables", quants, THRESHOLDS)
    assert list(summary["quant"]) == quants
    report = (tmp_path / "tables" / "audit_news_ck.md").read_text()
    assert "# Audit: ck (external checkpoint) on benchmark news" in report
    assert "`org/ck@main` at commit `" + SHA + "`" in report
    assert "| rtn_w4 | 15.0 | 25.0 | 75.0 | 5.0 | 12.5 | 87.5 | does not survive |" in report
    assert "| bnb_nf4 | 52.0 | 86.7 | 13.3 | 36.0 | 90.0 | 10.0 | survives |" in report
    assert "## noflip counterfactual" in report and "No diagnostics" in report
    assert "- knowmem_f: 4 questions on the forget set" in report
    overview = (tmp_path / "tables" / "audit.md").read_text()
    row = "| news | ck | rtn_w4 | 25.0 | 75.0 | 12.5 | 87.5 | does not survive | audit_news_ck.md |"
    assert row in overview


def test_provenance_tables_count_cells():
    long = _long(TABLE)
    assert code_table(long).to_dict("records") == [
        {"git_commit": SHA, "git_dirty": False, "cells": 7}
    ]
    inputs = input_table(long)
    assert inputs.to_dict("records") == [
        {"role": "model", "source": "org/ck@main", "commit": SHA, "cells": 7}
    ]
    assert version_table(long).to_dict("records") == [
        {"package": "torch", "version": "2.13.0", "cells": 7}
    ]
    old = long.drop(columns=["git_commit", "git_dirty", "inputs"])  # files from before
    assert code_table(old)["git_commit"].tolist() == ["not recorded"]
    assert input_table(old)["role"].tolist() == ["not recorded"]


# --------------------------------------------------------------------------- downloaded folders
def _muse_copy(tmp_path: Path) -> Path:
    """The embedded benchmark in the MUSE layout, with MUSE NEWS's raw split names."""
    import shutil

    from quantunlearn.data.synthetic import generate_synthetic

    bench = tmp_path / "bench"
    generate_synthetic(bench, n_people=40, n_retain_qa_people=4, n_icl=2)
    for split in ("retain1", "retain2"):
        shutil.copy(bench / "raw" / "retain.txt", bench / "raw" / f"{split}.txt")
    return bench


def test_a_downloaded_muse_repo_becomes_the_benchmark(tmp_path):
    """prepare_benchmark on the pinned snapshot of a MUSE dataset repo (the hub's layout: a
    parquet file per config and split, named by the card) writes the same evaluation files."""
    from realistic_fixture import write_muse_hub_dataset

    from quantunlearn.data.muse import BENCHMARK_FILES, prepare_benchmark
    from quantunlearn.study.inputs import validate_download

    bench = _muse_copy(tmp_path)
    repo = write_muse_hub_dataset(bench, tmp_path / "models--x" / "snapshots" / SHA)
    validate_download(str(repo), ["benchmark:muse"])  # every config and split loads
    prepare_benchmark("muse-bench/MUSE-News@main", tmp_path / "out", snapshot=str(repo))
    for rel, _ in BENCHMARK_FILES.values():
        assert json.loads((tmp_path / "out" / rel).read_text()) == json.loads(
            (bench / rel).read_text()
        )
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["benchmark"] == "muse-bench/MUSE-News@main" and meta["commit"] == SHA
    broken = write_muse_hub_dataset(bench, tmp_path / "broken")  # a split not fetched
    (broken / "knowmem" / "retain_qa-00000-of-00001.parquet").unlink()
    with pytest.raises(Exception, match="retain_qa"):
        validate_download(str(broken), ["benchmark:muse"])


def test_utility_rows_from_a_downloaded_repo(tmp_path):
    """A utility dataset's snapshot (the hub's layout) loads as its JSON fixture does."""
    from quantunlearn.data.utility import benchmark_rows, write_utility_fixture
    from quantunlearn.study.inputs import validate_download

    fixture = write_utility_fixture(tmp_path / "json", n=3)
    repo = tmp_path / "mmlu_repo"
    for split in ("test", "dev"):
        rows = json.loads(Path(fixture["mmlu"], f"{split}.json").read_text())
        (repo / "all").mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_parquet(repo / "all" / f"{split}-00000-of-00001.parquet")
    card = ["---", "configs:", "- config_name: all", "  data_files:"]
    card += [f"  - split: {s}\n    path: all/{s}-*" for s in ("test", "dev")]
    (repo / "README.md").write_text("\n".join([*card, "---", ""]))
    validate_download(str(repo), ["utility:mmlu"])
    from_repo = benchmark_rows("mmlu", {"utility_data": {"mmlu": str(repo)}})
    from_json = benchmark_rows("mmlu", {"utility_data": fixture})
    assert from_repo == from_json


def test_downloaded_models_are_checked(tmp_path, realistic_checkpoint):
    import shutil

    from quantunlearn.study.inputs import validate_download

    validate_download(str(realistic_checkpoint), ["model", "tokenizer"])
    broken = tmp_path / "broken"
    shutil.copytree(realistic_checkpoint, broken)
    next(broken.glob("model-*.safetensors")).unlink()
    with pytest.raises(FileNotFoundError, match="weight shards .* are missing"):
        validate_download(str(broken), ["model"])
    config = json.loads((broken / "tokenizer_config.json").read_text())
    (broken / "tokenizer_config.json").write_text(json.dumps({**config, "add_eos_token": True}))
    with pytest.raises(ValueError, match="add_eos_token"):  # F1, caught on the login node
        validate_download(str(broken), ["tokenizer"])


def test_a_pinned_hub_target_is_compared_too(tmp_path, tiny_tokenizer, tiny_model_dir):
    """A hub target whose download is pinned: the checkpoint is compared with the snapshot."""
    from quantunlearn.models.tiny import build_llama
    from quantunlearn.study.inputs import pin_file

    wide = _save(build_llama(tiny_tokenizer, 256, 384, num_layers=2), tmp_path / "wide")
    config = _news(mine=str(wide))
    config.update(results_dir=str(tmp_path / "results"), diagnostics=False)
    assert audit_report.applies(load_study(config))  # not downloaded yet: its own files only
    (pin,) = pin_file(tmp_path / "results", "muse-bench/MUSE-News_target", "model")
    Path(pin).parent.mkdir(parents=True)
    Path(pin).write_text(json.dumps({"spec": "muse-bench/MUSE-News_target", "commit": SHA,
                                     "path": str(tiny_model_dir)}))  # fmt: skip
    with pytest.raises(ConfigError, match=rf"mine: {wide}: config.json has hidden_size 256, the "
                       rf"target \({tiny_model_dir}\) 128"):  # fmt: skip
        load_study(config)


def test_the_jobs_check_the_files_they_were_planned_for(tmp_path, tiny_model_dir, tiny_tokenizer):
    """Files replaced between planning and the job, or a vocabulary only the trained target
    shows: the evaluate and diagnose jobs stop before loading, naming the checkpoint."""
    from quantunlearn.models.checkpoint import CheckpointError, fingerprint
    from quantunlearn.models.tiny import build_llama
    from quantunlearn.study.external import check_before_loading

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, ckpt)
    planned = fingerprint(ckpt)
    check_before_loading(str(ckpt), str(ckpt), str(tiny_model_dir), planned)  # as planned
    (ckpt / "config.json").write_text((ckpt / "config.json").read_text() + "\n")
    with pytest.raises(CheckpointError, match=f"external checkpoint {ckpt}: its files changed"):
        check_before_loading(str(ckpt), str(ckpt), str(tiny_model_dir), planned)
    other = build_llama(tiny_tokenizer, 128, 384, num_layers=2)
    other.config.vocab_size = other.config.vocab_size + 128
    other.resize_token_embeddings(other.config.vocab_size)
    big = _save(other, tmp_path / "big")
    with pytest.raises(CheckpointError, match=r"config.json has vocab_size \d+, the target"):
        check_before_loading(str(big), str(big), str(tiny_model_dir), fingerprint(big))
