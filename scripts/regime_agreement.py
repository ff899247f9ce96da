"""Hold `mo-rl diagnose`'s verdicts against the measured winners of the regime map, cell by cell and per measure.

    python scripts/regime_agreement.py [results/regime_map] [--write-table] [--out table.md] [--cache diag.json]

Reads every run under the paths that has ``config.yaml`` and ``eval.json`` (``task=regime``; eval.json in either
format: ``best_at_k_sampled``/``best_at_k_fixed`` or ``best_at_k_dirichlet``/``best_at_k_weighted``). Per
(rho, noise) cell and measure it takes each method's mean, std and n over seeds:
- ``weighted``: the single-sample weighted reward (eval at k = 1, the run's weights);
- ``best@k``: best of k under the run's own weights (eval's best@k, what a user with those weights gets);
  ``best_dirichlet@k``: best of k under random Dirichlet(1) preferences (vpo's training objective);
  ``worst@k``: the worst-off objective's best of k;
  ``obj@k``: regime_a's best of k (the evidence for ``pass@K:OBJ``), for every k the evals share.
The winner has the best mean. A cell is tied for the regime where vpo and the best scalarizing method are within
two standard errors (seed noise), for the method where the two best methods are; tied cells are left out of that
rate. ``--write-table`` writes these numbers, with each cell's diagnose structure at the initial policy
(seed 0), to ``mo_rl/analysis/regime_table.json``, the table diagnose's verdicts cite.
Agreement, per measure, over the non-tied cells: the regime is right when the verdict says spread exactly where vpo
won; the method when it names the winner. The verdict for a cell is made with that cell left out of the table
(leave-one-cell-out: the map's own winner is not looked up), and also in-sample for comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

from mo_rl.analysis.diagnose import SPREAD, TABLE, _close, diagnose, parse_measure, verdict  # noqa: E402
from mo_rl.config import compose  # noqa: E402

MEASURES = ["weighted", "best@4", "best@16", "best_dirichlet@4", "best_dirichlet@16", "worst@4", "worst@16"]


def _get(res: dict, *keys):
    """The first of ``keys`` that ``res`` has (eval.json's old and new names)."""
    for k in keys:
        if res.get(k) is not None:
            return float(res[k])
    return None


def run_values(run: Path) -> tuple[tuple[float, float], str, dict[str, float]] | None:
    """((rho, noise), method, {measure: value}) of one run, None if it is not a completed, evaluated regime run."""
    if not (run / "config.yaml").is_file() or not (run / "eval.json").is_file():
        return None
    cfg = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
    if cfg["task"]["name"] != "regime":
        return None
    ev = json.loads((run / "eval.json").read_text())
    names = ev.get("objectives") or cfg["objectives"]["resolved"]["names"]
    out = {}
    for res in ev["results"]:
        k = int(res["k"])
        if k == 1:
            out["weighted"] = _get(res, "best_at_k_weighted", "best_at_k_fixed")
        out[f"best@{k}"] = _get(res, "best_at_k_weighted", "best_at_k_fixed")  # the user's weights, eval's best@k
        out[f"best_dirichlet@{k}"] = _get(res, "best_at_k_dirichlet", "best_at_k_sampled")  # vpo's own objective
        out[f"worst@{k}"] = _get(res, "worst_off_at_k")
        if res.get("best_at_k_per_objective"):
            out[f"obj@{k}"] = float(res["best_at_k_per_objective"][names.index("regime_a")])
    opts = cfg["task"]["options"]
    return (float(opts["rho"]), float(opts["noise"])), cfg["method"]["name"], out


def cells_of(paths: list[str]) -> tuple[dict, int, set]:
    """{(rho, noise): {measure: {method: [mean, std, n]}}}, the number of runs read, the ks seen."""
    raw: dict = {}
    n_runs, ks = 0, set()
    for p in paths:
        for cfg in sorted(Path(p).rglob("config.yaml")):
            got = run_values(cfg.parent)
            if got is None:
                continue
            cell, method, vals = got
            n_runs += 1
            for m, v in vals.items():
                if v is not None:
                    raw.setdefault(cell, {}).setdefault(m, {}).setdefault(method, []).append(v)
                    if "@" in m:
                        ks.add(int(m.split("@")[1]))
    cells = {}
    for cell, per in raw.items():
        cells[cell] = {}
        for m, by in per.items():
            stats = {}
            for method, v in sorted(by.items()):
                mu = sum(v) / len(v)
                sd = math.sqrt(sum((x - mu) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
                stats[method] = [round(mu, 6), round(sd, 6), len(v)]
            order = sorted(stats, key=lambda k: -stats[k][0])
            tied = len(order) > 1 and _close(stats[order[0]], stats[order[1]])
            other = next((k for k in order if (k in SPREAD) != (order[0] in SPREAD)), None)
            tied_regime = other is not None and _close(stats[order[0]], stats[other])
            cells[cell][m] = {"methods": stats, "winner": order[0], "tied": tied, "tied_regime": tied_regime}
    return cells, n_runs, ks


def structure(rho: float, noise: float, prompts: int, cache: dict) -> dict:
    """diagnose's recommendation for the cell's config at the initial policy (seed 0), cached by cell."""
    key = f"{rho:g},{noise:g},{prompts}"
    if key not in cache:
        rep = diagnose(compose(["task=regime", f"task.options.rho={rho}", f"task.options.noise={noise}"]),
                       prompts=prompts, measures=["weighted"], table={"ks": [4], "cells": []})
        rec = rep["recommendation"]
        cache[key] = {k: rec[k] for k in ("regime", "features", "amplified_noise", "gate_candidates", "labels")}
    return cache[key]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", default=[str(ROOT / "results" / "regime_map")])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--write-table", action="store_true", help=f"write {TABLE.relative_to(ROOT)}")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    ap.add_argument("--cache", default=None, help="a JSON file keeping each cell's diagnose structure")
    args = ap.parse_args()
    cells, n_runs, ks = cells_of(args.paths)
    if not cells:
        sys.exit(f"error: no evaluated task=regime runs under {', '.join(args.paths)}")
    cache = json.loads(Path(args.cache).read_text()) if args.cache and Path(args.cache).is_file() else {}
    recs = {cell: structure(*cell, args.prompts, cache) for cell in sorted(cells)}
    if args.cache:
        Path(args.cache).write_text(json.dumps(cache, indent=1))
    seeds = sorted({n for c in cells.values() for m in c.values() for s in m["methods"].values() for n in [s[2]]})
    table = {"source": f"results/regime_map: {n_runs} runs, {len(cells)} cells, {min(seeds)}-{max(seeds)} seeds "
                       f"per method and cell (scripts/regime_agreement.py --write-table)",
             "ks": sorted(ks),
             "cells": [{"rho": rho, "noise": noise,
                        "diagnose": {"regime": recs[(rho, noise)]["regime"], **recs[(rho, noise)]["features"]},
                        "measures": cells[(rho, noise)]} for rho, noise in sorted(cells)]}
    if args.write_table:
        TABLE.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    measures = [m for m in MEASURES if any(m in c for c in cells.values())]
    head = ["rho", "noise", "diagnose", "trade-off", "noise share", *measures]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    hits = {m: {"loo": [0, 0], "in": [0, 0], "n": [0, 0]} for m in measures}
    for rho, noise in sorted(cells):
        rec = {**recs[(rho, noise)], "verdicts": []}
        cols = []
        for m in measures:
            ev = cells[(rho, noise)].get(m)
            if ev is None:
                cols.append("-")
                continue
            win = ev["winner"]
            loo = verdict(rec, parse_measure(m), table, exclude=(rho, noise))
            ins = verdict(rec, parse_measure(m), table)
            for slot, tied, right in ((0, ev["tied_regime"], lambda v: (v["method"] in SPREAD) == (win in SPREAD)),
                                      (1, ev["tied"], lambda v: v["method"] == win)):
                if not tied:
                    hits[m]["n"][slot] += 1
                    hits[m]["loo"][slot] += right(loo)
                    hits[m]["in"][slot] += right(ins)
            mark = ("✓" if loo["method"] == win else "~" if (loo["method"] in SPREAD) == (win in SPREAD) else "✗")
            tie = "tie" if ev["tied_regime"] else "method tie" if ev["tied"] else ""
            cols.append(f"{win} {ev['methods'][win][0]:.3f}{' (' + tie + ')' if tie else ''}; said {loo['method']}"
                        + ("" if ev["tied_regime"] else " " + mark))
        f = recs[(rho, noise)]["features"]
        lines.append(f"| {rho:g} | {noise:g} | {recs[(rho, noise)]['regime']} | {f['tradeoff']:+.2f} | "
                     f"{f['noise']:.2f} | " + " | ".join(cols) + " |")
    summary = []
    for m, h in hits.items():
        def pct(a, n):
            return f"{a}/{n} ({a / max(n, 1):.0%})"
        (nr, nm), (lr, lm), (ir, im) = h["n"], h["loo"], h["in"]
        summary.append(f"{m}: regime right in {pct(lr, nr)} cells where it is not tied, method in {pct(lm, nm)} "
                       f"where the winner is not tied (leave-one-cell-out; in-sample {pct(ir, nr)} and "
                       f"{pct(im, nm)}); {len(cells) - nr} and {len(cells) - nm} tied cell(s) left out")
    text = (f"{table['source']}\n\n" + "\n".join(lines) + "\n\nwinner, its mean over seeds; (tie): vpo and the best "
            "scalarizing method within two standard errors, (method tie): the two best within them; said: diagnose's "
            "verdict with the cell left out of the table; ✓ method right, ~ regime right with another method, "
            "✗ regime wrong\n\n" + "\n".join(summary) + "\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
