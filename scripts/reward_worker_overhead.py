"""Scoring one step of the embedded default (task aligned: 8 prompts x 8 rollouts, its four objectives) with the
rewards in-process (a thread per call, what built-in rewards get) and in worker processes (what ``module:function``
rewards get under ``objectives.isolation=auto``), side by side in one process, next to the default's step time.
Run: PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/reward_worker_overhead.py
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time

from mo_rl.rewards.registry import get_reward
from mo_rl.rewards.score import repeat_rows, score
from mo_rl.tasks.base import make_task


def per_call(objectives, prompts, completions, columns, n: int) -> float:
    """Median seconds of one ``score`` call (all objectives) over ``n`` calls, after two warm-up calls."""
    times = []
    for i in range(n + 2):
        t = time.perf_counter()
        score(objectives, prompts, completions, columns, step=i, timeout_s=300.0)
        times.append(time.perf_counter() - t)
    return statistics.median(times[2:])


def step_time() -> float:
    """Median perf/step_s of a 4-step default run (the model, the engine and the update included)."""
    import json

    from mo_rl.config import compose
    from mo_rl.train.loop import run_train

    with tempfile.TemporaryDirectory() as tmp:
        path = run_train(compose([f"output_dir={tmp}", "run_name=r", "trainer.steps=4", "trainer.device=cpu"]))
        return statistics.median(json.loads(line)["perf/step_s"] for line in open(path / "metrics.jsonl"))


if __name__ == "__main__":
    task, rng = make_task("aligned"), random.Random(0)
    rows = task.sample(rng, 8, "train")
    prompts, columns = repeat_rows(rows, 8)
    completions = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(12)) for _ in prompts]
    thread = per_call([(n, get_reward(n)) for n in task.objectives], prompts, completions, columns, 50)
    worker = per_call([(n, get_reward(n, "process")) for n in task.objectives], prompts, completions, columns, 50)
    step = step_time()
    print(f"score() of one default step ({len(completions)} completions x {len(task.objectives)} objectives): "
          f"in-process {thread * 1e3:.2f} ms, worker processes {worker * 1e3:.2f} ms, ratio {worker / thread:.1f}x; "
          f"default step {step * 1e3:.0f} ms: the workers add {(worker - thread) / step * 100:.1f}% of a step")
