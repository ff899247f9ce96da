"""Batched estimators == the per-group loop references (tests/reference_loops.py) on seeded random batches.

Every method with a reference x adv_norm x std_unbiased x dtype, on batches that hold the awkward groups: fully
masked, one valid rollout, flat (all rewards equal), one objective flat, and integer rewards full of ties.
"""

import inspect

import pytest
import torch
from torch.testing import assert_close

import mo_rl.advantages as A
from tests.reference_loops import REFERENCES

TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}
NORMS = ("group", "batch_std", "none")
SCALAR = ("grpo", "grpo_no_std", "adv_combination", "gdpo", "dvao")


def batch(kind: str, dtype, seed: int, B: int = 24, G: int = 8, K: int = 3):
    """(rewards, normalized weights, mask) with the special groups in the first rows."""
    g = torch.Generator().manual_seed(seed)
    if kind == "ints":  # small integers and dyadic weights: ties everywhere, but every weighted sum exact
        r = torch.randint(0, 3, (B, G, K), generator=g).to(dtype)
        w = torch.tensor([1.0, 1.0, 2.0][:K], dtype=dtype)
    else:
        r = (torch.randn(B, G, K, generator=g) * torch.tensor([1.0, 5.0, 0.1][:K])).to(dtype)
        w = torch.rand(K, generator=g).to(dtype) + 0.1
    mask = torch.rand(B, G, generator=g) > 0.25
    mask[0] = False  # fully masked group
    mask[1] = False
    mask[1, 3] = True  # one valid rollout
    r[2] = r[2, 0]  # flat group
    mask[2] = True
    r[3, :, 0] = r[3, 0, 0]  # objective 0 flat in this group
    mask[4] = True  # a full group
    mask[5, :2] = True  # a group with exactly 2 valid rollouts
    mask[5, 2:] = False
    return r, w / w.sum(), mask


def call(fn, r, w, m, opts, seed=0):
    """Call fn with the options and runtime context it declares (a fresh seeded generator, objective names)."""
    params = inspect.signature(fn).parameters
    ctx = {"generator": torch.Generator().manual_seed(seed), "objectives": [f"o{k}" for k in range(r.shape[-1])]}
    kwargs = {k: v for k, v in {**opts, **ctx}.items() if k in params}
    return fn(r, w, m, **kwargs)


def options(method, adv_norm, std_unbiased):
    allowed = A.get(method).options()
    opts = {"adv_norm": adv_norm, "std_unbiased": std_unbiased}
    return {k: v for k, v in opts.items() if k in allowed}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", ["randn", "ints"])
@pytest.mark.parametrize("method", sorted(REFERENCES))
def test_batched_equals_reference(method, kind, dtype):
    B = 24 if method in SCALAR else 8  # vpo's loop reference is slow; 8 rows still hold every special group
    r, w, m = batch(kind, dtype, seed=sum(map(ord, method + kind)), B=B)
    combos = {tuple(options(method, n, u).items()) for n in NORMS for u in (False, True)}
    for opts in map(dict, sorted(combos)):
        got = call(A.get(method).fn, r, w, m, opts)
        want = call(REFERENCES[method], r, w, m, opts)
        assert got.shape == (B, 8) and got.dtype == dtype
        assert_close(got, want, **TOL[dtype], msg=lambda s: f"{method} {opts}: {s}")
        assert bool((got[~m] == 0).all()), f"{method} {opts}: masked rollouts must be exactly 0"


@pytest.mark.parametrize("method", ["grpo", "adv_combination", "gdpo", "dvao"])
def test_reference_matches_on_special_groups_exactly_zero(method):
    """The awkward groups are exactly 0 in both versions (not merely close)."""
    r, w, m = batch("randn", torch.float64, seed=7)
    for fn in (A.get(method).fn, REFERENCES[method]):
        out = fn(r, w, m)
        assert bool((out[:3] == 0).all()), method  # fully masked, one valid, flat


def test_compute_equals_reference_with_unnormalized_weights():
    """compute() normalizes raw weights; the reference takes them normalized. Both must agree."""
    r, w, m = batch("randn", torch.float64, seed=3)
    raw = w * 7.0
    for method in ("grpo", "adv_combination", "gdpo", "dvao"):
        assert_close(A.compute(method, r, raw, m), REFERENCES[method](r, w, m), **TOL[torch.float64])


def test_larger_batch_reference_agreement():
    """A bigger batch (more groups than the special rows) with G=16, K=2, float32."""
    r, w, m = batch("randn", torch.float32, seed=11, B=64, G=16, K=2)
    for method in ("grpo", "grpo_no_std", "adv_combination", "gdpo", "dvao"):
        assert_close(A.get(method).fn(r, w, m), REFERENCES[method](r, w, m), **TOL[torch.float32])
