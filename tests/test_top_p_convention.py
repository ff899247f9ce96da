"""One log-prob convention for sampling and training under temperature and top-p: the processed distribution
(logits / temperature, nucleus kept and renormalized), so the importance ratio of a fresh batch is 1 at step 0.
(The vLLM side of the same check runs against the real engine in tests/test_vllm_real.py.)"""

from __future__ import annotations

import json
import math

import pytest

import torch

from mo_rl.rollout import SamplingParams
from mo_rl.rollout.hf import HFEngine
from mo_rl.train.loop import run_train
from mo_rl.train.loss import OUTSIDE_NUCLEUS, backward_loss, completion_logprobs, policy_loss
from tests.conftest import compose_run

PROMPTS = ["a>", "xyz=", "q>"]


def test_trainer_logprobs_equal_the_samplers_under_top_p(tiny_policy):
    policy = tiny_policy
    b = HFEngine(policy).generate(PROMPTS, 4, SamplingParams(max_new_tokens=10, temperature=0.8, top_p=0.9, seed=7))
    m = b.completion_mask > 0
    with torch.no_grad():
        same = completion_logprobs(policy, b, 0.8, 0.9)
        temperature_only = completion_logprobs(policy, b, 0.8)
    torch.testing.assert_close(same, b.logprobs, atol=2e-4, rtol=0)
    assert (temperature_only[m] - b.logprobs[m]).abs().mean() > 1e-2  # the old convention was off-policy
    _, stats = policy_loss(same, b.logprobs, torch.ones(len(b.texts)), b.completion_mask)
    assert abs(stats["loss/ratio_mean"] - 1) < 1e-4


def test_token_outside_the_nucleus_gets_a_finite_floor_and_no_gradient(tiny_policy):
    """After an update a sampled token may fall outside the policy's nucleus: a floor, not -inf (no NaN anywhere)."""
    policy, model = tiny_policy, tiny_policy.module
    b = HFEngine(policy).generate(PROMPTS, 2, SamplingParams(max_new_tokens=6, top_p=0.3, seed=1))
    lp = completion_logprobs(policy, b, 1.0, 1e-6)  # only the top token stays: most sampled tokens fall outside
    m = b.completion_mask > 0
    assert (lp[m] == OUTSIDE_NUCLEUS).any() and torch.isfinite(lp).all() and (lp[~m] == 0).all()
    model.zero_grad()
    backward_loss(policy, policy.reference(), b, torch.randn(len(b.texts)), top_p=1e-6, kl_coef=0.1)  # KL: both sides floored
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)


def test_training_run_under_top_p_has_ratio_one(tmp_path, tiny_model_path):
    path = run_train(compose_run(tmp_path, "task=aligned", "trainer.steps=2", "rollout.top_p=0.9",
                                 "rollout.temperature=0.8"))
    rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
    assert all(abs(r["loss/ratio_mean"] - 1) < 1e-4 for r in rows), [r["loss/ratio_mean"] for r in rows]


def test_kl_is_zero_for_identical_policies_under_top_p(tiny_policy):
    """Issue 24.5: the KL under top_p < 1 is taken between the untruncated distributions, so the initial policy
    against its own reference is 0 on every token (a floor on one side read as ~19 nats before)."""
    policy = tiny_policy
    b = HFEngine(policy).generate(PROMPTS, 4, SamplingParams(max_new_tokens=10, temperature=0.8, top_p=0.9, seed=3))
    policy.module.zero_grad(set_to_none=True)
    _, stats = backward_loss(policy, policy.reference(), b, torch.zeros(len(b.texts)), temperature=0.8, top_p=0.9,
                             kl_coef=0.1)
    policy.module.zero_grad(set_to_none=True)
    assert stats["loss/kl"] == 0.0


def test_kl_reads_the_untruncated_log_probs_not_the_floor():
    # a token the reference's nucleus excludes: the floored log-prob would give exp(-20) + 20 - 1 ~ 19 nats
    logp = torch.tensor([[-0.1, -0.2]])
    floored_ref = torch.tensor([[OUTSIDE_NUCLEUS, -0.2]])
    _, old = policy_loss(logp, logp, torch.zeros(1), torch.ones(1, 2), ref_logp=floored_ref, kl_coef=1.0)
    assert old["loss/kl"] == pytest.approx((math.exp(-20) + 20 - 1) / 2)
    whole_pi, whole_ref = torch.tensor([[-0.5, -0.2]]), torch.tensor([[-1.5, -0.2]])  # untruncated log-probs
    _, new = policy_loss(logp, logp, torch.zeros(1), torch.ones(1, 2), ref_logp=whole_ref, kl_coef=1.0,
                         kl_logp=whole_pi)
    assert new["loss/kl"] == pytest.approx((math.exp(-1.0) + 1.0 - 1) / 2)
