"""Built-in reward values, ``module:function`` loading, failure isolation and conditioned rewards."""

from __future__ import annotations

import math

import pytest
import torch

from mo_rl.errors import MoRLError
from mo_rl.rewards.registry import available_rewards, get_reward
from mo_rl.rewards.score import apply_conditions, score


def test_builtin_values():
    assert get_reward("match")(["a>", "b>"], ["aab", ""], target=["a", "b"]) == [pytest.approx(2 / 3), 0.0]
    assert get_reward("first_char")(["a>", "b>"], ["ab", "ab"], target=["a", "b"]) == [1.0, 0.0]
    assert get_reward("vowels")(["x="], ["ae1z"]) == [0.5]
    assert get_reward("digits")(["x="], ["ae1z"]) == [0.25]
    noisy = get_reward("noise")(["x="] * 3, ["a", "a", "a"], step=1, index=[0, 1, 2])
    assert noisy == get_reward("noise")(["x="] * 3, ["a", "a", "a"], step=1, index=[0, 1, 2])  # reproducible
    assert len(set(noisy)) == 3 and all(0 <= v <= 1 for v in noisy)
    mn = get_reward("match_noisy")(["a>"] * 50, ["aaaa"] * 50, target=["a"] * 50, step=0, index=list(range(50)))
    assert all(0 <= v <= 1 for v in mn) and sum(mn) / 50 > 0.8  # centred on match = 1, clipped


def test_module_function_loading_and_errors():
    assert get_reward("mo_rl.rewards.builtin:vowels")(["p"], ["aa"]) == [1.0]
    with pytest.raises(MoRLError, match="has no callable 'nope'"):
        get_reward("mo_rl.rewards.builtin:nope")
    with pytest.raises(MoRLError, match="unknown objective 'nosuch'"):
        get_reward("nosuch")
    assert {"match", "noise", "vowels", "digits"} <= set(available_rewards())


def flaky(prompts, completions, **_):
    if any(c == "boom" for c in completions):
        raise RuntimeError("cannot score boom")
    return [float("nan") if c == "nan" else (None if c == "skip" else 1.0) for c in completions]


def test_score_isolates_failures_and_masks_none():
    comps = ["ok", "boom", "nan", "skip"]
    sc = score([("flaky", flaky), ("vowels", get_reward("vowels"))], ["p"] * 4, comps, {}, step=0, failure_value=-1)
    assert sc.rewards[:, 0].tolist() == [1.0, -1.0, -1.0, 0.0]
    assert sc.valid.tolist() == [True, True, True, False]
    assert sc.failures == {"flaky": 2} and sc.first_error["flaky"].startswith("RuntimeError: cannot score boom")
    with pytest.raises(MoRLError, match="objective 'flaky' failed: RuntimeError"):
        score([("flaky", flaky)], ["p"] * 4, comps, {}, step=0, fail_fast=True)
    assert all(math.isfinite(v) for v in sc.rewards.flatten().tolist())


def test_conditioned_rewards_gdpo_eq8():
    r = torch.tensor([[1.0, 0.9], [0.0, 0.8], [1.0, 0.3]])  # (correct, length)
    out = apply_conditions(r, ["correct", "length"], {"length": {"on": "correct", "min": 1.0}})
    assert out.tolist() == [[1.0, pytest.approx(0.9)], [0.0, 0.0], [1.0, pytest.approx(0.3)]]
