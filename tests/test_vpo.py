"""VPO: hand-made reward sets, hand-computed set scores, the loop reference, and hypothesis properties."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from mo_rl.advantages import compute, compute_with_diagnostics
from tests.reference_loops_vpo import REFERENCES, shapley_brute_force
from mo_rl.advantages.vpo import sample_weightings, set_scores, shapley_credit
from mo_rl.errors import MoRLError

T = torch.tensor


def test_corners_beat_the_middle():
    # rollout 0 covers both corners, rollout 1 sits twice in the middle: max_j lambda . r_j favours rollout 0
    r = T([[[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.5], [0.5, 0.5]]]])
    a = compute("vpo", r)
    assert a[0, 0] > 0 > a[0, 1]
    lam = sample_weightings(T([0.5, 0.5]), 1, 64, 1.0)
    s, _, _ = set_scores(r, torch.ones(1, 2, 2, dtype=torch.bool), lam)
    assert_close(s[0, 1], T(0.5))
    assert_close(s[0, 0], lam[0].amax(-1).mean())  # the corner set scores mean_d max_k lambda_dk > 0.5


def test_set_score_by_hand():
    # answers (0.2, 0.8), (0.6, 0.4); lambda (1, 0): max(0.2, 0.6) = 0.6; lambda (1/4, 3/4): max(0.65, 0.45) = 0.65
    r = T([[[[0.2, 0.8], [0.6, 0.4]]]])
    lam = T([[[1.0, 0.0], [0.25, 0.75]]])
    s, valid, win = set_scores(r, torch.ones(1, 1, 2, dtype=torch.bool), lam)
    assert_close(s, T([[0.625]]))
    assert win.tolist() == [[[1, 0]]] and valid.all()


def test_single_answer_leave_one_out_by_hand():
    # lambda (1, 0): scores 1, 0, 0.4 -> rollout 0 gains 1 - 0.4; lambda (1/2, 1/2): 0.5, 0.5, 0.4 -> a tie, no gain
    r = T([[[1.0, 0.0], [0.0, 1.0], [0.4, 0.4]]])
    lam = T([[[1.0, 0.0], [0.5, 0.5]]])
    s, _, win = set_scores(r, torch.ones(1, 3, dtype=torch.bool), lam, credit="loo")
    assert_close(s, T([[0.3, 0.0, 0.0]]))
    assert win[0, 0] == 0


def test_single_answer_shapley_by_hand():
    # lambda (1, 0): u = (1, 0, .4) sorted (0, .4, 1): phi = (0, .4/2, .4/2 + .6/1) -> (0.8, 0, 0.2)
    # lambda (1/2, 1/2): u = (.5, .5, .4): phi_(2) = phi_(3) = .1/2 -> (0.05, 0.05, 0); mean over the two
    r = T([[[1.0, 0.0], [0.0, 1.0], [0.4, 0.4]]])
    lam = T([[[1.0, 0.0], [0.5, 0.5]]])
    s, _, _ = set_scores(r, torch.ones(1, 3, dtype=torch.bool), lam)
    assert_close(s, T([[0.425, 0.025, 0.1]]))


def test_shapley_worked_case_of_the_spec():
    # one weighting, n=8, u = (1, 1, .5, .5, 0, 0, 0, 0) -> phi = (.375, .375, .125, .125, 0, 0, 0, 0)
    u = T([[1.0, 1.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0]]).unsqueeze(-1)
    phi = shapley_credit(u, torch.ones(1, 8, dtype=torch.bool))[..., 0]
    assert_close(phi, T([[0.375, 0.375, 0.125, 0.125, 0.0, 0.0, 0.0, 0.0]]))


def test_tied_top_group_gets_signal_under_shapley_not_loo():
    # the group: [(1,1), (1,1), (1,0), (0,1), (0,0) x 4]; loo gives 0 everywhere, shapley ranks like grpo
    r = T([[[1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]] + [[0.0, 0.0]] * 4])
    loo = compute("vpo", r, credit="loo")
    assert torch.equal(loo, torch.zeros_like(loo))
    a = compute("vpo", r)
    assert a[0, 0] == a[0, 1] > a[0, 2] > a[0, 4] and a[0, 3] > a[0, 4]
    assert_close(a[0, 4:], a[0, 4].expand(4)) and a[0, 4] < 0
    assert (a != 0).all()


@pytest.mark.parametrize("seed", range(6))
def test_shapley_equals_brute_force_coalitions(seed):
    # random small groups with ties, masks and ragged sizes, against the enumeration over coalitions
    gen = torch.Generator().manual_seed(seed)
    G = 2 + seed % 5
    u = (torch.randint(0, 4, (3, G, 5), generator=gen) / 3.0).double()  # coarse values: many ties
    m = torch.rand(3, G, generator=gen) > 0.25
    phi = shapley_credit(u, m)
    for b in range(3):
        idx = [g for g in range(G) if bool(m[b, g])]
        for d in range(5):
            want = shapley_brute_force([float(u[b, g, d]) for g in idx]) if idx else []
            assert_close(phi[b, idx, d], T(want, dtype=torch.float64)) if idx else None
            assert (phi[b, ~m[b], d] == 0).all()
            if len(idx) >= 1:  # efficiency: the credits add up to max - min of the valid values
                vals = u[b, idx, d]
                assert float(phi[b, idx, d].sum()) == pytest.approx(float(vals.max() - vals.min()))


def test_unknown_credit_is_one_line():
    with pytest.raises(MoRLError, match="unknown vpo credit 'nope'; allowed: shapley, loo"):
        compute("vpo", torch.rand(2, 4, 2), credit="nope")


def test_rollout_best_for_no_weighting_is_lowest():
    # (0.4, 0.4) is below max(lambda_1, lambda_2) >= 0.5 for every lambda: it never wins and ranks last
    r = T([[[1.0, 0.0], [0.0, 1.0], [0.4, 0.4], [0.9, 0.1]]])
    a = compute("vpo", r, num_weightings=256)
    assert a[0, 2] == a[0].min() and a[0, 2] < a[0, 0] and a[0, 2] < a[0, 1]


def test_masked_answers_ignored():
    gen = torch.Generator().manual_seed(3)
    r = torch.rand(2, 4, 3, 2, generator=gen)
    m = torch.ones(2, 4, 3, dtype=torch.bool)
    m[:, :, 2] = False
    m[1, 3] = False  # a rollout with no valid answer is masked out
    noisy = r.clone()
    noisy[~m] = 1e6
    a = compute("vpo", noisy, mask=m)
    assert_close(a, compute("vpo", r[:, :, :2], mask=m[:, :, :2]))
    assert a[1, 3] == 0


def test_one_answer_is_the_single_answer_case():
    r = torch.rand(3, 5, 2, generator=torch.Generator().manual_seed(0))
    assert_close(compute("vpo", r.unsqueeze(2)), compute("vpo", r))


@pytest.mark.parametrize("answers", [0, 1, 3])
@pytest.mark.parametrize("std_unbiased", [False, True])
@pytest.mark.parametrize("credit", ["shapley", "loo"])
def test_batched_equals_reference(answers, std_unbiased, credit):
    gen = torch.Generator().manual_seed(10 + answers)
    shape = (5, 6, answers, 3) if answers else (5, 6, 3)
    r = torch.rand(*shape, generator=gen, dtype=torch.float64)
    m = torch.rand(shape[:-1], generator=gen) > 0.3
    m[0] = False  # an empty group
    w = T([0.5, 0.0, 0.5], dtype=torch.float64)  # objective 1 out of the Dirichlet
    opts = dict(alpha=0.7, num_weightings=8, std_unbiased=std_unbiased, credit=credit)
    got = compute("vpo", r, w, m, generator=torch.Generator().manual_seed(1), **opts)
    want = REFERENCES["vpo"](r, w, m, generator=torch.Generator().manual_seed(1), **opts)
    assert_close(got, want)


def test_weighting_support_and_determinism():
    lam = sample_weightings(T([0.2, 0.0, 0.8]), 4, 500, 1.0)
    assert lam.shape == (4, 500, 3) and (lam[..., 1] == 0).all()
    assert_close(lam.sum(-1), torch.ones(4, 500))
    assert_close(lam.mean((0, 1)), T([0.5, 0.0, 0.5]), atol=0.03, rtol=0)  # Dirichlet(1, 1): mean 1/2 each
    r = torch.rand(2, 4, 3)
    r2 = r.clone()
    r2[..., 1] = torch.rand(2, 4)  # a weight-0 objective does not change the advantages
    w = T([0.2, 0.0, 0.8])
    assert_close(compute("vpo", r, w), compute("vpo", r2, w))
    assert torch.equal(compute("vpo", r), compute("vpo", r))  # generator=None: a fixed seed
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(compute("vpo", r, generator=g), compute("vpo", r, generator=g))  # fresh draws per call
    state = torch.get_rng_state()
    compute("vpo", r, generator=torch.Generator().manual_seed(5))
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone


def test_compute_entry_point_and_diagnostics():
    a = compute("vpo", torch.rand(4, 8, 3))
    assert a.shape == (4, 8) and torch.isfinite(a).all()
    d = compute_with_diagnostics("vpo", torch.rand(4, 8, 3))[1]
    assert set(d) == {"vpo/set_score", "vpo/frac_rollouts_winning", "vpo/winner_spread"}
    assert 0 < d["vpo/frac_rollouts_winning"] <= 1 and d["vpo/winner_spread"].shape == (3,)
    r = T([[[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.5], [0.5, 0.5]]]])
    d = compute_with_diagnostics("vpo", r)[1]
    assert d["vpo/win_frac/0"] + d["vpo/win_frac/1"] == pytest.approx(1.0)
    # corners: the winners span the whole square; the middle set: one point
    assert_close(d["vpo/winner_spread"], T([0.5, 0.5]))
    assert d["vpo/set_score"] > 0.5


def test_non_vpo_methods_take_the_answer_mean():
    r = torch.rand(3, 4, 2, 2)
    m = torch.ones(3, 4, 2, dtype=torch.bool)
    m[:, 0, 1] = False
    m[2, 1] = False
    mean = torch.where(m.unsqueeze(-1), r, 0.0).sum(2) / m.sum(2, keepdim=True).clamp_min(1)
    assert_close(compute("grpo", r, mask=m), compute("grpo", mean, mask=m.any(-1)))
    assert_close(compute("dvao", r, mask=m[..., 0]), compute("dvao", r.mean(2), mask=m[..., 0]))


@pytest.mark.parametrize("bad, msg", [
    (dict(alpha=0.0), "alpha"), (dict(num_weightings=0), "num_weightings"),
    (dict(mask=torch.ones(2, 3, 5, dtype=torch.bool)), "mask"), (dict(rewards=torch.rand(2, 3)), "rewards")])
def test_bad_input(bad, msg):
    kw = dict(rewards=torch.rand(2, 3, 4, 2)) | bad
    with pytest.raises(MoRLError, match=msg):
        compute("vpo", kw.pop("rewards"), **kw)


@st.composite
def batches(draw):
    B, G = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    M, K = draw(st.integers(0, 3)), draw(st.integers(1, 3))
    shape = (B, G, M, K) if M else (B, G, K)
    scale = draw(st.sampled_from([1e-8, 1.0, 1e8]))
    kind = draw(st.sampled_from(["random", "flat", "binary"]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    r = {"random": torch.rand(shape, generator=gen), "flat": torch.full(shape, 0.3),
         "binary": (torch.rand(shape, generator=gen) > 0.5).float()}[kind] * scale
    m = torch.rand(shape[:-1], generator=gen) < draw(st.sampled_from([0.0, 0.5, 1.0]))
    return r.to(draw(st.sampled_from([torch.float32, torch.float64]))), m


@settings(max_examples=60, deadline=None)
@given(batches())
def test_properties(batch):
    r, m = batch
    a = compute("vpo", r, mask=m, num_weightings=8)
    assert a.shape == r.shape[:2] and a.dtype == r.dtype and a.device == r.device
    assert torch.isfinite(a).all()
    valid = m.any(-1) if r.dim() == 4 else m
    assert (a[~valid] == 0).all()
    assert (a[valid.sum(1) < 2] == 0).all()
    if r.dim() == 3:  # Shapley credit: rollouts with the same reward vector in a group get the same advantage
        same = (r.unsqueeze(2) == r.unsqueeze(1)).all(-1) & m.unsqueeze(2) & m.unsqueeze(1)  # (B, G, G)
        assert torch.equal(torch.where(same, a.unsqueeze(2), 0), torch.where(same, a.unsqueeze(1), 0))
    for v in compute_with_diagnostics("vpo", r, mask=m, num_weightings=8)[1].values():
        assert bool(torch.isfinite(torch.as_tensor(v)).all())
