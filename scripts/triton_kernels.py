"""Optional Triton kernels for the scalar advantage estimators (grpo, grpo_no_std, adv_combination, gdpo, dvao).

Same numbers as the eager functions in ``scalar.py`` (tests/test_triton_kernels.py: compiled on CUDA, else under
Triton's CPU interpreter), with the same conventions: population std unless ``std_unbiased``; a group is flat when
its valid values have max == min or it has < 2 valid rollouts, and a flat group contributes exactly 0; every
division is ``_stats.divide``'s ``num / (std + eps)``, 0 where that denominator is not positive; masked rollouts get
exactly 0.

Layout: one program holds ``BLOCK_B`` whole groups as a masked ``(BLOCK_B, BLOCK_G, BLOCK_K)`` tile (the padded
powers of 2 of G and K), so each reward is read from memory once and every group statistic (mean, std, max, min,
count) is a register reduction over the G axis. ``BLOCK_B`` is 1 (one program per prompt group) when a group's
tile is already large, and grows for small G x K so that a program moves a few KiB.

Batch-level statistics (``adv_norm=batch_std``, and gdpo's batch step) take a second pass: the group kernel writes
per-group partial moments (count, mean, sum of squared deviations, max, min), torch combines them (Chan's parallel
formula, no host synchronisation) and a small elementwise kernel applies the batch shift and scale. For
adv_combination and gdpo under ``batch_std`` the per-objective batch std is needed inside the group pass, so a
statistics-only pass over the rewards runs first.

Precision: float64 rewards are computed in float64; everything else in float32 (half inputs are upcast, and the
result is cast back), divisions and square roots IEEE-rounded (``div_rn`` / ``sqrt_rn``). Summation order differs
from torch's, so results agree to rounding (about 1e-6 relative in float32), not bit for bit.

Triton is optional: this module imports without it (and does not import it until ``compute`` runs);
``available()`` says whether ``compute`` can run. Kernels are built on first use, compiled for CUDA or, with
``TRITON_INTERPRET=1``, for Triton's CPU interpreter (numpy; slow, for tests only). That variable must already be
set when triton itself is first imported in the process, because ``triton.language`` wraps its own library
(``tl.sum``, ``tl.max``) at import; a mismatch raises ``TritonUnsupported`` with that advice.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable

import torch
from torch import Tensor

from mo_rl.advantages._stats import ADV_NORMS
from mo_rl.errors import MoRLError

# Optional dependency, imported on first use (``_import``), not with this module: importing triton.language fixes
# its interpret mode (see ``_build``), and a plain ``import mo_rl.advantages.triton_kernels`` must not do that.
triton = None
tl = None

__all__ = ["TritonUnsupported", "as_estimator", "available", "compute", "supported"]

# Estimator keys -> kernel method codes. grpo_no_std is grpo with adv_norm=none.
_GRPO, _ADV_COMBINATION, _GDPO, _DVAO, _OBJ_STATS = 0, 1, 2, 3, 4
_METHODS = {"grpo": _GRPO, "grpo_no_std": _GRPO, "adv_combination": _ADV_COMBINATION, "gdpo": _GDPO, "dvao": _DVAO}
_OPTIONS = {"grpo": ("adv_norm", "std_unbiased", "eps"), "grpo_no_std": (),
            "adv_combination": ("adv_norm", "std_unbiased", "eps"), "gdpo": ("adv_norm", "std_unbiased", "eps"),
            "dvao": ("adv_norm", "std_unbiased", "eps")}
_NORM_CODE = {"group": 0, "batch_std": 1, "none": 2}
TILE = 2048  # target elements of one program's tile (float32; halved for float64)
MAX_GROUP_TILE = 1 << 15  # a padded G x K larger than this does not fit one program's registers


class TritonUnsupported(MoRLError, ValueError):
    """A method, option, shape or device the Triton path does not handle (use the eager estimator instead)."""


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def available() -> bool:
    """Whether ``compute`` can run here: triton is importable and CUDA is available or TRITON_INTERPRET=1 is set."""
    if triton is None and importlib.util.find_spec("triton") is None:
        return False
    return _interpret_requested() or torch.cuda.is_available()


def supported() -> tuple[str, ...]:
    """The estimator keys the Triton path implements (every option of each, as in the registry)."""
    return tuple(sorted(_METHODS))


# ----------------------------------------------------------------------------------------------------------------
# Kernel sources. Plain functions here; ``_build`` wraps them with ``triton.jit`` on first use (compiled, or
# interpreted under TRITON_INTERPRET=1) and installs the helpers under the names the kernels call them by.
# Shapes in comments: BB = BLOCK_B groups, BG = BLOCK_G rollouts, BK = BLOCK_K objectives, X = 1 or BK.
# ----------------------------------------------------------------------------------------------------------------

def _div_src(a, b, F64: tl.constexpr):
    """IEEE-rounded a / b (float64 division is always IEEE; ``div_rn`` is float32-only)."""
    if F64:
        return a / b
    else:
        return tl.div_rn(a, b)


def _sqrt_src(x, F64: tl.constexpr):
    """IEEE-rounded sqrt (``sqrt_rn`` is float32-only; float64 sqrt is exact)."""
    if F64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


def _divide_src(num, std, eps, F64: tl.constexpr):
    """``_stats.divide``: num / (std + eps), exactly 0 where std + eps <= 0."""
    den = std + eps
    ok = den > 0
    return tl.where(ok, _div(num, tl.where(ok, den, 1.0), F64), 0.0)


def _moments_src(x, v, UNBIASED: tl.constexpr, F64: tl.constexpr):
    """Group statistics of x (BB, BG, X) over the valid rollouts v (BB, BG, 1), reduced over the G axis.

    Returns n (BB, 1, 1) count; mean, m2 (sum of squared deviations), hi, lo, std (BB, 1, X); centred (BB, BG, X)
    = x - mean, exactly 0 on invalid rollouts and on flat groups. std is exactly 0 on flat groups.
    """
    n = tl.sum(v.to(x.dtype), axis=1, keep_dims=True)
    mean = _div(tl.sum(tl.where(v, x, 0.0), axis=1, keep_dims=True), tl.maximum(n, 1.0), F64)
    d = tl.where(v, x - mean, 0.0)
    m2 = tl.sum(d * d, axis=1, keep_dims=True)
    hi = tl.max(tl.where(v, x, -float("inf")), axis=1, keep_dims=True)
    lo = tl.min(tl.where(v, x, float("inf")), axis=1, keep_dims=True)
    flat = (hi == lo) | (n < 2.0)
    std = tl.where(flat, 0.0, _sqrt(_div(m2, tl.maximum(n - UNBIASED, 1.0), F64), F64))
    centred = tl.where(v & (flat == 0), d, 0.0)
    return n, mean, m2, hi, lo, std, centred


def _store_moments_src(part_ptr, b, cols, valid, n, mean, m2, hi, lo, B, X):
    """Write one program's partial moments into part (5, B, X): count, mean, m2, hi, lo. b (BB, 1, 1) int64."""
    at = part_ptr + b * X + cols
    plane = B * X
    tl.store(at, n + tl.zeros_like(mean), mask=valid)
    tl.store(at + plane, mean, mask=valid)
    tl.store(at + 2 * plane, m2, mask=valid)
    tl.store(at + 3 * plane, hi, mask=valid)
    tl.store(at + 4 * plane, lo, mask=valid)


