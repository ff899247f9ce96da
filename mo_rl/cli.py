"""The ``mo-rl`` command line. Each command parses, validates, calls one function, and turns errors into one line."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from mo_rl.config import SAFE_RESUME_KEYS
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
    from mo_rl.signals import Terminated

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
    """List the tasks with their objectives and default weights, every registered reward function, and the
    feedback functions (directive.feedback)."""
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
    from mo_rl.directive import TASK_FEEDBACK, available_feedback

    f = Table("feedback (directive.feedback)", "default of task", "description")
    for name, desc in available_feedback().items():
        f.add_row(name, ", ".join(k for k, v in TASK_FEEDBACK.items() if name in v), desc)
    console = Console(width=160)
    console.print(t)
    console.print(r)
    console.print(f)


TRAIN_HELP = """Train one run (or a sweep with -m) on the composed config.

OVERRIDES are Hydra overrides, e.g. task=conflicting trainer.steps=100 trainer.group_size=16
objectives.weights=[0.7,0.3] method.adv_norm=batch_std model.path=/path/to/hf/checkpoint.
Config groups: method, task, model, rollout, objectives; settings: trainer.*, experiment, run_name, output_dir.
`mo-rl methods` and `mo-rl tasks` list the choices, `mo-rl config [OVERRIDES]` prints every knob.
A sweep: mo-rl train -m method=dvao,grpo trainer.seed=0,1.
"""


RESUME_HELP = ("Continue this run directory from its last checkpoint, with its own config.yaml; OVERRIDES may "
               f"change only {', '.join(SAFE_RESUME_KEYS)}.")


@app.command("config")
def show_config(overrides: Optional[List[str]] = typer.Argument(None, help="Hydra overrides, as for train.")):
    """Print the composed config a `mo-rl train` with these overrides would run: every knob with its value
    (the comments in conf/*.yaml and mo_rl/config.py say what each one does); objectives.names and weights are
    those the run will use (left unset, the task's)."""
    from omegaconf import OmegaConf

    from mo_rl.config import compose, objective_set, validate
    from mo_rl.tasks.base import make_task

    cfg = _guard(compose, list(overrides or []))
    c = _guard(validate, cfg)
    names, weights = objective_set(c, make_task(c.task.name, **c.task.options))
    cfg.objectives.names, cfg.objectives.weights = names, [float(w) for w in weights]
    typer.echo(OmegaConf.to_yaml(cfg).rstrip())


@app.command(help=TRAIN_HELP)
def train(
    overrides: Optional[List[str]] = typer.Argument(None, help="Hydra overrides key=value (see above)."),
    method: Optional[str] = typer.Option(None, "--method", help="Advantage estimator (= method=NAME)."),
    task: Optional[str] = typer.Option(None, "--task", help="Task (= task=NAME)."),
    multirun: bool = typer.Option(False, "-m", "--multirun", help="Hydra multirun: sweep comma-separated values."),
    resume: Optional[str] = typer.Option(None, "--resume", metavar="RUN_DIR",
                                         help=RESUME_HELP),
):
    ov = [f"method={method}"] * bool(method) + [f"task={task}"] * bool(task) + list(overrides or [])
    if resume:
        if multirun:
            _fail("--resume continues one run; it cannot be combined with -m/--multirun")
        from pathlib import Path

        from mo_rl.train.run_identity import resume_config
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
        typer.echo(_sweep_done(records), err=True)
        if any(r["status"] == "failed" for r in records):
            raise typer.Exit(1)
        return
    from mo_rl.config import compose, validate

    _guard(validate, _guard(compose, ov))  # a bad value is one line before Hydra creates any directory
    path = _guard(_train_one, ov)
    _report(path)


def _sweep_done(records: list[dict]) -> str:
    """The sweep's closing line: each status's count, and where its run directories and manifest.jsonl are."""
    from pathlib import Path

    from mo_rl.hydra_app import MANIFEST

    counts = {k: sum(r["status"] == k for r in records) for k in ("completed", "resumed", "skipped", "failed")}
    line = "sweep done: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v or k != "resumed")
    # the manifest sits in the sweep directory, at or above every job's run directory
    where = next((d for r in records for d in Path(r["run_dir"]).parents if (d / MANIFEST).is_file()), None)
    return f"{line}; runs in {where}/, manifest {where / MANIFEST}" if where else line


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
                                                "(default: results)."),
    by: str = typer.Option("task,method", "--by", help="Group rows by these comma-separated keys (method, task, seed, "
                           "objectives, directive, or a dotted config path such as trainer.lr). method.* keys and "
                           "directive (off, or the loss) name variants of a method: "
                           "dvao\\[directive=forward_ce]. A group "
                           "whose runs differ in a setting beyond the seed is named on stderr."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Show this column first, sort by it, and compare "
                                         "only it in the --baseline table."),
    fmt: str = typer.Option("table", "--format", help="table | csv | markdown | json (csv: the groups table; json: "
                            "also the paired and IQM tables)"),
    out: Optional[str] = typer.Option(None, "--out", help="Write the output to this file."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Write PNG learning curves and Pareto plots here."),
    html: Optional[str] = typer.Option(None, "--html", help="Also write one self-contained HTML page (tables, "
                                       "intervals, verdicts, figures, config differences, commands) to this file."),
    baseline: Optional[str] = typer.Option(None, "--baseline", metavar="METHOD",
                                           help="Compare every other method against this one, per shared seed: "
                                                "mean paired difference, its 95% CI, verdict, P(X>Y), seeds "
                                                "needed; IQM across tasks."),
    threshold: Optional[float] = typer.Option(None, "--threshold",
                                              help="Weighted-reward level for the steps-to-threshold column."),
    last_frac: float = typer.Option(0.2, "--last-frac", help="Final values average this last fraction of steps."),
    heatmap: Optional[str] = typer.Option(None, "--heatmap", metavar="X,Y",
                                          help="With --plot: heatmaps of the winning method per (X, Y) cell of two "
                                               "config keys, e.g. task.options.rho,task.options.noise."),
    status: Optional[str] = typer.Option(None, "--status", help="Only runs with these comma-separated statuses, "
                                         "e.g. completed (a running run has no final values yet); default: all."),
):
    r"""Compare runs side by side, reading only their run directories: one row per
    task and method, "mean \[lo, hi]" over seeds of the final rewards, steps to
    threshold, eval columns, advantage diagnostics and cost (wall time, tokens/s).

    Eval columns: best@k = the best of k samples under the user's objective
    weights; best_dirichlet@k = the same averaged over Dirichlet(1) random
    weightings (vpo's own training objective); pass@k; worst@k = the worst-off
    objective's (persona's) best@k; hv@k = hypervolume of the k samples;
    best@k/<objective>. The untrained model (mo-rl eval --base) is a `base` row,
    and each row's change from it is <col>_vs_base (csv/json) and its own table.

    Intervals, 95%, 9999 resamples, seed 0: a percentile bootstrap over a
    group's runs (scipy.stats.bootstrap) where it has >= 2; eval columns with
    per-prompt values: a two-level bootstrap, resampling runs, then prompts
    within each run (one run: prompts only). With few seeds a percentile
    interval is narrow (2 seeds: about \[min, max]).

    --baseline: diff = mean over shared seeds of (method - baseline), its 95% CI
    by scipy's bootstrap over the per-seed differences; with < 2 shared seeds
    the unpaired difference of means (each side resampled), said in the
    pairing column. Verdict better / worse where the CI excludes 0
    (steps_to_threshold: lower is better), else not resolved. P(X>Y): rliable's
    probability of improvement over all pairs of runs. Seeds needed, for the
    unresolved (normal approximation): ceil((1.96 sd / |diff|)^2). With several
    tasks also rliable's IQM across them, stratified bootstrap CI (scipy)."""
    import shutil

    from mo_rl.analysis.compare import compare_runs

    width = shutil.get_terminal_size((160, 24)).columns if sys.stdout.isatty() and not out else 160
    text = _guard(compare_runs, list(paths or ["results"]), by=[b.strip() for b in by.split(",") if b.strip()],
                  metric=metric, fmt=fmt, out=out, plot=plot, threshold=threshold, last_frac=last_frac,
                  heatmap=[h.strip() for h in heatmap.split(",")] if heatmap else None, html=html,
                  baseline=baseline, width=max(width, 80),
                  status=[x.strip() for x in status.split(",") if x.strip()] if status else None)
    if text and not out:
        typer.echo(text)


EVAL_HELP = (
    "Test-time search from each run's final checkpoint. Writes <run>/eval.json, which `mo-rl compare` shows.\n\n"
    "For each of --prompts held-out prompts, max(k) completions are sampled once; every k-metric is the expectation "
    "over a uniformly random k-subset of them: best@k under the run's own objective weights (first), best@k under "
    "random Dirichlet(1) weightings (vpo's training objective), pass@k where the task defines success, each "
    "objective's best@k and the worst-off one, the hypervolume of the k samples above --hv-ref, distinct bigrams "
    "and reward spread.\n\n"
    "Each is a mean over prompts with a 95% interval over prompts: percentile bootstrap (scipy.stats.bootstrap, "
    "9999 resamples, fixed seed).\n\n"
    "--base also evaluates the untrained model of each distinct task/objectives/model/rollout among the runs the "
    "same way, into <common parent of PATHS>/base/<task>-<hash>/ (a `base` row in compare)."
)


def _eval_line(path, out) -> str:
    best = ", ".join(f"best@{r['k']} {r['best_at_k_weighted']:.3f}" for r in out["results"])
    return f"{path}: {best} (user weights)"


def _eval_bases(runs, paths, ks, prompts, seed, ref, warn) -> int:
    """``eval --base``: the untrained model of each distinct identity among ``runs``; -> how many were skipped."""
    from mo_rl.analysis.evaluate import base_dir_for, base_root, evaluate_base

    root, groups, skipped = base_root(paths), {}, 0
    for run in runs:
        try:
            groups.setdefault(base_dir_for(run, root), run)
        except MoRLError as e:  # an unreadable config
            warn(f"skipped the base of {run}: {e}")
            skipped += 1
    for run in groups.values():
        try:
            where, out = evaluate_base(run, root, ks, prompts, seed, hv_ref=ref, warn=warn)
        except MoRLError as e:
            if STATE["debug"]:
                raise
            warn(f"skipped the base of {run}: {e}")
            skipped += 1
            continue
        typer.echo(f"{where}: already evaluated with these settings" if out is None else _eval_line(where, out))
    return skipped


@app.command("eval", help=EVAL_HELP)
def eval_(
    paths: List[str] = typer.Argument(..., help="Run directories, sweep directories or a results root."),
    k: str = typer.Option("1,4,16", "--k", help="Comma-separated sample budgets k (at most 1024)."),
    prompts: int = typer.Option(32, "--prompts", help="Held-out prompts to sample for (prompts x max k <= 65536)."),
    seed: int = typer.Option(1234, "--seed", help="Seed of the held-out prompts, the sampling and the weightings."),
    hv_ref: str = typer.Option("-0.1", "--hv-ref", help="Hypervolume reference: one number for every objective or "
                               "one per objective, comma-separated; below the lowest reward (rewards are in [0, 1])."),
    base: bool = typer.Option(False, "--base", help="Also evaluate the untrained model the runs started from."),
):
    from mo_rl.analysis.evaluate import check_sizes, evaluate_run, is_base_dir
    from mo_rl.results.reader import find_runs
    from mo_rl.progress import work

    try:
        ks = [int(x) for x in k.split(",")]
    except ValueError:
        _fail(f"--k {k!r} must be comma-separated integers, e.g. 1,4,16")
    try:
        ref = [float(x) for x in hv_ref.split(",")]
    except ValueError:
        _fail(f"--hv-ref {hv_ref!r} must be a number or comma-separated numbers, e.g. -0.1")
    ks = _guard(check_sizes, ks, prompts)
    runs = [r for r in _guard(find_runs, paths) if not is_base_dir(r)]  # base dirs are evaluated with --base only
    if not runs:
        _fail(f"no runs to evaluate under {', '.join(paths)}: only base evaluations (mo-rl eval --base writes them)")

    def warn(msg):
        typer.echo(f"warning: {msg}", err=True)

    skipped = 0
    with work(len(runs), "eval") as advance:  # on stderr: a bar, or a plain line every tenth of the runs
        for run in runs:
            try:
                out = evaluate_run(run, ks, prompts, seed, hv_ref=ref, warn=warn)
            except MoRLError as e:  # one run that cannot be evaluated does not stop the others
                if STATE["debug"]:
                    raise
                warn(f"skipped {run}: {e}")
                skipped += 1
                advance(info=str(run))
                continue
            typer.echo(_eval_line(run, out))
            advance(info=str(run))
    bases_skipped = _eval_bases(runs, paths, ks, prompts, seed, ref, warn) if base else 0
    if skipped or bases_skipped:
        parts = [f"{skipped} of {len(runs)} run(s) skipped"] * bool(skipped)
        parts += [f"{bases_skipped} base evaluation(s) skipped"] * bool(bases_skipped)
        _fail(f"{' and '.join(parts)} (see the warnings above); the others are evaluated")


@app.command()
def diagnose(
    overrides: Optional[List[str]] = typer.Argument(None, help="Hydra overrides, as for train (task=..., "
                                                    "objectives.names=[...], model.path=...)."),
    prompts: int = typer.Option(32, "--prompts", help="Prompts to sample for."),
    group: Optional[int] = typer.Option(None, "--group", help="Rollouts per prompt [default: trainer.group_size]."),
    measure: Optional[List[str]] = typer.Option(None, "--measure", help="What you will measure, repeatable or "
                                                "comma-separated: weighted, best@K (the task's weights), "
                                                "best_dirichlet@K (random ones), worst@K, pass@K:OBJ "
                                                "[default: weighted,best@4]."),
    fmt: str = typer.Option("table", "--format", help="table | json"),
):
    """Which regime is this task in, and which method wins for the measure you care about? Samples rollouts from
    the initial policy (no training, nothing written) and reports per objective the base rate, within-group std,
    zero-spread groups and noise share, the within-group correlations, dvao's effective weights, the structure
    (trade-off or not, gate candidates, or flat: nothing to learn), and per measure a verdict (regime, method, how
    sure) from the regime map's nearest cell."""
    import json

    from mo_rl.analysis.diagnose import parse_measure, render
    from mo_rl.analysis.diagnose import diagnose as run_diagnose
    from mo_rl.config import compose

    if fmt not in ("table", "json"):
        _fail(f"unknown --format {fmt!r}; allowed: table, json")
    measures = [m.strip() for part in (measure or []) for m in part.split(",") if m.strip()] or None
    for m in measures or []:
        _guard(parse_measure, m)
    cfg = _guard(compose, list(overrides or []))
    report = _guard(run_diagnose, cfg, prompts, group, measures=measures)
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
    import os

    if "" not in sys.path and os.getcwd() not in sys.path:
        # as `python -m mo_rl` does: objectives.names=[my_rewards:fn] and objectives.modules import from the
        # working directory (the console script alone would not look there)
        sys.path.insert(0, os.getcwd())
    app()


if __name__ == "__main__":
    sys.exit(main())
