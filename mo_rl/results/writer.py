"""The run directory writer: atomic whole-file writes, append-only JSONL that survives a crash.

Layout of ``results/<experiment>/<run>/``:
- ``config.yaml``   the resolved config (plus ``objectives.resolved``: the objective names and weights used)
- ``metrics.jsonl`` one JSON object per step: ``step``, ``time`` (s since start), ``reward/<obj>/mean|std|...``,
                    ``reward/weighted/mean``, ``adv/*``, ``loss/*``, ``perf/*``; each row flushed (a killed process
                    loses nothing) and fsynced with every checkpoint and at the end (``sync``)
- ``samples.jsonl`` a few completions per step: ``step``, ``prompt``, ``completion``, ``rewards`` {obj: value}
- ``summary.json``  ``status`` (running | completed | failed | interrupted | diverged), ``method``, ``task``,
                    ``seed``, ``objectives``, ``weights``, ``steps_done``, ``wall_time``, ``final`` (last-step
                    metrics), ``error``
- ``errors.json``   per objective whose reward function failed: ``first_error``, ``first_step``, ``count``
- ``.lock``         held (flock) by the process writing the run (``results/lock.py``)
- ``trackers.json`` with ``trainer.loggers`` beyond jsonl: each tracker's run id and first step it lacks
                    (see ``loggers.py``; ``tensorboard/``, ``wandb/`` hold those trackers' files)
- ``checkpoints/``  ``step-<N>/`` resumable training state (see ``train/checkpoint.py``); ``final/`` is a
                    from_pretrained directory
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from omegaconf import OmegaConf

from mo_rl.errors import MoRLError
from mo_rl.files import atomic_write
from mo_rl.results.loggers import Trackers


def _clean(v):
    """JSON has no NaN/inf: write them as null so every reader parses every row."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class RunWriter:
    def __init__(self, path: Path, config: dict, loggers: list[str] = ()):
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / ".write-test").touch()
            (self.path / ".write-test").unlink()
        except OSError as e:
            raise MoRLError(f"output directory {str(self.path)!r} is not writable ({e.strerror}); "
                            "set output_dir=<a writable directory>") from e
        atomic_write(self.path / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))
        self.trackers = Trackers(list(loggers), self.path, config) if set(loggers) - {"jsonl"} else None

    def _append(self, name: str, rows: list[dict]) -> None:
        """Append and flush: the rows are in the OS's hands once this returns, so a killed or crashed process
        loses none. Surviving a machine crash as well takes an fsync, which ``sync`` does at each checkpoint
        (fsync per step cost ~1 ms, a fifth of a tiny model's step, for rows a resume drops anyway: it restarts
        from the last checkpoint)."""
        try:
            with open(self.path / name, "a") as f:
                for row in rows:
                    f.write(json.dumps(_clean(row)) + "\n")
                f.flush()
        except OSError as e:  # a full disk: say which file (a failed write names none)
            e.filename = e.filename or str(self.path / name)
            raise

    def sync(self) -> None:
        """fsync the append-only files (called with every checkpoint and when the run ends)."""
        for name in ("metrics.jsonl", "samples.jsonl"):
            try:
                fd = os.open(self.path / name, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def log_metrics(self, row: dict) -> None:
        self._append("metrics.jsonl", [row])

    def log_samples(self, rows: list[dict]) -> None:
        self._append("samples.jsonl", rows)

    def publish(self, step: int) -> None:
        """Steps < ``step`` are durable (checkpoint ``step-<step>`` is complete): mirror them to the trackers."""
        if self.trackers:
            self.trackers.publish(step)

    def close(self, status: str) -> None:
        """End the trackers' runs (``status``: completed | failed | interrupted)."""
        if self.trackers:
            self.trackers.close(status)

    def write_summary(self, summary: dict) -> None:
        atomic_write(self.path / "summary.json", json.dumps(_clean(summary), indent=2) + "\n")

    def write_summary_in_place(self, summary: dict) -> None:
        """Overwrite summary.json where it is, for a full disk, where the atomic write's new file finds no room:
        the old file's blocks usually hold the new text. Not crash-atomic; only the last resort of a failing run."""
        text = (json.dumps(_clean(summary), indent=1) + "\n").encode()
        fd = os.open(self.path / "summary.json", os.O_WRONLY)
        try:
            os.pwrite(fd, text, 0)
            os.ftruncate(fd, len(text))
            os.fsync(fd)
        finally:
            os.close(fd)

class NullWriter:
    """The run writer of data-parallel ranks other than 0: the run directory's path, no writes."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def log_metrics(self, row: dict) -> None:
        return None

    def log_samples(self, rows: list[dict]) -> None:
        return None

    def write_summary(self, summary: dict) -> None:
        return None

    def sync(self) -> None:
        return None

    def write_summary_in_place(self, summary: dict) -> None:
        return None

    def publish(self, step: int) -> None:
        return None

    def close(self, status: str) -> None:
        return None
