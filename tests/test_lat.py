"""RMU_LAT's latent adversary (Sheshadri et al. 2024) on a real (tiny, random) transformers
Llama: the perturbation, its ball, the search, and the RMU step that trains against it."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from test_contracts import ROOT
from transformers import LlamaConfig, LlamaForCausalLM

from quantunlearn.models.loading import decoder_layers, load_model
from quantunlearn.study import ConfigError, load_study
from quantunlearn.unlearning import families
from quantunlearn.unlearning.lat import (
    LatentAdversary,
    LatentPerturbation,
    adversary_loss,
    latent_pgd,
    pad_batch,
    project_l2_ball,
)
from quantunlearn.unlearning.loop import UnlearnJob, unlearn
from quantunlearn.unlearning.losses import away_loss, nll
from quantunlearn.unlearning.methods import METHODS
from quantunlearn.unlearning.objectives import Step


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def batch(seed, b=2, t=7, pad_last=2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[-1, t - pad_last :] = 0  # the last sequence is padded
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def test_projection_onto_the_ball_by_hand():
    d = torch.tensor([[[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]]])  # norms 5, 0.5, 0
    assert torch.allclose(
        project_l2_ball(d, 1.0), torch.tensor([[[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]])
    )
    with pytest.raises(ValueError, match="epsilon"):
        project_l2_ball(d, 0.0)


def test_away_loss_by_hand():
    # one sequence, vocabulary of 2: position 0 predicts token 1 (p = 3/4), position 1 token 0
    # (p = 4/5); -log(1 - p) = log 4 and log 5
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(4.0), 0.0], [5.0, 5.0]]])
    labels = torch.tensor([[7, 1, 0]])
    assert away_loss(logits, labels).item() == pytest.approx((math.log(4) + math.log(5)) / 2)
    # the toward term is the plain cross-entropy: -(log 3/4 + log 4/5) / 2
    assert nll(logits, labels).item() == pytest.approx(-(math.log(3 / 4) + math.log(4 / 5)) / 2)
    # a token the model gives log p below the threshold contributes 0 but still counts
    cut = away_loss(logits, labels, threshold=math.log(0.78)).item()
    assert cut == pytest.approx(math.log(5) / 2)


def test_pad_batch_by_hand():
    b = {"input_ids": torch.tensor([[5, 6]]), "attention_mask": torch.tensor([[1, 1]]),
         "labels": torch.tensor([[5, 6]])}  # fmt: skip
    p = pad_batch(b, 2, 3)
    assert p["input_ids"].tolist() == [[5, 6, 0], [0, 0, 0]]
    assert p["attention_mask"].tolist() == [[1, 1, 0], [0, 0, 0]]
    assert p["labels"].tolist() == [[5, 6, -100], [-100, -100, -100]]
    assert pad_batch(b, 1, 1)["input_ids"].tolist() == [[5]]


def test_perturbation_adds_delta_at_the_layer_output_on_masked_tokens_only(model):
    fb, layer, seen = batch(1), 1, []
    nxt = decoder_layers(model)[layer + 1]

    def grab(_m, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    handle = nxt.register_forward_pre_hook(grab, with_kwargs=True)
    delta, mask = torch.randn(2, 7, 16), fb["attention_mask"].bool()
    try:
        with torch.no_grad():
            model(input_ids=fb["input_ids"], attention_mask=fb["attention_mask"])
            with LatentPerturbation(model, layer, delta, mask):
                model(input_ids=fb["input_ids"], attention_mask=fb["attention_mask"])
            model(input_ids=fb["input_ids"], attention_mask=fb["attention_mask"])
    finally:
        handle.remove()
    clean, perturbed, after = seen
    assert torch.allclose(perturbed, clean + delta * mask.unsqueeze(-1), atol=1e-6)
    assert torch.equal(perturbed[1, 5:], clean[1, 5:])  # padding untouched
    assert torch.equal(after, clean)  # the hook is gone after the block


def test_perturbation_checks_layer_and_shapes(model):
    with pytest.raises(ValueError, match="lat_layer 3 does not exist"):
        LatentPerturbation(model, 3, torch.zeros(1, 2, 16), torch.ones(1, 2))
    with pytest.raises(ValueError, match="shape"):
        with LatentPerturbation(model, 0, torch.zeros(1, 2, 16), torch.ones(1, 2)):
            model(input_ids=torch.zeros(1, 3, dtype=torch.long))


def test_pgd_stays_in_its_ball_and_lowers_the_adversary_loss(model):
    fb, rb, eps = batch(2), batch(3), 0.5
    before = [p.detach().clone() for p in model.parameters()]
    mask = fb["attention_mask"].bool()
    loss_fn = adversary_loss(fb, rb, away=1.0)
    res = latent_pgd(model, 1, mask, loss_fn, epsilon=eps, steps=16, lr=5e-2)
    norms = res.delta.norm(dim=-1)
    assert (norms <= eps * (1 + 1e-5)).all()  # every token in its ball
    # the adversary uses its budget wherever its perturbation reaches a counted prediction; a
    # sequence's last real token predicts nothing counted, so it gets no gradient and stays 0
    predicts = mask & torch.nn.functional.pad(mask[:, 1:], (0, 1), value=False)
    assert norms[predicts].min() > 0.9 * eps
    assert (norms[mask & ~predicts] == 0).all()
    assert (norms[~mask] == 0).all()  # nothing at padding
    with torch.no_grad():
        at_zero = loss_fn(model).item()
    assert len(res.losses) == 16 and res.losses[0] == pytest.approx(at_zero, rel=1e-5)
    assert res.final_loss < at_zero - 0.05
    for p, q in zip(model.parameters(), before, strict=True):  # the model is untouched
        assert torch.equal(p, q) and p.grad is None and p.requires_grad


def test_larger_ball_lets_the_adversary_do_more(model):
    fb = batch(4)

    def final(eps):
        mask = fb["attention_mask"].bool()
        fn = adversary_loss(fb, None, away=1.0)
        return latent_pgd(model, 0, mask, fn, epsilon=eps, steps=12, lr=5e-2).final_loss

    assert final(2.0) < final(0.05)


def test_attack_shapes_follow_the_forget_batch(model):
    # retain batch longer (9 positions) and with more rows: delta is cut back to the forget shape
    fb, rb = batch(5, b=2, t=7), batch(6, b=3, t=9)
    attack = LatentAdversary(0, 1.0, 2, 5e-2, 1.0).attack(model, fb, rb)
    assert attack.delta.shape == (2, 7, 16) and attack.mask.shape == (2, 7)
    assert (attack.delta.norm(dim=-1) <= 1.0 + 1e-5).all()


class _Scope:
    """The bits of a Trainable that Step reads for RMU: the steering at layer 2."""

    def __init__(self, model):
        from quantunlearn.unlearning.scopes import Steering

        self.steering = Steering(2, torch.zeros(16))


def test_the_attack_applies_to_the_forget_activation_pass_only(model):
    fb, rb = batch(7), batch(8)
    attack = LatentAdversary(1, 1.0, 4, 5e-2, 1.0).attack(model, fb, rb)
    clean = Step(model, _Scope(model), fb, rb)
    attacked = Step(model, _Scope(model), fb, rb, attack=attack)
    with torch.no_grad():
        assert not torch.allclose(clean.forget_activations, attacked.forget_activations)
        assert torch.equal(clean.retain_activations, attacked.retain_activations)


def test_rmu_lat_steps_and_scope(tiny_model_dir, corpora, tmp_path):
    forget, retain = corpora
    hyper = {"weight_dtype": "fp32", "lr": 1e-2, "epochs": 2, "rmu_layer": 1, "lat_layer": 0,
             "lat_steps": 3, "lat_model_steps": 3, "lat_epsilon": 0.5}  # fmt: skip
    out = tmp_path / "model"
    info = unlearn(str(tiny_model_dir), forget, retain, out, tmp_path / "log.parquet",
                   job=UnlearnJob.of("RMU_LAT", hyper,
                                     {"batch_size": 1, "max_len": 64}))  # fmt: skip
    # 2 forget sequences, batch 1: 2 epochs x 2 batches x 3 RMU steps per attack
    assert info["n_forget_sequences"] == 2 and info["steps"] == 12
    assert info["trained_parameters"] == [
        "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"
    ]  # fmt: skip
    before, after = load_model(str(tiny_model_dir)), load_model(str(out))
    moved = {n for (n, p), (_, q) in zip(before.named_parameters(), after.named_parameters(),
                                         strict=True) if not torch.equal(p, q)}  # fmt: skip
    assert moved == set(info["trained_parameters"])
    assert info["lat_layer"] == 0 and info["lat_model_steps"] == 3
    import pandas as pd

    log = pd.read_parquet(tmp_path / "log.parquet")
    assert len(log) == 12 and log["adversary_loss"].notna().all()


def test_rmu_lat_layer_must_be_below_rmus(tmp_path):
    config = yaml.safe_load((ROOT / "tests" / "configs" / "micro.yaml").read_text())
    config["tiny_model"]["num_layers"] = 2
    config["unlearn"]["methods"] = {"RMU_LAT": {"rmu_layer": 1, "lat_layer": [0, 1]}}
    with pytest.raises(ConfigError, match=r"unlearn.methods.RMU_LAT.lat_layer: the perturbation "
                       r"must act below RMU's steered layer \(rmu_layer 1"):  # fmt: skip
        load_study(config)
    config["unlearn"]["methods"] = {"RMU_LAT": {"rmu_layer": 1, "lat_layer": 0}}
    assert METHODS["RMU_LAT"].family is families.RMU
    assert len(load_study(config).runs.query("method == 'RMU_LAT'")) == 1
