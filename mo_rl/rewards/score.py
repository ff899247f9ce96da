"""Score completions with one reward function per objective -> a reward matrix, a validity mask, failures.

A reward function that raises (anything, ``SystemExit`` included; only ``KeyboardInterrupt`` goes through), takes
longer than ``timeout_s`` or returns a non-finite value for some completion is not allowed to stop a run (unless
``fail_fast``): that completion's reward becomes ``failure_value`` and the failure is counted per objective, with
the first message kept for the run directory. A batch call that raised is retried completion by completion, so
only the completions that fail are failures. Returning the wrong number of values is a bug, not a failure: it is a
``RewardFailure`` naming both lengths, whatever ``fail_fast`` says. An objective that failed on every completion
of a call is reported on stderr, one line. Each reward function gets its own copy of the inputs, so one that
edits ``completions`` in place changes neither what the others score nor what is logged.

How a call is timed out: a ``WorkerReward`` (``module:function`` rewards by default: ``rewards.worker``) runs in
a worker process killed at the limit. Any other reward runs in a fresh daemon thread that the scorer joins with
``timeout_s``; Python cannot kill a thread, so a reward that hangs there is abandoned, not stopped: its thread
lives on until it returns or the process exits, and one that holds the GIL stalls the whole process. A thread
costs ~0.1 ms per call. ``timeout_s`` 0 (or None) calls an in-process reward in the caller's thread, with no time
limit: for reward code that must run in the main thread (e.g. one that sets signal handlers).
"""

from __future__ import annotations

import copy
import math
import sys
import threading
from dataclasses import dataclass, field

import torch

from mo_rl.errors import RewardFailure
from mo_rl.rewards.worker import RewardTimeout, WorkerDied, WorkerReward


@dataclass
class Scores:
    rewards: torch.Tensor  # (N, K) float64
    valid: torch.Tensor  # (N,) bool: False where an objective returned None (TRL's "cannot score")
    failures: dict[str, int] = field(default_factory=dict)
    first_error: dict[str, str] = field(default_factory=dict)


class WrongLength(Exception):
    """A batch call returned a list whose length is not the number of completions."""


