"""Directive feedback beside the reward vector: hints that say how a completion should have been different,
turned into a token-level signal by a teacher that reads them (``train/teacher.py``: it needs the model, the
rollout and the loss, so it lives with training; this package holds the feedback functions and the checks).

Rewards say how good a rollout was; a feedback function (``registry.py``, the built-in ones in ``builtin.py``)
says what it should have been, as text. ``directive.coef > 0`` turns it on: each step the hinted completions are
scored by the teacher, the policy (``directive.teacher=current``) or its frozen initial copy (``reference``), on
the prompt with the hint added, and ``directive.loss`` (``token_advantage`` | ``forward_ce``) trains on the
teacher-student difference. ``directive.coef=0`` (the default) is training without it, bit for bit.
"""

from __future__ import annotations

from mo_rl.directive import builtin  # noqa: F401  (registers the built-in feedback functions)
from mo_rl.directive.builtin import TASK_FEEDBACK
from mo_rl.directive.registry import available_feedback, get_feedback, load_feedback_modules, register_feedback
from mo_rl.errors import MoRLError, choice_error

LOSSES = ("token_advantage", "forward_ce")
TEACHERS = ("current", "reference")

__all__ = ["LOSSES", "TEACHERS", "TASK_FEEDBACK", "available_feedback", "check_config", "feedback_fns",
           "get_feedback", "register_feedback"]


def feedback_names(c, task) -> list[str]:
    """``directive.feedback``, else the task's own (``TASK_FEEDBACK``)."""
    d = c.directive
    return list(d.feedback) if d.feedback is not None else list(TASK_FEEDBACK.get(task.name, []))


def feedback_fns(c, task) -> list[tuple[str, object]]:
    load_feedback_modules(list(c.directive.modules))
    return [(n, get_feedback(n)) for n in feedback_names(c, task)]


def check_config(c, task) -> None:
    """Names and ranges of the ``directive`` section (before any model loads). Raises MoRLError."""
    d = c.directive
    if d.coef < 0:
        raise MoRLError(f"directive.coef={d.coef} must be >= 0 (0 = off)")
    if d.loss not in LOSSES:
        raise choice_error("directive.loss", d.loss, LOSSES)
    if d.teacher not in TEACHERS:
        raise choice_error("directive.teacher", d.teacher, TEACHERS)
    if not d.clip > 0:
        raise MoRLError(f"directive.clip={d.clip} must be > 0 (the token advantage's bound)")
    if d.top_k < 1:
        raise MoRLError(f"directive.top_k={d.top_k} must be >= 1 (the teacher's tokens forward_ce distils)")
    if d.timeout_s is not None and d.timeout_s < 0:
        raise MoRLError(f"directive.timeout_s={d.timeout_s} must be >= 0 (0 = no limit)")
    fns = feedback_fns(c, task)  # unknown names fail here whatever the coefficient
    if d.coef > 0 and not fns:
        raise MoRLError(f"directive.coef={d.coef} needs feedback functions and task {task.name!r} has none of its "
                        f"own; name some with directive.feedback=[...] (built in: "
                        f"{', '.join(available_feedback())})")
    if d.coef > 0 and c.trainer.strategy == "fsdp":
        raise MoRLError("directive.coef > 0 is not supported under trainer.strategy=fsdp (the teacher forward "
                        "reads whole weights); use trainer.strategy=ddp")
