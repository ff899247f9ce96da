"""Data-parallel training (``mo_rl/train/distributed.py``): 2 CPU processes over gloo train exactly like 1 process
on the same global batch.

Why the runs can be compared step by step: every rank draws the step's same B prompts from the step's seeded
``random.Random`` and keeps its contiguous slice; each prompt samples from its own seed (``SamplingParams.
prompt_seed``, one generator per prompt in the HF sampler) and rewards see global ``index`` values, so a rank's
tokens and rewards are those one process draws for the same prompts. Rewards and masks are all-gathered and the
advantages computed on the global batch, so they are equal exactly. The loss and gradients are not bit-equal:
each rank sums its own rows (padded to its own longest prompt and completion, which changes matmul reduction
lengths) and the all-reduce adds the partial sums in another order. In float32 that moves the loss by a few ulp
(measured: <= 4e-7 relative); one AdamW step carries that into the next step's weights at the same relative size.
So the tolerance is rtol=1e-5 (25x the measured difference, far below any real change: a wrong normalization is
off by 2x, a missing all-reduce by ~100%), atol=1e-7 for values that are ~0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mo_rl.errors import MoRLError
from mo_rl.pipeline import parallel
from mo_rl.train import distributed as dp
from mo_rl.train.loop import run_train
from tests.conftest import compose_run

RTOL, ATOL = 1e-5, 1e-7
BASE = ["trainer.steps=2", "trainer.batch_prompts=4", "trainer.group_size=4", "trainer.seed=3"]
# gdpo normalizes by a batch-level std, so a rank's own rows alone would give other advantages
CLI_RUN = ["method=gdpo", *BASE]
# every other aggregation path: sequence-sum loss, micro-batches, a KL reference, two epochs per step
SPAWN_RUN = ["method=dvao", "trainer.loss_agg=seq_sum", "trainer.micro_batch_size=4", "trainer.kl_coef=0.05",
             "trainer.epochs_per_step=2", "trainer.checkpoint_every=1", *BASE]


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in open(path / "metrics.jsonl")]


def _assert_same_steps(single: list[dict], multi: list[dict]) -> float:
    """Every logged value but timings agrees; rewards and advantages exactly. -> the largest relative difference."""
    assert [r["step"] for r in multi] == [r["step"] for r in single]
    worst = 0.0
    for a, b in zip(single, multi):
        keys = {k for k in a if not k.startswith("perf/") and k != "time"}
        assert keys == {k for k in b if not k.startswith("perf/") and k != "time"}
        for k in sorted(keys):
            if a[k] is None or k.startswith(("reward", "adv/", "success/", "completion/")):
                assert b[k] == a[k], (a["step"], k, a[k], b[k])
                continue
            torch.testing.assert_close(b[k], a[k], rtol=RTOL, atol=ATOL, msg=f"step {a['step']} {k}")
            worst = max(worst, abs(b[k] - a[k]) / max(abs(a[k]), 1e-12))
    return worst


def test_batch_must_split_over_the_ranks():
    with pytest.raises(MoRLError, match=r"trainer.batch_prompts=6 must be divisible by the 4 data-parallel"):
        dp.check_batch(dp.Dist(rank=0, world=4), 6)
    assert [parallel.shard(parallel.Dist(rank=r, world=2), 4) for r in (0, 1)] == [slice(0, 2), slice(2, 4)]


def test_torchrun_cli_matches_one_process(tmp_path, tiny_model_path):
    """``torchrun --nproc_per_node=2 -m mo_rl train``: rank 0 alone writes the run, and its rows are one process's."""
    single = _rows(run_train(compose_run(tmp_path / "single", *CLI_RUN)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "mo_rl", "train", f"output_dir={tmp_path / 'multi'}", "run_name=r", *CLI_RUN]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    path = tmp_path / "multi" / "default" / "r"
    multi = _rows(path)
    worst = _assert_same_steps(single, multi)
    print(f"max relative difference (torchrun, gdpo, token_mean): {worst:.2e}")
    assert json.loads((path / "summary.json").read_text())["status"] == "completed"
    assert len([json.loads(x) for x in open(path / "samples.jsonl")]) == 2 * 4  # rank 0's samples only
    assert (path / "checkpoints" / "step-2" / "state.pt").is_file()


def gloo_rank(rank: int, rendezvous: str) -> None:
    """Join a 2-rank gloo group through a file store: no TCP port to pick (a port picked free, released, then bound
    by rank 0 is a window another process or a client's own source port can take), no store server that rank 0's
    exit takes away from rank 1."""
    import torch.distributed as dist

    torch.set_num_threads(1)  # two ranks on a 2-core runner
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)


def gloo_done() -> None:
    """A rank's last step on success: wait for the other rank, then leave the group (no rank tears the group down
    while the other still has work in it)."""
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def _worker(rank: int, rendezvous: str, root: str, overrides: list[str]) -> None:
    """One spawned rank: 1 step, then ``trainer.steps=2`` on the same run directory (resumed from step-1)."""
    gloo_rank(rank, rendezvous)
    first = [o for o in overrides if not o.startswith("trainer.steps=")] + ["trainer.steps=1"]
    run_train(compose_run(root, *first))
    run_train(compose_run(root, *overrides))  # trainer.resume=auto continues the run from its checkpoint
    gloo_done()


def test_spawned_ranks_match_one_process_and_resume_together(tmp_path, tiny_model_path):
    """seq_sum with micro-batches, KL and two epochs; every rank resumes from rank 0's step-1 checkpoint."""
    single = _rows(run_train(compose_run(tmp_path / "single", *SPAWN_RUN)))
    torch.multiprocessing.spawn(_worker, args=(str(tmp_path / "rdzv"), str(tmp_path / "multi"), SPAWN_RUN), nprocs=2)
    path = tmp_path / "multi" / "default" / "r"
    multi = _rows(path)
    worst = _assert_same_steps(single, multi)
    print(f"max relative difference (spawn, dvao, seq_sum, micro-batches, KL, 2 epochs, resumed): {worst:.2e}")
    assert sorted(p.name for p in (path / "checkpoints").iterdir()) == ["final", "step-1", "step-2"]
