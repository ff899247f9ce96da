"""VPO, Vector Policy Optimization (arXiv 2605.22817): credit a rollout for the best scalarized reward its answers
reach under random weightings of the objectives (docs/methods.md, "Spread").

Choices and where they come from. The paper (abstract, introduction) states: vector rewards; several answers per
rollout; scalarization by weights drawn from a Dirichlet distribution; a set-level objective, the expected best
scalarized reward among a rollout's answers; a drop-in replacement for GRPO's advantage estimator. The paper's exact
Dirichlet concentration, number of weightings and answers per rollout could not be found in the stored copies of
the paper (searched 2026-11: only its abstract and introduction were reachable), so these follow the spec and
are ours (a public third-party re-implementation, the ``vpo_sandbox`` README, makes the same per-group choice):
- ``lambda_d ~ Dirichlet(alpha * 1)``, ``alpha = 1`` (uniform on the simplex), ``D = num_weightings = 32``;
- the D weightings are drawn per group and shared by its rollouts (common random numbers: rollouts are compared
  under the same weightings, so the centring removes the sampling noise); fresh every call from ``generator``;
- baseline: the group mean of the set score, divided by its group std (GRPO's normalization);
- the answers per rollout are whatever the task produced (M of the (B, G, M, K) rewards).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mo_rl.advantages._stats import center, divide, group_std
from mo_rl.advantages.registry import register
from mo_rl.errors import MoRLError

_DEFAULT_SEED = 0  # generator=None: a fixed seed, so a call without one is deterministic


def sample_weightings(weights: Tensor, batch: int, num_weightings: int, alpha: float,
                      generator: torch.Generator | None = None) -> Tensor:
    """D weightings per group, ``lambda ~ Dirichlet(alpha)`` over the objectives with ``weights > 0``; the others
    get 0. -> (B, D, K), weights' dtype and device.

    Drawn as normalized Gamma(alpha) variables (restricting a Dirichlet to a subset of coordinates and
    renormalizing is again a Dirichlet), in float64 on the CPU from a seed taken from ``generator``, so the batched
    estimator and the loop reference see the same lambdas and the global RNG is left as it was.
    """
    if not (isinstance(alpha, (int, float)) and alpha > 0):
        raise MoRLError(f"vpo alpha={alpha!r} must be a number > 0 (the Dirichlet concentration)")
    if not (isinstance(num_weightings, int) and num_weightings >= 1):
        raise MoRLError(f"vpo num_weightings={num_weightings!r} must be an integer >= 1")
    gen = generator if generator is not None else torch.Generator().manual_seed(_DEFAULT_SEED)
    seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        conc = torch.full((len(weights),), float(alpha), dtype=torch.float64)
        g = torch.distributions.Gamma(conc, torch.ones_like(conc)).sample((batch, num_weightings))
    g = g * (weights.detach().cpu() > 0)
    return (g / g.sum(-1, keepdim=True).clamp_min(1e-300)).to(dtype=weights.dtype, device=weights.device)


CREDITS = ("shapley", "loo")


def shapley_credit(u: Tensor, mask: Tensor) -> Tensor:
    """Each rollout's Shapley value in its group's max game, per weighting. u: (B, G, D) scalarized rewards,
    mask: (B, G) -> (B, G, D), 0 on masked rollouts.

    With the n valid values of a group sorted ascending ``u_(1) <= ... <= u_(n)``, Littlechild and Owen's closed
    form for a max game is ``phi_(i) = sum_{j=2..i} (u_(j) - u_(j-1)) / (n - j + 1)`` (baseline: the group's
    minimum). Batched: masked entries sort first (as -inf), so the valid ones sit at positions G-n .. G-1 of the
    sort and the divisor ``n - j + 1`` is ``G - p`` at sorted position p, whatever n is; one sort along G, a
    cumulative sum, and the inverse permutation. Ties get equal credit: the increment between two equal values is 0.
    """
    G = u.shape[1]
    m = mask.unsqueeze(-1).expand_as(u)
    srt, order = u.masked_fill(~m, -torch.inf).sort(dim=1, stable=True)
    live = m.gather(1, order)
    prev_live = torch.cat([torch.zeros_like(live[:, :1]), live[:, :-1]], 1)
    vals = torch.where(live, srt, 0.0)
    step = torch.where(prev_live, vals - torch.cat([vals[:, :1], vals[:, :-1]], 1), 0.0)
    pos = torch.arange(G, device=u.device, dtype=u.dtype).view(1, G, 1)
    phi_sorted = (step / (G - pos)).cumsum(1)
    return torch.zeros_like(u).scatter(1, order, phi_sorted).masked_fill(~m, 0.0)


def loo_credit(u: Tensor, mask: Tensor) -> Tensor:
    """Leave-one-out credit ``max_g' u_g' - max_{g' != g} u_g'`` per weighting (the earlier rule, kept for
    comparison as ``credit=loo``): u (B, G, D), mask (B, G) -> (B, G, D). 0 for every rollout that ties at the top."""
    s = u.masked_fill(~mask.unsqueeze(-1), -torch.inf)
    top, win = s.max(1)  # (B, D)
    second = s.scatter(1, win.unsqueeze(1), -torch.inf).amax(1)
    gain = torch.where(torch.isfinite(second), top - second, 0.0).unsqueeze(1)  # 0 with < 2 valid rollouts
    return torch.where((s == top.unsqueeze(1)) & mask.unsqueeze(-1), gain, 0.0)


def set_scores(rewards: Tensor, mask: Tensor, lambdas: Tensor,
               credit: str = "shapley") -> tuple[Tensor, Tensor, Tensor]:
    """Per-rollout score S (B, G), the rollout mask (B, G) and the winner index per weighting.

    rewards (B, G, M, K) with answer mask (B, G, M): ``S = mean_d max_j lambda_d . r_j``; winners (B, G, D) index
    answers. rewards (B, G, K) with mask (B, G): ``S = mean_d credit_d`` with ``credit`` ``shapley`` (each
    rollout's Shapley value in the group's max game, ``shapley_credit``) or ``loo`` (leave-one-out,
    ``loo_credit``); winners (B, D) index rollouts.
    """
    if rewards.dim() == 4:
        s = torch.einsum("bgmk,bdk->bgdm", rewards, lambdas).masked_fill(~mask.unsqueeze(2), -torch.inf)
        best, win = s.max(-1)
        valid = mask.any(-1)
        return torch.where(valid.unsqueeze(-1), best, 0.0).mean(-1), valid, win
    if credit not in CREDITS:
        raise MoRLError(f"unknown vpo credit {credit!r}; allowed: {', '.join(CREDITS)}")
    u = torch.einsum("bgk,bdk->bgd", rewards, lambdas)
    win = u.masked_fill(~mask.unsqueeze(-1), -torch.inf).argmax(1)  # (B, D)
    phi = (shapley_credit if credit == "shapley" else loo_credit)(u, mask)
    return phi.mean(-1), mask, win


def normalize(score: Tensor, valid: Tensor, std_unbiased: bool, eps: float) -> Tensor:
    """GRPO's group normalization of the set score: ``(S - mean_g S) / (std_g S + eps)``; 0 where flat or masked
    (eps=0 included: the guarded division)."""
    return divide(center(score, valid), group_std(score, valid, std_unbiased), eps)


def _answers(rewards: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """One answer per rollout is the single-answer case: (B, G, 1, K) -> (B, G, K)."""
    return (rewards[:, :, 0], mask[:, :, 0]) if rewards.dim() == 4 and rewards.shape[2] == 1 else (rewards, mask)


def vpo_diagnostics(rewards: Tensor, weights: Tensor, mask: Tensor, lambdas: Tensor, score: Tensor, valid: Tensor,
                    win: Tensor) -> dict:
    """What ``vpo`` computed, summarized (from the same weightings it drew). ``vpo/set_score`` (mean set score; single answer: the group's ``mean_d max_g``), ``vpo/win_frac/<j>`` (share
    of weightings answer position j wins; single answer: ``vpo/frac_rollouts_winning``, valid rollouts best for at
    least one weighting) and ``vpo/winner_spread`` (K,): the range, per objective, of the winning answers' rewards
    across weightings, averaged over sets. rewards, mask: after ``_answers``; lambdas (B, D, K); the rest are
    ``set_scores``' outputs."""
    out: dict = {}
    if rewards.dim() == 4:
        M, live = rewards.shape[2], valid
        hits = torch.nn.functional.one_hot(win, M)[valid].to(rewards.dtype)  # (n, D, M)
        out["vpo/set_score"] = float(score[valid].mean()) if bool(valid.any()) else 0.0
        for j in range(M):
            out[f"vpo/win_frac/{j}"] = float(hits[..., j].mean()) if len(hits) else 0.0
        winners = rewards.gather(2, win.unsqueeze(-1).expand(*win.shape, rewards.shape[-1]))  # (B, G, D, K)
    else:
        live = mask.sum(1) >= 2
        s = torch.einsum("bgk,bdk->bgd", rewards, lambdas).masked_fill(~mask.unsqueeze(-1), -torch.inf)
        out["vpo/set_score"] = float(s.amax(1).mean(-1)[live].mean()) if bool(live.any()) else 0.0
        won = torch.zeros_like(mask).scatter(1, win, True) & mask & live.unsqueeze(1)
        n = (mask & live.unsqueeze(1)).sum()
        out["vpo/frac_rollouts_winning"] = float(won.sum() / n) if int(n) else 0.0
        winners = rewards.gather(1, win.unsqueeze(-1).expand(*win.shape, rewards.shape[-1]))  # (B, D, K)
    spread = (winners.amax(-2) - winners.amin(-2))[live]
    out["vpo/winner_spread"] = spread.mean(0) if len(spread) else torch.zeros_like(weights)
    return out


@register("vpo", "expected best Dirichlet-scalarized reward of a rollout's answers, group-normalized",
          multi_answer=True)
def vpo(rewards: Tensor, weights: Tensor, mask: Tensor, *, alpha: float = 1.0, num_weightings: int = 32,
        credit: str = "shapley", std_unbiased: bool = False, eps: float = 1e-6,
        generator: torch.Generator | None = None, diagnostics: dict | None = None) -> Tensor:
    """VPO (arXiv 2605.22817): per group draw ``lambda_d ~ Dirichlet(alpha)``, d = 1..D, then
    ``S[b, g] = mean_d max_j lambda_d . r[b, g, j]`` and ``A = (S - mean_g S) / (std_g S + eps)``.

    Single answer (M = 1): the group is the set, and a rollout's S is its mean credit over the weightings:
    ``credit="shapley"`` (default) its Shapley value in the group's max game (tied rollouts share; the group's
    worst rollout gets 0; credits add up to max - min), ``credit="loo"`` the leave-one-out contribution
    ``max_g' u_g' - max_{g' != g} u_g'`` (0 for every rollout tied at the top, so a group whose best reward vector
    appears twice gets no signal: kept for comparison).

    Args:
        rewards: (B, G, K) float, or (B, G, M, K) with M answers per rollout; every objective scaled to [0, 1].
        weights: (K,) float. They enter only through their support: the Dirichlet is over the objectives with
            weight > 0 (a weight-0 objective, e.g. a gate under ``gated``, is ignored); the sizes are not used.
        mask: (B, G) bool, or (B, G, M) for (B, G, M, K) rewards: missing answers masked.
        alpha: Dirichlet concentration. num_weightings: D. credit: ``shapley`` or ``loo`` (single answer only).
        std_unbiased: Bessel's correction. eps: division guard.
        generator: runtime context, a seeded torch.Generator; ``None`` means a fixed seed (deterministic).
        diagnostics: runtime context; a dict to fill with ``vpo_diagnostics`` of these very draws, or None.
    Returns:
        (B, G) advantages; 0 on masked rollouts (no valid answer) and in flat or < 2-valid groups.
    """
    rewards, mask = _answers(rewards, mask)
    lambdas = sample_weightings(weights, rewards.shape[0], num_weightings, alpha, generator)
    score, valid, win = set_scores(rewards, mask, lambdas, credit)
    if diagnostics is not None:
        diagnostics.update(vpo_diagnostics(rewards, weights, mask, lambdas, score, valid, win))
    return normalize(score, valid, std_unbiased, eps)
