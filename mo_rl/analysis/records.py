"""What ``mo-rl compare`` reads besides metrics.jsonl: run directories (base ones too), eval.json's columns and
per-prompt values, the eval settings, and the tail mean of a metric (a run's final value).

eval.json's names changed: ``best_at_k_weighted`` (the user's weights; older files: ``best_at_k_fixed``) and
``best_at_k_dirichlet`` (random Dirichlet(1) weightings; older: ``best_at_k_sampled``); older files read through
the fallbacks in ``EVAL_FIELDS``. Per-prompt values sit in each result's ``per_prompt``. ``mo-rl eval --base``
writes the untrained model as a run-like directory that may lack metrics.jsonl: ``load_runs`` reads it too.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd

from mo_rl.errors import MoRLError
from mo_rl.results.reader import Run, _read_config, _read_json, find_runs, read_run

# column prefix -> eval.json keys, the current name first, then the name older files wrote
EVAL_FIELDS = {"best": ("best_at_k_weighted", "best_at_k_fixed"),
               "best_dirichlet": ("best_at_k_dirichlet", "best_at_k_sampled"),
               "pass": ("pass_at_k",), "hv": ("hypervolume",), "distinct_2": ("distinct_2",)}


def to_float(v) -> float:
    """A JSON number as float; null, text or a bool as NaN."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def first(d: dict, keys: tuple[str, ...]):
    """The value of the first of ``keys`` that ``d`` has (None if none)."""
    return next((d[k] for k in keys if k in d), None)


def eval_prompts(ev: dict) -> dict[str, list]:
    """Each result's ``per_prompt`` -> {column: [value per prompt, None where absent]} (the same columns as
    ``compare._eval_columns``); {} for an eval.json without per-prompt values."""
    out, objectives = {}, ev.get("objectives") or []
    for res in ev.get("results") or []:
        per = res.get("per_prompt") if isinstance(res, dict) else None
        if not isinstance(per, dict) or "k" not in res:
            continue
        k = res["k"]
        out.update({f"{short}@{k}": v for short, keys in EVAL_FIELDS.items()
                    if isinstance(v := first(per, keys), list)})
        # not worst@k: it is the lowest of the per-objective means, not a mean over prompts (the per-prompt
        # minimum's mean is lower), so a prompt bootstrap of it would not be centred on it; its interval is over runs
        rows = per.get("best_at_k_per_objective")
        if isinstance(rows, list) and objectives:
            for i, o in enumerate(objectives):
                out[f"best@{k}/{o}"] = [r[i] if isinstance(r, list) and len(r) == len(objectives) else None
                                        for r in rows]
    return {col: [to_float(v) for v in vals] for col, vals in out.items()}


def objectives_of(run: Run) -> list[str]:
    """The run's objectives; a base run's from its eval.json when its config and summary name none."""
    return run.objectives or [str(o) for o in run.eval.get("objectives") or []]


def base_dirs(path: Path) -> list[Path]:
    """Directories under ``path`` with config.yaml and eval.json but no metrics.jsonl: ``mo-rl eval --base``."""
    if not path.is_dir():
        return []
    return [e.parent for e in sorted(path.rglob("eval.json")) if (e.parent / "config.yaml").is_file()
            and not (e.parent / "metrics.jsonl").is_file()
            and not any(part.startswith(".") for part in e.parent.relative_to(path).parts)]


def load_runs(paths: list[str]) -> list[Run]:
    """Read every run under ``paths`` (base directories without metrics.jsonl too), warning on stderr about
    skipped corrupt rows."""
    found: dict[Path, bool] = {}
    for raw in paths:
        bases = base_dirs(Path(raw))
        try:
            found.update(dict.fromkeys(find_runs([raw]), True))
        except MoRLError:
            if not bases:
                raise
        found.update(dict.fromkeys(bases, False))
    runs = []
    for p, logged in sorted(found.items()):
        try:
            runs.append(read_run(p) if logged else Run(path=p, config=_read_config(p / "config.yaml"),
                                                       metrics=pd.DataFrame(), summary=_read_json(p / "summary.json"),
                                                       eval=_read_json(p / "eval.json")))
        except MoRLError as e:  # a damaged config.yaml: that run is skipped, the others are compared
            print(f"warning: skipped {p}: {e}", file=sys.stderr)
    if not runs:
        raise MoRLError("no run left to read: every run found was skipped (see the warnings above)")
    for run in runs:
        if run.n_corrupt_rows:
            print(f"skipped {run.n_corrupt_rows} corrupt rows in {run.path}", file=sys.stderr)
    return runs


def available_metrics(runs: list[Run]) -> list[str]:
    """Every metrics.jsonl column any run logged, sorted (for the unknown-metric message)."""
    return sorted({c for r in runs for c in r.metrics.columns} - {"step"})


def eval_settings(runs: list[Run]) -> str:
    """How the eval columns were measured, from the eval.json files ("a/b" where runs differ)."""
    evs = [r.eval for r in runs if r.eval.get("results")]
    if not evs:
        return ""

    def short(v):
        return [short(x) for x in v] if isinstance(v, list) else float(f"{v:.3g}") if isinstance(v, float) else v

    def vals(get) -> str:
        return "/".join(dict.fromkeys(json.dumps(short(get(e))) for e in evs if get(e) is not None)) or "?"

    ks = vals(lambda e: ",".join(str(r.get("k")) for r in e["results"] if isinstance(r, dict))).replace('"', "")
    return (f"eval: {len(evs)} eval.json, checkpoint {vals(lambda e: e.get('checkpoint'))}, "
            f"{vals(lambda e: e.get('prompts'))} held-out prompts, seed {vals(lambda e: e.get('seed'))}, "
            f"{vals(lambda e: e.get('num_weightings'))} Dirichlet weightings, k {ks}, weights "
            f"{vals(lambda e: e.get('weights'))}, hv reference {vals(lambda e: e.get('hv_reference'))}"
            ).replace('"', "")


def tail_mean(df: pd.DataFrame, col: str, last_frac: float) -> float:
    """Mean of ``col`` over the last ``last_frac`` of the rows (at least one row), NaN where absent."""
    if col not in df.columns or len(df) == 0:
        return math.nan
    n = max(1, math.ceil(last_frac * len(df)))
    return float(pd.to_numeric(df[col].iloc[-n:], errors="coerce").mean())


RUN_STATUSES = ("completed", "running", "failed", "interrupted", "diverged", "dead", "unknown")  # Run.status


def with_status(runs: list, status: list[str] | None, paths) -> list:
    """The runs whose status is in ``status`` (None: all); MoRLError naming a bad value, or what there is when
    none is left."""
    if not status:
        return runs
    bad = [s for s in status if s not in RUN_STATUSES]
    if bad:
        raise MoRLError(f"unknown --status {bad[0]!r}; allowed: {', '.join(RUN_STATUSES)}")
    kept = [r for r in runs if r.status in status]
    if not kept:
        found = pd.Series([r.status for r in runs]).value_counts()
        raise MoRLError(f"no run with status {'/'.join(status)} under {', '.join(map(str, paths))} (found: "
                        f"{', '.join(f'{n} {k}' for k, n in found.items())})")
    return kept
