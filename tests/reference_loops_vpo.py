"""Plain per-group Python-loop references for ``vpo`` and ``gated``, used only by tests and the benchmark.

Each takes the estimator's own arguments. ``vpo_reference`` draws its weightings with the estimator's
``sample_weightings`` (the same generator gives the same lambdas), then loops over groups, rollouts, weightings and
answers. ``gated_reference`` loops over rollouts and gates; its inner advantages come from one batched ``compute``
call on the mask the loop built, because an inner method may take batch statistics (gdpo) or draw per-batch
weightings (vpo) that a group-by-group call would change.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from mo_rl.advantages.gated import DEFAULT_THRESHOLD, inner_weights
from mo_rl.advantages.registry import check_inputs, compute, reduce_answers
from mo_rl.advantages.vpo import sample_weightings


def _dot(lam: Tensor, r: Tensor) -> float:
    return sum(float(lam[k]) * float(r[k]) for k in range(len(lam)))


def _normalize(scores: list[float | None], std_unbiased: bool, eps: float) -> list[float]:
    """One group's ``(S - mean) / (std + eps)`` over the valid entries (None = masked); 0 if flat or < 2 valid."""
    vals = [s for s in scores if s is not None]
    if len(vals) < 2 or max(vals) == min(vals):
        return [0.0] * len(scores)
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - int(std_unbiased)))
    return [0.0 if s is None else (s - mean) / (std + eps) for s in scores]


def shapley_brute_force(u: list[float]) -> list[float]:
    """Shapley values of the max game ``v(S) = max_{i in S} u_i`` (``v(empty) = min u``, the baseline the closed
    form uses), by enumerating every coalition: ``phi_i = sum_S |S|! (n-|S|-1)! / n! (v(S + i) - v(S))``."""
    n = len(u)
    base = min(u)

    def v(s):
        return max((u[j] for j in s), default=base)

    out = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        total = 0.0
        for size in range(n):
            for s in itertools.combinations(others, size):
                w = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
                total += w * (v(s + (i,)) - v(s))
        out.append(total)
    return out


def _group_scores(r: Tensor, m: Tensor, lams: Tensor, credit: str = "shapley") -> list[float | None]:
    """Set scores of one group: r (G, M, K) with m (G, M), or r (G, K) with m (G,) (Shapley or leave-one-out)."""
    G, D = r.shape[0], lams.shape[0]
    if r.dim() == 3:
        out: list[float | None] = []
        for g in range(G):
            answers = [j for j in range(r.shape[1]) if bool(m[g, j])]
            out.append(sum(max(_dot(lams[d], r[g, j]) for j in answers) for d in range(D)) / D if answers else None)
        return out
    valid = [g for g in range(G) if bool(m[g])]
    out = [None] * G
    totals = {g: 0.0 for g in valid}
    for d in range(D):
        u = [_dot(lams[d], r[h]) for h in valid]
        if credit == "shapley":
            for g, phi in zip(valid, shapley_brute_force(u) if u else []):
                totals[g] += phi
            continue
        for i, g in enumerate(valid):
            rest = u[:i] + u[i + 1:]
            totals[g] += max(u) - max(rest) if rest else 0.0
    for g in valid:
        out[g] = totals[g] / D
    return out


def vpo_reference(rewards: Tensor, weights: Tensor | None = None, mask: Tensor | None = None, *, alpha: float = 1.0,
                  num_weightings: int = 32, credit: str = "shapley", std_unbiased: bool = False, eps: float = 1e-6,
                  generator: torch.Generator | None = None) -> Tensor:
    """Loop version of ``vpo``; same arguments, same weightings for the same generator state."""
    rewards, weights, mask = check_inputs(rewards, weights, mask, multi_answer=True)
    if rewards.dim() == 4 and rewards.shape[2] == 1:
        rewards, mask = rewards[:, :, 0], mask[:, :, 0]
    lambdas = sample_weightings(weights, rewards.shape[0], num_weightings, alpha, generator).double()
    r = rewards.double()
    out = torch.zeros(rewards.shape[:2], dtype=torch.float64)
    for b in range(rewards.shape[0]):
        adv = _normalize(_group_scores(r[b], mask[b], lambdas[b], credit), std_unbiased, eps)
        for g in range(rewards.shape[1]):
            out[b, g] = adv[g]
    return out.to(rewards.dtype)


def gated_reference(rewards: Tensor, weights: Tensor | None = None, mask: Tensor | None = None, *,
                    inner: str = "dvao", gates: list = [], thresholds: list = [], gate_level: str = "rollout",
                    accept_frac: float = 0.5, inner_options: dict = {}, objectives: list[str] | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
    """Loop version of ``gated`` (the list and dict defaults are never mutated)."""
    rewards, weights, mask = check_inputs(rewards, weights, mask, multi_answer=True)
    r, valid = reduce_answers(rewards, mask) if rewards.dim() == 4 else (rewards, mask)
    idx = [objectives.index(g) if isinstance(g, str) else g for g in gates]
    thr = list(thresholds) or [DEFAULT_THRESHOLD] * len(idx)
    B, G = valid.shape
    passed = torch.zeros(B, G, dtype=torch.bool)
    for b in range(B):
        for g in range(G):
            passed[b, g] = bool(valid[b, g]) and all(float(r[b, g, k]) >= t for k, t in zip(idx, thr))
    keep = passed.clone()
    if gate_level == "group":
        for b in range(B):
            n = int(valid[b].sum())
            accepted = (int(passed[b].sum()) / n if n else 0.0) >= accept_frac
            keep[b] = valid[b] & accepted
    inner_mask = mask & (keep.unsqueeze(-1) if mask.dim() == 3 else keep)
    adv = compute(inner, rewards, inner_weights(weights, idx, objectives), inner_mask, generator=generator,
                  objectives=objectives, **inner_options)
    out = torch.zeros_like(adv)
    for b in range(B):
        if gate_level == "group":
            for g in range(G):
                out[b, g] = adv[b, g] if bool(keep[b, g]) else 0.0
            continue
        n, n_pass = int(valid[b].sum()), int(passed[b].sum())
        q = n_pass / n if n else 0.0
        s = math.sqrt(q * (1 - q))
        peak = max([abs(float(adv[b, g])) for g in range(G) if bool(passed[b, g])], default=0.0)
        d = 1.0 / (2 * s * peak) if 0 < q < 1 and 2 * s * peak > 1 else 1.0
        for g in range(G):
            gate = 0.0 if not 0 < q < 1 else ((1 - q) / s if bool(passed[b, g]) else -q / s)
            inner_part = float(adv[b, g]) if bool(passed[b, g]) else 0.0
            out[b, g] = gate + d * inner_part if bool(valid[b, g]) else 0.0
    return out


REFERENCES = {"vpo": vpo_reference, "gated": gated_reference}
