"""Intra-op threads: how many torch uses in a training process, and one line at the start of a run saying so.

Several mo-rl processes on one machine (a sweep's jobs run side by side, hand-started lanes, torchrun ranks) each
taking one thread per core oversubscribe it: every process's threads wait on the others'. ``trainer.threads=N``
sets the count; 0 (auto) takes ``OMP_NUM_THREADS`` when set, else torch's default (one per core). Launchers set
that variable per job: Ray to the CPUs the job was given (``hydra.launcher.ray.remote.num_cpus``, 1 by default, so
a machine of C cores runs C jobs of 1 thread each), torchrun to 1 per rank when it starts several. It is applied
here even if torch was imported before the launcher set it (a reused worker process).
"""

from __future__ import annotations

import os

import torch


def choose(threads: int, env=None) -> tuple[int, str]:
    """-> (intra-op threads for ``trainer.threads=threads``, where the number comes from)."""
    env = os.environ if env is None else env
    if threads > 0:
        return threads, f"trainer.threads={threads}"
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp), f"OMP_NUM_THREADS={omp}"
    return torch.get_num_threads(), "torch's default, one per core; trainer.threads=N to change"


def set_threads(threads: int) -> str:
    """Set torch's intra-op threads for ``trainer.threads`` (0 = auto, see the module docstring). -> the line
    ``mo-rl train`` prints, e.g. ``threads: 1 (OMP_NUM_THREADS=1)``."""
    n, why = choose(threads)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return f"threads: {n} ({why})"
