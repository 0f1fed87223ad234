"""The quantization-robust methods: QUAIL's hinge, SURE's mask, LoRA's merge, their config keys.

Expected values are worked out by hand in the comments, never recomputed with the code under test.
"""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from quantunlearn.models.loading import load_model
from quantunlearn.models.training import IGNORE
from quantunlearn.study.config import ConfigError, normalize_config
from quantunlearn.study.grid import expand_runs, run_path
from quantunlearn.unlearning import losses
from quantunlearn.unlearning.families import PLAIN, RMU
from quantunlearn.unlearning.loop import UnlearnJob, unlearn
from quantunlearn.unlearning.methods import METHODS, get_method
from quantunlearn.unlearning.quail_margin import logit_perturbation, parse_margin
from quantunlearn.unlearning.scopes import (
    ADAPTER_DIR,
    SALIENCY_FILE,
    saliency_mask,
    weight_modules,
)


def lora(model, name: str, **values):
    """The LoRA scope of method `name` built on `model` (the reference: the adapter-free model,
    when the method needs one)."""
    method = METHODS[name]
    return method.scope.build(model, method, method.run(values), [], 0, 1)


# --------------------------------------------------------------------------- QUAIL


def test_quail_hinge_by_hand_with_padding_masked():
    # one sequence, 3 positions, K = 2; the last position is padding (label IGNORE)
    ref = torch.zeros(1, 3, 2)
    cur = torch.tensor([[[0.1, -0.5], [0.3, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[5, 6, IGNORE]])
    # delta = 1 -> margin 0.5; position 0: max(0, .5-.1)=.4, max(0, .5-.5)=0 -> mean .2
    # position 1: .2 and .5 -> mean .35; position 2 (padding, gap 0 -> .5) is not counted
    got = losses.quail_hinge(cur, ref, labels, 1.0)
    assert got.item() == pytest.approx((0.2 + 0.35) / 2)


def test_quail_hinge_is_zero_when_the_margin_is_met():
    ref = torch.randn(2, 4, 7)
    cur = ref + torch.where(torch.rand(2, 4, 7) > 0.5, 0.6, -0.6)  # every |gap| = 0.6 > 0.5
    labels = torch.ones(2, 4, dtype=torch.long)
    assert losses.quail_hinge(cur, ref, labels, 1.0).item() == 0.0


def test_quail_hinge_gradient_pushes_logits_apart():
    ref = torch.zeros(1, 2, 3)
    cur = torch.tensor([[[0.1, -0.2, 0.05], [-0.1, 0.3, 0.2]]], requires_grad=True)
    labels = torch.ones(1, 2, dtype=torch.long)
    losses.quail_hinge(cur, ref, labels, 1.0).backward()
    # d/dz' of (1/K) max(0, .5 - |z'|) averaged over 2 positions = -sign(z') / (3 * 2)
    assert torch.allclose(cur.grad, -torch.sign(cur.detach()) / 6)
    stepped = cur.detach() - 0.1 * cur.grad
    assert (stepped.abs() > cur.detach().abs()).all()


def test_quail_hinge_rejects_a_nonpositive_margin():
    with pytest.raises(ValueError, match="margin"):
        losses.quail_hinge(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), torch.ones(1, 1).long(), 0)


def test_quail_objective_adds_gamma_times_hinge():
    torch.manual_seed(0)
    f, ref_f, r = torch.randn(2, 5, 11), torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    step = SimpleNamespace(
        forget_logits=f, ref_forget_logits=ref_f, retain_logits=r, forget={"labels": labels},
        retain={"labels": labels}, state={"quail_margin": 3.0},
    )  # fmt: skip
    base, _ = METHODS["GA_GDR"].loss(step, METHODS["GA_GDR"].run({"alpha": 2.0}))
    hinge = losses.quail_hinge(f, ref_f, labels, 3.0)
    quail = METHODS["GA_GDR_QUAIL"]
    loss, parts = quail.loss(step, quail.run({"alpha": 2.0, "quail_gamma": 0.5}))
    assert loss.item() == pytest.approx(base.item() + 0.5 * hinge.item())
    assert parts["quail_loss"] == pytest.approx(hinge.item())


def test_logit_perturbation_by_hand():
    class Shift(torch.nn.Module):
        def __init__(self, shift):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.shift = shift

        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(*input_ids.shape, 4) + self.shift
            return SimpleNamespace(logits=logits)

    # every counted logit moves by 0.25 -> eps = 0.25 (padding positions would not count)
    eps = logit_perturbation(Shift(0.0), Shift(0.25), [[1, 2, 3], [4]], pad_id=0, batch_size=1)
    assert eps == pytest.approx(0.25)


def test_parse_margin():
    assert parse_margin(1) == 1.0
    assert parse_margin("2.5") == 2.5
    assert parse_margin("rtn_w4g128") == "rtn_w4g128"
    with pytest.raises(ValueError, match="> 0"):
        parse_margin(-1)
    with pytest.raises(ValueError):
        parse_margin("rtn_w99")
    with pytest.raises(ValueError, match="needs a quantizer"):
        parse_margin("none")


def test_quail_unlearning_with_a_quantizer_margin(tiny_model_dir, corpora, tmp_path):
    forget, retain = corpora
    info = unlearn(
        str(tiny_model_dir),
        forget,
        retain,
        tmp_path / "m",
        tmp_path / "log.parquet",
        job=UnlearnJob.of(
            "GA_GDR_QUAIL",
            dict(
                weight_dtype="fp32",
                lr=1e-3,
                epochs=2,
                alpha=1.0,
                quail_gamma=1.0,
                quail_delta="rtn_w4g128",
            ),
            dict(batch_size=2, max_len=64),
        ),
    )
    assert info["quail_margin"] > 0
    log = pd.read_parquet(tmp_path / "log.parquet")
    assert "quail_loss" in log and (log["quail_loss"] >= 0).all()


# --------------------------------------------------------------------------- SURE


def test_saliency_mask_percentile_by_hand():
    scores = pd.DataFrame({"module": list("abcde"), "n_params": 1, "saliency": [1, 2, 3, 4, 5.0]})
    # numpy's linear percentile of 1..5: p50 = 3, p90 = 4.6, p100 = 5
    assert saliency_mask(scores, 50)["salient"].tolist() == [False, False, True, True, True]
    assert saliency_mask(scores, 90)["salient"].tolist() == [False] * 4 + [True]
    assert saliency_mask(scores, 90)["threshold"].iloc[0] == pytest.approx(4.6)
    assert saliency_mask(scores, 100)["salient"].sum() == 1
    with pytest.raises(ValueError, match="percentile"):
        saliency_mask(scores, 101)
    # candidates b, d, e only: their scores 2, 4, 5 -> p50 = 4 -> d and e; a, c never salient
    mask = saliency_mask(scores, 50, {"b", "d", "e"})
    assert mask["salient"].tolist() == [False, False, False, True, True]
    assert mask["candidate"].tolist() == [False, True, False, True, True]


@pytest.mark.parametrize("method, modules", [("GA_GDR_SURE", "linear"), ("NPO_KLR_SURE", "all")])
def test_sure_moves_only_salient_modules(tiny_model_dir, corpora, tmp_path, method, modules):
    forget, retain = corpora
    out = tmp_path / "m"
    info = unlearn(
        str(tiny_model_dir),
        forget,
        retain,
        out,
        tmp_path / "log.parquet",
        job=UnlearnJob.of(
            method,
            dict(
                weight_dtype="fp32",
                lr=1e-3,
                epochs=2,
                alpha=1.0,
                beta=0.1,
                npo_klr_form="paper",
                gamma_pct=80.0,
                sure_modules=modules,
            ),
            dict(batch_size=2, max_len=64),
        ),
    )
    mask = pd.read_parquet(out / SALIENCY_FILE)
    if modules == "linear":  # embeddings, norms and lm_head are never candidates
        assert not mask.loc[~mask.module.str.endswith("_proj"), "candidate"].any()
        assert mask.loc[mask.module.str.endswith("_proj"), "candidate"].all()
    before, after = load_model(str(tiny_model_dir)), load_model(str(out))
    modules_before, modules_after = weight_modules(before), weight_modules(after)
    assert set(mask["module"]) == set(modules_before)
    assert mask["n_params"].sum() == sum(p.numel() for p in before.parameters())
    assert 0 < mask["salient"].sum() < len(mask)
    assert info["salient_modules"] == mask["salient"].sum()
    for row in mask.itertuples():
        a = dict(modules_before[row.module].named_parameters(recurse=False))
        b = dict(modules_after[row.module].named_parameters(recurse=False))
        same = all(torch.equal(a[k], b[k]) for k in a)
        if row.salient:
            assert not same, f"salient module {row.module} did not move"
        else:
            assert same, f"non-salient module {row.module} moved"


def test_sure_saliency_is_the_forget_gradient_norm(tiny_model_dir, tiny_tokenizer, unlearn_docs):
    from quantunlearn.unlearning.scopes import module_saliency

    model = load_model(str(tiny_model_dir))
    seqs = [tiny_tokenizer(d)["input_ids"] for d in unlearn_docs]
    method = METHODS["GA_GDR_SURE"]
    scores = module_saliency(
        model, seqs, tiny_tokenizer.pad_token_id, method, method.run({}), batch_size=2
    )
    # by hand: one batch with all three documents, GA = -(mean token NLL); lm_head's score is the
    # Frobenius norm of the gradient of that loss w.r.t. lm_head.weight
    from quantunlearn.models.training import collate

    batch = collate(seqs, tiny_tokenizer.pad_token_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shift, lab = logits[:, :-1], batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(shift.reshape(-1, shift.shape[-1]), lab.reshape(-1))
    (grad,) = torch.autograd.grad(-nll * (lab != IGNORE).sum(), model.lm_head.weight)
    got = scores.set_index("module").loc["lm_head", "saliency"]
    assert got == pytest.approx(grad.norm().item(), rel=1e-4)


# --------------------------------------------------------------------------- LoRA


def test_lora_merge_equals_the_adapter_model(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    scope = lora(model, "GA_KLR_LORA", lora_rank=4, lora_alpha=8.0, lora_targets="all_linear")
    with torch.no_grad():  # B = 0 at init: give the adapters a real update
        for name, p in scope.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    ids = torch.tensor([[1, 5, 9, 12, 3], [2, 4, 4, 8, 7]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        adapter = scope.model(input_ids=ids, attention_mask=mask).logits
        base = scope.reference(ids, mask)
        merged = scope.final_model()(input_ids=ids, attention_mask=mask).logits
    assert (adapter - base).abs().max() > 1e-3  # the adapters matter
    torch.testing.assert_close(merged, adapter, atol=1e-5, rtol=1e-5)  # fp32


def test_lora_trains_under_reentrant_gradient_checkpointing(tiny_model_dir):
    # the trap: frozen embeddings + reentrant checkpointing -> LoRA layers get no gradient
    model = load_model(str(tiny_model_dir))
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    scope = lora(model, "GA_GDR_LORA", lora_rank=2, lora_alpha=4.0, lora_targets="attn")
    scope.model.train()
    ids = torch.tensor([[1, 5, 9, 12, 3]])
    out = scope.model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    out.loss.backward()
    grads = [p.grad for n, p in scope.model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_lora_rejects_bad_settings(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    with pytest.raises(ValueError, match="rank"):
        lora(model, "GA_GDR_LORA", lora_rank=0, lora_alpha=1.0, lora_targets="attn")
    with pytest.raises(ValueError, match="lora_targets"):
        lora(model, "GA_GDR_LORA", lora_rank=2, lora_alpha=1.0, lora_targets="everything")


def test_lora_unlearning_trains_adapters_and_saves_merged(tiny_model_dir, corpora, tmp_path):
    from safetensors.torch import load_file

    forget, retain = corpora
    out = tmp_path / "m"
    info = unlearn(
        str(tiny_model_dir),
        forget,
        retain,
        out,
        tmp_path / "log.parquet",
        job=UnlearnJob.of(
            "NPO_GDR_LORA",
            dict(
                weight_dtype="fp32",
                lr=1e-2,
                epochs=2,
                alpha=1.0,
                beta=0.1,
                npo_klr_form="paper",
                lora_rank=4,
                lora_alpha=8.0,
                lora_targets="mlp",
            ),
            dict(batch_size=2, max_len=64),
        ),
    )
    assert info["lora_trainable_params"] > 0
    adapter = load_file(out / ADAPTER_DIR / "adapter_model.safetensors")
    b_weights = [v for k, v in adapter.items() if "lora_B" in k]
    assert b_weights and all(v.abs().max() > 0 for v in b_weights), "LoRA B stayed at zero"
    before, after = load_model(str(tiny_model_dir)), load_model(str(out))
    for (name, a), (_, b) in zip(before.named_parameters(), after.named_parameters(), strict=True):
        is_target = any(t in name for t in ("gate_proj", "up_proj", "down_proj"))
        assert torch.equal(a, b) != is_target, name  # only the adapted Linears changed


# --------------------------------------------------------------------------- config


def config_with(methods: dict, **common) -> dict:
    return {
        "benchmarks": {"b": {"source": "synthetic"}},
        "unlearn": {"common": {"weight_dtype": "fp32", **common}, "methods": methods},
        "quantizers": ["none", "rtn_w4g128"],
        "evaluation": {},
    }


def test_base_run_paths_do_not_change():
    runs = expand_runs(normalize_config(config_with({"NPO_GDR": {}, "GA": {}})))
    assert set(runs.run) >= {
        "method~NPO_GDR/weight_dtype~fp32/lr~1e-05/epochs~10/alpha~1/beta~0.1/"
        "npo_klr_form~paper/seed~0",
        "method~GA/weight_dtype~fp32/lr~1e-05/epochs~10/seed~0",
    }


def test_mitigation_run_paths_and_seed_defaults():
    config = config_with(
        {
            "GA_GDR_SURE": {"gamma_pct": [90, 99]},
            "GA_GDR_QUAIL": {"quail_delta": [1.0, "rtn_w4g128"], "lr": 1e-5},
            "NPO_KLR_LORA": {"lora_rank": 8},
        }
    )
    runs = expand_runs(normalize_config(config))
    sure = sorted(runs[runs.method == "GA_GDR_SURE"].run)
    assert sure == [
        "method~GA_GDR_SURE/weight_dtype~fp32/lr~0.0001/epochs~10/alpha~1/gamma_pct~90/"
        "sure_modules~linear/seed~0",
        "method~GA_GDR_SURE/weight_dtype~fp32/lr~0.0001/epochs~10/alpha~1/gamma_pct~99/"
        "sure_modules~linear/seed~0",
    ]
    quail = sorted(runs[runs.method == "GA_GDR_QUAIL"].run)
    assert quail[1].endswith("alpha~1/quail_gamma~1/quail_delta~rtn_w4g128/seed~0")
    lora = runs[runs.method == "NPO_KLR_LORA"].iloc[0]
    assert lora.run.endswith(
        "npo_klr_form~paper/lora_rank~8/lora_alpha~32/lora_targets~all_linear/seed~0"
    )
    assert run_path("NPO_KLR_LORA", lora.to_dict()) == lora.run


def test_common_lr_wins_over_a_method_default():
    runs = expand_runs(normalize_config(config_with({"GA_GDR_SURE": {}}, lr=3e-5)))
    assert runs[runs.method == "GA_GDR_SURE"].lr.tolist() == [3e-5]


@pytest.mark.parametrize(
    "methods, message",
    [
        ({"GA_GDR": {"gamma_pct": 90}}, "GA_GDR has no gamma_pct"),
        ({"GA_GDR_SURE": {"gamma_pct": 150}}, "gamma_pct: a percentile in"),
        ({"GA_GDR_SURE": {"sure_modules": "heads"}}, "sure_modules"),
        ({"GA_GDR_LORA": {"lora_rank": 0}}, "lora_rank"),
        ({"GA_GDR_LORA": {"lora_targets": "everything"}}, "lora_targets"),
        ({"GA_GDR_QUAIL": {"quail_delta": "rtn_w99"}}, "quail_delta"),
        ({"GA_GDR_QUAIL": {"quail_gamma": -1}}, "quail_gamma: must be > 0"),
        ({"GA_GDR_QUAIL": {"lora_rank": 4}}, "GA_GDR_QUAIL has no lora_rank"),
        ({"GA_SURE": {}}, "GA_SURE"),
    ],
)
def test_bad_mitigation_keys_fail_at_parse_time(methods, message):
    with pytest.raises(ConfigError, match=message):
        normalize_config(config_with(methods))


def test_low_bit_quantizer_must_be_evaluated():
    config = config_with({"GA_GDR": {}})
    config["selection"] = {"low_bit_quantizer": "bnb_nf4"}
    with pytest.raises(ConfigError, match="selection.low_bit_quantizer"):
        normalize_config(config)


def test_every_method_has_a_consistent_base():
    for name, spec in METHODS.items():
        assert name.startswith(spec.base)
        # a mitigation builds on one of Zhang et al.'s six methods; RMU is its own base (and
        # RMU_LAT's)
        assert get_method(spec.base).family is (RMU if name.startswith("RMU") else PLAIN)
