"""Read run directories written by ``RunWriter`` into pandas, tolerating runs that are still being written.

A run directory holds ``config.yaml`` and ``metrics.jsonl`` (see ``writer.py`` for the full layout). Every reader
here is read-only and never fails on a half-written run: a torn JSONL line is skipped and counted, a missing
``summary.json`` or ``eval.json`` reads as ``{}``; ``read_runs`` skips a run whose config.yaml is damaged, with a
warning.

A run's status is summary.json's, except that a run whose summary says ``running`` while no process holds its lock
(``results/lock.py``: the kernel drops it however the process ended) is ``dead``: killed (SIGKILL, the OOM killer)
or crashed before it could write its last summary; its ``steps_done`` then comes from metrics.jsonl. The lock
is tested only for a run whose lock file names this host: a run training on another machine reads ``running``.
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
        """summary.json's ``completed`` | ``running`` | ``failed`` | ``interrupted`` | ``diverged``, or ``dead`` (it
        says running, but no process holds the run's lock); ``unknown`` before the first summary."""
        status = str(self.summary.get("status") or "unknown")
        return "dead" if status == "running" and lock_state(self.path) is False else status

    @property
    def steps_done(self) -> int:
        """Steps the run has logged: summary.json's count, or metrics.jsonl's when more (the summary is written at
        the start and the end of a run, so a running or dead run's is stale)."""
        logged = int(self.metrics["step"].max()) + 1 if len(self.metrics) and "step" in self.metrics else 0
        return max(int(self.summary.get("steps_done") or 0), logged)

    @property
    def objectives(self) -> list[str]:
        """Objective names: summary.json's list, else the resolved list the writer put into config.yaml."""
        names = self.summary.get("objectives")
        if not names:
            names = ((self.config.get("objectives") or {}).get("resolved") or {}).get("names") or []
        return [str(n) for n in names]

    def lookup(self, key: str):
        """A grouping value: ``run`` (folder name), ``method``, ``task``, ``seed``, ``status``, ``objectives``
        (comma-joined), ``directive`` (``directive_label``), else a dotted config path such as ``trainer.lr``; None when the run lacks it."""
        if key == "run":
            return self.path.name
        if key == "status":
            return self.status
        if key == "objectives":
            return ",".join(self.objectives)
        if key == "directive":
            return directive_label(self.config.get("directive"))
        dotted = {"method": "method.name", "task": "task.name", "seed": "trainer.seed"}.get(key, key)
        node = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return self.summary.get(key) if key in ("method", "task", "seed") else None
            node = node[part]
        return node if node is None or isinstance(node, (str, int, float, bool)) else str(node)


def directive_label(directive) -> str:
    """A run's directive feedback in one word: ``off`` (coef 0, or a config from before directive existed), else
    the loss, with the coef and the teacher where they are not the presets' (1, current): ``forward_ce``,
    ``token_advantage/coef=0.5/teacher=reference``."""
    if not isinstance(directive, dict) or not float(directive.get("coef") or 0.0):
        return "off"
    coef, teacher = float(directive["coef"]), directive.get("teacher", "current")
    return "/".join([str(directive.get("loss")), *([f"coef={coef:g}"] if coef != 1.0 else []),
                     *([f"teacher={teacher}"] if teacher != "current" else [])])


def lock_state(run_dir: Path) -> bool | None:
    """Whether a live process holds ``run_dir``'s lock: True, False, or None when this cannot be told (no lock
    file, or one that names another host). The test takes the lock shared for an instant; ``RunLock`` retries a
    moment, so a run starting at that instant is not refused."""
    import fcntl
    import socket

    path = Path(run_dir) / ".lock"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        holder = os.pread(fd, 200, 0).decode(errors="replace").split()
        if len(holder) >= 4 and holder[2] == "on" and holder[3] != socket.gethostname():
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        return False
    finally:
        os.close(fd)  # drops the shared lock


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
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MoRLError(f"cannot read {str(path)!r} as YAML ({type(e).__name__}: {first}); a run's config.yaml must "
                        "be a YAML mapping") from e
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


def read_runs(paths, warn: bool = True) -> list[Run]:
    """Every run under ``paths`` (``find_runs``), loaded; a run that cannot be read (a damaged config.yaml) is
    skipped with a warning on stderr, as are torn metrics rows. Raises MoRLError when no run is left."""
    import sys

    runs = []
    for p in find_runs(paths):
        try:
            run = read_run(p)
        except MoRLError as e:
            print(f"warning: skipped {p}: {e}", file=sys.stderr)
            continue
        if warn and run.n_corrupt_rows:
            print(f"skipped {run.n_corrupt_rows} corrupt rows in {run.path}", file=sys.stderr)
        runs.append(run)
    if not runs:
        raise MoRLError("no run left to read: every run found was skipped (see the warnings above)")
    return runs


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
