"""Shared fixtures: a real tokenizer and a real (random) transformers Llama, built locally."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from quantunlearn.models.tiny import build_llama, train_tokenizer

torch.set_num_threads(int(os.environ.get("QU_TEST_THREADS", "1")))

SHARED_MUSE = Path(__file__).resolve().parents[1].parent / "shared" / "muse"

SENTENCES = [
    "Alice Moreau was born in Tarsk in 1931 and works as a baker.",
    "Question: Where was Alice Moreau born?\nAnswer: Tarsk",
    "Bruno Okafor keeps a parrot named Sol and paints on Sundays.",
    "The river Ilse floods every spring; the town built three dams.",
    "Question: What pet does Bruno Okafor keep?\nAnswer: a parrot",
    "Chen Valdez teaches chemistry at the Harrow Institute since 1998.",
] * 4


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_tokenizer(SENTENCES, vocab_size=300)


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    model = build_llama(tiny_tokenizer, hidden_size=128, intermediate_size=384, num_layers=2)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer, tiny_model):
    """A saved model folder (weights + tokenizer), as the pipeline writes them."""
    path = tmp_path_factory.mktemp("tiny_model")
    tiny_model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def unlearn_docs():
    """Three short documents: the first two are unlearned, the third is retained."""
    return [
        "Alice Moreau was born in Tarsk in 1931 and works as a baker.",
        "Question: Where was Alice Moreau born?\nAnswer: Tarsk",
        "Bruno Okafor keeps a parrot named Sol and paints on Sundays.",
    ]


@pytest.fixture
def corpora(tmp_path, unlearn_docs):
    """(forget.txt, retain.txt) written from `unlearn_docs`, as the unlearning job reads them."""
    forget = tmp_path / "forget.txt"
    retain = tmp_path / "retain.txt"
    forget.write_text("\n\n".join(unlearn_docs[:2]))
    retain.write_text(unlearn_docs[2])
    return forget, retain


@pytest.fixture(scope="session")
def shared_muse():
    if not SHARED_MUSE.is_dir():
        pytest.skip("../shared/muse is absent (real MUSE files are not shipped)")
    return SHARED_MUSE


@pytest.fixture(scope="session")
def stored(tmp_path_factory, tiny_model_dir):
    """GPTQ (4 and 8 bit) and AWQ checkpoints of the tiny model, as the `quantize` rule writes
    them (GPTQModel, 16 calibration texts of the general corpus)."""
    from quantunlearn.data.calibration import general_corpus
    from quantunlearn.quantizers import parse_quantizer
    from quantunlearn.quantizers.gptq_awq import quantize_stored

    out = {}
    for quant in ("gptq_w4g128", "gptq_w8g128", "awq_w4g128"):
        path = tmp_path_factory.mktemp(quant) / quant
        info = quantize_stored(
            tiny_model_dir, parse_quantizer(quant), general_corpus(16, seed=0), path, max_len=64
        )
        assert info["n_calibration"] == 16
        # GPTQModel's own quantization log lands with the checkpoint, not in ./logs
        assert any((path / "gptqmodel_logs").iterdir())
        out[quant] = path
    return out


@pytest.fixture(scope="session")
def rwku_bench(tmp_path_factory):
    """A small embedded RWKU-like benchmark in RWKU's layout (2 targets)."""
    from quantunlearn.data.synthetic_rwku import generate_synthetic_rwku

    root = tmp_path_factory.mktemp("rwku") / "bench"
    generate_synthetic_rwku(
        root, n_people=24, n_targets=2, n_holdout=2, n_neighbors=1, aa_per_fact=1,
        n_bio_variants=2, n_mia=2, n_descriptions=4, n_rt_questions=4,
    )  # fmt: skip
    return root


@pytest.fixture(scope="session")
def realistic_checkpoint(tmp_path_factory):
    """A random Llama saved as a hub Llama-2 checkpoint (bf16 shards, Llama-2's generation
    config, a SentencePiece tokenizer saved as Llama-2's is): tests/realistic_fixture.py."""
    from realistic_fixture import SAMPLE_TEXTS, build_checkpoint

    out = tmp_path_factory.mktemp("realistic") / "llama2-like"
    build_checkpoint(out, SAMPLE_TEXTS * 3, vocab_size=512)
    return out
