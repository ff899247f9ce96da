"""Experiment trackers (``trainer.loggers=[jsonl,tensorboard,wandb,mlflow]``): metrics.jsonl's rows, mirrored.

``metrics.jsonl`` (``jsonl``) is always written and stays the source of truth; each tracker gets the same rows
under the same names, the resolved config as its hyperparameters, and the samples as a table where it has one.

**Each step exactly once, across kills and resumes.** Rows past the last checkpoint are re-run by a resume (and
``metrics.jsonl`` is truncated to the checkpoint), so a tracker shown them live would end up holding some steps
twice, with the killed process's wall-clock values. Trackers therefore receive only *durable* rows: when a
checkpoint ``step-<N>`` is complete, ``Trackers.publish(N)`` reads the rows of steps < N from metrics.jsonl and
samples.jsonl and hands each tracker the ones it does not have yet. ``<run>/trackers.json`` records, per tracker,
its run id and the first step it lacks (``next_step``), so a resumed run continues the same tracker run (the run
directory is its identity: TensorBoard logs into ``<run>/tensorboard``, wandb gets an id derived from the run
directory's path, mlflow's run id is stored) and backfills anything a tracker missed. The cost: a tracker lags
metrics.jsonl by up to ``trainer.checkpoint_every`` steps; lower it for livelier curves.

A tracker that fails (tracker down, disk full, package error) is reported once as a warning and switched off for
the rest of the process; training goes on, and a later resume backfills it from metrics.jsonl.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Protocol

from mo_rl.errors import MoRLError
from mo_rl.files import atomic_write

LOGGERS = ("jsonl", "tensorboard", "wandb", "mlflow")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
STATE_FILE = "trackers.json"


def check_loggers(names: list[str]) -> None:
    """Names must be known and their packages importable (checked cheaply, before the run starts)."""
    for name in names:
        if name not in LOGGERS:
            raise MoRLError(f"trainer.loggers: unknown logger {name!r}; allowed: {', '.join(LOGGERS)}")
        pkg = PACKAGES.get(name)
        if pkg and importlib.util.find_spec(pkg) is None:
            raise MoRLError(f"trainer.loggers: {name} needs the {pkg} package, which is not installed; "
                            f"pip install -e '.[trackers]' (or pip install {pkg})")


def flatten(d, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become their JSON text (hyperparameters are scalars)."""
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(d, (list, tuple)):
        return {prefix[:-1]: json.dumps(d)}
    return {prefix[:-1]: d}


def numeric(row: dict) -> dict[str, float]:
    """A metrics row's values as floats (null in the JSONL, a NaN in training, becomes NaN); ``step`` dropped."""
    out = {}
    for k, v in row.items():
        if k == "step":
            continue
        if v is None:
            out[k] = math.nan
        elif isinstance(v, (int, float)):
            out[k] = float(v)
    return out


def sample_columns(samples: list[dict]) -> list[str]:
    """step, prompt, completion, then one ``reward/<objective>`` column per objective seen."""
    objs = list(dict.fromkeys(o for s in samples for o in (s.get("rewards") or {})))
    return ["step", "prompt", "completion", *(f"reward/{o}" for o in objs)]


def sample_table(samples: list[dict]) -> tuple[list[str], list[list]]:
    """-> (columns, rows) of the samples, one row per sampled completion."""
    cols = sample_columns(samples)
    rows = [[s.get("step"), s.get("prompt"), s.get("completion"),
             *((s.get("rewards") or {}).get(c[len("reward/"):]) for c in cols[3:])] for s in samples]
    return cols, rows


class Logger(Protocol):
    """One tracker. ``state`` is what it needs to find its run again (written to trackers.json)."""

    state: dict

    def log_rows(self, rows: list[dict]) -> None: ...  # metrics rows, each with ``step``, in step order

    def log_samples(self, samples: list[dict], step: int) -> None: ...  # samples.jsonl rows, step of the last

    def close(self, status: str) -> None: ...  # completed | failed | interrupted


class TensorBoardLogger:
    """Scalars under the metric names, the config as HParams and as text, samples as a markdown table."""

    def __init__(self, run_dir: Path, config: dict, state: dict):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.state = {"logdir": str(run_dir / "tensorboard")}
        # reopened: anything an earlier process wrote at or past the first step this tracker lacks (a publish cut
        # short by a kill) is dropped by TensorBoard's readers
        self.w = SummaryWriter(self.state["logdir"], purge_step=state["next_step"] if state else None)
        if not state:  # the first start of this run: hyperparameters once
            hp = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(config).items()}
            for summary in hparams(hp, {}):
                self.w.file_writer.add_summary(summary)
            self.w.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log_rows(self, rows: list[dict]) -> None:
        for row in rows:
            for k, v in numeric(row).items():
                self.w.add_scalar(k, v, row["step"])
        self.w.flush()

    def log_samples(self, samples: list[dict], step: int) -> None:
        cols, rows = sample_table(samples)
        cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
        self.w.add_text("samples", "\n".join(lines), step)
        self.w.flush()

    def close(self, status: str) -> None:
        self.w.close()


