"""The one entry into training: a thin ``@hydra.main`` task -> ``run_train(cfg)``, with and without ``-m``.

``mo-rl train [-m] OVERRIDES`` hands its overrides to Hydra's own runner (``run``: what ``hydra.main`` does with
``sys.argv``, given the argument list instead), so single runs, multirun sweeps, sweeper and launcher plugins all
go through ``train_job``. ``python -m mo_rl.hydra_app [-m] OVERRIDES`` is the same entry as a plain Hydra app.

Sweeps: every job trains into Hydra's job directory, and ``Manifest`` (a Hydra callback, ``hydra.callbacks`` in
conf/config.yaml) appends one line per job to the sweep's ``manifest.jsonl``: job number, overrides, run directory,
status, error. A failed job is recorded and does not stop the others. Rerunning a sweep into the same sweep
directory (``hydra.sweep.dir=...``) resumes it: a job the manifest records as done is ``skipped``, one that
stopped part-way continues from its last checkpoint (``trainer.resume=auto``) and is recorded ``resumed``.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback

from mo_rl.config import compose, conf_dir, explain_compose_error, register_configs, validate
from mo_rl.errors import MoRLError

DONE = ("completed", "resumed", "skipped")  # manifest statuses of a job that needs no more training
MANIFEST = "manifest.jsonl"


def train_job(cfg) -> dict:
    """Hydra's task function: train one run. -> the job's manifest record (without its error, see ``Manifest``).

    Single run: errors propagate (the CLI turns them into one line). Multirun: the job trains into its job
    directory; a job the sweep's manifest already records as done is skipped, and an exception is recorded as
    the job's failure so that the other jobs still run.
    """
    from mo_rl.train.loop import run_train

    hc = HydraConfig.get()
    if hc.mode.name != "MULTIRUN":
        try:
            return {"status": "completed", "run_dir": str(run_train(cfg))}
        except Exception as e:
            raise _RunError(e) from e
    run_dir = Path(hc.runtime.output_dir)
    if _done_before(Path(hc.sweep.dir), run_dir):
        return {"status": "skipped", "run_dir": str(run_dir)}
    existed = (run_dir / "config.yaml").is_file()  # an interrupted job: run_train continues it (resume=auto)
    try:
        run_train(cfg, run_dir=run_dir)
    except Exception as e:  # noqa: BLE001 - one failed job must not stop the sweep
        print(f"job {hc.job.num} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return {"status": "failed", "run_dir": str(run_dir), "error": f"{type(e).__name__}: {e}"}
    return {"status": "resumed" if existed else "completed", "run_dir": str(run_dir)}


class _RunError(BaseException):
    """Carries a single run's exception past Hydra's job runner (which catches ``Exception`` and prints its own
    report before re-raising) to ``run``, which re-raises the original for the CLI to report as one line."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


main = hydra.main(config_path=str(conf_dir()), config_name="config", version_base=None)(train_job)


def _done_before(sweep_dir: Path, run_dir: Path) -> bool:
    return any(r.get("run_dir") == str(run_dir) and r.get("status") in DONE for r in read_manifest(sweep_dir))


def read_manifest(sweep_dir: Path) -> list[dict]:
    path = Path(sweep_dir) / MANIFEST
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


class Manifest(Callback):
    """Appends each multirun job's record to ``<sweep dir>/manifest.jsonl`` when the job ends (in the process that
    ran it, whichever launcher). At the start of a sweep it writes to ``report`` (a path the CLI passes; null = no
    report) where this invocation's lines begin: the sweep directory and the number of lines already there; after
    a single run, that run's record."""

    def __init__(self, report: str | None = None):
        self.report = report

    def on_job_end(self, config, job_return, **kwargs) -> None:
        hc = config.hydra
        if hc.mode.name != "MULTIRUN":  # a single run: its record (where it went) for the CLI, if asked
            if self.report and job_return.status.name == "COMPLETED":
                Path(self.report).write_text(json.dumps(job_return.return_value) + "\n")
            return
        record = {"job": hc.job.num, "overrides": list(hc.overrides.task), "run_dir": hc.runtime.output_dir}
        if job_return.status.name == "COMPLETED":
            record.update(job_return.return_value)
        else:  # the task function raised past its own handler
            e = job_return._return_value
            record.update(status="failed", error=f"{type(e).__name__}: {e}")
        with open(Path(hc.sweep.dir) / MANIFEST, "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_multirun_start(self, config, **kwargs) -> None:
        if self.report:
            sweep_dir = Path(config.hydra.sweep.dir)
            seen = len(read_manifest(sweep_dir))
            Path(self.report).write_text(json.dumps({"sweep_dir": str(sweep_dir), "seen": seen}) + "\n")


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """The override lists of every job of a basic sweep (``a=1,2 b=x,y`` -> 4 lists), expanded by Hydra's own
    basic sweeper as ``-m`` does: the composed config's ``hydra.sweeper.params`` (a preset's grid) first, the
    command line's overrides after them (a key given on both takes the command line's); hydra.* keys left out."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
    params = compose(fixed, hydra_config=True).hydra.sweeper.get("params") or {}
    lines = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    parsed = parser.parse_overrides([o for o in lines if not o.lstrip("+~").startswith("hydra")])
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def prevalidate(overrides: list[str], limit: int = 256) -> int:
    """Compose and validate every job of the sweep before any starts; raises MoRLError on the first bad one."""
    jobs = expand_sweep(overrides)
    for job in jobs[:limit]:
        try:
            cfg = compose(job)
        except Exception as e:  # noqa: BLE001 - Hydra raises several types; each becomes one line
            raise MoRLError(explain_compose_error(e)) from e
        validate(cfg)
    return len(jobs)


def run(overrides: list[str], multirun: bool = False, report: Path | None = None) -> None:
    """Hydra's runner on these overrides, as ``hydra.main`` runs it from the command line (the argument list is
    given instead of read from ``sys.argv``). Errors propagate (``HYDRA_FULL_ERROR``) for the CLI to report."""
    import os

    from hydra._internal.utils import _run_hydra, get_args_parser

    register_configs()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra would print a traceback and exit 1; cli.py makes it one line
    extra = [f"hydra.callbacks.manifest.report='{report}'"] if report else []
    parser = get_args_parser()
    args = parser.parse_args([*(["--multirun"] if multirun else []), *overrides, *extra])
    try:
        with warnings.catch_warnings():
            # conf/hydra/launcher/ray.yaml stands in for the Ray plugin's config of the same name, which Hydra
            # then also validates it against (the deprecated automatic schema match): the keys are the plugin's
            warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/ray' is validated against ConfigStore")
            _run_hydra(args=args, args_parser=parser, task_function=train_job, config_path=str(conf_dir()),
                       config_name="config")
    except _RunError as e:
        raise e.error from None


def sweep(overrides: list[str]) -> list[dict]:
    """Run a multirun sweep; -> this invocation's manifest records (status completed | resumed | skipped |
    failed), read back from the sweep's manifest, which jobs in other processes or machines write too."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        run(overrides, multirun=True, report=report)
        start = json.loads(report.read_text())
    return read_manifest(Path(start["sweep_dir"]))[start["seen"]:]


if __name__ == "__main__":
    try:
        main()
    except _RunError as e:
        raise e.error from None
