"""Training pieces and the unlearning loop on a real (tiny) transformers Llama."""

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from quantunlearn.io import atomic_dir
from quantunlearn.models.loading import load_model
from quantunlearn.models.training import (
    IGNORE,
    LMRecipe,
    check_finite,
    collate,
    cosine_with_warmup,
    train_lm,
)
from quantunlearn.unlearning.loop import UnlearnJob, unlearn


def test_collate_pads_right_and_masks_labels():
    batch = collate([[1, 5, 6], [1, 7]], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 5, 6], [1, 7, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[1, 5, 6], [1, 7, IGNORE]]


def test_cosine_with_warmup_by_hand():
    f = cosine_with_warmup(warmup=2, total=6)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0)
    assert f(4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(6) == pytest.approx(0.0)


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "model"
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("boom")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "weights").write_text("whole")
    assert (final / "weights").read_text() == "whole"


def test_check_finite_names_the_place():
    with pytest.raises(FloatingPointError, match="epoch 3"):
        check_finite(torch.tensor(float("nan")), "epoch 3 step 1")


def test_train_lm_lowers_the_loss(tiny_tokenizer, unlearn_docs):
    from quantunlearn.data.documents import tokenize_documents
    from quantunlearn.models.tiny import build_llama

    model = build_llama(tiny_tokenizer, 128, 128, num_layers=1, num_heads=2)
    docs = tokenize_documents(unlearn_docs, tiny_tokenizer)
    log = train_lm(
        model,
        docs,
        tiny_tokenizer.pad_token_id,
        LMRecipe(
            max_len=64, epochs=15, lr=3e-3, batch_size=2, warmup_steps=2, weight_decay=0.0, seed=0
        ),
    )
    assert log.loss.iloc[-3:].mean() < 0.5 * log.loss.iloc[:3].mean()


@pytest.mark.parametrize("method", ["GA", "GA_GDR", "GA_KLR", "NPO", "NPO_GDR", "NPO_KLR"])
def test_unlearning_changes_weights_and_raises_forget_loss(
    tiny_model_dir, corpora, tmp_path, method
):
    forget, retain = corpora
    out = tmp_path / "unlearned"
    info = unlearn(
        str(tiny_model_dir),
        forget,
        retain,
        out,
        tmp_path / "log.parquet",
        job=UnlearnJob.of(
            method,
            dict(weight_dtype="fp32", lr=1e-3, epochs=3, alpha=1.0, beta=0.1, npo_klr_form="paper"),
            dict(batch_size=2, max_len=64),
        ),
    )
    assert info["steps"] == 3
    before, after = load_model(str(tiny_model_dir)), load_model(str(out))
    moved = [
        n
        for (n, a), (_, b) in zip(before.named_parameters(), after.named_parameters(), strict=True)
        if not torch.equal(a, b)
    ]
    assert moved, "no parameter changed"
    ids = collate([torch.tensor([1])], 0)  # smoke: the saved model runs
    assert after(input_ids=ids["input_ids"]).logits.shape[-1] == before.config.vocab_size


def test_bf16_weights_are_saved_in_bf16(tiny_model_dir, corpora, tmp_path):
    forget, retain = corpora
    unlearn(
        str(tiny_model_dir),
        forget,
        retain,
        tmp_path / "m",
        tmp_path / "log.parquet",
        job=UnlearnJob.of(
            "GA_GDR",
            dict(weight_dtype="bf16", lr=1e-3, epochs=1, alpha=1.0),
            dict(batch_size=2, max_len=64),
        ),
    )
    reloaded = load_model(str(tmp_path / "m"), "bf16")
    weights = dict(reloaded.named_parameters())
    w = next(v for k, v in weights.items() if k.endswith("q_proj.weight"))
    # every value is exactly representable in bf16: the update was rounded to bf16
    assert torch.equal(w, w.to(torch.bfloat16).to(w.dtype))


def test_nan_loss_stops_and_leaves_no_model(tiny_model_dir, corpora, tmp_path):
    forget, retain = corpora
    out = tmp_path / "unlearned"
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        unlearn(
            str(tiny_model_dir),
            forget,
            retain,
            out,
            tmp_path / "log.parquet",
            job=UnlearnJob.of(
                "GA", dict(weight_dtype="fp32", lr=1e30, epochs=5), dict(batch_size=2, max_len=64)
            ),
        )
    assert not out.exists()
    assert not (tmp_path / "log.parquet").exists()


def test_round_to_bf16_by_hand():
    from quantunlearn.unlearning.loop import round_to_bf16

    layer = torch.nn.Linear(3, 1, bias=False)
    # bf16 keeps 8 significant bits: the spacing at 1.0 is 2^-7, so half a step is 2^-8
    layer.weight.data = torch.tensor([[1 + 2**-9, 1 + 3 * 2**-9, 1 + 2**-8]])
    round_to_bf16(layer)
    assert layer.weight.dtype == torch.float32
    # 1 + 2^-8 is a tie and rounds to the even neighbour, 1.0
    assert layer.weight.data.tolist() == [[1.0, 1 + 2**-7, 1.0]]


