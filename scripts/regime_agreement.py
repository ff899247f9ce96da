"""Hold `mo-rl diagnose`'s advice against the measured winners of a regime-map sweep, cell by cell.

    python scripts/regime_agreement.py results/regime_map [--measures final/weighted,best@8] [--out table.md]

For every (rho, noise) cell of the sweep's ``task=regime`` runs: the winner of each measure (the method with the best
mean over seeds, from `mo-rl compare`'s table, so from the run directories alone), and diagnose's recommendation
for that cell's config (the initial policy, seed 0: what a user would run before training). Two agreement rates:
- regime: ``spread`` is right when vpo wins, ``balance`` when a scalarizing method (grpo, gdpo, dvao) wins;
- method: the recommended method itself (vpo for spread, dvao for balance) is the winner.
A cell whose two best methods are within ``plots.TIE`` (e.g. a weighted reward constant by design) is a tie and
is left out of both rates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from mo_rl.analysis.compare import compare_runs  # noqa: E402
from mo_rl.analysis.diagnose import diagnose  # noqa: E402
from mo_rl.analysis.plots import winners  # noqa: E402
from mo_rl.config import compose  # noqa: E402

KEYS = ["task.options.rho", "task.options.noise"]
SPREAD = {"vpo"}


def cell_winners(paths: list[str], measures: list[str]) -> dict[tuple[float, float], dict[str, tuple[str, float]]]:
    """{(rho, noise): {measure: (winning method or "tie", its mean)}} from the compare table of the runs."""
    groups = pd.DataFrame(json.loads(compare_runs(paths, by=[*KEYS, "method"], fmt="json"))["groups"])
    out: dict = {}
    for m in measures:
        for (noise, rho), rec in winners(groups, KEYS[0], KEYS[1], m).iterrows():
            out.setdefault((float(rho), float(noise)), {})[m] = (rec["winner"], rec["best"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--measures", default="final/weighted,best@8")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    ap.add_argument("--cache", default=None, help="a JSON file keeping each cell's diagnose report (reused if there)")
    args = ap.parse_args()
    measures = args.measures.split(",")
    cells = cell_winners(args.paths, measures)
    cache = json.loads(Path(args.cache).read_text()) if args.cache and Path(args.cache).is_file() else {}
    head = ["rho", "noise", "diagnose", "corr", "noise share b", *[f"winner {m}" for m in measures]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    hits = {m: [0, 0, 0] for m in measures}  # regime hits, method hits, ties
    for (rho, noise), win in sorted(cells.items()):
        key = f"{rho:g},{noise:g},{args.prompts}"
        if key not in cache:
            cache[key] = diagnose(compose(["task=regime", f"task.options.rho={rho}", f"task.options.noise={noise}"]),
                                  prompts=args.prompts)
            if args.cache:
                Path(args.cache).write_text(json.dumps(cache, indent=1))
        rep = cache[key]
        rec = rep["recommendation"]
        cols = []
        for m in measures:
            method, value = win.get(m, ("tie", float("nan")))
            if method == "tie":
                hits[m][2] += 1
                cols.append(f"tie {value:.3f}")
                continue
            regime_ok = (method in SPREAD) == (rec["regime"] == "spread")
            hits[m][0] += regime_ok
            hits[m][1] += method == rec["method"]
            cols.append(f"{method} {value:.3f} {'✓' if regime_ok else '✗'}")
        share = rep["objectives"]["regime_b"]["noise_share"]
        lines.append(f"| {rho:g} | {noise:g} | {rec['regime']} ({rec['method']}) | {rep['corr'][0][1]:+.2f} | "
                     f"{share:.2f} | " + " | ".join(cols) + " |")
    summary = []
    for m, (ok, exact, ties) in hits.items():
        n = len(cells) - ties
        summary.append(f"{m}: regime right in {ok}/{n} cells ({ok / max(n, 1):.0%}), recommended method = winner "
                       f"in {exact}/{n} ({exact / max(n, 1):.0%})"
                       + (f"; {ties} tied cell(s) left out" if ties else ""))
    text = "\n".join(lines) + "\n\n" + "\n".join(summary) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
