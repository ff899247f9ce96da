"""Per-group Python-loop references of the scalar estimators, written from ``shared/spec/methods.md`` alone.

Used only by the tests (batched == reference) and ``scripts/bench_advantages.py`` (speedup over the loop). The
style is verl's GRPO advantage: walk the groups one by one, pull out the valid rollouts of the group, take their
statistics, write the advantages back. Slow on purpose and kept obvious; never call these in training.

Same conventions as the batched estimators: ``rewards`` (B, G, K) float, ``weights`` (K,) already normalized to sum
1, ``mask`` (B, G) bool; options ``adv_norm`` (group | batch_std | none), ``std_unbiased``, ``eps``. Population std
unless ``std_unbiased``; a statistic over values that are all equal, or over fewer than 2 values, is exactly 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

_NORMS = ("group", "batch_std", "none")


def _check(adv_norm: str) -> None:
    if adv_norm not in _NORMS:
        raise ValueError(f"unknown adv_norm {adv_norm!r}")


def _std(v: Tensor, unbiased: bool) -> Tensor:
    """Std of the 1-D values ``v``; 0 when there are fewer than 2 of them or they are all equal."""
    n = v.numel()
    if n < 2 or bool(v.max() == v.min()):
        return v.new_zeros(())
    dev = v - v.mean()
    return ((dev * dev).sum() / (n - 1 if unbiased else n)).sqrt()


def _centred(v: Tensor) -> Tensor:
    """``v - mean(v)``; all zeros when fewer than 2 values or all equal (a flat group carries no signal)."""
    if v.numel() < 2 or bool(v.max() == v.min()):
        return torch.zeros_like(v)
    return v - v.mean()


def _batch_std(x: Tensor, mask: Tensor, unbiased: bool) -> Tensor:
    """Std of each column of x (B, G, K) or of x (B, G) over every valid rollout of the batch. -> (K,) or ()."""
    valid = torch.cat([x[b][mask[b]] for b in range(x.shape[0])])
    if x.dim() == 2:
        return _std(valid, unbiased)
    return torch.stack([_std(valid[:, k], unbiased) for k in range(x.shape[2])])


def _divisor(v: Tensor, batch_sd, adv_norm: str, unbiased: bool):
    """What a group's values ``v`` are divided by under ``adv_norm`` (``None``: no division)."""
    if adv_norm == "none":
        return None
    if adv_norm == "batch_std":
        return batch_sd
    if v.dim() == 1:
        return _std(v, unbiased)
    return torch.stack([_std(v[:, k], unbiased) for k in range(v.shape[1])])


def grpo(rewards: Tensor, weights: Tensor, mask: Tensor, *, adv_norm: str = "group", std_unbiased: bool = False,
         eps: float = 1e-6) -> Tensor:
    """Loop GRPO (reward combination): ``s = sum_k w_k r_k``; ``A = (s - mean_g s) / (std s + eps)``."""
    _check(adv_norm)
    B, G, _ = rewards.shape
    s_all = (rewards * weights).sum(-1)
    batch_sd = _batch_std(s_all, mask, std_unbiased) if adv_norm == "batch_std" else None
    out = torch.zeros(B, G, dtype=rewards.dtype, device=rewards.device)
    for b in range(B):
        idx = mask[b].nonzero().flatten()
        s = s_all[b, idx]
        a = _centred(s)
        sd = _divisor(s, batch_sd, adv_norm, std_unbiased)
        out[b, idx] = a if sd is None else a / (sd + eps)
    return out


def grpo_no_std(rewards: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
    """Loop Dr. GRPO: ``A = s - mean_g s``."""
    return grpo(rewards, weights, mask, adv_norm="none")


def _per_objective(rewards: Tensor, mask: Tensor, adv_norm: str, std_unbiased: bool, eps: float) -> list:
    """For each group: (valid indices, A_k of the valid rollouts (n, K), the group's divisor (K,) or None)."""
    _check(adv_norm)
    batch_sd = _batch_std(rewards, mask, std_unbiased) if adv_norm == "batch_std" else None
    groups = []
    for b in range(rewards.shape[0]):
        idx = mask[b].nonzero().flatten()
        r = rewards[b, idx]  # (n, K)
        centred = torch.stack([_centred(r[:, k]) for k in range(r.shape[1])], dim=1)
        groups.append((idx, centred, _divisor(r, batch_sd, adv_norm, std_unbiased)))
    return groups


def adv_combination(rewards: Tensor, weights: Tensor, mask: Tensor, *, adv_norm: str = "group",
                    std_unbiased: bool = False, eps: float = 1e-6) -> Tensor:
    """Loop advantage combination: ``A_k = (r_k - mean_g r_k) / (std r_k + eps)``, ``A = sum_k w_k A_k``."""
    out = torch.zeros(rewards.shape[:2], dtype=rewards.dtype, device=rewards.device)
    for b, (idx, centred, sd) in enumerate(_per_objective(rewards, mask, adv_norm, std_unbiased, eps)):
        a_k = centred if sd is None else centred / (sd + eps)
        out[b, idx] = (a_k * weights).sum(-1)
    return out


def gdpo(rewards: Tensor, weights: Tensor, mask: Tensor, *, adv_norm: str = "group", std_unbiased: bool = False,
         eps: float = 1e-6) -> Tensor:
    """Loop GDPO: adv_combination per group, then ``(A_sum - mean_batch) / (std_batch + eps)`` over the valid
    rollouts of the groups with >= 2 valid rollouts; a group whose ``A_sum`` is flat stays 0."""
    a_sum = adv_combination(rewards, weights, mask, adv_norm=adv_norm, std_unbiased=std_unbiased, eps=eps)
    out = torch.zeros_like(a_sum)
    counted = [b for b in range(a_sum.shape[0]) if int(mask[b].sum()) >= 2]
    if not counted:
        return out
    pooled = torch.cat([a_sum[b][mask[b]] for b in counted])
    mu, sd = pooled.mean(), _std(pooled, std_unbiased)
    for b in counted:
        idx = mask[b].nonzero().flatten()
        v = a_sum[b, idx]
        if bool(v.max() != v.min()):
            out[b, idx] = (v - mu) / (sd + eps)
    return out


def dvao(rewards: Tensor, weights: Tensor, mask: Tensor, *, adv_norm: str = "group", std_unbiased: bool = False,
         eps: float = 1e-6) -> Tensor:
    """Loop DVAO: ``A = sum_k w_k (r_k - mean_g r_k) / (sum_k w_k sigma_k + eps)``, ``sigma_k`` the std of r_k."""
    out = torch.zeros(rewards.shape[:2], dtype=rewards.dtype, device=rewards.device)
    for b, (idx, centred, sd) in enumerate(_per_objective(rewards, mask, adv_norm, std_unbiased, eps)):
        num = (centred * weights).sum(-1)
        out[b, idx] = num if sd is None else num / ((sd * weights).sum() + eps)
    return out


REFERENCES = {
    "grpo": grpo,
    "grpo_no_std": grpo_no_std,
    "adv_combination": adv_combination,
    "gdpo": gdpo,
    "dvao": dvao,
}

try:  # vpo / gated references live in their own module, written separately
    from tests.reference_loops_vpo import REFERENCES as _R

    REFERENCES.update(_R)
except ImportError:
    pass
