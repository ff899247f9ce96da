"""Scalar-advantage estimators: grpo, grpo_no_std, adv_combination, gdpo, dvao (docs/methods.md).

Conventions shared by every function here, stated once because peers differ:
- population std (divide by the count) unless ``std_unbiased=True``; TRL, torchtune and verl use Bessel's;
- a group that is flat (all valid values equal) or has < 2 valid rollouts contributes exactly 0, never NaN;
- masked rollouts get exactly 0 and enter no statistic;
- ``adv_norm``: ``group`` divides by the group std, ``batch_std`` by the std over all valid rollouts of the batch
  of the same raw quantity (means stay per group), ``none`` does not divide.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from mo_rl.advantages._stats import center, center_and_scale, divide, group_flat, scale
from mo_rl.advantages.registry import register

AdvNorm = Literal["group", "batch_std", "none"]


@register("grpo", "sum the weighted rewards, then normalize within the group (reward combination)")
def grpo(rewards: Tensor, weights: Tensor, mask: Tensor, *, adv_norm: AdvNorm = "group", std_unbiased: bool = False,
         eps: float = 1e-6) -> Tensor:
    """GRPO with reward combination (arXiv 2402.03300): ``s = sum_k w_k r_k``, ``A = (s - mean_g s) / (std s + eps)``.

    Args:
        rewards: (B, G, K) float. weights: (K,) float, sums to 1. mask: (B, G) bool.
        adv_norm: ``group`` | ``batch_std`` | ``none``. std_unbiased: Bessel's correction. eps: division guard.
    Returns:
        (B, G) advantages; 0 on masked rollouts and on flat or < 2-valid groups.
    """
    s = (rewards * weights).sum(-1)
    c, sd = center_and_scale(s, mask, adv_norm, std_unbiased)
    return c if sd is None else divide(c, sd, eps)


@register("grpo_no_std", "Dr. GRPO: weighted reward sum minus the group mean, no std division")
def grpo_no_std(rewards: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
    """Dr. GRPO (arXiv 2503.20783): ``A = s - mean_g s`` with ``s = sum_k w_k r_k``; there is no std to choose.

    Args:
        rewards: (B, G, K) float. weights: (K,) float, sums to 1. mask: (B, G) bool.
    Returns:
        (B, G) advantages; 0 on masked rollouts and on flat or < 2-valid groups.
    """
    return center((rewards * weights).sum(-1), mask)


@register("adv_combination", "normalize each objective within the group, then take the weighted sum")
def adv_combination(rewards: Tensor, weights: Tensor, mask: Tensor, *, adv_norm: AdvNorm = "group",
                    std_unbiased: bool = False, eps: float = 1e-6) -> Tensor:
    """Advantage combination, weighted MO-GRPO (arXiv 2509.22047):
    ``A_k = (r_k - mean_g r_k) / (std r_k + eps)``, ``A = sum_k w_k A_k``; no batch step.

    Args:
        rewards: (B, G, K) float. weights: (K,) float, sums to 1. mask: (B, G) bool.
        adv_norm: ``group`` | ``batch_std`` | ``none``. std_unbiased: Bessel's correction. eps: division guard.
    Returns:
        (B, G) advantages; an objective flat in a group adds 0 there; 0 on masked rollouts.
    """
    c, sd = center_and_scale(rewards, mask, adv_norm, std_unbiased)
    a_k = c if sd is None else divide(c, sd, eps)
    return (a_k * weights).sum(-1)


@register("gdpo", "normalize each objective in its group, sum, then normalize over the whole batch")
def gdpo(rewards: Tensor, weights: Tensor, mask: Tensor, *, adv_norm: AdvNorm = "group", std_unbiased: bool = False,
         eps: float = 1e-6) -> Tensor:
    """GDPO (arXiv 2601.05242): ``A_sum = sum_k w_k A_k`` as in adv_combination, then
    ``A = (A_sum - mean_batch) / (std_batch + eps)`` over the valid rollouts of groups with >= 2 valid rollouts.

    The batch step is the method's own and stays under every ``adv_norm`` (which only changes the per-objective
    std). Conditioned rewards (GDPO Eq. 8) are a reward transform: ``objectives.conditions`` in the config.

    Args:
        rewards: (B, G, K) float. weights: (K,) float, sums to 1. mask: (B, G) bool.
        adv_norm: ``group`` | ``batch_std`` | ``none``. std_unbiased: Bessel's correction. eps: division guard.
    Returns:
        (B, G) advantages; 0 on masked rollouts, on < 2-valid groups and where ``A_sum`` is flat in the group.
    """
    a_sum = adv_combination(rewards, weights, mask, adv_norm=adv_norm, std_unbiased=std_unbiased, eps=eps)
    counted = mask & (mask.sum(1, keepdim=True) >= 2)
    a = center(a_sum.reshape(1, -1), counted.reshape(1, -1)).reshape(a_sum.shape)
    a = divide(a, scale(a_sum, counted, "batch_std", std_unbiased), eps)
    return a.masked_fill(group_flat(a_sum, counted).expand_as(a), 0.0)


def _dvao_parts(rewards: Tensor, weights: Tensor, mask: Tensor, adv_norm: str, std_unbiased: bool):
    """Per-objective weighted centred rewards (B, G, K) and weighted stds (B or 1, 1, K)."""
    c, sd = center_and_scale(rewards, mask, adv_norm, std_unbiased)
    return c * weights, None if sd is None else sd * weights


@register("dvao", "weight each objective by its within-group reward std, one bounded advantage")
def dvao(rewards: Tensor, weights: Tensor, mask: Tensor, *, adv_norm: AdvNorm = "group", std_unbiased: bool = False,
         eps: float = 1e-6, diagnostics: dict | None = None) -> Tensor:
    """DVAO (arXiv 2605.25604): with ``sigma_k = std_g r_k`` and ``w~_k = w_k sigma_k / sum_l w_l sigma_l``,
    ``A = sum_k w~_k A_k = sum_k w_k (r_k - mean_g r_k) / (sum_k w_k sigma_k + eps)``; no batch step.

    A std-weighted (not variance, not softmax) blend: an objective flat in a group gets weight 0 there. Per group
    ``A = c * A_grpo`` with ``0 <= c <= 1``, so ``|A| <= |A_grpo|`` and ``mean_g A^2 <= 1``.

    Args:
        rewards: (B, G, K) float. weights: (K,) float, sums to 1. mask: (B, G) bool.
        adv_norm: ``group`` | ``batch_std`` (sigma over the batch) | ``none`` (no division: Dr. GRPO).
        std_unbiased: Bessel's correction. eps: division guard.
        diagnostics: runtime context; a dict to fill with ``dvao/weight`` (``effective_weights``), or None.
    Returns:
        (B, G) advantages; 0 on masked rollouts and where every objective is flat in the group.
    """
    num, den = _dvao_parts(rewards, weights, mask, adv_norm, std_unbiased)
    if diagnostics is not None:
        diagnostics["dvao/weight"] = effective_weights(weights, den, eps)
    return num.sum(-1) if den is None else divide(num.sum(-1), den.sum(-1), eps)


def effective_weights(weights: Tensor, den: Tensor | None, eps: float) -> Tensor:
    """dvao's effective weights ``w~_k`` averaged over the groups where any objective varies. den: the weighted
    stds (B or 1, 1, K) of ``_dvao_parts``, None without division. -> (K,)."""
    if den is None:
        return weights
    total = den.sum(-1, keepdim=True)
    live = (total > 0).squeeze(-1).squeeze(-1)
    w = (den / total.clamp_min(eps)).squeeze(1)[live]
    return w.mean(0) if len(w) else weights * 0
