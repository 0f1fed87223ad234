"""Pinning and recording every input (quantunlearn.data.provenance): sources, pins, the hub
cache offline, git state, versions, and the provenance columns of every metrics row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from huggingface_hub import DryRunFileInfo

from quantunlearn.data import provenance as pv
from quantunlearn.evaluation.cell import CellJob, evaluate_cell, package_versions, reference_auc

ROOT = Path(__file__).resolve().parents[1]
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    "spec, repo_id, revision",
    [
        ("muse-bench/MUSE-News_target", "muse-bench/MUSE-News_target", None),
        ("muse-bench/MUSE-News_target@main", "muse-bench/MUSE-News_target", "main"),
        (
            f"OPTML-Group/SimNPO-MUSE-News-Llama-2-7b@{SHA}",
            "OPTML-Group/SimNPO-MUSE-News-Llama-2-7b",
            SHA,
        ),
        ("org/name@refs/pr/3", "org/name", "refs/pr/3"),
        ("org/name@v1.0", "org/name", "v1.0"),
    ],
)
def test_parse_hub_specs(spec, repo_id, revision):
    source = pv.parse_source(spec)
    assert (source.kind, source.repo_id, source.revision) == ("hub", repo_id, revision)
    assert pv.split_spec(spec) == (repo_id, revision)
    assert str(source) == spec


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "non-empty"),
        ("just-a-name", "neither an existing folder nor a hub id"),
        ("a/b/c", "neither an existing folder nor a hub id"),
        ("org/name@", "neither an existing folder"),
        ("org/name@has space", "neither an existing folder"),
        ("org/na--me", "neither an existing folder"),
    ],
)
def test_parse_rejects_with_a_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        pv.parse_source(spec)


def test_existing_folder_wins_and_snapshot_folders_have_a_commit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    local = pv.parse_source("org/name")  # spelled like a hub id, but a folder here
    assert local.kind == "local" and local.path == str((tmp_path / "org" / "name").resolve())
    assert pv.split_spec("org/name") == ("org/name", None) and not pv.is_hub_spec("org/name")
    snap = tmp_path / "models--org--name" / "snapshots" / SHA
    snap.mkdir(parents=True)
    assert pv.snapshot_commit(snap) == SHA and pv.snapshot_commit(snap / "sub") == SHA
    assert pv.snapshot_commit(tmp_path) is None and pv.snapshot_commit(None) is None
    (tmp_path / "file.bin").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        pv.parse_source(str(tmp_path / "file.bin"))


def _dry(name, size, cached, commit=SHA):
    return DryRunFileInfo(
        commit_hash=commit,
        file_size=size,
        filename=name,
        local_path="",
        is_cached=cached,
        will_download=not cached,
    )


def test_download_plan_sums_what_is_missing():
    files = [
        _dry("model-00001-of-00002.safetensors", 4_940_000_000, cached=False),
        _dry("model-00002-of-00002.safetensors", 1_600_000_000, cached=True),
        _dry("config.json", None, cached=False),
    ]
    assert pv.download_plan(files) == {
        "commit": SHA,
        "n_files": 3,
        "bytes_total": 6_540_000_000,
        "bytes_to_download": 4_940_000_000,
        "n_to_download": 2,
        "unknown_sizes": 1,
    }
    with pytest.raises(ValueError, match="several commits"):
        pv.download_plan([*files, _dry("x", 1, False, commit="f" * 40)])


@pytest.mark.parametrize(
    "n, text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (13_476_839_424, "12.6 GiB")]
)
def test_human_bytes(n, text):
    assert pv.human_bytes(n) == text  # 13476839424 / 1024**3 = 12.55...


def test_free_space_check_names_both_sizes(tmp_path):
    pv.check_free_space(1, tmp_path / "not" / "yet")  # the nearest existing parent counts
    with pytest.raises(OSError, match=r"needs 1024\.0 TiB but .* free; point HF_HOME"):
        pv.check_free_space(1024**5, tmp_path)


def test_git_state_clean_dirty_untracked_and_not_a_repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    assert pv.git_state(repo) == {"commit": git("rev-parse", "HEAD"), "dirty": False}
    (repo / "new.py").write_text("")
    assert pv.git_state(repo)["dirty"] is True
    assert pv.git_state(repo, untracked=False)["dirty"] is False
    (repo / "new.py").unlink()
    (repo / "a.py").write_text("x = 2\n")
    assert pv.git_state(repo)["dirty"] is True
    assert pv.git_state(tmp_path / "nowhere") == {"commit": None, "dirty": None}


def test_code_state_is_this_checkout():
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert pv.code_state()["commit"] == head and pv.code_state()["dirty"] in (True, False)


def test_package_versions_cover_the_stack():
    """F4: the versions recorded with every number missed pandas, numpy, datasets, peft,
    accelerate, snakemake, huggingface_hub, sentencepiece and safetensors."""
    versions = json.loads(package_versions())
    for name in (
        "python",
        "torch",
        "transformers",
        "tokenizers",
        "pandas",
        "numpy",
        "datasets",
        "peft",
        "accelerate",
        "snakemake",
        "huggingface_hub",
        "sentencepiece",
        "protobuf",
        "safetensors",
        "bitsandbytes",
        "rouge-score",
    ):
        assert versions[name], name
    assert pv.package_versions(["surely-not-installed-xyz"])["surely-not-installed-xyz"] is None


def test_provenance_columns():
    inputs = {
        "model": {"source": f"org/m@{SHA}", "commit": SHA},
        "tokenizer": {"source": "meta-llama/Llama-2-7b-hf", "commit": None},
        "utility:mmlu": {"source": "cais/mmlu", "commit": "f" * 40},
    }
    columns = pv.provenance_columns(inputs)
    assert columns["git_commit"] == pv.code_state()["commit"]
    assert (columns["model_source"], columns["model_commit"]) == (f"org/m@{SHA}", SHA)
    assert columns["tokenizer_commit"] is None
    assert columns["target_source"] is None and columns["benchmark_commit"] is None
    assert json.loads(columns["inputs"]) == inputs  # every role, the utility data too
    with pytest.raises(ValueError, match="40-hex"):
        pv.provenance_columns({"model": {"source": "org/m", "commit": "main"}})


def test_pins_map_specs_to_folders_and_commits(tmp_path):
    snap = tmp_path / "models--org--m" / "snapshots" / SHA
    snap.mkdir(parents=True)
    pin = {"spec": "org/m@main", "commit": SHA, "path": str(snap)}
    (tmp_path / "pin.json").write_text(json.dumps(pin))
    pins = pv.Pins.read([tmp_path / "pin.json"])
    assert pins.local("org/m@main") == str(snap) and pins.folder("org/m@main") == str(snap)
    assert pins.record("org/m@main") == {"source": "org/m@main", "commit": SHA}
    assert pins.local("other/x") == "other/x" and pins.folder("other/x") is None  # no pin
    assert pins.record(str(snap)) == {"source": str(snap), "commit": SHA}  # a snapshot folder
    assert pins.record("results/x") == {"source": "results/x", "commit": None}
    assert pins.local(None) is None and pins.record(None)["source"] is None
    snap.rmdir()
    with pytest.raises(FileNotFoundError, match="run the download step again"):
        pins.local("org/m@main")


def _offline(root: Path, code: str) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter on the hub cache under root, without network."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(root / "cache"),
        "HF_HOME": str(root / "home"),
    }
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_download_input_pins_a_cached_revision_offline(tmp_path, realistic_checkpoint):
    """The download step on a hub cache (HF_HUB_OFFLINE=1): the revision resolves through the
    cache's refs/, the pin names the commit and the snapshot folder, and is written only when
    the check passes; a repo that is not in the cache fails naming the download step."""
    from realistic_fixture import install_in_hub_cache

    commit = install_in_hub_cache(realistic_checkpoint, "org/ckpt", tmp_path / "cache")
    code = f"""
