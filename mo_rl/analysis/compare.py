"""``mo-rl compare``: one row per run directory on disk, aggregated over seeds into "mean ± std (n)" tables.

Table and markdown cells read "mean ± std" over the group's n runs (the ``n`` column), with "(m)" appended when
only m of them have a value; csv and json carry ``col`` (mean), ``col_std`` and ``col_n`` for every column.

Choices a reader should know:
- final rewards are means over the last ``last_frac`` of the logged steps (at least one step);
- the advantage diagnostics and tokens/s are means over the whole run (collapse early on matters too);
- steps-to-threshold reads ``reward/weighted/mean`` step by step (no smoothing) and reports the first step at or
  above the threshold. The default threshold is shared by all runs of a task, so the numbers compare: halfway
  between the mean first value and the mean best value of that task's runs. Runs that never reach it count as
  missing, so the "(m)" of that cell says how many runs reached it;
- eval columns (from each run's eval.json): best@k, best_fixed@k, pass@k, hv@k, distinct_2@k, and per objective
  best@k/<objective> (its best of k samples, mean over prompts; with task=personas each persona's best@k) with
  worst@k, the lowest of those (the worst-off persona: max-min fairness);
- std is the sample std over runs (ddof=1), 0 for a single run; n counts runs that have a value;
- runs whose objective sets differ may not share a group: MoRLError, unless ``by`` separates them
  (``task`` or ``objectives``), since their per-objective columns and hypervolumes do not compare;
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mo_rl.analysis.pareto import hypervolume
from mo_rl.errors import MoRLError, choice_error
from mo_rl.results.reader import Run, read_runs

FORMATS = ("table", "csv", "markdown", "json")
RUN_KEYS = ("run", "method", "task", "seed", "status", "objectives")  # ``by`` keys beyond dotted config paths
WEIGHTED = "reward/weighted/mean"
ADV_COLS = ("adv/mean_abs", "adv/distinct_per_group", "adv/frac_zero_groups")
EVAL_FIELDS = {"best": "best_at_k_sampled", "best_fixed": "best_at_k_fixed", "pass": "pass_at_k",
               "hv": "hypervolume", "distinct_2": "distinct_2"}


def tail_mean(df: pd.DataFrame, col: str, last_frac: float) -> float:
    """Mean of ``col`` over the last ``last_frac`` of the rows (at least one row), NaN where absent."""
    if col not in df.columns or len(df) == 0:
        return math.nan
    n = max(1, math.ceil(last_frac * len(df)))
    return float(pd.to_numeric(df[col].iloc[-n:], errors="coerce").mean())


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
    """eval.json ``results`` -> {"best@4": ..., "pass@4": ..., ...}; null values become NaN."""
    out = {}
    for res in ev.get("results") or []:
        if not isinstance(res, dict) or "k" not in res:
            continue
        for short, key in EVAL_FIELDS.items():
            v = res.get(key)
            out[f"{short}@{res['k']}"] = float(v) if isinstance(v, (int, float)) else math.nan
        per_objective = res.get("best_at_k_per_objective")
        if isinstance(per_objective, list) and len(per_objective) == len(ev.get("objectives") or []):
            out.update({f"best@{res['k']}/{o}": float(v) if isinstance(v, (int, float)) else math.nan
                        for o, v in zip(ev["objectives"], per_objective)})
            v = res.get("worst_off_at_k")
            out[f"worst@{res['k']}"] = float(v) if isinstance(v, (int, float)) else math.nan
    return out


def run_row(run: Run, by: list[str], last_frac: float, threshold: float | None,
            ref_point: list[float] | None, metric: str | None) -> dict:
    """One run -> a flat dict: identity keys, then the numeric columns of the comparison."""
    df, objs = run.metrics, run.objectives
    row = {key: run.lookup(key) for key in (*RUN_KEYS, *by)}
    row["path"] = str(run.path)  # folder names repeat across experiments; error messages need the full path
    row["steps_done"] = float(run.steps_done)  # a dead or running run's from its metrics
    finals = [tail_mean(df, f"reward/{o}/mean", last_frac) for o in objs]
    row.update({f"final/{o}": v for o, v in zip(objs, finals)})
    row["final/weighted"] = tail_mean(df, WEIGHTED, last_frac)
    ok = objs and all(math.isfinite(v) for v in finals)
    row["hypervolume"] = hypervolume([finals], ref_point) if ok else math.nan
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


def aggregate(rows: pd.DataFrame, by: list[str], value_cols: list[str]) -> pd.DataFrame:
    """Rows (one per run) -> one row per group: by keys, status, objectives, n_runs, then per value column
    ``col`` (mean), ``col_std`` (sample std; 0 for one value) and ``col_n`` (runs with a value)."""
    out = []
    try:
        groups = list(rows.groupby(by, sort=True, dropna=False))
    except TypeError:  # a config key holding numbers for some runs and "-" for others: keep first-seen order
        groups = list(rows.groupby(by, sort=False, dropna=False))
    for key, grp in groups:
        rec = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        rec.update(status=_status(grp["status"]), objectives=grp["objectives"].iloc[0], n_runs=len(grp))
        for col in value_cols:
            vals = pd.to_numeric(grp[col], errors="coerce").dropna()
            rec[col] = float(vals.mean()) if len(vals) else math.nan
            rec[f"{col}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else (0.0 if len(vals) else math.nan)
            rec[f"{col}_n"] = len(vals)
        out.append(rec)
    return pd.DataFrame(out)


def _num(x: float) -> str:
    """Compact number: fewer decimals for large magnitudes."""
    if x is None or not math.isfinite(x):
        return "-"
    if float(x).is_integer():
        return f"{x:.0f}"
    ax = abs(x)
    return f"{x:.0f}" if ax >= 1000 else f"{x:.1f}" if ax >= 100 else f"{x:.3f}"


def _cell(rec: pd.Series, col: str) -> str:
    """ "mean ± std" ("mean" for one value), " (m)" when only m of the group's runs have one; "-" for none."""
    n = int(rec.get(f"{col}_n", 0) or 0)
    if n == 0:
        return "-"
    # one value has no spread to report
    text = _num(rec[col]) if n == 1 else f"{_num(rec[col])} ± {_num(rec[f'{col}_std'])}"
    return text if n == rec["n_runs"] else f"{text} ({n})"


