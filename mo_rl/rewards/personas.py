"""Reward functions of the ``personas`` task: one per group of users, each scoring a completion for that group.

Two groups ask the same questions and want opposite things: ``persona_brief`` users want a one-line answer,
``persona_detailed`` users an explained one. Length is what they disagree on, so the two are scored on the number of
words, with a gap between "short enough" and "long enough" in which an answer satisfies neither well: a compromise
length cannot serve both. Both require the answer to be on topic (it names one of the row's ``keywords``).
TRL signature, values in [0, 1]. Columns: ``keywords`` (list of lowercase strings, any one suffices),
``short_words`` (brief is 1 up to this many words) and ``long_words`` (detailed is 1 from this many words).
"""

from __future__ import annotations

import re

from mo_rl.rewards.registry import register_reward

SHORT_WORDS = 12  # brief: 1 up to this many words, falling linearly to 0 at twice as many
LONG_WORDS = 30  # detailed: 0 up to SHORT_WORDS words, rising linearly to 1 at this many
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'.,-]*")


def words(text: str) -> int:
    """Words of prose (markup and stray symbols do not count)."""
    return len(_WORD.findall(text))


def on_topic(text: str, keywords) -> bool:
    """The answer names at least one of the row's keywords (case-insensitive; none given: always on topic)."""
    low = text.lower()
    return not keywords or any(k.lower() in low for k in keywords)


def _ramp(x: float, lo: float, hi: float) -> float:
    """0 at or below ``lo``, 1 at or above ``hi``, linear between."""
    return min(1.0, max(0.0, (x - lo) / (hi - lo)))


def _columns(n: int, keywords, short_words, long_words):
    return (keywords if keywords is not None else [None] * n,
            short_words if short_words is not None else [SHORT_WORDS] * n,
            long_words if long_words is not None else [LONG_WORDS] * n)


@register_reward("persona_brief", "users who want a one-line answer: 1 on topic within `short_words` words "
                 "(default 12), falling to 0 at twice that")
def persona_brief(prompts, completions, keywords=None, short_words=None, long_words=None, **_):
    out = []
    for c, kw, s, _l in zip(completions, *_columns(len(completions), keywords, short_words, long_words)):
        n = words(c)
        out.append(float(n > 0 and on_topic(c, kw)) * (1.0 - _ramp(n, s, 2 * s)))
    return out


@register_reward("persona_detailed", "users who want an explained answer: 0 up to `short_words` words, rising "
                 "to 1 on topic at `long_words` (default 30)")
def persona_detailed(prompts, completions, keywords=None, short_words=None, long_words=None, **_):
    out = []
    for c, kw, s, lw in zip(completions, *_columns(len(completions), keywords, short_words, long_words)):
        out.append(float(on_topic(c, kw)) * _ramp(words(c), s, lw))
    return out


PERSONAS = {"brief": "persona_brief", "detailed": "persona_detailed"}  # task option name -> reward name
