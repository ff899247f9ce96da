"""Per-rank training-state memory, ``trainer.strategy=ddp`` vs ``fsdp``, 2 gloo ranks on CPU, measured side by side.

Each strategy runs in its own pair of spawned processes: ``setup`` and two real training steps (rollouts, rewards,
update, AdamW), then every rank counts the bytes of the tensors it holds for training: parameters, gradients and
the optimizer state (a DTensor counts its local shard). Those three are what FSDP shards, so they are the number
to compare; the process peak RSS is printed too (it adds the interpreter, torch, activations and the weights FSDP
gathers for the rollout and, one layer at a time, for the update).

    python scripts/bench_fsdp_memory.py                 # tiny (embedded) and ~10M-parameter models, ~2 min
    python scripts/bench_fsdp_memory.py --sizes small
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
STRATEGIES = ("ddp", "fsdp")


def _local_bytes(t: torch.Tensor) -> int:
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def training_bytes(run) -> dict[str, int]:
    """Bytes of this rank's parameters (trainable or not), gradients and optimizer state tensors."""
    params = sum(_local_bytes(p) for p in run.policy.module.parameters())
    grads = sum(_local_bytes(p.grad) for p in run.policy.module.parameters() if p.grad is not None)
    optim = sum(_local_bytes(v) for s in run.opt.state.values() for v in s.values()
                if isinstance(v, torch.Tensor) and v.dim() > 0)  # step counters are scalars
    return {"params": params, "grads": grads, "optim": optim}


def worker(rank: int, port: int, path: str, strategy: str, out: str) -> None:
    import torch.distributed as dist

    from mo_rl.config import compose
    from mo_rl.train.loop import setup, train_step

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        cfg = compose([f"model.path={path}", f"trainer.strategy={strategy}", "trainer.batch_prompts=4",
                       "trainer.group_size=4", "trainer.steps=2", "method=dvao", "rollout.max_new_tokens=8",
                       f"output_dir={tempfile.mkdtemp()}", "run_name=r"])
        run = setup(cfg)
        for step in range(2):
            train_step(run, step)
        row = {"rank": rank, **training_bytes(run),
               "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
               "n_params": sum(p.numel() for p in run.policy.module.parameters())}  # DTensor numel: the global count
        Path(out, f"{strategy}-{rank}.json").write_text(json.dumps(row))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(size: str) -> dict[str, list[dict]]:
    from bench_vs_trl import model_dir

    path, out = str(model_dir(size)), tempfile.mkdtemp()
    for strategy in STRATEGIES:
        torch.multiprocessing.spawn(worker, args=(_free_port(), path, strategy, out), nprocs=2)
    return {s: [json.loads(Path(out, f"{s}-{r}.json").read_text()) for r in (0, 1)] for s in STRATEGIES}


def report(size: str, rows: dict[str, list[dict]]) -> None:
    mib = 2**20
    n = rows["ddp"][0]["n_params"]
    print(f"\n{size}: {n / 1e6:.2f}M parameters, float32, AdamW, 2 gloo ranks (MiB per rank)")
    print(f"{'strategy':8} {'rank':>4} {'params':>8} {'grads':>8} {'optim':>8} {'total':>8} {'peak RSS':>9}")
    totals = {}
    for s in STRATEGIES:
        for r in rows[s]:
            tot = r["params"] + r["grads"] + r["optim"]
            totals.setdefault(s, []).append(tot)
            print(f"{s:8} {r['rank']:>4} {r['params'] / mib:8.2f} {r['grads'] / mib:8.2f} {r['optim'] / mib:8.2f} "
                  f"{tot / mib:8.2f} {r['peak_rss'] / mib:9.1f}")
    ratio = max(totals["fsdp"]) / max(totals["ddp"])
    rss = max(r["peak_rss"] for r in rows["fsdp"]) / max(r["peak_rss"] for r in rows["ddp"])
    print(f"fsdp / ddp, largest rank: params+grads+optimizer {ratio:.3f}, peak RSS {rss:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="tiny,small", help="comma-separated: tiny, small")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for size in a.sizes.split(","):
        report(size, measure(size))


if __name__ == "__main__":
    main()
