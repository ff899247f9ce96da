"""Step-0 base rates of the real-model tasks: each objective's mean and its share of zero-spread groups, per task and
sampling temperature, from `mo-rl diagnose` (the initial policy, nothing trained, nothing written).

    python scripts/base_rates.py                                   # model=smollm2, 4 tasks x T in {1.0, 0.7}
    python scripts/base_rates.py --tasks math --temperatures 1.0,0.7,0.5 --prompts 32 --tokens 48

A group whose rewards are all equal gives no gradient, and an objective at 0 in every group cannot be learnt by any
method: this table says, before any training, which objectives a model can move. Prints one markdown table
(docs/tasks.md keeps the measured one).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mo_rl.analysis.diagnose import diagnose  # noqa: E402
from mo_rl.config import compose  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="the model config group's entry")
    ap.add_argument("--tasks", default="math,toolcall,code,personas")
    ap.add_argument("--temperatures", default="1.0,0.7")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64, help="rollout.max_new_tokens")
    a = ap.parse_args()
    temps = [float(t) for t in a.temperatures.split(",")]
    print(f"model={a.model}, {a.prompts} prompts x {a.group} samples, up to {a.tokens} new tokens, hf engine\n")
    print("| task | objective | " + " | ".join(f"T={t}: mean, zero-spread" for t in temps) + " |")
    print("|---|---|" + "---|" * len(temps))
    for task in a.tasks.split(","):
        reports = [diagnose(compose([f"model={a.model}", f"task={task}", f"rollout.max_new_tokens={a.tokens}",
                                     f"rollout.temperature={t}"]), prompts=a.prompts, group=a.group)
                   for t in temps]
        for name in reports[0]["objectives"]:
            cells = [f"{r['objectives'][name]['mean']:.3f}, {r['objectives'][name]['frac_zero_spread']:.0%}"
                     for r in reports]
            print(f"| {task} | {name} | " + " | ".join(cells) + " |", flush=True)
        print(f"<!-- {task}: recommendation " + ", ".join(f"T={t}: {r['recommendation']['regime']}"
                                                         for t, r in zip(temps, reports)) + " -->", flush=True)


if __name__ == "__main__":
    main()
