"""QUAIL's objective as printed (Mishra and Mehreen eq. 15, Algorithm 1: GA_GDR_QUAIL_EQ15)
next to the form their code runs (GA_GDR_QUAIL), and the optimizer step counts of every
schedule, against values worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import yaml
from test_contracts import ROOT

from quantunlearn.models.training import collate
from quantunlearn.study import ConfigError, load_study
from quantunlearn.unlearning import losses
from quantunlearn.unlearning.loop import UnlearnJob, _alternating_batches, unlearn
from quantunlearn.unlearning.methods import METHODS
from quantunlearn.unlearning.objectives import Step


def test_algorithm_one_passes_over_forget_then_retain():
    forget, retain = [[1], [2], [3]], [[7], [8]]
    steps = list(_alternating_batches(forget, retain, 2, 2, seed=0))
    # per epoch: ceil(3/2) = 2 forget batches (no retain), then 1 retain batch (no forget)
    assert [(e, b, f is None, r is None) for e, b, f, r in steps] == [
        (0, 0, False, True), (0, 1, False, True), (0, 2, True, False),
        (1, 0, False, True), (1, 1, False, True), (1, 2, True, False),
    ]  # fmt: skip
    for epoch in (0, 1):
        part = [s for s in steps if s[0] == epoch]
        assert sorted(x for s in part if s[2] for x in s[2]) == forget  # each once per epoch
        assert sorted(x for s in part if s[3] for x in s[3]) == retain


def test_optimizer_steps_by_hand():
    # 407 forget chunks (NEWS, the seeds' code), batch 2, 10 epochs: 10 x 204 = 2040
    ga_gdr = METHODS["GA_GDR"]
    assert ga_gdr.optimizer_steps(ga_gdr.run({"epochs": 10}), 407, 1000, 2) == 2040
    # BOOKS: 553 chunks, 5 epochs: 5 x 277 = 1385
    assert ga_gdr.optimizer_steps(ga_gdr.run({"epochs": 5}), 553, 105, 2) == 1385
    # Algorithm 1 adds the retain batches: 10 x (204 + ceil(105 / 2) = 53)
    eq15 = METHODS["GA_GDR_QUAIL_EQ15"]
    assert eq15.optimizer_steps(eq15.run({"epochs": 10}), 407, 105, 2) == 10 * (204 + 53)
    # RMU_LAT: lat_model_steps RMU steps per attacked batch
    lat = METHODS["RMU_LAT"]
    assert lat.optimizer_steps(lat.run({"epochs": 1, "lat_model_steps": 4}), 553, 9, 1) == 2212


def test_eq15_weighs_forget_by_alpha_and_retain_by_one_minus_alpha(tiny_model):
    method = METHODS["GA_GDR_QUAIL_EQ15"]
    run = method.run({"alpha": 0.75, "quail_gamma": 2.0, "quail_delta": 1.0})
    forget = collate([[5, 9, 12, 3], [7, 7, 20]], 0)
    retain = collate([[4, 40, 2]], 0)
    state = {"quail_margin": 1.0}

    class Scope:  # the frozen reference: the model itself, as at the first step
        @staticmethod
        def reference(ids, mask):
            with torch.no_grad():
                return tiny_model(input_ids=ids, attention_mask=mask).logits

    with torch.no_grad():
        fstep = Step(tiny_model, Scope, forget, None, state)
        loss, parts = method.loss(fstep, run)
        logits = tiny_model(input_ids=forget["input_ids"],
                            attention_mask=forget["attention_mask"]).logits  # fmt: skip
        ga = losses.ga_loss(logits, forget["labels"])
        # at z' = z every counted logit is 0 from the target's: hinge = Delta/2 = 0.5
        hinge = losses.quail_hinge(logits, logits, forget["labels"], 1.0)
        assert hinge.item() == pytest.approx(0.5)
        assert loss.item() == pytest.approx(0.75 * ga.item() + 2.0 * 0.5, rel=1e-6)
        assert set(parts) == {"forget_loss", "quail_loss"}
        rstep = Step(tiny_model, Scope, None, retain, state)
        loss, parts = method.loss(rstep, run)
        rlogits = tiny_model(input_ids=retain["input_ids"],
                             attention_mask=retain["attention_mask"]).logits  # fmt: skip
        gdr = losses.gdr_loss(rlogits, retain["labels"])
        assert loss.item() == pytest.approx(0.25 * gdr.item(), rel=1e-6)
        assert set(parts) == {"retain_loss"}
        # the form QUAIL's code runs (GA_GDR_QUAIL): forget + alpha * retain + gamma * hinge
        joint = METHODS["GA_GDR_QUAIL"]
        jrun = joint.run({"alpha": 5.0, "quail_gamma": 2.0, "quail_delta": 1.0})
        loss, _ = joint.loss(Step(tiny_model, Scope, forget, retain, state), jrun)
        assert loss.item() == pytest.approx(ga.item() + 5.0 * gdr.item() + 1.0, rel=1e-6)


def test_eq15_alpha_outside_the_unit_interval_is_a_config_error():
    config = yaml.safe_load((ROOT / "tests" / "configs" / "micro.yaml").read_text())
    config["unlearn"]["methods"] = {"GA_GDR_QUAIL_EQ15": {"alpha": [0.5, 5.0]}}
    with pytest.raises(ConfigError, match=r"unlearn.methods.GA_GDR_QUAIL_EQ15.alpha: .*eq. 15\)"
                       r": alpha must be in \[0, 1\], got 5.0"):  # fmt: skip
        load_study(config)
    config["unlearn"]["methods"] = {"GA_GDR_QUAIL_EQ15": {}}
    assert load_study(config).runs.query("method == 'GA_GDR_QUAIL_EQ15'").alpha.item() == 0.5


def test_eq15_run_alternates_and_counts_its_steps(tiny_model_dir, corpora, tmp_path):
    forget, retain = corpora
    info = unlearn(str(tiny_model_dir), forget, retain, tmp_path / "m", tmp_path / "log.parquet",
                   job=UnlearnJob.of("GA_GDR_QUAIL_EQ15",
                                     {"weight_dtype": "fp32", "lr": 1e-3, "epochs": 2},
                                     {"batch_size": 1, "max_len": 64}))  # fmt: skip
    f, r = info["n_forget_sequences"], info["n_retain_sequences"]
    assert info["steps"] == 2 * (math.ceil(f / 1) + math.ceil(r / 1))
    log = pd.read_parquet(tmp_path / "log.parquet")
    forget_steps = log["forget_loss"].notna()
    assert forget_steps.sum() == 2 * f and log.loc[~forget_steps, "retain_loss"].notna().all()
    assert log.loc[forget_steps, "retain_loss"].isna().all()
