"""Target and retrain fine-tuned from a base model (models.base; the Twitter study's recipe)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from test_contracts import ROOT

from quantunlearn.data.documents import read_documents, tokenize_documents
from quantunlearn.data.twitter import prepare_twitter
from quantunlearn.models.finetune import finetune_reference
from quantunlearn.models.loading import load_model
from quantunlearn.models.training import stream_chunks
from quantunlearn.study import ConfigError, load_study

# max_len 256: every tweet fits one sequence (a tweet one token over max_len leaves a 1-token
# piece, and a batch of such pieces has no next token to predict)
SPEC = {"epochs": 2, "lr": 1e-3, "batch_size": 2, "max_len": 256, "warmup_steps": 0,
        "weight_decay": 0.0, "weight_dtype": "fp32", "gradient_checkpointing": True,
        "seed": 0, "adam_beta2": 0.999, "packing": "stream"}  # fmt: skip


def test_stream_chunks_join_the_documents_and_cut_every_max_len_tokens():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    assert stream_chunks(docs, 4) == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert stream_chunks(docs, 9) == [[1, 2, 3, 4, 5, 6, 7, 8, 9]]
    with pytest.raises(ValueError, match="max_len must be >= 1"):
        stream_chunks(docs, 0)


def test_the_notebooks_recipe_trains_on_stream_chunks(tiny_model_dir, tiny_tokenizer, tmp_path):
    """packing stream (the Twitter notebook): as many steps as ceil(chunks / batch) per epoch,
    the chunks being the forget + retain1 tweets joined and cut every max_len tokens; packing
    documents packs whole tweets instead (here: fewer, shorter sequences than max_len 16 cuts)."""
    spec = {"data": "synthetic", "n_forget": 4, "n_retain": 6, "seed": 0}
    prepare_twitter(spec, tmp_path / "bench")
    docs = [d for s in ("forget", "retain") for d in read_documents(tmp_path / "bench" / "raw" /
            f"{s}.txt")]  # fmt: skip
    chunks = stream_chunks(tokenize_documents(docs, tiny_tokenizer), 16)
    stream = {**SPEC, "max_len": 16, "epochs": 1}
    model = str(tiny_model_dir)
    info = finetune_reference(
        "target", tmp_path / "bench", model, model, tmp_path / "s", tmp_path / "s.parquet", stream
    )
    assert info["steps"] == -(-len(chunks) // 2)
    assert len(chunks) > len(docs)  # tweets are longer than 16 tokens: cut across documents


@pytest.mark.parametrize("which", ["target", "retrain"])
def test_finetune_from_a_base_model(which, tiny_model_dir, tmp_path):
    spec = {"data": "synthetic", "n_forget": 4, "n_retain": 6, "seed": 0}
    prepare_twitter(spec, tmp_path / "bench")
    out = tmp_path / which
    info = finetune_reference(which, tmp_path / "bench", str(tiny_model_dir), str(tiny_model_dir),
                              out, tmp_path / "log.parquet", SPEC)  # fmt: skip
    # target: 4 forget + 6 retain1 tweets; retrain: the 6 retain1 tweets only
    assert info["n_documents"] == {"target": 10, "retrain": 6}[which]
    saved = json.loads((out / "train_info.json").read_text())
    assert saved["base"] == str(tiny_model_dir) and saved["finetune"] == SPEC
    before, after = load_model(str(tiny_model_dir)), load_model(str(out))
    assert any(not torch.equal(p, q) for p, q in zip(before.parameters(), after.parameters(),
                                                      strict=True))  # fmt: skip
    assert after.config.use_cache  # saved without gradient checkpointing
    assert (out / "tokenizer.json").is_file()


def base_config(**models):
    config = yaml.safe_load((ROOT / "tests" / "configs" / "micro.yaml").read_text())
    config["benchmarks"] = {"tw": {"source": "twitter", "models": models}}
    return config


def test_config_of_a_base_model(tiny_model_dir):
    study = load_study(base_config(base=str(tiny_model_dir)))
    bench = study.benchmark("tw")
    assert bench["models"]["tokenizer"] == str(tiny_model_dir)  # the base's tokenizer
    assert bench["finetune"]["epochs"] == 5 and bench["finetune"]["batch_size"] == 3
    assert study.trains_models("tw") and study.base_model("tw") == str(tiny_model_dir)
    run = study.runs.query("method == 'GA_GDR'").run.item()
    assert "tiny_model" not in study.cell_config("tw", run)
    with pytest.raises(ConfigError, match="models.base: the target and retrain are fine-tuned"):
        load_study(base_config(base=str(tiny_model_dir), target="a/b", retrain="a/c"))
    config = base_config()
    config["benchmarks"]["tw"]["finetune"] = {"epochs": 1}
    with pytest.raises(ConfigError, match="tw.finetune: only a benchmark with models.base"):
        load_study(config)
