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


def _halves(text: str) -> tuple[str, str]:
    cut = (len(text) + 1) // 2
    return text[:cut], text[cut:]


def regime_parts(completion: str) -> tuple[float, float]:
    """The two independent base features of the ``regime`` task: vowels in the first half, digits in the second.

    They use different characters, so a completion can raise both at once (``aeiou01234``) and under a policy that
    writes characters independently they are uncorrelated."""
    first, second = _halves(completion)
    return _frac(first, lambda ch: ch in "aeiou"), _frac(second, str.isdigit)


@register_reward("regime_a", "regime task: fraction of vowels in the completion's first half")
def regime_a(prompts, completions, **_):
    return [regime_parts(c)[0] for c in completions]


@register_reward("regime_b", "regime task: a blend of regime_a (or 1 - regime_a) and digits in the second half, "
                             "correlation rho with regime_a, plus Gaussian noise")
def regime_b(prompts, completions, rho, noise, step=None, index=None, **_):
    """``(|rho| h(a) + sqrt(1 - rho^2) d) / (|rho| + sqrt(1 - rho^2))`` with ``h(a) = a`` for rho >= 0 and
    ``1 - a`` below, plus N(0, noise) clipped to [0, 1]: for independent a, d of equal spread its correlation with
    ``regime_a`` is rho before the noise (+1: the same goal, 0: independent goals, -1: a strict trade-off)."""
    index = index if index is not None else range(len(completions))
    out = []
    for c, i, p, s in zip(completions, index, rho, noise):
        a, d = regime_parts(c)
        ca, cd = abs(p), (1 - p * p) ** 0.5
        v = (ca * (a if p >= 0 else 1 - a) + cd * d) / (ca + cd)
        out.append(min(1.0, max(0.0, v + (_seeded("rb", step, i, c).gauss(0.0, s) if s > 0 else 0.0))))
    return out
