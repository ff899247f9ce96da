"""Crash and resume: SIGKILL a training process after its first checkpoint, resume it, and hold every step of the
result to an uninterrupted run with the same seed. Also: automatic resume, refusals, pruning, torn log lines."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from mo_rl.errors import MoRLError
from mo_rl.train.checkpoint import latest_checkpoint, truncate_jsonl
from mo_rl.train.run_identity import resume_config
from mo_rl.train.loop import run_train
from tests.conftest import compose_run, kill_when

# small and CPU-pinned, so a run is seconds and every run uses the same kernels; a paced zero-weight objective makes
# each step take >= 30 ms, so the 7 steps after the step-3 checkpoint outlast the killer's 10 ms polling by far
# however fast the machine (a tiny step alone is ~20 ms)
ARGS = ["trainer.steps=10", "trainer.checkpoint_every=3", "trainer.batch_prompts=2", "trainer.group_size=4",
        "trainer.device=cpu", "trainer.samples_per_step=2",
        "objectives.names=[match,match_noisy,first_char,noise,tests.sweep_rewards:paced]",
        "objectives.weights=[1,1,1,1,0]"]
# everything a step computes from the policy and the data; perf/* and time are wall-clock and differ
COMPARED = ("loss/", "reward/", "adv/", "dvao/", "success/")


def _rows(path):
    return [json.loads(line) for line in open(path / "metrics.jsonl")]


def _computed(row: dict) -> dict:
    return {k: v for k, v in row.items() if k.startswith(COMPARED)}


def _cli(*args):
    return [sys.executable, "-m", "mo_rl", "train", *args]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_path):
    """The uninterrupted run: 10 steps in one go."""
    return _rows(run_train(compose_run(tmp_path_factory.mktemp("ref"), *ARGS)))


def test_sigkill_then_resume_matches_the_uninterrupted_run(tmp_path, reference):
    run_dir = tmp_path / "default" / "r"
    kill_when(_cli(*ARGS, "run_name=r", f"output_dir={tmp_path}"), (run_dir / "checkpoints" / "step-3").is_dir,
              "its first checkpoint", timeout=240)  # step-3 is renamed into place only once complete
    killed = json.loads((run_dir / "summary.json").read_text())
    assert killed["status"] == "running" and killed["steps_done"] < 10  # killed mid-run, no chance to clean up
    resumed_from = int(latest_checkpoint(run_dir).name.split("-")[1])
    assert resumed_from in (3, 6, 9)

    out = subprocess.run(_cli("--resume", str(run_dir)), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == list(range(10))  # each step exactly once
    samples = [json.loads(line)["step"] for line in open(run_dir / "samples.jsonl")]
    assert samples == [s for s in range(10) for _ in range(2)]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_done"] == 10
    # Tolerance: none, exact equality. Every step reseeds its prompts, sampling and estimator draws from
    # (seed, step), the checkpoint restores weights and AdamW moments bit for bit (float32 tensors through
    # torch.save), and on CPU with the same thread count each kernel reduces in the same order, so the resumed
    # process computes the very same floats. Measured: max |difference| 0.0 over every compared key. On GPU,
    # non-deterministic atomics in reductions would need a tolerance (~1e-6 relative); this test pins the CPU.
    for step in range(10):
        assert _computed(rows[step]) == _computed(reference[step]), step
    assert rows[-1]["time"] >= rows[resumed_from - 1]["time"]  # the clock goes on from the checkpoint


def test_same_run_name_twice_resumes_automatically(tmp_path, reference):
    """trainer.resume=auto (the default): a longer second run continues the first and matches the reference."""
    short = [a if not a.startswith("trainer.steps") else "trainer.steps=5" for a in ARGS]
    path = run_train(compose_run(tmp_path, *short))
    assert sorted(p.name for p in (path / "checkpoints").iterdir()) == ["final", "step-3", "step-5"]
    assert run_train(compose_run(tmp_path, *ARGS)) == path
    rows = _rows(path)
    assert [r["step"] for r in rows] == list(range(10))
    assert [_computed(r) for r in rows] == [_computed(r) for r in reference]
    # keep_checkpoints=2: only the two newest step checkpoints remain
    assert sorted(p.name for p in (path / "checkpoints").iterdir()) == ["final", "step-10", "step-9"]


def test_existing_run_dir_refusals(tmp_path, tiny_model_path):
    small = ["trainer.steps=2", "trainer.batch_prompts=2", "trainer.group_size=2"]
    run_train(compose_run(tmp_path, *small))
    with pytest.raises(MoRLError, match=r"exists \(trainer.resume=never\); choose another run_name"):
        run_train(compose_run(tmp_path, *small, "trainer.resume=never"))
    with pytest.raises(MoRLError, match=r"exists with a different config \(method.name: 'dvao' -> 'grpo'\)"):
        run_train(compose_run(tmp_path, *small, "method=grpo"))
    run_dir = tmp_path / "default" / "r"
    with pytest.raises(MoRLError, match=r"cannot override 'trainer.lr=0.1' when resuming; allowed: trainer.steps"):
        resume_config(run_dir, ["trainer.lr=0.1"])
    with pytest.raises(MoRLError, match=r"not a run directory \(no config.yaml there\)"):
        resume_config(tmp_path, [])
    with pytest.raises(MoRLError, match=r"trainer.steps=1 is below the 2 steps the run to resume has done"):
        run_train(resume_config(run_dir, ["trainer.steps=1"]), run_dir=run_dir, resume=True)
    cfg = resume_config(run_dir, ["trainer.steps=4"])
    assert cfg.trainer.steps == 4 and cfg.trainer.group_size == 2 and "resolved" not in cfg.objectives
    assert OmegaConf.load(run_dir / "config.yaml").trainer.steps == 2  # the refusals wrote nothing


def test_truncate_drops_later_steps_and_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2}\n{"step": 3}\n{"ste')
    assert truncate_jsonl(path, 2) == [{"step": 0}, {"step": 1}]
    assert path.read_text() == '{"step": 0}\n{"step": 1}\n'


def test_half_written_checkpoint_is_ignored_and_removed(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step-3").mkdir(parents=True)
    (root / ".step-6.tmp").mkdir()  # a crash while writing step 6
    assert latest_checkpoint(tmp_path) == root / "step-3"
    assert not (root / ".step-6.tmp").exists()


def test_keep_checkpoints_0_leaves_only_the_final_model_and_refuses_to_restart(tmp_path, tiny_model_path,
                                                                              monkeypatch):
    """keep_checkpoints=0: a step checkpoint exists while the run goes (resumable after a crash), none once it has
    completed (a sweep of real models would otherwise keep AdamW's state of every run); continuing such a run
    would start it again from step 0, so it is refused in one line, nothing touched."""
    import mo_rl.train.loop as loop

    args = ["trainer.steps=4", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=0",
            "trainer.batch_prompts=2", "trainer.group_size=2"]
    real_step = loop.train_step

    def interrupted_at_3(run, step):
        if step == 3:
            raise KeyboardInterrupt
        return real_step(run, step)

    monkeypatch.setattr(loop, "train_step", interrupted_at_3)
    with pytest.raises(KeyboardInterrupt):
        run_train(compose_run(tmp_path, *args))
    path = tmp_path / "default" / "r"
    assert [p.name for p in (path / "checkpoints").iterdir()] == ["step-2"]  # kept: the run did not complete
    monkeypatch.undo()
    run_train(compose_run(tmp_path, *args))  # continues from step-2 to 4, then prunes
    assert [p.name for p in (path / "checkpoints").iterdir()] == ["final"]
    rows = (path / "metrics.jsonl").read_text()
    with pytest.raises(MoRLError, match=r"completed and kept no step checkpoint \(trainer.keep_checkpoints=0\)"):
        run_train(compose_run(tmp_path, *args, "trainer.steps=6"))
    assert (path / "metrics.jsonl").read_text() == rows and len(rows.splitlines()) == 4
