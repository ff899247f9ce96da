"""Reward functions for the reliability tests (importable as ``tests.reliability_rewards:<name>``)."""

import os
import threading
import time

RELEASE = threading.Event()  # set by the tests at the end: lets abandoned (timed-out) reward threads return


def gate(prompts, completions, step, **_):
    """A zero reward that, from step ``MORL_GATE_STEP`` on, waits until the file ``MORL_GATE`` exists (at most
    120 s): a test holds a real training process at a known step, does something to it, then lets it go on."""
    path, at = os.environ.get("MORL_GATE"), int(os.environ.get("MORL_GATE_STEP", "0"))
    deadline = time.monotonic() + 120
    while path and step >= at and not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return [0.0 for _ in completions]


def hangs(prompts, completions, **_):
    """Never returns on its own (until the test sets RELEASE)."""
    RELEASE.wait(600)
    return [0.0 for _ in completions]


def exits(prompts, completions, **_):
    raise SystemExit(3)


def cannot_score(prompts, completions, **_):
    """TRL's "cannot score" for every completion."""
    return [None for _ in completions]


def catastrophic(prompts, completions, **_):
    """Holds the GIL for ever on a completion "hang" (a catastrophic regex: 2**64 backtracking steps), else 1."""
    import re

    for c in completions:
        if c == "hang":
            re.match(r"(a+)+$", "a" * 64 + "b")
    return [1.0 for _ in completions]


def always_raises(prompts, completions, **_):
    raise ValueError("no score today")


def wrong_signature(completions):
    """Takes only ``completions``: every call fails with a TypeError."""
    return [1.0 for _ in completions]


def wrong_length(prompts, completions, **_):
    return [1.0]


def edits_inputs(prompts, completions, **_):
    """Scores, then empties the list it was handed (a careless reward)."""
    out = [float(len(c)) for c in completions]
    completions.clear()
    return out


def catastrophic_gate(prompts, completions, **_):
    """From its first call on, holds the GIL for ever; first writes its pid to the file ``MORL_GATE`` (a test waits
    for it, then sends SIGTERM)."""
    import re

    with open(os.environ["MORL_GATE"] + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(os.environ["MORL_GATE"] + ".tmp", os.environ["MORL_GATE"])
    re.match(r"(a+)+$", "a" * 64 + "b")
    return [0.0 for _ in completions]


def dies(prompts, completions, **_):
    """Ends its process on a completion "die" (as a crash or the OOM killer would), else 1."""
    if "die" in completions:
        os._exit(7)
    return [1.0 for _ in completions]
