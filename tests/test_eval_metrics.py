"""eval's k-metrics as expectations over random k-subsets (against a brute force over every subset), the stated
hypervolume reference, the intervals over prompts, and the size caps."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import bootstrap
from typer.testing import CliRunner

from mo_rl.analysis import evaluate as ev
from mo_rl.analysis.evaluate import (expected_max_of_k, interval, resolve_hv_ref, search_metrics, subsets)
from mo_rl.analysis.pareto import distinct_n, hypervolume, mean_pairwise_distance
from mo_rl.cli import app
from mo_rl.errors import MoRLError


def _brute(r, valid, texts, w, k, lambdas, solved, ref):
    """Every metric averaged over all k-subsets of each prompt's n completions, straight from the definitions."""
    P, n, _, K = r.shape
    out = {m: [] for m in ("w", "d", "pass", "hv", "obj", "d2", "spread")}
    for p in range(P):
        acc = {m: [] for m in out}
        for sub in itertools.combinations(range(n), k):
            pts = np.array([r[p, j, m] for j in sub for m in range(r.shape[2]) if valid[p, j, m]]).reshape(-1, K)
            best = (lambda u: float((pts @ u).max()) if len(pts) else 0.0)
            acc["w"].append(best(w))
            acc["d"].append(np.mean([best(lam) for lam in lambdas]))
            acc["pass"].append(float(any(solved[p, j] for j in sub)))
            acc["hv"].append(hypervolume(pts, ref=ref))
            acc["obj"].append(pts.max(0) if len(pts) else np.zeros(K))
            acc["d2"].append(distinct_n([" ".join(texts[p][j]) for j in sub], 2))
            acc["spread"].append(mean_pairwise_distance(pts) if len(pts) else 0.0)
        for m in out:
            out[m].append(np.mean(acc[m], axis=0))
    return {m: np.array(v) for m, v in out.items()}


@pytest.mark.parametrize("case", range(6))
def test_every_k_metric_equals_the_mean_over_all_k_subsets(case):
    rng = np.random.default_rng(case)
    P, n, M, K = 3, int(rng.integers(2, 7)), int(rng.integers(1, 3)), int(rng.integers(1, 4))
    r = rng.choice([0.0, 0.25, 0.5, 1.0], size=(P, n, M, K))  # ties on purpose
    valid = rng.random((P, n, M)) > 0.25
    texts = [["".join(rng.choice(list("abc"), size=4)) for _ in range(n)] for _ in range(P)]
    w = rng.dirichlet(np.ones(K))
    lambdas = rng.dirichlet(np.ones(K), size=5)
    solved = rng.random((P, n)) > 0.6
    ref = [-0.1] * K
    for k in range(1, n + 1):
        got = search_metrics(r, valid, texts, w, k, lambdas, solved=solved, hv_ref=ref)
        want = _brute(r, valid, texts, w, k, lambdas, solved, ref)
        pp = got["per_prompt"]
        np.testing.assert_allclose(pp["best_at_k_weighted"], want["w"], atol=1e-12)
        np.testing.assert_allclose(pp["best_at_k_dirichlet"], want["d"], atol=1e-12)
        np.testing.assert_allclose(pp["pass_at_k"], want["pass"], atol=1e-12)
        np.testing.assert_allclose(pp["hypervolume"], want["hv"], atol=1e-12)  # C(n, k) <= 20: every subset
        np.testing.assert_allclose(pp["best_at_k_per_objective"], want["obj"], atol=1e-12)
        np.testing.assert_allclose(pp["distinct_2"], want["d2"], atol=1e-12)
        np.testing.assert_allclose(pp["reward_spread"], want["spread"], atol=1e-12)
        assert got["best_at_k_weighted"] == pytest.approx(want["w"].mean())
        assert got["best_at_k_per_objective"] == pytest.approx(want["obj"].mean(0).tolist())
        assert got["worst_off_at_k"] == pytest.approx(want["obj"].mean(0).min())
        np.testing.assert_allclose(pp["worst_off_at_k"], want["obj"].min(1), atol=1e-12)


def test_expected_max_hand_case():
    # values 1, 2, 3, 4 (n = 4), k = 2: the max of a pair is 2 once, 3 twice, 4 three times over C(4, 2) = 6 pairs
    assert expected_max_of_k([4.0, 1.0, 3.0, 2.0], 2) == pytest.approx((2 + 3 * 2 + 4 * 3) / 6)
    assert expected_max_of_k([4.0, 1.0, 3.0, 2.0], 1) == pytest.approx(2.5)
    assert expected_max_of_k([4.0, 1.0, 3.0, 2.0], 4) == pytest.approx(4.0)
    # -inf: a completion that wrote no answer; a pair of two such is worth 0, any other pair its finite max
    assert expected_max_of_k([-np.inf, -np.inf, -0.5], 2) == pytest.approx((0 - 0.5 - 0.5) / 3)
    with pytest.raises(MoRLError, match="k=5"):
        expected_max_of_k([1.0, 2.0], 5)


