"""Reliability, round 3 (issue 29, items 1-4, 9, 11, 12): no lost results (hydra.job.chdir, changed sweep grids,
a run without its config.yaml, default names), honest run states (dead runs, SIGHUP), sweep validation of any size,
and one line for each failure that used to be a traceback. All on the embedded tiny model, a few steps each."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mo_rl.cli import app
from mo_rl.config import compose, validate
from mo_rl.errors import MoRLError, RewardFailure
from mo_rl.hydra_app import prevalidate
from mo_rl.results.reader import lock_state, read_run
from mo_rl.signals import signalled
from mo_rl.train import guards
from mo_rl.train.run_identity import resume_config
from mo_rl.train.loop import default_run_dir, run_train
from tests.conftest import compose_run, kill_when

ROOT = Path(__file__).resolve().parents[1]
TINY = ["trainer.batch_prompts=2", "trainer.group_size=2", "trainer.device=cpu", "trainer.samples_per_step=1"]
RW = "tests.round3_rewards"


def _cli(*args, cwd, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mo_rl", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


def _rows(path):
    return [json.loads(line) for line in open(path / "metrics.jsonl")]


def _summary(path):
    return json.loads((path / "summary.json").read_text())


def _one_error(stderr: str) -> str:
    """The single ``error:`` line of a failed command (and no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_path):
    """A finished 2-step run (checkpoints/final included)."""
    return run_train(compose_run(tmp_path_factory.mktemp("base"), *TINY, "trainer.steps=2"))


# 1: hydra.job.chdir=true ------------------------------------------------------------------------------------------

def test_hydra_job_chdir_is_refused_in_one_line_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative output_dir, as in the issue: the run would land in Hydra's temp dir
    expected = ("error: hydra.job.chdir=true is not supported: a run writes to output_dir/experiment/run_name "
                "relative to the directory mo-rl starts in, and Hydra's job directory of a single run is "
                "temporary; drop the override (output_dir=<an absolute path> puts the runs elsewhere)\n")
    for multirun in ([], ["-m"]):
        out = CliRunner().invoke(app, ["train", *multirun, "hydra.job.chdir=true", "trainer.steps=2", *TINY,
                                       "output_dir=res", "run_name=chd"])
        assert out.exit_code == 2 and out.stderr == expected, out.stderr
    assert list(tmp_path.iterdir()) == [] and Path.cwd() == tmp_path  # nothing written, back where it started


# 2: a sweep rerun with a changed grid -----------------------------------------------------------------------------

