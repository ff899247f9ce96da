"""The task interface and its registry.

A task is where prompts come from and what the objectives are: it yields rows (``{"prompt": str, **columns}``;
columns reach every reward function), names its objectives with default weights, and may define success for pass@k.
Everything random takes a ``random.Random`` the caller seeds, so a step's prompts are a function of (seed, step).
"""

from __future__ import annotations

import importlib
import random
from dataclasses import dataclass, field
from typing import Callable

from mo_rl.errors import MoRLError, choice_error


@dataclass
class Task:
    name: str
    objectives: list[str]  # reward-registry names (or module:function), the default objective set
    weights: list[float]  # default weights, one per objective
    sample: Callable[[random.Random, int, str], list[dict]]  # (rng, n, split "train" | "eval") -> n rows
    success_objective: str | None = None  # an objective whose value >= success_threshold means "solved"
    success_threshold: float = 1.0
    answer_delimiter: str | None = None  # separates the answers of a multi-answer rollout
    # the prompt that asks for m answers in one completion; None: the task has single-answer rollouts only
    multi_answer_prompt: Callable[[str, int], str] | None = None
    warmup: Callable[[random.Random], tuple[str, str]] | None = None  # (prompt, completion) for SFT warm-up
    description: str = ""
    options: dict = field(default_factory=dict)


_TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str):
    """Decorator: add a task factory ``fn(**options) -> Task`` under ``name`` (= ``conf/task/<name>.yaml``)."""

    def deco(fn):
        _TASKS[name] = fn
        return fn

    return deco


def available_tasks() -> list[str]:
    _load_builtin()
    return sorted(_TASKS)


def make_task(name: str, **options) -> Task:
    _load_builtin()
    if name not in _TASKS:
        raise choice_error("task", name, sorted(_TASKS))
    return _TASKS[name](**options)


def task_options(name: str) -> dict:
    """The keyword options of a task's factory with their defaults (what ``task.options`` may set)."""
    import inspect

    _load_builtin()
    if name not in _TASKS:
        raise choice_error("task", name, sorted(_TASKS))
    params = inspect.signature(_TASKS[name]).parameters.values()
    return {p.name: p.default for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


BUILTIN = ("mo_rl.tasks.synthetic", "mo_rl.tasks.real", "mo_rl.tasks.personas")  # each registers its tasks on import


def _load_builtin() -> None:
    """Import the built-in task modules; one that fails to import says so (not "unknown task")."""

    for name in BUILTIN:
        try:
            importlib.import_module(name)
        except Exception as e:
            raise MoRLError(f"task module {name} failed to import ({type(e).__name__}: {e}); "
                            "this is a bug in mo-rl or a broken install") from e
