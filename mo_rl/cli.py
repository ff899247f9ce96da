"""The ``mo-rl`` command line. Each command parses, validates, calls one function, and turns errors into one line."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from mo_rl.errors import MoRLError

app = typer.Typer(
    name="mo-rl", no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
    help="Multi-objective RL post-training of language models: train with one way of combining several rewards "
         "(dvao, vpo, grpo, gdpo, ...) and compare the ways side by side.",
)
STATE = {"debug": False}


def _fail(msg: str, code: int = 2):
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _guard(fn, *args, **kwargs):
    """Call fn; MoRLError and config errors become one line and exit 2 (``--debug`` shows the traceback); a run
    that failed rather than was refused (diverged, disk full) exits 1, one stopped by SIGTERM 143 (SIGHUP 129)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from mo_rl.config import explain_compose_error
    from mo_rl.train.guards import Terminated

    try:
        return fn(*args, **kwargs)
    except MoRLError as e:
        if STATE["debug"]:
            raise
        _fail(str(e), getattr(e, "exit_code", 2))
    except Terminated as e:
        if STATE["debug"]:
            raise
        _fail(str(e), e.exit_code)
    except (HydraException, OmegaConfBaseException) as e:
        if STATE["debug"]:
            raise
        _fail(explain_compose_error(e))


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors.")):
    STATE["debug"] = debug


@app.command()
def methods():
    """List every advantage estimator with a one-line description and its options (method.<option>=...)."""
    from rich.console import Console
    from rich.table import Table

    from mo_rl import advantages

    table = Table("method", "what it does", "options (defaults)")
    for name in advantages.available():
        est = advantages.get(name)
        table.add_row(name, est.description, ", ".join(f"{k}={v!r}" for k, v in est.options().items()))
    Console(width=160).print(table)


@app.command()
def tasks():
    """List the tasks with their objectives and default weights, and every registered reward function."""
    from rich.console import Console
    from rich.table import Table

    from mo_rl.rewards.registry import available_rewards
    from mo_rl.tasks.base import available_tasks, make_task

    t = Table("task", "objectives (default weights)", "description")
    for name in available_tasks():
        task = make_task(name)
        t.add_row(name, ", ".join(f"{o} ({w:g})" for o, w in zip(task.objectives, task.weights)), task.description)
    r = Table("objective (reward function)", "description")
    for name, desc in available_rewards().items():
        r.add_row(name, desc)
    console = Console(width=160)
    console.print(t)
    console.print(r)


TRAIN_HELP = """Train one run (or a sweep with -m) on the composed config.

OVERRIDES are Hydra overrides, e.g. task=conflicting trainer.steps=100 trainer.group_size=16
objectives.weights=[0.7,0.3] method.adv_norm=batch_std model.path=/path/to/hf/checkpoint.
Config groups: method, task, model, rollout, objectives; settings: trainer.*, experiment, run_name, output_dir.
`mo-rl methods` and `mo-rl tasks` list the choices, `mo-rl config [OVERRIDES]` prints every knob.
A sweep: mo-rl train -m method=dvao,grpo trainer.seed=0,1.
"""


@app.command("config")
def show_config(overrides: Optional[List[str]] = typer.Argument(None, help="Hydra overrides, as for train.")):
    """Print the composed config a `mo-rl train` with these overrides would run: every knob with its value
    (the comments in conf/*.yaml and mo_rl/config.py say what each one does)."""
    from omegaconf import OmegaConf

    from mo_rl.config import compose, validate

    cfg = _guard(compose, list(overrides or []))
    _guard(validate, cfg)
    typer.echo(OmegaConf.to_yaml(cfg).rstrip())


