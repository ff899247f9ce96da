"""Hypothesis properties of the scalar estimators (shared/spec/methods.md), and agreement with TRL's GRPO advantages.

Rewards are drawn on a grid (multiples of 1/4 in [-1, 2], times a scale of 1, 1e-6 or 1e6): ties and flat groups
are frequent, and no two distinct rewards are so close that float rounding decides a sign.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import mo_rl.advantages as A

FAST = settings(derandomize=True, max_examples=60, deadline=None)
SCALAR = ("grpo", "grpo_no_std", "adv_combination", "gdpo", "dvao")
NORMS = ("group", "batch_std", "none")


@st.composite
def batches(draw, min_g=1, max_b=4, max_g=8, max_k=3, scales=(1.0, 1e-6, 1e6), dtypes=(torch.float32, torch.float64)):
    """(rewards (B, G, K), weights (K,) normalized, mask (B, G)) on the reward grid."""
    B, G, K = draw(st.integers(1, max_b)), draw(st.integers(min_g, max_g)), draw(st.integers(1, max_k))
    dtype, scale = draw(st.sampled_from(dtypes)), draw(st.sampled_from(scales))
    grid = draw(st.lists(st.integers(-4, 8), min_size=B * G * K, max_size=B * G * K))
    r = torch.tensor(grid, dtype=torch.float64).reshape(B, G, K) / 4 * scale
    raw = draw(st.lists(st.integers(0, 4), min_size=K, max_size=K).filter(lambda x: sum(x) > 0))
    w = torch.tensor(raw, dtype=dtype)
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=B * G, max_size=B * G))).reshape(B, G)
    mask |= torch.rand(B, G, generator=torch.Generator().manual_seed(G)) < 0.5  # mostly valid
    return r.to(dtype), w / w.sum(), mask


def run(method, r, w, m, **opts):
    allowed = A.get(method).options()
    return A.get(method).fn(r, w, m, **{k: v for k, v in opts.items() if k in allowed})


def tol(x):
    return 1e-3 if x.dtype == torch.float32 else 1e-8


# --- dvao against grpo ------------------------------------------------------------------------------------------
@FAST
@given(batches(), st.booleans())
def test_dvao_is_shrunk_grpo(data, unbiased):
    """Per group dvao = c * grpo with 0 <= c <= 1: same signs and ranking, |dvao| <= |grpo|."""
    r, w, m = data
    dv, gr = run("dvao", r, w, m, std_unbiased=unbiased), run("grpo", r, w, m, std_unbiased=unbiased)
    t = tol(r)
    assert bool((dv.abs() <= gr.abs() + t).all())
    for b in range(r.shape[0]):
        i = int(gr[b].abs().argmax())
        c = float(dv[b, i] / gr[b, i]) if abs(float(gr[b, i])) > t else 0.0
        assert -t <= c <= 1 + t
        assert_close(dv[b], c * gr[b], atol=t, rtol=t)
        strong = gr[b].abs() > t
        assert bool((torch.sign(dv[b][strong]) == torch.sign(gr[b][strong])).all())
        order = gr[b].unsqueeze(1) > gr[b].unsqueeze(0) + t  # i ranked above j by grpo
        assert bool((dv[b].unsqueeze(1) >= dv[b].unsqueeze(0))[order].all())


@FAST
@given(batches(), st.booleans())
def test_dvao_mean_square_at_most_one(data, unbiased):
    r, w, m = data
    dv = run("dvao", r, w, m, std_unbiased=unbiased)
    n = m.sum(1).clamp_min(1)
    assert bool(((dv**2 * m).sum(1) / n <= 1 + tol(r)).all())


@FAST
@given(batches(max_k=4), st.integers(0, 3))
def test_dvao_equals_grpo_when_one_objective_varies(data, k):
    r, w, m = data
    k = k % r.shape[2]
    r = torch.cat([r[:, :1].expand_as(r)[..., :k], r[..., k:k + 1], r[:, :1].expand_as(r)[..., k + 1:]], -1)
    t = tol(r)
    assert_close(run("dvao", r, w, m), run("grpo", r, w, m), atol=t, rtol=t)


# --- every scalar method ----------------------------------------------------------------------------------------
@FAST
@given(batches(), st.sampled_from(SCALAR), st.sampled_from(NORMS), st.booleans())
def test_finite_zero_when_masked_shape_dtype(data, method, adv_norm, unbiased):
    r, w, m = data
    a = run(method, r, w, m, adv_norm=adv_norm, std_unbiased=unbiased)
    assert a.shape == r.shape[:2] and a.dtype == r.dtype
    assert bool(torch.isfinite(a).all())
    assert bool((a[~m] == 0).all())
    few = m.sum(1) < 2
    assert bool((a[few] == 0).all())  # fewer than 2 valid rollouts -> 0
    flat = (r == r[:, :1]).all(-1).all(-1)  # every reward of the group equal -> 0
    assert bool((a[flat] == 0).all())


@FAST
@given(st.sampled_from(SCALAR), st.sampled_from(NORMS), st.sampled_from([1e-6, 1.0, 1e6]),
       st.sampled_from([torch.float32, torch.float64]))
def test_degenerate_batches_are_zero(method, adv_norm, scale, dtype):
    """All-flat, all-masked and G=1 batches: exactly 0, no NaN/inf."""
    w = torch.tensor([0.5, 0.5], dtype=dtype)
    flat = torch.full((3, 5, 2), 0.7 * scale, dtype=dtype)
    ones = torch.ones(3, 5, dtype=torch.bool)
    for r, m in ((flat, ones), (torch.rand(3, 5, 2, dtype=dtype) * scale, ~ones),
                 (torch.rand(3, 1, 2, dtype=dtype) * scale, ones[:, :1])):
        a = run(method, r, w, m, adv_norm=adv_norm)
        assert bool((a == 0).all()), (method, adv_norm, scale)


@FAST
@given(batches(min_g=2, scales=(1.0,)), st.booleans())
def test_grpo_group_mean_zero(data, unbiased):
    r, w, m = data
    a = run("grpo", r, w, m, std_unbiased=unbiased)
    assert_close((a * m).sum(1), torch.zeros(r.shape[0], dtype=r.dtype), atol=tol(r), rtol=0)


@FAST
@given(batches(min_g=2, max_b=6, scales=(1.0,)))
def test_gdpo_batch_std_is_one(data):
    """Over the counted rollouts (groups with >= 2 valid), gdpo's output has population std ~1."""
    r, w, m = data
    counted = m & (m.sum(1, keepdim=True) >= 2)
    a_sum = run("adv_combination", r, w, m)[counted]
    if len(a_sum) < 2 or float(a_sum.abs().max()) < 1e-3:
        return  # everything flat: gdpo is 0 and has no std to check
    a = run("gdpo", r, w, m)[counted]
    assert abs(float(a.std(unbiased=False)) - 1) < 1e-4
    assert abs(float(a.mean())) < tol(r)


