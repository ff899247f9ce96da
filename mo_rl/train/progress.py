"""The live progress bar: steps, time left, and the latest reward per objective."""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _Bar:
    def __init__(self, progress: Progress, task_id, names: list[str]):
        self.p, self.id, self.names = progress, task_id, names

    def advance(self, row: dict) -> None:
        parts = [f"{n} {row.get(f'reward/{n}/mean', float('nan')):.3f}" for n in self.names[:4]]
        parts.append(f"weighted {row.get('reward/weighted/mean', float('nan')):.3f}")
        self.p.update(self.id, advance=1, info=" | ".join(parts))


@contextmanager
def progress_bar(total: int, label: str, names: list[str]):
    console = Console(stderr=True)
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as p:
        yield _Bar(p, p.add_task(label, total=total, info=""), names)
