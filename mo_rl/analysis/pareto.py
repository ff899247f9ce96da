"""Pareto metrics over reward vectors (maximization): front, hypervolume, expected utility, sparsity, diversity.

All functions take plain arrays (numpy, lists or CPU tensors) of shape ``(N, K)``: N points, K objectives, larger
is better in every objective. Nothing here knows about runs or models; ``compare`` and ``eval`` feed it numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from mo_rl.errors import MoRLError


def _as_points(points, k: int | None = None) -> np.ndarray:
    """Validate and convert to a float64 array of shape (N, K); an empty input becomes (0, K) when K is known."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, k if k is not None else (arr.shape[-1] if arr.ndim == 2 else 0)))
    if arr.ndim != 2:
        raise MoRLError(f"points must have shape (N, K); got an array of shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise MoRLError("points must be finite; got NaN or inf (drop runs or samples without a value first)")
    if k is not None and arr.shape[1] != k:
        raise MoRLError(f"points have {arr.shape[1]} objectives but {k} were expected")
    return arr


def pareto_mask(points) -> np.ndarray:
    """Which points are non-dominated (maximization). points: (N, K) -> (N,) bool.

    q dominates p when q >= p in every objective and q > p in at least one. Of several identical
    non-dominated points only the first is kept, so the front has no duplicates. O(N^2 K) memory and time.
    """
    p = _as_points(points)
    if len(p) == 0:
        return np.zeros(0, dtype=bool)
    ge = (p[None, :, :] >= p[:, None, :]).all(-1)  # ge[i, j]: point j >= point i everywhere
    gt = (p[None, :, :] > p[:, None, :]).any(-1)
    dominated = (ge & gt).any(1)
    equal = ge & ge.T
    earlier_twin = np.tril(equal, k=-1).any(1)  # an identical point with a smaller index exists
    return ~dominated & ~earlier_twin


def pareto_front(points) -> np.ndarray:
    """The non-dominated points, in input order. points: (N, K) -> (M, K), M <= N."""
    p = _as_points(points)
    return p[pareto_mask(p)] if len(p) else p


def _hv2(p: np.ndarray) -> float:
    """Area dominated by positive points p: (N, 2), reference at the origin; dominated points may be present.

    Sweeping x from the right, each point adds the strip between its y and the highest y seen so far.
    """
    order = np.argsort(-p[:, 0], kind="stable")
    xs, ys = p[order, 0], p[order, 1]
    seen = np.concatenate([[0.0], np.maximum.accumulate(ys)[:-1]])
    return float((xs * np.clip(ys - seen, 0.0, None)).sum())


def _hv_slices(p: np.ndarray) -> float:
    """Exact hypervolume of positive points p: (N, K), reference at the origin, by slicing along the last axis.

    Sorted by the last coordinate z_1 >= z_2 >= ... >= z_N (z_{N+1} = 0), the slab z in (z_{i+1}, z_i] is
    dominated exactly by the (K-1)-d region of points 1..i, so HV = sum_i (z_i - z_{i+1}) * HV_{K-1}(p_1..p_i)
    (the HSO recursion). Exact for any K; cost grows like N^(K-1), fine for the small sets of a comparison.
    """
    k = p.shape[1]
    if len(p) == 0:
        return 0.0
    if k == 1:
        return float(p[:, 0].max())
    if k == 2:
        return _hv2(p)
    p = p[np.argsort(-p[:, -1], kind="stable")]
    z = np.append(p[:, -1], 0.0)
    volume = 0.0
    for i in range(len(p)):
        thickness = z[i] - z[i + 1]
        if thickness > 0:
            upper = p[: i + 1, :-1]
            # the 2-d sweep ignores dominated points by itself; deeper levels shrink the set first
            volume += thickness * _hv_slices(upper if k == 3 else pareto_front(upper))
    return float(volume)


def hypervolume(points, ref: Sequence[float] | None = None) -> float:
    """Exact hypervolume dominated by ``points`` and bounded below by ``ref`` (maximization).

    Args:
        points: (N, K) float, finite. ref: (K,) reference point, default the origin.
    Returns:
        The Lebesgue measure of {x : ref <= x <= p for some p}. Points that do not strictly dominate
        ``ref`` (any coordinate <= ref) contribute nothing; an empty set gives 0.0. K = 2 is a sweep,
        K >= 3 the slicing recursion of ``_hv_slices`` (exact, meant for tens to hundreds of points).
    """
    p = np.asarray(points, dtype=np.float64)
    k = p.shape[-1] if p.ndim == 2 else (len(ref) if ref is not None else 0)
    p = _as_points(p, k)
    r = np.zeros(k) if ref is None else np.asarray(ref, dtype=np.float64)
    if r.shape != (k,):
        shown = [float(x) for x in np.atleast_1d(r)]
        raise MoRLError(f"reference point {shown} has {r.size} values; the points have {k} objectives, "
                        "so give one value per objective")
    shifted = p - r
    shifted = shifted[(shifted > 0).all(1)]
    if len(shifted) == 0:
        return 0.0
    # dominated points never change the union, so filtering is only a speed-up; for K <= 3 the O(N^2) filter
    # would cost more (memory too, on thousands of samples) than the sweep it saves
    return float(_hv_slices(shifted if k <= 3 else pareto_front(shifted)))


def dirichlet_weights(k: int, n: int, rng: np.random.Generator | int = 0, alpha: float = 1.0) -> np.ndarray:
    """n linear weightings drawn from a symmetric Dirichlet(alpha) over K objectives -> (n, K), rows sum to 1."""
    if k < 1 or n < 1 or alpha <= 0:
        raise MoRLError(f"dirichlet_weights needs k >= 1, n >= 1, alpha > 0; got k={k}, n={n}, alpha={alpha}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return gen.dirichlet(np.full(k, float(alpha)), size=n)


def expected_utility(points, n_weights: int = 1000, rng: np.random.Generator | int = 0,
                     alpha: float = 1.0, weights=None) -> float:
    """Expected utility of a point set under random linear preferences.

    EU = mean over weightings w ~ Dirichlet(alpha) of max over points p of <w, p>: the reward a user with a
    random linear preference gets by picking their favourite point. points: (N, K); weights: optional (M, K)
    fixed weightings (then n_weights, rng and alpha are unused). Seeded: the same rng gives the same value.
    """
    p = _as_points(points)
    if len(p) == 0:
        raise MoRLError("expected_utility needs at least one point; got an empty set")
    w = dirichlet_weights(p.shape[1], n_weights, rng, alpha) if weights is None else _as_points(weights, p.shape[1])
    return float((w @ p.T).max(1).mean())


def sparsity(points) -> float:
    """Mean squared gap between neighbours of the Pareto front, summed over objectives (lower = denser).

    S = 1/(M-1) * sum_k sum_i (P_k(i) - P_k(i+1))^2 with P_k the front's k-th coordinates sorted, M the front
    size (the PGMORL definition). points: (N, K) -> float; 0.0 when the front has fewer than 2 points.
    """
    front = pareto_front(points)
    if len(front) < 2:
        return 0.0
    gaps = np.diff(np.sort(front, axis=0), axis=0)
    return float((gaps**2).sum() / (len(front) - 1))


def distinct_n(texts: Iterable[str], n: int = 2) -> float:
    """Distinct-n: unique word n-grams / all word n-grams over ``texts`` (whitespace tokens), in [0, 1].

    0.0 when no text has n words. Counted over the whole set, so repeated completions lower it.
    """
    if n < 1:
        raise MoRLError(f"distinct_n needs n >= 1; got n={n}")
    grams = []
    for text in texts:
        words = text.split()
        grams.extend(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_pairwise_distance(vectors) -> float:
    """Mean L2 distance over all unordered pairs of reward vectors in one group. vectors: (G, K) -> float.

    0.0 when the group has fewer than two members (no pair to measure).
    """
    v = _as_points(vectors)
    if len(v) < 2:
        return 0.0
    d = np.sqrt(((v[:, None, :] - v[None, :, :]) ** 2).sum(-1))
    i, j = np.triu_indices(len(v), k=1)
    return float(d[i, j].mean())


def best_per_objective(points) -> np.ndarray:
    """Each objective's best value among the points: (N, K) -> (K,), zeros when there are no points.

    With one objective per group of users (``task=personas``) and the points being k samples for one prompt, entry
    j is how satisfied group j is when it is served the best of the k for it: that group's best@k on this prompt."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2:
        raise MoRLError(f"points must have shape (N, K); got an array of shape {p.shape}")
    return p.max(0) if len(p) else np.zeros(p.shape[1])


def worst_off(scores) -> float:
    """Max-min fairness: the score of the worst-off objective (group). scores: (K,) -> float; NaN for K = 0."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    return float(s.min()) if s.size else float("nan")
