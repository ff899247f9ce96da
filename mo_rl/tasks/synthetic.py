"""The two built-in synthetic task families the embedded tiny model can move within minutes on a CPU.

- ``aligned``: the goal is to repeat the prompt's letter; the objectives are noisy or coarse proxies of that one
  goal plus one objective of pure noise. Balance (dvao) should do well here.
- ``conflicting``: the objectives genuinely trade off: every character is a vowel, a digit or neither, so a
  completion can raise one fraction only by lowering the other. Spread (vpo) should do well here.
- ``regime``: a family with two knobs for the regime map: ``rho``, the correlation of its two objectives (+1 the
  same goal, 0 independent, -1 a strict trade-off), and ``noise``, the sd of Gaussian noise on the second one.
Completions are short strings over lowercase letters and digits; the rewards live in ``mo_rl.rewards.builtin``.
"""

from __future__ import annotations

import random
import string

from mo_rl.errors import MoRLError
from mo_rl.tasks.base import Task, register_task

LETTERS = string.ascii_lowercase
CHARS = string.ascii_lowercase + string.digits


def _aligned_rows(rng: random.Random, n: int, split: str) -> list[dict]:
    # eval prompts use the same letters as training: the question is how well the policy does, not transfer
    return [{"prompt": f"{t}>", "target": t} for t in (rng.choice(LETTERS) for _ in range(n))]


def _aligned_warmup(rng: random.Random) -> tuple[str, str]:
    t = rng.choice(LETTERS)
    return f"{t}>", "".join(t if rng.random() < 0.3 else rng.choice(LETTERS) for _ in range(rng.randint(4, 10)))


@register_task("aligned")
def aligned() -> Task:
    return Task(
        name="aligned",
        objectives=["match", "match_noisy", "first_char", "noise"],
        weights=[0.25, 0.25, 0.25, 0.25],
        sample=_aligned_rows,
        success_objective="match",
        success_threshold=0.8,
        warmup=_aligned_warmup,
        description="repeat the prompt's letter; proxies of one goal plus a pure-noise objective",
    )


def _conflicting_rows(rng: random.Random, n: int, split: str) -> list[dict]:
    return [{"prompt": "".join(rng.choice(LETTERS) for _ in range(3)) + "="} for _ in range(n)]


def _multi_prompt(prompt: str, m: int) -> str:
    return f"{prompt}[{m}]"


def _conflicting_warmup(rng: random.Random) -> tuple[str, str]:
    """Half the pairs ask for m in {2, 3} comma-separated answers (the multi-answer format vpo can use)."""
    prompt = "".join(rng.choice(LETTERS) for _ in range(3)) + "="
    m = rng.choice([1, 1, 1, 2, 3])
    answers = ["".join(rng.choice(CHARS) for _ in range(rng.randint(3, 5) if m > 1 else rng.randint(4, 10)))
               for _ in range(m)]
    return (_multi_prompt(prompt, m) if m > 1 else prompt), ",".join(answers)


@register_task("conflicting")
def conflicting() -> Task:
    return Task(
        name="conflicting",
        objectives=["vowels", "digits"],
        weights=[0.5, 0.5],
        sample=_conflicting_rows,
        answer_delimiter=",",
        multi_answer_prompt=_multi_prompt,
        warmup=_conflicting_warmup,
        description="fraction of vowels vs fraction of digits: one costs the other",
    )


@register_task("regime")
def regime(rho: float = 0.0, noise: float = 0.0) -> Task:
    """Objectives ``regime_a`` (vowels in the first half) and ``regime_b`` (its blend with digits in the second
    half at correlation ``rho``, plus noise of sd ``noise``); prompts as in ``conflicting`` (its warm-up format)."""
    if not -1 <= float(rho) <= 1 or not float(noise) >= 0:
        raise MoRLError(f"task regime: rho={rho!r} must be in [-1, 1] and noise={noise!r} >= 0")

    def rows(rng: random.Random, n: int, split: str) -> list[dict]:
        return [{**r, "rho": float(rho), "noise": float(noise)} for r in _conflicting_rows(rng, n, split)]

    return Task(
        name="regime", objectives=["regime_a", "regime_b"], weights=[0.5, 0.5], sample=rows,
        description="two objectives at correlation rho, the second with noise: the regime map's family",
        options={"rho": float(rho), "noise": float(noise)},
    )
