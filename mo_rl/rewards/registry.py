"""Registry of named reward functions, and ``module:function`` loading for the user's own.

The built-in rewards register when ``mo_rl.rewards`` is imported (importing this module imports that package
first). A user's module that registers rewards with ``@register_reward`` is imported by ``load_reward_modules``
(``objectives.modules=[my_pkg.rewards]``); ``objectives.names=[my_pkg.rewards:brevity]`` names a function directly.

A reward function scores one objective with TRL's signature
``fn(prompts: list[str], completions: list[str], **columns) -> list[float | None]``; ``None`` marks a completion
the objective cannot score (it is masked out, as in TRL). ``columns`` carries the task's dataset columns for each
completion (e.g. ``answer``, ``tests``) plus ``step`` (int) and ``index`` (position in the batch).

Where a reward runs (``objectives.isolation``): ``auto`` calls the built-in rewards and those registered by
``objectives.modules`` in the main process (a thread, timed out by abandoning it: see ``rewards.score``) and
imports and calls a ``module:function`` reward in a worker process killed at the time limit
(``rewards.worker``); ``process`` runs every reward in a worker; ``thread`` none (the behaviour before workers).
The built-in rewards stay in-process under ``auto``: they are short loops and linear-time regexes over one
completion, and the code reward's own untrusted part already runs in the sandbox.
"""

from __future__ import annotations

import importlib
from typing import Callable

from mo_rl.errors import MoRLError, choice_error

ISOLATIONS = ("auto", "process", "thread")  # objectives.isolation
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
    return {k: v[1] for k, v in sorted(_REWARDS.items())}


def get_reward(spec: str, isolation: str = "auto", modules=(), timeout_s: float | None = 300.0) -> RewardFn:
    """A registered name, or ``package.module:function`` for a user's reward function; under ``isolation``
    (module docstring) a ``WorkerReward`` whose worker has imported it, within ``timeout_s``, or a MoRLError.
    ``modules``: ``objectives.modules``, imported by such a worker before it looks ``spec`` up."""
    if isolation not in ISOLATIONS:
        raise choice_error("objectives.isolation", isolation, ISOLATIONS)
    if isolation == "process" or (isolation == "auto" and spec not in _REWARDS and ":" in spec):
        from mo_rl.rewards.worker import worker_reward

        return worker_reward(spec, modules if isolation == "process" else (), timeout_s)
    return resolve(spec, _REWARDS, "objective", "objectives.modules")


def resolve(spec: str, table: dict, label: str, modules_key: str) -> Callable:
    """A name registered in ``table`` ({name: (fn, description)}), or ``package.module:function``: the callable.
    ``label`` names the spec in messages (``objective``, ``directive.feedback``), ``modules_key`` the config key
    whose modules register names. Shared by rewards and feedback functions. Raises MoRLError."""
    if spec in table:
        return table[spec][0]
    if ":" not in spec:
        raise MoRLError(f"unknown {label} {spec!r}; allowed: {', '.join(sorted(table))}, module:function, "
                        f"or a name registered by a module listed in {modules_key}")
    mod_name, _, fn_name = spec.partition(":")
    mod = import_user_module(mod_name, f"{label} {spec!r}: module")
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise MoRLError(f"{label} {spec!r}: {mod_name!r} has no callable {fn_name!r}")
    return fn


def load_reward_modules(modules: list[str]) -> None:
    """Import each named module (``objectives.modules``) so that the rewards it registers can be named."""
    for name in modules:
        import_user_module(name, "objectives.modules:")


def import_user_module(name: str, what: str):
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit) as e:  # any import-time failure of user code is bad input here
        raise MoRLError(f"{what} {name!r} does not import ({type(e).__name__}: {e})") from e
    except SystemExit as e:  # sys.exit() at import would end mo-rl with the module's code and no word
        raise MoRLError(f"{what} {name!r} does not import (it called sys.exit({e.code!r}) while being "
                        "imported)") from e
