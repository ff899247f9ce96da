"""End to end on the embedded default: every method trains and writes its run directory; the reward must rise."""

from __future__ import annotations

import json

import pytest
import yaml

from mo_rl import advantages
from mo_rl.train.loop import run_train
from tests.conftest import compose_run


def _rows(path):
    return [json.loads(line) for line in open(path / "metrics.jsonl")]


@pytest.mark.parametrize("method", advantages.available())
def test_every_method_runs_and_writes_the_run_directory(tmp_path, tiny_model_path, method):
    path = run_train(compose_run(tmp_path, f"method={method}", "trainer.steps=2", "trainer.batch_prompts=2",
                                 "trainer.group_size=4"))
    rows = _rows(path)
    assert [r["step"] for r in rows] == [0, 1]
    for key in ("reward/match/mean", "reward/noise/frac_zero_spread", "reward/weighted/mean", "adv/mean_abs",
                "adv/distinct_per_group", "adv/frac_zero_groups", "loss/total", "perf/tokens_per_s", "time"):
        assert key in rows[0], key
    summary = json.loads((path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_done"] == 2 and summary["method"] == method
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    assert cfg["method"]["name"] == method and cfg["objectives"]["resolved"]["names"][0] == "match"
    samples = [json.loads(line) for line in open(path / "samples.jsonl")]
    assert len(samples) == 8 and set(samples[0]["rewards"]) == {"match", "match_noisy", "first_char", "noise"}
    assert (path / "checkpoints" / "final" / "config.json").is_file()


def test_dvao_logs_effective_weights_that_sum_to_one(tmp_path, tiny_model_path):
    rows = _rows(run_train(compose_run(tmp_path, "method=dvao", "trainer.steps=1")))
    w = [rows[0][f"dvao/weight/{n}"] for n in ("match", "match_noisy", "first_char", "noise")]
    assert sum(w) == pytest.approx(1.0, abs=1e-5) and all(x >= 0 for x in w)


def test_same_seed_same_metrics(tmp_path, tiny_model_path):
    a = _rows(run_train(compose_run(tmp_path / "a", "trainer.steps=3")))
    b = _rows(run_train(compose_run(tmp_path / "b", "trainer.steps=3")))
    assert [r["loss/total"] for r in a] == [r["loss/total"] for r in b]
    assert [r["reward/weighted/mean"] for r in a] == [r["reward/weighted/mean"] for r in b]


@pytest.mark.parametrize("task, objective", [("aligned", "match"), ("conflicting", "digits")])
def test_weighted_reward_rises(tmp_path, tiny_model_path, task, objective):
    """40 steps of dvao: the mean weighted reward of the last quarter beats the first quarter by a margin."""
    rows = _rows(run_train(compose_run(tmp_path, f"task={task}", "trainer.steps=40")))
    first = sum(r["reward/weighted/mean"] for r in rows[:10]) / 10
    last = sum(r["reward/weighted/mean"] for r in rows[-10:]) / 10
    assert last > first + 0.1, (first, last)
    assert rows[-1][f"reward/{objective}/mean"] > rows[0][f"reward/{objective}/mean"]


def test_kl_and_loss_aggregations_run(tmp_path, tiny_model_path):
    for agg in ("seq_mean_token_mean", "seq_sum"):
        rows = _rows(run_train(compose_run(tmp_path / agg, "trainer.steps=2", f"trainer.loss_agg={agg}",
                                           "trainer.kl_coef=0.1", "trainer.epochs_per_step=2")))
        assert rows[-1]["loss/kl"] >= 0 and rows[0]["loss/kl"] >= 0
