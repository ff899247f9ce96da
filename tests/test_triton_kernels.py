"""The Triton kernels (scripts/triton_kernels.py) == the eager estimators.

Skipped as a whole where triton is not installed. With CUDA the kernels run compiled on the GPU; without it they
run under Triton's CPU interpreter. TRITON_INTERPRET=1 has to be in the environment when ``triton.language`` is
first imported (it wraps its library, tl.sum and the like, at import) and when triton_kernels builds its kernels
(on first use); so on a CPU-only machine this module sets it around its own ``import triton`` and, through an
autouse fixture, during its tests, and restores it otherwise. Should triton already have been imported without it
(by an earlier test module), the checks run in a child pytest process instead.

Every supported method x adv_norm x std_unbiased x dtype, on batches with the awkward groups (fully masked, one
valid rollout, flat, one objective flat, exactly two valid), non-power-of-2 G and K, G = 1, K = 1, and both one
program per group and several groups per program.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

CUDA = torch.cuda.is_available()
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)
if not CUDA and "triton.language" not in sys.modules:
    _before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        tl = pytest.importorskip("triton.language")
    finally:
        if _before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _before
else:
    tl = pytest.importorskip("triton.language")

import mo_rl.advantages as A  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import triton_kernels as TK  # noqa: E402  (scripts/triton_kernels.py: benchmark-only, outside the package)

DEVICE = "cuda" if CUDA else "cpu"
# Whether the checks can run in this process: compiled on CUDA, or triton's library wrapped for the interpreter.
HERE = CUDA or type(tl.sum).__name__ == "InterpretedFunction"
CHILD = "MO_RL_TRITON_TEST_CHILD"

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}
NORMS = ("group", "batch_std", "none")
# (B, G, K, kind): power-of-2 and ragged G and K, G = 1 (always flat), K = 1, a single group.
CASES = [(24, 8, 3, "randn"), (24, 8, 3, "ints"), (7, 5, 3, "randn"), (19, 16, 1, "ints"), (6, 12, 6, "randn"),
         (9, 3, 5, "ints"), (4, 1, 2, "randn"), (1, 6, 2, "randn")]


@pytest.fixture(autouse=True)
def interpret(request, monkeypatch):
    if not HERE and os.environ.get(CHILD):
        pytest.fail("the child process could not import triton under TRITON_INTERPRET=1")
    if not HERE and request.node.name != "test_in_child_process":
        pytest.skip("triton was imported without TRITON_INTERPRET=1; checked in a child process instead")
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.skipif(HERE, reason="the checks run in this process")
def test_in_child_process():
    """This file in a fresh pytest process, with TRITON_INTERPRET=1 set before triton is imported."""
    env = {**os.environ, "TRITON_INTERPRET": "1", CHILD: "1"}
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-m", "not slow"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def batch(B: int, G: int, K: int, dtype, seed: int, kind: str = "randn"):
    """(rewards, normalized weights, mask) with the special groups in the first rows (as far as B allows)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "ints":  # ties everywhere, dyadic weights: every weighted sum exact in any summation order
        r = torch.randint(0, 3, (B, G, K), generator=g).to(dtype)
        w = torch.tensor([1.0, 1.0, 2.0, 4.0, 1.0, 2.0][:K] if K <= 6 else [1.0] * K, dtype=dtype)
    else:
        r = (torch.randn(B, G, K, generator=g) * torch.linspace(0.1, 5.0, K)).to(dtype) + 0.5
        w = torch.rand(K, generator=g).to(dtype) + 0.1
    mask = torch.rand(B, G, generator=g) > 0.25
    special = [lambda: mask[0].fill_(False),  # fully masked group
               lambda: (mask[1].fill_(False), mask[1].__setitem__(min(3, G - 1), True)),  # one valid rollout
               lambda: (r[2].copy_(r[2, 0].expand_as(r[2])), mask[2].fill_(True)),  # flat group
               lambda: r[3, :, 0].fill_(float(r[3, 0, 0])),  # objective 0 flat in this group
               lambda: mask[4].fill_(True),  # a full group
               lambda: (mask[5].fill_(False), mask[5, :2].fill_(True))]  # exactly two valid rollouts
    for make in special[:B]:
        make()
    return r.to(DEVICE), (w / w.sum()).to(DEVICE), mask.to(DEVICE)


def options(method: str, adv_norm: str, std_unbiased: bool) -> dict:
    allowed = A.get(method).options()
    return {k: v for k, v in {"adv_norm": adv_norm, "std_unbiased": std_unbiased}.items() if k in allowed}


def combos(method: str):
    return [dict(c) for c in sorted({tuple(options(method, n, u).items()) for n in NORMS for u in (False, True)})]


def check(method, r, w, m, opts, got=None):
    want = A.get(method).fn(r, w, m, **opts)
    got = TK.compute(method, r, w, m, **opts) if got is None else got
    assert got.shape == want.shape and got.dtype == want.dtype
    assert_close(got, want, **TOL[r.dtype], msg=lambda s: f"{method} {tuple(r.shape)} {opts}: {s}")
    assert bool((got[~m] == 0).all()), f"{method} {opts}: masked rollouts must be exactly 0"
    return got


