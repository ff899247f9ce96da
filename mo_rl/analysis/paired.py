"""``mo-rl compare --baseline METHOD``: each method against the baseline, per seed where they share seeds.

Runs that share a seed (and a stratum: the ``--by`` keys other than method and seed, e.g. the task) saw the same
prompts at every step, so the per-seed difference removes the prompt draw's share of the noise:
- paired (>= 2 shared seeds): the mean over shared seeds of (method - baseline), runs of one seed averaged first;
  its interval ``stats.bootstrap_ci`` over the per-seed differences; seeds needed from their sd;
- unpaired (fewer shared seeds): the difference of the two means, ``stats.diff_ci`` (each side resampled on its
  own); seeds needed per side from sqrt(sd_x^2 + sd_y^2);
- verdict: ``better`` / ``worse`` when the interval excludes 0 (flipped for ``LOWER_IS_BETTER``);
- ``p_better``: rliable's P(X > Y) over every pair of runs (X the method, Y the baseline; X < Y for lower-is-better).
``iqm_table``: rliable's IQM of each method's runs pooled over the strata, with a stratified interval, and P(X > Y)
averaged over the strata.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mo_rl.analysis.stats import bootstrap_ci, diff_ci, iqm, iqm_ci, prob_improvement, seeds_needed, verdict

LOWER_IS_BETTER = ("steps_to_threshold",)  # every other compared column: higher is better
STRATUM_SKIP = ("method", "seed", "trainer.seed", "run", "status")  # by keys that are not a stratum


def strata_keys(by: list[str]) -> list[str]:
    """The ``by`` keys that define a stratum (the task, a config value), not a method or a seed."""
    return [k for k in by if k not in STRATUM_SKIP]


def _per_seed(runs: pd.DataFrame, col: str) -> pd.Series:
    """Mean of ``col`` per seed (runs without a seed or a value left out)."""
    vals = pd.to_numeric(runs[col], errors="coerce")
    ok = vals.notna() & runs["seed"].map(lambda s: s is not None and s != "-")
    return vals[ok].groupby(runs["seed"][ok].astype(str)).mean()


def compare_pair(x_runs: pd.DataFrame, y_runs: pd.DataFrame, col: str) -> dict:
    """Method runs ``x_runs`` against baseline runs ``y_runs`` on ``col`` -> one record of the paired table."""
    lower = col in LOWER_IS_BETTER
    x_seed, y_seed = _per_seed(x_runs, col), _per_seed(y_runs, col)
    shared = x_seed.index.intersection(y_seed.index)
    x = pd.to_numeric(x_runs[col], errors="coerce").dropna().to_numpy(dtype=float)
    y = pd.to_numeric(y_runs[col], errors="coerce").dropna().to_numpy(dtype=float)
    lo = hi = sd = math.nan
    if len(shared) >= 2:
        d = (x_seed[shared] - y_seed[shared]).to_numpy(dtype=float)
        mean, n, pairing = float(d.mean()), len(d), "paired"
        lo, hi = (float(v) for v in bootstrap_ci(d))
        sd = float(d.std(ddof=1))
    else:
        mean = float(x.mean() - y.mean()) if len(x) and len(y) else math.nan
        n, pairing = min(len(x), len(y)), f"unpaired ({len(shared)} shared seeds)"
        if len(x) >= 2 and len(y) >= 2:
            lo, hi = diff_ci(x, y)
            sd = math.sqrt(x.var(ddof=1) + y.var(ddof=1))
    said = verdict(lo, hi, lower)
    sign = -1.0 if lower else 1.0
    return {"diff": mean, "diff_lo": lo, "diff_hi": hi, "n": n, "pairing": pairing, "verdict": said,
            "p_better": prob_improvement(sign * x, sign * y),
            "seeds_needed": seeds_needed(mean, sd) if said == "not resolved" else math.nan}


def paired_table(rows: pd.DataFrame, by: list[str], baseline: str, cols: list[str]) -> pd.DataFrame:
    """One record per (stratum, metric, method other than the baseline): the baseline's and the method's means and
    ``compare_pair``'s columns. ``rows``: one per run with the ``by`` keys, ``seed`` and ``cols``."""
    keys, out = strata_keys(by), []
    strata = rows.groupby(keys, sort=True, dropna=False) if keys else [((), rows)]
    for key, grp in strata:
        ident = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        base = grp[grp["method"] == baseline]
        if base.empty:
            continue
        for col in cols:
            for method in sorted(set(grp["method"]) - {baseline}):
                runs = grp[grp["method"] == method]
                if pd.to_numeric(runs[col], errors="coerce").notna().any() and \
                        pd.to_numeric(base[col], errors="coerce").notna().any():
                    out.append({**ident, "metric": col, "method": method, "baseline": _avg(base[col]),
                                "value": _avg(runs[col]), **compare_pair(runs, base, col)})
    return pd.DataFrame(out)


def _avg(values: pd.Series) -> float:
    return float(pd.to_numeric(values, errors="coerce").mean())


def iqm_table(rows: pd.DataFrame, by: list[str], baseline: str | None, cols: list[str]) -> pd.DataFrame:
    """Across strata, per (metric, method with a value in every stratum): rliable's IQM of the pooled runs, its
    stratified 95% interval (each stratum >= 2 runs) and P(X > Y) against ``baseline`` averaged over strata."""
    keys = strata_keys(by)
    strata = [grp for _, grp in rows.groupby(keys, sort=True, dropna=False)] if keys else [rows]
    out = []
    for col in cols:
        for method in sorted(set(rows["method"])):
            samples = [pd.to_numeric(g.loc[g["method"] == method, col], errors="coerce").dropna().to_numpy(float)
                       for g in strata]
            if len(strata) < 2 or not all(len(s) for s in samples):
                continue
            lo, hi = iqm_ci(samples) if all(len(s) >= 2 for s in samples) else (math.nan, math.nan)
            sign = -1.0 if col in LOWER_IS_BETTER else 1.0
            p = [prob_improvement(sign * s, sign * pd.to_numeric(g.loc[g["method"] == baseline, col],
                                                                  errors="coerce").dropna().to_numpy(float))
                 for s, g in zip(samples, strata)] if baseline and method != baseline else []
            out.append({"metric": col, "method": method, "iqm": iqm(np.concatenate(samples)), "iqm_lo": lo,
                        "iqm_hi": hi, "strata": len(strata),
                        "p_better": float(np.mean(p)) if p and all(math.isfinite(v) for v in p) else math.nan})
    return pd.DataFrame(out)
