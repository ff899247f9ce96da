"""Multi-answer rollouts: parsing, per-answer scoring, and a vpo run that asks for several answers."""

from __future__ import annotations

import json

import pytest
import torch

from mo_rl.errors import MoRLError
from mo_rl.config import compose, validate
from mo_rl.rewards.registry import get_reward
from mo_rl.rewards.score import score_rollouts, split_answers
from mo_rl.train.loop import run_train
from tests.conftest import compose_run


def test_split_answers_masks_missing_and_drops_extra():
    assert split_answers("ae1, 23 ,", 3, ",") == (["ae1", "23", ""], [True, True, False])
    assert split_answers("a,b,c,d", 2, ",") == (["a", "b"], [True, True])
    assert split_answers("a,b", 1, None) == (["a,b"], [True])
    # nothing written: one empty answer is scored (reward 0 for fractions), not a masked-out rollout
    assert split_answers(",,,", 2, ",") == (["", ""], [True, False])


def test_score_rollouts_scores_each_answer():
    objectives = [("vowels", get_reward("vowels")), ("digits", get_reward("digits"))]
    r, valid, _ = score_rollouts(objectives, ["p", "p"], ["aa,12", "a1"], {}, step=0, answers=2, delimiter=",")
    assert r.shape == (2, 2, 2)
    assert r[0].tolist() == [[1.0, 0.0], [0.0, 1.0]] and r[1, 0].tolist() == [0.5, 0.5]
    assert valid.tolist() == [[True, True], [True, False]]


def test_answers_need_a_multi_answer_task():
    with pytest.raises(MoRLError, match="task.answers=2 must be >= 1, and 1 for task 'aligned'"):
        validate(compose(["task=aligned", "task.answers=2"]))


def test_vpo_trains_on_multi_answer_rollouts(tmp_path, tiny_model_path):
    path = run_train(compose_run(tmp_path, "method=vpo", "task=conflicting", "task.answers=2", "trainer.steps=2",
                                 "trainer.batch_prompts=2", "trainer.group_size=4", "rollout.max_new_tokens=16"))
    rows = [json.loads(line) for line in open(path / "metrics.jsonl")]
    assert len(rows) == 2 and 0 <= rows[-1]["vpo/set_score"] <= 1
    assert rows[-1]["vpo/win_frac/0"] + rows[-1]["vpo/win_frac/1"] == pytest.approx(1.0)
    for line in open(path / "samples.jsonl"):
        sample = json.loads(line)
        answers = sample["answer_rewards"]  # the written answers only; rewards is their mean
        assert 1 <= len(answers) <= 2 and set(sample["rewards"]) == {"vowels", "digits"}
        assert sample["rewards"]["vowels"] == pytest.approx(sum(a[0] for a in answers) / len(answers))
    assert torch.isfinite(torch.tensor([rows[-1]["loss/total"]])).all()
