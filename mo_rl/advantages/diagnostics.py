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
    nan = torch.full_like(flat, float("nan"))
    cols = [r.mean(0).float(), r.std(0, unbiased=False).float(), flat] if len(r) else [nan, nan, flat]
    means, stds, fz = torch.stack(cols).tolist()
    for k, name in enumerate(names):  # one conversion to Python for the whole table
        out[f"reward/{name}/mean"], out[f"reward/{name}/std"], out[f"reward/{name}/frac_zero_spread"] = \
            means[k], stds[k], fz[k]
    a = adv.reshape(-1)[valid]
    zero = a.new_zeros(())
    stats = torch.stack([
        a.abs().mean() if len(a) else zero, (a**2).mean() if len(a) else zero, a.abs().max() if len(a) else zero,
        distinct_per_group(adv, mask).mean().to(a.dtype), ((adv.abs() * mask).amax(1) == 0).float().mean().to(a.dtype),
        mask.float().mean().to(a.dtype)]).tolist()
    out.update(zip(["adv/mean_abs", "adv/mean_sq", "adv/max_abs", "adv/distinct_per_group", "adv/frac_zero_groups",
                    "mask/frac_valid"], stats))
    return out
