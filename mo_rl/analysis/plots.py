"""Figures for ``mo-rl compare --plot DIR``: learning curves, a Pareto scatter of runs, and sample reward clouds.

Curves: the per-step mean over a group's runs, smoothed, with a 95% t-interval band over its runs (a t-interval
per step: a bootstrap per step would cost seconds on a long run and say no more at 2-5 runs). Pareto: every pair
of objectives, group means with 95% bootstrap whiskers (``stats.bootstrap_ci``) and their non-dominated front.

matplotlib is imported inside ``plot_runs`` (Agg backend, no display needed), so the rest of the package works
without it. Every figure gives each group (``by`` value) the same colour.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats

from mo_rl.analysis.records import tail_mean
from mo_rl.errors import MoRLError
from mo_rl.results.reader import Run, read_run, read_samples

MAX_PANELS_PER_ROW = 4
JITTER = 0.01  # fraction of each axis' range, so coincident continuous rewards stay visible
TIE = 1e-6  # winner heatmaps: a lead this small is a tie (e.g. a weighted reward that is constant by design)
MAX_DISCRETE = 40  # at most this many distinct sample reward vectors: draw shares, not points


def _label(run: Run, by: list[str]) -> str:
    """The group a run belongs to, as text: "dvao" or "dvao / 0.001" for ``by=[method, trainer.lr]``; a key the
    run's config lacks (``method.credit`` of grpo) reads "-", as in the tables."""
    return " / ".join("-" if run.lookup(k) is None else str(run.lookup(k)) for k in by)


def _colours(labels: list[str]) -> dict[str, tuple]:
    """One colour per group label, stable across figures (sorted labels -> tab10, then tab20)."""
    import matplotlib

    names = sorted(set(labels))
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _grid(plt, n: int, size: float = 4.2):
    """A figure with n panels, at most MAX_PANELS_PER_ROW per row -> (fig, flat list of the n axes)."""
    cols = min(n, MAX_PANELS_PER_ROW)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 0.6, size * rows * 0.82 + 0.7), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _curve_band(runs: list[Run], col: str) -> pd.DataFrame:
    """Per step over the runs that logged ``col``: mean, n and the 95% t-interval of the mean (lo, hi; NaN at a
    step with one run) -> DataFrame indexed by step (may be empty)."""
    series = [pd.Series(pd.to_numeric(r.metrics[col], errors="coerce").values, index=r.metrics["step"].values)
              for r in runs if col in r.metrics.columns and "step" in r.metrics.columns]
    if not series:
        return pd.DataFrame(columns=["mean", "n", "lo", "hi"])
    table = pd.concat(series, axis=1).sort_index()
    n = table.notna().sum(axis=1)
    half = scipy.stats.t.ppf(0.975, (n - 1).clip(lower=1)) * table.std(axis=1, ddof=1) / np.sqrt(n)
    mean = table.mean(axis=1)
    band = pd.DataFrame({"mean": mean, "n": n, "lo": mean - half, "hi": mean + half})
    return band[band["mean"].notna()]