def test_a_changed_grid_rerun_skips_only_jobs_whose_config_is_done(tmp_path, tiny_model_path):
    """The issue's two sweeps into one sweep dir (on one method, to keep it short): lr=0.002,1e10 then lr=0.05,0.002.
    Job numbers now mean other settings; only the lr=0.002 job is skipped, pointing at the run that has lr=0.002,
    and the lr=0.05 one trains, beside the first sweep's runs, which stay untouched."""
    sweep = tmp_path / "sw" / "grid"
    common = ["train", "-m", "trainer.steps=1", *TINY, f"output_dir={tmp_path}", "experiment=sw",
              f"hydra.sweep.dir={sweep}"]
    first = _cli(*common, "trainer.lr=0.002,1e10", cwd=tmp_path)
    assert first.returncode in (0, 1), first.stderr  # lr=1e10 may diverge: a failed job
    before = {p: (p / "metrics.jsonl").read_text() for p in sweep.iterdir() if (p / "metrics.jsonl").is_file()}
    again = _cli(*common, "trainer.lr=0.05,0.002", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "1 completed, 1 skipped, 0 failed" in again.stderr
    records = [json.loads(line) for line in open(sweep / "manifest.jsonl")][2:]
    assert [r["status"] for r in records] == ["completed", "skipped"]
    for r, lr in zip(records, (0.05, 0.002)):
        assert r["overrides"][-1] == f"trainer.lr={lr}" and read_run(r["run_dir"]).config["trainer"]["lr"] == lr
    # the skipped job points at the first sweep's lr=0.002 run (job 0 then); the new one trains beside it
    assert Path(records[1]["run_dir"]).name == "0-aligned-dvao-s0"
    assert re.fullmatch(r"0-aligned-dvao-s0-[0-9a-f]{6}", Path(records[0]["run_dir"]).name)
    assert {p: (p / "metrics.jsonl").read_text() for p in before} == before


# 3: a run directory without config.yaml ---------------------------------------------------------------------------

def test_a_run_without_config_yaml_is_refused_not_started_over(tmp_path, tiny_model_path):
    path = run_train(compose_run(tmp_path, *TINY, "trainer.steps=2"))
    (path / "config.yaml").unlink()
    rows = (path / "metrics.jsonl").read_text()
    with pytest.raises(MoRLError) as e:
        run_train(compose_run(tmp_path, *TINY, "trainer.steps=2"))
    assert str(e.value) == (f"run dir '{path}' holds an earlier run (metrics.jsonl, samples.jsonl, summary.json, "
                            "checkpoints/) but no config.yaml, so it can be neither checked nor continued; move it "
                            "away, or choose another run_name")
    assert (path / "metrics.jsonl").read_text() == rows and not (path / "config.yaml").exists()


# 4: default run names ---------------------------------------------------------------------------------------------

def test_default_run_names_differ_for_runs_started_in_the_same_second(monkeypatch):
    monkeypatch.setattr("mo_rl.train.loop.time.strftime", lambda fmt: "20260101-120000")  # the same second
    a, b, a2 = (default_run_dir(validate(compose([f"trainer.lr={lr}"]))) for lr in (0.002, 0.003, 0.002))
    assert a != b and a == a2  # only lr differs: the names still do; the same config names the same run
    assert re.fullmatch(r"aligned-dvao-s0-20260101-120000-[0-9a-f]{6}", a.name) and a.parent == Path("results/default")


# 9: dead runs, SIGHUP ---------------------------------------------------------------------------------------------

def test_a_sigkilled_run_reads_dead_in_compare_and_resume(tmp_path, tiny_model_path):
    run_dir = tmp_path / "default" / "k"
    args = [*TINY, "trainer.steps=12", "trainer.checkpoint_every=1", f"output_dir={tmp_path}", "run_name=k",
            "objectives.names=[match,tests.sweep_rewards:paced]", "objectives.weights=[1,0]"]
    kill_when([sys.executable, "-m", "mo_rl", "train", *args],
              lambda: (run_dir / "metrics.jsonl").is_file() and
              (run_dir / "metrics.jsonl").read_text().count("\n") >= 3, "three logged steps")
    logged = len(_rows(run_dir))
    assert _summary(run_dir)["status"] == "running" and _summary(run_dir)["steps_done"] == 0  # what a kill leaves
    assert lock_state(run_dir) is False
    run = read_run(run_dir)
    assert run.status == "dead" and run.steps_done == logged
    out = CliRunner().invoke(app, ["compare", str(run_dir), "--format", "json"])
    assert out.exit_code == 0, out.stderr
    [group] = json.loads(out.stdout)["groups"]
    assert group["status"] == "dead" and group["steps_done"] == logged
    resumed = CliRunner().invoke(app, ["train", "--resume", str(run_dir)])
    assert resumed.exit_code == 0, resumed.stderr
    assert resumed.stderr.splitlines()[0] == (f"resuming {run_dir}: dead (its process ended without closing the run: "
                                              f"killed, out of memory or crashed), {logged} step(s) logged")
    assert read_run(run_dir).status == "completed"


def test_sighup_stops_like_sigterm_and_a_live_run_reads_running(tmp_path, tiny_model_path):
    run_dir = tmp_path / "default" / "h"
    args = ["objectives.names=[match,tests.reliability_rewards:gate]", "objectives.weights=[1,0]", *TINY,
            "trainer.steps=4", "trainer.checkpoint_every=1", f"output_dir={tmp_path}", "run_name=h"]
    env = {**os.environ, "MORL_GATE": str(tmp_path / "go"), "MORL_GATE_STEP": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mo_rl", "train", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,  # SIGHUP as a terminal sends it (not nohup's)
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    try:
        deadline = time.time() + 300  # a guard against a hang, not a timing
        while not (run_dir / "checkpoints" / "step-1").is_dir():
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "hang"
            time.sleep(0.02)
        assert lock_state(run_dir) is True and read_run(run_dir).status == "running"  # held at step 1, alive
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 129, err
    message = (f"stopped by SIGHUP at step 1; the run is marked interrupted: continue it with mo-rl train --resume "
               f"{run_dir}")
    assert err.strip().splitlines()[-1] == f"error: {message}"
    assert _summary(run_dir)["status"] == "interrupted" and read_run(run_dir).status == "interrupted"


# 11: sweep validation of any size ---------------------------------------------------------------------------------

def test_a_bad_value_beyond_the_first_256_jobs_stops_the_sweep(tmp_path, monkeypatch):
    with pytest.raises(MoRLError, match=r"^unknown method 'nosuch'; allowed: "):
        prevalidate(["method=dvao,nosuch", "trainer.seed=range(0,300)"])  # nosuch is in jobs 300-599
    with pytest.raises(MoRLError, match=r"^trainer.lr=-1.0 must be > 0$"):
        prevalidate(["trainer.seed=range(0,300)", "trainer.lr=0.1,0.2,-1"])
    assert prevalidate(["method=dvao,grpo", "trainer.seed=range(0,300)"]) == 600
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["train", "-m", "method=dvao,nosuch", "trainer.seed=range(0,300)"])
    assert out.exit_code == 2 and "sweep of" not in out.stderr and list(tmp_path.iterdir()) == []
    assert _one_error(out.stderr).startswith("error: unknown method 'nosuch'; allowed: ")


# 12: one line where a traceback was -------------------------------------------------------------------------------

def test_a_full_disk_while_saving_the_final_model_is_one_line_and_resumable(tmp_path, tiny_model_path, monkeypatch):
    from safetensors import SafetensorError

    def full(self, path, merge_lora=False):  # what save_pretrained raises on a full disk (seen on a 200 KB tmpfs)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("mo_rl.models.policy.Policy.save", full)
    run_dir = tmp_path / "default" / "r"
    with pytest.raises(guards.DiskFull) as e:
        run_train(compose_run(tmp_path, *TINY, "trainer.steps=2"))
    assert str(e.value) == (f"disk full writing '{run_dir}/checkpoints/final' at step 1 (No space left on device); "
                            f"earlier checkpoints are intact: free space, then continue with mo-rl train --resume "
                            f"{run_dir}")
    assert _summary(run_dir)["status"] == "failed"
    monkeypatch.undo()  # space freed
    path = run_train(resume_config(run_dir, []), run_dir=run_dir, resume=True)
    assert (path / "checkpoints" / "final" / "config.json").is_file() and _summary(path)["status"] == "completed"


def test_an_unwritable_model_cache_is_one_line_naming_mo_rl_cache(tmp_path, monkeypatch):
    from mo_rl.models.embedded import embedded_path

    home = tmp_path / "home"
    home.write_text("")  # a HOME nothing can be written under, even by root
    monkeypatch.delenv("MO_RL_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(MoRLError) as e:
        embedded_path()
    assert str(e.value) == (f"the model cache '{home}/.cache/mo_rl/models' is not writable (Not a directory; it is "
                            "under HOME): mo-rl builds the embedded model there once; set MO_RL_CACHE=<a writable "
                            "directory>")


def test_a_damaged_config_yaml_is_skipped_by_compare_and_eval_and_refused_by_resume(tmp_path, finished):
    good, bad = tmp_path / "good", tmp_path / "bad"
    shutil.copytree(finished, good)
    shutil.copytree(finished, bad)
    (bad / "config.yaml").write_text("method: {name: dvao\ntrainer: [1,\n")
    out = CliRunner().invoke(app, ["compare", str(tmp_path), "--format", "json"])
    assert out.exit_code == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["runs"] == 1 and [g["n_runs"] for g in doc["groups"]] == [1]
    warning = f"warning: skipped {bad}: cannot read '{bad}/config.yaml' as YAML (ParserError: while parsing a flow "
    assert out.stderr.startswith(warning), out.stderr
    resumed = CliRunner().invoke(app, ["train", "--resume", str(bad)])
    assert resumed.exit_code == 2 and resumed.stderr.startswith(
        f"error: '{bad}/config.yaml' is damaged: not readable as YAML (ParserError: ") and \
        len(resumed.stderr.splitlines()) == 1, resumed.stderr
    (good / "config.yaml").write_text("hello\n")  # YAML, but not a run's settings
    ev = CliRunner().invoke(app, ["eval", str(good), "--k", "1", "--prompts", "1"])
    said = [ln for ln in ev.stderr.splitlines() if ln.startswith(("warning:", "error:"))]  # not the progress lines
    assert ev.exit_code == 2 and said == [
        f"warning: skipped {good}: '{good}/config.yaml' is damaged: it lacks a run's settings (method, task, "
        "trainer); restore it from a copy, or move the run away",
        "error: 1 of 1 run(s) skipped (see the warnings above); the others are evaluated"]


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="the data extra is not installed")
def test_a_null_prompt_in_a_dataset_is_one_line(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": null, "answer": "3"}\n')
    with pytest.raises(MoRLError) as e:
        validate(compose(["task=math", f"task.options.path={data}"]))
    assert str(e.value) == (f"task option path='{data}': row 2 of split 'train' has prompt None; every row's prompt "
                            "must be a string")


def test_rewards_beyond_float32_are_failures_and_an_unconvertible_int_one_line(tmp_path, tiny_model_path, capfd):
    """1e308 is inf in float32 and +-1e308 overflowed the estimators (reported as divergence): both are now their
    objective's failures, scored failure_value, with the cause in errors.json and one warning each."""
    names = f"objectives.names=[match,{RW}:near_max,{RW}:plus_minus]"
    # fail_fast=false: an objective that fails on every call otherwise fails the run (issue 28.1)
    path = run_train(compose_run(tmp_path, names, *TINY, "trainer.steps=2", "trainer.fail_fast=false"))
    assert _summary(path)["status"] == "completed"
    rows = _rows(path)
    assert all(r["reward/weighted/mean"] is not None and r["loss/total"] is not None for r in rows)
    assert [(r[f"reward_fail/{RW}:near_max"], r[f"reward_fail/{RW}:plus_minus"]) for r in rows] == [(4, 4), (4, 4)]
    assert [(r[f"reward/{RW}:near_max/mean"], r[f"reward/{RW}:plus_minus/mean"]) for r in rows] == [(0.0, 0.0)] * 2
    errors = json.loads((path / "errors.json").read_text())
    assert errors[f"{RW}:near_max"] == {"count": 8, "first_step": 0, "first_error": (
        "returned 1e+308 at step 0, beyond |r| <= 1e+15 (float32 training overflows there); scored as a failure "
        "(objectives.failure_value): rescale the reward")}
    assert errors[f"{RW}:plus_minus"]["first_error"].startswith("returned -1e+308 at step 0, beyond |r| <= 1e+15")
    warnings = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("warning: objective")]
    assert warnings == [f"warning: objective '{RW}:near_max' returned 1e+308 at step 0, beyond |r| <= 1e+15 "
                        "(float32 training overflows there); scored as a failure (objectives.failure_value): "
                        "rescale the reward",
                        f"warning: objective '{RW}:plus_minus' returned -1e+308 at step 0, beyond |r| <= 1e+15 "
                        "(float32 training overflows there); scored as a failure (objectives.failure_value): "
                        "rescale the reward"]
    from mo_rl.train.failures import RewardsFailed

    # 10**400 (no float holds it): in its worker process a failed call like a non-number; on every call, the run fails
    with pytest.raises(RewardsFailed, match=rf"objective '{RW}:huge_int' failed on all 8 calls of the run "
                                            r"\(returned a non-finite or non-numeric reward"):
        run_train(compose_run(tmp_path / "int", f"objectives.names=[match,{RW}:huge_int]", *TINY, "trainer.steps=2"))
    assert _summary(tmp_path / "int" / "default" / "r")["status"] == "failed"


def test_a_reward_raising_keyboardinterrupt_is_its_failure_not_a_ctrl_c(tmp_path, tiny_model_path):
    from mo_rl.train.failures import RewardsFailed

    # in its worker process (the default for module:function rewards) it is a failed call like any exception: the
    # run goes on scoring failure_value, and fails at the end, its reward having failed on every call
    with pytest.raises(RewardsFailed, match=r"interrupts' failed on all 8 calls of the run \(KeyboardInterrupt"):
        run_train(compose_run(tmp_path / "worker", f"objectives.names=[match,{RW}:interrupts]", *TINY,
                              "trainer.steps=2"))
    assert _summary(tmp_path / "worker" / "default" / "r")["status"] == "failed"
    try:  # in-process (objectives.isolation=thread): it stops the run in one line, not as a Ctrl-C
        run_train(compose_run(tmp_path, f"objectives.names=[match,{RW}:interrupts]", *TINY, "trainer.steps=2",
                              "objectives.isolation=thread"))
    except KeyboardInterrupt:  # caught here, or pytest would take it for the user's Ctrl-C and stop the session
        pytest.fail("the reward's own KeyboardInterrupt went through as a Ctrl-C")
    except RewardFailure as err:
        error = err
    else:
        pytest.fail("the run did not stop")
    assert str(error) == (f"objective '{RW}:interrupts' raised KeyboardInterrupt at step 0 although no Ctrl-C "
                            "reached mo-rl: the reward code raised it itself; the run stopped (status failed), a "
                            "reward must not raise KeyboardInterrupt")
    summary = _summary(tmp_path / "default" / "r")
    assert summary["status"] == "failed" and summary["error"] == f"RewardFailure: {error}"
    assert signalled() is None  # the run's SIGINT watch is gone with the run


@pytest.mark.parametrize("override, expected", [
    ("objectives.names=[match,tests.round3_exits:f]",
     "error: objective 'tests.round3_exits:f': module 'tests.round3_exits' does not import (SystemExit: 5)"),
    ("run_name=\u00e9t\u00e9", "error: cannot parse the override 'run_name=\u00e9t\u00e9': character '\u00e9' is "
                               "not allowed there; quote the value (run_name='...') to use letters beyond ASCII"),
    ("run_name=a\nb", "error: cannot parse the override 'run_name=a\\nb': character '\\n' is not allowed there; a "
                      "line break cannot be part of an override"),
    ("run_name='a\nb'", "error: run_name='a\\nb' must be one line of printable characters (it names a folder)"),
])
def test_reward_exit_at_import_and_unparsable_run_names_are_one_line(override, expected):
    out = CliRunner().invoke(app, ["train", override])
    assert out.exit_code == 2 and out.stderr == expected + "\n", out.stderr
