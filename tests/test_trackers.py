"""Experiment trackers for real: TensorBoard (read back with its EventAccumulator), wandb offline (its run files
parsed record by record) and mlflow on a local file store (read back through MlflowClient) each hold every step of
a killed-and-resumed run exactly once, with metrics.jsonl's values."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from mo_rl.errors import MoRLError
from mo_rl.results import loggers
from mo_rl.train.loop import run_train
from tests.conftest import compose_run, kill_when


def need(*pkgs: str) -> None:
    """Skip unless the trackers' packages are installed (`pip install -e '.[trackers]'`; .ci/run installs them)."""
    for pkg in pkgs:
        pytest.importorskip(pkg, reason=f"{pkg} is not installed: pip install -e '.[trackers]'")


# as in test_resume: a paced zero-weight objective keeps each step >= 30 ms, so the kill lands mid-run
ARGS = ["trainer.steps=10", "trainer.checkpoint_every=3", "trainer.batch_prompts=2", "trainer.group_size=4",
        "trainer.device=cpu", "trainer.samples_per_step=2",
        "objectives.names=[match,match_noisy,first_char,noise,tests.sweep_rewards:paced]",
        "objectives.weights=[1,1,1,1,0]"]
ALL = "trainer.loggers=[jsonl,tensorboard,wandb,mlflow]"


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "MLFLOW_ALLOW_FILE_STORE": "true",
            "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri()}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def _same(a, b) -> bool:
    """metrics.jsonl writes NaN as null."""
    a = math.nan if a is None else a
    return (math.isnan(a) and math.isnan(b)) if isinstance(a, float) and math.isnan(a) else a == b


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def wandb_history(run_file: Path) -> list[tuple[int, dict]]:
    """The history records of a ``run-<id>.wandb`` file: a 7-byte W&B header, then a LevelDB-style log (32 KiB
    blocks of chunks: crc32, length, type FULL/FIRST/MIDDLE/LAST) of protobuf ``Record``s."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, out, buf = run_file.read_bytes(), 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            if rec.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                out.append((rec.history.step.num, items))
    return out


def _kill_mid_run(tmp_path: Path, run_dir: Path) -> int:
    """Start the run, SIGKILL it once step 4 is in metrics.jsonl (after checkpoint step-3, before step-6)."""
    cmd = [sys.executable, "-m", "mo_rl", "train", *ARGS, ALL, "run_name=r", f"output_dir={tmp_path}"]
    metrics = run_dir / "metrics.jsonl"
    kill_when(cmd, lambda: metrics.is_file() and len(_jsonl(metrics)) >= 5, "step 4", env=_env(tmp_path))
    return len(_jsonl(run_dir / "metrics.jsonl"))


def test_killed_and_resumed_run_leaves_each_tracker_every_step_once(tmp_path, monkeypatch):
    need("tensorboard", "wandb", "mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3's file store is opt-in (here: to read back)
    run_dir = tmp_path / "default" / "r"
    logged_before_kill = _kill_mid_run(tmp_path, run_dir)
    assert not (run_dir / "checkpoints" / "step-6").exists() and logged_before_kill < 10
    assert json.loads((run_dir / "trackers.json").read_text())["mlflow"]["next_step"] == 3
    out = subprocess.run([sys.executable, "-m", "mo_rl", "train", "--resume", str(run_dir)], env=_env(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = _jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(10))
    keys = sorted(k for k in rows[0] if k != "step")
    assert "reward/tests.sweep_rewards:paced/mean" in keys and "time" in keys

    # TensorBoard: float32 scalars; exact equality with each value rounded to float32
    import numpy as np

    tb = tensorboard_scalars(run_dir / "tensorboard")
    assert sorted(tb) == keys
    for k in keys:
        assert [s for s, _ in tb[k]] == list(range(10)), k
        assert all(_same(None if r[k] is None else float(np.float32(r[k])), v) for r, (_, v) in zip(rows, tb[k])), k

    # wandb offline: one run dir per process, the same run id; together each step once, the same floats
    runs = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 2 and len({p.name for p in runs}) == 1
    history = [h for p in runs for h in wandb_history(p)]
    steps = [s for s, items in history if any(k in items for k in keys)]
    assert sorted(steps) == list(range(10)), steps
    by_step = {}
    for s, items in history:
        by_step.setdefault(s, {}).update(items)
    for r in rows:
        assert all(_same(r[k], float(by_step[r["step"]][k])) for k in keys), r["step"]
    tables = {s: items["samples/nrows"] for s, items in history if "samples/nrows" in items}
    assert tables == {s: 2 for s in range(10)}  # each step's row holds its 2 samples
    wandb_per_process = [len(wandb_history(p)) for p in runs]

    # mlflow: one run, reused by the resume, each metric's history steps 0-9 once, the same floats
    from mlflow.tracking import MlflowClient

    client = MlflowClient((tmp_path / "mlruns").as_uri())
    exp = client.get_experiment_by_name("default")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["trainer.steps"] == "10"
    for k in keys:
        hist = sorted(client.get_metric_history(run.info.run_id, k), key=lambda m: m.step)
        assert [m.step for m in hist] == list(range(10)), k
        assert all(_same(r[k], m.value) for r, m in zip(rows, hist)), k
    tables = sorted(Path(client.download_artifacts(run.info.run_id, "samples", str(tmp_path / "dl"))).iterdir())
    sample_steps = [s for p in tables for s in json.loads(p.read_text())["data"] for s in [s[0]]]
    assert sample_steps == [s for s in range(10) for _ in range(2)]
    print(f"\nsteps in metrics.jsonl at the kill: {logged_before_kill}; resumed from checkpoint step-3; wandb "
          f"history rows per process {wandb_per_process}; tensorboard, wandb, mlflow: steps 0-9 once, "
          f"{len(keys)} metrics each equal to metrics.jsonl's")


class _Broken:
    """A tracker that is down: fails on its first write (a fake, for the error path only)."""

    def __init__(self, run_dir, config, state):
        self.state = {}

    def log_rows(self, rows):
        raise ConnectionError("tracker unreachable")

    def log_samples(self, samples, step):
        raise AssertionError("never reached: the tracker is off after its first failure")

    def close(self, status):
        pass


def test_failing_tracker_warns_once_training_goes_on_and_a_resume_backfills_it(tmp_path, monkeypatch,
                                                                               tiny_model_path):
    need("tensorboard")
    small = ["trainer.batch_prompts=2", "trainer.group_size=2", "trainer.checkpoint_every=2",
             "trainer.loggers=[tensorboard]"]
    monkeypatch.setitem(loggers.CLASSES, "tensorboard", _Broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = run_train(compose_run(tmp_path, *small, "trainer.steps=4"))
    msgs = [str(w.message) for w in caught if "trainer.loggers" in str(w.message)]
    assert len(msgs) == 1 and "tensorboard failed logging steps 0-1 (ConnectionError: tracker unreachable)" in msgs[0]
    assert len(_jsonl(path / "metrics.jsonl")) == 4 and json.loads((path / "summary.json").read_text())[
        "status"] == "completed"
    assert json.loads((path / "trackers.json").read_text())["tensorboard"]["next_step"] == 0
    monkeypatch.undo()
    run_train(compose_run(tmp_path, *small, "trainer.steps=6"))  # continues the run; the tracker is back
    tb = tensorboard_scalars(path / "tensorboard")
    assert [s for s, _ in tb["reward/weighted/mean"]] == list(range(6))


def test_a_tracker_added_on_resume_gets_every_step(tmp_path, tiny_model_path):
    """trainer.loggers is a safe resume key: a run started with metrics.jsonl alone, resumed with
    `mo-rl train --resume <run> trainer.loggers=[jsonl,tensorboard]`, ends with all its steps in TensorBoard."""
    need("tensorboard")
    from typer.testing import CliRunner

    from mo_rl.cli import app

    small = ["trainer.batch_prompts=2", "trainer.group_size=2", "trainer.checkpoint_every=2"]
    path = run_train(compose_run(tmp_path, *small, "trainer.steps=4"))
    out = CliRunner().invoke(app, ["train", "--resume", str(path), "trainer.steps=6",
                                   "trainer.loggers=[jsonl,tensorboard]"])
    assert out.exit_code == 0, out.stderr
    tb = tensorboard_scalars(path / "tensorboard")
    rows = _jsonl(path / "metrics.jsonl")
    assert [s for s, _ in tb["reward/weighted/mean"]] == [r["step"] for r in rows] == list(range(6))


def test_logger_names_are_checked(tmp_path, monkeypatch):
    with pytest.raises(MoRLError, match=r"unknown logger 'neptune'; allowed: jsonl, tensorboard, wandb, mlflow"):
        loggers.check_loggers(["jsonl", "neptune"])
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MoRLError, match=r"wandb needs the wandb package, which is not installed; pip install -e"):
        loggers.check_loggers(["wandb"])


def test_mlflow_without_a_tracking_uri_keeps_its_store_under_the_output_directory(tmp_path, monkeypatch,
                                                                                  tiny_model_path):
    """mlflow's own default (sqlite:///mlflow.db and ./mlruns) would write into the working directory."""
    need("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    work, out = tmp_path / "cwd", tmp_path / "out"
    work.mkdir()
    monkeypatch.chdir(work)
    path = run_train(compose_run(out, "trainer.steps=2", "trainer.batch_prompts=2", "trainer.group_size=2",
                                 "trainer.loggers=[jsonl,mlflow]"))
    assert list(work.iterdir()) == []
    assert (out / "mlflow.db").is_file() and (out / "mlruns").is_dir()
    state = json.loads((path / "trackers.json").read_text())["mlflow"]
    assert state["tracking_uri"] == f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=state["tracking_uri"])
    history = client.get_metric_history(state["run_id"], "reward/weighted/mean")
    assert sorted(m.step for m in history) == [0, 1]
    assert client.get_experiment_by_name("default").artifact_location == (out / "mlruns").as_uri()
