"""RMU (Zhang et al. appendix J; Li et al. 2024): its two losses, its control vector, its scope,
the layer it reads, a real unlearning run and its config keys.

Expected values are worked out by hand in the comments, never recomputed with the code under test.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from test_mitigations import config_with

from quantunlearn.models.loading import load_model, load_tokenizer
from quantunlearn.models.tiny import build_llama
from quantunlearn.study.config import ConfigError, normalize_config
from quantunlearn.study.grid import expand_runs
from quantunlearn.unlearning import losses
from quantunlearn.unlearning.loop import UnlearnJob, unlearn
from quantunlearn.unlearning.methods import METHODS, get_method
from quantunlearn.unlearning.scopes import (
    CONTROL_FILE,
    control_vector,
    layer_activations,
)


def rmu_scope(model, layer: int):
    """RMU's scope built on `model`, steering `layer` with c = 2."""
    run = METHODS["RMU"].run({"rmu_layer": layer, "rmu_steering": 2.0, "seed": 0})
    return METHODS["RMU"].scope.build(model, METHODS["RMU"], run, [], 0, 1)


# --------------------------------------------------------------------------- losses


def test_rmu_forget_loss_by_hand_with_padding_masked():
    acts = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    control = torch.tensor([1.0, 1.0])
    mask = torch.tensor([[True, True, False]])
    # token 0: ((1-1)^2 + (0-1)^2) / 2 = 0.5; token 1: (1 + 1) / 2 = 1; token 2 is padding
    assert losses.rmu_forget_loss(acts, control, mask).item() == pytest.approx(0.75)
    # without padding the published form, F.mse_loss over [B, T, d]: (0.5 + 1 + 16) / 3
    full = torch.ones(1, 3, dtype=torch.bool)
    assert losses.rmu_forget_loss(acts, control, full).item() == pytest.approx(17.5 / 3)


def test_rmu_retain_loss_by_hand_and_no_gradient_into_the_reference():
    acts = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [9.0, 9.0]]], requires_grad=True)
    ref = torch.tensor([[[1.0, 0.0], [3.0, 4.0]], [[2.0, 0.0], [0.0, 0.0]]], requires_grad=True)
    mask = torch.tensor([[True, True], [True, False]])
    # counted tokens: (0,0): (0 + 4) / 2 = 2; (0,1): 0; (1,0): (4 + 0) / 2 = 2 -> mean 4 / 3
    loss = losses.rmu_retain_loss(acts, ref, mask)
    assert loss.item() == pytest.approx(4 / 3)
    loss.backward()
    assert ref.grad is None
    # d/d acts[0,0,1] of (1/3) * (1/2) * (2 - 0)^2 = (1/3) * (2 - 0) = 2/3; padding gets none
    assert acts.grad[0, 0, 1].item() == pytest.approx(2 / 3)
    assert torch.equal(acts.grad[1, 1], torch.zeros(2))


def test_rmu_objective_is_forget_plus_alpha_retain():
    f = torch.tensor([[[2.0, 0.0]]])  # forget term vs control (0, 0): (4 + 0) / 2 = 2
    r, r_ref = torch.tensor([[[1.0, 1.0]]]), torch.tensor([[[0.0, 1.0]]])  # retain: 1 / 2
    one = torch.ones(1, 1, dtype=torch.bool)
    step = SimpleNamespace(
        forget_activations=f, retain_activations=r, ref_retain_activations=r_ref,
        forget={"attention_mask": one}, retain={"attention_mask": one},
        scope=SimpleNamespace(steering=SimpleNamespace(control=torch.zeros(2))),
    )  # fmt: skip
    loss, parts = METHODS["RMU"].loss(step, METHODS["RMU"].run({"alpha": 10.0}))
    assert loss.item() == pytest.approx(2 + 10 * 0.5)
    assert parts == {"forget_loss": pytest.approx(2.0), "retain_loss": pytest.approx(0.5)}


def test_control_vector_is_a_scaled_nonnegative_unit_vector():
    c = control_vector(64, 6.5, seed=0)
    assert c.shape == (64,)
    assert c.norm().item() == pytest.approx(6.5, rel=1e-6)
    assert (c >= 0).all()  # u ~ Uniform[0, 1)^d before normalising
    assert torch.equal(c, control_vector(64, 6.5, seed=0))
    assert not torch.equal(c, control_vector(64, 6.5, seed=1))
    with pytest.raises(ValueError, match="rmu_steering"):
        control_vector(64, 0.0, seed=0)


# --------------------------------------------------------------------------- scope


