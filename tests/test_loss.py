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


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_sum"])
def test_masked_rollout_enters_no_mean(agg):
    # issue 24.6: a masked rollout (its token row zeroed by distributed.trainable) changes no loss: the loss with
    # it equals the loss without its row, for every aggregation
    logp = torch.log(torch.tensor([[0.5, 0.4, 0.3], [0.2, 0.6, 0.1], [0.3, 0.3, 0.3]]))
    old = torch.log(torch.tensor([[0.4, 0.4, 0.4], [0.3, 0.5, 0.2], [0.9, 0.9, 0.9]]))
    adv = torch.tensor([1.0, -0.5, 7.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])  # row 2: a masked rollout
    ref = logp - 0.3
    with_row, _ = policy_loss(logp, old, adv, mask, loss_agg=agg, max_tokens=3, ref_logp=ref, kl_coef=0.1)
    without, _ = policy_loss(logp[:2], old[:2], adv[:2], mask[:2], loss_agg=agg, max_tokens=3, ref_logp=ref[:2],
                             kl_coef=0.1)
    assert float(with_row) == pytest.approx(float(without), rel=1e-6)


def test_masked_rollout_changes_no_gradient_in_the_update(tiny_policy):
    """The loop's path: distributed.trainable zeroes a masked rollout's tokens, and backward_loss's gradients
    equal those of the batch without it."""
    from dataclasses import replace

    from mo_rl.rollout import SamplingParams
    from mo_rl.rollout.hf import HFEngine
    from mo_rl.train import distributed as dp
    from mo_rl.train.loss import backward_loss

    b = HFEngine(tiny_policy).generate(["a>", "b>"], 2, SamplingParams(max_new_tokens=6, seed=4))
    adv = torch.tensor([1.0, -1.0, 0.5, 3.0])
    valid = torch.tensor([True, True, True, False])
    step = dp.StepBatch(b, b.texts, b.num_tokens, slice(0, 4), b.n)
    masked = dp.trainable(dp.Dist(), step, valid)
    assert masked.num_seqs == 3 and masked.num_tokens == int(b.completion_mask[:3].sum())
    params = [p for p in tiny_policy.module.parameters() if p.requires_grad]

    def grads(batch, a, agg):
        tiny_policy.module.zero_grad(set_to_none=True)
        loss, _ = backward_loss(tiny_policy, None, batch, a, loss_agg=agg, max_tokens=6)
        out = [p.grad.clone() for p in params]
        tiny_policy.module.zero_grad(set_to_none=True)
        return loss, out

    three = replace(b, prompt_ids=b.prompt_ids[:3], prompt_mask=b.prompt_mask[:3], completion_ids=b.completion_ids[:3],
                    completion_mask=b.completion_mask[:3], logprobs=b.logprobs[:3], texts=b.texts[:3])
    for agg in ("token_mean", "seq_mean_token_mean", "seq_sum"):
        l4, g4 = grads(masked.local, adv, agg)
        l3, g3 = grads(three, adv[:3], agg)
        assert l4 == pytest.approx(l3, rel=1e-5)
        for x, y in zip(g4, g3):
            torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-4)
