"""Pareto metrics on hand-computed point sets, plus hypothesis checks against a brute-force cell count."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mo_rl.analysis.pareto import (dirichlet_weights, distinct_n, expected_utility, hypervolume,
                                   mean_pairwise_distance, pareto_front, pareto_mask, sparsity)
from mo_rl.errors import MoRLError


@pytest.mark.parametrize("points, expected", [
    ([(1, 0.5), (0.5, 1)], 0.75),
    ([(1, 0.5), (0.5, 1), (0.25, 0.25)], 0.75),  # a dominated point adds nothing
    ([(1, 0), (0, 1), (0.5, 0.5)], 0.25),  # points on the reference's boundary add nothing
    ([(1, 0.5, 0.5), (0.5, 1, 0.5), (0.5, 0.5, 1)], 0.5),
    ([(2, 3)], 6.0),
    ([(1, 1, 1, 1), (2, 0.5, 1, 1)], 1.5),  # K=4: 1 + 2*0.5 - overlap 1*0.5
    ([], 0.0),
])
def test_hypervolume_hand_cases(points, expected):
    assert hypervolume(points, ref=None if points else [0, 0]) == pytest.approx(expected)


def test_hypervolume_reference_point():
    pts = [(1, 0.5), (0.5, 1)]
    # reference (0.25, 0.25): boxes 0.75x0.25 and 0.25x0.75 overlap in 0.25x0.25 -> 0.1875*2 - 0.0625
    assert hypervolume(pts, ref=[0.25, 0.25]) == pytest.approx(0.3125)
    assert hypervolume(pts, ref=[1, 1]) == 0.0  # nothing strictly dominates the reference
    assert hypervolume([(-1, -1)], ref=[-2, -3]) == pytest.approx(2.0)


def test_hypervolume_rejects_bad_input():
    with pytest.raises(MoRLError, match="reference point"):
        hypervolume([(1, 1)], ref=[0, 0, 0])
    with pytest.raises(MoRLError, match="finite"):
        hypervolume([(1, float("nan"))])
    with pytest.raises(MoRLError, match="shape"):
        hypervolume([1.0, 2.0])


def _grid_volume(points: np.ndarray) -> int:
    """Brute force for integer points, ref at the origin: count unit cells [c, c+1]^K below some point."""
    k = points.shape[1]
    top = int(points.max()) if len(points) else 0
    count = 0
    for cell in itertools.product(range(top), repeat=k):
        upper = np.array(cell) + 1
        count += bool(len(points)) and bool((points >= upper).all(1).any())
    return count


int_sets = st.integers(2, 4).flatmap(
    lambda k: st.lists(st.tuples(*[st.integers(0, 5)] * k), min_size=0, max_size=7).map(
        lambda pts: np.array(pts, dtype=float).reshape(-1, k)))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(int_sets)
def test_hypervolume_equals_brute_force(points):
    assert hypervolume(points, ref=[0.0] * points.shape[1]) == pytest.approx(_grid_volume(points))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(2, 4).flatmap(lambda k: st.lists(
    st.lists(st.floats(-1, 3, allow_nan=False), min_size=k, max_size=k), min_size=1, max_size=8)))
def test_hypervolume_monotone_in_points(points):
    pts = np.array(points)
    ref = [0.0] * pts.shape[1]
    volumes = [hypervolume(pts[:i], ref=ref) for i in range(len(pts) + 1)]
    assert all(b >= a - 1e-12 for a, b in zip(volumes, volumes[1:]))
    assert hypervolume(pareto_front(pts), ref=ref) == pytest.approx(volumes[-1])


def test_hypervolume_monte_carlo_k3():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 1, size=(6, 3))
    probes = rng.uniform(0, 1, size=(200_000, 3))
    covered = (pts[None, :, :] >= probes[:, None, :]).all(-1).any(1).mean()
    assert hypervolume(pts) == pytest.approx(covered, abs=0.005)


def test_pareto_mask_and_front():
    pts = [(1, 1), (1, 1), (0, 2), (0, 1), (2, 0), (0.5, 0.5)]
    assert pareto_mask(pts).tolist() == [True, False, True, False, True, False]
    assert pareto_front(pts).tolist() == [[1, 1], [0, 2], [2, 0]]
    assert pareto_mask([]).shape == (0,)


def test_expected_utility():
    # Dirichlet(1, 1) on two objectives: w ~ U(0, 1), E[max(w, 1 - w)] = 3/4
    assert expected_utility([(1, 0), (0, 1)], n_weights=200_000, rng=0) == pytest.approx(0.75, abs=0.003)
    assert expected_utility([(0.5, 0.5)], rng=1) == pytest.approx(0.5)  # every weighting gives 0.5
    w = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_utility([(1, 0.2), (0.4, 0.6)], weights=w) == pytest.approx((1.0 + 0.6) / 2)
    assert expected_utility([(1, 0.2), (0.4, 0.6)], rng=7) == expected_utility([(1, 0.2), (0.4, 0.6)], rng=7)
    with pytest.raises(MoRLError, match="at least one point"):
        expected_utility(np.zeros((0, 2)))


def test_dirichlet_weights_seeded_simplex():
    a, b = dirichlet_weights(3, 50, rng=3), dirichlet_weights(3, 50, rng=np.random.default_rng(3))
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(a.sum(1), 1.0)
    assert (a >= 0).all() and a.shape == (50, 3)
    with pytest.raises(MoRLError, match="alpha"):
        dirichlet_weights(2, 5, alpha=0)


def test_sparsity():
    # front (0,1), (0.5,0.5), (1,0): per objective gaps 0.5, 0.5 -> (0.25+0.25)*2 / (3-1)
    assert sparsity([(0, 1), (1, 0), (0.5, 0.5), (0.1, 0.1)]) == pytest.approx(0.5)
    assert sparsity([(1, 1), (0, 0)]) == 0.0  # a one-point front has no gaps


def test_distinct_n():
    assert distinct_n(["a b c", "a b d"], n=2) == pytest.approx(3 / 4)  # ab, bc, ab, bd
    assert distinct_n(["a b c", "a b d"], n=1) == pytest.approx(4 / 6)
    assert distinct_n(["same", "same"], n=2) == 0.0  # no bigram at all
    with pytest.raises(MoRLError, match="n >= 1"):
        distinct_n(["a"], n=0)


def test_mean_pairwise_distance():
    # pairs: (0,0)-(3,4)=5, (0,0)-(0,0)=0, (3,4)-(0,0)=5 -> 10/3
    assert mean_pairwise_distance([(0, 0), (3, 4), (0, 0)]) == pytest.approx(10 / 3)
    assert mean_pairwise_distance([(1, 2)]) == 0.0
