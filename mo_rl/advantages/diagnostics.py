"""Per-step diagnostics of rewards and advantages (the spec's list), batched, returned as plain floats."""

from __future__ import annotations

import torch
from torch import Tensor

from mo_rl.advantages._stats import group_flat


def distinct_per_group(adv: Tensor, mask: Tensor, decimals: int = 6) -> Tensor:
    """Number of distinct advantage values among each group's valid rollouts. adv: (B, G) -> (B,) float.

    GDPO's "advantage collapse" diagnostic; values are rounded to ``decimals`` so float noise does not count.
    """
    q = torch.round(adv.double() * 10**decimals).masked_fill(~mask, float("inf"))
    srt, _ = q.sort(dim=1)
    n = mask.sum(1, keepdim=True)
    pos = torch.arange(adv.shape[1] - 1, device=adv.device).unsqueeze(0)
    changes = ((srt[:, 1:] != srt[:, :-1]) & (pos < n - 1)).sum(1)
    return torch.where(n.squeeze(1) > 0, changes + 1, torch.zeros_like(changes)).to(adv.dtype)


def summarize(rewards: Tensor, adv: Tensor, mask: Tensor | None, names: list[str]) -> dict[str, float]:
    """rewards: (B, G, K), adv: (B, G), mask: (B, G) bool -> {"reward/<name>/mean": ..., "adv/mean_abs": ...}."""
    if mask is None:
        mask = torch.ones(adv.shape, dtype=torch.bool, device=adv.device)
    out: dict[str, float] = {}
    valid = mask.reshape(-1)
    r = rewards.reshape(-1, rewards.shape[-1])[valid]
    flat = group_flat(rewards, mask).squeeze(1).float().mean(0)
    for k, name in enumerate(names):
        out[f"reward/{name}/mean"] = float(r[:, k].mean()) if len(r) else float("nan")
        out[f"reward/{name}/std"] = float(r[:, k].std(unbiased=False)) if len(r) else float("nan")
        out[f"reward/{name}/frac_zero_spread"] = float(flat[k])
    a = adv.reshape(-1)[valid]
    out["adv/mean_abs"] = float(a.abs().mean()) if len(a) else 0.0
    out["adv/mean_sq"] = float((a**2).mean()) if len(a) else 0.0
    out["adv/max_abs"] = float(a.abs().max()) if len(a) else 0.0
    out["adv/distinct_per_group"] = float(distinct_per_group(adv, mask).mean())
    out["adv/frac_zero_groups"] = float(((adv.abs() * mask).amax(1) == 0).float().mean())
    out["mask/frac_valid"] = float(mask.float().mean())
    return out
