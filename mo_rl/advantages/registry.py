"""One registry of advantage estimators and the public entry point ``compute``.

An estimator is ``fn(rewards: (B, G, K), weights: (K,), mask: (B, G) bool, **options) -> (B, G)``. ``compute``
validates shapes, fills the defaults (uniform weights summing to 1, all-valid mask) and calls it, so estimators
only hold their formula. Nothing outside this module looks a method up by name.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from mo_rl.errors import MoRLError, choice_error


@dataclass(frozen=True)
class Estimator:
    name: str
    fn: Callable[..., Tensor]
    description: str
    wrapper: bool = False  # takes an ``inner`` method name (e.g. gated)
    multi_answer: bool = False  # accepts (B, G, M, K) rewards with a (B, G, M) answer mask (e.g. vpo)

    def options(self) -> dict[str, object]:
        """Keyword options with their defaults, read from the signature (the YAML mirrors these).

        The runtime context (``generator``, ``objectives``, ``diagnostics``) is not an option: the loop supplies it.
        """
        sig = inspect.signature(self.fn)
        return {p.name: p.default for p in sig.parameters.values()
                if p.kind is p.KEYWORD_ONLY and p.name not in CONTEXT}

    def context(self) -> set[str]:
        """Which runtime-context keywords this estimator declares."""
        return CONTEXT & set(inspect.signature(self.fn).parameters)


# Runtime context an estimator may declare as keyword parameters: a seeded torch.Generator for estimators that
# sample (vpo), the objective names for estimators configured by name (gated), and ``diagnostics``: a dict the
# estimator fills with what it computed on the way (dvao's effective weights, vpo's winners), or None when the
# caller wants only A. ``compute`` passes each only to the estimators that declare it.
CONTEXT = {"generator", "objectives", "diagnostics"}


_REGISTRY: dict[str, Estimator] = {}


def register(name: str, description: str, wrapper: bool = False, multi_answer: bool = False):
    """Decorator: add an estimator under ``name``; ``description`` is the one line ``mo-rl methods`` prints."""

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"estimator {name!r} registered twice")
        _REGISTRY[name] = Estimator(name, fn, description, wrapper, multi_answer)
        return fn

    return deco


def get(name: str) -> Estimator:
    if name not in _REGISTRY:
        raise choice_error("method", name, sorted(_REGISTRY))
    return _REGISTRY[name]


def available() -> list[str]:
    return sorted(_REGISTRY)


def check_inputs(rewards: Tensor, weights: Tensor | None, mask: Tensor | None,
                 multi_answer: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Validate shapes and return ``(rewards, weights normalized to sum 1, mask)`` on rewards' device and dtype.

    With ``multi_answer``, rewards may also be (B, G, M, K): M answers per rollout; the mask may then be (B, G)
    or (B, G, M) and is returned as the (B, G, M) answer mask.
    """
    dims = (3, 4) if multi_answer else (3,)
    if not isinstance(rewards, Tensor) or rewards.dim() not in dims or not rewards.is_floating_point():
        shape = tuple(rewards.shape) if isinstance(rewards, Tensor) else type(rewards).__name__
        want = "(B, G, K) or (B, G, M, K)" if multi_answer else "(B, G, K)"
        raise MoRLError(f"rewards must be a float tensor of shape {want}, got {shape}")
    if rewards.dim() == 4:
        return _check_answers(rewards, weights, mask)
    B, G, K = rewards.shape
    if weights is None:
        weights = torch.full((K,), 1.0 / K, dtype=rewards.dtype, device=rewards.device)
    else:
        weights = torch.as_tensor(weights, dtype=rewards.dtype, device=rewards.device)
        if weights.shape != (K,):
            raise MoRLError(f"weights must have one entry per objective (K={K}), got shape {tuple(weights.shape)}")
        if bool((weights < 0).any()) or not bool(torch.isfinite(weights).all()) or float(weights.sum()) <= 0:
            raise MoRLError(f"weights must be finite, >= 0 and not all zero, got {weights.tolist()}")
        weights = weights / weights.sum()
    if mask is None:
        mask = torch.ones(B, G, dtype=torch.bool, device=rewards.device)
    elif tuple(mask.shape) != (B, G):
        raise MoRLError(f"mask must have shape (B, G)=({B}, {G}), got {tuple(mask.shape)}")
    return rewards, weights, mask.to(device=rewards.device, dtype=torch.bool)