@app.command(help=TRAIN_HELP)
def train(
    overrides: Optional[List[str]] = typer.Argument(None, help="Hydra overrides key=value (see above)."),
    method: Optional[str] = typer.Option(None, "--method", help="Advantage estimator (= method=NAME)."),
    task: Optional[str] = typer.Option(None, "--task", help="Task (= task=NAME)."),
    multirun: bool = typer.Option(False, "-m", "--multirun", help="Hydra multirun: sweep comma-separated values."),
    resume: Optional[str] = typer.Option(None, "--resume", metavar="RUN_DIR",
                                         help="Continue this run directory from its last checkpoint, with its own "
                                              "config.yaml; OVERRIDES may change only trainer.steps, "
                                              "trainer.checkpoint_every, trainer.keep_checkpoints, trainer.resume, "
                                              "trainer.fail_fast, trainer.device, trainer.samples_per_step, "
                                              "objectives.timeout_s."),
):
    ov = [f"method={method}"] * bool(method) + [f"task={task}"] * bool(task) + list(overrides or [])
    if resume:
        if multirun:
            _fail("--resume continues one run; it cannot be combined with -m/--multirun")
        from pathlib import Path

        from mo_rl.train.checkpoint import resume_config
        from mo_rl.train.loop import run_train

        cfg = _guard(resume_config, resume, ov)
        _resuming(Path(resume))
        _report(_guard(run_train, cfg, run_dir=Path(resume), resume=True))
        return
    from mo_rl import hydra_app

    if multirun:
        n = _guard(hydra_app.prevalidate, ov)
        typer.echo(f"sweep of {n} run(s)", err=True)
        records = _guard(hydra_app.sweep, ov)
        counts = {k: sum(r["status"] == k for r in records) for k in ("completed", "resumed", "skipped", "failed")}
        typer.echo("sweep done: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v or k != "resumed")
                   + " (see manifest.jsonl)", err=True)
        if counts["failed"]:
            raise typer.Exit(1)
        return
    from mo_rl.config import compose, validate

    _guard(validate, _guard(compose, ov))  # a bad value is one line before Hydra creates any directory
    path = _guard(_train_one, ov)
    _report(path)


def _resuming(path) -> None:
    """Say on stderr what the run to continue is: its status (``dead``: killed without a word, see
    results/reader.py) and the steps it logged."""
    from mo_rl.results.reader import read_run

    try:
        run = read_run(path)
    except MoRLError:  # no metrics yet: nothing to say
        return
    why = {"dead": " (its process ended without closing the run: killed, out of memory or crashed)"}
    typer.echo(f"resuming {path}: {run.status}{why.get(run.status, '')}, {run.steps_done} step(s) logged", err=True)


def _train_one(overrides: list[str]):
    """One run through Hydra's runner (the same entry as a sweep's jobs); -> its run directory."""
    import json
    import tempfile
    from pathlib import Path

    from mo_rl import hydra_app

    with tempfile.TemporaryDirectory() as tmp:  # the manifest callback reports where the run went
        out = Path(tmp) / "run.json"
        # Hydra's own job directory goes to the temporary one: the run directory holds the config, and a bad
        # output_dir is then reported by run_train as one line rather than by Hydra creating it
        hydra_app.run([*overrides, f"hydra.run.dir='{Path(tmp) / 'hydra'}'"], report=out)
        return Path(json.loads(out.read_text())["run_dir"])


