"""Call the feedback functions on a step's completions, contained like the rewards: a function that raises
(``KeyboardInterrupt`` aside), runs past its time limit (``directive.timeout_s``, in a daemon thread as
``rewards/score.py`` does it), returns the wrong number of values or a value that is not text gives no hint for
the completions concerned, and the failure is counted; nothing stops the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mo_rl.rewards.score import _in_thread

HINT_JOIN = "\n"  # several feedback functions' hints for one completion, one per line, in directive.feedback order


@dataclass
class Hints:
    """One hint (or None) per completion, and per feedback function how many it gave and how many calls failed."""

    text: list[str | None]
    given: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    first_error: dict[str, str] = field(default_factory=dict)


def _one(name, fn, prompts, completions, columns, step, index, timeout_s, hints: Hints) -> list[str | None]:
    def call():
        return list(fn(prompts=prompts, completions=completions, step=step, index=index, **columns))

    try:
        out = _in_thread(call, timeout_s) if timeout_s else call()
        if len(out) != len(completions):
            raise ValueError(f"returned {len(out)} hints for {len(completions)} completions")
    except BaseException as e:  # noqa: BLE001 - user code: no hint, counted
        if isinstance(e, KeyboardInterrupt):
            raise
        hints.failures[name] = hints.failures.get(name, 0) + len(completions)
        hints.first_error.setdefault(name, f"{type(e).__name__}: {e}")
        return [None] * len(completions)
    clean = []
    for v in out:
        if v is not None and not isinstance(v, str):
            hints.failures[name] = hints.failures.get(name, 0) + 1
            hints.first_error.setdefault(name, f"returned a {type(v).__name__}, not a str or None: {v!r:.80}")
            v = None
        clean.append(v if v and v.strip() else None)  # an empty hint says nothing
    return clean


def collect(fns: list[tuple[str, object]], prompts: list[str], completions: list[str], columns: dict[str, list],
            step: int, first_index: int = 0, timeout_s: float | None = None) -> Hints:
    """Each ``(name, fn)`` once on the whole batch -> ``Hints``; a completion's hints from several functions are
    joined one per line. ``first_index``: the global position of the first completion (as ``rewards.score``)."""
    n = len(completions)
    index = list(range(first_index, first_index + n))
    hints = Hints([None] * n)
    for name, fn in fns:
        got = _one(name, fn, prompts, completions, columns, step, index, timeout_s, hints)
        hints.given[name] = sum(h is not None for h in got)
        hints.text = [a if b is None else b if a is None else a + HINT_JOIN + b for a, b in zip(hints.text, got)]
    return hints
