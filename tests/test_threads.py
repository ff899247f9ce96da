"""trainer.threads: the intra-op thread count of a run (mo_rl/train/threads.py), and the line `mo-rl train` prints."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from typer.testing import CliRunner

from mo_rl.cli import app
from mo_rl.train.threads import choose

SMALL = ["trainer.steps=1", "trainer.batch_prompts=2", "trainer.group_size=2", "trainer.device=cpu"]


def test_choose_key_then_omp_num_threads_then_torch_default():
    assert choose(3, {"OMP_NUM_THREADS": "1"}) == (3, "trainer.threads=3")
    assert choose(0, {"OMP_NUM_THREADS": "2"}) == (2, "OMP_NUM_THREADS=2")
    default = (torch.get_num_threads(), "torch's default, one per core; trainer.threads=N to change")
    assert choose(0, {}) == default
    assert choose(0, {"OMP_NUM_THREADS": "0"}) == choose(0, {"OMP_NUM_THREADS": "4,2"}) == default  # not a count


def test_negative_threads_is_one_line():
    out = CliRunner().invoke(app, ["train", "trainer.threads=-1"])
    assert (out.exit_code, out.stderr) == (2, "error: trainer.threads=-1 must be >= 0 (0 = auto: OMP_NUM_THREADS, "
                                              "else one per core)\n")


# The launcher case: a worker process that imported torch before the launcher set OMP_NUM_THREADS for this job
# (Ray does, to the job's CPUs), so torch itself never read it; auto still applies it. Then an explicit key wins.
RUN = """
import os, sys, torch
from tests.conftest import compose_run
from mo_rl.train.loop import run_train
before = torch.get_num_threads()
os.environ["OMP_NUM_THREADS"] = "3"
run_train(compose_run(sys.argv[1], "run_name=a", *sys.argv[2:]))
after_auto = torch.get_num_threads()
run_train(compose_run(sys.argv[1], "run_name=b", "trainer.threads=1", *sys.argv[2:]))
print(before, after_auto, torch.get_num_threads())
"""


def test_run_applies_and_prints_its_thread_count(tmp_path, tiny_model_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # what torch reads at import: `before`
    p = subprocess.run([sys.executable, "-c", RUN, str(tmp_path), *SMALL], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["1", "3", "1"]
    assert [ln for ln in p.stderr.splitlines() if ln.startswith("threads:")] == [
        "threads: 3 (OMP_NUM_THREADS=3)", "threads: 1 (trainer.threads=1)"]
