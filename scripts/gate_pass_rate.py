"""Gate pass rate at the start and the end of runs: from their metrics.jsonl, and by sampling the final checkpoint.

    python scripts/gate_pass_rate.py RUN_OR_SWEEP_DIR... --objective first_char [--threshold 0.5] [--window 10]

Logged: a gated run logs ``gated/pass_rate/<objective>`` every step; a run that has the objective as a plain
weight logs only its mean, ``reward/<objective>/mean``, which is the pass rate only for a 0/1 objective (first_char)
at threshold 0.5 (printed as "-" otherwise). Sampled (the same for every run): the share of completions of the
final checkpoint with ``objective >= threshold``, 32 held-out prompts x 8 samples (``mo-rl eval``'s sampling).
Prints, per run, step 0, the mean of the first and of the last ``window`` logged steps, and the sampled end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mo_rl.analysis.evaluate import sample_points  # noqa: E402
from mo_rl.results.reader import find_runs, read_run  # noqa: E402


def sampled_pass_rate(run_dir: Path, objective: str, threshold: float) -> float:
    r, valid, _, cfg, _ = sample_points(run_dir, 8, 32, 1234)
    k = cfg["objectives"]["resolved"]["names"].index(objective)
    mean = (r[..., k] * valid).sum(-1) / valid.sum(-1).clip(min=1)  # a completion's answer mean
    return float((mean >= threshold).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--objective", required=True)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--window", type=int, default=10)
    args = ap.parse_args()
    print(f"| run | method | seed | logged step 0 | first {args.window} steps | last {args.window} steps | "
          "sampled, final checkpoint |\n|---|---|---|---|---|---|---|")
    for path in find_runs(args.paths):
        run = read_run(path)
        df = run.metrics
        binary = args.threshold == 0.5 and objective_is_binary(args.objective)
        cols = [f"gated/pass_rate/{args.objective}"] + [f"reward/{args.objective}/mean"] * binary
        col = next((c for c in cols if c in df.columns), None)
        logged = ["-"] * 3 if col is None else [f"{v:.3f}" for v in (
            df[col].iloc[0], df[col].iloc[: args.window].mean(), df[col].iloc[-args.window:].mean())]
        end = sampled_pass_rate(path, args.objective, args.threshold)
        print(f"| {path.name} | {run.lookup('method')} | {run.lookup('seed')} | " + " | ".join(logged)
              + f" | {end:.3f} |")


def objective_is_binary(name: str) -> bool:
    return name in ("first_char",)  # the built-in 0/1 objectives

if __name__ == "__main__":
    main()
