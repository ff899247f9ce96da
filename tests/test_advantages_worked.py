"""Hand-computed advantages: the worked vector of shared/spec/methods.md and small cases with the arithmetic shown.

Small cases use G=4, K=2 ("acc", "fmt") and population std unless said; ``eps=0`` where no group is flat so the
numbers are exact, the default eps (1e-6, tolerance 1e-5) where a flat group needs the guard.
"""

import pytest
import torch
from torch.testing import assert_close

import mo_rl.advantages as A
from mo_rl.errors import MoRLError


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def close(got, want, tol=1e-6):
    assert_close(got, t(want), atol=tol, rtol=0)


# acc=[1,1,0,0], fmt=[1,0,1,0]: the basic group. With w=(.5,.5): s=[1,.5,.5,0], mean .5, centred [.5,0,0,-.5].
BASIC = t([[[1, 1], [1, 0], [0, 1], [0, 0]]])
HALF = t([1, 1])  # normalized to (.5, .5) by compute


# --- the spec's worked vector -----------------------------------------------------------------------------------
def worked():
    acc = [1.0] * 4 + [0.0] * 12
    length = [0.0, 0.0, 1.0, 1.0] + [1.0] * 12
    return torch.tensor([acc, length], dtype=torch.float64).T.unsqueeze(0)  # (1, 16, 2)


def test_worked_vector_dvao_grpo_ac():
    r = worked()
    dvao, grpo, ac = (A.compute(m, r, HALF)[0] for m in ("dvao", "grpo", "adv_combination"))
    # rollouts 0-1: acc=1,len=0; 2-3: acc=1,len=1; 4-15: acc=0,len=1
    close(dvao[[0, 2, 4]], [-0.1637, 1.1457, -0.1637], 1e-4)
    close(grpo[[0, 2, 4]], [-0.3780, 2.6458, -0.3780], 1e-4)
    close(ac[[0, 2, 4]], [-0.4569, 1.0550, -0.0997], 1e-4)
    close(torch.stack([(dvao**2).mean(), (grpo**2).mean(), (ac**2).mean()]), [0.1875, 1.0, 0.1727], 1e-4)


def test_worked_vector_dvao_effective_weights():
    # sigma = (sqrt(.25*.75), sqrt(.875*.125)) = (.4330, .3307); w~ = sigma / sigma.sum() = (.567, .433)
    w = A.compute_with_diagnostics("dvao", worked(), HALF)[1]["dvao/weight"]
    close(w, [0.567, 0.433], 1e-3)


# --- grpo -------------------------------------------------------------------------------------------------------
def test_grpo_basic_pop_and_unbiased():
    # pop var = (.25+0+0+.25)/4 = .125, std = .353553 -> A = ±.5/.353553 = ±1.414214
    close(A.compute("grpo", BASIC, HALF, eps=0.0), [[1.414214, 0, 0, -1.414214]])
    # Bessel: var = .5/3, std = .408248 -> ±1.224745
    close(A.compute("grpo", BASIC, HALF, std_unbiased=True, eps=0.0), [[1.224745, 0, 0, -1.224745]])


def test_grpo_masked_flat_and_single_valid():
    r = torch.cat([BASIC, t([[[1, 0]] * 4]), BASIC])
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[0, 3] = False  # group 0: s=[1,.5,.5], mean 2/3, dev [1/3,-1/6,-1/6], var (1/9+2/36)/3 = 1/18, std .235702
    mask[2, 1:] = False  # group 2: one valid rollout -> 0
    got = A.compute("grpo", r, HALF, mask)
    close(got, [[1.414214, -0.707107, -0.707107, 0], [0, 0, 0, 0], [0, 0, 0, 0]], 1e-5)  # group 1 is flat


def test_grpo_batch_std_and_none():
    # group 1: acc=fmt=[1,1,0,0] -> s=[1,1,0,0]. Batch s=[1,.5,.5,0,1,1,0,0]: mean .5, squares 6*.25=1.5,
    # pop var 1.5/8 = .1875, std .433013; group means are both .5 -> A = centred / .433013 = ±1.154701
    r = torch.cat([BASIC, t([[[1, 1], [1, 1], [0, 0], [0, 0]]])])
    close(A.compute("grpo", r, HALF, adv_norm="batch_std", eps=0.0),
          [[1.154701, 0, 0, -1.154701], [1.154701, 1.154701, -1.154701, -1.154701]])
    # none: just the centred sums
    close(A.compute("grpo", r, HALF, adv_norm="none"), [[0.5, 0, 0, -0.5], [0.5, 0.5, -0.5, -0.5]])


# --- grpo_no_std ------------------------------------------------------------------------------------------------
def test_grpo_no_std():
    # w=(.75,.25): s = [1, .75, .25, 0], mean .5 -> [.5, .25, -.25, -.5]
    close(A.compute("grpo_no_std", BASIC, t([3, 1])), [[0.5, 0.25, -0.25, -0.5]])
    mask = torch.tensor([[True, True, True, False]])
    # valid s = [1, .75, .25], mean 2/3 -> [1/3, 1/12, -5/12, 0]
    close(A.compute("grpo_no_std", BASIC, t([3, 1]), mask), [[1 / 3, 1 / 12, -5 / 12, 0]])
    close(A.compute("grpo_no_std", t([[[2, 5]] * 4]), HALF), [[0, 0, 0, 0]])  # flat


