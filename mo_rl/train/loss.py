"""Per-token log-probs of completions and the clipped policy-gradient loss with its aggregation choices."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from mo_rl.rollout.base import RolloutBatch
from mo_rl.models.policy import OUTSIDE_NUCLEUS  # noqa: F401  (the loss's floor; defined with the log-probs)
from mo_rl.models.policy import sampled_logprobs

LOG_RATIO_CLAMP = 20.0  # |log pi/pi_old| cap before exp: e^20 ~ 5e8 is finite in float32 and far past any clip


def completion_logprobs(policy, batch: RolloutBatch, temperature: float = 1.0, top_p: float = 1.0) -> Tensor:
    """``policy.completion_logprobs``: log-probs of the completion tokens under the sampling distribution
    (temperature, then the top-p nucleus; ``OUTSIDE_NUCLEUS`` outside it), (N, T) float32, 0 on padding."""
    return policy.completion_logprobs(batch, temperature, top_p)


def _live_rows(mask: Tensor) -> Tensor:
    """(N, T) token mask -> (N,) bool: the sequences that have a token to train on (a masked rollout has none)."""
    return mask.sum(1) > 0


def aggregate(per_token: Tensor, mask: Tensor, loss_agg: str, max_tokens: int) -> Tensor:
    """Reduce (N, T) per-token losses to a scalar. Rows without a token (masked rollouts) enter no mean.

    ``token_mean``: sum over all tokens / number of tokens (token-level, DAPO/Lite-PPO);
    ``seq_mean_token_mean``: mean over sequences of each sequence's token mean (GRPO's original);
    ``seq_sum``: sum over all tokens / (sequences * max_tokens), a constant divisor per sequence (Dr. GRPO).
    """
    per_token = torch.where(mask > 0, per_token, torch.zeros_like(per_token))  # a NaN on padding must not leak
    total = per_token.sum()
    seqs = _live_rows(mask).sum().clamp_min(1)
    if loss_agg == "token_mean":
        return total / mask.sum().clamp_min(1)
    if loss_agg == "seq_mean_token_mean":
        return (per_token.sum(1) / mask.sum(1).clamp_min(1)).sum() / seqs
    if loss_agg == "seq_sum":
        return total / (seqs * max_tokens)
    raise ValueError(f"unknown loss_agg {loss_agg!r}")


def k3_kl(ref_logp: Tensor, logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || ref), ``exp(d) - d - 1`` with ``d = log ref - log pi`` (>= 0, unbiased
    for tokens sampled from pi; Schulman's "Approximating KL divergence"). (N, T) -> (N, T)."""
    d = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # the overflow guard for exp(d)
    return torch.exp(d) - d - 1


