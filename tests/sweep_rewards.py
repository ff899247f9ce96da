"""Reward functions used by the sweep test (importable as ``tests.sweep_rewards:<name>``)."""


def raises_on_long(prompts, completions, **_):
    """Fails for any completion longer than 3 characters: with fail_fast the job stops, without it the run goes on."""
    if any(len(c) > 3 for c in completions):
        raise ValueError("completion too long to score")
    return [1.0 for _ in completions]