# --- TRL --------------------------------------------------------------------------------------------------------
# Transcribed in our words from huggingface/trl (mirror at commit f2cd5771, 2026-07-24),
# trl/trainer/grpo_trainer.py, GRPOTrainer._generate_and_score_completions, and trl/trainer/utils.py, nanstd.
# A rollout whose every reward is None is a NaN row ("unscorable"): it is left out of every mean and std and its
# advantage is forced to 0. TRL's std is Bessel-corrected (NaN for < 2 values; a NaN advantage then becomes 0), its
# division guard a fixed 1e-4, and its weights are used as given (we pass ours normalized).
def _nanstd(x, dim=None):
    """Bessel std ignoring NaNs; NaN when fewer than 2 values."""
    keep = ~torch.isnan(x)
    n = keep.sum(dim=dim, keepdim=dim is not None)
    dev = torch.where(keep, x - torch.nanmean(x, dim=dim, keepdim=dim is not None), torch.zeros_like(x))
    var = (dev**2).sum(dim=dim, keepdim=dim is not None) / (n - 1)
    return torch.where(n > 1, var.sqrt(), torch.full_like(var, float("nan")))


def trl_sum_then_normalize(r, w, scale_rewards):
    """Weighted sum per rollout, minus its group mean; divided by the group std, the std over the whole batch, or
    nothing (scale_rewards = group | batch | none)."""
    B, G, K = r.shape
    s = (r.reshape(-1, K) * w).nansum(1)
    s[torch.isnan(r.reshape(-1, K)).all(1)] = float("nan")
    adv = s - torch.nanmean(s.view(B, G), 1).repeat_interleave(G)
    if scale_rewards == "group":
        adv = adv / (_nanstd(s.view(B, G), 1).repeat_interleave(G) + 1e-4)
    elif scale_rewards == "batch":
        adv = adv / (_nanstd(s) + 1e-4)
    return torch.nan_to_num(adv, nan=0.0).view(B, G)


