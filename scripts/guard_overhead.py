"""The divergence guard's per-step parameter check (``guards.check_params``: one foreach max-abs pass over the
weights) next to the fused AdamW step it follows, measured side by side in one process, on the tiny model and a
~50M-parameter stack of linears. Run: PYTHONPATH=. python scripts/guard_overhead.py
"""

from __future__ import annotations

import time

import torch

from mo_rl.models import load_policy
from mo_rl.train.guards import check_params


def bench(model: torch.nn.Module, n: int = 20) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    for _ in range(3):  # warm-up
        opt.step()
        check_params(model, params)
    t = time.perf_counter()
    for _ in range(n):
        opt.step()
    step = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for _ in range(n):
        check_params(model, params)
    check = (time.perf_counter() - t) / n
    size = sum(p.numel() for p in params) / 1e6
    print(f"{size:.2f}M params: opt.step {step * 1e3:.3f} ms, check_params {check * 1e3:.3f} ms, "
          f"ratio {check / step:.2f}")


if __name__ == "__main__":
    bench(load_policy("embedded:tiny").module)
    bench(torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(12)]))
