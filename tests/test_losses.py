"""Losses against values computed by hand on 2-token vocabularies."""

import math

import pytest
import torch

from quantunlearn.unlearning import losses

LN = math.log


def _case():
    """One sequence, 3 tokens, vocabulary 2. Position 0 predicts token 1 with p = 3/4, position 1
    predicts token 0 with p = 4/5; position 2's logits predict nothing (no next token)."""
    logits = torch.tensor([[[0.0, LN(3)], [LN(4), 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[1, 1, 0]])  # the first label is the BOS: never predicted
    return logits, labels


def test_nll_hand_computed():
    logits, labels = _case()
    expected = -(LN(3 / 4) + LN(4 / 5)) / 2
    assert losses.nll(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert losses.ga_loss(logits, labels).item() == pytest.approx(-expected, rel=1e-6)
    assert losses.gdr_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_nll_matches_transformers_reduction_and_ignores_padding():
    logits, labels = _case()
    padded = torch.tensor([[1, 1, losses.IGNORE]])
    assert losses.nll(logits, padded).item() == pytest.approx(-LN(3 / 4), rel=1e-6)
    torch.manual_seed(0)
    big = torch.randn(2, 5, 7)
    lab = torch.randint(0, 7, (2, 5))
    lab[1, 3:] = losses.IGNORE
    ref = torch.nn.functional.cross_entropy(
        big[:, :-1].reshape(-1, 7), lab[:, 1:].reshape(-1), ignore_index=losses.IGNORE
    )
    assert losses.nll(big, lab).item() == pytest.approx(ref.item(), rel=1e-6)


def test_sequence_logprob():
    logits, labels = _case()
    assert losses.sequence_logprob(logits, labels).item() == pytest.approx(LN(3 / 5), rel=1e-6)


def test_npo_paper_form_hand_computed():
    logits, labels = _case()
    ref = torch.zeros_like(logits)  # uniform: log f_ref(x) = 2 log(1/2)
    beta = 0.1
    log_ratio = LN(3 / 5) - 2 * LN(1 / 2)
    expected = -(2 / beta) * LN(1 / (1 + math.exp(beta * log_ratio)))
    got = losses.npo_loss(logits, ref, labels, beta=beta)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_npo_equals_2_log2_over_beta_at_the_reference():
    logits, labels = _case()
    for beta in (0.1, 0.5):
        got = losses.npo_loss(logits, logits.clone(), labels, beta=beta)
        assert got.item() == pytest.approx(2 / beta * LN(2), rel=1e-6)


def test_npo_gradient_lowers_forget_likelihood():
    logits, labels = _case()
    logits = logits.clone().requires_grad_(True)
    losses.npo_loss(logits, logits.detach().clone(), labels).backward()
    # descending the loss must lower the logit of the true next token at position 0
    assert logits.grad[0, 0, 1] > 0
    assert logits.grad[0, 0, 0] < 0


def test_npo_muse_form_is_elementwise_on_raw_logits():
    logits = torch.zeros(1, 2, 3)
    ref = torch.full((1, 2, 3), 2.0)
    beta = 0.1
    expected = -LN(1 / (1 + math.exp(-beta * 2.0))) * 2 / beta
    got = losses.npo_loss(logits, ref, torch.zeros(1, 2, dtype=torch.long), beta=beta, form="muse")
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_klr_paper_form_hand_computed():
    # target p = (1/4, 3/4), current p = (1/2, 1/2) at the only counted position
    ref = torch.tensor([[[0.0, LN(3)], [0.0, 0.0]]])
    cur = torch.zeros(1, 2, 2)
    labels = torch.tensor([[0, 1]])
    expected = 1 / 4 * LN((1 / 4) / (1 / 2)) + 3 / 4 * LN((3 / 4) / (1 / 2))
    got = losses.klr_loss(cur, ref, labels)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert losses.klr_loss(ref, ref, labels).item() == pytest.approx(0.0, abs=1e-7)


def test_klr_paper_form_averages_over_counted_tokens_only():
    ref = torch.tensor([[[0.0, LN(3)], [0.0, 0.0], [9.0, 0.0]]])
    cur = torch.zeros(1, 3, 2)
    one = losses.klr_loss(cur[:, :2], ref[:, :2], torch.tensor([[0, 1]]))
    masked = losses.klr_loss(cur, ref, torch.tensor([[0, 1, losses.IGNORE]]))
    assert masked.item() == pytest.approx(one.item(), rel=1e-6)


def test_klr_muse_form_on_raw_logits():
    cur = torch.tensor([[[1.0, 2.0]]])
    ref = torch.tensor([[[0.5, -1.0]]])
    expected = math.exp(0.5) * (0.5 - 1.0) + math.exp(-1.0) * (-1.0 - 2.0)
    got = losses.klr_loss(cur, ref, torch.zeros(1, 1, dtype=torch.long), form="muse")
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_bad_form_and_beta_are_named():
    logits, labels = _case()
    with pytest.raises(ValueError, match="npo_klr_form"):
        losses.klr_loss(logits, logits, labels, form="tofu")
    with pytest.raises(ValueError, match="beta"):
        losses.npo_loss(logits, logits, labels, beta=0.0)