def _group_kernel_src(r_ptr, w_ptr, m_ptr, sd_ptr, eps_ptr, out_ptr, part_ptr,
                      B, G, K, s_rb, s_rg, s_rk,
                      METHOD: tl.constexpr, NORM: tl.constexpr, UNBIASED: tl.constexpr, STATS: tl.constexpr,
                      F64: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr):
    """BLOCK_B groups per program. r (B, G, K) strided; w (K,); m (B, G) uint8 contiguous; sd (K,) per-objective
    batch std (adv_combination / gdpo under batch_std only); eps (1,); out (B, G) contiguous; part (5, B, X).

    METHOD: 0 grpo, 1 adv_combination, 2 gdpo (the per-group part: A_sum and its moments over counted rollouts),
    3 dvao, 4 per-objective moments only. NORM: 0 group, 1 batch_std, 2 none. STATS: write partial moments.
    """
    pid = tl.program_id(0)
    b = (pid * BLOCK_B + tl.arange(0, BLOCK_B)[:, None, None]).to(tl.int64)  # (BB, 1, 1)
    g = tl.arange(0, BLOCK_G)[None, :, None]  # (1, BG, 1)
    k = tl.arange(0, BLOCK_K)[None, None, :]  # (1, 1, BK)
    row = (b < B) & (g < G)  # (BB, BG, 1)
    kin = k < K
    v = tl.load(m_ptr + b * G + g, mask=row, other=0) != 0  # (BB, BG, 1) valid rollouts
    r = tl.load(r_ptr + b * s_rb + g * s_rg + k * s_rk, mask=row & kin, other=0.0)  # (BB, BG, BK)
    w = tl.load(w_ptr + k, mask=kin, other=0.0)  # (1, 1, BK); padded objectives weigh 0
    eps = tl.load(eps_ptr)
    zero = tl.zeros((1, 1, 1), dtype=tl.int64)
    if METHOD == 0:  # grpo: s = sum_k w_k r_k, centred and divided by its group (or, later, batch) std
        s = tl.sum(r * w, axis=2, keep_dims=True)  # (BB, BG, 1)
        n, mean, m2, hi, lo, std, c = _moments(s, v, UNBIASED, F64)
        if NORM == 0:
            a = _divide(c, std, eps, F64)
        else:
            a = c
        if STATS:
            _store_moments(part_ptr, b, zero, b < B, n, mean, m2, hi, lo, B, 1)
    else:
        n, mean, m2, hi, lo, std, c = _moments(r, v, UNBIASED, F64)  # per objective: (BB, 1, BK), c (BB, BG, BK)
        if METHOD == 4:
            _store_moments(part_ptr, b, k, (b < B) & kin, n, mean, m2, hi, lo, B, K)
        elif METHOD == 3:  # dvao: sum_k w_k c_k / (sum_k w_k sigma_k + eps)
            num = tl.sum(c * w, axis=2, keep_dims=True)
            if NORM == 0:
                a = _divide(num, tl.sum(std * w, axis=2, keep_dims=True), eps, F64)
            else:
                a = num
            if STATS:
                _store_moments(part_ptr, b, k, (b < B) & kin, n, mean, m2, hi, lo, B, K)
        else:  # adv_combination / gdpo: A_sum = sum_k w_k c_k / (std_k + eps)
            if NORM == 0:
                ak = _divide(c, std, eps, F64)
            elif NORM == 1:
                ak = _divide(c, tl.load(sd_ptr + k, mask=kin, other=0.0), eps, F64)
            else:
                ak = c
            a = tl.sum(ak * w, axis=2, keep_dims=True)  # (BB, BG, 1)
            if METHOD == 2:  # gdpo: moments of A_sum over the valid rollouts of groups with >= 2 of them
                counted = v & (n >= 2.0)
                n2, mean2, m22, hi2, lo2, _s, _c = _moments(a, counted, UNBIASED, F64)
                _store_moments(part_ptr, b, zero, b < B, n2, mean2, m22, hi2, lo2, B, 1)
    if METHOD != 4:
        tl.store(out_ptr + b * G + g, a, mask=row)


