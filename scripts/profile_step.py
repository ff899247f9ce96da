"""Where one mo-rl training step spends its time: rollout (generation), rewards, advantages, forward, backward,
optimizer and the rest (diagnostics, logging), median over steps after warm-up.

    python scripts/profile_step.py                       # the tiny bench setting: B=8 x G=8 x 16 new tokens
    python scripts/profile_step.py --model <dir> --tokens 64 --steps 5 model.impl=hf   # any overrides after

The phases are timed by wrapping the functions the step calls (``HFEngine.generate``, ``score_rollouts``,
``advantages.compute_with_diagnostics``, ``Policy.completion_logprobs``, ``Tensor.backward``, ``Optimizer.step``), so the numbers add up
to the step; the wrappers cost a few microseconds each. Same setting as ``bench_vs_trl.py`` (``aligned`` prompts,
grpo, rewards ``match`` and ``first_char``, EOS masked until the token budget), one torch thread by default.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded:tiny", help="model.path (default: the embedded tiny model)")
    ap.add_argument("--tokens", type=int, default=16, help="new tokens per completion (EOS masked until then)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model.impl=hf")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    import mo_rl.train.loop as loop
    import mo_rl.pipeline.rollout_score as rs
    from mo_rl.models.policy import Policy
    from mo_rl.config import compose
    from mo_rl.rollout.hf import HFEngine

    spent: dict[str, float] = defaultdict(float)

    def timed(name, fn):
        def wrapper(*args, **kw):
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                spent[name] += time.perf_counter() - t
        return wrapper

    cfg = compose([f"model.path={a.model}", "task=aligned", "method=grpo", "objectives.names=[match,first_char]",
                   "trainer.batch_prompts=8", "trainer.group_size=8", f"rollout.max_new_tokens={a.tokens}",
                   f"trainer.steps={a.warmup + a.steps}", f"output_dir={tempfile.mkdtemp()}", "run_name=profile",
                   *a.overrides])
    run = loop.setup(cfg)
    run.engine = HFEngine(run.policy, min_new_tokens=a.tokens)
    run.engine.generate = timed("rollout (generation)", run.engine.generate)
    rs.score_rollouts = timed("rewards", rs.score_rollouts)
    loop.advantages.compute_with_diagnostics = timed("advantages", loop.advantages.compute_with_diagnostics)
    Policy.completion_logprobs = timed("forward (log-probs)", Policy.completion_logprobs)
    torch.Tensor.backward = timed("backward", torch.Tensor.backward)
    run.opt.step = timed("optimizer", run.opt.step)

    rows: dict[str, list[float]] = defaultdict(list)
    for step in range(a.warmup + a.steps):
        spent.clear()
        t = time.perf_counter()
        row, samples = loop.train_step(run, step)
        run.writer.log_metrics(row)
        run.writer.log_samples(samples)
        total = time.perf_counter() - t
        if step >= a.warmup:
            for k, v in spent.items():
                rows[k].append(v)
            rows["other (diagnostics, logging, loss math)"].append(total - sum(spent.values()))
            rows["step"].append(total)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"model {a.model}, B=8 x G=8 x {a.tokens} tokens, {a.steps} steps after {a.warmup} warm-up, "
          f"threads {a.threads}, impl {run.cfg.model.impl}")
    print(f"| {'phase':42s} | median ms | share |")
    print(f"|{'-' * 44}|-----------|-------|")
    for k, v in sorted(med.items(), key=lambda kv: -kv[1]):
        if k != "step":
            print(f"| {k:42s} | {v * 1e3:9.2f} | {v / med['step']:5.0%} |")
    print(f"| {'step (sum of medians may differ)':42s} | {med['step'] * 1e3:9.2f} |       |")


if __name__ == "__main__":
    main()
