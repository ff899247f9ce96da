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
    """The ``by`` keys that define a stratum (the task, a config value), not a method, a method option
    (``method.credit``, ``directive``: part of which method it is) or a seed."""
    return [k for k in by if k not in STRATUM_SKIP and not _is_option(k)]


def _is_option(key: str) -> bool:
    """A ``by`` key that names a variant of the method: ``method.*``, and ``directive`` (directive feedback on or
    off, and which loss), so that ``dvao[directive=forward_ce]`` is compared with ``dvao[directive=off]``."""
    return key.startswith("method.") or key == "directive"


def method_labels(rows: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Rows whose ``method`` names the method with its options from ``by`` (``method.*``, ``directive``), e.g.
    ``vpo[credit=loo]``, ``dvao[directive=forward_ce]``
    (an option the run's config lacks, such as grpo's credit, adds nothing): estimator variants are compared
    as methods of their own."""
    opts = [k for k in by if _is_option(k)]
    if not opts:
        return rows

    def label(rec) -> str:
        given = [f"{k.removeprefix('method.')}={rec[k]}" for k in opts if rec[k] not in (None, "-", "") and rec[k] == rec[k]]
        return f"{rec['method']}[{','.join(given)}]" if given else str(rec["method"])

    out = rows.copy()
    out["method"] = [label(rec) for _, rec in rows.iterrows()]
    return out


def _per_seed(runs: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Mean of each column per seed (runs without a seed left out): seeds x cols."""
    has_seed = runs["seed"].map(lambda s: s is not None and s != "-").to_numpy(dtype=bool)
    vals = runs[cols].apply(pd.to_numeric, errors="coerce")[has_seed]
    return vals.groupby(runs["seed"][has_seed].astype(str).to_numpy()).mean()


def compare_method(x_runs: pd.DataFrame, y_runs: pd.DataFrame, cols: list[str]) -> list[dict]:
    """Method runs ``x_runs`` against baseline runs ``y_runs`` -> one record per column of ``cols``: diff, its
    interval, n, pairing, verdict, p_better, seeds_needed. The paired columns with the same seeds share one
    bootstrap call."""
    x_seed, y_seed = _per_seed(x_runs, cols), _per_seed(y_runs, cols)
    shared = x_seed.index.intersection(y_seed.index)
    diffs = (x_seed.loc[shared] - y_seed.loc[shared]).to_numpy(dtype=float)  # (shared seeds, cols)
    recs, batch = [], {}
    for j, col in enumerate(cols):
        x = pd.to_numeric(x_runs[col], errors="coerce").dropna().to_numpy(dtype=float)
        y = pd.to_numeric(y_runs[col], errors="coerce").dropna().to_numpy(dtype=float)
        d = diffs[:, j][np.isfinite(diffs[:, j])]
        sign = -1.0 if col in LOWER_IS_BETTER else 1.0
        rec = {"diff": math.nan, "diff_lo": math.nan, "diff_hi": math.nan, "sd": math.nan,
               "p_better": prob_improvement(sign * x, sign * y)}
        if len(d) >= 2:
            rec.update(diff=float(d.mean()), n=len(d), pairing="paired", sd=float(d.std(ddof=1)))
            ok = np.isfinite(diffs[:, j])
            batch.setdefault(ok.tobytes(), (ok, []))[1].append(j)
        else:
            rec.update(diff=float(x.mean() - y.mean()) if len(x) and len(y) else math.nan, n=min(len(x), len(y)),
                       pairing=f"unpaired ({len(d)} shared)")
            if len(x) >= 2 and len(y) >= 2:
                rec["diff_lo"], rec["diff_hi"] = diff_ci(x, y)
                rec["sd"] = math.sqrt(x.var(ddof=1) + y.var(ddof=1))
        recs.append(rec)
    for ok, js in batch.values():
        lo, hi = bootstrap_ci(diffs[ok][:, js].T)
        for j, a, b in zip(js, lo, hi):
            recs[j].update(diff_lo=float(a), diff_hi=float(b))
    for col, rec in zip(cols, recs):
        rec["verdict"] = verdict(rec["diff_lo"], rec["diff_hi"], col in LOWER_IS_BETTER)
        sd = rec.pop("sd")
        rec["seeds_needed"] = seeds_needed(rec["diff"], sd) if rec["verdict"] == "not resolved" else math.nan
    return recs


def paired_table(rows: pd.DataFrame, by: list[str], baseline: str, cols: list[str]) -> pd.DataFrame:
    """One record per (stratum, metric, method other than the baseline): the baseline's and the method's means and
    ``compare_method``'s columns. ``rows``: one per run with the ``by`` keys, ``seed`` and ``cols``."""
    keys, out = strata_keys(by), []
    strata = rows.groupby(keys, sort=True, dropna=False) if keys else [((), rows)]
    for key, grp in strata:
        ident = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        base = grp[grp["method"] == baseline]
        if base.empty:
            continue
        found = []
        for method in sorted(set(grp["method"]) - {baseline}):
            runs = grp[grp["method"] == method]
            have = [c for c in cols if pd.to_numeric(runs[c], errors="coerce").notna().any()
                    and pd.to_numeric(base[c], errors="coerce").notna().any()]
            found += [{**ident, "metric": c, "method": method, "baseline": _avg(base[c]), "value": _avg(runs[c]),
                       **rec} for c, rec in zip(have, compare_method(runs, base, have))]
        out += sorted(found, key=lambda r: cols.index(r["metric"]))  # stable: methods stay sorted per metric
    return pd.DataFrame(out)


def _avg(values: pd.Series) -> float:
    return float(pd.to_numeric(values, errors="coerce").mean())


def iqm_table(rows: pd.DataFrame, by: list[str], baseline: str | None, cols: list[str]) -> pd.DataFrame:
    """Across strata, per (metric, method with a value in every stratum): rliable's IQM of the pooled runs, its
    stratified 95% interval (each stratum >= 2 runs) and P(X > Y) against ``baseline`` averaged over strata."""
    keys = strata_keys(by)
    strata = [grp for _, grp in rows.groupby(keys, sort=True, dropna=False)] if keys else [rows]
    if len(strata) < 2:
        return pd.DataFrame()
    values = [{m: g.loc[g["method"] == m, cols].to_numpy(dtype=float) for m in set(g["method"])} for g in strata]
    out = []
    for method in sorted(set(rows["method"])):
        if not all(method in v for v in values):
            continue
        mats = [v[method] for v in values]  # per stratum (runs, cols)
        full = [j for j in range(len(cols)) if all(len(m) >= 2 and np.isfinite(m[:, j]).all() for m in mats)]
        cis = dict(zip(full, zip(*iqm_ci([m[:, full].T for m in mats])))) if full else {}  # one call, same runs
        for j, col in enumerate(cols):
            samples = [m[:, j][np.isfinite(m[:, j])] for m in mats]
            if not all(len(s) for s in samples):
                continue
            lo, hi = cis.get(j) or (iqm_ci(samples) if all(len(s) >= 2 for s in samples) else (math.nan, math.nan))
            sign = -1.0 if col in LOWER_IS_BETTER else 1.0
            base = [v.get(baseline, np.zeros((0, len(cols))))[:, j] for v in values]
            p = [prob_improvement(sign * s, sign * b[np.isfinite(b)]) for s, b in zip(samples, base)] \
                if baseline and method != baseline else []
            out.append({"metric": col, "method": method, "iqm": iqm(np.concatenate(samples)), "iqm_lo": float(lo),
                        "iqm_hi": float(hi), "strata": len(strata),
                        "p_better": float(np.mean(p)) if p and all(math.isfinite(v) for v in p) else math.nan})
    return pd.DataFrame(sorted(out, key=lambda r: cols.index(r["metric"])))
