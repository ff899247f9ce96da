"""Reward functions used by the sweep and resume tests (importable as ``tests.sweep_rewards:<name>``)."""


def raises_on_long(prompts, completions, **_):
    """Fails for any completion longer than 3 characters: with fail_fast the job stops, without it the run goes on."""
    if any(len(c) > 3 for c in completions):
        raise ValueError("completion too long to score")
    return [1.0 for _ in completions]


def paced(prompts, completions, **_):
    """A zero reward that takes 30 ms per call: it keeps a run slow enough for a test to kill it mid-run, whatever
    the machine's speed (the resume test gives it weight 0, so it changes no advantage of the other objectives)."""
    import time

    time.sleep(0.03)
    return [0.0 for _ in completions]