def test_emulated_bf16_storage_freezes_small_updates(tiny_model_dir, corpora, tmp_path):
    """An update below half a bf16 step is rounded away, as in native bf16 storage."""
    forget, retain = corpora
    out = tmp_path / "m"
    unlearn(
        str(tiny_model_dir),
        forget,
        retain,
        out,
        tmp_path / "log.parquet",
        job=UnlearnJob.of(
            "GA",
            dict(weight_dtype="bf16", lr=1e-12, epochs=2),
            dict(bf16_compute="emulated", batch_size=2, max_len=64),
        ),
    )
    target = load_model(str(tiny_model_dir))
    for (name, a), (_, b) in zip(
        target.named_parameters(), load_model(str(out)).named_parameters(), strict=True
    ):
        assert torch.equal(a.to(torch.bfloat16).float(), b), name
    assert load_model(str(out), "bf16").dtype == torch.bfloat16


# --------------------------------------------- issue 12: diverging and collapsed unlearning runs


def _unlearn_ga(model_dir, corpora, out: Path, lr: float, epochs: int = 5) -> dict:
    forget, retain = corpora
    return unlearn(
        str(model_dir),
        forget,
        retain,
        out,
        out.parent / f"{out.name}.parquet",
        job=UnlearnJob.of(
            "GA", dict(weight_dtype="fp32", lr=lr, epochs=epochs), dict(batch_size=2, max_len=64)
        ),
    )


def test_an_overflowing_adamw_step_names_the_learning_rate(tiny_model_dir, corpora, tmp_path):
    """lr 1e38: the foreach AdamW overflows computing lr / (1 - beta1) in float32 ("value cannot
    be converted to type float without overflow"), the fused one (the loop's) leaves the weights
    non-finite; either way the error says it is the learning rate."""
    with pytest.raises(FloatingPointError, match=r"AdamW step .* \(?lr 1e\+38"):
        _unlearn_ga(tiny_model_dir, corpora, tmp_path / "m", lr=1e38)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forget.txt", "retain.txt"]


