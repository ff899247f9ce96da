"""Reliability, round 2 (issue 17): a locked run directory, divergence, damaged checkpoints, contained reward
functions, SIGTERM, a full disk, validation before anything is written, paths, eval over a tree, all on the
embedded tiny model. Subprocesses are real `mo-rl train` processes, held at a known step by a gate reward."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from mo_rl.cli import app
from mo_rl.errors import MoRLError, RewardFailure
from mo_rl.results.lock import RunLock
from mo_rl.rewards.score import score
from mo_rl.train import guards
from mo_rl.train.checkpoint import load_checkpoint, verify_checkpoint
from mo_rl.train.run_identity import resume_config
from mo_rl.train.loop import run_train
from tests import reliability_rewards
from tests.conftest import compose_run

SMALL = ["trainer.batch_prompts=2", "trainer.group_size=4", "trainer.device=cpu", "trainer.samples_per_step=1"]
GATED = ["objectives.names=[match,tests.reliability_rewards:gate]", "objectives.weights=[1,0]"]
RW = "tests.reliability_rewards"


def _rows(path):
    return [json.loads(line) for line in open(path / "metrics.jsonl")]


def _summary(path):
    return json.loads((path / "summary.json").read_text())


def _start(tmp_path, args, gate_step):
    """A real training process that holds at step ``gate_step`` until tmp_path/go exists."""
    env = {**os.environ, "MORL_GATE": str(tmp_path / "go"), "MORL_GATE_STEP": str(gate_step)}
    return subprocess.Popen([sys.executable, "-m", "mo_rl", "train", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(proc, ready, what):
    deadline = time.time() + 540  # a guard against a hang, not a timing: a crowded 2-core box took > 240 s
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {what}: {proc.communicate()[1][-2000:]}")
        assert time.time() < deadline, f"no {what} within 540 s"
        time.sleep(0.02)


def _stop(proc):
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


# 1 + 5: the lock (two processes) and SIGTERM ---------------------------------------------------------------------

def test_second_process_is_refused_and_sigterm_stops_like_ctrl_c(tmp_path):
    args = [*GATED, *SMALL, "trainer.steps=5", "trainer.checkpoint_every=1", f"output_dir={tmp_path}", "run_name=r"]
    run_dir = tmp_path / "default" / "r"
    proc = _start(tmp_path, args, gate_step=2)
    try:
        # step-2 is renamed into place after step 1's row: the process is then in step 2, held by the gate
        _wait_for(proc, lambda: (run_dir / "checkpoints" / "step-2").is_dir(), "checkpoint step-2")
        second = CliRunner().invoke(app, ["train", *args])  # this test's own process, while the first one trains
        assert second.exit_code == 2 and second.stdout == ""
        assert second.stderr == (f"error: run dir '{run_dir}' is in use by another mo-rl process (pid {proc.pid} "
                                 f"on {socket.gethostname()}); wait for it to end, or choose another run_name\n")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 143, err
    message = (f"stopped by SIGTERM at step 2; the run is marked interrupted: continue it with mo-rl train "
               f"--resume {run_dir}")
    assert err.strip().splitlines()[-1] == f"error: {message}"
    summary = _summary(run_dir)
    assert summary["status"] == "interrupted" and summary["steps_done"] == 2
    assert summary["error"] == f"Terminated: {message}"
    assert [r["step"] for r in _rows(run_dir)] == [0, 1]
    # the dead process's lock file is still there, and blocks nothing: continue the run here
    assert (run_dir / ".lock").read_text().startswith(f"pid {proc.pid} ")
    (tmp_path / "go").touch()
    path = run_train(resume_config(run_dir, []), run_dir=run_dir, resume=True)
    assert [r["step"] for r in _rows(path)] == list(range(5)) and _summary(path)["status"] == "completed"


def test_lock_is_exclusive_released_and_ignores_stale_files(tmp_path):
    (tmp_path / ".lock").write_text("pid 999999999 on elsewhere\n")  # left by a dead process: no flock held
    first = RunLock(tmp_path)
    with pytest.raises(MoRLError, match=rf"is in use by another mo-rl process \(pid {os.getpid()} on "):
        RunLock(tmp_path)
    first.release()
    RunLock(tmp_path).release()


def test_discard_removes_only_what_the_lock_created(tmp_path):
    run = tmp_path / "exp" / "r"
    RunLock(run).discard()
    assert not (tmp_path / "exp").exists()  # both directories were the lock's own
    (tmp_path / "exp").mkdir()
    lock = RunLock(run)
    (run / "metrics.jsonl").write_text("")  # the run wrote something: kept, lock file too
    lock.discard()
    assert lock.fd == -1 and (run / ".lock").is_file() and (run / "metrics.jsonl").is_file()
    (run / "metrics.jsonl").unlink()
    lock = RunLock(run)  # an existing directory holding only its lock: not this lock's to remove
    lock.discard()
    assert (run / ".lock").is_file()


def test_a_lock_on_a_file_unlinked_meanwhile_is_taken_on_the_new_file(tmp_path, monkeypatch):
    """The window ``discard`` opens: another process opened .lock, the failed start unlinked it and released, then
    the other process's flock succeeds on the dead inode. It must notice and lock the file now at the path."""
    import fcntl

    real_flock, calls = fcntl.flock, []

    def flock(fd, op):
        calls.append(fd)
        if len(calls) == 1:
            (tmp_path / ".lock").unlink()  # the discard happening between our open and our flock
        return real_flock(fd, op)

    monkeypatch.setattr("mo_rl.results.lock.fcntl.flock", flock)
    lock = RunLock(tmp_path)
    assert len(calls) == 2 and os.fstat(lock.fd).st_ino == os.stat(tmp_path / ".lock").st_ino
    monkeypatch.undo()
    with pytest.raises(MoRLError, match="in use by another mo-rl process"):
        RunLock(tmp_path)
    lock.release()


