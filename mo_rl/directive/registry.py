"""Registry of named feedback functions, and ``module:function`` loading for the user's own.

A feedback function gives the directive half of a task's feedback: how a completion should have been different,
as text for the teacher's prompt. Its signature is the reward functions' (TRL's), returning text:
``fn(prompts: list[str], completions: list[str], **columns) -> list[str | None]``; ``None`` means no hint for that
completion (it trains on its rewards alone). ``columns`` are the task rows' columns, plus ``step`` and ``index``
as rewards get them. The built-in ones (``mo_rl.directive.builtin``) register when this package is imported;
``directive.modules=[my_pkg.hints]`` imports a user's module that registers its own with ``@register_feedback``.
"""

from __future__ import annotations

from typing import Callable

from mo_rl.rewards.registry import import_user_module, resolve  # one resolver for rewards and feedback

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
    return resolve(spec, _FEEDBACK, "directive.feedback", "directive.modules")


def load_feedback_modules(modules: list[str]) -> None:
    """Import each named module (``directive.modules``) so that the feedback functions it registers can be named."""
    for name in modules:
        import_user_module(name, "directive.modules:")
