"""``mo-rl train -m hydra/launcher=ray``: a real 2x2 sweep on a Ray instance started on this machine
(``ray.init`` with no address, 2 CPUs, from ``conf/hydra/launcher/ray.yaml``), each run a Ray task in its own
worker process. It must leave what the basic launcher leaves: the same manifest lines and run directories, which
``mo-rl compare`` reads."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.test_sweep import _cli

pytestmark = pytest.mark.ray  # Ray's start-up and a worker process per run: ~1 min idle, over 2 under load

pytest.importorskip("ray", reason="needs ray (pip install 'mo-rl[ray]')")
pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="needs hydra-ray-launcher (pip install 'mo-rl[ray]')")

SWEEP = ["method=dvao,grpo", "trainer.seed=0,1", "trainer.steps=2", "trainer.batch_prompts=2", "trainer.group_size=4",
         "experiment=sw"]


def _sweep(root: Path, *launcher: str) -> tuple[Path, str]:
    out = _cli("train", "-m", *launcher, *SWEEP, f"output_dir={root}", cwd=root.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep,) = (root / "sw").glob("sweep-*")
    return sweep, out.stdout + out.stderr


def _manifest(sweep: Path) -> list[tuple]:
    rows = [json.loads(line) for line in open(sweep / "manifest.jsonl")]
    return sorted((r["job"], tuple(r["overrides"][:2]), Path(r["run_dir"]).relative_to(sweep).as_posix(),
                   r["status"]) for r in rows)


def _tree(sweep: Path) -> set[str]:
    return {p.relative_to(sweep).as_posix() for p in sweep.rglob("*")}


def test_ray_sweep_writes_what_the_basic_launcher_writes(tmp_path, tiny_model_path):
    (tmp_path / "ray").mkdir()
    (tmp_path / "basic").mkdir()
    ray_sweep, log = _sweep(tmp_path / "ray" / "out", "hydra/launcher=ray", "hydra.launcher.ray.init.num_cpus=2")
    assert "Started a local Ray instance" in log and "sweep done: 4 completed, 0 skipped, 0 failed" in log
    n = os.environ.get("OMP_NUM_THREADS", "1")  # Ray sets a job's to its CPUs (remote.num_cpus: 1) unless set
    assert f"threads: {n} (OMP_NUM_THREADS={n})" in log  # a job's first line, forwarded (and deduplicated) by Ray
    basic, _ = _sweep(tmp_path / "basic" / "out")
    assert _manifest(ray_sweep) == _manifest(basic)
    assert [m[3] for m in _manifest(ray_sweep)] == ["completed"] * 4
    assert _tree(ray_sweep) == _tree(basic)
    for run in ("0-aligned-dvao-s0", "3-aligned-grpo-s1"):  # the first step's rollouts come from the same weights
        a, b = (json.loads(open(s / run / "metrics.jsonl").readline()) for s in (ray_sweep, basic))
        torch.testing.assert_close(a["reward/weighted/mean"], b["reward/weighted/mean"], rtol=1e-6, atol=1e-7)
    csv = _cli("compare", str(ray_sweep), "--format", "csv", cwd=tmp_path)
    assert csv.returncode == 0, csv.stderr
    df = pd.read_csv(io.StringIO(csv.stdout))
    assert sorted(df["method"]) == ["dvao", "grpo"] and set(df["n_runs"]) == {2}