def test_available_and_supported():
    assert TK.available()
    assert set(TK.supported()) == {"grpo", "grpo_no_std", "adv_combination", "gdpo", "dvao"}
    assert set(TK.supported()) <= set(A.available())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("method", ["grpo", "grpo_no_std", "adv_combination", "gdpo", "dvao"])
def test_equals_eager(method, dtype):
    for i, (B, G, K, kind) in enumerate(CASES):
        r, w, m = batch(B, G, K, dtype, seed=100 * i + len(method), kind=kind)
        for opts in combos(method):
            check(method, r, w, m, opts)


@pytest.mark.parametrize("method", ["grpo", "adv_combination", "gdpo", "dvao"])
def test_special_groups_exactly_zero(method):
    """Fully masked, one-valid and flat groups are exactly 0, as in the eager path, under every adv_norm."""
    r, w, m = batch(24, 8, 3, torch.float32, seed=7)
    for opts in combos(method):
        out = check(method, r, w, m, opts)
        assert bool((out[:3] == 0).all()), f"{method} {opts}"


def test_one_program_per_group_and_ragged_blocks():
    """BLOCK_B = 1 (one program per group) and a BLOCK_B that does not divide B give the same numbers."""
    r, w, m = batch(6, 6, 3, torch.float32, seed=5)
    for method in ("grpo", "gdpo", "dvao", "adv_combination"):
        for opts in (options(method, n, False) for n in NORMS):
            code, norm, unb, eps, rr, ww, mm = TK._check(method, r, w, m, opts)
            for block_b in (1, 4):
                check(method, r, w, m, opts, got=TK._launch(code, norm, unb, eps, rr, ww, mm, block_b=block_b))


def test_matches_compute_with_raw_weights_and_defaults():
    """With weights normalized first, the kernels agree with mo_rl.advantages.compute; None weights/mask too."""
    r, w, m = batch(24, 8, 3, torch.float64, seed=3)
    raw = w * 7.0
    for method in TK.supported():
        for opts in combos(method):
            want = A.compute(method, r, raw, m, **opts)
            assert_close(TK.compute(method, r, raw / raw.sum(), m, **opts), want, **TOL[torch.float64])
        assert_close(TK.compute(method, r), A.compute(method, r), **TOL[torch.float64])


def test_strided_rewards_and_eps():
    """Non-contiguous rewards are read through their strides; eps=0 and a large eps follow _stats.divide."""
    r, w, m = batch(10, 7, 4, torch.float32, seed=9)
    strided = r.permute(2, 0, 1).contiguous().permute(1, 2, 0)  # same values, objective-major memory
    assert not strided.is_contiguous()
    for method in ("grpo", "gdpo", "dvao", "adv_combination"):
        for eps in (0.0, 1e-6, 0.5):
            for adv_norm in NORMS:
                check(method, strided, w, m, {"adv_norm": adv_norm, "eps": eps})


def test_all_masked_and_all_flat_batches():
    r, w, m = batch(5, 4, 2, torch.float32, seed=1)
    for method in TK.supported():
        for opts in combos(method):
            assert bool((check(method, r, w, torch.zeros_like(m), opts) == 0).all())
            assert bool((check(method, torch.ones_like(r), w, m, opts) == 0).all())


def test_errors_are_clear_value_errors():
    r, w, m = batch(4, 3, 2, torch.float32, seed=2)
    with pytest.raises(ValueError, match="does not implement method 'vpo'"):
        TK.compute("vpo", r, w, m)
    with pytest.raises(ValueError, match="unknown option 'clip'"):
        TK.compute("grpo", r, w, m, clip=1.0)
    with pytest.raises(ValueError, match="unknown option 'adv_norm'"):
        TK.compute("grpo_no_std", r, w, m, adv_norm="group")
    with pytest.raises(ValueError, match="unknown adv_norm 'rank'"):
        TK.compute("gdpo", r, w, m, adv_norm="rank")
    with pytest.raises(ValueError, match=r"shape \(B, G, K\)"):
        TK.compute("grpo", r.unsqueeze(2), w, m)
    with pytest.raises(ValueError, match="weights must have shape"):
        TK.compute("grpo", r, w[:1], m)
    with pytest.raises(ValueError, match="mask must have shape"):
        TK.compute("grpo", r, w, m[:, :1])


def test_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    r, w, m = (x.cpu() for x in batch(4, 3, 2, torch.float32, seed=2))
    if not torch.cuda.is_available():
        assert not TK.available()
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        TK.compute("grpo", r, w, m)


def test_imports_without_triton(monkeypatch):
    """The module imports and reports unavailable when triton cannot be imported (a fresh copy, triton hidden)."""
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    spec = importlib.util.spec_from_file_location("_tk_no_triton", TK.__file__)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert not mod.available()
    assert "grpo" in mod.supported()
    r, w, m = batch(4, 3, 2, torch.float32, seed=2)
    with pytest.raises(ValueError, match="triton is not installed"):
        mod.compute("grpo", r, w, m)
