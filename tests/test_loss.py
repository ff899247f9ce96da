"""The clipped surrogate and its aggregations on hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from mo_rl.train.loss import aggregate, policy_loss

MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])


@pytest.mark.parametrize("agg, expected", [
    ("token_mean", (1 + 2 + 3 + 4) / 4),  # every token of the batch counts once
    ("seq_mean_token_mean", (2.0 + 4.0) / 2),  # each sequence's token mean, then the mean over sequences
    ("seq_sum", (1 + 2 + 3 + 4) / (2 * 5)),  # constant divisor N * max_tokens (max_tokens=5)
])
def test_aggregations(agg, expected):
    assert float(aggregate(PER_TOKEN, MASK, agg, max_tokens=5)) == pytest.approx(expected)


def test_on_policy_loss_is_minus_mean_advantage():
    lp = torch.log(torch.tensor([[0.5, 0.25, 0.5], [0.1, 0.2, 0.3]]))
    adv = torch.tensor([1.5, -0.5])
    loss, stats = policy_loss(lp, lp.clone(), adv, MASK)
    # ratio 1 everywhere: loss = -(3 tokens * 1.5 + 1 token * -0.5) / 4 tokens
    assert float(loss) == pytest.approx(-(3 * 1.5 - 0.5) / 4)
    assert stats["loss/clip_frac"] == 0 and stats["loss/ratio_mean"] == pytest.approx(1.0)


def test_clipping_caps_the_gain_of_a_moved_ratio():
    old = torch.zeros(1, 1)
    new = torch.full((1, 1), math.log(1.5))  # ratio 1.5
    mask = torch.ones(1, 1)
    loss_pos, s = policy_loss(new, old, torch.tensor([2.0]), mask, clip_eps=0.2)
    assert float(loss_pos) == pytest.approx(-1.2 * 2.0) and s["loss/clip_frac"] == 1.0
    loss_neg, s = policy_loss(new, old, torch.tensor([-2.0]), mask, clip_eps=0.2)
    assert float(loss_neg) == pytest.approx(1.5 * 2.0) and s["loss/clip_frac"] == 0.0  # pessimistic side kept
    loss_hi, _ = policy_loss(new, old, torch.tensor([2.0]), mask, clip_eps=0.2, clip_eps_high=0.28)
    assert float(loss_hi) == pytest.approx(-1.28 * 2.0)


def test_kl_k3_is_zero_at_the_reference_and_positive_away():
    lp = torch.log(torch.tensor([[0.5, 0.25]]))
    mask = torch.ones(1, 2)
    _, s = policy_loss(lp, lp, torch.zeros(1), mask, ref_logp=lp, kl_coef=0.1)
    assert s["loss/kl"] == 0.0
    ref = torch.log(torch.tensor([[0.25, 0.5]]))
    loss, s = policy_loss(lp, lp, torch.zeros(1), mask, ref_logp=ref, kl_coef=0.1)
    d = torch.tensor([math.log(0.5), math.log(2.0)])
    k3 = float((d.exp() - d - 1).mean())
    assert s["loss/kl"] == pytest.approx(k3) and float(loss) == pytest.approx(0.1 * k3)
