"""Progress for long work: the training bar, and ``work`` for the rest (the tiny model's first build, the GGUF
conversion, eval's and diagnose's sampling).

Both draw a rich bar on stderr when stderr is a terminal. Anywhere else (a log file, a pipe, a batch job) they
print plain lines to stderr instead, so long work is never silent: training one line every ``trainer.log_every``
steps (step/steps, rewards, step time, time left), other work one line when it starts and one every tenth of it.
stdout keeps only the results (the run's closing lines). The bars keep their label, counter and time left at 80
columns: the text after them is what is cut (with an ellipsis).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.errors import LiveError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column


def _columns() -> list:
    """Label, bar, counter, elapsed, time left (never cut), then the info text, cut first when the line is short."""
    keep = lambda: Column(no_wrap=True)  # noqa: E731
    return [TextColumn("[bold]{task.description}", table_column=keep()),
            BarColumn(bar_width=None, table_column=Column(no_wrap=True, min_width=8, ratio=1)),
            MofNCompleteColumn(table_column=keep()), TimeElapsedColumn(table_column=keep()),
            TimeRemainingColumn(table_column=keep()),
            TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=3))]


_STDERR: list[Console] = []


def stderr_console() -> Console:
    """The one stderr console every bar draws on, so that a bar started inside another (eval's sampling inside its
    loop over runs) nests in it instead of fighting it for the terminal."""
    if not _STDERR:
        _STDERR.append(Console(stderr=True))
    return _STDERR[0]


def make_progress(console: Console) -> Progress:
    """The bar's ``Progress`` (off unless ``console`` is a terminal); the line fills the console's width."""
    return Progress(*_columns(), console=console, transient=False, expand=True, disable=not console.is_terminal)


def clock(seconds: float) -> str:
    """h:mm:ss, as the bar shows time."""
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def reward_info(row: dict, names: list[str]) -> str:
    """The latest reward per objective (the first four) and the weighted reward, as the bar and the lines show."""
    parts = [f"{n} {row.get(f'reward/{n}/mean', float('nan')):.3f}" for n in names[:4]]
    parts.append(f"weighted {row.get('reward/weighted/mean', float('nan')):.3f}")
    return " | ".join(parts)


class _Bar:
    """``advance(row)`` once per step: moves the bar, or prints a plain line every ``log_every`` steps."""

    def __init__(self, progress: Progress, task_id, names: list[str], label: str, total: int, first: int,
                 log_every: int, console: Console):
        self.p, self.id, self.names, self.label = progress, task_id, names, label
        self.total, self.step, self.every, self.console = total, first, log_every, console
        self.plain = not console.is_terminal and log_every > 0
        self.t0 = time.perf_counter()
        self.done = 0  # steps advanced in this process (a resumed run's earlier steps took no time here)

    def advance(self, row: dict) -> None:
        self.step, self.done = self.step + 1, self.done + 1
        info = reward_info(row, self.names)
        self.p.update(self.id, advance=1, info=info)
        if self.plain and (self.step % self.every == 0 or self.step == self.total):
            per_step = (time.perf_counter() - self.t0) / self.done
            self.console.print(f"{self.label} step {self.step}/{self.total} | {info} | {per_step:.3f} s/step | "
                               f"ETA {clock(per_step * (self.total - self.step))}",
                               soft_wrap=True, highlight=False, markup=False)


@contextmanager
def progress_bar(total: int, label: str, names: list[str], first: int = 0, log_every: int = 0,
                 console: Console | None = None) -> Iterator[_Bar]:
    """The training bar over steps ``first``..``total`` (a resumed run starts at ``first``); off a terminal, a plain
    line every ``log_every`` steps (0 = none)."""
    console = console or stderr_console()
    with make_progress(console) as p:
        yield _Bar(p, p.add_task(label, total=total, completed=first, info=""), names, label, total, first,
                   log_every, console)


@contextmanager
def work(total: int, label: str, console: Console | None = None, eta: bool = True) -> Iterator[Callable[..., None]]:
    """Progress of long work that is not training: yields ``advance(n=1, info="")``; call it as units finish.

    On a terminal, a bar; elsewhere a plain line when the work starts and one each time another tenth of
    ``total`` is done (and at the end), each with the count, the elapsed time and the time left. ``info`` is an
    optional short text shown after the counts (e.g. the run being evaluated). ``eta=False``: no time left in the
    plain lines, for units of unequal length (the stages of a conversion).
    """
    console = console or stderr_console()
    every = max(1, -(-total // 10))
    state = {"done": 0, "t0": time.perf_counter()}

    def line(info: str) -> None:
        done, spent = state["done"], time.perf_counter() - state["t0"]
        left = f", ETA {clock(spent / done * (total - done))}" if eta and 0 < done < total else ""
        console.print(f"{label}: {done}/{total} ({clock(spent)}{left}){' ' + info if info else ''}",
                      soft_wrap=True, highlight=False, markup=False)

    p = make_progress(console)
    try:
        p.start()
    except LiveError:  # a rich without nested live displays, inside another bar: this one stays hidden
        p.disable = True
    with p:
        task = p.add_task(label, total=total, info="")
        plain = not console.is_terminal
        if plain:
            line("")

        def advance(n: int = 1, info: str = "") -> None:
            before = state["done"]
            state["done"] = min(total, before + n)
            p.update(task, completed=state["done"], info=info)
            if plain and (state["done"] // every > before // every or state["done"] == total > before):
                line(info)

        yield advance