# 2: divergence ----------------------------------------------------------------------------------------------------

def test_divergence_stops_the_run_without_a_broken_checkpoint(tmp_path):
    out = CliRunner().invoke(app, ["train", *SMALL, "trainer.lr=1e10", "trainer.steps=4",
                                   "trainer.checkpoint_every=1", f"output_dir={tmp_path}", "run_name=r"])
    assert out.exit_code == 1
    threads, err = out.stderr.split("\n", 1)  # the line a started run prints first, then the one error line
    assert threads.startswith("threads: ") and err == (
        "error: training diverged at step 1: the loss is nan (trainer.lr=1e+10); the run stopped before the "
        "optimizer step and wrote no checkpoint of the broken state: lower trainer.lr\n")
    path = tmp_path / "default" / "r"
    summary = _summary(path)
    assert summary["status"] == "diverged" and summary["steps_done"] == 1
    assert [r["step"] for r in _rows(path)] == [0]
    assert sorted(p.name for p in (path / "checkpoints").iterdir()) == ["step-1"]  # no final, nothing after
    state, _ = load_checkpoint(path / "checkpoints" / "step-1")
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_non_finite_parameter_is_named(tiny_policy):
    model = type(tiny_policy.module)(tiny_policy.module.config)
    params = [p for p in model.parameters()]
    guards.check_params(model, params)  # finite: passes
    name, p = next(iter(model.named_parameters()))
    with torch.no_grad():
        p.view(-1)[3] = float("inf")
    with pytest.raises(guards.NonFinite, match=rf"^parameter {name} is inf$"):
        guards.check_params(model, params)


# 6 + 7 + 2: validation before anything is written ----------------------------------------------------------------

