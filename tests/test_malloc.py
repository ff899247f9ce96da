"""keep_freed_memory: a training step reuses the memory the previous step freed instead of faulting fresh pages in
(checked in fresh processes, since the setting is process-wide)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, tempfile, torch
torch.set_num_threads(1)
from mo_rl.config import compose
from mo_rl.rollout.hf import HFEngine
from mo_rl.train.loop import setup, train_step
cfg = compose(["trainer.batch_prompts=8", "trainer.group_size=8", "trainer.steps=14", "rollout.max_new_tokens=16",
               f"output_dir={tempfile.mkdtemp()}", "run_name=r", f"trainer.keep_freed_memory={sys.argv[1]}"])
run = setup(cfg)
run.engine = HFEngine(run.policy, min_new_tokens=16)  # fixed shapes: every step allocates the same
for step in range(8):
    train_step(run, step)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for step in range(8, 14):
    train_step(run, step)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 6)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_training_steps_stop_faulting_pages_in():
    from mo_rl.train.malloc import keep_freed_memory

    if not keep_freed_memory():
        pytest.skip("not glibc: mallopt unavailable")

    def faults_per_step(keep: bool) -> float:
        out = subprocess.run([sys.executable, "-c", PROBE, str(keep).lower()], capture_output=True, text=True,
                             check=True)
        return float(out.stdout.split()[-1])

    tuned, default = faults_per_step(True), faults_per_step(False)
    # measured here: ~10 vs ~1140 per step (the bench step: fixed-length completions, so every step allocates the
    # same sizes); with variable lengths some sizes are new each step and the counts are ~300 vs ~950
    assert tuned < 100 and tuned * 5 < default, (tuned, default)
