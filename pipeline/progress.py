"""Progress of a run, told two ways: log lines for logs read the next morning (cron, systemd
timers), and a live bar for a person at a terminal (rich, only when stderr is a TTY).

The runner samples the state file every `interval` seconds and hands the counts to a sink;
sinks know nothing of jobs or the API.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

log = logging.getLogger("pipeline.progress")


class ProgressSink(Protocol):
    interval: float  # seconds between samples

    def update(self, counts: Mapping[str, int], total: int, slots: str = "") -> None: ...

    def close(self) -> None: ...


def describe(counts: Mapping[str, int], slots: str = "") -> str:
    """`slots`: the limiter's own words (slots in use / the learned ceiling), if any."""
    generating = counts.get("generating", 0) + counts.get("submitting", 0)
    return (
        f"{counts.get('failed', 0)} failed, {generating} generating,"
        f" {counts.get('downloading', 0)} downloading, {counts.get('pending', 0)} pending"
    ) + (f", {slots}" if slots else "")


class LogProgress:
    """A `progress:` log line every `interval` seconds."""

    def __init__(self, interval: float = 30.0) -> None:
        self.interval = interval

    def update(self, counts: Mapping[str, int], total: int, slots: str = "") -> None:
        log.info("progress: %d/%d done, %s", counts.get("done", 0), total, describe(counts, slots))

    def close(self) -> None:
        """Nothing to undo: lines once written stay written."""


class LiveProgress:
    """A bar on the terminal: finished jobs of all, and what the rest are doing."""

    def __init__(self, console: Console, interval: float = 0.25) -> None:
        self.interval = interval
        self._progress = Progress(
            TextColumn("[bold]lip sync"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None

    def update(self, counts: Mapping[str, int], total: int, slots: str = "") -> None:
        finished = counts.get("done", 0) + counts.get("failed", 0)
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task("jobs", total=total, detail="")
        self._progress.update(
            self._task, completed=finished, total=total, detail=describe(counts, slots)
        )

    def close(self) -> None:
        if self._task is not None:
            self._progress.stop()
