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


def test_a_reward_registered_in_a_user_module_trains(tmp_path, monkeypatch, tiny_model_path):
    """``objectives.modules`` imports the user's module, so its ``@register_reward`` name resolves; and
    ``module:function`` reaches a plain function of it."""
    import json

    from mo_rl.train.loop import run_train
    from tests.conftest import compose_run

    pkg = tmp_path / "h15_user_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "rewards.py").write_text(
        "from mo_rl.rewards import register_reward\n\n"
        "@register_reward('h15_brevity', 'short completions score high')\n"
        "def brevity(prompts, completions, **_):\n"
        "    return [1.0 / (1 + len(c)) for c in completions]\n\n"
        "def has_a(prompts, completions, **_):\n"
        "    return [float('a' in c) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = run_train(compose_run(tmp_path / "out", "objectives.modules=[h15_user_pkg.rewards]",
                                 "objectives.names=[h15_brevity,h15_user_pkg.rewards:has_a]", "trainer.steps=2",
                                 "trainer.batch_prompts=2", "trainer.group_size=2"))
    rows = [json.loads(line) for line in open(path / "metrics.jsonl")]
    assert len(rows) == 2 and all(0 < r["reward/h15_brevity/mean"] <= 1 for r in rows)
    assert "reward/h15_user_pkg.rewards:has_a/mean" in rows[0]


def test_a_user_module_that_does_not_import_is_one_line(tmp_path):
    from mo_rl.config import validate
    from tests.conftest import compose_run

    with pytest.raises(MoRLError, match="objectives.modules: 'no_such_pkg_h15' does not import"):
        validate(compose_run(tmp_path, "objectives.modules=[no_such_pkg_h15]"))


def test_builtin_rewards_register_when_the_package_is_imported():
    import subprocess
    import sys

    code = "import mo_rl.rewards.registry as r; print(sorted(r._REWARDS))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'match'" in out and "'math_correct'" in out  # builtin and real, no task imported