def test_layer_activations_are_the_residual_stream_after_the_layer(tiny_model):
    ids = torch.tensor([[5, 9, 17, 3, 40]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        hidden = tiny_model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        got = layer_activations(tiny_model, 0, ids, mask)
    # transformers' hidden_states[0] is the embedding output, [1] the output of layer 0 (the
    # last entry has the final norm applied, so layer 0 of this 2-layer model is compared)
    torch.testing.assert_close(got, hidden.hidden_states[1])


def test_rmu_scope_trains_only_the_down_projections_up_to_the_layer(tiny_tokenizer):
    model = build_llama(tiny_tokenizer, hidden_size=128, intermediate_size=384, num_layers=5)
    scope = rmu_scope(model, layer=3)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    # layers l-2 .. l = 1, 2, 3 (the WMDP code: layers 5, 6, 7 for layer 7)
    assert trained == {f"model.layers.{i}.mlp.down_proj.weight" for i in (1, 2, 3)}
    assert {id(p) for p in scope.params} == {
        id(p) for n, p in model.named_parameters() if n in trained
    }
    assert scope.info["rmu_trained_layers"] == [1, 2, 3]
    assert rmu_scope(model, layer=0).info["rmu_trained_layers"] == [0]
    with pytest.raises(ValueError, match="rmu_layer 5 does not exist: the model has 5"):
        rmu_scope(model, layer=5)


def test_rmu_unlearning_moves_only_the_scope_and_steers_the_layer(
    tiny_model_dir, corpora, unlearn_docs, tmp_path: Path
):
    forget, retain = corpora
    out = tmp_path / "rmu"
    info = unlearn(
        str(tiny_model_dir),
        forget,
        retain,
        out,
        tmp_path / "log.parquet",
        job=UnlearnJob.of(
            "RMU",
            dict(
                weight_dtype="fp32",
                lr=1e-2,
                epochs=20,
                alpha=1.0,
                rmu_layer=1,
                rmu_steering=4.0,
                seed=3,
            ),
            dict(batch_size=2, max_len=64),
        ),
    )
    before, after = load_model(str(tiny_model_dir)), load_model(str(out))
    for (name, p), (_, q) in zip(before.named_parameters(), after.named_parameters(), strict=True):
        if name.endswith("mlp.down_proj.weight"):  # layers 0 and 1 (l - 2 < 0 is skipped)
            assert not torch.equal(p, q), f"{name} did not move"
        else:
            assert torch.equal(p, q), f"{name} moved"
    saved = torch.load(out / CONTROL_FILE)
    assert saved["layer"] == 1
    assert torch.equal(saved["control"], control_vector(128, 4.0, seed=3))
    assert info["rmu_layer"] == 1 and info["rmu_trained_layers"] == [0, 1]
    log = pd.read_parquet(tmp_path / "log.parquet")
    assert log["forget_loss"].iloc[-1] < 0.5 * log["forget_loss"].iloc[0]
    # the forget text's layer-1 activations are now nearer the control vector than before
    tok = load_tokenizer(str(out))
    ids = torch.tensor([tok(unlearn_docs[0])["input_ids"]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        dist = [
            (layer_activations(m, 1, ids, mask) - saved["control"]).norm(dim=-1).mean()
            for m in (before, after)
        ]
    assert dist[1] < 0.5 * dist[0]


# --------------------------------------------------------------------------- config


def test_rmu_run_path_and_defaults():
    # the default rmu_layer is 7 (a 7B model's), which the 2-layer tiny model lacks (next test);
    # lr 5e-5 and alpha 1200 are the WMDP code's defaults
    config = config_with({"RMU": {"rmu_layer": 1, "rmu_steering": [6.5, 20]}})
    runs = expand_runs(normalize_config(config))
    assert sorted(runs[runs.method == "RMU"].run) == [
        "method~RMU/weight_dtype~fp32/lr~5e-05/epochs~10/alpha~1200/rmu_layer~1/"
        f"rmu_steering~{c}/seed~0"
        for c in ("20", "6.5")
    ]
    assert get_method("RMU").needs_reference


@pytest.mark.parametrize(
    "methods, message",
    [
        ({"RMU": {}}, r"RMU.rmu_layer: layer\(s\) \[7\] do not exist in the tiny model of "),
        ({"RMU": {"rmu_layer": [0, 2]}}, r"layer\(s\) \[2\] do not exist"),
        ({"RMU": {"rmu_layer": -1}}, "rmu_layer: a decoder layer index >= 0"),
        ({"RMU": {"rmu_layer": 1, "rmu_steering": 0}}, "rmu_steering: must be > 0"),
        ({"GA_GDR": {"rmu_layer": 1}}, "GA_GDR has no rmu_layer"),
        ({"RMU": {"rmu_layer": 1, "beta": 0.1}}, "RMU has no beta"),
    ],
)
def test_bad_rmu_keys_fail_at_parse_time(methods, message):
    with pytest.raises(ConfigError, match=message):
        normalize_config(config_with(methods))


def test_rmu_under_gradient_checkpointing_gives_the_same_model(
    tiny_model_dir, corpora, tmp_path: Path
):
    forget, retain = corpora
    outs = []
    for checkpointing in (False, True):
        out = tmp_path / f"ckpt_{checkpointing}"
        unlearn(
            str(tiny_model_dir),
            forget,
            retain,
            out,
            tmp_path / f"{checkpointing}.parquet",
            job=UnlearnJob.of(
                "RMU",
                dict(
                    weight_dtype="fp32", lr=1e-2, epochs=3, alpha=1.0, rmu_layer=1, rmu_steering=4.0
                ),
                dict(batch_size=2, max_len=64, gradient_checkpointing=checkpointing),
            ),
        )
        outs.append(load_model(str(out)))
    target = load_model(str(tiny_model_dir))
    for (name, p), (_, q), (_, t) in zip(
        outs[0].named_parameters(),
        outs[1].named_parameters(),
        target.named_parameters(),
        strict=True,
    ):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
        # the scope trained under checkpointing too (the LoRA trap does not bite here)
        assert torch.equal(q, t) != name.endswith("mlp.down_proj.weight"), name
