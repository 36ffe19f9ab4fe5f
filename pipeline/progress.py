"""Progress of a run, told two ways: log lines for logs read the next morning (cron, systemd
timers), and a live bar for a person at a terminal (rich, only when stderr is a TTY).

The runner samples the state file every `interval` seconds and hands the counts to a sink;
sinks know nothing of jobs or the API.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from pipeline.jobstate import JobState
from pipeline.state import JobRecord

log = logging.getLogger("pipeline.progress")


@dataclass(frozen=True)
class Snapshot:
    """One sample of a run: jobs per stage (`counts`, by state value, with `suspect` for done
    jobs whose result failed its probe), generation slots held against the limiter's current
    limit, this run's net spend (and the `--max-credits` cap), and the ETA in seconds (None
    until a generation has been seen to finish)."""

    counts: Mapping[str, int]
    total: int
    slots_used: int = 0
    slot_limit: int = 0
    credits: int = 0
    cap: int | None = None
    eta: float | None = None


class ProgressSink(Protocol):
    interval: float  # seconds between samples

    def update(self, snapshot: Snapshot) -> None: ...

    def close(self) -> None: ...


def describe(counts: Mapping[str, int], slots: str = "") -> str:
    """`slots`: the limiter's own words (slots in use / the learned ceiling), if any."""
    generating = counts.get("generating", 0) + counts.get("submitting", 0)
    text = (
        f"{counts.get('failed', 0)} failed, {generating} generating,"
        f" {counts.get('downloading', 0)} downloading, {counts.get('pending', 0)} pending"
    )
    if counts.get("suspect", 0):
        text += f", {counts['suspect']} suspect"
    return text


def details(snapshot: Snapshot) -> str:
    """Everything after the done count, as the log line says it (the terminal shows the same
    on two lines)."""
    return f"{_detail_line(snapshot).strip()}; ETA {format_eta(snapshot.eta)}"


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "learning"
    seconds = max(0, math.ceil(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _finished(snapshot: Snapshot) -> int:
    c = snapshot.counts
    return c.get("done", 0) + c.get("failed", 0) + c.get("suspect", 0)


class Tracker:
    """Learns how long generations take from the samples it is shown, and estimates what is
    left: the generations still to run (pending ones whole, running ones what remains of the
    mean) spread over the slots, never less than the longest running one still needs.

    A generation counts from its submission (or the run's start, for one resumed) to the
    first sample that sees it past `generating`; the error is at most one sample interval."""

    def __init__(self, wall: Callable[[], float], started: float, keep: int = 50) -> None:
        self._wall, self._started, self._keep = wall, started, keep
        self._running: dict[str, float] = {}  # job id -> when its generation started
        self.durations: list[float] = []  # the last `keep` observed generation times

    def observe(self, records: Iterable[JobRecord], slot_limit: int) -> float | None:
        now = self._wall()
        waiting = 0
        running: dict[str, float] = {}
        for record in records:
            if record.state is JobState.GENERATING:
                running[record.id] = max(record.submitted_at or now, self._started)
            elif record.state in (JobState.PENDING, JobState.SUBMITTING):
                waiting += 1
            if record.id in self._running and record.state is not JobState.GENERATING:
                ended = min(now, max(record.updated_at, self._running[record.id]))
                self.durations = [*self.durations, ended - self._running[record.id]]
                self.durations = self.durations[-self._keep :]
        self._running = running
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        left = [max(0.0, mean - (now - start)) for start in running.values()]
        work = waiting * mean + sum(left)
        return max(work / max(1, slot_limit), max(left, default=0.0))


class LogProgress:
    """A `progress:` log line every `interval` seconds."""

    def __init__(self, interval: float = 30.0) -> None:
        self.interval = interval

    def update(self, snapshot: Snapshot) -> None:
        done = snapshot.counts.get("done", 0)
        log.info("progress: %d/%d done, %s", done, snapshot.total, details(snapshot))

    def close(self) -> None:
        """Nothing to undo: lines once written stay written."""


class _TwoLines(Progress):
    """The bar on one line, what the jobs are doing on the next: one line cropped the counts
    away on an 80-column terminal (seen in tmux), and wrapping here loses nothing."""

    detail: str = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.detail:
            yield Text(self.detail, overflow="fold")


class LiveProgress:
    """Two lines on the terminal: the bar with finished jobs of all, the ETA and the time
    taken; under it jobs per stage, slots in use against the limit and this run's spend."""

    def __init__(self, console: Console, interval: float = 0.25) -> None:
        self.interval = interval
        self._progress = _TwoLines(
            TextColumn("[bold]lip sync"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("done, ETA {task.fields[eta]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None

    def update(self, snapshot: Snapshot) -> None:
        finished, total = _finished(snapshot), snapshot.total
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task("jobs", total=total, eta="learning")
        self._progress.detail = _detail_line(snapshot)
        self._progress.update(
            self._task, completed=finished, total=total, eta=format_eta(snapshot.eta)
        )

    def close(self) -> None:
        if self._task is not None:
            self._progress.stop()


def _detail_line(snapshot: Snapshot) -> str:
    cap = f" of {snapshot.cap}" if snapshot.cap is not None else ""
    return (
        f"  {describe(snapshot.counts)}; slots {snapshot.slots_used}/{snapshot.slot_limit};"
        f" {snapshot.credits}{cap} credits this run"
    )
