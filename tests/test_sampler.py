"""The lean sampler: top-p as transformers computes it, exact draws, generate's tokens where sampling is (nearly)
greedy, sampling log-probs the training forward reproduces, and early-finished rows that change nothing."""

from __future__ import annotations

import pytest
import torch

from mo_rl.models.policy import Policy, top_p_filter
from mo_rl.rollout import SamplingParams
from mo_rl.rollout import sampler as sampler_mod
from mo_rl.rollout.hf import HFEngine
from mo_rl.rollout.sampler import draw
from mo_rl.train.loss import completion_logprobs

PROMPTS = ["a>", "xyz=", "q>"]  # different lengths: the left-padded path


@pytest.mark.parametrize("top_p", [0.3, 0.75, 0.95, 1.0])
def test_top_p_matches_transformers(top_p):
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = torch.randn(16, 50, generator=torch.Generator().manual_seed(0)) * 3
    want = TopPLogitsWarper(top_p)(None, logits.clone())
    assert torch.equal(torch.isinf(top_p_filter(logits, top_p)), torch.isinf(want))


def test_top_p_keeps_the_nucleus_by_hand():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = ~torch.isinf(top_p_filter(logits, 0.7))  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: two tokens
    assert kept.tolist() == [[True, True, False, False]]


def test_draw_frequencies_match_probabilities():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    n = 40_000
    race = torch.empty(n, 5).exponential_(1.0, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(draw(p.log().expand(n, 5), race.log()), minlength=5).float() / n
    torch.testing.assert_close(counts, p, atol=0.01, rtol=0)  # 4 standard errors at n = 40k
    assert counts[4] == 0  # a zero-probability (-inf) token never wins


def test_near_greedy_loop_gives_generates_tokens(tiny_policy):
    model, tok = tiny_policy
    params = SamplingParams(max_new_tokens=10, temperature=1e-4, seed=5)
    a = HFEngine(Policy(model, tok), sampler="loop").generate(PROMPTS, 2, params)
    b = HFEngine(Policy(model, tok), sampler="generate").generate(PROMPTS, 2, params)
    assert a.texts == b.texts
    assert torch.equal(a.completion_mask, b.completion_mask) and torch.equal(a.completion_ids, b.completion_ids)


def test_loop_logprobs_match_the_training_forward(tiny_policy):
    model, tok = tiny_policy
    b = HFEngine(Policy(model, tok)).generate(PROMPTS, 4, SamplingParams(max_new_tokens=12, temperature=0.8, seed=2))
    assert b.completion_ids.shape[0] == 12 and b.n == 4
    assert all(tok.decode(b.prompt_ids[i], skip_special_tokens=True) == "xyz=" for i in range(4, 8))
    assert (b.logprobs[b.completion_mask == 0] == 0).all() and (b.logprobs[b.completion_mask == 1] < 0).all()
    assert (b.completion_ids[b.completion_mask == 0] == tok.pad_token_id).all()
    with torch.no_grad():
        lp = completion_logprobs(Policy(model), b, temperature=0.8)
    torch.testing.assert_close(lp, b.logprobs, atol=2e-4, rtol=0)


def test_top_p_logprobs_are_renormalized_over_the_nucleus(tiny_policy):
    """Under top-p the sampling log-prob is the full one minus log(nucleus mass): never below it."""
    model, tok = tiny_policy
    b = HFEngine(Policy(model, tok)).generate(PROMPTS, 4, SamplingParams(max_new_tokens=8, top_p=0.6, seed=4))
    with torch.no_grad():
        lp = completion_logprobs(Policy(model), b)
    m = b.completion_mask == 1
    assert (b.logprobs[m] >= lp[m] - 1e-4).all() and (b.logprobs[m] > lp[m] + 1e-3).any()


def test_same_seed_same_completions_and_early_exit_changes_nothing(tiny_policy, monkeypatch):
    model, tok = tiny_policy
    eng = HFEngine(Policy(model, tok))
    params = SamplingParams(max_new_tokens=12, seed=11)
    a, b = eng.generate(PROMPTS, 3, params), eng.generate(PROMPTS, 3, params)
    assert a.texts == b.texts and a.texts != eng.generate(PROMPTS, 3, SamplingParams(12, seed=12)).texts
    assert len(set(a.completion_mask.sum(1).tolist())) > 1  # rows finished at different steps: rows were dropped
    monkeypatch.setattr(sampler_mod, "COMPACT_SHARE", 10.0)  # never drop finished rows
    c = eng.generate(PROMPTS, 3, params)
    assert c.texts == a.texts and torch.equal(c.completion_ids, a.completion_ids)
    torch.testing.assert_close(c.logprobs, a.logprobs, atol=1e-5, rtol=0)


def test_min_new_tokens_forces_the_budget(tiny_policy):
    model, tok = tiny_policy
    for sampler in ("loop", "generate"):
        b = HFEngine(Policy(model, tok), sampler=sampler, min_new_tokens=9).generate(PROMPTS, 2, SamplingParams(9, seed=0))
        assert b.completion_ids.shape == (6, 9) and b.num_tokens == 54
        assert not (b.completion_ids == tok.eos_token_id).any()


def test_unknown_sampler_is_refused(tiny_policy):
    from mo_rl.errors import MoRLError

    with pytest.raises(MoRLError, match="allowed: loop, generate"):
        HFEngine(tiny_policy, sampler="beam")
