"""Gated: failed rollouts never positive, passing ones ranked by the inner method alone, group accept/reject."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from mo_rl.advantages import compute, diagnose
from tests.reference_loops_vpo import REFERENCES
from mo_rl.errors import MoRLError

T = torch.tensor
NAMES = ["correct", "short", "safe"]


def _batch(seed: int, B: int = 4, G: int = 8, K: int = 3, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(B, G, K, generator=gen, dtype=dtype), torch.rand(B, G, generator=gen) > 0.2


def test_rollout_level_by_hand():
    # objective 2 is the gate (>= 0.5 passes); rollouts 1 and 3 fail it
    r = T([[[1.0, 0.0, 0.9], [1.0, 1.0, 0.1], [0.0, 1.0, 0.6], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]])
    a = compute("gated", r, objectives=NAMES, gates=["safe"], inner="grpo")
    assert a[0, 1] == -1.0 and a[0, 3] == -1.0
    passing = T([[True, False, True, False, True]])
    want = compute("grpo", r, T([0.5, 0.5, 0.0]), passing)  # ranked among themselves, the gate out of the sum
    assert_close(a[passing], want[passing])
    assert_close(a[0, [0, 2, 4]].sum(), T(0.0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("inner", ["grpo", "dvao", "gdpo", "adv_combination", "vpo"])
def test_passing_rollouts_equal_inner_on_passing_subset(inner):
    r, m = _batch(1)
    w = T([0.2, 0.3, 0.5])
    a = compute("gated", r, w, m, objectives=NAMES, gates=["correct"], thresholds=[0.4], inner=inner,
                reject_advantage=-0.5)
    passed = m & (r[..., 0] >= 0.4)
    want = compute(inner, r, T([0.0, 0.375, 0.625]), passed)
    assert_close(a[passed], want[passed])
    assert (a[m & ~passed] == -0.5).all() and (a[~m] == 0).all()


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
    want = compute("vpo", r, T([0.5, 0.5, 0.0]), m & passed.unsqueeze(-1))  # the inner method gets the answers
    assert_close(a[passed], want[passed])
    assert (a[m.any(-1) & ~passed] == -1.0).all()


@pytest.mark.parametrize("level", ["rollout", "group"])
@pytest.mark.parametrize("inner", ["dvao", "gdpo", "vpo"])
def test_batched_equals_reference(level, inner):
    for seed in range(3):
        r, m = _batch(20 + seed, B=5, G=6, dtype=torch.float64)
        kw = dict(objectives=NAMES, gates=["safe", 1], thresholds=[0.3, 0.2], gate_level=level, inner=inner,
                  reject_advantage=-2.0, accept_frac=0.6)
        got = compute("gated", r, None, m, generator=torch.Generator().manual_seed(seed), **kw)
        want = REFERENCES["gated"](r, None, m, generator=torch.Generator().manual_seed(seed), **kw)
        assert_close(got, want)


def test_diagnostics():
    r = T([[[1.0, 0.9], [1.0, 0.1], [0.0, 0.6], [0.0, 0.0]]])
    d = diagnose("gated", r, objectives=["acc", "safe"], gates=["safe"], inner="grpo")
    assert d["gated/pass_rate"] == 0.5 and d["gated/pass_rate/safe"] == 0.5
    r3 = torch.cat([r, torch.rand(1, 4, 1)], -1)
    d = diagnose("gated", r3, objectives=["acc", "safe", "len"], gates=["acc", "safe"], gate_level="group",
                 inner="dvao")
    assert d["gated/pass_rate"] == 0.25 and d["gated/pass_rate/acc"] == 0.5
    assert d["gated/frac_groups_accepted"] == 0.0
    assert_close(d["dvao/weight"], T([0.0, 0.0, 0.0]))  # nothing accepted: the inner method saw no group
    assert diagnose("gated", r, inner="grpo") == {"gated/pass_rate": 1.0}


@pytest.mark.parametrize("kw, msg", [
    (dict(gates=["acc", "safe"], objectives=["acc", "safe"]), "every objective with weight > 0 is a gate"),
    (dict(gates=[0], reject_advantage=0.5), "reject_advantage"),
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
    B, G, K = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(2, 3))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(["random", "flat", "binary"]))
    r = {"random": torch.rand(B, G, K, generator=gen), "flat": torch.full((B, G, K), 0.5),
         "binary": (torch.rand(B, G, K, generator=gen) > 0.5).float()}[kind]
    m = torch.rand(B, G, generator=gen) < draw(st.sampled_from([0.0, 0.6, 1.0]))
    gates = draw(st.lists(st.integers(0, K - 2), max_size=K - 1, unique=True))
    opts = dict(gates=gates, inner=draw(st.sampled_from(["grpo", "dvao", "gdpo", "vpo"])),
                gate_level=draw(st.sampled_from(["rollout", "group"])),
                reject_advantage=draw(st.sampled_from([-1.0, -0.1, 0.0])),
                accept_frac=draw(st.sampled_from([0.0, 0.5, 1.0])))
    return r * draw(st.sampled_from([1e-6, 1.0, 1e6])), m, opts


@settings(max_examples=60, deadline=None)
@given(cases())
def test_properties(case):
    r, m, opts = case
    a = compute("gated", r, None, m, **opts)
    assert a.shape == r.shape[:2] and a.dtype == r.dtype and torch.isfinite(a).all()
    assert (a[~m] == 0).all()
    gates = opts["gates"]
    failed = m & ~(r[..., gates] >= 0.5).all(-1)
    if opts["gate_level"] == "rollout":
        assert (a[failed] == opts["reject_advantage"]).all() and (a[failed] <= 0).all()
    else:  # rejected groups get 0; an accepted group is scored as is (the spec), failures included
        frac = (m & ~failed).sum(1) / m.sum(1).clamp_min(1)
        assert (a[frac < opts["accept_frac"]] == 0).all()
