"""A clock and a sleep that move only when the test says so (no timed assertions)."""

from __future__ import annotations

import asyncio

import anyio


async def wait_all_tasks_blocked() -> None:
    """anyio's, without its 0.1 s naps: every other task waits on something not yet done."""
    this = asyncio.current_task()
    while True:
        await asyncio.sleep(0)
        waiting = (
            task is this or (task._fut_waiter is not None and not task._fut_waiter.done())  # type: ignore[attr-defined]
            for task in asyncio.all_tasks()
        )
        if all(waiting):
            return


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self._sleepers: list[tuple[float, anyio.Event]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        wake = anyio.Event()
        entry = (self.now + seconds, wake)
        self._sleepers.append(entry)
        try:
            await wake.wait()
        finally:
            if entry in self._sleepers:  # cancelled: nobody need wake it
                self._sleepers.remove(entry)

    async def advance(self, seconds: float) -> None:
        """Move time on, waking every sleeper that is due, and let everyone settle."""
        await wait_all_tasks_blocked()
        self.now += seconds
        self._wake_due()
        await wait_all_tasks_blocked()

    async def run_until(self, done: anyio.Event, limit: float = 1e6) -> None:
        """Jump from one wake-up to the next until `done` is set (or time runs past `limit`)."""
        while not done.is_set():
            await wait_all_tasks_blocked()
            if done.is_set():
                return
            due = [at for at, event in self._sleepers if not event.is_set()]
            if not due or min(due) > limit:
                raise AssertionError("nothing left to wake, and not done")
            self.now = max(self.now, min(due))
            self._wake_due()

    def _wake_due(self) -> None:
        for at, event in self._sleepers:
            if at <= self.now:
                event.set()
        self._sleepers = [(at, e) for at, e in self._sleepers if not e.is_set()]
