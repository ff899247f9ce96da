"""One rollout-and-score path: task rows -> prompts -> engine -> reward functions -> rewards, mask, success.

Training (``train/loop.py``), ``mo-rl eval`` (``analysis/evaluate.py``) and ``mo-rl diagnose`` all call
``rollout_and_score``, so what a prompt looks like (multi-answer prompt, chat template: the engine's ``Policy``)
and how a completion is scored (the objectives, ``failure_value``, answers, GDPO conditions, the success test) are
one code path. ``Scoring.from_config`` reads every one of those from a run's config. Nothing here needs a run
directory.

Where the rewards become the (B, G, K) float32 tensor, a value beyond ``MAX_REWARD`` in magnitude is a failure of
its objective like a non-finite one (``failure_value``, counted, its first message kept; ``fail_fast`` stops): in
float32, 1e308 is inf and 1e20's square overflows in the estimators' standard deviations. A reward that returns an
int too large for any float (``10**400``), or raises ``KeyboardInterrupt`` while no Ctrl-C reached the run
(``signals.signalled``), stops the run with ``RewardFailure``, one line naming the objective.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from mo_rl.errors import RewardFailure
from mo_rl.pipeline import parallel
from mo_rl.rewards.registry import get_reward, load_reward_modules
from mo_rl.rewards.score import Scores, apply_conditions, repeat_rows, score, score_rollouts
from mo_rl.rollout.base import RolloutBatch, SamplingParams
from mo_rl.signals import Terminated, signalled
from mo_rl.tasks.base import Task

# |r| at most this: squares of such values summed over the largest step (65536 rollouts, checks.py) stay below
# float32's largest number (3.4e38), so every estimator's mean and standard deviation stay finite
MAX_REWARD = 1e15


@dataclass(frozen=True)
class Scoring:
    """Everything that shapes a prompt or a score."""

    names: list[str]  # objective names (reward-registry names or module:function)
    fns: list[tuple[str, object]]  # (name, reward function), one per objective
    answers: int = 1  # answers asked for in each completion (task.answers)
    delimiter: str | None = None  # separates a completion's answers
    failure_value: float = 0.0
    fail_fast: bool = False
    conditions: dict = field(default_factory=dict)  # GDPO Eq. 8: {objective: {on, min}}
    success: tuple[str, float] | None = None  # (objective, threshold): a rollout solved; None: no success test
    timeout_s: float | None = None  # limit of each reward-function call (objectives.timeout_s; 0/None = none)

    @classmethod
    def from_config(cls, c, task: Task, names: list[str]) -> "Scoring":
        """From a validated ``Config`` and its task; ``names``: the run's objectives (``config.objective_set``)."""
        o = c.objectives
        load_reward_modules(o.modules)
        success = (task.success_objective, task.success_threshold) if task.success_objective else None
        fns = [(n, get_reward(n, o.isolation, o.modules, o.timeout_s)) for n in names]
        return cls(list(names), fns, c.task.answers, task.answer_delimiter, o.failure_value,
                   c.trainer.fail_fast, dict(o.conditions), success, o.timeout_s)


@dataclass
class Scored:
    """A step's (or an eval's) rollouts with their scores; B prompts, G rollouts each, N = B * G."""

    batch: object  # parallel.StepBatch: the global texts, this rank's rows
    rewards: torch.Tensor  # (B, G, K) float32, or (B, G, M, K) with M answers per rollout
    mask: torch.Tensor  # (B, G) bool, or (B, G, M): the answers written and scored
    scores: Scores  # failure counts and first messages per objective
    rows: list[dict]  # the B task rows
    success: torch.Tensor | None  # (B, G) bool: some answer meets the success threshold; None: no success test


def prompts_for(task: Task, rows: list[dict], answers: int) -> list[str]:
    """The text each row asks: its prompt, or the task's multi-answer prompt for ``answers`` > 1."""
    return [r["prompt"] if answers == 1 else task.multi_answer_prompt(r["prompt"], answers) for r in rows]


def rollout_and_score(engine, task: Task, scoring: Scoring, rows: list[dict], group_size: int,
                      params: SamplingParams, step: int, dist: parallel.Dist = parallel.Dist(),
                      device: torch.device | str = "cpu", around_generate=nullcontext,
                      progress: Callable[[int], None] | None = None) -> Scored:
    """Sample ``group_size`` completions for each of ``rows`` and score them.

    ``step`` reaches the reward functions (``-1`` outside training). Data-parallel (``dist``): this rank samples and
    scores its contiguous slice of the rows (its prompts keep their global seeds), then rewards, masks, success and
    texts of all ranks are gathered, so the result is the global batch's (``parallel.gather_step``).
    ``around_generate``: a context-manager factory entered around sampling (FSDP's gathered weights).
    ``progress``: called with the number of prompts just sampled, e.g. the ``advance`` of ``mo_rl.progress.work``
    (eval, diagnose); the prompts are then sampled a tenth at a time, each keeping its own seed.
    """
    G, m = group_size, scoring.answers
    mine = parallel.shard(dist, len(rows))
    local = rows[mine]
    with around_generate():
        batch = _generate(engine, prompts_for(task, local, m), G, replace(params, prompt_offset=mine.start), progress)
    prompts, columns = repeat_rows(local, G)
    try:
        r, valid, sc = score_rollouts(scoring.fns, prompts, batch.texts, columns, step, m, scoring.delimiter,
                                      scoring.failure_value, scoring.fail_fast, first_index=mine.start * G,
                                      timeout_s=scoring.timeout_s)
    except OverflowError as e:  # float(10**400) in the scorer
        raise RewardFailure(_culprit(e, scoring), f"returned a number too large for a float at step {step} "
                            f"({e}); rewards must be numbers within |r| <= {MAX_REWARD:g}") from e
    except KeyboardInterrupt as e:
        if isinstance(e, Terminated) or signalled() is not False:
            raise  # a real Ctrl-C or signal, or nothing watching for one (eval, diagnose)
        raise RewardFailure(_culprit(e, scoring), f"raised KeyboardInterrupt at step {step} although no Ctrl-C "
                            "reached mo-rl: the reward code raised it itself; the run stopped (status failed), "
                            "a reward must not raise KeyboardInterrupt") from e
    out_of_range(r, sc, scoring, step)
    r = apply_conditions(r, scoring.names, scoring.conditions)
    shape = (len(local), G)
    r = r.view(*shape, *r.shape[1:]).to(device, torch.float32)
    valid = valid.view(*shape, *valid.shape[1:]).to(device)
    solved = _solved(scoring, r, valid, prompts, batch.texts, columns, step)
    batch, r, valid, sc = parallel.gather_step(dist, batch, r, valid, sc)
    solved = None if solved is None else parallel.all_gather(dist, solved)
    return Scored(batch, r, valid, sc, rows, solved)


