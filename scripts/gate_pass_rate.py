"""Gate pass rate at the start and the end of runs, read from their metrics.jsonl.

    python scripts/gate_pass_rate.py RUN_OR_SWEEP_DIR... --objective first_char [--window 10]

A gated run logs ``gated/pass_rate/<objective>``; a run that has the objective as a plain weight logs its mean,
``reward/<objective>/mean``, which is the pass rate when the objective is 0/1 (first_char is) at threshold 0.5.
Prints, per run, step 0, the mean of the first and of the last ``window`` steps, and whether the end beats step 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mo_rl.results.reader import find_runs, read_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--objective", required=True)
    ap.add_argument("--window", type=int, default=10)
    args = ap.parse_args()
    print(f"| run | method | seed | pass rate step 0 | first {args.window} steps | last {args.window} steps | "
          "end > step 0 |\n|---|---|---|---|---|---|---|")
    for path in find_runs(args.paths):
        run = read_run(path)
        df = run.metrics
        col = next((c for c in (f"gated/pass_rate/{args.objective}", f"reward/{args.objective}/mean")
                    if c in df.columns), None)
        if col is None:
            print(f"| {path.name} | {run.lookup('method')} | - | no {args.objective} column | | | |")
            continue
        s = df[col].astype(float)
        first, last = s.iloc[: args.window].mean(), s.iloc[-args.window:].mean()
        print(f"| {path.name} | {run.lookup('method')} | {run.lookup('seed')} | {s.iloc[0]:.3f} | {first:.3f} | "
              f"{last:.3f} | {'yes' if last > s.iloc[0] else 'no'} |")


if __name__ == "__main__":
    main()