import json
from quantunlearn.data.provenance import download_input
from quantunlearn.study.inputs import validate_download
pin = download_input("org/ckpt@main", "model", {str(tmp_path / "pin.json")!r},
                     check=lambda f: validate_download(f, ["model", "tokenizer"]))
def refuse(folder):
    raise ValueError("refused " + folder)
try:
    download_input("org/ckpt@main", "model", {str(tmp_path / "refused.json")!r}, check=refuse)
except ValueError as err:
    pin["refused"] = str(err)
try:
    download_input("org/absent", "model", {str(tmp_path / "absent.json")!r})
except Exception as err:
    pin["absent"] = str(err)
print(json.dumps(pin))
"""
    run = _offline(tmp_path, code)
    assert run.returncode == 0, run.stderr[-3000:]
    pin = json.loads(run.stdout.strip().splitlines()[-1])
    assert pin["commit"] == commit and pin["path"].endswith(f"/snapshots/{commit}")
    assert (pin["repo_id"], pin["revision"], pin["repo_type"]) == ("org/ckpt", "main", "model")
    assert json.loads((tmp_path / "pin.json").read_text())["commit"] == commit
    assert pin["refused"].startswith("refused") and not (tmp_path / "refused.json").exists()
    assert "org/absent" in pin["absent"] and "download" in pin["absent"]
    assert not (tmp_path / "absent.json").exists()


def test_cell_rows_carry_provenance_and_privleak_recomputes(tmp_path, tiny_model_dir):
    """evaluate_cell on a real model: every row carries the code commit, the versions and each
    input's source; the records hold the per-text Min-K% scores of the model and of the
    retrain reference, from which scikit-learn recomputes PrivLeak."""
    from sklearn.metrics import roc_auc_score

    from quantunlearn.data.synthetic import generate_synthetic

    generate_synthetic(tmp_path / "bench", n_people=40, n_retain_qa_people=4, n_icl=2)
    evaluation = {
        "verbmem_max_new_tokens": 4,
        "knowmem_max_new_tokens": 4,
        "mink_k": 0.4,
        "batch_size": 16,
        "max_length": 64,
    }
    reference_auc(str(tiny_model_dir), tmp_path / "bench", tmp_path / "auc.json", evaluation)
    reference = json.loads((tmp_path / "auc.json").read_text())
    assert json.loads(reference["provenance"]["inputs"])["retrain"]["source"] == str(tiny_model_dir)
    cell = {"benchmark": "b", "run": "method~target", "method": "target"}
    job = CellJob(cell, "rtn_w4", {"x": 1}, str(tiny_model_dir), evaluation=evaluation)
    rows = evaluate_cell(
        job,
        tmp_path / "bench",
        tmp_path / "auc.json",
        tmp_path / "m.parquet",
        tmp_path / "r.parquet",
    )
    assert (rows["git_commit"] == pv.code_state()["commit"]).all()
    assert (rows["model_source"] == str(tiny_model_dir)).all() and rows["model_commit"].isna().all()
    assert (rows["retrain_source"] == str(tiny_model_dir)).all()
    assert json.loads(rows["versions"].iloc[0])["sentencepiece"]
    records = pd.read_parquet(tmp_path / "r.parquet")
    own = records[records["metric"] == "mink_auc"]
    ref = records[records["metric"] == "mink_auc_retrain"]
    n = len(own)
    assert n == len(ref) > 0 and set(own["split"]) == {"forget", "holdout"}
    auc = roc_auc_score(own["split"] == "holdout", own["score"])
    auc_retrain = roc_auc_score(ref["split"] == "holdout", ref["score"])
    value = rows.set_index("metric")["value"]
    assert auc_retrain == pytest.approx(reference["auc_retrain"], abs=1e-12)
    assert value["mink_auc"] == pytest.approx(auc, abs=1e-12)
    assert value["privleak"] == pytest.approx((auc - auc_retrain) / auc_retrain * 100, abs=1e-9)
