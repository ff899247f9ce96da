"""Is a run of these settings completed under the given roots? Prints its directory and exits 0, else exits 1.

    python scripts/completed_run.py ROOT [ROOT...] --task math --method vpo --credit shapley --seed 2 \
        [--directive off|token_advantage|forward_ce]

What `scripts/real_table.sh` and `scripts/real_directive.sh` skip on. ``--credit``: the config's method.credit,
``-`` for a method without one; ``--directive``: ``results.reader.directive_label`` of the run (not checked when
left out).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from mo_rl.results.reader import directive_label


def find(roots: list[str], task: str, method: str, credit: str, seed: str, directive: str | None) -> Path | None:
    for cfg in (p for root in roots for p in sorted(Path(root).glob("**/config.yaml"))):
        if ".hydra" in cfg.parts:
            continue
        try:
            c = yaml.safe_load(cfg.read_text())
            s = json.loads((cfg.parent / "summary.json").read_text())
        except Exception:
            continue
        m = c.get("method") or {}
        if (s.get("status") == "completed" and c["task"]["name"] == task and m.get("name") == method
                and str(m.get("credit", "-")) == credit and str(c["trainer"]["seed"]) == seed
                and (directive is None or directive_label(c.get("directive")) == directive)):
            return cfg.parent
    return None


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="+")
    for key in ("task", "method", "credit", "seed"):
        ap.add_argument(f"--{key}", required=True)
    ap.add_argument("--directive", default=None)
    a = ap.parse_args()
    found = find(a.roots, a.task, a.method, a.credit, a.seed, a.directive)
    if found is None:
        sys.exit(1)
    print(found)
