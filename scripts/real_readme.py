"""The README's "On a real model" tables, printed as markdown from the committed run records (issues 24, 25).

    python scripts/real_readme.py [results/real] [--baseline grpo] [--groups-only]
    python scripts/real_readme.py --directive [roots...]   # "Evaluative and directive feedback" (issue 27)

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


def paired_rows(rows: list[dict], metrics: list[str], baseline: str) -> None:
    print(f"\nPaired against {baseline} (same seeds; diff = mean of method - {baseline} over the shared "
          "seeds [95% interval]; seeds needed: at the observed spread, normal approximation)\n")
    print("| metric | method | n | diff | verdict | P(X>Y) | seeds needed |")
    print("|---|---|---|---|---|---|---|")
    order = {m: i for i, m in enumerate(metrics)}
    for p in sorted(rows, key=lambda p: (order[p["metric"]], p["method"])):
        diff = fmt(p["diff"]) if p["diff_lo"] is None else \
            f"{fmt(p['diff'])} [{fmt(p['diff_lo'])}, {fmt(p['diff_hi'])}]"
        need = p.get("seeds_needed")
        need = "-" if need is None else "> 1000" if need > 1000 else str(int(need))
        print(f"| {p['metric']} | {p['method']} | {p['n']} | {diff} | {p['verdict']} | "
              f"{fmt(p['p_better'], 2)} | {need} |")


def compare(roots: list[str], by: str, *extra: str, missing_ok: bool = False) -> dict:
    """compare's json; ``missing_ok``: a metric no run logged (a directive metric before any directive run) gives
    no groups instead of an error."""
    cmd = [sys.executable, "-m", "mo_rl", "compare", *roots, "--by", by, "--status", "completed", "--format", "json",
           *extra]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode and missing_ok and "has no value in any run" in res.stderr + res.stdout:
        return {"groups": []}
    if res.returncode:
        sys.exit(f"{' '.join(cmd)}: {res.stderr.strip() or res.stdout.strip()}")
    return json.loads(res.stdout)


def main(root: str = "results/real", baseline: str = "grpo", paired: bool = True) -> None:
    data = compare([root], "task,method,method.credit", "--baseline", baseline)
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
            paired_rows(rows, PAIRED[task], baseline)
        print()


DIRECTIVE_COLUMNS = {
    "toolcall": ["final/weighted", "final/tool_json", "final/tool_name", "final/tool_args", "best@1", "best@16",
                 "pass@16"],
    "math": ["final/weighted", "final/math_correct", "final/math_format", "best@1", "best@16", "pass@16",
             "worst@16"],
}
DIRECTIVE_PAIRED = {"toolcall": ["final/weighted", "final/tool_args", "best@1", "best@16", "pass@16"],
                    "math": ["final/weighted", "final/math_correct", "best@1", "best@16", "pass@16"]}
DIRECTIVE_COST = ["perf/step_s", "perf/teacher_s", "directive/hint_rate", "directive/gap_mean", "directive/gap_pos"]


def directive(roots: list[str]) -> None:
    """README "Evaluative and directive feedback": per task the arms (method x directive) with the base, the paired
    tables against each method's directive-off arm, and the cost and teacher diagnostics (means over all steps)."""
    by = "task,method,directive"
    data = {m: compare(roots, by, "--baseline", f"{m}[directive=off]") for m in ("dvao", "vpo")}
    cost = {c: compare(roots, by, "--metric", c, "--last-frac", "1.0", missing_ok=True) for c in DIRECTIVE_COST}
    for task, cols in DIRECTIVE_COLUMNS.items():
        groups = [g for g in data["dvao"]["groups"] if g["task"] == task]
        if not groups:
            continue
        groups.sort(key=lambda g: (g["method"] != "base", g["method"], g.get("directive") != "off",
                                   str(g.get("directive"))))
        print(f"**task={task}** (cells: mean [95% interval]; n = runs (seeds); the base row: interval over the 16 "
              "held-out prompts)\n")
        print("| method | directive | n | " + " | ".join(cols) + " |")
        print("|---" * (len(cols) + 3) + "|")
        for g in groups:
            d = "-" if g["method"] == "base" else g.get("directive")
            print(f"| {g['method']} | {d} | {g['n_runs']} | " + " | ".join(cell(g, c) for c in cols) + " |")
        for m, d in data.items():
            rows = [p for p in d.get("paired") or [] if p["task"] == task and p["metric"] in DIRECTIVE_PAIRED[task]
                    and p["method"].startswith(f"{m}[")]
            if rows:
                paired_rows(rows, DIRECTIVE_PAIRED[task], f"{m}[directive=off]")
        print(f"\nCost and teacher diagnostics on {task} (mean over every step of a run [95% interval over runs])\n")
        print("| method | directive | n | " + " | ".join(DIRECTIVE_COST) + " |")
        print("|---" * (len(DIRECTIVE_COST) + 3) + "|")
        keyed = {c: {(g["method"], g.get("directive")): g for g in cost[c]["groups"] if g["task"] == task}
                 for c in DIRECTIVE_COST}
        for g in groups:
            if g["method"] == "base":
                continue
            k = (g["method"], g.get("directive"))
            print(f"| {k[0]} | {k[1]} | {g['n_runs']} | " +
                  " | ".join(cell(keyed[c].get(k, {}), c) for c in DIRECTIVE_COST) + " |")
        print()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="*", default=None)
    ap.add_argument("--baseline", default="grpo")
    ap.add_argument("--groups-only", action="store_true", help="leave out the paired tables")
    ap.add_argument("--directive", action="store_true",
                    help="the directive-feedback tables instead (default roots: results/real_directive and the real "
                         "table's math dvao and vpo runs, its directive-off arms)")
    a = ap.parse_args()
    if a.directive:
        import glob

        directive(a.root or ["results/real_directive", *sorted(glob.glob("results/real/math-dvao-s*")),
                             *sorted(glob.glob("results/real/math-vpo-s*")), *glob.glob("results/real/base")])
    else:
        main((a.root or ["results/real"])[0], baseline=a.baseline, paired=not a.groups_only)
