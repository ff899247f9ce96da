"""Reward functions for the round-3 reliability tests (importable as ``tests.round3_rewards:<name>``)."""


def huge_int(prompts, completions, **_):
    """An int no float can hold."""
    return [10**400 for _ in completions]


def near_max(prompts, completions, **_):
    """Finite in float64, inf in the float32 the rewards are trained in."""
    return [1e308 for _ in completions]


def plus_minus(prompts, completions, index, **_):
    """+1e308 and -1e308 alternating: their mean overflows even in float64."""
    return [1e308 if i % 2 else -1e308 for i in index]


def interrupts(prompts, completions, **_):
    """Raises KeyboardInterrupt itself, with no Ctrl-C anywhere."""
    raise KeyboardInterrupt