# --- adv_combination --------------------------------------------------------------------------------------------
def test_adv_combination_basic_weights_and_flat_objective():
    # A_acc = (acc-.5)/.5 = [1,1,-1,-1]; A_fmt = [1,-1,1,-1]
    close(A.compute("adv_combination", BASIC, HALF, eps=0.0), [[1, 0, 0, -1]])
    # w=(.75,.25): .75*A_acc + .25*A_fmt = [1, .5, -.5, -1]
    close(A.compute("adv_combination", BASIC, t([3, 1]), eps=0.0), [[1, 0.5, -0.5, -1]])
    # fmt flat -> A_fmt = 0; A = .5*A_acc
    r = t([[[1, 1], [1, 1], [0, 1], [0, 1]]])
    close(A.compute("adv_combination", r, HALF), [[0.5, 0.5, -0.5, -0.5]], 1e-5)


def test_adv_combination_masked_unbiased_batch_none():
    mask = torch.tensor([[True, True, True, False]])
    # valid acc=[1,1,0]: mean 2/3, pop std sqrt(2/9)=.471405 -> [.707107,.707107,-1.414214]; fmt=[1,0,1] mirrored
    # A = .5*(A_acc + A_fmt) = [.707107, -.353553, -.353553, 0]
    close(A.compute("adv_combination", BASIC, HALF, mask, eps=0.0), [[0.707107, -0.353553, -0.353553, 0]])
    # Bessel: std of [1,1,0,0] = sqrt(1/3) = .577350 -> A_k = ±.866025; A = [.866025, 0, 0, -.866025]
    close(A.compute("adv_combination", BASIC, HALF, std_unbiased=True, eps=0.0), [[0.866025, 0, 0, -0.866025]])
    # batch_std: with group 1 acc=fmt=[1,1,0,0], both objectives have batch mean .5, std .5 -> same as group std
    r = torch.cat([BASIC, t([[[1, 1], [1, 1], [0, 0], [0, 0]]])])
    close(A.compute("adv_combination", r, HALF, adv_norm="batch_std", eps=0.0), [[1, 0, 0, -1], [1, 1, -1, -1]])
    # none: .5*(acc-.5) + .5*(fmt-.5) = [.5, 0, 0, -.5]
    close(A.compute("adv_combination", BASIC, HALF, adv_norm="none"), [[0.5, 0, 0, -0.5]])


# --- gdpo -------------------------------------------------------------------------------------------------------
GDPO_R = torch.cat([BASIC, t([[[1, 1], [0, 1], [0, 1], [0, 1]], [[1, 1]] * 4, [[1, 0], [0, 1], [1, 1], [0, 0]]])])
GDPO_MASK = torch.tensor([[True] * 4] * 3 + [[True, False, False, False]])


def test_gdpo_hand():
    # w=(.75,.25). group 0: A_sum = [1, .5, -.5, -1] (see adv_combination).
    # group 1: acc=[1,0,0,0], mean .25, std .433013 -> A_acc=[1.732051,-.57735 x3]; fmt flat -> A_sum = .75*A_acc.
    # group 2: everything flat -> A_sum = 0, counted (4 valid). group 3: 1 valid -> not counted, stays 0.
    # pooled 12 values, mean 0; squares: g0 2.5, g1 .5625*4 = 2.25 -> var 4.75/12 = .395833, std .629153.
    got = A.compute("gdpo", GDPO_R, t([3, 1]), GDPO_MASK)
    g0 = [v / 0.629153 for v in (1, 0.5, -0.5, -1)]
    g1 = [v * 0.75 / 0.629153 for v in (1.732051, -0.577350, -0.577350, -0.577350)]
    close(got, [g0, g1, [0] * 4, [0] * 4], 1e-5)


def test_gdpo_unbiased_and_batch_norm():
    # Bessel: g0 std sqrt(1/3) -> A_sum = .866025*[1,.5,-.5,-1]; g1 acc std .5 -> A_acc=[1.5,-.5,-.5,-.5], x.75.
    # squares: g0 .75*2.5 = 1.875, g1 .5625*3 = 1.6875 -> var 3.5625/11 = .323864, std .569091
    got = A.compute("gdpo", GDPO_R, t([3, 1]), GDPO_MASK, std_unbiased=True)
    g0 = [0.866025 * v / 0.569091 for v in (1, 0.5, -0.5, -1)]
    g1 = [0.75 * v / 0.569091 for v in (1.5, -0.5, -0.5, -0.5)]
    close(got, [g0, g1, [0] * 4, [0] * 4], 1e-5)
    # adv_norm=none: A_sum = .75*(acc-mean) + .25*(fmt-mean); the batch step still divides by its batch std.
    # g0: [.5, .25, -.25, -.5]; g1: .75*[.75,-.25,-.25,-.25]; squares .625 + .5625*.75 = 1.046875, /12 -> std .295363
    got = A.compute("gdpo", GDPO_R, t([3, 1]), GDPO_MASK, adv_norm="none")
    g0 = [v / 0.295363 for v in (0.5, 0.25, -0.25, -0.5)]
    g1 = [0.75 * v / 0.295363 for v in (0.75, -0.25, -0.25, -0.25)]
    close(got, [g0, g1, [0] * 4, [0] * 4], 1e-5)


