"""Gated: rubric objectives accept or reject rollouts, they are never scores (docs/methods.md, "Gate").

A wrapper around any non-wrapper estimator (``inner``). A gate is an objective with a threshold: a rollout passes
it when ``r[k] >= threshold`` (0.5 by default, the midpoint of a [0, 1] reward). Gate objectives never enter a
weighted sum: the inner method sees the weights with the gates zeroed and the rest renormalized.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mo_rl.advantages.registry import compute, get, reduce_answers, register
from mo_rl.errors import MoRLError, choice_error

GATE_LEVELS = ("rollout", "group")
DEFAULT_THRESHOLD = 0.5


def resolve_gates(gates, thresholds, objectives, K: int) -> tuple[list[int], list[float]]:
    """Gate names (looked up in ``objectives``) or indices -> objective indices, with one threshold each."""
    idx = []
    for g in gates:
        if isinstance(g, str):
            if objectives is None:
                raise MoRLError(f"gate {g!r} is a name, but no objective names were given; pass objectives=[...] "
                                f"or gate by index 0..{K - 1}")
            if g not in objectives:
                raise choice_error("gate objective", g, objectives)
            idx.append(list(objectives).index(g))
        elif isinstance(g, int) and not isinstance(g, bool) and 0 <= g < K:
            idx.append(g)
        else:
            raise MoRLError(f"gate {g!r} must be an objective name or an index in 0..{K - 1}")
    if len(set(idx)) != len(idx):
        raise MoRLError(f"gates {list(gates)} name the same objective twice")
    if len(thresholds) not in (0, len(idx)):
        raise MoRLError(f"thresholds {list(thresholds)} must be empty (0.5 each) or one per gate ({len(idx)})")
    return idx, [float(t) for t in thresholds] or [DEFAULT_THRESHOLD] * len(idx)


def gate_pass(rewards: Tensor, mask: Tensor, gates, thresholds, objectives) -> tuple[Tensor, Tensor, list[int]]:
    """Which rollouts pass each gate. -> (B, G, n_gates) bool, the (B, G) rollout mask, gate indices.

    Multi-answer rewards (B, G, M, K) are gated on each rollout's mean over its valid answers.
    """
    r, rollout_mask = reduce_answers(rewards, mask) if rewards.dim() == 4 else (rewards, mask)
    idx, thr = resolve_gates(gates, thresholds, objectives, r.shape[-1])
    per_gate = r[..., idx] >= torch.tensor(thr, dtype=r.dtype, device=r.device)
    return per_gate & rollout_mask.unsqueeze(-1), rollout_mask, idx


def _check(inner: str, gate_level: str, accept_frac: float) -> None:
    if get(inner).wrapper:
        raise MoRLError(f"gated inner={inner!r} is itself a wrapper; choose a plain method")
    if gate_level not in GATE_LEVELS:
        raise choice_error("gate_level", gate_level, GATE_LEVELS)
    if not 0 <= accept_frac <= 1:
        raise MoRLError(f"accept_frac={accept_frac!r} must be in [0, 1]")


def inner_weights(weights: Tensor, gate_idx: list[int], objectives) -> Tensor:
    """The weights with the gate objectives zeroed, renormalized to sum 1."""
    w = weights.clone()
    w[gate_idx] = 0
    if float(w.sum()) <= 0:
        names = [objectives[k] for k in gate_idx] if objectives is not None else gate_idx
        raise MoRLError(f"every objective with weight > 0 is a gate ({names}); gates never enter the weighted "
                        "sum, so give at least one non-gate objective a positive weight")
    return w / w.sum()


def accepted_groups(passed: Tensor, valid: Tensor, accept_frac: float) -> Tensor:
    """(B, G) bool: the valid rollouts of groups where >= accept_frac of the valid rollouts pass every gate."""
    frac = passed.sum(1, keepdim=True) / valid.sum(1, keepdim=True).clamp_min(1)
    return valid & (frac >= accept_frac)


def _inner_mask(mask: Tensor, keep: Tensor) -> Tensor:
    """Restrict the (B, G) or (B, G, M) mask to the rollouts in ``keep`` (B, G)."""
    return mask & (keep.unsqueeze(-1) if mask.dim() == 3 else keep)


def lexicographic(passed: Tensor, valid: Tensor, inner_adv: Tensor) -> Tensor:
    """The gate first, the inner method second: ``A = A_gate + d_b * A_inner``. All (B, G); -> (B, G).

    ``A_gate`` is grpo on the 0/1 pass indicator over the group's valid rollouts (population std): passers
    ``(1 - q) / s``, failers ``-q / s``, with ``q`` the group's pass fraction and ``s = sqrt(q (1 - q))``; it is 0
    where ``q`` is 0 or 1. ``A_inner`` is ``inner_adv`` on the passers (0 on failers). In a mixed group
    ``d_b = min(1, 1 / (2 s max|A_inner|))``, so the inner term moves a passer by at most ``1 / (2 s)``, half the
    gate's gap ``1 / s``: the lowest passer stays ``>= 1 / (2 s) >= 1`` above every failer. Elsewhere ``d_b = 1``.
    """
    p, v = passed.to(inner_adv.dtype), valid.to(inner_adv.dtype)
    q = p.sum(1, keepdim=True) / v.sum(1, keepdim=True).clamp_min(1)
    mixed = (q > 0) & (q < 1)
    s = torch.where(mixed, (q * (1 - q)).sqrt(), torch.ones_like(q))
    a_gate = torch.where(mixed, (p - q) / s, torch.zeros_like(q)) * v
    a_inner = torch.where(passed, inner_adv, torch.zeros_like(inner_adv))
    peak = a_inner.abs().amax(1, keepdim=True)
    d = torch.where(mixed & (2 * s * peak > 1), 1 / (2 * s * peak).clamp_min(1), torch.ones_like(q))
    return a_gate + d * a_inner


# The list and dict defaults are never mutated; they are lists and dicts so conf/method/gated.yaml mirrors them.
@register("gated", "rubric objectives gate rollouts (pass/fail first), an inner method ranks the passing ones",
          wrapper=True, multi_answer=True)
def gated(rewards: Tensor, weights: Tensor, mask: Tensor, *, inner: str = "dvao", gates: list = [],
          thresholds: list = [], gate_level: str = "rollout", accept_frac: float = 0.5, inner_options: dict = {},
          objectives: list[str] | None = None, generator: torch.Generator | None = None,
          diagnostics: dict | None = None) -> Tensor:
    """Rubric gating around ``inner``: a rollout passes when ``r[k] >= t_k`` for every gate k.

    ``rollout`` level (methods.md method 7, revised): a lexicographic order, the gate first, the inner method
    second. ``A = A_gate + d_b * A_inner`` (see ``lexicographic``), where ``A_inner = inner(r, w', mask & pass)``
    ranks the passers among themselves. Why this composition: the gate term is an ordinary group-normalized
    advantage (mean 0, std 1 over a mixed group), so a rare pass is lifted strongly (``(1 - q) / s`` is ~2.6 for 1
    pass in 8) and failures are pushed down only where some sibling passed; the inner term is only shrunk (never
    stretched) and only where it could cross the gate's gap, so passers keep the inner method's order and scale
    whenever that is safe. It satisfies: (a) every passer above every failer of its group; (b) the passers in the
    inner method's order; (c) a failer never positive (``-q / s < 0``); (d) an all-fail group 0 everywhere (the
    earlier fixed -1 pushed every sampled sequence of such groups down and was measured to lower the pass rate),
    an all-pass group the inner advantages as is; (e) finite, masked rollouts 0. The gate's std is the population
    std whatever the inner method's ``std_unbiased``.
    ``group`` level: the groups with ``>= accept_frac`` of their valid rollouts passing get
    ``inner(r, w', mask & accepted)``, the others 0 (and stay out of any batch statistic of the inner method); an
    accepted group is scored as is: a failing rollout in it keeps its inner advantage.
    ``w'`` is ``weights`` with the gates zeroed and renormalized.

    Args:
        rewards: (B, G, K) float, or (B, G, M, K) (gated on each rollout's answer mean; answers go to the inner
            method when it takes them). weights: (K,) float, sums to 1. mask: (B, G) or (B, G, M) bool.
        inner: the method that ranks rollouts (``mo-rl methods``), with its keyword ``inner_options``.
        gates: objective names (resolved through ``objectives``) or indices; empty = no gates = ``inner`` alone.
        thresholds: one per gate; empty means 0.5 each. gate_level: ``rollout`` | ``group``.
        accept_frac: group level, in [0, 1].
        objectives, generator: runtime context (objective names; passed on to the inner method).
        diagnostics: runtime context; a dict to fill with ``gate_diagnostics`` and the inner method's own, or None.
    Returns:
        (B, G) advantages; 0 on masked rollouts, on all-fail groups (rollout level) and on rejected groups.
    """
    _check(inner, gate_level, accept_frac)
    per_gate, valid, idx = gate_pass(rewards, mask, gates, thresholds, objectives)
    passed = per_gate.all(-1) & valid
    keep = passed if gate_level == "rollout" else accepted_groups(passed, valid, accept_frac)
    adv = compute(inner, rewards, inner_weights(weights, idx, objectives), _inner_mask(mask, keep),
                  generator=generator, objectives=objectives, diagnostics=diagnostics, **inner_options)
    if diagnostics is not None:
        diagnostics.update(gate_diagnostics(per_gate, valid, keep, idx, objectives, gate_level))
    if gate_level == "group":
        return torch.where(keep, adv, torch.zeros_like(adv))
    return lexicographic(passed, valid, adv)


def gate_diagnostics(per_gate: Tensor, valid: Tensor, keep: Tensor, idx: list[int], objectives,
                     gate_level: str) -> dict:
    """``gated/pass_rate`` (valid rollouts passing every gate), ``gated/pass_rate/<gate>`` per gate,
    ``gated/frac_mixed_groups`` (rollout level: groups with a pass and a fail, the ones the gate moves) and
    ``gated/frac_groups_accepted`` (group level), from what ``gated`` computed (``gate_pass``, the kept rollouts);
    the inner method's own diagnostics come from its call in ``gated`` (on what it scored)."""
    n = valid.sum().clamp_min(1)
    passed = per_gate.all(-1) & valid
    out: dict = {"gated/pass_rate": float(passed.sum() / n)}
    for j, k in enumerate(idx):
        out[f"gated/pass_rate/{objectives[k] if objectives is not None else k}"] = float(per_gate[..., j].sum() / n)
    live = valid.any(1)
    if gate_level == "group":
        out["gated/frac_groups_accepted"] = float(keep.any(1)[live].float().mean()) if bool(live.any()) else 0.0
    elif idx:
        mixed = passed.any(1) & (valid & ~passed).any(1)
        out["gated/frac_mixed_groups"] = float(mixed[live].float().mean()) if bool(live.any()) else 0.0
    return out
