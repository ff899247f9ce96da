"""Score completions with one reward function per objective -> a reward matrix, a validity mask, failures.

A reward function that raises (anything, ``SystemExit`` included; only ``KeyboardInterrupt`` goes through), takes
longer than ``timeout_s``, returns the wrong number of values or a non-finite value for some completion is not
allowed to stop a run (unless ``fail_fast``): that completion's reward becomes ``failure_value`` and the failure is
counted per objective, with the first message kept for the run directory.

How a call is timed out: it runs in a fresh daemon thread that the scorer joins with ``timeout_s``. Python cannot
kill a thread, so a reward that hangs is abandoned, not stopped: its thread lives on (sleeping or spinning, holding
what it holds) until it returns or the process exits, and being a daemon it never blocks that exit; each further
call that hangs leaves one more. The alternatives were worse: ``signal.alarm`` works only in the main thread (not
under Ray or a reward that is itself threaded) and cannot interrupt C code; a subprocess per call costs ~50 ms of
startup and pickling per step and objective, and cannot pass arbitrary columns or closures. A thread costs ~0.1 ms
per call. ``timeout_s`` 0 (or None) calls the reward in the caller's thread, with no time limit: for reward code that
must run in the main thread (e.g. one that sets signal handlers).
"""

from __future__ import annotations

import math
import sys
import threading
from dataclasses import dataclass, field

import torch

from mo_rl.errors import RewardFailure


@dataclass
class Scores:
    rewards: torch.Tensor  # (N, K) float64
    valid: torch.Tensor  # (N,) bool: False where an objective returned None (TRL's "cannot score")
    failures: dict[str, int] = field(default_factory=dict)
    first_error: dict[str, str] = field(default_factory=dict)


class RewardTimeout(Exception):
    """A reward call ran past ``objectives.timeout_s``."""


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
    def call():
        return list(fn(prompts=prompts, completions=completions, step=step, index=index, **columns))

    out = _in_thread(call, timeout_s) if timeout_s else call()
    if len(out) != len(completions):
        raise ValueError(f"returned {len(out)} values for {len(completions)} completions")
    return out


def _one_objective(name, fn, prompts, completions, columns, step, failure_value, fail_fast, scores: Scores, k,
                   first_index: int = 0, timeout_s: float | None = None):
    N = len(completions)
    try:
        values = _call(fn, prompts, completions, columns, step, list(range(first_index, first_index + N)), timeout_s)
    except BaseException as e:  # noqa: BLE001 - user code: any failure is recorded, then isolated per completion
        if isinstance(e, KeyboardInterrupt):
            raise
        if fail_fast:
            raise RewardFailure(name, f"failed: {type(e).__name__}: {e}") from e
        scores.first_error.setdefault(name, f"{type(e).__name__}: {e}")
        values = [math.nan] * N if isinstance(e, RewardTimeout) else _one_by_one(
            fn, prompts, completions, columns, step, first_index, timeout_s)
    column = scores.rewards[:, k].tolist()  # filled in Python, written back once (a tensor write per value is slow)
    for i, v in enumerate(values):
        if v is None:
            scores.valid[i] = False
            continue
        raw = v
        try:
            v = float(v)
        except (TypeError, ValueError):
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


def _one_by_one(fn, prompts, completions, columns, step, first_index, timeout_s) -> list:
    """Score completion by completion after the batch call failed: NaN (a failure) where one fails; after a
    timeout, the rest are failures without being called (a reward that hangs would cost N x timeout_s)."""
    values = []
    for i in range(len(completions)):
        try:
            values.append(_call(fn, prompts[i:i + 1], completions[i:i + 1],
                                {c: v[i:i + 1] for c, v in columns.items()}, step, [first_index + i], timeout_s)[0])
        except BaseException as e:  # noqa: BLE001
            if isinstance(e, KeyboardInterrupt):
                raise
            values.append(math.nan)
            if isinstance(e, RewardTimeout):
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