@pytest.mark.parametrize("arg, expected", [
    ("trainer.lr=nan", "trainer.lr=nan must be a finite number"),
    ("trainer.lr=inf", "trainer.lr=inf must be a finite number"),
    ("trainer.lr=-1", "trainer.lr=-1.0 must be > 0"),
    ("trainer.device=tpu", "unknown trainer.device 'tpu'; allowed: auto, cpu, cuda, cuda:N, mps"),
    ("trainer.group_size=100000", "trainer.group_size=100000 x trainer.batch_prompts=8 is beyond what one step can "
                                  "hold in memory; allowed: group_size <= 1024 and batch_prompts * group_size <= "
                                  "65536 (typical: group_size 4-64)"),
    ("trainer.clip_eps=-0.1", "trainer.clip_eps=-0.1 must be >= 0"),
    ("method.eps=-1", "method.eps=-1 must be >= 0"),
    ("objectives.timeout_s=-1", "objectives.timeout_s=-1.0 must be >= 0 (0 or null = no time limit)"),
    ("run_name=../x", "run_name='../x' must be a relative name inside output_dir (no absolute path, no '..', not "
                      "empty)"),
    ("run_name=/tmp/x", "run_name='/tmp/x' must be a relative name inside output_dir (no absolute path, no '..', not "
                        "empty)"),
    ("experiment=a/../../b", "experiment='a/../../b' must be a relative name inside output_dir (no absolute path, "
                             "no '..', not empty)"),
])
def test_bad_values_are_refused_before_anything_is_written(tmp_path, arg, expected):
    out = CliRunner().invoke(app, ["train", arg, f"output_dir={tmp_path}/out"])
    assert (out.exit_code, out.stderr) == (2, f"error: {expected}\n")
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path):
    out = CliRunner().invoke(app, ["train", "trainer.device=cuda", f"output_dir={tmp_path}"])
    assert (out.exit_code, out.stderr) == (2, f"error: trainer.device=cuda but CUDA is not available here (torch "
                                              f"{torch.__version__}, 0 GPUs); use trainer.device=cpu or auto\n")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_start_does_not_block_the_fixed_rerun(tmp_path, tiny_model_path):
    (tmp_path / "notamodel").mkdir()
    args = [*SMALL, "trainer.steps=1", f"output_dir={tmp_path}", "run_name=r"]
    out = CliRunner().invoke(app, ["train", *args, f"model.path={tmp_path}/notamodel"])
    assert out.exit_code == 2 and out.stderr.startswith(f"error: model.path='{tmp_path}/notamodel' could not be ")
    assert not (tmp_path / "default").exists()  # nothing written, so nothing left: not even the lock's directory
    out = CliRunner().invoke(app, ["train", *args])  # fixed: the default model, same run_name
    assert out.exit_code == 0, out.stderr
    # a start that failed in its first step (fail_fast) is not protected either: a changed config starts afresh
    bad = ["objectives.names=[match,tests.reliability_rewards:exits]", "trainer.fail_fast=true"]
    out = CliRunner().invoke(app, ["train", *args[:-1], "run_name=q", *bad])
    assert out.exit_code == 2 and out.stderr.split("\n", 1)[1].startswith(  # after the "threads: N (...)" line
        "error: objective 'tests.reliability_rewards:exits' failed")
    out = CliRunner().invoke(app, ["train", *args[:-1], "run_name=q"])
    assert out.exit_code == 0, out.stderr
    assert not (tmp_path / "default" / "q" / "errors.json").exists()


# 3: damaged checkpoints -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_path):
    """A finished 3-step run with checkpoints step-1, step-2, step-3 and final."""
    root = tmp_path_factory.mktemp("base")
    return run_train(compose_run(root, *SMALL, "trainer.steps=3", "trainer.checkpoint_every=1",
                                 "trainer.keep_checkpoints=3"))