def trl_normalize_then_sum(r, w):
    """Each objective standardized within its group, weighted sum, then standardized over the whole batch."""
    B, G, K = r.shape
    z = (r - torch.nanmean(r, 1, keepdim=True)) / (_nanstd(r, 1) + 1e-4)
    s = (z.reshape(-1, K) * w).nansum(1)
    s[torch.isnan(r.reshape(-1, K)).all(1)] = float("nan")
    adv = (s - torch.nanmean(s)) / (_nanstd(s) + 1e-4)
    return torch.nan_to_num(adv, nan=0.0).view(B, G)


@FAST
@given(batches(min_g=2, max_b=5, scales=(1.0,), dtypes=(torch.float64,)))
def test_agrees_with_trl(data):
    r, w, m = data
    # TRL counts a group with one scorable rollout in normalize_then_sum's batch std (as a 0); the spec leaves such
    # groups out. Comparable inputs therefore give every group 0 or >= 2 valid rollouts.
    m = m & (m.sum(1, keepdim=True) >= 2)
    r_nan = r.masked_fill(~m.unsqueeze(-1), float("nan"))
    ours = dict(std_unbiased=True, eps=1e-4)
    pairs = [
        (run("grpo", r, w, m, **ours), trl_sum_then_normalize(r_nan, w, "group")),
        (run("grpo", r, w, m, adv_norm="batch_std", **ours), trl_sum_then_normalize(r_nan, w, "batch")),
        (run("grpo", r, w, m, adv_norm="none", **ours), trl_sum_then_normalize(r_nan, w, "none")),
        (run("gdpo", r, w, m, **ours), trl_normalize_then_sum(r_nan, w)),
    ]
    for got, want in pairs:
        assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_trl_transcription_on_a_known_group():
    """Pin the transcription itself: acc=[1,1,0,0], fmt=[1,0,1,0], w=(.5,.5), Bessel std sqrt(1/3)=.577350.
    sum_then_normalize (group): s=[1,.5,.5,0], std sqrt(.5/3)=.408248 -> ±.5/(.408248+1e-4) = ±1.224445."""
    r = torch.tensor([[[1.0, 1], [1, 0], [0, 1], [0, 0]]], dtype=torch.float64)
    w = torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert_close(trl_sum_then_normalize(r, w, "group")[0, 0], torch.tensor(1.224445, dtype=torch.float64),
                 atol=1e-6, rtol=0)
    # normalize_then_sum: z_acc = ±.5/(.577350+1e-4), sum .5*(z_acc+z_fmt) = [.865876, 0, 0, -.865876];
    # batch Bessel std = sqrt(2*.865876^2/3) = .706990 -> [1.224609.., 0, 0, -1.2246..]: +-0.865876/(.706990+1e-4)
    got = trl_normalize_then_sum(r, w)[0]
    assert_close(got[0], torch.tensor(0.865876 / (0.706990 + 1e-4), dtype=torch.float64), atol=1e-5, rtol=0)
    assert float(got[1]) == pytest.approx(0.0, abs=1e-12)