def _sections(agg: pd.DataFrame, value_cols: list[str], metric: str | None) -> list[tuple[str, list[str]]]:
    """Split value columns into readable tables: rewards, diagnostics, eval (empty sections dropped)."""
    diag = [c for c in (*ADV_COLS, "wall_time_s", "tokens_per_s") if c in value_cols]
    evals = [c for c in value_cols if "@" in c and c != metric]
    rewards = [c for c in value_cols if c not in diag and c not in evals]
    sections = [("rewards", rewards), ("diagnostics", diag), ("eval", evals)]
    # a column no run has (tokens/s on an old run, say) would only print dashes
    sections = [(name, [c for c in cols if (agg[f"{c}_n"] > 0).any()]) for name, cols in sections]
    return [(name, cols) for name, cols in sections if cols]


def _render_table(agg: pd.DataFrame, by: list[str], value_cols: list[str], metric: str | None,
                  caption: str) -> str:
    """Rich tables (one per section) rendered to plain text at their natural width."""
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    console = Console(file=buf, width=400, color_system=None, no_color=True)
    for name, cols in _sections(agg, value_cols, metric):
        table = Table(title=f"{name}: mean ± std over the group's n runs, (m) when only m have a value",
                      title_justify="left")
        for key in (*by, *(("status", "n") if name == "rewards" else ())):
            table.add_column(key, no_wrap=True)
        for col in cols:
            table.add_column(col, justify="right", no_wrap=True)
        for _, rec in agg.iterrows():
            ident = [str(rec[k]) for k in by]
            extra = [str(rec["status"]), str(rec["n_runs"])] if name == "rewards" else []
            table.add_row(*ident, *extra, *(_cell(rec, c) for c in cols))
        console.print(table)
    console.print(caption)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