@app.command()
def compare(
    paths: Optional[List[str]] = typer.Argument(None, help="Run dirs, sweep dirs or a results root "
                                                "[default: results]."),
    by: str = typer.Option("task,method", "--by", help="Group rows by these comma-separated keys (method, task, seed, "
                           "objectives, or a dotted config path such as trainer.lr)."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Show this column first and sort by it."),
    fmt: str = typer.Option("table", "--format", help="table | csv | markdown | json"),
    out: Optional[str] = typer.Option(None, "--out", help="Write the output to this file."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Write PNG learning curves and Pareto plots here."),
    html: Optional[str] = typer.Option(None, "--html", help="Also write one self-contained HTML page (tables, "
                                       "figures, config differences, commands) to this file."),
    ref_point: Optional[str] = typer.Option(None, "--ref-point", help="Hypervolume reference, e.g. 0,0 [origin]."),
    threshold: Optional[float] = typer.Option(None, "--threshold",
                                              help="Weighted-reward level for the steps-to-threshold column."),
    last_frac: float = typer.Option(0.2, "--last-frac", help="Final values average this last fraction of steps."),
    heatmap: Optional[str] = typer.Option(None, "--heatmap", metavar="X,Y",
                                          help="With --plot: heatmaps of the winning method per (X, Y) cell of two "
                                               "config keys, e.g. task.options.rho,task.options.noise."),
):
    """Compare runs side by side (reads only the files in their run directories): one row per method, mean ± std
    over seeds of final rewards, hypervolume, steps to threshold, advantage diagnostics, cost, and eval columns."""
    from mo_rl.analysis.compare import compare_runs

    ref = None
    if ref_point:
        try:
            ref = [float(x) for x in ref_point.split(",")]
        except ValueError:
            _fail(f"--ref-point {ref_point!r} must be comma-separated numbers, e.g. 0,0")
    text = _guard(compare_runs, list(paths or ["results"]), by=[b.strip() for b in by.split(",") if b.strip()],
                  metric=metric, fmt=fmt, out=out, plot=plot, ref_point=ref, threshold=threshold, last_frac=last_frac,
                  heatmap=[h.strip() for h in heatmap.split(",")] if heatmap else None,
                  html=html)
    if text and not out:
        typer.echo(text)


@app.command("eval")
def eval_(
    paths: List[str] = typer.Argument(..., help="Run directories, sweep directories or a results root."),
    k: str = typer.Option("1,4,16", "--k", help="Comma-separated sample budgets k."),
    prompts: int = typer.Option(32, "--prompts", help="Held-out prompts to sample for."),
    seed: int = typer.Option(1234, "--seed", help="Seed of the held-out prompts, the sampling and the weightings."),
):
    """Test-time search from each run's final checkpoint: best@k under fixed and random (Dirichlet) weightings,
    pass@k where the task defines success, hypervolume and diversity of the k samples. Writes <run>/eval.json,
    which `mo-rl compare` then shows."""
    from rich.progress import track

    from mo_rl.analysis.evaluate import evaluate_run
    from mo_rl.results.reader import find_runs

    try:
        ks = [int(x) for x in k.split(",")]
    except ValueError:
        _fail(f"--k {k!r} must be comma-separated integers, e.g. 1,4,16")
    if min(ks) < 1:
        _fail(f"--k {k!r}: every k must be >= 1")
    runs = _guard(find_runs, paths)
    skipped = 0
    for run in track(runs, description="eval", transient=True):
        try:
            out = evaluate_run(run, ks, prompts, seed)
        except MoRLError as e:  # one run that cannot be evaluated does not stop the others
            if STATE["debug"]:
                raise
            typer.echo(f"warning: skipped {run}: {e}", err=True)
            skipped += 1
            continue
        best = ", ".join(f"best@{r['k']} {r['best_at_k_sampled']:.3f}" for r in out["results"])
        typer.echo(f"{run}: {best}")
    if skipped:
        _fail(f"{skipped} of {len(runs)} run(s) skipped (see the warnings above); the others are evaluated")


@app.command()
def diagnose(
    overrides: Optional[List[str]] = typer.Argument(None, help="Hydra overrides, as for train (task=..., "
                                                    "objectives.names=[...], model.path=...)."),
    prompts: int = typer.Option(32, "--prompts", help="Prompts to sample for."),
    group: Optional[int] = typer.Option(None, "--group", help="Rollouts per prompt [default: trainer.group_size]."),
    fmt: str = typer.Option("table", "--format", help="table | json"),
):
    """Which regime is this task in? Samples rollouts from the initial policy (no training, nothing written) and
    reports per objective the base rate, within-group std, zero-spread groups and noise share, the within-group
    correlations, dvao's effective weights, and a recommendation (balance / spread / gate, or flat: nothing to
    learn) with its reasons."""
    import json

    from mo_rl.analysis.diagnose import diagnose as run_diagnose
    from mo_rl.analysis.diagnose import render
    from mo_rl.config import compose

    if fmt not in ("table", "json"):
        _fail(f"unknown --format {fmt!r}; allowed: table, json")
    if prompts < 1 or (group is not None and group < 2):
        _fail(f"--prompts={prompts} must be >= 1 and --group={group} >= 2")
    cfg = _guard(compose, list(overrides or []))
    report = _guard(run_diagnose, cfg, prompts, group)
    typer.echo(json.dumps(report, indent=2) if fmt == "json" else render(report).rstrip())


def _report(path) -> None:
    """Print ``_run_report``; under torchrun every rank runs the same command, and rank 0 alone reports."""
    import os

    if os.environ.get("RANK", "0") == "0":
        typer.echo(_run_report(path))


def _run_report(path) -> str:
    """Where the run is, and the weighted reward of its first and last 20% of steps (what a user checks first)."""
    import json

    rows = [json.loads(line) for line in open(path / "metrics.jsonl")]
    n = max(1, len(rows) // 5)

    def mean(part):  # null where every rollout of a step was masked (NaN written as null)
        vals = [r["reward/weighted/mean"] for r in part if r.get("reward/weighted/mean") is not None]
        return f"{sum(vals) / len(vals):.3f}" if vals else "n/a (every rollout masked)"

    wall = rows[-1]["time"] if rows else 0.0
    return (f"run: {path}\nweighted reward: first 20% of steps {mean(rows[:n])} -> last 20% {mean(rows[-n:])} "
            f"({len(rows)} steps, {wall:.0f} s)")


def main():
    app()


if __name__ == "__main__":
    sys.exit(main())
