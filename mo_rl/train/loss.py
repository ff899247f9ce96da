"""Per-token log-probs of completions and the clipped policy-gradient loss with its aggregation choices."""

from __future__ import annotations

import torch
from torch import Tensor

from mo_rl.rollout.base import RolloutBatch


def completion_logprobs(model, batch: RolloutBatch, temperature: float = 1.0) -> Tensor:
    """Log-probs of the completion tokens under ``model``. -> (N, T) float32, 0 on padding.

    Logits are divided by the sampling temperature so they are comparable with the engine's sampling log-probs;
    positions follow the attention mask, as generation computed them for left-padded prompts.
    """
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], 1)
    attn = torch.cat([batch.prompt_mask, batch.completion_mask.long()], 1)
    pos = (attn.cumsum(1) - 1).clamp_min(0)
    T = batch.completion_ids.shape[1]
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=T + 1).logits[:, :-1]
    lp = (logits.float() / temperature).log_softmax(-1)
    lp = lp.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    return lp * batch.completion_mask


def aggregate(per_token: Tensor, mask: Tensor, loss_agg: str, max_tokens: int) -> Tensor:
    """Reduce (N, T) per-token losses to a scalar.

    ``token_mean``: sum over all tokens / number of tokens (token-level, DAPO/Lite-PPO);
    ``seq_mean_token_mean``: mean over sequences of each sequence's token mean (GRPO's original);
    ``seq_sum``: sum over all tokens / (N * max_tokens), a constant divisor (Dr. GRPO).
    """
    total = (per_token * mask).sum()
    if loss_agg == "token_mean":
        return total / mask.sum().clamp_min(1)
    if loss_agg == "seq_mean_token_mean":
        return ((per_token * mask).sum(1) / mask.sum(1).clamp_min(1)).mean()
    if loss_agg == "seq_sum":
        return total / (mask.shape[0] * max_tokens)
    raise ValueError(f"unknown loss_agg {loss_agg!r}")


def policy_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, *, clip_eps: float = 0.2,
                clip_eps_high: float | None = None, ref_logp: Tensor | None = None, kl_coef: float = 0.0,
                loss_agg: str = "token_mean", max_tokens: int = 1) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate ``-min(rho A, clip(rho, 1-eps, 1+eps_high) A)`` plus ``kl_coef * KL`` (k3 estimator).

    Args:
        logp, old_logp, ref_logp: (N, T) float, current / sampling / reference log-probs of the completion tokens.
        adv: (N,) float, one advantage per sequence. mask: (N, T) float, 1 on completion tokens.
    Returns:
        (scalar loss, {"loss/pg", "loss/kl", "loss/clip_frac", "loss/ratio_mean"} as floats).
    """
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = torch.exp(logp - old_logp)
    a = adv.unsqueeze(1)
    clipped = ratio.clamp(1 - clip_eps, 1 + hi)
    pg = -torch.minimum(ratio * a, clipped * a)
    per_token = pg
    kl = torch.zeros_like(pg)
    if ref_logp is not None and kl_coef > 0:
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1
        per_token = pg + kl_coef * kl
    loss = aggregate(per_token, mask, loss_agg, max_tokens)
    n = mask.sum().clamp_min(1)
    with torch.no_grad():
        stats = {
            "loss/pg": float(aggregate(pg, mask, loss_agg, max_tokens)),
            "loss/kl": float((kl * mask).sum() / n),
            "loss/clip_frac": float((((clipped * a) < (ratio * a)).float() * mask).sum() / n),  # clip active
            "loss/ratio_mean": float((ratio * mask).sum() / n),
        }
    return loss, stats