def _generate(engine, prompts: list[str], n: int, params: SamplingParams, progress) -> RolloutBatch:
    """``engine.generate``; with ``progress``, in ten slices of the prompts (per-prompt seeds: the same draws)."""
    if progress is None:
        return engine.generate(prompts, n, params)
    size = max(1, -(-len(prompts) // 10))
    parts = []
    for a in range(0, len(prompts), size):
        parts.append(engine.generate(prompts[a:a + size], n, replace(params, prompt_offset=params.prompt_offset + a)))
        progress(len(prompts[a:a + size]))
    return concat_batches(parts)


def concat_batches(parts: list[RolloutBatch]) -> RolloutBatch:
    """One batch of several, in order: prompts left-padded and completions right-padded to the widest (masks 0)."""
    if len(parts) == 1:
        return parts[0]

    def cat(key: str, left: bool) -> torch.Tensor:
        xs = [getattr(b, key) for b in parts]
        width = max(x.shape[1] for x in xs)
        pad = [(width - x.shape[1], 0) if left else (0, width - x.shape[1]) for x in xs]
        return torch.cat([torch.nn.functional.pad(x, p) for x, p in zip(xs, pad)])

    return RolloutBatch(cat("prompt_ids", True), cat("prompt_mask", True), cat("completion_ids", False),
                        cat("completion_mask", False), cat("logprobs", False),
                        [t for b in parts for t in b.texts], parts[0].n)


def _solved(scoring: Scoring, r, valid, prompts, texts, columns, step) -> torch.Tensor | None:
    """(B, G) bool: whether each rollout meets the success test, some written answer reaching the threshold. An
    objective that is not one of the run's (code's all-tests-pass under per-test objectives) is scored apart on the
    whole completion, a failure counting as unsolved."""
    if scoring.success is None:
        return None
    obj, thr = scoring.success
    if obj in scoring.names:
        hit = (r[..., scoring.names.index(obj)] >= thr) & valid
        return hit.any(-1) if hit.dim() == 3 else hit
    sc = score([(obj, get_reward(obj))], prompts, texts, columns, step, timeout_s=scoring.timeout_s)
    return ((sc.rewards[:, 0] >= thr) & sc.valid).view(r.shape[:2]).to(r.device)


_WARNED_RANGE: set[str] = set()


def out_of_range(r: torch.Tensor, sc, scoring: Scoring, step: int) -> None:
    """Values beyond ``MAX_REWARD`` in ``r`` (N, [M,] K) become ``failure_value``, counted in ``sc`` as failures of
    their objective (first message kept; a warning once per objective and process); ``fail_fast`` raises."""
    flat = r.reshape(-1, r.shape[-1])
    bad = ~(flat.abs() <= MAX_REWARD)  # NaN was a failure already (failure_value)
    if not bad.any():
        return
    for k in bad.any(0).nonzero().reshape(-1).tolist():
        name, rows = scoring.names[k], bad[:, k]
        value = float(flat[rows, k][0])
        msg = (f"returned {value:g} at step {step}, beyond |r| <= {MAX_REWARD:g} (float32 training overflows "
               "there); scored as a failure (objectives.failure_value): rescale the reward")
        if scoring.fail_fast:
            raise RewardFailure(name, msg)
        sc.failures[name] = sc.failures.get(name, 0) + int(rows.sum())
        sc.first_error.setdefault(name, msg)
        flat[rows, k] = scoring.failure_value
        if name not in _WARNED_RANGE:
            _WARNED_RANGE.add(name)
            print(f"warning: objective {name!r} {msg}", file=sys.stderr)


def _culprit(e: BaseException, scoring: Scoring) -> str:
    """The objective whose reward raised ``e``: its function's frame in the traceback, else a frame of the scorer
    that names it; "a reward function" when neither is found."""
    codes = {getattr(fn, "__code__", None): name for name, fn in scoring.fns}
    tb, named = e.__traceback__, None
    while tb is not None:
        f = tb.tb_frame
        if f.f_code in codes:
            return codes[f.f_code]
        named = f.f_locals.get("name") if f.f_locals.get("name") in scoring.names else named
        tb = tb.tb_next
    return named or "a reward function"
