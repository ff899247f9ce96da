"""Registry of named feedback functions, and ``module:function`` loading for the user's own.

A feedback function gives the directive half of a task's feedback: how a completion should have been different,
as text for the teacher's prompt. Its signature is the reward functions' (TRL's), returning text:
``fn(prompts: list[str], completions: list[str], **columns) -> list[str | None]``; ``None`` means no hint for that
completion (it trains on its rewards alone). ``columns`` are the task rows' columns, plus ``step`` and ``index``
as rewards get them. The built-in ones (``mo_rl.directive.builtin``) register when this package is imported;
``directive.modules=[my_pkg.hints]`` imports a user's module that registers its own with ``@register_feedback``.
"""

from __future__ import annotations

import importlib
from typing import Callable

from mo_rl.errors import MoRLError

FeedbackFn = Callable[..., list]
_FEEDBACK: dict[str, tuple[FeedbackFn, str]] = {}


def register_feedback(name: str, description: str = ""):
    """Decorator: add a feedback function under ``name`` (what ``directive.feedback`` and the metrics call it)."""

    def deco(fn):
        if name in _FEEDBACK:
            raise ValueError(f"feedback {name!r} registered twice")
        _FEEDBACK[name] = (fn, description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def available_feedback() -> dict[str, str]:
    """{name: one-line description} of every registered feedback function."""
    return {k: v[1] for k, v in sorted(_FEEDBACK.items())}


def get_feedback(spec: str) -> FeedbackFn:
    """A registered name, or ``package.module:function`` for a user's feedback function. Raises MoRLError."""
    if spec in _FEEDBACK:
        return _FEEDBACK[spec][0]
    if ":" not in spec:
        raise MoRLError(f"unknown directive.feedback {spec!r}; allowed: {', '.join(sorted(_FEEDBACK))}, "
                        "module:function, or a name registered by a module listed in directive.modules")
    mod_name, _, fn_name = spec.partition(":")
    mod = _import(mod_name, f"directive.feedback {spec!r}: module")
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise MoRLError(f"directive.feedback {spec!r}: {mod_name!r} has no callable {fn_name!r}")
    return fn


def load_feedback_modules(modules: list[str]) -> None:
    """Import each named module (``directive.modules``) so that the feedback functions it registers can be named."""
    for name in modules:
        _import(name, "directive.modules:")


def _import(name: str, what: str):
    try:
        return importlib.import_module(name)
    except Exception as e:  # any import-time failure of user code is bad input here
        raise MoRLError(f"{what} {name!r} does not import ({type(e).__name__}: {e})") from e
