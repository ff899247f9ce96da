"""Fused estimators: the registered estimators run through ``torch.compile``, so that on a GPU the dozen small
masked reductions of an estimator become a few kernels. Same numbers as the eager functions (tested in
tests/test_advantages_reference.py, marked slow because compiling takes seconds per method).

Optional: nothing in training needs it. ``compiled(method)`` returns a callable with the estimator's signature,
``fn(rewards, weights, mask, **options) -> (B, G)``, taking normalized weights and a bool mask like the registry
functions (``mo_rl.advantages.compute`` does that preparation).
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
from typing import Callable

import torch
from torch import Tensor

from mo_rl.advantages.registry import get


def available(device: str = "cpu") -> bool:
    """Whether torch.compile can build kernels here: a C++ compiler on CPU, triton on CUDA."""
    if not hasattr(torch, "compile"):
        return False
    if device.startswith("cuda"):
        return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None
    return any(shutil.which(c) for c in ("c++", "g++", "clang++"))


@functools.lru_cache(maxsize=None)
def compiled(method: str) -> Callable[..., Tensor]:
    """``torch.compile`` of the registered estimator ``method`` (static shapes; one compile per shape)."""
    return torch.compile(get(method).fn, dynamic=False)
