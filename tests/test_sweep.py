"""A real Hydra multirun sweep through ``mo-rl train -m``, then ``mo-rl compare`` on the sweep directory."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mo_rl.hydra_app import expand_sweep

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mo_rl", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def test_expand_sweep_is_the_cartesian_product():
    jobs = expand_sweep(["method=dvao,grpo", "trainer.seed=0,1", "trainer.steps=2", "hydra.verbose=true"])
    assert jobs == [["method=dvao", "trainer.seed=0", "trainer.steps=2"],
                    ["method=dvao", "trainer.seed=1", "trainer.steps=2"],
                    ["method=grpo", "trainer.seed=0", "trainer.steps=2"],
                    ["method=grpo", "trainer.seed=1", "trainer.steps=2"]]


def test_sweep_then_compare(tmp_path, tiny_model_path):
    out = _cli("train", "-m", "method=dvao,grpo", "trainer.seed=0,1", "trainer.steps=2", "trainer.batch_prompts=2",
               "trainer.group_size=4", f"output_dir={tmp_path}", "experiment=sw", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    sweeps = list((tmp_path / "sw").glob("sweep-*"))
    assert len(sweeps) == 1
    assert out.stderr.splitlines()[-1] == (f"sweep done: 4 completed, 0 skipped, 0 failed; runs in {sweeps[0]}/, "
                                           f"manifest {sweeps[0]}/manifest.jsonl")
    manifest = [json.loads(line) for line in open(sweeps[0] / "manifest.jsonl")]
    assert sorted(m["status"] for m in manifest) == ["completed"] * 4
    assert {Path(m["run_dir"]).name for m in manifest} == {"0-aligned-dvao-s0", "1-aligned-dvao-s1",
                                                            "2-aligned-grpo-s0", "3-aligned-grpo-s1"}
    csv = _cli("compare", str(sweeps[0]), "--format", "csv", "--plot", str(tmp_path / "plots"), cwd=tmp_path)
    assert csv.returncode == 0, csv.stderr
    df = pd.read_csv(io.StringIO(csv.stdout))
    assert sorted(df["method"]) == ["dvao", "grpo"] and set(df["n_runs"]) == {2}
    pngs = list((tmp_path / "plots").glob("*.png"))
    assert pngs and all(p.stat().st_size > 5000 for p in pngs)


def test_a_failed_job_is_recorded_and_the_others_run(tmp_path, tiny_model_path):
    out = _cli("train", "-m", "trainer.fail_fast=true,false", "objectives.names=[match,tests.sweep_rewards:raises_on_long]",
               "trainer.steps=2", "trainer.batch_prompts=2", "trainer.group_size=4", f"output_dir={tmp_path}",
               "experiment=sw", cwd=tmp_path)
    manifest = [json.loads(line) for line in open(next((tmp_path / "sw").glob("sweep-*")) / "manifest.jsonl")]
    assert [m["status"] for m in manifest] == ["failed", "completed"], out.stderr
    assert "completion too long to score" in manifest[0]["error"]
    assert out.returncode == 1  # the sweep as a whole reports that a job failed


@pytest.mark.parametrize("bad", ["method=dvao,nope", "trainer.group_size=4,1"])
def test_a_bad_value_anywhere_in_the_sweep_stops_it_before_any_job(tmp_path, bad):
    out = _cli("train", "-m", bad, f"output_dir={tmp_path}", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr and not (tmp_path / "default").exists()
    assert len([ln for ln in out.stderr.splitlines() if ln.startswith("error:")]) == 1


def test_rerunning_a_sweep_skips_done_jobs_and_resumes_interrupted_ones(tmp_path, tiny_model_path):
    """A real 2-job sweep into a named sweep dir; job 1 is then cut back to its step-2 checkpoint with a summary
    that says interrupted and its manifest line removed (what a kill mid-run leaves); the same command again skips
    job 0 and continues job 1 from its checkpoint to the same final metrics."""
    sweep = tmp_path / "sw" / "mine"
    cmd = ["train", "-m", "trainer.seed=0,1", "trainer.steps=4", "trainer.checkpoint_every=2",
           "trainer.batch_prompts=2", "trainer.group_size=2", f"output_dir={tmp_path}", "experiment=sw",
           f"hydra.sweep.dir={sweep}"]
    first = _cli(*cmd, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    lines = [json.loads(line) for line in open(sweep / "manifest.jsonl")]
    assert [m["status"] for m in lines] == ["completed", "completed"]
    job1 = Path(lines[1]["run_dir"])
    full = [json.loads(line) for line in open(job1 / "metrics.jsonl")]
    # interrupt job 1 after step 2: drop its later rows, the step-4 checkpoint, the final model, the manifest line
    import shutil

    (job1 / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full[:2]))
    shutil.rmtree(job1 / "checkpoints" / "step-4")
    shutil.rmtree(job1 / "checkpoints" / "final")
    (sweep / "manifest.jsonl").write_text(json.dumps(lines[0]) + "\n")
    again = _cli(*cmd, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "1 completed" not in again.stderr and "1 skipped" in again.stderr and "1 resumed" in again.stderr
    lines = [json.loads(line) for line in open(sweep / "manifest.jsonl")]
    assert [m["status"] for m in lines] == ["completed", "skipped", "resumed"]
    assert lines[1]["run_dir"] == str(Path(lines[0]["run_dir"])) and lines[2]["run_dir"] == str(job1)
    resumed = [json.loads(line) for line in open(job1 / "metrics.jsonl")]
    assert [r["step"] for r in resumed] == [0, 1, 2, 3]
    for a, b in zip(resumed, full):  # bit for bit what the uninterrupted job logged
        assert {k: v for k, v in a.items() if not k.startswith(("perf/", "time"))} == \
            {k: v for k, v in b.items() if not k.startswith(("perf/", "time"))}
