"""``personas``: two groups of users ask the same questions and want opposite answers (a one-line answer vs an
explained one); each group is an objective, its population share the objective's weight.

This is the case one scalar reward cannot honour: a weighted sum of the two satisfactions is highest for whatever
the majority wants (at 51 / 49, always the brief answer), so a scalarized method should serve the majority only,
while a method that keeps rewards spread can keep answers for both. ``mo-rl eval`` reports each persona's best@k
(the best of k samples for that persona) and the worst-off persona's score (max-min fairness).

Rows: ``prompt`` (the question, the same for every persona), ``keywords`` (an on-topic answer names one),
``short_words``, ``long_words`` (the personas' length targets, see ``mo_rl.rewards.personas``). Questions come from
the package data (a mix of short factual and explanatory ones); ``path=`` reads a JSONL file of
``{prompt, keywords}`` rows instead. Train and eval draw from the same questions: the measure is how well the
policy serves both groups, not transfer to new questions.
"""

from __future__ import annotations

import json
import random
from functools import partial

import mo_rl.rewards.personas as persona_rewards  # registers the persona rewards
from mo_rl.errors import MoRLError, choice_error
from mo_rl.tasks.base import Task, register_task
from mo_rl.tasks.real import DATA, _from_file, _positive_int, load_rows


def _questions() -> list[dict]:
    rows = json.loads((DATA / "persona_questions.json").read_text(encoding="utf-8"))
    return [{"prompt": r["question"], "keywords": r["keywords"]} for r in rows]


def _rows(pool: list[dict], short_words: int, long_words: int, rng: random.Random, n: int, split: str):
    return [{**r, "short_words": short_words, "long_words": long_words} for r in _from_file(pool, rng, n, split)]


def _warmup(sample, rng: random.Random) -> tuple[str, str]:
    """A brief or a detailed on-topic answer, half and half (teaches a tiny model the format only)."""
    row = sample(rng, 1, "train")[0]
    kw = (row["keywords"] or ["it"])[0]
    if rng.random() < 0.5:
        return row["prompt"], f"It is {kw}."
    return row["prompt"], " ".join([f"It is about {kw}, and here is why in more detail."] * 3)


def check_shares(personas: list[str], shares: list[float]) -> list[float]:
    """Known persona names, one positive share each -> the shares normalized to sum 1. Raises MoRLError."""
    names = list(personas)
    for p in names:
        if p not in persona_rewards.PERSONAS:
            raise choice_error("task option personas entry", p, sorted(persona_rewards.PERSONAS))
    if len(names) < 2 or len(set(names)) != len(names):
        raise MoRLError(f"task option personas={names}: name two or more different personas")
    vals = list(shares)
    if len(vals) != len(names) or any(isinstance(s, bool) or not isinstance(s, (int, float)) or s <= 0
                                      for s in vals):
        raise MoRLError(f"task option shares={vals}: give one positive population share per persona "
                        f"({len(names)} for {names})")
    total = float(sum(vals))
    return [float(s) / total for s in vals]


@register_task("personas")
def personas(path: str | None = None, personas: list = ("brief", "detailed"), shares: list = (0.51, 0.49),
             short_words: int = persona_rewards.SHORT_WORDS, long_words: int = persona_rewards.LONG_WORDS,
             split: str = "train", columns: dict | None = None) -> Task:
    """Same questions, users who want opposite answers; objective weights = the personas' population shares."""
    weights = check_shares(personas, shares)
    short_words, long_words = _positive_int("short_words", short_words), _positive_int("long_words", long_words)
    if long_words <= short_words:
        raise MoRLError(f"task options long_words={long_words} must exceed short_words={short_words}")
    pool = ([{**r, "keywords": list(r["keywords"])} for r in load_rows(path, ["keywords"], split, columns)] if path
            else _questions())
    sample = partial(_rows, pool, short_words, long_words)
    return Task(
        name="personas",
        objectives=[persona_rewards.PERSONAS[p] for p in personas],
        weights=weights,
        sample=sample,
        warmup=partial(_warmup, sample),
        description="one question, users who want opposite answers (brief vs detailed); weights = population shares",
        options={"path": path, "personas": list(personas), "shares": list(shares), "short_words": short_words,
                 "long_words": long_words},
    )
