"""The run's reward-failure log: per objective, the first failure message, its step, and the total count.

``rewards.score`` isolates a failing reward function (the completion gets ``failure_value``) and counts failures in
each step's metrics (``reward_fail/<objective>``), but a count does not say *why*. This log watches each reward
function for the first exception or non-finite value and keeps it in ``<run_dir>/errors.json``:
``{objective: {"first_error": "ValueError: ...", "first_step": 3, "count": 12}}``.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

from mo_rl.results.writer import atomic_write


def _bad_value(v) -> bool:
    """A value ``score`` will count as a failure (``None`` is not one: it masks the completion out)."""
    if v is None:
        return False
    try:
        return not math.isfinite(float(v))
    except (TypeError, ValueError):
        return True


class FailureLog:
    """Collects failure messages as reward functions run; ``record`` turns them into counted entries."""

    def __init__(self, entries: dict | None = None):
        self.entries: dict[str, dict] = {k: dict(v) for k, v in (entries or {}).items()}
        self._pending: dict[str, str] = {}  # first message per objective seen since the last ``record``

    def watch(self, name: str, fn):
        """Wrap a reward function: its first exception or bad value is noted; behaviour is unchanged."""

        @functools.wraps(fn)
        def watched(*args, **kwargs):
            try:
                out = fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - noted, then re-raised for score to isolate or fail fast
                self._pending.setdefault(name, f"{type(e).__name__}: {e}")
                raise
            try:
                out = list(out)
            except TypeError:
                return out  # not a list: score reports it
            bad = next((v for v in out if _bad_value(v)), "ok")
            if bad != "ok":
                self._pending.setdefault(name, f"returned a non-finite or non-numeric reward {bad!r}")
            return out

        return watched

    def record(self, step: int, counts: dict[str, int]) -> bool:
        """Add one step's failure counts (and any pending messages). -> True if the log changed."""
        changed = False
        for name in sorted(set(counts) | set(self._pending)):
            n, msg = int(counts.get(name, 0)), self._pending.get(name)
            if not n and msg is None:
                continue
            entry = self.entries.setdefault(name, {"first_error": msg or "failed", "first_step": step, "count": 0})
            entry["count"] += n
            changed = True
        self._pending.clear()
        return changed

    def record_stop(self, step: int) -> bool:
        """The run stopped (``fail_fast``) at the failure just noted: count it once. -> True if the log changed."""
        return self.record(step, {name: 1 for name in self._pending})

    def write(self, run_dir: Path) -> None:
        atomic_write(Path(run_dir) / "errors.json", json.dumps(self.entries, indent=2, sort_keys=True) + "\n")