def _check_answers(rewards: Tensor, weights, mask) -> tuple[Tensor, Tensor, Tensor]:
    """check_inputs for (B, G, M, K) rewards: the mask may be (B, G) or (B, G, M); returns the (B, G, M) one."""
    B, G, M, K = rewards.shape
    if mask is not None and tuple(mask.shape) not in ((B, G), (B, G, M)):
        raise MoRLError(f"mask must have shape (B, G)=({B}, {G}) or (B, G, M)=({B}, {G}, {M}), "
                        f"got {tuple(mask.shape)}")
    if mask is not None and mask.dim() == 2:
        mask = mask.unsqueeze(-1).expand(B, G, M)
    _, weights, flat = check_inputs(rewards.reshape(B, G * M, K), weights, None if mask is None else
                                    mask.reshape(B, G * M))
    return rewards, weights, flat.reshape(B, G, M)


def reduce_answers(rewards: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(B, G, M, K) rewards, (B, G, M) answer mask -> the mean over valid answers (B, G, K), any valid (B, G)."""
    m = mask.to(rewards.dtype).unsqueeze(-1)
    mean = (rewards * m).sum(2) / m.sum(2).clamp_min(1)
    return mean, mask.any(-1)


def _prepare(est: Estimator, rewards, weights, mask) -> tuple[Tensor, Tensor, Tensor]:
    """check_inputs for ``est``; 4-D rewards reach an estimator without ``multi_answer`` as the answer mean."""
    multi = isinstance(rewards, Tensor) and rewards.dim() == 4
    rewards, weights, mask = check_inputs(rewards, weights, mask, multi_answer=multi or est.multi_answer)
    if rewards.dim() == 4 and not est.multi_answer:
        rewards, mask = reduce_answers(rewards, mask)
    return rewards, weights, mask


def compute(method: str, rewards: Tensor, weights: Tensor | None = None, mask: Tensor | None = None, *,
            generator: torch.Generator | None = None, objectives: list[str] | None = None,
            diagnostics: dict | None = None, **options) -> Tensor:
    """Advantages of ``method`` for a batch of reward vectors.

    Args:
        method: registry key (see ``available()``).
        rewards: (B, G, K) float, prompts x group x objectives; or (B, G, M, K) with M answers per rollout.
            An estimator registered with ``multi_answer`` (vpo) gets the answers; every other one gets each
            rollout's mean over its valid answers, and a rollout counts when any of its answers is valid.
        weights: (K,) float >= 0, normalized to sum 1 here; ``None`` means uniform.
        mask: (B, G) bool, rollouts that count; ``None`` means all. Masked rollouts get advantage 0.
            With (B, G, M, K) rewards also (B, G, M): the answers that count (missing answers masked).
        generator, objectives: runtime context, passed only to estimators that declare it.
        diagnostics: a dict to fill with the method's diagnostics of this very call (values: floats or (K,)
            tensors, one entry per objective); None (the default) skips them. See ``compute_with_diagnostics``.
        **options: the estimator's keyword options (``mo-rl methods`` lists them).
    Returns:
        (B, G) advantages, same device and dtype as ``rewards``.
    """
    est = get(method)
    allowed = est.options()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise MoRLError(f"unknown option {unknown[0]!r} for method {method!r}; allowed: {', '.join(allowed)}")
    rewards, weights, mask = _prepare(est, rewards, weights, mask)
    ctx = {"generator": generator, "objectives": objectives, "diagnostics": diagnostics}
    return est.fn(rewards, weights, mask, **{k: ctx[k] for k in est.context()}, **options)


def compute_with_diagnostics(method: str, rewards: Tensor, weights: Tensor | None = None,
                             mask: Tensor | None = None, **kwargs) -> tuple[Tensor, dict[str, Tensor | float]]:
    """``compute`` that also returns the method's diagnostics of the same call (the same random draws):
    -> ((B, G) advantages, {name: float or (K,) tensor}; ``{}`` when the method defines none)."""
    out: dict = {}
    adv = compute(method, rewards, weights, mask, diagnostics=out, **kwargs)
    return adv, out