def policy_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, *, clip_eps: float = 0.2,
                clip_eps_high: float | None = None, ref_logp: Tensor | None = None, kl_coef: float = 0.0,
                loss_agg: str = "token_mean", max_tokens: int = 1, kl_logp: Tensor | None = None,
                distill: Tensor | None = None, distill_coef: float = 0.0) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate ``-min(rho A, clip(rho, 1-eps, 1+eps_high) A)`` plus ``kl_coef * KL`` (k3 estimator)
    plus ``distill_coef * distill`` (the directive's forward cross-entropy, ``forward_ce``).

    Args:
        logp, old_logp: (N, T) float, current / sampling log-probs of the completion tokens (the sampling
            distribution: temperature and top-p nucleus, as the engine sampled).
        ref_logp: (N, T) reference log-probs for the KL, of the same distribution as ``kl_logp`` (or ``logp``).
        kl_logp: (N, T) the current policy's log-probs for the KL term when they differ from ``logp``: under
            ``top_p < 1`` the KL is taken between the untruncated (temperature-scaled) distributions, because a
            nucleus log-prob is floored outside the nucleus and a floor on one side only reads as ~19 nats of KL
            with no gradient. None: ``logp``.
        adv: (N,) float, one advantage per sequence, or (N, T), one per token (the directive's token advantage).
            mask: (N, T) float, 1 on completion tokens; a masked rollout has an all-zero row and enters no term and
            no mean.
        distill: (N, T) a per-token loss added to the surrogate before aggregation (0 where it does not apply).
    Returns:
        (scalar loss, {"loss/pg", "loss/kl", "loss/clip_frac", "loss/ratio_mean"} as floats, and "loss/distill",
        the token mean of ``distill`` before its coefficient, when it is given).
    """
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    # exp of an unbounded log-ratio overflows to inf once the policy moved far (or a sampling log-prob is -inf),
    # and inf * 0 (a zero advantage, a masked token) is NaN, which would poison every gradient. The cap binds only
    # past |log ratio| = LOG_RATIO_CLAMP (a ratio of ~5e8): with A > 0 the clip has long taken over, so nothing
    # changes; with A < 0 the unclipped term -ratio * A is the one taken, and the cap bounds it at ~5e8 * |A| and
    # zeroes its gradient there (a finite loss that the cap does change; dual-clip PPO would bound it far lower).
    ratio = torch.exp((logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    a = adv.unsqueeze(1) if adv.dim() == 1 else adv
    clipped = ratio.clamp(1 - clip_eps, 1 + hi)
    pg = -torch.minimum(ratio * a, clipped * a)
    per_token = pg
    kl = torch.zeros_like(pg)
    if ref_logp is not None and kl_coef > 0:
        kl = k3_kl(ref_logp, logp if kl_logp is None else kl_logp)
        per_token = pg + kl_coef * kl
    if distill is not None:
        per_token = per_token + distill_coef * distill
    loss = aggregate(per_token, mask, loss_agg, max_tokens)
    n = mask.sum().clamp_min(1)
    with torch.no_grad():
        stats = {
            "loss/pg": float(aggregate(pg, mask, loss_agg, max_tokens)),
            "loss/kl": float((kl * mask).sum() / n),
            "loss/clip_frac": float((((clipped * a) < (ratio * a)).float() * mask).sum() / n),  # clip active
            "loss/ratio_mean": float((ratio * mask).sum() / n),
        }
        if distill is not None:
            stats["loss/distill"] = float((distill * mask).sum() / n)
    return loss, stats


def forward_ce(logits: Tensor, temperature: float, ids: Tensor, probs: Tensor) -> Tensor:
    """Cross-entropy from a teacher's renormalised top-k distribution to the policy at each position,
    ``-sum_j q_j log pi(v_j)`` (DistIL's forward CE over SDFT's top-k). logits: (N, T, V) the policy's raw
    logits; ids, probs: (N, T, k) the teacher's top-k tokens and their probabilities (summing to 1). -> (N, T).
    The gradient in the logits is ``(pi - q) / temperature`` where the top-k holds the whole vocabulary."""
    scaled = logits.float() if temperature == 1.0 else logits.float() / temperature
    return -(probs * scaled.log_softmax(-1).gather(-1, ids)).sum(-1)


def micro_share(loss_agg: str, mask: Tensor, total_tokens: int, total_seqs: int) -> float:
    """The factor that turns a micro-batch's ``aggregate`` into its share of the full-batch loss.

    mask: (n, T) of the micro-batch. Summing ``share * aggregate(micro)`` over micro-batches gives exactly the
    full-batch value: ``token_mean`` divides by the batch's token count (a micro-batch's own count would
    re-weight tokens), the per-sequence aggregations by the batch's number of sequences with a token
    (``total_seqs``; masked rollouts are not counted).
    """
    if loss_agg == "token_mean":
        return float(mask.sum().clamp_min(1)) / max(total_tokens, 1)
    return float(_live_rows(mask).sum().clamp_min(1)) / max(total_seqs, 1)


def _rows(batch: RolloutBatch, lo: int, hi: int) -> RolloutBatch:
    """Sequences ``lo:hi`` of a batch (prompt padding is kept: positions follow the attention mask)."""
    return replace(batch, prompt_ids=batch.prompt_ids[lo:hi], prompt_mask=batch.prompt_mask[lo:hi],
                   completion_ids=batch.completion_ids[lo:hi], completion_mask=batch.completion_mask[lo:hi],
                   logprobs=batch.logprobs[lo:hi], texts=batch.texts[lo:hi])


def micro_batch_rows(N: int, seq_len: int, group: int, max_tokens: int) -> int:
    """Sequences per micro-batch: the fewest passes whose ``rows * seq_len`` stays within ``max_tokens`` (0 = one
    pass), preferring a size that divides N and is a multiple of the group (so groups, and the prompt they share,
    stay together), then any divisor of N; at least one row."""
    if max_tokens <= 0 or N * seq_len <= max_tokens:
        return N
    cap = max(1, max_tokens // max(seq_len, 1))
    divisors = [d for d in range(cap, 0, -1) if N % d == 0]
    whole = [d for d in divisors if group and d % group == 0]
    return (whole or divisors)[0]


def backward_loss(policy, ref, batch: RolloutBatch, adv: Tensor, *, micro_batch_size: int = 0,
                  micro_batch_tokens: int = 0, temperature: float = 1.0, top_p: float = 1.0, scale: float = 1.0,
                  teacher=None, **loss_kwargs) -> tuple[float, dict[str, float]]:
    """Backward the batch's ``policy_loss`` in micro-batches of ``micro_batch_size`` sequences; 0 = as many as fit
    ``micro_batch_tokens`` prompt+completion tokens (``micro_batch_rows``; 0 = one pass).

    Each micro-batch's loss is scaled by its ``micro_share`` before ``backward``, so the accumulated gradients and
    the returned loss equal the full-batch ones for every ``loss_agg``; memory holds one micro-batch's activations.
    Args: policy: a ``Policy``; adv: (N,) or (N, T) float; ref: ``Policy.reference()`` or None; loss_kwargs:
        ``policy_loss`` keywords; scale: multiplies what is backpropagated only (FSDP's rank share, ``fsdp.py``),
        not the returned loss; teacher: the directive's top-k targets for ``forward_ce`` (``directive.Guide``,
        with ``distill_coef`` in loss_kwargs), or None.
    Returns: (loss, stats): ``loss/pg`` combined like the loss, the token-mean stats weighted by token counts.
    """
    N = adv.shape[0]
    L = batch.prompt_ids.shape[1] + batch.completion_ids.shape[1]
    size = micro_batch_size or micro_batch_rows(N, L, batch.n, micro_batch_tokens)
    total_tokens = int(batch.completion_mask.sum())
    total_seqs = int(_live_rows(batch.completion_mask).sum())
    full = ref is not None and top_p < 1.0  # the KL between untruncated distributions (``policy_loss``)
    loss_sum, stats = 0.0, {}
    for lo in range(0, N, size):
        mb = _rows(batch, lo, lo + size)
        kl_logp, distill = None, None
        logits = policy.completion_logits(mb)  # one forward: the sampled tokens' log-probs (and the teacher's top-k)
        if full:
            logp, kl_logp = sampled_logprobs(logits, mb, temperature, top_p, untruncated=True, stops=policy.stop_ids)
        else:
            logp = sampled_logprobs(logits, mb, temperature, top_p, stops=policy.stop_ids)
        ref_logp = None if ref is None else ref.completion_logprobs(mb, temperature, 1.0 if full else top_p)
        if teacher is not None:
            g = teacher.rows(lo, lo + size)
            distill = forward_ce(logits, temperature, g.topk_ids, g.topk_p) * g.hint_mask
        loss, s = policy_loss(logp, mb.logprobs, adv[lo:lo + size], mb.completion_mask, ref_logp=ref_logp,
                              kl_logp=kl_logp, distill=distill, **loss_kwargs)
        share = micro_share(loss_kwargs.get("loss_agg", "token_mean"), mb.completion_mask, total_tokens, total_seqs)
        (loss * (share * scale)).backward()
        tokens = float(mb.completion_mask.sum()) / max(total_tokens, 1)
        loss_sum += float(loss.detach()) * share
        for k, v in s.items():
            stats[k] = stats.get(k, 0.0) + v * (share if k == "loss/pg" else tokens)
    return loss_sum, stats
