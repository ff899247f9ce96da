"""The README's "On a real model" tables, printed as markdown from the committed run records (issues 24, 25).

    python scripts/real_readme.py [results/real] [--baseline grpo] [--groups-only]

Runs `mo-rl compare <root> --by task,method,method.credit --baseline grpo --status completed --format json` and
prints, per task: the groups (base first) with `mean [lo, hi]` and the number of runs, then the paired table
against the baseline (mean paired difference over shared seeds, its 95% interval, verdict, P(X>Y), seeds needed).
Nothing here computes a statistic: every number is compare's, so the README and `mo-rl compare` cannot disagree.
"""

from __future__ import annotations

import json
import subprocess
import sys

COLUMNS = {
    "math": ["final/weighted", "final/math_correct", "final/math_format", "best@1", "best@4", "best@16",
             "best_dirichlet@16", "pass@16", "worst@16"],
    "personas": ["final/weighted", "best@1", "best@16", "best_dirichlet@16", "best@16/persona_brief",
                 "best@16/persona_detailed", "worst@16"],
}
PAIRED = {"math": ["final/weighted", "best@1", "best@16", "best_dirichlet@16", "pass@16", "worst@16"],
          "personas": ["final/weighted", "best@1", "best@16", "best_dirichlet@16", "worst@16"]}


def fmt(x, digits=3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def cell(g: dict, col: str) -> str:
    m, lo, hi = g.get(col), g.get(f"{col}_lo"), g.get(f"{col}_hi")
    if m is None:
        return "-"
    return fmt(m) if lo is None else f"{fmt(m)} [{fmt(lo)}, {fmt(hi)}]"


def label(g: dict) -> str:
    credit = g.get("method.credit")
    return g["method"] + (f" ({credit})" if credit not in (None, "-") else "")


def main(root: str = "results/real", baseline: str = "grpo", paired: bool = True) -> None:
    cmd = [sys.executable, "-m", "mo_rl", "compare", root, "--by", "task,method,method.credit", "--baseline",
           baseline, "--status", "completed", "--format", "json"]
    data = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    for task, cols in COLUMNS.items():
        groups = [g for g in data["groups"] if g["task"] == task]
        if not groups:
            continue
        groups.sort(key=lambda g: (g["method"] != "base", g["method"], str(g.get("method.credit"))))
        print(f"**task={task}** (cells: mean [95% interval]; n = runs (seeds); base and n = 1 rows: interval over "
              "the 16 held-out prompts)\n")
        print("| method | n | " + " | ".join(cols) + " |")
        print("|---" * (len(cols) + 2) + "|")
        for g in groups:
            print(f"| {label(g)} | {g['n_runs']} | " + " | ".join(cell(g, c) for c in cols) + " |")
        rows = [p for p in data.get("paired") or [] if paired and p["task"] == task and p["metric"] in PAIRED[task]]
        if rows:
            print(f"\nPaired against {baseline} (same seeds; diff = mean of method - {baseline} over the shared "
                  "seeds [95% interval]; seeds needed: at the observed spread, normal approximation)\n")
            print("| metric | method | n | diff | verdict | P(X>Y) | seeds needed |")
            print("|---|---|---|---|---|---|---|")
            order = {m: i for i, m in enumerate(PAIRED[task])}
            for p in sorted(rows, key=lambda p: (order[p["metric"]], p["method"])):
                diff = fmt(p["diff"]) if p["diff_lo"] is None else \
                    f"{fmt(p['diff'])} [{fmt(p['diff_lo'])}, {fmt(p['diff_hi'])}]"
                need = "-" if p.get("seeds_needed") is None else str(p["seeds_needed"])
                print(f"| {p['metric']} | {p['method']} | {p['n']} | {diff} | {p['verdict']} | "
                      f"{fmt(p['p_better'], 2)} | {need} |")
        print()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default="results/real")
    ap.add_argument("--baseline", default="grpo")
    ap.add_argument("--groups-only", action="store_true", help="leave out the paired tables")
    a = ap.parse_args()
    main(a.root, baseline=a.baseline, paired=not a.groups_only)
