"""Reward functions of the built-in synthetic tasks (TRL signature, one objective each, values in [0, 1])."""

from __future__ import annotations

import hashlib
import random

from mo_rl.rewards.registry import register_reward


def _frac(text: str, pred) -> float:
    return sum(map(pred, text)) / len(text) if text else 0.0


def _seeded(tag: str, step, index, completion: str) -> random.Random:
    """Noise that is a pure function of (step, index, completion): reruns and resumed runs see the same values."""
    h = hashlib.blake2b(f"{tag}|{step}|{index}|{completion}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(h, "little"))


@register_reward("match", "fraction of completion characters equal to the prompt's target letter")
def match(prompts, completions, target, **_):
    return [_frac(c, lambda ch, t=t: ch == t) for c, t in zip(completions, target)]


@register_reward("match_noisy", "match plus Gaussian noise (sd 0.3), clipped to [0, 1]")
def match_noisy(prompts, completions, target, step=None, index=None, **_):
    index = index if index is not None else range(len(completions))
    return [min(1.0, max(0.0, m + _seeded("mn", step, i, c).gauss(0.0, 0.3)))
            for m, c, i in zip(match(prompts, completions, target), completions, index)]


@register_reward("first_char", "1 if the completion starts with the target letter, else 0 (a coarse proxy)")
def first_char(prompts, completions, target, **_):
    return [float(c[:1] == t) for c, t in zip(completions, target)]


@register_reward("noise", "uniform noise in [0, 1], independent of the completion's quality")
def noise(prompts, completions, step=None, index=None, **_):
    index = index if index is not None else range(len(completions))
    return [_seeded("nz", step, i, c).random() for c, i in zip(completions, index)]


@register_reward("vowels", "fraction of completion characters that are vowels")
def vowels(prompts, completions, **_):
    return [_frac(c, lambda ch: ch in "aeiou") for c in completions]


@register_reward("digits", "fraction of completion characters that are digits")
def digits(prompts, completions, **_):
    return [_frac(c, str.isdigit) for c in completions]
