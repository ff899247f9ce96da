"""Masked statistics over the group axis and over the whole batch, shared by every estimator.

All helpers take ``x: (B, G)`` or ``(B, G, K)`` and ``mask: (B, G)`` bool; masked entries never enter a statistic.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mo_rl.errors import choice_error

ADV_NORMS = ("group", "batch_std", "none")


def _m(x: Tensor, mask: Tensor) -> Tensor:
    """Broadcast the (B, G) mask to x's shape, as x's dtype."""
    m = mask.to(x.dtype)
    return m.unsqueeze(-1).expand_as(x) if x.dim() == 3 else m


def group_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over valid rollouts of each group. x: (B, G[, K]) -> (B, 1[, K]); 0 for an empty group."""
    m = _m(x, mask)
    n = m.sum(1, keepdim=True)
    return (x * m).sum(1, keepdim=True) / n.clamp_min(1)


def group_std(x: Tensor, mask: Tensor, unbiased: bool) -> Tensor:
    """Std over valid rollouts of each group (population by default). x: (B, G[, K]) -> (B, 1[, K]).

    Exactly 0 where the group is flat (all valid values equal) or has fewer than 2 valid rollouts.
    """
    return center_and_std(x, mask, unbiased)[1]


def center_and_std(x: Tensor, mask: Tensor, unbiased: bool) -> tuple[Tensor, Tensor]:
    """``center(x)`` and ``group_std(x)`` sharing one mean and one flatness test. -> (same shape as x, (B, 1[, K]))."""
    dev, n, flat = _deviations(x, mask)
    var = (dev * dev).sum(1, keepdim=True) / (n - int(unbiased)).clamp_min(1)
    return dev.masked_fill(flat, 0.0), var.sqrt().masked_fill(flat, 0.0)


def _deviations(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """-> (x minus its group mean, 0 on masked entries; valid count (B, 1[, K]); ``group_flat``)."""
    m = _m(x, mask)
    n = m.sum(1, keepdim=True)
    dev = (x - (x * m).sum(1, keepdim=True) / n.clamp_min(1)) * m
    return dev, n, _flat(x, ~m.bool(), n)


def group_flat(x: Tensor, mask: Tensor) -> Tensor:
    """True where a group's valid values are all equal or it has < 2 valid rollouts. -> (B, 1[, K]) bool.

    Tested by the range (max == min), not by std < tol: the rounding of a mean turns exactly equal rewards into
    tiny nonzero deviations, which an eps-guarded division would still scale to visible advantages.
    """
    out = ~_m(x, mask).bool()
    return _flat(x, out, (~out).sum(1, keepdim=True))


def _flat(x: Tensor, out: Tensor, n: Tensor) -> Tensor:
    """max == min over the valid entries of each group, or fewer than 2 of them. out: x's shape, True where masked;
    n: (B, 1[, K]) valid counts."""
    hi = x.masked_fill(out, float("-inf")).amax(1, keepdim=True)
    lo = x.masked_fill(out, float("inf")).amin(1, keepdim=True)
    return (hi == lo) | (n < 2)


def batch_std(x: Tensor, mask: Tensor, unbiased: bool) -> Tensor:
    """Std over all valid rollouts of the batch. x: (B, G[, K]) -> (1, 1[, K]); 0 if < 2 valid or all equal."""
    return group_std(x.reshape(1, -1, *x.shape[2:]), mask.reshape(1, -1), unbiased)


def center(x: Tensor, mask: Tensor) -> Tensor:
    """x minus its group mean; exactly 0 on masked rollouts and on flat groups. Same shape as x."""
    dev, _, flat = _deviations(x, mask)
    return dev.masked_fill(flat, 0.0)


def center_and_scale(x: Tensor, mask: Tensor, adv_norm: str, unbiased: bool) -> tuple[Tensor, Tensor | None]:
    """``(center(x), scale(x, adv_norm))`` with the group statistics computed once."""
    if adv_norm not in ADV_NORMS:
        raise choice_error("adv_norm", adv_norm, ADV_NORMS)
    c, sd = center_and_std(x, mask, unbiased)
    if adv_norm == "group":
        return c, sd
    return c, (batch_std(x, mask, unbiased) if adv_norm == "batch_std" else None)


def scale(x: Tensor, mask: Tensor, adv_norm: str, unbiased: bool) -> Tensor:
    """The std that ``adv_norm`` divides by, of the raw quantity x: (B, 1[, K]) for ``group``, (1, 1[, K]) for
    ``batch_std``; ``None`` for ``none``."""
    if adv_norm not in ADV_NORMS:
        raise choice_error("adv_norm", adv_norm, ADV_NORMS)
    if adv_norm == "group":
        return group_std(x, mask, unbiased)
    if adv_norm == "batch_std":
        return batch_std(x, mask, unbiased)
    return None


def divide(num: Tensor, std: Tensor, eps: float) -> Tensor:
    """``num / (std + eps)``, and exactly 0 where that denominator is not positive (eps=0 on a flat group would
    otherwise give 0/0 = NaN)."""
    if eps > 0:  # std >= 0, so the denominator is positive: no guard needed
        return num / (std + eps)
    den = std + eps
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))
