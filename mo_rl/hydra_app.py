"""The one entry into training: a thin ``@hydra.main`` task -> ``run_train(cfg)``, with and without ``-m``.

``mo-rl train [-m] OVERRIDES`` hands its overrides to Hydra's own runner (``run``: what ``hydra.main`` does with
``sys.argv``, given the argument list instead), so single runs, multirun sweeps, sweeper and launcher plugins all
go through ``train_job``. ``python -m mo_rl.hydra_app [-m] OVERRIDES`` is the same entry as a plain Hydra app.

Sweeps: every job trains into Hydra's job directory, and ``Manifest`` (a Hydra callback, ``hydra.callbacks`` in
conf/config.yaml) appends one line per job to the sweep's ``manifest.jsonl``: job number, overrides, run directory,
status, error. A failed job is recorded and does not stop the others. Rerunning a sweep into the same sweep
directory (``hydra.sweep.dir=...``) resumes it: a job is ``skipped`` when the manifest records a run of the sweep
with the very same config as done (a changed grid gives a job number other settings: that job is not skipped),
one that stopped part-way continues from its last checkpoint (``trainer.resume=auto``) and is recorded
``resumed``; a job whose directory holds a run of other settings trains beside it, in ``<job dir>-<config hash>``.

``hydra.job.chdir=true`` is refused: runs go to ``output_dir`` relative to where mo-rl starts, and a single run's
Hydra job directory is a temporary one (a run there would be deleted with it).
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
    directory (``_job_dir``); a job whose very config the sweep's manifest records as done is skipped, and an
    exception is recorded as the job's failure so that the other jobs still run.
    """
    from mo_rl.train.loop import run_train

    hc = HydraConfig.get()
    if hc.mode.name != "MULTIRUN":
        try:
            check_chdir(hc.job.chdir)
            return {"status": "completed", "run_dir": str(run_train(cfg))}
        except Exception as e:
            raise _RunError(e) from e
    run_dir = Path(hc.runtime.output_dir)
    try:
        check_chdir(hc.job.chdir)
        run_dir, done = _job_dir(Path(hc.sweep.dir), run_dir, cfg)
        if done:
            return {"status": "skipped", "run_dir": str(run_dir)}
        existed = (run_dir / "config.yaml").is_file()  # an interrupted job: run_train continues it (resume=auto)
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


CHDIR = ("hydra.job.chdir=true is not supported: a run writes to output_dir/experiment/run_name relative to the "
         "directory mo-rl starts in, and Hydra's job directory of a single run is temporary; drop the override "
         "(output_dir=<an absolute path> puts the runs elsewhere)")


def check_chdir(chdir) -> None:
    if chdir:
        raise MoRLError(CHDIR)


def _job_dir(sweep_dir: Path, job_dir: Path, cfg) -> tuple[Path, bool]:
    """Where a sweep job trains -> (run dir, done). Done: the manifest records a run of this sweep with the job's
    very config as completed (its own directory first); else its own directory, unless that holds a run of other
    settings: then ``<job dir>-<config hash>`` beside it."""
    from mo_rl.config import validate
    from mo_rl.train import run_identity as ident

    config = ident.config_dict(validate(cfg))
    done = {Path(r["run_dir"]) for r in read_manifest(sweep_dir) if r.get("status") in DONE and r.get("run_dir")}
    for cand in sorted(done, key=lambda p: p != job_dir):  # its own directory first
        if ident.same_run(cand, config):
            return cand, True
    if ident.holds_other_run(job_dir, config):
        job_dir = job_dir.with_name(f"{job_dir.name}-{ident.config_hash(config)}")
    return job_dir, False


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


def sweep_axes(overrides: list[str]) -> list[list[str]]:
    """Each swept key's ``key=value`` lines, in Hydra's basic-sweeper order (``a=1,2 b=x`` -> [[a=1, a=2], [b=x]]):
    the composed config's ``hydra.sweeper.params`` (a preset's grid) first, the command line's overrides after
    them (a key given on both takes the command line's); hydra.* keys left out. The jobs are their product."""
    return _sweep(overrides)[0]


def _sweep(overrides: list[str]):
    """-> (``sweep_axes``, the composed ``hydra`` node of the sweep's fixed overrides)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
    hydra_node = compose(fixed, hydra_config=True).hydra
    params = hydra_node.sweeper.get("params") or {}
    lines = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    axes: dict[str, list[str]] = {}
    for o in parser.parse_overrides([o for o in lines if not o.lstrip("+~").startswith("hydra")]):
        key = o.get_key_element()
        if o.is_sweep_override() and not o.is_discrete_sweep():
            raise MoRLError(f"{o.input_line!r}: the basic sweeper sweeps lists, range() and choice(), not "
                            f"{o.value_type.name.lower()}")
        axes[key] = [f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() \
            else [f"{key}={o.get_value_element_as_str()}"]
    return list(axes.values()), hydra_node


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """The override lists of every job of a basic sweep (``a=1,2 b=x,y`` -> 4 lists), as ``-m`` runs them."""
    import itertools

    return [list(job) for job in itertools.product(*sweep_axes(overrides))]


def prevalidate(overrides: list[str]) -> int:
    """Validate every distinct value of every swept key before any job starts -> the number of jobs; raises
    MoRLError on the first bad one. Each value is checked in a job of the sweep: the first job with that one key
    changed (so a sweep of any size costs one check per value, not per job). A group choice (``method=grpo``) is
    composed anew; a plain value is set on the first job's composed config, which type-checks it, then validated."""
    import copy
    import math

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import Container, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        axes, hydra_node = _sweep(overrides)
    except MoRLError:
        raise
    except Exception as e:  # noqa: BLE001 - Hydra raises several types; each becomes one line
        raise MoRLError(explain_compose_error(e)) from e
    check_chdir(hydra_node.job.chdir)
    first = [axis[0] for axis in axes]
    base = _compose_job(first)
    validate(base)
    parser = OverridesParser.create()
    for i, axis in enumerate(axes):
        for line in axis[1:]:
            o = parser.parse_override(line)
            if o.type.name != "CHANGE" or o.package is not None or (conf_dir() / o.key_or_group).is_dir():
                validate(_compose_job([*first[:i], line, *first[i + 1:]]))
                continue
            prev = OmegaConf.select(base, o.key_or_group, default=None)
            cfg = copy.deepcopy(base) if isinstance(prev, Container) else base  # a leaf is set back after
            try:
                OmegaConf.update(cfg, o.key_or_group, o.value(), merge=False)
            except OmegaConfBaseException as e:
                raise MoRLError(explain_compose_error(e)) from e
            try:
                validate(cfg)
            finally:
                if cfg is base:
                    OmegaConf.update(base, o.key_or_group, prev, merge=False)
    return math.prod(len(axis) for axis in axes)


def _compose_job(job: list[str]):
    try:
        return compose(job)
    except Exception as e:  # noqa: BLE001 - Hydra raises several types; each becomes one line
        raise MoRLError(explain_compose_error(e)) from e


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
