"""Snapshot progress bars on stderr."""

from __future__ import annotations

from typing import Any

from bankde.console import err
from bankde.contracts import ProgressFn


class snapshot_progress:
    """A rich progress bar per table on stderr while a snapshot runs (None when hidden)."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressFn | None:
        if not self.show:
            return None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("snapshot {task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=False,
        )
        return self._update

    def _update(self, table: str, done: int, total: int | None) -> None:
        prog = self._progress
        if not prog.live.is_started:
            prog.start()
        task = self._tasks.get(table)
        if task is None:
            task = prog.add_task(table, total=total)
            self._tasks[table] = task
        if total is not None and total < done:
            total = done
        prog.update(task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None and self._progress.live.is_started:
            self._progress.stop()
