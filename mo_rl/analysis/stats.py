"""Intervals and comparisons for ``mo-rl compare``: how sure a comparison of a few seeds is.

Every interval is a 95% percentile bootstrap with ``N_RESAMPLES`` resamples and a fixed seed (the same runs give
the same interval every time):
- ``bootstrap_ci``: the mean over runs, ``scipy.stats.bootstrap`` (percentile method: BCa is undefined when all
  values are equal and unstable at 2-5 seeds). With few runs it cannot reach beyond the observed values, so it is
  narrow: with 2 seeds it is about [min, max];
- ``hierarchical_ci(s)``: the mean over runs of each run's mean over prompts, resampling runs, then prompts
  within each resampled run (two levels: seed-to-seed and prompt-to-prompt variation). scipy's bootstrap
  resamples one level, so this one is numpy (a seeded Generator), vectorized over resamples and columns;
- ``diff_ci``: a difference of means of two independent samples (each resampled on its own), scipy;
- ``iqm_ci``: rliable's interquartile mean of runs pooled over strata (tasks), resampling runs within each
  stratum (a stratified bootstrap: scipy's multi-sample bootstrap resamples each sample on its own).
``prob_improvement`` is rliable's P(X > Y); ``seeds_needed`` a normal approximation.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import scipy.stats

CONFIDENCE = 0.95
N_RESAMPLES = 9999  # scipy's default
SEED = 0
Z = float(scipy.stats.norm.ppf(0.5 + CONFIDENCE / 2))  # 1.95996...
_RNG_ARG = "rng" if "rng" in inspect.signature(scipy.stats.bootstrap).parameters else "random_state"  # scipy<1.15


def _scipy(data: tuple, statistic) -> tuple[np.ndarray, np.ndarray]:
    res = scipy.stats.bootstrap(data, statistic, n_resamples=N_RESAMPLES, confidence_level=CONFIDENCE,
                                method="percentile", vectorized=True, axis=-1,
                                **{_RNG_ARG: np.random.default_rng(SEED)})
    return np.asarray(res.confidence_interval.low), np.asarray(res.confidence_interval.high)


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def bootstrap_ci(values) -> tuple[np.ndarray, np.ndarray]:
    """95% interval of the mean over the last axis: ``values`` (n,) or (C, n) without NaN, n >= 2 -> (lo, hi)."""
    return _scipy((np.asarray(values, dtype=float),), _mean)


def diff_ci(x, y) -> tuple[float, float]:
    """95% interval of mean(x) - mean(y) for independent samples (each of >= 2 values)."""
    lo, hi = _scipy((np.asarray(x, dtype=float), np.asarray(y, dtype=float)),
                    lambda a, b, axis=-1: a.mean(axis) - b.mean(axis))
    return float(lo), float(hi)


def hierarchical_ci(per_run: list, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """95% interval of the mean over runs of each run's mean over its prompts (``per_run``: one sequence of
    per-prompt values per run; NaN/None dropped, runs left with none skipped); see ``hierarchical_cis``."""
    runs = [v[np.isfinite(v)] for v in (np.array([np.nan if x is None else x for x in r], dtype=float)
                                        for r in per_run)]
    runs = [v[:, None] for v in runs if len(v)]
    if not runs:
        return math.nan, math.nan
    lo, hi = hierarchical_cis(runs, n_resamples, seed)
    return float(lo[0]), float(hi[0])


def hierarchical_cis(runs: list[np.ndarray], n_resamples: int = N_RESAMPLES,
                     seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """The two-level bootstrap of C columns at once: ``runs`` holds one (P_r, C) array per run (no NaN) -> (lo,
    hi), each (C,). Each of ``n_resamples`` draws picks len(runs) runs with replacement, then, for each picked
    run, as many of its prompts as it has, with replacement; a draw's value is the mean over the picked runs of
    the mean over their drawn prompts; the interval is the 2.5% and 97.5% quantiles of the draws. One run:
    prompts only."""
    lengths = np.array([len(v) for v in runs])
    width = lengths.max()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(runs), size=(n_resamples, len(runs)))  # (B, R) runs
    n = lengths[pick]  # (B, R) prompts of each picked run
    prompt = (rng.random((*pick.shape, width)) * n[..., None]).astype(np.int64)  # (B, R, P), each < n
    keep = np.arange(width) < n[..., None]  # a run with n prompts draws n of them: the first n columns
    # how often each draw b took each (run, prompt): a draw's mean is then one row of a matmul
    flat = ((np.arange(n_resamples)[:, None, None] * len(runs) + pick[..., None]) * width + prompt)[keep]
    counts = np.bincount(flat, minlength=n_resamples * len(runs) * width).astype(float)
    table = np.zeros((len(runs), width, runs[0].shape[1]))
    for r, values in enumerate(runs):
        table[r, :len(values)] = values / len(values)
    means = counts.reshape(n_resamples, -1) @ table.reshape(-1, table.shape[-1]) / len(runs)  # (B, C)
    lo, hi = np.quantile(means, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2], axis=0)
    return lo, hi


def prob_improvement(x, y) -> float:
    """rliable's probability of improvement P(X > Y): the mean over all pairs (x_i, y_j) of
    1[x_i > y_j] + 0.5 * 1[x_i == y_j]; NaN when either sample is empty."""
    x, y = np.asarray(x, dtype=float)[:, None], np.asarray(y, dtype=float)[None, :]
    if not x.size or not y.size:
        return math.nan
    return float(np.mean((x > y) + 0.5 * (x == y)))


def iqm(x) -> float:
    """rliable's interquartile mean: the mean of the middle 50% (``scipy.stats.trim_mean(x, 0.25)``)."""
    return float(scipy.stats.trim_mean(np.asarray(x, dtype=float), 0.25))


def iqm_ci(samples: list) -> tuple[np.ndarray, np.ndarray]:
    """95% stratified-bootstrap interval of the IQM of the pooled ``samples``: one array per stratum, (n_s,) or
    (C, n_s) for C columns at once, n_s >= 2 -> (lo, hi), scalars or (C,)."""
    def stat(*xs, axis=-1):
        return scipy.stats.trim_mean(np.concatenate(xs, axis=axis), 0.25, axis=axis)

    return _scipy(tuple(np.asarray(s, dtype=float) for s in samples), stat)


def verdict(lo: float, hi: float, lower_is_better: bool = False) -> str:
    """``better`` / ``worse`` when the interval of (method - baseline) excludes 0, else ``not resolved``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 <= hi:
        return "not resolved"
    return "worse" if (lo > 0) == lower_is_better else "better"


def seeds_needed(mean: float, sd: float) -> float:
    """Seeds at which a mean difference ``mean`` with per-seed sd ``sd`` would get a 95% interval excluding 0
    (normal approximation): ceil((Z * sd / |mean|)^2), at least 2; inf for a zero mean, NaN without an sd."""
    if not math.isfinite(sd) or not math.isfinite(mean):
        return math.nan
    if mean == 0:
        return math.inf
    return float(max(2, math.ceil((Z * sd / abs(mean)) ** 2)))
