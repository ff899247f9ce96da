"""Read run directories written by ``RunWriter`` into pandas, tolerating runs that are still being written.

A run directory holds ``config.yaml`` and ``metrics.jsonl`` (see ``writer.py`` for the full layout). Every reader
here is read-only and never fails on a half-written run: a torn JSONL line is skipped and counted, a missing
``summary.json`` or ``eval.json`` reads as ``{}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from mo_rl.errors import MoRLError

RUN_MARKERS = ("config.yaml", "metrics.jsonl")


@dataclass
class Run:
    """One run directory, loaded. ``metrics`` has one row per step (sorted by step, last write of a step wins)."""

    path: Path
    config: dict
    metrics: pd.DataFrame
    summary: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    n_corrupt_rows: int = 0

    @property
    def status(self) -> str:
        """``completed`` | ``running`` | ``failed`` from summary.json; ``unknown`` before the first summary."""
        return str(self.summary.get("status") or "unknown")

    @property
    def objectives(self) -> list[str]:
        """Objective names: summary.json's list, else the resolved list the writer put into config.yaml."""
        names = self.summary.get("objectives")
        if not names:
            names = ((self.config.get("objectives") or {}).get("resolved") or {}).get("names") or []
        return [str(n) for n in names]

    def lookup(self, key: str):
        """A grouping value: ``run`` (folder name), ``method``, ``task``, ``seed``, ``status``, ``objectives``
        (comma-joined), else a dotted config path such as ``trainer.lr``; None when the run lacks it."""
        if key == "run":
            return self.path.name
        if key == "status":
            return self.status
        if key == "objectives":
            return ",".join(self.objectives)
        dotted = {"method": "method.name", "task": "task.name", "seed": "trainer.seed"}.get(key, key)
        node = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return self.summary.get(key) if key in ("method", "task", "seed") else None
            node = node[part]
        return node if node is None or isinstance(node, (str, int, float, bool)) else str(node)


def is_run_dir(path: Path) -> bool:
    """A run directory holds both ``config.yaml`` and ``metrics.jsonl``."""
    return all((path / m).is_file() for m in RUN_MARKERS)


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """Parse a JSONL file -> (rows, n_corrupt). Lines that are not a JSON object (a torn write) are skipped."""
    rows, bad = [], 0
    if not path.is_file():
        return rows, bad
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad += 1
    return rows, bad


def _read_json(path: Path) -> dict:
    """A whole-file JSON object, or {} when missing or unreadable (written atomically, so rarely torn)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_config(path: Path) -> dict:
    """config.yaml as a plain dict; the writer resolved interpolations already, so plain YAML suffices."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise MoRLError(f"cannot read {str(path)!r} as YAML ({e}); a run's config.yaml must be a YAML mapping") from e
    if not isinstance(data, dict):
        raise MoRLError(f"{str(path)!r} holds {type(data).__name__}, not a mapping; is this a mo-rl run directory?")
    return data


def metrics_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows -> DataFrame sorted by ``step``; a step logged twice (a resumed run) keeps its last row."""
    df = pd.DataFrame(rows)
    if "step" not in df.columns:
        return df
    df = df[pd.to_numeric(df["step"], errors="coerce").notna()]
    df = df.drop_duplicates("step", keep="last").sort_values("step", kind="stable")
    return df.reset_index(drop=True)


def read_run(path: str | os.PathLike) -> Run:
    """Load one run directory. Raises MoRLError when ``path`` is not a run directory."""
    p = Path(path)
    if not is_run_dir(p):
        raise MoRLError(f"{str(p)!r} is not a run directory (a run directory holds config.yaml and metrics.jsonl)")
    rows, bad = read_jsonl(p / "metrics.jsonl")
    return Run(path=p, config=_read_config(p / "config.yaml"), metrics=metrics_frame(rows),
               summary=_read_json(p / "summary.json"), eval=_read_json(p / "eval.json"), n_corrupt_rows=bad)


def read_samples(path: str | os.PathLike) -> tuple[pd.DataFrame, int]:
    """samples.jsonl -> (DataFrame with step, prompt, completion, rewards dict; n_corrupt). Empty if missing."""
    rows, bad = read_jsonl(Path(path) / "samples.jsonl")
    return pd.DataFrame(rows, columns=None if rows else ["step", "prompt", "completion", "rewards"]), bad


def _walk_runs(root: Path) -> list[Path]:
    """Run directories at or below ``root``; hidden folders (``.hydra-runs``) and run subfolders are skipped."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        d = Path(dirpath)
        if is_run_dir(d):
            found.append(d)
            dirnames.clear()  # checkpoints/ and friends never hold runs of their own
            continue
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
    return found


def find_runs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories under each path (a run dir, a sweep dir or a results root), sorted, without repeats.

    Raises MoRLError naming the first path under which no run was found.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    runs: dict[Path, None] = {}
    for raw in paths:
        found = _walk_runs(Path(raw)) if Path(raw).is_dir() else []
        if not found:
            raise MoRLError(f"no runs found under {str(raw)!r} "
                            "(a run directory holds config.yaml and metrics.jsonl)")
        runs.update(dict.fromkeys(found))
    if not runs:
        raise MoRLError("no paths given; pass run directories, sweep directories or a results root")
    return sorted(runs)