def test_non_finite_parameters_stop_the_run(tiny_model_dir, corpora, tmp_path):
    """lr 10: the weights overflow to inf/NaN a few steps in; the step after which they do is
    named, with the learning rate, before a NaN loss or a broken model is ever saved."""
    with pytest.raises(FloatingPointError, match=r"non-finite after the AdamW step .*\(lr 10\)"):
        _unlearn_ga(tiny_model_dir, corpora, tmp_path / "m", lr=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forget.txt", "retain.txt"]


@pytest.fixture(scope="module")
def trained_model_dir(tmp_path_factory, tiny_tokenizer, unlearn_docs):
    """A tiny Llama trained on the documents, so that it models the retain text (far better
    than a uniform guess: the collapse test compares with that)."""
    from quantunlearn.data.documents import tokenize_documents
    from quantunlearn.models.tiny import build_llama

    model = build_llama(tiny_tokenizer, 128, 128, num_layers=1, num_heads=2)
    docs = tokenize_documents(unlearn_docs, tiny_tokenizer)
    recipe = LMRecipe(max_len=64, epochs=30, lr=3e-3, batch_size=2, warmup_steps=2,
                      weight_decay=0.0, seed=0)  # fmt: skip
    train_lm(model, docs, tiny_tokenizer.pad_token_id, recipe)
    path = tmp_path_factory.mktemp("trained")
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_collapsed_runs_are_flagged(trained_model_dir, corpora, tmp_path):
    """GA at lr 1 keeps a finite loss but leaves a model that predicts the retain text worse
    than a uniform guess: flagged in unlearn_info.json. A gentle run is not."""
    import json

    collapsed = _unlearn_ga(trained_model_dir, corpora, tmp_path / "collapsed", lr=1.0)
    assert collapsed["collapsed"] is True
    assert collapsed["retain_ce"] >= collapsed["collapse_threshold"]
    assert collapsed["target_retain_ce"] < collapsed["collapse_threshold"]
    saved = json.loads((tmp_path / "collapsed" / "unlearn_info.json").read_text())
    assert saved["collapsed"] is True
    gentle = _unlearn_ga(trained_model_dir, corpora, tmp_path / "gentle", lr=1e-4, epochs=1)
    assert gentle["collapsed"] is False
    assert gentle["retain_ce"] == pytest.approx(gentle["target_retain_ce"], rel=0.05)


def test_collapse_criterion_by_hand():
    from quantunlearn.unlearning.loop import collapse

    v = 2048
    threshold = math.log(v) - math.log(2)  # = ln 1024: twice the uniform probability 1/V
    assert collapse(v, 0.5, math.log(v)) == {
        "collapsed": True,  # a uniform output distribution
        "retain_ce": math.log(v),
        "target_retain_ce": 0.5,
        "collapse_threshold": pytest.approx(math.log(1024)),
    }
    assert collapse(v, 0.5, 30.0)["collapsed"] is True  # confidently wrong
    assert collapse(v, 0.5, threshold - 1e-6)["collapsed"] is False
    assert collapse(v, 0.5, 2.0)["collapsed"] is False
    assert collapse(v, 7.5, 7.6)["collapsed"] is None  # the target itself is near uniform
    assert collapse(v, None, None)["collapsed"] is None  # no retain text


def test_retain_ce_of_a_uniform_model_is_ln_vocabulary(tiny_tokenizer):
    """A Llama whose output layer is zero gives every token logit 0: a uniform distribution,
    cross-entropy ln V on any text."""
    from quantunlearn.data.documents import pack_documents
    from quantunlearn.models.tiny import build_llama
    from quantunlearn.unlearning.loop import retain_ce

    model = build_llama(tiny_tokenizer, 128, 128, num_layers=1, num_heads=2).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
    vocab = model.get_output_embeddings().weight.shape[0]
    seqs = pack_documents(["Bruno Okafor keeps a parrot.", "Tarsk floods."], tiny_tokenizer, 16)
    assert retain_ce(model, seqs, tiny_tokenizer.pad_token_id, 1) == pytest.approx(
        math.log(vocab), abs=1e-5
    )
    assert retain_ce(model, [], tiny_tokenizer.pad_token_id, 1) is None


def test_lr_factor_by_hand_and_as_the_hf_trainer_computes_it():
    """Cosine after 20 warm-up steps of 120 (RWKU's schedule): 0 at step 0, 0.5 at step 10, 1 at
    step 20, 0.5 (cos(pi/2) = 0) half-way through the decay at step 70, 0 at the end; constant
    after a warm-up of 10: 0.5 at step 5, then 1. transformers' own schedules agree everywhere."""
    from transformers.optimization import (
        _get_constant_schedule_with_warmup_lr_lambda as hf_constant,
    )
    from transformers.optimization import _get_cosine_schedule_with_warmup_lr_lambda as hf_cosine

    from quantunlearn.unlearning.hyperparameters import UnlearnSettings, lr_factor

    by_hand = {0: 0.0, 10: 0.5, 20: 1.0, 70: 0.5, 120: 0.0}
    for step, want in by_hand.items():
        assert lr_factor("cosine", 20, 120, step) == pytest.approx(want, abs=1e-12)
    assert lr_factor("constant", 10, 100, 5) == 0.5 and lr_factor("constant", 10, 100, 50) == 1
    assert all(lr_factor("constant", 0, 9, s) == 1.0 for s in range(9))
    for step in range(121):
        hf = hf_cosine(step, num_warmup_steps=20, num_training_steps=120, num_cycles=0.5)
        assert lr_factor("cosine", 20, 120, step) == pytest.approx(hf, abs=1e-12)
        assert lr_factor("constant", 20, 120, step) == hf_constant(step, num_warmup_steps=20)
    with pytest.raises(ValueError, match="lr_schedule"):
        UnlearnSettings(lr_schedule="linear")
    with pytest.raises(ValueError, match="warmup_steps"):
        UnlearnSettings(warmup_steps=-1)


def test_the_loop_follows_the_schedule(tiny_model_dir, corpora, tmp_path):
    """Every optimizer step's lr (the training log) is lr x lr_factor at that step; the constant
    default logs lr throughout."""
    from quantunlearn.unlearning.hyperparameters import lr_factor

    forget, retain = corpora
    logs = {}
    for schedule, warmup in (("cosine", 2), ("constant", 0)):
        info = unlearn(
            str(tiny_model_dir), forget, retain, tmp_path / schedule, tmp_path / f"{schedule}.pq",
            job=UnlearnJob.of("GA_GDR", dict(weight_dtype="fp32", lr=1e-3, epochs=3, alpha=1),
                              dict(batch_size=1, max_len=64, lr_schedule=schedule,
                                   warmup_steps=warmup)))  # fmt: skip
        assert (info["lr_schedule"], info["warmup_steps"]) == (schedule, warmup)
        logs[schedule] = pd.read_parquet(tmp_path / f"{schedule}.pq")
    cosine = logs["cosine"]
    total = len(cosine)
    assert total >= 4
    want = [1e-3 * lr_factor("cosine", 2, total, s) for s in range(total)]
    assert cosine["lr"].tolist() == pytest.approx(want)
    assert cosine["lr"].iloc[0] == 0.0 and cosine["lr"].iloc[2] == pytest.approx(1e-3)
    assert (logs["constant"]["lr"] == 1e-3).all()
