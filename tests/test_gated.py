"""Gated: failed rollouts never positive, passing ones ranked by the inner method alone, group accept/reject."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from mo_rl.advantages import compute, compute_with_diagnostics
from tests.reference_loops_vpo import REFERENCES
from mo_rl.errors import MoRLError

T = torch.tensor
NAMES = ["correct", "short", "safe"]


def _batch(seed: int, B: int = 4, G: int = 8, K: int = 3, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(B, G, K, generator=gen, dtype=dtype), torch.rand(B, G, generator=gen) > 0.2


def test_rollout_level_by_hand():
    # objective 1 is the gate (>= 0.5 passes): rollouts 0, 1 pass; 3 fails with the best quality and stays below
    r = T([[[0.2, 1.0], [0.8, 1.0], [0.5, 0.0], [0.9, 0.0]]])
    a = compute("gated", r, objectives=["quality", "safe"], gates=["safe"], inner="grpo")
    # q = 1/2, s = 1/2: gate +1 / -1; grpo on the two passers -1 / +1 (no shrink needed: 2 s max|A| <= 1)
    assert_close(a, T([[0.0, 2.0, -1.0, -1.0]]), atol=1e-5, rtol=0)


def test_rollout_level_shrinks_inner_to_keep_the_gap():
    # 3 of 4 pass: q = 3/4, s = sqrt(3)/4; grpo on passers (-0.707, -0.707, 1.414) exceeds 1/(2s) = 1.155,
    # so it is scaled by d = 1.155 / 1.414: passers 0.577 - 0.577, 0.577 + 1.155; the failer -q/s = -sqrt(3)
    r = T([[[0.0, 1.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]]])
    a = compute("gated", r, gates=[1], inner="grpo", inner_options={"eps": 0.0})
    assert_close(a, T([[0.0, 0.0, 3**0.5, -(3**0.5)]]), atol=1e-5, rtol=0)


def test_all_fail_group_is_zero_and_all_pass_group_is_inner():
    r = T([[[0.1, 0.0], [0.9, 0.2], [0.4, 0.0]], [[0.1, 1.0], [0.9, 0.7], [0.4, 0.6]]])
    a = compute("gated", r, gates=[1], inner="dvao")
    assert (a[0] == 0).all()
    assert_close(a[1], compute("dvao", r, T([1.0, 0.0]))[1])


@pytest.mark.parametrize("inner", ["grpo", "dvao", "gdpo", "adv_combination", "vpo"])
def test_passing_rollouts_keep_inner_order(inner):
    r, m = _batch(1)
    w = T([0.2, 0.3, 0.5])
    gen = torch.Generator().manual_seed(0)
    a = compute("gated", r, w, m, objectives=NAMES, gates=["correct"], thresholds=[0.4], inner=inner, generator=gen)
    passed = m & (r[..., 0] >= 0.4)
    want = compute(inner, r, T([0.0, 0.375, 0.625]), passed, generator=torch.Generator().manual_seed(0))
    for b in range(r.shape[0]):
        p = passed[b]
        if p.sum() >= 2 and want[b][p].std() > 0:  # passers = gate constant + d * inner, d in (0, 1]
            d = (a[b][p] - a[b][p].mean()) / (want[b][p] - want[b][p].mean())
            ok = (want[b][p] - want[b][p].mean()).abs() > 1e-4
            assert_close(d[ok], d[ok][:1].expand(int(ok.sum())), atol=1e-4, rtol=1e-4)
            assert 0 < float(d[ok][0]) <= 1 + 1e-5
    assert (a[m & ~passed] <= 0).all() and (a[~m] == 0).all()


def test_group_level_accept_and_reject():
    r = torch.zeros(2, 4, 2)
    r[..., 0] = T([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    r[0, :, 1] = T([1.0, 1.0, 0.0, 1.0])  # 3 of 4 pass: accepted
    r[1, :, 1] = T([1.0, 0.0, 0.0, 0.0])  # 1 of 4 pass: rejected
    a = compute("gated", r, gates=[1], gate_level="group", inner="grpo")
    assert_close(a[0], compute("grpo", r[:1], T([1.0, 0.0]))[0])  # scored as is, failed rollout included
    assert (a[1] == 0).all()
    a = compute("gated", r, gates=[1], gate_level="group", inner="grpo", accept_frac=0.25)
    assert (a[1] != 0).any()
    a = compute("gated", r, gates=[1], gate_level="group", inner="grpo", accept_frac=1.0)
    assert (a == 0).all()


def test_gates_by_name_equal_gates_by_index():
    r, m = _batch(2)
    kw = dict(thresholds=[0.3, 0.6], inner="dvao")
    by_name = compute("gated", r, None, m, objectives=NAMES, gates=["safe", "correct"], **kw)
    assert_close(by_name, compute("gated", r, None, m, gates=[2, 0], **kw))


def test_no_gates_is_the_inner_method():
    r, m = _batch(3)
    for inner in ("dvao", "grpo"):
        assert_close(compute("gated", r, None, m, inner=inner), compute(inner, r, None, m))
    opts = {"adv_norm": "batch_std"}
    assert_close(compute("gated", r, None, m, inner="grpo", inner_options=opts), compute("grpo", r, None, m, **opts))


def test_multi_answer_rewards():
    gen = torch.Generator().manual_seed(4)
    r = torch.rand(3, 5, 2, 3, generator=gen)
    m = torch.rand(3, 5, 2, generator=gen) > 0.2
    a = compute("gated", r, None, m, gates=[2], inner="vpo")
    mean = torch.where(m.unsqueeze(-1), r, 0.0).sum(2) / m.sum(2, keepdim=True).clamp_min(1)
    passed = m.any(-1) & (mean[..., 2] >= 0.5)  # gated on each rollout's answer mean
    inner = compute("vpo", r, T([0.5, 0.5, 0.0]), m & passed.unsqueeze(-1))  # the inner method gets the answers
    from mo_rl.advantages.gated import lexicographic
    assert_close(a, lexicographic(passed, m.any(-1), inner))
    assert (a[m.any(-1) & ~passed] <= 0).all()


@pytest.mark.parametrize("level", ["rollout", "group"])
@pytest.mark.parametrize("inner", ["dvao", "gdpo", "vpo"])
def test_batched_equals_reference(level, inner):
    for seed in range(3):
        r, m = _batch(20 + seed, B=5, G=6, dtype=torch.float64)
        kw = dict(objectives=NAMES, gates=["safe", 1], thresholds=[0.3, 0.2], gate_level=level, inner=inner,
                  accept_frac=0.6)
        got = compute("gated", r, None, m, generator=torch.Generator().manual_seed(seed), **kw)
        want = REFERENCES["gated"](r, None, m, generator=torch.Generator().manual_seed(seed), **kw)
        assert_close(got, want)


def test_diagnostics():
    r = T([[[1.0, 0.9], [1.0, 0.1], [0.0, 0.6], [0.0, 0.0]]])
    _, d = compute_with_diagnostics("gated", r, objectives=["acc", "safe"], gates=["safe"], inner="grpo")
    assert d["gated/pass_rate"] == 0.5 and d["gated/pass_rate/safe"] == 0.5
    r3 = torch.cat([r, torch.rand(1, 4, 1)], -1)
    _, d = compute_with_diagnostics("gated", r3, objectives=["acc", "safe", "len"], gates=["acc", "safe"],
                                    gate_level="group", inner="dvao")
    assert d["gated/pass_rate"] == 0.25 and d["gated/pass_rate/acc"] == 0.5
    assert d["gated/frac_groups_accepted"] == 0.0
    assert_close(d["dvao/weight"], T([0.0, 0.0, 0.0]))  # nothing accepted: the inner method saw no group
    assert compute_with_diagnostics("gated", r, inner="grpo")[1] == {"gated/pass_rate": 1.0}


@pytest.mark.parametrize("kw, msg", [
    (dict(gates=["acc", "safe"], objectives=["acc", "safe"]), "every objective with weight > 0 is a gate"),
    (dict(gates=[0], reject_advantage=-1.0), "unknown option 'reject_advantage'"),
    (dict(gates=["nope"], objectives=["acc", "safe"]), "unknown gate objective 'nope'"),
    (dict(gates=["acc"]), "no objective names"),
    (dict(gates=[5]), "index"),
    (dict(gates=[0, 0]), "twice"),
    (dict(gates=[0], thresholds=[0.5, 0.5]), "one per gate"),
    (dict(gate_level="batch"), "gate_level"),
    (dict(accept_frac=1.5), "accept_frac"),
    (dict(inner="gated"), "wrapper"),
    (dict(inner="nope"), "unknown method"),
    (dict(inner="grpo", inner_options={"alpha": 1.0}), "unknown option 'alpha'"),
])
def test_bad_input(kw, msg):
    with pytest.raises(MoRLError, match=msg):
        compute("gated", torch.rand(2, 3, 2), **kw)


@st.composite
def cases(draw):
    """Rewards on a grid of quarters (pass/fail and ties are clear-cut), scaled; any mask, gates, inner, level."""
    B, G, K = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(2, 3))
    grid = draw(st.lists(st.integers(0, 4), min_size=B * G * K, max_size=B * G * K))
    r = torch.tensor(grid, dtype=torch.float64).reshape(B, G, K) / 4
    m = torch.tensor(draw(st.lists(st.booleans(), min_size=B * G, max_size=B * G))).reshape(B, G)
    m |= draw(st.booleans())  # often fully valid
    gates = draw(st.lists(st.integers(0, K - 2), min_size=1, max_size=K - 1, unique=True))
    opts = dict(gates=gates, inner=draw(st.sampled_from(["grpo", "dvao", "gdpo", "adv_combination", "vpo"])),
                gate_level=draw(st.sampled_from(["rollout", "group"])),
                accept_frac=draw(st.sampled_from([0.0, 0.5, 1.0])),
                inner_options={"eps": draw(st.sampled_from([1e-6, 0.0]))})
    return r, m, opts, draw(st.sampled_from([torch.float32, torch.float64]))


def _gated(r, m, opts, seed=0):
    return compute("gated", r, None, m, generator=torch.Generator().manual_seed(seed), **opts)


def _inner_on_passers(r, m, opts, seed=0):
    K, gates = r.shape[-1], opts["gates"]
    w = torch.tensor([0.0 if k in gates else 1.0 for k in range(K)], dtype=r.dtype)
    passed = m & (r[..., gates] >= 0.5).all(-1)
    return compute(opts["inner"], r, w, passed, generator=torch.Generator().manual_seed(seed),
                   **opts["inner_options"]), passed


PROPS = settings(max_examples=80, deadline=None, derandomize=True)


@PROPS
@given(cases())
def test_property_a_every_passer_above_every_failer(case):
    r, m, opts, dtype = case
    opts["gate_level"] = "rollout"
    a = _gated(r.to(dtype), m, opts)
    _, passed = _inner_on_passers(r, m, opts)
    for b in range(r.shape[0]):
        fails = m[b] & ~passed[b]
        if passed[b].any() and fails.any():
            assert float(a[b][passed[b]].min()) > float(a[b][fails].max()) + 0.5  # gap >= 1/(2s) >= 1


@PROPS
@given(cases())
def test_property_b_passers_in_the_inner_order(case):
    r, m, opts, dtype = case
    opts["gate_level"] = "rollout"
    a = _gated(r.to(dtype), m, opts)
    inner, passed = _inner_on_passers(r.to(dtype), m, opts)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    for b in range(r.shape[0]):
        x, y = a[b][passed[b]], inner[b][passed[b]]
        above = y.unsqueeze(1) > y.unsqueeze(0) + tol
        assert bool((x.unsqueeze(1) > x.unsqueeze(0))[above].all())
        tied = (y.unsqueeze(1) - y.unsqueeze(0)).abs() <= tol * 1e-3
        assert bool(((x.unsqueeze(1) - x.unsqueeze(0)).abs() <= 10 * tol)[tied].all())


@PROPS
@given(cases())
def test_property_c_a_failure_is_never_positive(case):
    r, m, opts, dtype = case
    opts["gate_level"] = "rollout"
    a = _gated(r.to(dtype), m, opts)
    _, passed = _inner_on_passers(r, m, opts)
    assert (a[m & ~passed] <= 0).all()
    mixed = (passed.any(1, keepdim=True) & (m & ~passed)).expand_as(m) & m & ~passed
    assert (a[mixed] < 0).all()  # where a sibling passed, a failure is pushed down


@PROPS
@given(cases())
def test_property_d_no_gate_signal_in_all_fail_or_all_pass_groups(case):
    r, m, opts, dtype = case
    opts["gate_level"] = "rollout"
    r = r.to(dtype)
    a = _gated(r, m, opts)
    inner, passed = _inner_on_passers(r, m, opts)
    all_fail = ~passed.any(1)
    all_pass = (passed == m).all(1) & m.any(1)
    assert (a[all_fail] == 0).all()
    assert_close(a[all_pass], inner[all_pass])


@PROPS
@given(cases())
def test_property_e_finite_and_masked_zero(case):
    r, m, opts, dtype = case
    for scale in (1e-6, 1.0, 1e6):
        a = _gated((r * scale).to(dtype), m, opts)
        assert a.shape == r.shape[:2] and a.dtype == dtype and torch.isfinite(a).all()
        assert (a[~m] == 0).all()


@PROPS
@given(cases())
def test_property_group_level_rejects_to_zero(case):
    r, m, opts, dtype = case
    opts["gate_level"] = "group"
    a = _gated(r.to(dtype), m, opts)
    _, passed = _inner_on_passers(r, m, opts)
    frac = passed.sum(1) / m.sum(1).clamp_min(1)
    assert (a[frac < opts["accept_frac"]] == 0).all() and torch.isfinite(a).all() and (a[~m] == 0).all()