def _smooth(values: pd.Series) -> pd.Series:
    """A centred rolling mean over about a tenth of the steps (at least 1, odd), edges on the steps there are."""
    window = max(1, len(values) // 10) | 1
    return values.rolling(window, center=True, min_periods=1).mean()


def _bounds(ax, values: list[np.ndarray]) -> None:
    """Means within [0, 1] (every built-in reward's range) get that whole range, so a flat or noisy curve does
    not fill the panel; a band reaching past it is cut at the axes."""
    allv = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    if len(allv) and allv.min() >= 0 and allv.max() <= 1:
        ax.set_ylim(-0.03, 1.03)


def _legend(fig, colours: dict[str, tuple], title: str) -> None:
    """One figure-level legend below the panels (panels stay uncluttered)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", lw=2, label=name) for name, c in colours.items()]
    fig.legend(handles=handles, title=title, loc="lower center", ncol=min(len(handles), 5), frameon=False,
               bbox_to_anchor=(0.5, 0.0))


def _save(fig, path: Path, n_legend_rows: int) -> Path:
    """Leave room for the legend under the panels, write the PNG, free the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=(0, 0.07 + 0.035 * n_legend_rows, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(plt, groups: dict[str, list[Run]], colours: dict, objectives: list[str], path: Path,
                by: list[str]) -> Path:
    """Reward per objective (and weighted) vs step: each group's per-step mean over its runs (thin), that mean
    smoothed (bold), and the 95% t-interval of the per-step mean over the runs (band; none at one run)."""
    cols = [f"reward/{o}/mean" for o in objectives] + ["reward/weighted/mean"]
    fig, axes = _grid(plt, len(cols))
    for ax, col in zip(axes, cols):
        drawn = []
        for label, runs in groups.items():
            band = _curve_band(runs, col)
            if len(band):
                ax.plot(band.index, band["mean"], color=colours[label], lw=0.8, alpha=0.45)
                ax.plot(band.index, _smooth(band["mean"]), color=colours[label], lw=2.0)
                ax.fill_between(band.index, band["lo"], band["hi"], color=colours[label], alpha=0.15, lw=0)
                drawn.append(band["mean"].to_numpy(float))  # not the band: at 2 runs t(0.975, 1) = 12.7
        _bounds(ax, drawn)
        name = col.split("/")[1]
        ax.set(title=f"{name} reward", xlabel="step", ylabel=f"mean {name} reward")
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.grid(alpha=0.3)
    fig.suptitle("Learning curves (thin: mean over runs per step; bold: smoothed, rolling mean over ~10% of the "
                 "steps;\nband: 95% t-interval of the mean over runs per step; y from the reward's [0, 1] bounds)")
    _legend(fig, colours, " / ".join(by))
    return _save(fig, path, math.ceil(len(colours) / 5))


def _finals(runs: list[Run], objectives: list[str], last_frac: float) -> np.ndarray:
    """Final per-objective means of each run -> (n_runs, K), NaN where a run lacks the objective."""
    return np.array([[tail_mean(r.metrics, f"reward/{o}/mean", last_frac) for o in objectives] for r in runs])


MAX_PAIRS = 15  # K = 6 objectives; beyond, the first 15 pairs


def plot_pareto(plt, groups: dict[str, list[Run]], colours: dict, objectives: list[str], path: Path,
                by: list[str], last_frac: float) -> Path:
    """Final per-objective means, every pair of objectives: a dot per run, a star per group mean with 95%
    bootstrap whiskers over its runs (>= 2), and the non-dominated front of the group means (dashed)."""
    from mo_rl.analysis.pareto import pareto_mask
    from mo_rl.analysis.stats import bootstrap_ci

    pairs = list(itertools.combinations(range(len(objectives)), 2))[:MAX_PAIRS]
    fig, axes = _grid(plt, len(pairs), size=4.6)
    finals = {label: _finals(runs, objectives, last_frac) for label, runs in groups.items()}
    for ax, (i, j) in zip(axes, pairs):
        means = []
        for label, all_pts in finals.items():
            pts = all_pts[:, [i, j]]
            pts = pts[np.isfinite(pts).all(1)]
            if not len(pts):
                continue
            centre = pts.mean(0)
            ax.scatter(pts[:, 0], pts[:, 1], color=colours[label], s=24, alpha=0.5)
            if len(pts) >= 2:
                lo, hi = bootstrap_ci(pts.T)
                ax.errorbar(*centre, xerr=[[centre[0] - lo[0]], [hi[0] - centre[0]]],
                            yerr=[[centre[1] - lo[1]], [hi[1] - centre[1]]], color=colours[label], lw=1.2,
                            capsize=3, zorder=3)
            ax.scatter(*centre, color=colours[label], s=150, marker="*", edgecolor="black", lw=0.6, zorder=4)
            means.append(centre)
        if means:
            front = np.array(means)[pareto_mask(np.array(means))]
            front = front[np.argsort(front[:, 0])]
            ax.plot(front[:, 0], front[:, 1], ls="--", color="black", lw=0.9, alpha=0.6, zorder=2)
        ax.set(xlabel=f"final {objectives[i]} reward", ylabel=f"final {objectives[j]} reward",
               title=f"{objectives[i]} vs {objectives[j]}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Final per-objective means, last {last_frac:.0%} of steps (dot: one run; star: group mean, "
                 "whiskers: its 95% bootstrap\ninterval over runs; dashed: the non-dominated front of the group "
                 "means in that pair)")
    _legend(fig, colours, " / ".join(by))
    return _save(fig, path, math.ceil(len(colours) / 5))


def _sample_points(run: Run, objectives: list[str], last_frac: float) -> np.ndarray:
    """Reward vectors of the samples from the run's last ``last_frac`` of logged steps -> (n, 2)."""
    df, _ = read_samples(run.path)
    if df.empty or "rewards" not in df.columns or "step" not in df.columns:
        return np.zeros((0, len(objectives)))
    steps = np.sort(pd.to_numeric(df["step"], errors="coerce").dropna().unique())
    if not len(steps):
        return np.zeros((0, len(objectives)))
    cutoff = steps[-max(1, math.ceil(last_frac * len(steps)))]
    late = df[pd.to_numeric(df["step"], errors="coerce") >= cutoff]
    pts = [[(r or {}).get(o) if isinstance(r, dict) else None for o in objectives] for r in late["rewards"]]
    arr = np.array(pts, dtype=np.float64) if pts else np.zeros((0, len(objectives)))
    return arr[np.isfinite(arr).all(1)]


def _draw_cloud(ax, clouds: dict[str, np.ndarray], colours: dict, span: np.ndarray) -> str:
    """Draw each group's (n, 2) points; return how to read the picture.

    Few distinct reward vectors (discrete rewards) would stack into single dots, so then each distinct vector
    is a disc with area proportional to its share of the group's samples, groups side by side; otherwise
    a jittered scatter with a fixed seed (the same runs draw the same picture).
    """
    distinct = max(len(np.unique(p, axis=0)) for p in clouds.values() if len(p))
    if distinct <= MAX_DISCRETE:
        live = [label for label, p in clouds.items() if len(p)]
        for gi, label in enumerate(live):
            values, counts = np.unique(clouds[label], axis=0, return_counts=True)
            dx = (gi - (len(live) - 1) / 2) * 0.035 * span[0]
            ax.scatter(values[:, 0] + dx, values[:, 1], s=900 * counts / counts.sum(), color=colours[label],
                       alpha=0.75, edgecolor="white", lw=0.5)
        return "disc area = share of the group's samples"
    rng = np.random.default_rng(0)
    for label, pts in clouds.items():
        if len(pts):
            shown = pts + rng.normal(0, JITTER, pts.shape) * span
            ax.scatter(shown[:, 0], shown[:, 1], color=colours[label], s=12, alpha=0.35, lw=0)
    return "jittered"


def plot_samples(plt, groups: dict[str, list[Run]], colours: dict, objectives: list[str], path: Path,
                 by: list[str], last_frac: float) -> Path | None:
    """K = 2 only: the reward vectors of the logged samples of the last steps; None if there are none."""
    clouds = {label: np.concatenate([_sample_points(r, objectives, last_frac) for r in runs])
              for label, runs in groups.items()}
    if not any(len(c) for c in clouds.values()):
        return None
    allpts = np.concatenate([c for c in clouds.values() if len(c)])
    span = np.maximum(allpts.max(0) - allpts.min(0), 1e-9)
    fig, (ax,) = _grid(plt, 1, size=5.6)
    how = _draw_cloud(ax, clouds, colours, span)
    ax.set(xlabel=f"{objectives[0]} reward", ylabel=f"{objectives[1]} reward")
    ax.set_title(f"Samples of the last {last_frac:.0%} of steps\n({how})")
    ax.margins(0.08)
    ax.grid(alpha=0.3)
    _legend(fig, colours, " / ".join(by))
    return _save(fig, path, math.ceil(len(colours) / 5))


def plot_runs(runs: list[Run | str | os.PathLike], out_dir: str | os.PathLike, by: list[str] = ["method"],
              last_frac: float = 0.2) -> list[Path]:
    """Write PNG figures for ``runs`` (Run objects or run directories) into ``out_dir``; return their paths.

    ``curves.png`` (per-objective learning curves), ``pareto.png`` (final means, K >= 2) and ``samples.png``
    (sample reward vectors, K = 2 with samples.jsonl). Runs with different objective sets get one set of
    figures each, suffixed with the objective names.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MoRLError("plots need matplotlib; install it with: pip install matplotlib") from e
    loaded = [r if isinstance(r, Run) else read_run(r) for r in runs]
    loaded = [r for r in loaded if len(r.metrics)]  # a base run (mo-rl eval --base) has no training to draw
    if not loaded:
        raise MoRLError("plot_runs got no runs with logged steps; pass run directories or Run objects")
    by = list(by) or ["run"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colours = _colours([_label(r, by) for r in loaded])
    sets = Counter(tuple(r.objectives) for r in loaded)
    written: list[Path] = []
    for objectives, _ in sets.most_common():
        members = [r for r in loaded if tuple(r.objectives) == objectives]
        groups: dict[str, list[Run]] = {}
        for r in sorted(members, key=lambda r: _label(r, by)):
            groups.setdefault(_label(r, by), []).append(r)
        shown = {label: colours[label] for label in groups}
        suffix = "" if len(sets) == 1 else "_" + re.sub(r"[^A-Za-z0-9]+", "-", "_".join(objectives)).strip("-")
        written.append(plot_curves(plt, groups, shown, list(objectives), out / f"curves{suffix}.png", by))
        if len(objectives) >= 2:
            written.append(plot_pareto(plt, groups, shown, list(objectives), out / f"pareto{suffix}.png", by,
                                       last_frac))
        if len(objectives) == 2:
            path = plot_samples(plt, groups, shown, list(objectives), out / f"samples{suffix}.png", by, last_frac)
            written += [path] if path else []
    return written


def plot_winner_heatmaps(rows: pd.DataFrame, x: str, y: str, out_dir: str | os.PathLike,
                         measures: list[str] | None = None) -> list[Path]:
    """One heatmap per measure: the method with the best mean over seeds in each (x, y) cell, and its margin.

    ``rows``: one row per run (``compare.run_row``: the ``x``/``y`` config keys, ``method`` and the measure
    columns). ``measures`` default: ``final/weighted`` and every ``best@k`` column present. Writes
    ``winner_<measure>.png``; the cell text is the winner, its mean and its lead over the runner-up.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    measures = measures or ["final/weighted"] + sorted(c for c in rows.columns if c.startswith("best@"))
    methods = sorted(rows["method"].astype(str).unique()) + ["tie"]
    colours = {**_colours(methods[:-1]), "tie": (0.8, 0.8, 0.8, 1.0)}
    xs, ys = sorted(rows[x].unique(), key=float), sorted(rows[y].unique(), key=float)
    out, written = Path(out_dir), []
    out.mkdir(parents=True, exist_ok=True)
    for measure in [m for m in measures if m in rows.columns]:
        win = winners(rows, x, y, measure)
        grid = np.full((len(ys), len(xs)), np.nan)
        fig, ax = plt.subplots(figsize=(1.5 * len(xs) + 2.2, 1.0 * len(ys) + 1.8))
        for (yv, xv), rec in win.iterrows():
            i, j = ys.index(yv), xs.index(xv)
            grid[i, j] = methods.index(rec["winner"])
            ax.text(j, i, f"{rec['winner']}\n{rec['best']:.3f}\n+{rec['lead']:.3f}", ha="center", va="center",
                    fontsize=8)
        ax.imshow(grid, cmap=ListedColormap([colours[m] for m in methods]), vmin=-0.5,
                  vmax=len(methods) - 0.5, alpha=0.55, aspect="auto")
        ax.set_xticks(range(len(xs)), [f"{v:g}" for v in map(float, xs)])
        ax.set_yticks(range(len(ys)), [f"{v:g}" for v in map(float, ys)])
        ax.set(xlabel=x, ylabel=y, title=f"winner by {measure}\n(mean over seeds; +lead over the runner-up)")
        _legend(fig, {m: colours[m] for m in methods}, "method")
        name = re.sub(r"[^A-Za-z0-9@]+", "_", measure).strip("_")
        written.append(_save(fig, out / f"winner_{name}.png", 1))
    return written


def winners(rows: pd.DataFrame, x: str, y: str, measure: str) -> pd.DataFrame:
    """Per (y, x) cell: the method with the best mean ``measure`` over its runs, that mean, and its lead over the
    runner-up (NaN with one method); ``tie`` when the two best are within ``TIE``. rows: one per run with columns
    x, y, ``method``, measure."""
    table = rows.groupby([y, x, "method"])[measure].mean().unstack("method").dropna(how="all")
    ranked = -np.sort(-np.nan_to_num(table.to_numpy(dtype=float), nan=-np.inf), axis=1)  # best first
    lead = ranked[:, 0] - ranked[:, 1] if ranked.shape[1] > 1 else np.full(len(table), np.nan)
    winner = table.idxmax(axis=1).astype(str).where(~(lead <= TIE), "tie")
    return pd.DataFrame({"winner": winner, "best": ranked[:, 0], "lead": np.where(np.isfinite(lead), lead, np.nan)},
                        index=table.index)