# --- dvao -------------------------------------------------------------------------------------------------------
def test_dvao_basic_masked_and_flat_objective():
    # sigma = (.5, .5), den = .5*.5 + .5*.5 = .5; num = .5*(acc-.5) + .5*(fmt-.5) = [.5, 0, 0, -.5] -> [1, 0, 0, -1]
    close(A.compute("dvao", BASIC, HALF, eps=0.0), [[1, 0, 0, -1]])
    # masked last: sigma = (.471405, .471405), den .471405; num = [1/3, -1/6, -1/6] -> [.707107, -.353553 x2, 0]
    mask = torch.tensor([[True, True, True, False]])
    close(A.compute("dvao", BASIC, HALF, mask, eps=0.0), [[0.707107, -0.353553, -0.353553, 0]])
    # fmt flat: num = .5*(acc-.5), den = .5*.5 -> acc-.5 over .5 = [1,1,-1,-1], exactly grpo on acc alone
    r = t([[[1, 1], [1, 1], [0, 1], [0, 1]]])
    close(A.compute("dvao", r, HALF), [[1, 1, -1, -1]], 1e-5)
    close(A.compute("dvao", t([[[3, 1]] * 4]), HALF), [[0, 0, 0, 0]])  # all flat -> 0


def test_dvao_unbiased_single_valid_batch_none():
    # Bessel: sigma = (.577350, .577350), den .577350, num [.5,0,0,-.5] -> ±.866025
    close(A.compute("dvao", BASIC, HALF, std_unbiased=True, eps=0.0), [[0.866025, 0, 0, -0.866025]])
    one = torch.tensor([[True, False, False, False]])
    close(A.compute("dvao", BASIC, HALF, one), [[0, 0, 0, 0]])
    # batch_std: second group acc=fmt=[1,1,0,0]; batch sigma = (.5, .5) -> den .5; g1 num [.5,.5,-.5,-.5]
    r = torch.cat([BASIC, t([[[1, 1], [1, 1], [0, 0], [0, 0]]])])
    close(A.compute("dvao", r, HALF, adv_norm="batch_std", eps=0.0), [[1, 0, 0, -1], [1, 1, -1, -1]])
    close(A.compute("dvao", BASIC, HALF, adv_norm="none"), [[0.5, 0, 0, -0.5]])


# --- shapes and bad input ---------------------------------------------------------------------------------------
def test_default_weights_and_shape():
    torch.manual_seed(0)
    out = A.compute("dvao", torch.rand(4, 8, 3))
    assert out.shape == (4, 8) and out.dtype == torch.float32


@pytest.mark.parametrize("kwargs, bad", [
    (dict(method="dvao", weights=[1.0, 2.0, 3.0]), "(3,)"),
    (dict(method="dvao", weights=[1.0, -0.5]), "-0.5"),
    (dict(method="grpo", adv_norm="zscore"), "zscore"),
    (dict(method="no_such_method"), "no_such_method"),
])
def test_bad_input_names_the_value(kwargs, bad):
    kwargs = dict(kwargs)
    method, weights = kwargs.pop("method"), kwargs.pop("weights", None)
    with pytest.raises(MoRLError) as err:
        A.compute(method, BASIC, None if weights is None else t(weights), **kwargs)
    assert bad in str(err.value)


@pytest.mark.parametrize("method", ["grpo", "adv_combination", "gdpo", "dvao", "vpo"])
def test_eps_zero_on_flat_groups_is_zero_not_nan(method):
    """0 / (0 + eps) with eps=0 would be NaN: a flat group must still give exactly 0."""
    out = A.compute(method, torch.ones(1, 4, 2), eps=0.0)
    assert torch.equal(out, torch.zeros(1, 4))


def test_diagnostics_come_from_the_same_call():
    """vpo's diagnostics describe the weightings its advantages used: one call, one draw from the generator."""
    r = torch.rand(3, 4, 2, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(7)
    adv, diag = A.compute_with_diagnostics("vpo", r, generator=gen)
    assert torch.equal(adv, A.compute("vpo", r, generator=torch.Generator().manual_seed(7)))
    _, again = A.compute_with_diagnostics("vpo", r, generator=torch.Generator().manual_seed(7))
    assert diag.keys() == again.keys() and all(torch.equal(torch.as_tensor(diag[k]), torch.as_tensor(again[k]))
                                               for k in diag)
    after_one = torch.Generator().manual_seed(7)
    A.compute("vpo", r, generator=after_one)
    assert torch.equal(gen.get_state(), after_one.get_state())  # the diagnostics drew nothing more
    _, d = A.compute_with_diagnostics("dvao", r)
    assert d["dvao/weight"].shape == (2,)