def wandb_id(run_dir: Path) -> str:
    """A wandb run id from the run directory: its name (safe characters) and a hash of its absolute path."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", run_dir.name)[:40].strip("-") or "run"
    return f"{slug}-{hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:10]}"


def wandb_logged_steps(run_file: Path) -> list[int]:
    """The history steps in a wandb transaction log (``run-<id>.wandb``: a 7-byte header, then a LevelDB-style log
    of 32 KiB blocks of chunks, each crc32, length, type FULL/FIRST/MIDDLE/LAST, holding protobuf ``Record``s).
    A log cut short by a kill ends at its last complete record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, steps, buf = run_file.read_bytes(), 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0 or pos + 7 + length > len(data):
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            try:
                rec.ParseFromString(buf)
            except Exception:  # noqa: BLE001 - a torn record ends the readable log
                break
            if rec.WhichOneof("record_type") == "history":
                steps.append(rec.history.step.num)
    return steps


class WandbLogger:
    """wandb run ``id`` = the run directory's (kept in trackers.json), files under ``<run>/wandb``; project from
    WANDB_PROJECT (default mo-rl), group = experiment; WANDB_MODE=offline works (``wandb sync`` uploads later).

    wandb's service process buffers its transaction log, so a killed run loses the rows it had not written yet:
    the steps it has are read back from the run's local logs (``<run>/wandb/*-<id>/run-<id>.wandb``, one per
    process) when it is reopened, and the rest are backfilled."""

    def __init__(self, run_dir: Path, config: dict, state: dict):
        import wandb

        self.wandb = wandb
        self.state = {"id": state.get("id") or wandb_id(run_dir)}
        self._pending: list[dict] = []
        if state:
            logs = (run_dir / "wandb").glob(f"*-{self.state['id']}/run-{self.state['id']}.wandb")
            steps = [s for p in logs for s in wandb_logged_steps(p)]
            self.state["next_step"] = max(steps) + 1 if steps else 0
        self.run = wandb.init(dir=str(run_dir), id=self.state["id"], resume="allow", name=run_dir.name,
                              project=os.environ.get("WANDB_PROJECT", "mo-rl"), group=config.get("experiment"),
                              config=config, settings=wandb.Settings(console="off", x_disable_stats=True,
                                                                     silent=True))

    def log_rows(self, rows: list[dict]) -> None:
        self._pending = rows  # logged with their samples, one history row per step (log_samples follows)

    def log_samples(self, samples: list[dict], step: int) -> None:
        """Each step's samples go into that step's history row, so a row the service wrote holds its table too
        (what a kill leaves is then whole steps, which the resume's backfill counts on)."""
        by_step: dict[int, list[dict]] = {}
        for sample in samples:
            by_step.setdefault(int(sample["step"]), []).append(sample)
        for row in self._pending:
            payload = numeric(row)
            if int(row["step"]) in by_step:
                cols, data = sample_table(by_step[int(row["step"])])
                payload["samples"] = self.wandb.Table(columns=cols, data=data)
            self.run.log(payload, step=int(row["step"]))
        self._pending = []

    def flush_rows(self) -> None:
        """Rows published without samples (samples_per_step=0)."""
        if self._pending:
            self.log_samples([], -1)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "completed" else 1)