def _render_markdown(agg: pd.DataFrame, by: list[str], value_cols: list[str], caption: str) -> str:
    """One GitHub-flavoured markdown table with every column."""
    head = [*by, "status", "n", *value_cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, rec in agg.iterrows():
        cells = [str(rec[k]) for k in by] + [str(rec["status"]), str(rec["n_runs"])]
        lines.append("| " + " | ".join(cells + [_cell(rec, c) for c in value_cols]) + " |")
    return "\n".join(lines) + f"\n\n{caption}\n"


def _value_columns(rows: pd.DataFrame, by: list[str], metric: str | None) -> list[str]:
    """Numeric columns in display order: the focused metric first, then rewards, diagnostics, eval."""
    skip = {*RUN_KEYS, *by}
    cols = [c for c in rows.columns if c not in skip and pd.api.types.is_numeric_dtype(rows[c])]

    def rank(col: str) -> int:  # rewards first, objectives side by side even when runs list them differently
        return {"steps_done": 0, "final/weighted": 2}.get(col, 1 if col.startswith("final/") else 3)

    cols = sorted(cols, key=rank)
    return ([metric] + [c for c in cols if c != metric]) if metric else cols


def _load(paths: list[str]) -> list[Run]:
    """Read every run under ``paths``, warning on stderr about skipped corrupt rows."""
    return read_runs(paths)  # a run with a damaged config.yaml is skipped with a warning


def _available_metrics(runs: list[Run]) -> list[str]:
    """Every metrics.jsonl column any run logged, sorted (for the unknown-metric message)."""
    return sorted({c for r in runs for c in r.metrics.columns} - {"step"})


def _thresholds(runs: list[Run], threshold: float | None) -> tuple[dict[str, float], str]:
    """Per-task thresholds (the given one for every task, else the defaults) and a caption fragment."""
    if threshold is not None:
        return {}, f"{threshold:g}"
    found = default_thresholds(runs)
    return found, ", ".join(f"{t}: {v:.3f}" for t, v in found.items()) or "-"


def _check_metric(metric: str | None, rows: pd.DataFrame, runs: list[Run]) -> None:
    """The focused metric must have a value in at least one run."""
    if metric and not pd.to_numeric(rows[metric], errors="coerce").notna().any():
        computed = [c for c in rows.columns if c not in (*RUN_KEYS, "path") and c != metric]
        raise MoRLError(f"metric {metric!r} has no value in any run; allowed: a computed column "
                        f"({', '.join(computed)}) or a logged one ({', '.join(_available_metrics(runs))})")


def compare_runs(paths: list[str], by: list[str] = ["method"], metric: str | None = None, fmt: str = "table",
                 out: str | None = None, plot: str | None = None, ref_point: list[float] | None = None,
                 threshold: float | None = None, last_frac: float = 0.2, heatmap: list[str] | None = None,
                 html: str | None = None) -> str:
    """Compare the runs under ``paths`` grouped by ``by``; return the rendered output (also written to ``out``).

    ``by``: run keys (method, task, seed, status, objectives, run) or dotted config paths (``trainer.lr``).
    ``metric``: a computed column (e.g. ``hypervolume``, ``best@4``) or any metrics.jsonl key (last-``last_frac``
    mean): it is shown first and groups are sorted by it, best first. ``plot``: a folder for PNG figures.
    ``ref_point``: hypervolume reference, one value per objective (default the origin). ``threshold``: on
    ``reward/weighted/mean`` (default per task, see the module docstring). ``heatmap``: two config keys
    ``[x, y]`` (e.g. ``task.options.rho``, ``task.options.noise``): with ``plot``, also one winner-per-cell
    heatmap per measure (``plots.plot_winner_heatmaps``). ``html``: also write a self-contained report page
    there (``report.py``).
    """
    if fmt not in FORMATS:
        raise choice_error("format", fmt, FORMATS)
    if heatmap and (len(heatmap) != 2 or not plot):
        raise MoRLError(f"--heatmap {','.join(heatmap)!r} takes two config keys x,y (e.g. "
                        "task.options.rho,task.options.noise) and needs --plot DIR")
    if not 0 < last_frac <= 1:
        raise MoRLError(f"last_frac={last_frac} must be in (0, 1]: the fraction of final steps to average")
    by = list(by) or ["run"]
    runs = _load(paths)
    per_task, thr_text = _thresholds(runs, threshold)
    rows = pd.DataFrame([
        run_row(r, by, last_frac, threshold if threshold is not None else
                per_task.get(str(r.lookup("task"))), ref_point, metric) for r in runs])
    _check_by(by, rows)
    _check_metric(metric, rows, runs)
    rows[by] = rows[by].astype(object).where(rows[by].notna(), "-")
    _check_objectives(rows, by)
    value_cols = _value_columns(rows, by, metric)
    agg = aggregate(rows, by, value_cols)
    if metric:
        agg = agg.sort_values(metric, ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    caption = (f"{len(runs)} runs; final = mean over the last {last_frac:g} of steps; hypervolume reference "
               f"{ref_point or 'origin'}; steps_to_threshold: first step with {WEIGHTED} >= {thr_text}")
    meta = {"runs": len(runs), "by": by, "last_frac": last_frac, "ref_point": ref_point,
            "thresholds": {"all": threshold} if threshold is not None else per_task}
    text = _render(fmt, agg, by, value_cols, metric, caption, meta)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text, encoding="utf-8")
    if plot:
        from mo_rl.analysis.plots import plot_runs

        files = plot_runs(runs, plot, by, last_frac=last_frac)
        if heatmap:
            from mo_rl.analysis.plots import plot_winner_heatmaps

            keys = pd.DataFrame({k: [r.lookup(k) for r in runs] for k in heatmap})  # raw values, not "-"
            files += plot_winner_heatmaps(pd.concat([rows.drop(columns=heatmap, errors="ignore"), keys], axis=1),
                                          heatmap[0], heatmap[1], plot)
        print(f"wrote {len(files)} figures to {plot}", file=sys.stderr)
    if html:
        from mo_rl.analysis.report import write_html

        print(f"wrote {write_html(html, runs, agg, by, value_cols, metric, caption, last_frac)}", file=sys.stderr)
    return text


def _render(fmt: str, agg: pd.DataFrame, by: list[str], value_cols: list[str], metric: str | None,
            caption: str, meta: dict) -> str:
    """Dispatch on the output format (already validated)."""
    if fmt == "table":
        return _render_table(agg, by, value_cols, metric, caption)
    if fmt == "markdown":
        return _render_markdown(agg, by, value_cols, caption)
    if fmt == "csv":
        return agg.to_csv(index=False)
    records = agg.astype(object).where(agg.notna(), None).to_dict(orient="records")  # JSON has no NaN: null
    return json.dumps({**meta, "groups": records}, indent=2, default=lambda v: v.item()) + "\n"
