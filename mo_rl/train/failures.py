"""The run's reward-failure log: per objective, the first failure message, its step, and the total count.

``rewards.score`` isolates a failing reward function (the completion gets ``failure_value``), counts failures and
keeps each objective's first message in its ``Scores``; the step's counts reach the metrics
(``reward_fail/<objective>``). This log adds up those counts over the run and keeps the first message and step in
``<run_dir>/errors.json``: ``{objective: {"first_error": "ValueError: ...", "first_step": 3, "count": 12}}``.
"""

from __future__ import annotations

import json
from pathlib import Path

from mo_rl.results.writer import atomic_write


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
