"""Registry of named reward functions, and ``module:function`` loading for the user's own.

A reward function scores one objective with TRL's signature
``fn(prompts: list[str], completions: list[str], **columns) -> list[float | None]``; ``None`` marks a completion
the objective cannot score (it is masked out, as in TRL). ``columns`` carries the task's dataset columns for each
completion (e.g. ``answer``, ``tests``) plus ``step`` (int) and ``index`` (position in the batch).
"""

from __future__ import annotations

import importlib
from typing import Callable

from mo_rl.errors import MoRLError

RewardFn = Callable[..., list]
_REWARDS: dict[str, tuple[RewardFn, str]] = {}


def register_reward(name: str, description: str = ""):
    """Decorator: add a reward function under ``name`` (the objective's name in configs and metrics)."""

    def deco(fn):
        if name in _REWARDS:
            raise ValueError(f"reward {name!r} registered twice")
        _REWARDS[name] = (fn, description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def available_rewards() -> dict[str, str]:
    """{name: one-line description} of every registered reward function."""
    _load_builtin()
    return {k: v[1] for k, v in sorted(_REWARDS.items())}


def get_reward(spec: str) -> RewardFn:
    """A registered name, or ``package.module:function`` for a user's reward function."""
    _load_builtin()
    if spec in _REWARDS:
        return _REWARDS[spec][0]
    if ":" not in spec:
        raise MoRLError(f"unknown objective {spec!r}; allowed: {', '.join(sorted(_REWARDS))} "
                        "or module:function")
    mod_name, _, fn_name = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # any import-time failure of user code is bad input here
        raise MoRLError(f"objective {spec!r}: module {mod_name!r} does not import ({type(e).__name__}: {e})") from e
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise MoRLError(f"objective {spec!r}: {mod_name!r} has no callable {fn_name!r}")
    return fn


def _load_builtin() -> None:
    """Import the modules that register the built-in rewards (lazily, to keep imports one-way)."""
    from mo_rl.rewards import builtin  # noqa: F401
