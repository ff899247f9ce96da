"""stats.py: the intervals against scipy's own result, the two-level bootstrap against a loop over the same draws,
and P(X > Y), the IQM, the verdict and the seeds-needed number on hand-computed cases."""

import math

import numpy as np
import pytest
import scipy.stats

from mo_rl.analysis import stats
from mo_rl.analysis.stats import (bootstrap_ci, diff_ci, hierarchical_ci, iqm, iqm_ci, prob_improvement,
                                  seeds_needed, verdict)

SAMPLE = np.array([0.12, 0.40, 0.35, 0.81, 0.50, 0.47])


def _scipy(data, statistic):
    res = scipy.stats.bootstrap(data, statistic, n_resamples=9999, confidence_level=0.95, method="percentile",
                                random_state=np.random.default_rng(0))
    return res.confidence_interval.low, res.confidence_interval.high


def test_bootstrap_ci_is_scipys_percentile_interval():
    lo, hi = bootstrap_ci(SAMPLE)
    assert (lo, hi) == _scipy((SAMPLE,), np.mean)
    assert SAMPLE.min() < lo < SAMPLE.mean() < hi < SAMPLE.max()
    # several columns in one call: each equals its own call (the same resampled runs)
    table = np.stack([SAMPLE, 2 * SAMPLE, np.full(6, 0.3)])
    lo3, hi3 = bootstrap_ci(table)
    assert lo3[0] == lo and hi3[1] == pytest.approx(2 * hi) and (lo3[2], hi3[2]) == (pytest.approx(0.3),) * 2


def test_diff_ci_is_scipys_two_sample_interval():
    x, y = SAMPLE, np.array([0.1, 0.3, 0.2])
    assert diff_ci(x, y) == _scipy((x, y), lambda a, b, axis=-1: a.mean(axis) - b.mean(axis))


def test_prob_improvement_on_a_3x3_case():
    # x=1 beats only y=0: 1; x=2 ties the two 2s and beats 0: 0.5 + 0.5 + 1; x=3 beats all three: 3 -> 6 / 9
    assert prob_improvement([1, 2, 3], [2, 2, 0]) == pytest.approx(6 / 9)
    assert prob_improvement([2, 2, 0], [1, 2, 3]) == pytest.approx(3 / 9)  # P(Y > X) = 1 - P(X > Y)
    assert prob_improvement([1.0], [1.0]) == 0.5 and math.isnan(prob_improvement([], [1.0]))


def test_iqm_by_hand_and_its_stratified_interval():
    # sorted [1, 2, 3, 4, 5, 6, 10, 100]: the middle half 3, 4, 5, 6
    assert iqm([10, 1, 3, 2, 100, 4, 5, 6]) == pytest.approx(4.5)
    assert iqm([0, 1, 2, 3]) == pytest.approx(1.5)
    a, b = np.array([0.1, 0.5, 0.3, 0.2]), np.array([0.9, 0.7, 0.8])
    stat = lambda x, y, axis=-1: scipy.stats.trim_mean(np.concatenate([x, y], axis=axis), 0.25, axis=axis)  # noqa
    assert iqm_ci([a, b]) == pytest.approx(_scipy((a, b), stat))
    assert iqm_ci([np.full(3, 0.4), np.full(2, 0.4)]) == pytest.approx((0.4, 0.4))


def test_verdict_and_direction():
    assert verdict(0.1, 0.3) == "better" and verdict(-0.3, -0.1) == "worse"
    assert verdict(0.1, 0.3, lower_is_better=True) == "worse" and verdict(-3, -1, lower_is_better=True) == "better"
    assert verdict(-0.1, 0.2) == verdict(0.0, 0.0) == verdict(math.nan, math.nan) == "not resolved"


def test_seeds_needed_by_hand():
    # (1.96 * 0.2 / 0.1)^2 = 15.37 -> 16
    assert seeds_needed(0.1, 0.2) == 16 and seeds_needed(-0.1, 0.2) == 16
    assert seeds_needed(0.5, 0.1) == 2  # (0.392)^2 < 1, but an interval needs two seeds
    assert seeds_needed(0.0, 0.2) == math.inf and math.isnan(seeds_needed(0.1, math.nan))
    assert stats.Z == pytest.approx(1.959964, abs=1e-6)


def _loop_reference(per_run, n_resamples, seed):
    """The two-level bootstrap one draw at a time, from the same random numbers as the vectorized one."""
    runs = [np.asarray(r, dtype=float) for r in per_run]
    width = max(len(r) for r in runs)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(runs), size=(n_resamples, len(runs)))
    u = rng.random((n_resamples, len(runs), width))
    means = []
    for b in range(n_resamples):
        run_means = []
        for j, r in enumerate(pick[b]):
            n = len(runs[r])
            run_means.append(np.mean([runs[r][int(u[b, j, i] * n)] for i in range(n)]))
        means.append(np.mean(run_means))
    return tuple(np.quantile(means, [0.025, 0.975]))


def test_hierarchical_ci_equals_the_loop_over_the_same_draws():
    per_run = [[0.2, 0.9, 0.4], [0.5, 0.6], [1.0, 0.0, 0.3, 0.8]]  # runs with different prompt counts
    assert hierarchical_ci(per_run, n_resamples=300, seed=3) == pytest.approx(_loop_reference(per_run, 300, 3))


def test_hierarchical_ci_collapses_without_spread_and_widens_with_it():
    assert hierarchical_ci([[0.5] * 8, [0.5] * 8, [0.5] * 8]) == pytest.approx((0.5, 0.5))
    # the same seed means (0.4, 0.6), once with no spread over prompts and once with a lot
    flat = hierarchical_ci([[0.4] * 8, [0.6] * 8])
    spread = hierarchical_ci([[0.0, 0.8] * 4, [0.2, 1.0] * 4])
    assert flat == pytest.approx((0.4, 0.6))  # seeds only: the mean is 0.4, 0.5 or 0.6
    assert spread[0] < flat[0] and spread[1] > flat[1]
    # one run: prompts only; None (a prompt without a value) is dropped
    lo, hi = hierarchical_ci([[0.0, 1.0, None, 1.0, 0.0]])
    assert 0.0 <= lo < 0.5 < hi <= 1.0
    assert all(math.isnan(v) for v in hierarchical_ci([[None, None]]))