def mlflow_store(config: dict) -> tuple[str | None, str | None]:
    """(tracking URI, artifact location for a new experiment): $MLFLOW_TRACKING_URI where set (mlflow's own
    defaults then), else ``<output_dir>/mlflow.db`` and ``<output_dir>/mlruns``, so that nothing lands in the
    working directory (mlflow's default, ``sqlite:///mlflow.db`` and ``./mlruns``, would)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None, None
    root = Path(str(config.get("output_dir") or "results")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", (root / "mlruns").as_uri()


class MlflowLogger:
    """One mlflow run per run directory (its id and store kept in trackers.json; tag ``mo_rl.run_dir``),
    experiment = the config's ``experiment``, store from ``mlflow_store`` (``$MLFLOW_TRACKING_URI``, else under
    the output directory). Params = the flattened config, config.json and the samples as tables
    (``samples/steps-<a>-<b>.json``) as artifacts."""

    STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}

    def __init__(self, run_dir: Path, config: dict, state: dict):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri, artifacts = mlflow_store(config)
        uri = state.get("tracking_uri", uri)  # a resumed run continues in the store it started in
        self.client = MlflowClient(tracking_uri=uri)
        run_id = state.get("run_id")
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
        else:
            name = str(config.get("experiment") or "default")
            exp = self.client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(name, artifact_location=artifacts)
            run_id = self.client.create_run(exp_id, run_name=run_dir.name,
                                            tags={"mo_rl.run_dir": str(run_dir.resolve())}).info.run_id
            params = [Param(k[:250], str(v)[:6000]) for k, v in flatten(config).items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i:i + 100])
            self.client.log_dict(run_id, config, "config.json")
        self.state = {"run_id": run_id, **({"tracking_uri": uri} if uri else {})}

    def log_rows(self, rows: list[dict]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, int(row["step"])) for row in rows for k, v in numeric(row).items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.state["run_id"], metrics=metrics[i:i + 1000])

    def log_samples(self, samples: list[dict], step: int) -> None:
        import pandas as pd

        cols, rows = sample_table(samples)  # one file per publish: appending to one would re-download it each time
        name = f"samples/steps-{samples[0]['step']:06d}-{step:06d}.json"
        self.client.log_table(self.state["run_id"], pd.DataFrame(rows, columns=cols), name)

    def close(self, status: str) -> None:
        self.client.set_terminated(self.state["run_id"], self.STATUS.get(status, "FAILED"))


CLASSES = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger, "mlflow": MlflowLogger}


class _Tail:
    """Reads a step-ordered JSONL file incrementally: the complete rows with ``step`` below a bound."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def read_below(self, bound: int) -> list[dict]:
        rows = []
        if not self.path.is_file():
            return rows
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            while True:
                line = f.readline()
                if not line.endswith(b"\n"):  # end of file, or a line still being written
                    break
                try:
                    row = json.loads(line)
                except ValueError:  # a torn line (the resume that follows drops it)
                    self.offset += len(line)
                    continue
                if row.get("step", bound) >= bound:
                    break
                rows.append(row)
                self.offset += len(line)
        return rows


class Trackers:
    """The run's trackers: opens each (reusing the ids in trackers.json), publishes durable rows, closes them."""

    def __init__(self, names: list[str], run_dir: Path, config: dict):
        self.run_dir = Path(run_dir)
        path = self.run_dir / STATE_FILE
        saved = json.loads(path.read_text()) if path.is_file() else {}
        self.state: dict[str, dict] = {}
        self.live: dict[str, Logger] = {}
        self.tails: dict[str, tuple[_Tail, _Tail]] = {}
        for name in dict.fromkeys(n for n in names if n != "jsonl"):
            old = saved.get(name, {})
            self.state[name] = {**old, "next_step": int(old.get("next_step", 0))}
            try:
                logger = CLASSES[name](self.run_dir, config, dict(old) and self.state[name])
            except Exception as e:  # noqa: BLE001 - a tracker that cannot start must not stop the run
                self._warn(name, "could not start", e)
                continue
            self.live[name] = logger
            self.tails[name] = (_Tail(self.run_dir / "metrics.jsonl"), _Tail(self.run_dir / "samples.jsonl"))
            self.state[name].update(logger.state)
        self._save()

    def _warn(self, name: str, what: str, e: Exception) -> None:
        warnings.warn(f"trainer.loggers: {name} {what} ({type(e).__name__}: {e}); it is off for the rest of this "
                      "process, training goes on, metrics.jsonl has every step (a resume backfills it)",
                      RuntimeWarning, stacklevel=3)

    def _save(self) -> None:
        if self.state:
            atomic_write(self.run_dir / STATE_FILE, json.dumps(self.state, indent=2) + "\n")

    def publish(self, upto: int) -> None:
        """Hand every tracker the rows and samples of steps < ``upto`` (all durable) that it does not have yet."""
        for name, logger in list(self.live.items()):
            first = self.state[name]["next_step"]
            rows, samples = (t.read_below(upto) for t in self.tails[name])  # the first read covers a backfill
            rows = [r for r in rows if r["step"] >= first]
            samples = [s for s in samples if s.get("step", -1) >= first]
            try:
                if rows:
                    logger.log_rows(rows)
                if samples:
                    logger.log_samples(samples, int(samples[-1]["step"]))
                if hasattr(logger, "flush_rows"):
                    logger.flush_rows()
            except Exception as e:  # noqa: BLE001
                self._warn(name, f"failed logging steps {first}-{upto - 1}", e)
                del self.live[name]
                continue
            self.state[name]["next_step"] = max(first, upto)
        self._save()

    def close(self, status: str) -> None:
        for name, logger in list(self.live.items()):
            try:
                logger.close(status)
            except Exception as e:  # noqa: BLE001
                self._warn(name, "failed closing", e)
        self.live.clear()
