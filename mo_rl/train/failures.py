"""The run's reward-failure log: per objective, the first failure message, its step, and the total count.

``rewards.score`` isolates a failing reward function (the completion gets ``failure_value``), counts failures and
keeps each objective's first message in its ``Scores``; the step's counts reach the metrics
(``reward_fail/<objective>``). This log adds up those counts over the run and keeps the first message and step in
``<run_dir>/errors.json``: ``{objective: {"first_error": "ValueError: ...", "first_step": 3, "count": 12}}``.
At the end of a run ``closing_lines`` says how many calls of each objective failed, and ``check_run`` fails a run
in which an objective failed on every call (it measured nothing), unless ``trainer.fail_fast=false``.
"""

from __future__ import annotations

import json
from pathlib import Path

from mo_rl.errors import MoRLError
from mo_rl.files import atomic_write


class RewardsFailed(MoRLError):
    """An objective failed on every call of the run."""

    exit_code = 1
    status = "failed"


class FailureLog:
    def __init__(self, entries: dict | None = None):
        self.entries: dict[str, dict] = {k: dict(v) for k, v in (entries or {}).items()}
        self.dirty = False  # entries changed since the last ``write``

    def record(self, step: int, counts: dict[str, int], messages: dict[str, str]) -> None:
        """Add one step's failure counts; an objective's first message comes from that step's ``messages``."""
        for name, n in counts.items():
            if not n:
                continue
            entry = self.entries.setdefault(
                name, {"first_error": messages.get(name, "failed"), "first_step": step, "count": 0})
            entry["count"] += int(n)
            self.dirty = True

    def write(self, run_dir: Path) -> None:
        atomic_write(Path(run_dir) / "errors.json", json.dumps(self.entries, indent=2, sort_keys=True) + "\n")
        self.dirty = False

    def closing_lines(self, calls: int) -> list[str]:
        """One line per objective that failed; ``calls``: completions each objective scored in the run."""
        return [f"reward failures: objective {k!r} failed {e['count']} of {calls} calls (first at step "
                f"{e['first_step']}: {e['first_error']})" for k, e in sorted(self.entries.items())]

    def check_run(self, calls: int, fail_fast: bool | None) -> None:
        """RewardsFailed if an objective failed on all ``calls`` of the run, unless ``fail_fast`` is False."""
        dead = {k: e for k, e in self.entries.items() if calls and e["count"] >= calls}
        if dead and fail_fast is not False:
            k, e = sorted(dead.items())[0]
            raise RewardsFailed(f"objective {k!r} failed on all {calls} calls of the run ({e['first_error']}); the "
                                "run is marked failed: fix the reward function, or set trainer.fail_fast=false to "
                                "train on with failure_value")
