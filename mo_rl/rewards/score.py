"""Score completions with one reward function per objective -> a reward matrix, a validity mask, failures.

A reward function that raises, returns the wrong number of values or a non-finite value for some completion is
not allowed to stop a run (unless ``fail_fast``): that completion's reward becomes ``failure_value`` and the
failure is counted per objective, with the first message kept for the run directory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from mo_rl.errors import RewardFailure


@dataclass
class Scores:
    rewards: torch.Tensor  # (N, K) float64
    valid: torch.Tensor  # (N,) bool: False where an objective returned None (TRL's "cannot score")
    failures: dict[str, int] = field(default_factory=dict)
    first_error: dict[str, str] = field(default_factory=dict)


def _call(fn, prompts, completions, columns, step, index) -> list:
    out = fn(prompts=prompts, completions=completions, step=step, index=index, **columns)
    out = list(out)
    if len(out) != len(completions):
        raise ValueError(f"returned {len(out)} values for {len(completions)} completions")
    return out


def _one_objective(name, fn, prompts, completions, columns, step, failure_value, fail_fast, scores: Scores, k,
                   first_index: int = 0):
    N = len(completions)
    try:
        values = _call(fn, prompts, completions, columns, step, list(range(first_index, first_index + N)))
    except Exception as e:  # noqa: BLE001 - user code: any failure is recorded, then isolated per completion
        if fail_fast:
            raise RewardFailure(name, f"failed: {type(e).__name__}: {e}") from e
        scores.first_error.setdefault(name, f"{type(e).__name__}: {e}")
        values = []
        for i in range(N):
            try:
                values.append(_call(fn, prompts[i:i + 1], completions[i:i + 1],
                                    {c: v[i:i + 1] for c, v in columns.items()}, step, [first_index + i])[0])
            except Exception:  # noqa: BLE001
                values.append(math.nan)
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


def score(objectives: list[tuple[str, object]], prompts: list[str], completions: list[str],
          columns: dict[str, list], step: int, failure_value: float = 0.0, fail_fast: bool = False,
          first_index: int = 0) -> Scores:
    """Call each ``(name, fn)`` once on the whole batch. columns: {column: list of N values}. -> ``Scores``.

    Reward functions see ``index`` = ``first_index`` + position: a data-parallel rank scoring its slice of the
    step passes the slice's start, so a reward keyed on (step, index) gives the values one process would."""
    N = len(completions)
    scores = Scores(torch.zeros(N, len(objectives), dtype=torch.float64), torch.ones(N, dtype=torch.bool))
    for k, (name, fn) in enumerate(objectives):
        _one_objective(name, fn, prompts, completions, columns, step, failure_value, fail_fast, scores, k,
                       first_index)
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
                   fail_fast: bool = False, first_index: int = 0) -> tuple[torch.Tensor, torch.Tensor, Scores]:
    """Score N completions, each as one answer or split into ``answers`` answers scored one by one.
    ``first_index``: the global position of the first completion (see ``score``).

    -> rewards (N, K) and mask (N,) for one answer; rewards (N, M, K) and answer mask (N, M) for M > 1.
    """
    if answers == 1:
        sc = score(objectives, prompts, completions, columns, step, failure_value, fail_fast, first_index)
        return sc.rewards, sc.valid, sc
    split = [split_answers(c, answers, delimiter) for c in completions]
    flat = [a for parts, _ in split for a in parts]
    rep = {k: [v for v in vals for _ in range(answers)] for k, vals in columns.items()}
    sc = score(objectives, [p for p in prompts for _ in range(answers)], flat, rep, step, failure_value, fail_fast,
               first_index * answers)
    written = torch.tensor([w for _, ws in split for w in ws])
    N = len(completions)
    return sc.rewards.view(N, answers, -1), (sc.valid & written).view(N, answers), sc