def test_unbiased_best_of_k_uses_all_samples_not_the_first_k():
    """Today's definition took the first k samples: here the first is the worst, and k=1 must be the mean."""
    r = np.array([0.0, 1.0, 1.0, 1.0]).reshape(1, 4, 1, 1)
    got = search_metrics(r, np.ones((1, 4, 1), bool), [["a"] * 4], np.ones(1), 1, np.ones((1, 1)))
    assert got["best_at_k_weighted"] == got["best_at_k_dirichlet"] == pytest.approx(0.75)


def test_hypervolume_with_the_stated_reference_hand_case():
    # one prompt, two samples (1, 0) and (0, 1): with the origin as reference they enclose nothing; with -0.1 each is
    # a 1.1 x 0.1 box, overlapping in 0.1 x 0.1: 0.11 + 0.11 - 0.01 = 0.21; k=1: one box, 0.11
    r = np.array([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    valid, texts, lam, w = np.ones((1, 2, 1), bool), [["a", "b"]], np.eye(2), np.array([0.5, 0.5])
    assert search_metrics(r, valid, texts, w, 2, lam, hv_ref=[0.0, 0.0])["hypervolume"] == 0.0
    assert search_metrics(r, valid, texts, w, 2, lam)["hypervolume"] == pytest.approx(0.21)
    assert search_metrics(r, valid, texts, w, 1, lam)["hypervolume"] == pytest.approx(0.11)
    assert search_metrics(r, valid, texts, w, 2, lam, hv_ref=-0.5)["hypervolume"] == pytest.approx(
        1.5 * 0.5 * 2 - 0.25)
    assert resolve_hv_ref(None, 3) == [-0.1, -0.1, -0.1] and resolve_hv_ref([-1, -2], 2) == [-1.0, -2.0]
    with pytest.raises(MoRLError, match="one per objective"):
        resolve_hv_ref([-1, -2], 3)


def test_subsets_all_when_few_else_seeded_random():
    assert subsets(4, 2, seed=0).tolist() == [list(c) for c in itertools.combinations(range(4), 2)]
    many = subsets(12, 5, seed=3)  # C(12, 5) = 792 > SUBSETS
    assert many.shape == (ev.SUBSETS, 5) and all(len(set(row)) == 5 for row in many.tolist())
    assert (many == subsets(12, 5, seed=3)).all() and not (many == subsets(12, 5, seed=4)).all()
    assert math.comb(12, 5) > ev.SUBSETS


def test_interval_is_scipys_percentile_bootstrap_and_constant_is_a_point():
    x = np.array([0.1, 0.4, 0.35, 0.8, 0.0, 0.55, 0.2])
    res = bootstrap((x,), np.mean, n_resamples=ev.BOOTSTRAP_RESAMPLES, method="percentile",
                    rng=np.random.default_rng(ev.BOOTSTRAP_SEED))
    lo, hi = interval(x)
    assert (lo, hi) == (res.confidence_interval.low, res.confidence_interval.high)
    assert x.min() < lo < x.mean() < hi < x.max()
    assert interval([0.5, 0.5, 0.5]) == [0.5, 0.5] and interval([None, None]) is None
    # worst-off: objective 0 is below objective 1 on every prompt, so the lowest mean is always objective 0's
    per_obj = np.stack([x, x + 1], axis=1)
    wlo, whi = interval(per_obj, ev._min_of_means)
    assert wlo == pytest.approx(lo) and whi == pytest.approx(hi)


def test_search_metrics_writes_per_prompt_and_ci_for_every_scalar_metric():
    rng = np.random.default_rng(0)
    r = rng.random((5, 4, 1, 2))
    got = search_metrics(r, np.ones((5, 4, 1), bool), [["ab cd"] * 4] * 5, np.array([0.5, 0.5]), 2,
                         np.eye(2))
    assert list(got)[:2] == ["k", "best_at_k_weighted"]
    for m in ev.SCALAR_METRICS:
        assert len(got["per_prompt"][m]) == 5
        if m == "pass_at_k":
            assert got[m] is None and got["ci"][m] is None and got["per_prompt"][m] == [None] * 5
        else:
            lo, hi = got["ci"][m]
            assert lo <= got[m] <= hi, m
    assert np.array(got["per_prompt"]["best_at_k_per_objective"]).shape == (5, 2)


@pytest.mark.parametrize("args, needle", [
    (["--k", "200000"], "--k 200000 x --prompts 32 is beyond what one eval can hold in memory"),
    (["--k", "16", "--prompts", "100000000"], "--k 16 x --prompts 100000000 is beyond"),
    (["--prompts", "0"], "--prompts=0 must be >= 1"),
    (["--k", "0,4"], "must be integers >= 1"),
    (["--hv-ref", "low"], "--hv-ref 'low' must be a number"),
])
def test_eval_size_caps_and_bad_values_are_one_line(tmp_path, args, needle):
    out = CliRunner().invoke(app, ["eval", str(tmp_path), *args])
    assert out.exit_code == 2 and needle in out.output, out.output
    assert len(out.output.strip().splitlines()) == 1 and "Traceback" not in out.output


def test_eval_help_states_the_interval_method():
    out = CliRunner().invoke(app, ["eval", "--help"])
    text = " ".join(out.output.split())
    assert "95% interval over prompts: percentile bootstrap (scipy.stats.bootstrap, " \
        f"{ev.BOOTSTRAP_RESAMPLES} resamples, fixed seed)" in text, text
