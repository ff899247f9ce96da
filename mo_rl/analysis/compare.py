"""``mo-rl compare``: one row per run directory on disk, aggregated over seeds into "mean [lo, hi]" tables.

Table and markdown cells read "mean [lo, hi]": the mean over the group's n runs (the ``n`` column) and its 95%
interval (``stats.py``), "(m)" appended when only m of them have a value; one run shows its value alone. csv and
json carry ``col`` (mean), ``col_std`` (sample std, ddof=1; 0 for one run), ``col_lo``, ``col_hi`` and ``col_n``.

Intervals: a percentile bootstrap over runs (``scipy.stats.bootstrap``, 9999 resamples, seed 0) for every column
of a group with n >= 2 runs; for eval columns whose eval.json has per-prompt values a two-level bootstrap
(runs, then prompts within each run), which also gives one run (a ``base`` row) an interval over its prompts.

Columns:
- ``final/<objective>``, ``final/weighted``: means over the last ``last_frac`` of the logged steps (>= one step);
- ``steps_to_threshold``: the first step whose ``reward/weighted/mean`` (no smoothing) is at or above the threshold.
  The default threshold is shared by all runs of a task: halfway between the mean first and the mean best value of
  its runs. Runs that never reach it count as missing (the "(m)" says how many did);
- the advantage diagnostics and the cost (wall time, tokens/s: they measure the machine as much as the method) are
  means over the whole run;
- eval columns (each run's eval.json, means over its held-out prompts): ``best@k`` the best of k samples under the
  user's objective weights; ``best_dirichlet@k`` the same averaged over Dirichlet(1) random weightings (vpo's own
  training objective, so not a neutral headline); ``pass@k``; ``hv@k`` (hypervolume of the k samples, reference in
  eval.json); ``distinct_2@k``; ``best@k/<objective>`` each objective's own best of k (per persona with
  task=personas) and ``worst@k`` the lowest of those (the worst-off persona: max-min fairness);
- ``<col>_vs_base`` (eval columns): the group's mean minus the mean of the ``base`` group of its stratum, the
  untrained model written by ``mo-rl eval --base`` (``<root>/base/<task>-<hash>/``). Base runs need ``method`` in
  ``by`` (else they are left out, said on stderr); a base group matches on the ``by`` keys other than
  method and seed, a key the base lacks matching any value.

``--baseline METHOD`` adds the paired table and, across several strata (tasks), the IQM table (``paired.py``).
Runs whose objective sets differ may not share a group: MoRLError, unless ``by`` separates them (``task`` or
``objectives``), since their per-objective columns do not compare.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mo_rl.analysis.records import (EVAL_FIELDS, available_metrics, eval_prompts, eval_settings, first,
                                   load_runs, objectives_of, tail_mean, to_float, with_status)
from mo_rl.analysis.paired import LOWER_IS_BETTER, iqm_table, method_labels, paired_table, strata_keys
from mo_rl.analysis.stats import bootstrap_ci, hierarchical_ci, hierarchical_cis
from mo_rl.analysis.tables import Section, group_sections, paired_sections, render_markdown, render_table
from mo_rl.errors import MoRLError, choice_error
from mo_rl.results.reader import Run

FORMATS = ("table", "csv", "markdown", "json")
RUN_KEYS = ("run", "method", "task", "seed", "status", "objectives")  # ``by`` keys beyond dotted config paths
WEIGHTED = "reward/weighted/mean"
ADV_COLS = ("adv/mean_abs", "adv/distinct_per_group", "adv/frac_zero_groups")
COST_COLS = ("wall_time_s", "tokens_per_s")
BASE = "base"
DIRECTED = re.compile(r"^(final/.+|steps_to_threshold|(best|best_dirichlet|pass|worst|hv)@\d+)$")  # has a better


def _mean(df: pd.DataFrame, col: str) -> float:
    """Mean of ``col`` over every logged step, NaN where absent."""
    return float(pd.to_numeric(df[col], errors="coerce").mean()) if col in df.columns else math.nan


def _series(run: Run, col: str) -> pd.Series:
    """``col`` indexed by step, NaN rows dropped (empty when the run never logged it)."""
    df = run.metrics
    if col not in df.columns or "step" not in df.columns:
        return pd.Series(dtype=float)
    return pd.Series(pd.to_numeric(df[col], errors="coerce").values, index=df["step"].values).dropna()


def default_thresholds(runs: list[Run]) -> dict[str, float]:
    """Per task: halfway between the mean first and the mean best ``reward/weighted/mean`` of its runs."""
    firsts: dict[str, list[float]] = {}
    bests: dict[str, list[float]] = {}
    for run in runs:
        s = _series(run, WEIGHTED)
        if len(s):
            task = str(run.lookup("task"))
            firsts.setdefault(task, []).append(float(s.iloc[0]))
            bests.setdefault(task, []).append(float(s.max()))
    return {t: float(np.mean(firsts[t]) + np.mean(bests[t])) / 2 for t in firsts}


def steps_to_threshold(run: Run, threshold: float) -> float:
    """First step whose ``reward/weighted/mean`` >= threshold; NaN when never reached."""
    s = _series(run, WEIGHTED)
    hit = s[s >= threshold]
    return float(hit.index[0]) if len(hit) else math.nan


def _eval_columns(ev: dict) -> dict[str, float]:
    """eval.json ``results`` -> {"best@4": ..., "best_dirichlet@4": ..., "pass@4": ...}; null becomes NaN."""
    out, objectives = {}, ev.get("objectives") or []
    for res in ev.get("results") or []:
        if not isinstance(res, dict) or "k" not in res:
            continue
        k = res["k"]
        out.update({f"{short}@{k}": to_float(first(res, keys)) for short, keys in EVAL_FIELDS.items()})
        per_objective = res.get("best_at_k_per_objective")
        if isinstance(per_objective, list) and len(per_objective) == len(objectives):
            out.update({f"best@{k}/{o}": to_float(v) for o, v in zip(objectives, per_objective)})
            out[f"worst@{k}"] = to_float(res.get("worst_off_at_k"))
    return out


def run_row(run: Run, by: list[str], last_frac: float, threshold: float | None, metric: str | None) -> dict:
    """One run -> a flat dict: identity keys, then the numeric columns of the comparison."""
    df, objs = run.metrics, objectives_of(run)
    row = {key: run.lookup(key) for key in (*RUN_KEYS, *by)}
    row["objectives"] = ",".join(objs)
    row["path"] = str(run.path)  # folder names repeat across experiments; error messages need the full path
    row["steps_done"] = float(run.steps_done)  # a dead or running run's from its metrics
    row.update({f"final/{o}": tail_mean(df, f"reward/{o}/mean", last_frac) for o in objs})
    row["final/weighted"] = tail_mean(df, WEIGHTED, last_frac)
    row["steps_to_threshold"] = steps_to_threshold(run, threshold) if threshold is not None else math.nan
    row.update({c: _mean(df, c) for c in ADV_COLS})
    wall = run.summary.get("wall_time")
    if wall is None and "time" in df.columns and len(df):
        wall = pd.to_numeric(df["time"], errors="coerce").dropna().max()
    row["wall_time_s"] = float(wall) if wall is not None else math.nan
    row["tokens_per_s"] = _mean(df, "perf/tokens_per_s")
    row.update(_eval_columns(run.eval))
    if metric and metric not in row:
        row[metric] = tail_mean(df, metric, last_frac)
    return row


def _check_by(by: list[str], rows: pd.DataFrame) -> None:
    """Every ``by`` key is a run key or a config path that at least one run has."""
    for key in by:
        if key not in RUN_KEYS and rows[key].isna().all():
            raise MoRLError(f"--by {key!r} is neither a run key ({', '.join(RUN_KEYS)}) nor a config path "
                            "any run has (dotted, e.g. trainer.lr)")


# Keys that may differ inside a group without making it a mix of settings: the seed (what a group averages over),
# where a run lives, and what resuming may change (the number of steps aside: a longer run is another setting).
_MIX_IGNORE = ("trainer.seed", "run_name", "output_dir", "experiment")


def _warn_mixed(rows: pd.DataFrame, by: list[str], runs: list[Run]) -> None:
    """One stderr line per group (the first three) whose runs differ in a setting beyond the seed, e.g. vpo's
    ``method.credit`` under ``--by task,method``: its intervals and verdicts then average over two settings."""
    from omegaconf import OmegaConf

    from mo_rl.analysis.report import flat_config
    from mo_rl.config import SAFE_RESUME_KEYS, Config

    ignore = {*_MIX_IGNORE, *(k for k in SAFE_RESUME_KEYS if k != "trainer.steps")}
    # a key a run's config predates (a section added since, e.g. directive) reads as its default
    defaults = {k: v for k, v in flat_config(OmegaConf.to_container(OmegaConf.structured(Config))).items()
                if v != "???"}  # MISSING ones (method, task) have no default
    flats = {str(r.path): {**defaults, **flat_config(r.config)} for r in runs}
    said = []
    for key, grp in rows[rows["method"] != BASE].groupby(by, sort=True, dropna=False):
        cfgs = [flats[p] for p in grp["path"]]
        if len(cfgs) < 2:
            continue
        keys = sorted({k for c in cfgs for k in c} - ignore)
        diff = [k for k in keys if len({repr(c.get(k, "<unset>")) for c in cfgs}) > 1]
        if diff:
            name = " / ".join(str(v) for v in (key if isinstance(key, tuple) else (key,)))
            vals = sorted({str(c.get(diff[0], "<unset>")) for c in cfgs})
            more = f" (and {len(diff) - 1} more key{'s' * (len(diff) > 2)})" if len(diff) > 1 else ""
            split = "directive" if diff[0].startswith("directive.") else diff[0]
            said.append(f"note: group {name!r} mixes runs that differ in {diff[0]} ({', '.join(vals)}){more}; "
                        f"add --by {split} to compare them apart")
    for line in said[:3]:
        print(line, file=sys.stderr)
    if len(said) > 3:
        print(f"note: {len(said) - 3} more groups mix settings", file=sys.stderr)


def _check_objectives(rows: pd.DataFrame, by: list[str]) -> None:
    """A group must hold one objective set; name the two sets and a way out otherwise."""
    for key, grp in rows.groupby(by, sort=False, dropna=False):
        sets = grp.drop_duplicates("objectives")
        if len(sets) > 1:
            a, b = sets.iloc[0], sets.iloc[1]
            name = " / ".join(str(v) for v in (key if isinstance(key, tuple) else (key,)))
            raise MoRLError(f"runs of group {name!r} measure different objectives: [{a['objectives']}] "
                            f"({a['path']}) vs [{b['objectives']}] ({b['path']}); add --by task or "
                            "--by objectives to compare them apart, or compare them separately")


def _status(values: pd.Series) -> str:
    """One status when the group agrees, else counts like "1 completed, 1 running"."""
    counts = values.value_counts()
    return counts.index[0] if len(counts) == 1 else ", ".join(f"{n} {s}" for s, n in counts.items())


def _intervals(grp: pd.DataFrame, cols: list[str], prompts: dict[str, dict]) -> dict[str, tuple[float, float]]:
    """95% intervals of one group's columns: two-level (runs, then prompts) where every run with a value has
    per-prompt values, else scipy's bootstrap over runs (>= 2 values). Columns over the same runs (and, two-level,
    the same prompt counts without gaps) share one call."""
    values = grp[cols].to_numpy(dtype=float)  # (runs, columns)
    out, same_runs, same_prompts = {}, {}, {}
    for j, col in enumerate(cols):
        ok = np.isfinite(values[:, j])
        per_run = [prompts.get(p, {}).get(col) for p in grp["path"][ok]]
        if ok.any() and all(v is not None for v in per_run):
            per_run = [np.asarray(v, dtype=float) for v in per_run]
            if all(np.isfinite(v).all() and len(v) for v in per_run):
                key = (ok.tobytes(), tuple(len(v) for v in per_run))
                same_prompts.setdefault(key, []).append((col, per_run))
            else:
                out[col] = hierarchical_ci(per_run)
        elif ok.sum() >= 2:
            same_runs.setdefault(ok.tobytes(), (ok, []))[1].append(j)
    for ok, js in same_runs.values():
        lo, hi = bootstrap_ci(values[ok][:, js].T)
        out.update({cols[j]: (float(a), float(b)) for j, a, b in zip(js, lo, hi)})
    for members in same_prompts.values():
        tables = [np.stack([per_run[r] for _, per_run in members], axis=1) for r in range(len(members[0][1]))]
        lo, hi = hierarchical_cis(tables)
        out.update({col: (float(a), float(b)) for (col, _), a, b in zip(members, lo, hi)})
    return out


def aggregate(rows: pd.DataFrame, by: list[str], value_cols: list[str],
              prompts: dict[str, dict] | None = None) -> pd.DataFrame:
    """Rows (one per run) -> one row per group: by keys, status, objectives, n_runs, then per value column
    ``col`` (mean), ``col_std`` (sample std; 0 for one value), ``col_lo``/``col_hi`` (95% interval, NaN where
    there is none) and ``col_n`` (runs with a value). ``prompts``: run path -> {column: per-prompt values}."""
    out = []
    try:
        groups = list(rows.groupby(by, sort=True, dropna=False))
    except TypeError:  # a config key holding numbers for some runs and "-" for others: keep first-seen order
        groups = list(rows.groupby(by, sort=False, dropna=False))
    for key, grp in groups:
        rec = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        rec.update(status=_status(grp["status"]), objectives=grp["objectives"].iloc[0], n_runs=len(grp))
        cis = _intervals(grp, value_cols, prompts or {})
        vals = grp[value_cols].to_numpy(dtype=float)  # (runs, columns), NaN where a run lacks a value
        ok = np.isfinite(vals)
        n = ok.sum(0)
        mean = np.where(ok, vals, 0.0).sum(0) / np.maximum(n, 1)
        var = np.where(ok, (vals - mean) ** 2, 0.0).sum(0) / np.maximum(n - 1, 1)
        for j, col in enumerate(value_cols):
            rec[col] = float(mean[j]) if n[j] else math.nan
            rec[f"{col}_std"] = float(np.sqrt(var[j])) if n[j] else math.nan  # one value: 0
            rec[f"{col}_lo"], rec[f"{col}_hi"] = cis.get(col, (math.nan, math.nan))
            rec[f"{col}_n"] = int(n[j])
        out.append(rec)
    return pd.DataFrame(out)


def add_vs_base(agg: pd.DataFrame, by: list[str], value_cols: list[str]) -> list[str]:
    """Add ``<col>_vs_base`` (group mean - its stratum's base mean) for the eval columns; return those names."""
    if "method" not in by or not (agg["method"] == BASE).any():
        return []
    keys, bases = strata_keys(by), agg[agg["method"] == BASE]
    evals = [c for c in value_cols if "@" in c]
    added = {f"{c}_vs_base": np.full(len(agg), np.nan) for c in evals}
    for i, (_, rec) in enumerate(agg.iterrows()):
        match = bases[[all(b[k] in (rec[k], "-") for k in keys) for _, b in bases.iterrows()]]
        if rec["method"] != BASE and len(match) == 1:
            for c in evals:
                added[f"{c}_vs_base"][i] = rec[c] - match.iloc[0][c]
    for name, vals in added.items():
        agg[name] = vals
    return list(added)





def _parts(value_cols: list[str], metric: str | None, vs_base: list[str]) -> list[tuple[str, list[str]]]:
    """Value columns split into readable tables: rewards, eval, eval per objective, change from base,
    diagnostics, cost."""
    evals = [c for c in value_cols if "@" in c and c != metric]
    return [("rewards", [c for c in value_cols if c not in evals and c not in (*ADV_COLS, *COST_COLS)]),
            ("eval", [c for c in evals if "/" not in c]), ("eval, per objective", [c for c in evals if "/" in c]),
            ("eval, change from base (group mean - base mean)", vs_base),
            ("diagnostics", [c for c in ADV_COLS if c in value_cols]),
            ("cost (measures the machine as much as the method)", [c for c in COST_COLS if c in value_cols])]


def _value_columns(rows: pd.DataFrame, by: list[str], metric: str | None) -> list[str]:
    """Numeric columns in display order: the focused metric first, then rewards, diagnostics, cost, eval (by kind,
    then k; per-objective columns after them)."""
    skip = {*RUN_KEYS, *by}
    cols = [c for c in rows.columns if c not in skip and pd.api.types.is_numeric_dtype(rows[c])]
    kinds = ("best", "best_dirichlet", "pass", "worst", "hv", "distinct_2")

    def rank(col: str) -> tuple:
        m = re.match(r"^(\w+)@(\d+)(?:/(.+))?$", col)
        if m:
            kind, k, obj = m.groups()
            return (4, int(obj is not None), obj or "", kinds.index(kind) if kind in kinds else 9, int(k))
        return ({"steps_done": 0, "final/weighted": 2}.get(col, 1 if col.startswith("final/") else 3), 0, "", 0, 0)

    cols = sorted(cols, key=rank)
    return ([metric] + [c for c in cols if c != metric]) if metric else cols


def _thresholds(runs: list[Run], threshold: float | None) -> tuple[dict[str, float], str]:
    """Per-task thresholds (the given one for every task, else the defaults) and a caption fragment."""
    if threshold is not None:
        return {}, f"{threshold:g}"
    found = default_thresholds(runs)
    return found, ", ".join(f"{t}: {v:.3f}" for t, v in found.items()) or "-"


def _check_metric(metric: str | None, rows: pd.DataFrame, runs: list[Run], by: list[str]) -> None:
    """The focused metric must have a value in at least one run."""
    if metric and not pd.to_numeric(rows[metric], errors="coerce").notna().any():
        computed = [c for c in rows.columns if c not in (*RUN_KEYS, *by, "path") and c != metric]
        raise MoRLError(f"metric {metric!r} has no value in any run; allowed: a computed column "
                        f"({', '.join(computed)}) or a logged one ({', '.join(available_metrics(runs))})")


def _drop_base(runs: list[Run], by: list[str]) -> list[Run]:
    """Base runs need ``method`` in ``by`` (else they would join a group of trained runs): leave them out."""
    if "method" in by:
        return runs
    kept = [r for r in runs if r.lookup("method") != BASE]
    if len(kept) < len(runs):
        print(f"left out {len(runs) - len(kept)} base runs: add method to --by to see them", file=sys.stderr)
    return kept


def _comparisons(rows: pd.DataFrame, by: list[str], baseline: str | None, value_cols: list[str],
                 metric: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``paired.paired_table`` and ``paired.iqm_table`` for ``--baseline`` (base runs left out)."""
    if not baseline:
        return pd.DataFrame(), pd.DataFrame()
    if "method" not in by:
        raise MoRLError(f"--baseline {baseline!r} compares methods: add method to --by (e.g. --by task,method)")
    trained = method_labels(rows[rows["method"] != BASE], by)  # vpo[credit=loo] beside vpo[credit=shapley]
    methods = sorted(set(trained["method"].astype(str)))
    if baseline not in methods:
        raise choice_error("--baseline method", baseline, methods)
    cols = [metric] if metric else [c for c in value_cols if DIRECTED.match(c)]
    return paired_table(trained, by, baseline, cols), iqm_table(trained, by, baseline, cols)


def compare_runs(paths: list[str], by: list[str] = ["method"], metric: str | None = None, fmt: str = "table",
                 out: str | None = None, plot: str | None = None, threshold: float | None = None,
                 last_frac: float = 0.2, heatmap: list[str] | None = None, html: str | None = None,
                 baseline: str | None = None, width: int = 160, status: list[str] | None = None) -> str:
    """Compare the runs under ``paths`` grouped by ``by``; return the rendered output (also written to ``out``).

    ``by``: run keys (method, task, seed, status, objectives, run) or dotted config paths (``trainer.lr``).
    ``metric``: a computed column (e.g. ``best@4``) or any metrics.jsonl key (last-``last_frac`` mean): it is
    shown first, groups are sorted by it, best first, and it alone enters the paired table. ``plot``: a folder
    for PNG figures. ``threshold``: on ``reward/weighted/mean`` (default per task, see the module docstring).
    ``heatmap``: two config keys ``[x, y]``: with ``plot``, also one winner-per-cell heatmap per measure.
    ``html``: also write a self-contained report page there (``report.py``). ``baseline``: a method to compare
    every other one against (``paired.py``). ``width``: the table format's column budget. ``status``: only runs
    whose status is one of these (e.g. ``["completed"]``: a run still going has no final values yet).
    """
    if fmt not in FORMATS:
        raise choice_error("format", fmt, FORMATS)
    if heatmap and (len(heatmap) != 2 or not plot):
        raise MoRLError(f"--heatmap {','.join(heatmap)!r} takes two config keys x,y (e.g. "
                        "task.options.rho,task.options.noise) and needs --plot DIR")
    if not 0 < last_frac <= 1:
        raise MoRLError(f"last_frac={last_frac} must be in (0, 1]: the fraction of final steps to average")
    by = list(by) or ["run"]
    runs = _drop_base(with_status(load_runs(paths), status, paths), by)
    per_task, thr_text = _thresholds(runs, threshold)
    rows = pd.DataFrame([run_row(r, by, last_frac, threshold if threshold is not None else
                                 per_task.get(str(r.lookup("task"))), metric) for r in runs])
    _check_by(by, rows)
    _check_metric(metric, rows, runs, by)
    rows[by] = rows[by].astype(object).where(rows[by].notna(), "-")
    _check_objectives(rows, by)
    if "method" in by and "run" not in by:
        _warn_mixed(rows, by, runs)
    value_cols = _value_columns(rows, by, metric)
    agg = aggregate(rows, by, value_cols, {str(r.path): eval_prompts(r.eval) for r in runs})
    if metric:
        agg = agg.sort_values(metric, ascending=metric in LOWER_IS_BETTER, na_position="last",
                              kind="stable").reset_index(drop=True)
    vs_base = add_vs_base(agg, by, value_cols)
    paired, iqm = _comparisons(rows, by, baseline, value_cols, metric)
    caption = "\n".join(filter(None, [
        f"{len(runs)} runs{' with status ' + '/'.join(status) if status else ''}; final = mean over the last "
        f"{last_frac:g} of steps; steps_to_threshold: first step with {WEIGHTED} >= {thr_text}",
        "[lo, hi]: 95% percentile bootstrap over the group's runs (scipy.stats.bootstrap, 9999 resamples); eval "
        "columns with per-prompt values: two-level bootstrap, runs then prompts within each run",
        eval_settings(runs)]))
    sections = group_sections(agg, by, _parts(value_cols, metric, vs_base)) + \
        (paired_sections(paired, iqm, by, baseline) if baseline else [])
    meta = {"runs": len(runs), "by": by, "last_frac": last_frac, "baseline": baseline,
            "thresholds": {"all": threshold} if threshold is not None else per_task}
    text = _render(fmt, agg, sections, caption, meta, paired, iqm, width)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text, encoding="utf-8")
    if plot:
        _plots(runs, rows, plot, by, last_frac, heatmap)
    if html:
        from mo_rl.analysis.report import write_html

        print(f"wrote {write_html(html, runs, sections, by, caption, last_frac)}", file=sys.stderr)
    return text


def _plots(runs: list[Run], rows: pd.DataFrame, plot: str, by: list[str], last_frac: float,
           heatmap: list[str] | None) -> None:
    from mo_rl.analysis.plots import plot_runs, plot_winner_heatmaps

    files = plot_runs(runs, plot, by, last_frac=last_frac)
    if heatmap:
        keys = pd.DataFrame({k: [r.lookup(k) for r in runs] for k in heatmap})  # raw values, not "-"
        files += plot_winner_heatmaps(pd.concat([rows.drop(columns=heatmap, errors="ignore"), keys], axis=1),
                                      heatmap[0], heatmap[1], plot)
    print(f"wrote {len(files)} figures to {plot}", file=sys.stderr)


def _records(df: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts (JSON has no NaN or inf: null)."""
    clean = df.astype(object).where(df.notna() & ~df.isin([math.inf, -math.inf]), None)
    return clean.to_dict(orient="records")


def _render(fmt: str, agg: pd.DataFrame, sections: list[Section], caption: str, meta: dict,
            paired: pd.DataFrame, iqm: pd.DataFrame, width: int) -> str:
    """Dispatch on the output format (already validated)."""
    if fmt == "table":
        return render_table(sections, caption, width)
    if fmt == "markdown":
        return render_markdown(sections, caption)
    if fmt == "csv":
        return agg.to_csv(index=False)
    extra = {"paired": _records(paired), "iqm": _records(iqm)} if meta["baseline"] else {}
    return json.dumps({**meta, "groups": _records(agg), **extra}, indent=2,
                      default=lambda v: v.item()) + "\n"