def _damage(ckpt, how):
    if how == "truncated state.pt":
        size = (ckpt / "state.pt").stat().st_size
        with open(ckpt / "state.pt", "r+b") as f:
            f.truncate(size // 2)
        return f"state.pt has {size // 2} bytes, its manifest says {size}"
    if how == "missing meta.json":
        (ckpt / "meta.json").unlink()
        return "meta.json is missing"
    if how == "corrupt manifest.json":
        (ckpt / "manifest.json").write_text('{"files": {"state.pt": ')
        return "manifest.json is not valid (JSONDecodeError)"
    text = (ckpt / "meta.json").read_text()  # corrupt meta.json, same length
    (ckpt / "meta.json").write_text("{" * (len(text) - 1) + "\n")
    return "meta.json does not match its checksum"


@pytest.mark.parametrize("how", ["truncated state.pt", "missing meta.json", "corrupt manifest.json",
                                 "corrupt meta.json"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, finished, capsys, how):
    run_dir = tmp_path / "r"
    shutil.copytree(finished, run_dir)
    assert [verify_checkpoint(run_dir / "checkpoints" / f"step-{i}") for i in (1, 2, 3)] == [None] * 3
    problem = _damage(run_dir / "checkpoints" / "step-3", how)
    assert verify_checkpoint(run_dir / "checkpoints" / "step-3") == problem
    capsys.readouterr()
    path = run_train(resume_config(run_dir, ["trainer.steps=4"]), run_dir=run_dir, resume=True)
    threads, warning = capsys.readouterr().err.splitlines()[:2]  # the run's thread count comes first
    assert threads.startswith("threads: ") and warning == (f"warning: checkpoint {run_dir}/checkpoints/step-3 is "
                                                           f"damaged ({problem}); resuming from step-2")
    rows, base = _rows(path), _rows(finished)
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and _summary(path)["status"] == "completed"
    assert rows[2]["loss/total"] == base[2]["loss/total"]  # step 2 again, from step-2: the very same numbers
    assert verify_checkpoint(path / "checkpoints" / "step-3") is None  # rewritten by the resumed run


# 4: contained reward functions ------------------------------------------------------------------------------------

@pytest.fixture
def release_hung_threads():
    reliability_rewards.RELEASE.clear()
    yield
    reliability_rewards.RELEASE.set()  # the abandoned threads return


# trainer.fail_fast=false: a reward that fails on every call would otherwise end the run failed (issue 28.1)
def test_a_hanging_reward_times_out_and_the_run_goes_on(tmp_path, tiny_model_path, release_hung_threads):
    path = run_train(compose_run(tmp_path, *SMALL, "trainer.steps=2", f"objectives.names=[match,{RW}:hangs]",
                                 "objectives.timeout_s=0.5", "trainer.fail_fast=false"))
    assert _summary(path)["status"] == "completed"
    assert [r[f"reward_fail/{RW}:hangs"] for r in _rows(path)] == [8, 8]
    assert json.loads((path / "errors.json").read_text())[f"{RW}:hangs"] == {
        "first_error": "RewardTimeout: took longer than objectives.timeout_s=0.5 s (its worker process was killed)",
        "first_step": 0, "count": 16}


def test_a_reward_raising_systemexit_is_that_rewards_failure(tmp_path, tiny_model_path):
    path = run_train(compose_run(tmp_path, *SMALL, "trainer.steps=2", f"objectives.names=[match,{RW}:exits]",
                                 "trainer.fail_fast=false"))
    assert _summary(path)["status"] == "completed"
    assert json.loads((path / "errors.json").read_text())[f"{RW}:exits"] == {
        "first_error": "SystemExit: 3", "first_step": 0, "count": 16}


def test_timeout_and_systemexit_under_fail_fast_stop_with_the_reason(release_hung_threads):
    args = (["p"] * 2, ["a", "b"], {}, 0)
    with pytest.raises(RewardFailure, match=r"^objective 'h' failed: RewardTimeout: took longer than "
                                            r"objectives.timeout_s=0.2 s"):
        score([("h", reliability_rewards.hangs)], *args, fail_fast=True, timeout_s=0.2)
    with pytest.raises(RewardFailure, match=r"^objective 'x' failed: SystemExit: 3$"):
        score([("x", reliability_rewards.exits)], *args, fail_fast=True)


def test_a_reward_that_scores_nothing_warns_and_the_report_holds(tmp_path, tiny_model_path):
    out = CliRunner().invoke(app, ["train", *SMALL, "trainer.steps=2", f"objectives.names=[match,{RW}:cannot_score]",
                                   f"output_dir={tmp_path}", "run_name=r"])
    assert out.exit_code == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: objective '{RW}:cannot_score' returned None for every completion (step 0): it "
                        "masks every rollout, so nothing is learned from the batch"]
    assert "weighted reward: first 20% of steps n/a (every rollout masked) -> last 20% n/a" in out.stdout


# 5: a full disk ---------------------------------------------------------------------------------------------------

def _small_disk(path) -> bool:
    """A 16 MiB tmpfs at ``path`` (root with CAP_SYS_ADMIN); False where it cannot be mounted."""
    path.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _fill(path):
    """Write a ballast file until the file system is full."""
    with open(path / "ballast", "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096, 512):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass


def test_full_disk_is_one_line_keeps_checkpoints_and_resumes(tmp_path):
    import resource

    disk = tmp_path / "disk"
    tmpfs = _small_disk(disk)
    args = [*GATED, *SMALL, "trainer.steps=5", "trainer.checkpoint_every=1", f"output_dir={disk}", "run_name=r"]
    run_dir = disk / "default" / "r"
    proc = _start(tmp_path, args, gate_step=2)
    try:
        _wait_for(proc, lambda: (run_dir / "checkpoints" / "step-2").is_dir(), "checkpoint step-2")
        if tmpfs:
            _fill(disk)  # a real ENOSPC
        else:  # no tmpfs here: a file-size limit on the process gives EFBIG at the next checkpoint (state.pt)
            size = (run_dir / "checkpoints" / "step-2" / "state.pt").stat().st_size
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (size // 2, size // 2))
        (tmp_path / "go").touch()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err
        last = err.strip().splitlines()[-1]
        reason = "No space left on device" if tmpfs else "File too large"
        assert last.startswith("error: disk full writing ") and f"({reason}); earlier checkpoints are intact: " \
            f"free space, then continue with mo-rl train --resume {run_dir}" in last, last
        assert [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")] == []
        summary = _summary(run_dir)
        assert summary["status"] == "failed" and reason in summary["error"]
        assert [verify_checkpoint(run_dir / "checkpoints" / f"step-{i}") for i in (1, 2)] == [None, None]
        (disk / "ballast").unlink(missing_ok=True)  # space freed
        path = run_train(resume_config(run_dir, []), run_dir=run_dir, resume=True)
        assert [r["step"] for r in _rows(path)] == list(range(5)) and _summary(path)["status"] == "completed"
    finally:
        _stop(proc)
        if tmpfs:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# 8: eval over a tree ----------------------------------------------------------------------------------------------

def test_eval_skips_runs_it_cannot_evaluate_and_exits_nonzero(tmp_path, finished):
    tree = tmp_path / "tree"
    for name in ("good", "nofinal", "truncated"):
        shutil.copytree(finished, tree / name)
    shutil.rmtree(tree / "nofinal" / "checkpoints" / "final")
    st = tree / "truncated" / "checkpoints" / "final" / "model.safetensors"
    with open(st, "r+b") as f:
        f.truncate(st.stat().st_size // 2)
    out = CliRunner().invoke(app, ["eval", str(tree), "--prompts", "2", "--k", "1,2"])
    assert out.exit_code == 2
    progress = [line for line in out.stderr.splitlines() if line.startswith("eval: ")]  # not a terminal: plain lines
    assert [line.split(" (")[0] for line in progress] == ["eval: 0/3", "eval: 1/3", "eval: 2/3", "eval: 3/3"]
    sampling = [line for line in out.stderr.splitlines() if line.startswith("sampling: ")]  # the good run's prompts
    assert [line.split(" (")[0] for line in sampling] == ["sampling: 0/2", "sampling: 1/2", "sampling: 2/2"]
    assert [line for line in out.stderr.splitlines() if not line.startswith(("eval: ", "sampling: "))] == [
        f"warning: skipped {tree / 'nofinal'}: '{tree / 'nofinal'}' has no checkpoints/final; eval needs a run that "
        "finished training",
        f"warning: skipped {tree / 'truncated'}: model.path='{tree / 'truncated'}/checkpoints/final' could not be "
        "loaded (Error while deserializing header: incomplete metadata, file not fully covered)",
        "error: 2 of 3 run(s) skipped (see the warnings above); the others are evaluated"]
    assert out.stdout.startswith(f"{tree / 'good'}: best@1 ")
    assert (tree / "good" / "eval.json").is_file()


def test_with_sigint_ignored_a_keyboardinterrupt_is_never_taken_for_ctrl_c():
    """A job started in the background (`nohup mo-rl train &`) has SIGINT ignored: no Ctrl-C can reach it, so a
    reward's own KeyboardInterrupt must read as the reward's failure (signalled() False), not as an unknown (None)."""
    import signal

    from mo_rl.signals import on_sigterm, signalled

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        restore = on_sigterm()
        assert signalled() is False
        restore()
        assert signalled() is None and signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # left as it was
    finally:
        signal.signal(signal.SIGINT, before)
