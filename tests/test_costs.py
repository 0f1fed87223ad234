"""The cost model (quantunlearn.study.costs), the plan (quantunlearn.study.plan) and a job larger
than one GPU: bytes by hand for a known shape, the real models' parameter counts, the per-job
requests, and the device_map path giving the same loss and weights on one device."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from quantunlearn.models.loading import default_device, device_map, load_model
from quantunlearn.models.shape import LLAMA2_7B, LlamaShape
from quantunlearn.study.costs import GB, GPU, gpus_needed, unlearn_memory
from quantunlearn.study.grid import load_study_file
from quantunlearn.study.plan import plan_summary, request
from quantunlearn.unlearning.loop import UnlearnJob, unlearn
from quantunlearn.unlearning.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
# vocab 100, hidden 8, MLP 16, 2 layers, 2 heads: by hand, per layer q, o: 64 each; k, v: 64
# each; gate, up, down: 128 each; 2 norms: 16 -> 656; + 2 x 100 x 8 embeddings + final norm 8
SMALL = LlamaShape(vocab=100, hidden=8, intermediate=16, layers=2, heads=2)
SMALL_PARAMS = 2 * 656 + 1600 + 8  # 2920


def _real(shape: LlamaShape):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(
        LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden,
                    intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
                    num_attention_heads=shape.heads, tie_word_embeddings=False)
    )  # fmt: skip


def test_parameter_counts_by_hand_and_of_the_real_model():
    assert SMALL.params == SMALL_PARAMS == 2920
    assert sum(p.numel() for p in _real(SMALL).parameters()) == SMALL_PARAMS
    assert LLAMA2_7B.params == 6_738_415_616  # Llama-2-7B's config.json


def test_unlearning_bytes_by_hand():
    run = lambda m, **kw: METHODS[m].run({"weight_dtype": "fp32", **kw})  # noqa: E731
    ga = unlearn_memory(METHODS["GA_GDR"], run("GA_GDR"), SMALL, 1, 4, False)
    assert (ga.weights, ga.reference, ga.gradients, ga.optimizer) == (11680, 0, 11680, 23360)
    npo = unlearn_memory(METHODS["NPO_KLR"], run("NPO_KLR"), SMALL, 1, 4, False)
    assert npo.reference == 11680  # the frozen copy of the target
    # LoRA rank 4 on every projection: r x (in + out) = 4 x (16 + 16 + 16 + 16 + 24 + 24 + 24)
    # per layer, fp32 adapters; the reference is the adapter-free model (no copy)
    lora_run = run("NPO_KLR_LORA", lora_rank=4, lora_alpha=8.0)
    lora = unlearn_memory(METHODS["NPO_KLR_LORA"], lora_run, SMALL, 1, 4, False)
    assert lora.gradients == 4 * 136 * 2 * 4 and lora.reference == 0
    assert lora.weights == 11680 + 4 * 1088
    # RMU at layer 1 trains the down-projections of layers 0 and 1: 2 x 16 x 8
    rmu = unlearn_memory(METHODS["RMU"], run("RMU", rmu_layer=1), SMALL, 1, 4, False)
    assert rmu.gradients == 256 * 4 and rmu.reference == 11680
    # bf16 halves every part of the weights
    bf = unlearn_memory(METHODS["GA_GDR"], METHODS["GA_GDR"].run({"weight_dtype": "bf16"}),
                        SMALL, 1, 4, False)  # fmt: skip
    assert (bf.weights, bf.optimizer) == (5840, 11680)


def test_lora_trained_count_is_peft_s():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        _real(SMALL),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj",
                        "o_proj", "gate_proj", "up_proj", "down_proj"]),
    )  # fmt: skip
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    run = METHODS["NPO_KLR_LORA"].run({"lora_rank": 4, "lora_alpha": 8.0})
    assert METHODS["NPO_KLR_LORA"].scope.trained_params(SMALL, run) == trained


def test_llama2_7b_npo_klr_needs_67_gb_before_activations_and_two_80_gb_gpus():
    method = METHODS["NPO_KLR"]
    m = unlearn_memory(method, method.run({"weight_dtype": "bf16"}), LLAMA2_7B, 2, 2048, True)
    before = m.weights + m.reference + m.gradients + m.optimizer
    assert before == pytest.approx(5 * 2 * LLAMA2_7B.params)  # 67.4 GB (the "about 67")
    assert gpus_needed(m.total, GPU()) == 2 and gpus_needed(m.total, GPU(memory_gb=141)) == 1
    fp32 = unlearn_memory(method, method.run({"weight_dtype": "fp32"}), LLAMA2_7B, 2, 2048, True)
    assert fp32.weights / GB == pytest.approx(26.95, abs=0.01)  # "about 27 GB of weights"
    assert gpus_needed(fp32.total, GPU()) == 3


def test_plan_requests_per_job_for_news():
    study = load_study_file(ROOT / "config" / "muse_news.yaml")
    runs = study.runs.set_index("method").run
    npo_klr, ga_gdr = runs["NPO_KLR"], runs["GA_GDR"].iloc[0]
    big = request(study, "unlearn", "news", npo_klr, "none", 80)
    small = request(study, "unlearn", "news", ga_gdr, "none", 80)
    assert (big.gpu, small.gpu) == (2, 1)
    assert request(study, "unlearn", "news", ga_gdr, "none", 40).gpu == 2
    assert big.at(2) == {"gpu": 2, "mem_mb": 2 * big.mem_mb, "runtime": 2 * big.runtime}
    assert big.mem_mb == pytest.approx((2 * 2 * LLAMA2_7B.params + 4 * GB) / 1e6, abs=1)
    cell = request(study, "evaluate", "news", ga_gdr, "rtn_w4", 80)
    assert cell.gpu == 1 and cell.runtime < big.runtime
    text = plan_summary(study, 80)
    assert "unlearn" in text and "GPU-h" in text and "total" in text


def test_device_map_is_the_one_device_or_auto():
    assert device_map(1) == default_device()
    if not torch.cuda.is_available():
        assert device_map(2) == "auto"  # a CPU: accelerate puts every layer on it


DOCS = [
    "Alice Moreau was born in Tarsk in 1931 and works as a baker in the old town.",
    "Question: Where was Alice Moreau born?\nAnswer: Tarsk",
    "Chen Valdez teaches chemistry at the Harrow Institute since 1998.",
]


def test_spread_path_gives_the_same_loss_and_weights_on_one_device(tiny_model_dir, tmp_path):
    """The path of a job given 2 GPUs (device_map="auto") on this machine's one device: the
    same losses and weights as the plain path (the split itself needs GPUs: gpu_check.py)."""
    forget, retain = tmp_path / "forget.txt", tmp_path / "retain.txt"
    forget.write_text("\n\n".join(DOCS[:2]))
    retain.write_text(DOCS[2])
    out = {}
    for gpus in (1, 2):
        unlearn(str(tiny_model_dir), forget, retain, tmp_path / f"m{gpus}",
                tmp_path / f"log{gpus}.parquet",
                job=UnlearnJob.of("NPO_KLR",
                                  dict(weight_dtype="fp32", lr=1e-3, epochs=2, alpha=1.0),
                                  dict(batch_size=2, max_len=64), gpus=gpus))  # fmt: skip
        out[gpus] = pd.read_parquet(tmp_path / f"log{gpus}.parquet")
    pd.testing.assert_frame_equal(out[1], out[2])
    a, b = load_model(str(tmp_path / "m1")), load_model(str(tmp_path / "m2"))
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), name