def _finish_kernel_src(x_ptr, m_ptr, keep_ptr, shift_ptr, den_ptr, out_ptr, N, G,
                       KEEP: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr):
    """out = (x - shift) / den elementwise over N = B * G, exactly 0 where den <= 0, and with KEEP also where the
    rollout is masked (m (B, G) uint8) or its group is not kept (keep (B,) uint8). shift, den: (1,) tensors."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = i < N
    x = tl.load(x_ptr + i, mask=inb, other=0.0)
    den = tl.load(den_ptr + i * 0)  # broadcast loads of the (1,) scalars keep every operand a (BLOCK,) tensor
    ok = (den > 0) & inb
    if KEEP:
        ok = ok & (tl.load(m_ptr + i, mask=inb, other=0) != 0) & (tl.load(keep_ptr + i // G, mask=inb, other=0) != 0)
    y = tl.where(ok, _div(x - tl.load(shift_ptr + i * 0), tl.where(den > 0, den, 1.0), F64), 0.0)
    tl.store(out_ptr + i, y, mask=inb)


_BUILT: dict[str, object] = {}


def _import() -> None:
    """Bind the module globals ``triton`` and ``tl`` (the kernel sources refer to ``tl``)."""
    global triton, tl
    if triton is None:
        try:
            import triton as _triton
            import triton.language as _tl
        except ImportError as err:
            raise TritonUnsupported("triton is not installed; use the eager estimators (mo_rl.advantages.compute)"
                                    ) from err
        triton, tl = _triton, _tl


def _build() -> dict[str, object]:
    """The jitted kernels for the current mode (compiled, or interpreted under TRITON_INTERPRET=1)."""
    _import()
    mode = "interpret" if _interpret_requested() else "compiled"
    if _BUILT.get("mode") != mode:
        # triton.language wraps its own library (tl.sum, tl.max, ...) when it is first imported, in the mode in
        # force then; kernels of the other mode cannot call it.
        lib = "interpret" if type(tl.sum).__name__ == "InterpretedFunction" else "compiled"
        if lib != mode:
            raise TritonUnsupported(f"triton was imported {'with' if lib == 'interpret' else 'without'} "
                                    f"TRITON_INTERPRET=1 but it is {'' if mode == 'interpret' else 'un'}set now; "
                                    "set it before triton is first imported (a fresh process)")
        # triton.jit reads TRITON_INTERPRET when it wraps a function, so the helpers the kernels call by global
        # name are (re)installed for the mode in force now.
        glb = globals()
        for name in ("_div", "_sqrt", "_divide", "_moments", "_store_moments"):
            glb[name] = triton.jit(glb[name + "_src"])
        _BUILT.clear()
        _BUILT.update(mode=mode, group=triton.jit(_group_kernel_src), finish=triton.jit(_finish_kernel_src))
    return _BUILT


# ----------------------------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------------------------

def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _check(method: str, rewards: Tensor, weights: Tensor | None, mask: Tensor | None, options: dict):
    """Validate and return (method code, adv_norm, std_unbiased, eps, rewards, weights, mask) in compute dtype."""
    if method not in _METHODS:
        raise TritonUnsupported(f"the Triton path does not implement method {method!r}; "
                                f"supported: {', '.join(supported())} (use mo_rl.advantages.compute)")
    allowed = _OPTIONS[method]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TritonUnsupported(f"unknown option {unknown[0]!r} for method {method!r}; "
                                f"allowed: {', '.join(allowed) or 'none'}")
    adv_norm = options.get("adv_norm", "none" if method == "grpo_no_std" else "group")
    if adv_norm not in ADV_NORMS:
        raise TritonUnsupported(f"unknown adv_norm {adv_norm!r}; allowed: {', '.join(ADV_NORMS)}")
    eps = options.get("eps", 1e-6)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TritonUnsupported(f"eps must be a number, got {eps!r}")
    unbiased = bool(options.get("std_unbiased", False))
    if not isinstance(rewards, Tensor) or rewards.dim() != 3 or not rewards.is_floating_point():
        shape = tuple(rewards.shape) if isinstance(rewards, Tensor) else type(rewards).__name__
        raise TritonUnsupported(f"rewards must be a float tensor of shape (B, G, K), got {shape}")
    B, G, K = rewards.shape
    if G == 0 or K == 0:
        raise TritonUnsupported(f"rewards must have G >= 1 and K >= 1, got shape {(B, G, K)}")
    if _pow2(G) * _pow2(K) > MAX_GROUP_TILE:
        raise TritonUnsupported(f"group tile G x K = {G} x {K} is too large for one program "
                                f"(padded > {MAX_GROUP_TILE} elements); use the eager path")
    dev = rewards.device
    if dev.type != "cuda" and not _interpret_requested():
        raise TritonUnsupported(f"the Triton path needs CUDA tensors (got {dev}), or TRITON_INTERPRET=1 for the "
                                "CPU interpreter")
    cdtype = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    if weights is None:
        weights = torch.full((K,), 1.0 / K, dtype=cdtype, device=dev)
    else:
        weights = torch.as_tensor(weights, device=dev).to(cdtype).contiguous()
        if tuple(weights.shape) != (K,):
            raise TritonUnsupported(f"weights must have shape (K,)=({K},), got {tuple(weights.shape)}")
    if mask is None:
        mask = torch.ones(B, G, dtype=torch.bool, device=dev)
    elif tuple(mask.shape) != (B, G):
        raise TritonUnsupported(f"mask must have shape (B, G)=({B}, {G}), got {tuple(mask.shape)}")
    mask = mask.to(device=dev, dtype=torch.bool).contiguous().view(torch.uint8)
    return _METHODS[method], adv_norm, unbiased, float(eps), rewards.to(cdtype), weights, mask


_EPS_CACHE: dict[tuple, Tensor] = {}


def _eps_tensor(eps: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """eps as a (1,) device tensor in the compute dtype (a float kernel argument would be rounded to float32)."""
    key = (eps, dtype, str(device))
    if key not in _EPS_CACHE:
        if len(_EPS_CACHE) > 64:
            _EPS_CACHE.clear()
        _EPS_CACHE[key] = torch.full((1,), eps, dtype=dtype, device=device)
    return _EPS_CACHE[key]


def _combine(part: Tensor, unbiased: bool) -> tuple[Tensor, Tensor]:
    """Batch mean and std (X,) from per-group partial moments part (5, B, X), as ``_stats.batch_std``: Chan's
    parallel formula for the sum of squared deviations; std exactly 0 when the batch is flat or has < 2 valid."""
    n, mean, m2, hi, lo = part.unbind(0)
    total = n.sum(0)
    mu = (n * mean).sum(0) / total.clamp_min(1)
    ss = m2.sum(0) + (n * (mean - mu) ** 2).sum(0)
    var = ss / (total - int(unbiased)).clamp_min(1)
    flat = (hi.amax(0) == lo.amin(0)) | (total < 2)
    return mu, torch.where(flat, torch.zeros_like(var), var.sqrt())


def _launch(code: int, norm: str, unbiased: bool, eps: float, r: Tensor, w: Tensor, m: Tensor,
            block_b: int | None = None) -> Tensor:
    """Run the kernels for one estimator; r (B, G, K) in compute dtype, w (K,), m (B, G) uint8 -> (B, G)."""
    kern = _build()
    B, G, K = r.shape
    dev, dtype = r.device, r.dtype
    out = torch.empty(B, G, dtype=dtype, device=dev)
    if B == 0:
        return out
    f64 = dtype == torch.float64
    BG, BK = _pow2(G), _pow2(K)
    if block_b is None:
        block_b = max(1, min(_pow2(B), (TILE // (2 if f64 else 1)) // (BG * BK)))
    warps = max(1, min(8, (block_b * BG * BK) // 256))
    grid = (triton.cdiv(B, block_b),)
    eps_t = _eps_tensor(eps, dtype, dev)
    nc = _NORM_CODE[norm]

    def group(method: int, stats: bool, cols: int, sd: Tensor | None = None) -> Tensor:
        part = torch.empty(5, B, cols, dtype=dtype, device=dev) if stats else out
        kern["group"][grid](r, w, m, w if sd is None else sd, eps_t, out, part, B, G, K, *r.stride(),
                            METHOD=method, NORM=nc, UNBIASED=int(unbiased), STATS=int(stats), F64=f64,
                            BLOCK_B=block_b, BLOCK_G=BG, BLOCK_K=BK, num_warps=warps)
        return part

    def finish(shift: Tensor, den: Tensor, keep: Tensor | None = None) -> None:
        block = 1024
        kern["finish"][(triton.cdiv(B * G, block),)](
            out, m, m if keep is None else keep, shift.reshape(1), den.reshape(1), out, B * G, G,
            KEEP=keep is not None, F64=f64, BLOCK=block, num_warps=4)

    if code in (_ADV_COMBINATION, _GDPO) and norm == "batch_std":
        _, sd = _combine(group(_OBJ_STATS, True, K), unbiased)  # per-objective batch std of the raw rewards
    else:
        sd = None
    if code == _GDPO:
        n, mean, m2, hi, lo = part = group(_GDPO, True, 1, sd)
        mu, std = _combine(part, unbiased)
        keep = ((hi != lo) & (n >= 2)).reshape(B).to(torch.uint8)
        finish(mu, std + eps, keep)
    elif norm == "batch_std" and code in (_GRPO, _DVAO):
        _, std = _combine(group(code, True, 1 if code == _GRPO else K), unbiased)
        den = std if code == _GRPO else (std * w).sum(-1, keepdim=True)
        finish(torch.zeros_like(den), den + eps)
    else:
        group(code, False, 1, sd)
    return out


def compute(method: str, rewards: Tensor, weights: Tensor | None = None, mask: Tensor | None = None,
            **options) -> Tensor:
    """Advantages of a scalar estimator via the Triton kernels; same numbers as ``mo_rl.advantages.get(method).fn``.

    Args:
        method: one of ``supported()``: grpo, grpo_no_std, adv_combination, gdpo, dvao.
        rewards: (B, G, K) float (CUDA; CPU only under TRITON_INTERPRET=1), any strides.
        weights: (K,) float, used as given like the registry functions (``mo_rl.advantages.compute`` normalizes
            raw weights to sum 1 before calling an estimator; do that first). ``None``: uniform 1/K.
        mask: (B, G) bool, rollouts that count; ``None``: all.
        **options: the registry's options for the method: ``adv_norm`` (group | batch_std | none),
            ``std_unbiased`` (bool), ``eps`` (float); grpo_no_std takes none.
    Returns:
        (B, G) advantages, rewards' dtype and device; exactly 0 on masked rollouts and flat or < 2-valid groups.
    Raises:
        TritonUnsupported (a ValueError and a MoRLError) for an unsupported method, option, shape or device.
    """
    code, norm, unbiased, eps, r, w, m = _check(method, rewards, weights, mask, options)
    return _launch(code, norm, unbiased, eps, r, w, m).to(rewards.dtype)


def as_estimator(method: str) -> Callable[..., Tensor]:
    """``fn(rewards, weights, mask, **options) -> (B, G)`` for ``method``: the registry functions' signature, like
    ``fused.compiled`` (the bench times it next to them)."""
    if method not in _METHODS:
        raise TritonUnsupported(f"the Triton path does not implement method {method!r}; "
                                f"supported: {', '.join(supported())}")
    return lambda rewards, weights, mask, **options: compute(method, rewards, weights, mask, **options)
