"""How reward functions are called: own copies of the inputs (29.5), a worker process killed at the time limit and
a main process that SIGTERM still stops (29.7), and loud failures (28.1): a wrong length is an error naming both
lengths, an objective failing on a whole step is one stderr line, and one failing on every call fails the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from mo_rl.cli import app
from mo_rl.errors import MoRLError, RewardFailure
from mo_rl.rewards.registry import get_reward
from mo_rl.rewards.score import all_failed, score
from mo_rl.rewards.worker import WorkerReward
from tests import reliability_rewards as rr

RW = "tests.reliability_rewards"
SMALL = ["trainer.batch_prompts=2", "trainer.group_size=4", "trainer.device=cpu", "trainer.steps=2"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().split(") ")[1][0] != "Z"


# 29.5 ---------------------------------------------------------------------------------------------------------------

def lengths(prompts, completions, **_):
    return [float(len(c)) for c in completions]


@pytest.mark.parametrize("editor", [rr.edits_inputs, f"{RW}:edits_inputs"], ids=["in-process", "worker"])
def test_a_reward_that_empties_completions_changes_nothing_for_the_others(editor):
    comps, prompts = ["a", "bb", "ccc"], ["p"] * 3
    fn = get_reward(editor) if isinstance(editor, str) else editor
    sc = score([("edits", fn), ("lengths", lengths), ("again", fn)], prompts, comps, {"tests": [["x"]] * 3}, step=0)
    assert sc.rewards.tolist() == [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]] and sc.failures == {}
    assert comps == ["a", "bb", "ccc"] and prompts == ["p"] * 3  # what samples.jsonl logs is untouched


# 29.7 ---------------------------------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_a_reward_holding_the_gil_is_killed_at_its_limit_and_the_next_call_gets_a_fresh_worker():
    fn = get_reward(f"{RW}:catastrophic", timeout_s=1)  # imports within 30 s, calls within 1 s
    assert isinstance(fn, WorkerReward)
    pid = fn.proc.pid
    t0 = time.monotonic()
    sc = score([("c", fn)], ["p"] * 2, ["a", "hang"], {}, step=0, timeout_s=1)
    assert 1.0 <= time.monotonic() - t0 < 5.0
    assert sc.failures == {"c": 2} and sc.first_error == {
        "c": "RewardTimeout: took longer than objectives.timeout_s=1 s (its worker process was killed)"}
    assert not _alive(pid) and fn.proc is None
    assert score([("c", fn)], ["p"] * 2, ["a", "b"], {}, step=1, timeout_s=1).rewards.tolist() == [[1.0], [1.0]]


@pytest.mark.timeout(60)
def test_a_reward_that_kills_its_worker_is_that_calls_failure_and_the_next_call_works():
    fn = get_reward(f"{RW}:dies")
    sc = score([("d", fn)], ["p"] * 3, ["a", "die", "b"], {}, step=0)
    assert sc.failures == {"d": 3} and sc.first_error == {
        "d": "WorkerDied: its worker process exited (exit status 7) during the call"}  # not retried one by one
    assert score([("d", fn)], ["p"] * 2, ["a", "b"], {}, step=1).rewards.tolist() == [[1.0], [1.0]]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("body, message", [
    ("import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')\n",
     "objective 'h29_hangs_at_import:f': did not finish importing within 2 s (objectives.timeout_s, at least 2 s)"),
    ("import sys\nsys.exit(5)\n",
     "objective 'h29_exits_at_import:f': module 'h29_exits_at_import' does not import (SystemExit: 5)"),
], ids=["hangs", "exits"])
def test_a_module_that_hangs_or_exits_at_import_is_one_error(tmp_path, monkeypatch, body, message):
    name = "h29_hangs_at_import" if "re.match" in body else "h29_exits_at_import"
    (tmp_path / f"{name}.py").write_text(body + "def f(prompts, completions, **_):\n    return [0.0]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("mo_rl.rewards.worker.IMPORT_FLOOR_S", 2.0)
    t0 = time.monotonic()
    with pytest.raises(MoRLError) as e:
        get_reward(f"{name}:f", timeout_s=1)
    assert str(e.value) == message and time.monotonic() - t0 < 15
    assert name not in sys.modules  # never imported in this process


@pytest.mark.timeout(300)
def test_sigterm_stops_a_run_whose_reward_holds_the_gil(tmp_path, tiny_model_path):
    gate = tmp_path / "gate"
    env = {**os.environ, "MORL_GATE": str(gate), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mo_rl", "train", f"objectives.names=[match,{RW}:catastrophic_gate]",
                             "objectives.timeout_s=60", *SMALL, f"output_dir={tmp_path}", "run_name=r"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240  # a guard against a hang, not a timing (a loaded 2-core machine)
        while not gate.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.05)
        worker = int(gate.read_text())
        time.sleep(0.3)  # well inside the regex
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and time.monotonic() - t0 < 20, err  # not the 60 s limit
    assert err.strip().splitlines()[-1].startswith("error: stopped by SIGTERM at step 0")
    assert json.loads((tmp_path / "default" / "r" / "summary.json").read_text())["status"] == "interrupted"
    assert not _alive(worker)


# 28.1 ---------------------------------------------------------------------------------------------------------------

def _train(tmp_path, name, *extra):
    out = CliRunner().invoke(app, ["train", f"objectives.names=[match,{RW}:{name}]", *SMALL, *extra,
                                   f"output_dir={tmp_path}", f"run_name={name}"])
    return out, json.loads((tmp_path / "default" / name / "summary.json").read_text())


@pytest.mark.parametrize("name, error", [
    ("always_raises", "ValueError: no score today"),
    ("wrong_signature", "TypeError: wrong_signature() got an unexpected keyword argument 'prompts'"),
])
def test_a_reward_failing_on_every_call_is_reported_each_step_and_fails_the_run(tmp_path, tiny_model_path, name,
                                                                                error):
    out, summary = _train(tmp_path, name)
    obj = f"{RW}:{name}"
    assert out.exit_code == 1 and summary["status"] == "failed"
    said = [ln for ln in out.stderr.splitlines() if ln.startswith(("warning:", "error:", "reward failures:"))]
    assert said == [  # (beside these: the thread count and the progress lines)
        f"warning: objective {obj!r} failed on all 8 completions of step 0: {error}",
        f"warning: objective {obj!r} failed on all 8 completions of step 1: {error}",
        f"reward failures: objective {obj!r} failed 16 of 16 calls (first at step 0: {error})",
        f"error: objective {obj!r} failed on all 16 calls of the run ({error}); the run is marked failed: fix the "
        "reward function, or set trainer.fail_fast=false to train on with failure_value"]
    assert summary["error"].startswith(f"RewardsFailed: objective {obj!r} failed on all 16 calls")


def test_fail_fast_false_trains_on_and_still_counts_the_failed_calls(tmp_path, tiny_model_path):
    out, summary = _train(tmp_path, "always_raises", "trainer.fail_fast=false")
    assert out.exit_code == 0 and summary["status"] == "completed"
    assert out.stderr.splitlines()[-1] == (f"reward failures: objective '{RW}:always_raises' failed 16 of 16 calls "
                                           "(first at step 0: ValueError: no score today)")


def test_a_wrong_length_is_an_error_naming_both_lengths(tmp_path, tiny_model_path):
    out, summary = _train(tmp_path, "wrong_length", "trainer.fail_fast=false")  # not a failure to contain
    message = (f"objective '{RW}:wrong_length' returned 1 values for 8 completions (a reward function returns one "
               "value per completion)")
    assert out.exit_code == 2 and out.stderr.splitlines()[-1] == f"error: {message}"
    assert summary["status"] == "failed" and summary["steps_done"] == 0
    with pytest.raises(RewardFailure, match="returned 1 values for 3 completions"):  # never re-scored one by one
        score([("w", rr.wrong_length)], ["p"] * 3, ["a", "b", "c"], {}, step=0)


def test_all_failed_names_the_objectives_that_measured_nothing():
    sc = score([("raises", rr.always_raises), ("lengths", lengths)], ["p"] * 2, ["a", "bb"], {}, step=-1)
    assert all_failed(sc, 2) == {"raises": "ValueError: no score today"}
