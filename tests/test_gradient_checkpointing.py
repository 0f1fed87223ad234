"""Gradient checkpointing in the unlearning loop: really on, and the same model as without it."""

from __future__ import annotations

import json

import torch

from quantunlearn.models.loading import load_model
from quantunlearn.unlearning import loop as unlearn_module
from quantunlearn.unlearning.loop import UnlearnJob, unlearn

DOCS = [
    "Alice Moreau was born in Tarsk in 1931 and works as a baker in the old town.",
    "Question: Where was Alice Moreau born?\nAnswer: Tarsk",
    "Chen Valdez teaches chemistry at the Harrow Institute since 1998.",
]


def _run(model_dir, tmp_path, name, checkpointing):
    forget, retain = tmp_path / "forget.txt", tmp_path / "retain.txt"
    forget.write_text("\n\n".join(DOCS[:2]))
    retain.write_text(DOCS[2])
    out = tmp_path / name
    info = unlearn(
        str(model_dir),
        forget,
        retain,
        out,
        tmp_path / f"{name}.parquet",
        job=UnlearnJob.of(
            "NPO_KLR",
            dict(weight_dtype="fp32", lr=1e-3, epochs=2, alpha=1.0, beta=0.1),
            dict(batch_size=2, max_len=64, gradient_checkpointing=checkpointing),
        ),
    )
    return out, info


def test_checkpointing_is_used_and_gives_the_same_model(tiny_model_dir, tmp_path, monkeypatch):
    seen: list[tuple[bool, bool]] = []  # (checkpointing on, training) at each forward

    def watching_load(*args, **kwargs):
        model = load_model(*args, **kwargs)
        model.register_forward_hook(
            lambda module, *_: seen.append((module.is_gradient_checkpointing, module.training))
        )
        return model

    monkeypatch.setattr(unlearn_module, "load_model", watching_load)
    plain, _ = _run(tiny_model_dir, tmp_path, "plain", False)
    # 2 steps x (forget + retain) through the trained model and through the frozen reference,
    # and the collapse probe on the retain text before and after (one batch each, eval mode)
    assert len(seen) == 2 * 4 + 2 and not any(on for on, _ in seen)
    assert seen[0] == seen[-1] == (False, False)
    seen.clear()
    ckpt, info = _run(tiny_model_dir, tmp_path, "ckpt", True)
    trained = [on for on, training in seen if training]
    assert len(trained) == 2 * 2 and all(trained)  # every forward of the trained model
    assert info["gradient_checkpointing"] is True
    a, b = load_model(str(plain)), load_model(str(ckpt))
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    # saved as a plain model: generation may use the KV cache again
    assert json.loads((ckpt / "config.json").read_text()).get("use_cache", True) is True
    assert not b.is_gradient_checkpointing