def _in_thread(call, timeout_s: float):
    """``call()`` in a daemon thread, waited for at most ``timeout_s`` (see the module docstring)."""
    box = {}

    def target():
        try:
            box["out"] = call()
        except BaseException as e:  # noqa: BLE001 - handed to the caller, which decides
            box["err"] = e

    t = threading.Thread(target=target, name="mo-rl-reward", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise RewardTimeout(f"took longer than objectives.timeout_s={timeout_s:g} s (left running in a daemon thread)")
    if "err" in box:
        raise box["err"]
    return box["out"]


def _call(fn, prompts, completions, columns, step, index, timeout_s=None) -> list:
    """One call of ``fn`` on copies of the inputs (a worker's are copies already: they are pickled)."""
    kwargs = dict(prompts=prompts, completions=completions, step=step, index=index, **columns)
    if isinstance(fn, WorkerReward):
        out = fn.call(kwargs, timeout_s)
    else:
        kwargs = copy.deepcopy(kwargs)
        out = _in_thread(lambda: list(fn(**kwargs)), timeout_s) if timeout_s else list(fn(**kwargs))
    if len(out) != len(completions):
        raise WrongLength(f"returned {len(out)} values for {len(completions)} completions (a reward function "
                          "returns one value per completion)")
    return out


def _message(e: BaseException) -> str:
    return getattr(e, "text", None) or f"{type(e).__name__}: {e}"


def _one_objective(name, fn, prompts, completions, columns, step, failure_value, fail_fast, scores: Scores, k,
                   first_index: int = 0, timeout_s: float | None = None):
    N, before = len(completions), scores.failures.get(name, 0)
    try:
        values = _call(fn, prompts, completions, columns, step, list(range(first_index, first_index + N)), timeout_s)
    except WrongLength as e:
        raise RewardFailure(name, str(e)) from None
    except BaseException as e:  # noqa: BLE001 - user code: any failure is recorded, then isolated per completion
        if isinstance(e, KeyboardInterrupt):
            raise
        if fail_fast:
            raise RewardFailure(name, f"failed: {_message(e)}") from e
        scores.first_error.setdefault(name, _message(e))
        values = [math.nan] * N if isinstance(e, (RewardTimeout, WorkerDied)) else _one_by_one(
            name, fn, prompts, completions, columns, step, first_index, timeout_s)
    column = scores.rewards[:, k].tolist()  # filled in Python, written back once (a tensor write per value is slow)
    for i, v in enumerate(values):
        if v is None:
            scores.valid[i] = False
            continue
        raw = v
        try:
            v = float(v)
        except (TypeError, ValueError, OverflowError):  # 10**400 too: not a float
            v = math.nan
        if not math.isfinite(v):
            if fail_fast:
                raise RewardFailure(name, f"gave a non-finite reward {raw!r} for completion {i}")
            scores.failures[name] = scores.failures.get(name, 0) + 1
            scores.first_error.setdefault(name, f"returned a non-finite or non-numeric reward {raw!r}")
            v = failure_value
        column[i] = v
    scores.rewards[:, k] = torch.tensor(column, dtype=scores.rewards.dtype)
    if N and all(v is None for v in values):
        _warn_all_none(name, step)
    failed = scores.failures.get(name, 0) - before
    if N and failed == N:
        where = f" of step {step}" if step >= 0 else ""
        print(f"warning: objective {name!r} failed on all {N} completions{where}: {scores.first_error[name]}",
              file=sys.stderr, flush=True)


def _one_by_one(name, fn, prompts, completions, columns, step, first_index, timeout_s) -> list:
    """Score completion by completion after the batch call failed: NaN (a failure) where one fails; after a
    timeout or a dead worker, the rest are failures without being called (a reward that hangs would cost N x
    timeout_s)."""
    values = []
    for i in range(len(completions)):
        try:
            values.append(_call(fn, prompts[i:i + 1], completions[i:i + 1],
                                {c: v[i:i + 1] for c, v in columns.items()}, step, [first_index + i], timeout_s)[0])
        except WrongLength as e:
            raise RewardFailure(name, f"{e} when called on one completion") from None
        except BaseException as e:  # noqa: BLE001
            if isinstance(e, KeyboardInterrupt):
                raise
            values.append(math.nan)
            if isinstance(e, (RewardTimeout, WorkerDied)):
                return values + [math.nan] * (len(completions) - i - 1)
    return values


_WARNED_ALL_NONE: set[str] = set()


def _warn_all_none(name: str, step: int) -> None:
    """Once per objective and process: a reward that cannot score anything masks every rollout."""
    if name not in _WARNED_ALL_NONE:
        _WARNED_ALL_NONE.add(name)
        print(f"warning: objective {name!r} returned None for every completion (step {step}): it masks every "
              "rollout, so nothing is learned from the batch", file=sys.stderr)


def score(objectives: list[tuple[str, object]], prompts: list[str], completions: list[str],
          columns: dict[str, list], step: int, failure_value: float = 0.0, fail_fast: bool = False,
          first_index: int = 0, timeout_s: float | None = None) -> Scores:
    """Call each ``(name, fn)`` once on the whole batch. columns: {column: list of N values}. -> ``Scores``.

    Reward functions see ``index`` = ``first_index`` + position: a data-parallel rank scoring its slice of the
    step passes the slice's start, so a reward keyed on (step, index) gives the values one process would.
    ``timeout_s``: the time limit of each reward call (None or 0: none; see the module docstring)."""
    N = len(completions)
    scores = Scores(torch.zeros(N, len(objectives), dtype=torch.float64), torch.ones(N, dtype=torch.bool))
    for k, (name, fn) in enumerate(objectives):
        _one_objective(name, fn, prompts, completions, columns, step, failure_value, fail_fast, scores, k,
                       first_index, timeout_s)
    return scores


def all_failed(scores: Scores, n: int) -> dict[str, str]:
    """{objective: its first error} for each objective that failed on all ``n`` completions it scored (``score``
    called on n completions): such an objective measured nothing, it is not flat (``mo-rl diagnose``)."""
    return {k: scores.first_error.get(k, "failed") for k, c in scores.failures.items() if n and c >= n}


def repeat_rows(rows: list[dict], n: int) -> tuple[list[str], dict[str, list]]:
    """Each row repeated for its n completions -> (N prompts, {column: N values}), the reward functions' inputs."""
    rep = [r for r in rows for _ in range(n)]
    return [r["prompt"] for r in rep], {k: [r[k] for r in rep] for k in (rows[0] if rows else {}) if k != "prompt"}


def apply_conditions(rewards: torch.Tensor, names: list[str], conditions: dict) -> torch.Tensor:
    """GDPO Eq. 8: ``r_k <- r_k * 1[r_on >= min]`` for each configured ``{k: {on, min}}``. rewards: (..., K)."""
    out = rewards.clone()
    for obj, cond in conditions.items():
        k, j = names.index(obj), names.index(cond["on"])
        out[..., k] = rewards[..., k] * (rewards[..., j] >= float(cond["min"]))
    return out


def split_answers(text: str, m: int, delimiter: str | None) -> tuple[list[str], list[bool]]:
    """The first ``m`` answers of a completion and which of them were written (missing ones are masked).

    A completion that wrote no answer at all keeps one: the empty answer, scored like any other. Masking it too
    would give such a rollout advantage 0, so a policy could drift into writing nothing (seen: all-delimiter
    completions under dvao) without ever being pushed back.
    """
    parts = [a.strip() for a in text.split(delimiter)] if delimiter else [text]
    parts = [a for a in parts if a][:m] or [""]
    return parts + [""] * (m - len(parts)), [True] * len(parts) + [False] * (m - len(parts))


def score_rollouts(objectives, prompts: list[str], completions: list[str], columns: dict[str, list], step: int,
                   answers: int = 1, delimiter: str | None = None, failure_value: float = 0.0,
                   fail_fast: bool = False, first_index: int = 0,
                   timeout_s: float | None = None) -> tuple[torch.Tensor, torch.Tensor, Scores]:
    """Score N completions, each as one answer or split into ``answers`` answers scored one by one.
    ``first_index``: the global position of the first completion (see ``score``).

    -> rewards (N, K) and mask (N,) for one answer; rewards (N, M, K) and answer mask (N, M) for M > 1.
    """
    if answers == 1:
        sc = score(objectives, prompts, completions, columns, step, failure_value, fail_fast, first_index, timeout_s)
        return sc.rewards, sc.valid, sc
    split = [split_answers(c, answers, delimiter) for c in completions]
    flat = [a for parts, _ in split for a in parts]
    rep = {k: [v for v in vals for _ in range(answers)] for k, vals in columns.items()}
    sc = score(objectives, [p for p in prompts for _ in range(answers)], flat, rep, step, failure_value, fail_fast,
               first_index * answers, timeout_s)
    written = torch.tensor([w for _, ws in split for w in ws])
    N = len(completions)
    return sc.rewards.view(N, answers, -1), (sc.valid & written).view(N, answers), sc
