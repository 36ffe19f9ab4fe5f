"""The generation-slot limiter: at most `limit` generations in flight, limit learned by AIMD.

A job holds a slot from the moment it submits until its generation reaches a terminal status.
The account's real limit is unknown (a plan setting, shared with anything else using the key):
a 500044 cuts the limit to what was actually running (multiplicative decrease), and every
generation that finishes lets it creep back by 1/limit (additive increase) up to `maximum`.
"""

from __future__ import annotations

import math

import anyio


class SlotLimiter:
    def __init__(self, maximum: int) -> None:
        if maximum < 1:
            raise ValueError("the slot maximum must be at least 1")
        self.maximum = maximum
        self._limit = float(maximum)
        self._held = 0
        self._changed = anyio.Event()
        self.peak = 0  # most slots ever held at once (benchmarks and tests read it)
        self.rejections = 0

    @property
    def limit(self) -> int:
        return max(1, math.floor(self._limit))

    @property
    def held(self) -> int:
        return self._held

    async def acquire(self) -> None:
        while self._held >= self.limit:
            await self._changed.wait()
        self._held += 1
        self.peak = max(self.peak, self._held)

    def release(self) -> None:
        if self._held <= 0:
            raise RuntimeError("release() without a matching acquire()")
        self._held -= 1
        self._notify()

    def on_rejected(self) -> None:
        """500044 while holding `held` slots (the rejected job's included): the account lets
        us run at most the others. Never below one, so progress resumes when the account frees."""
        self.rejections += 1
        self._limit = float(max(1, self._held - 1))

    def on_finished(self) -> None:
        """A generation reached a terminal status: probe one step closer to the maximum."""
        if self._limit < self.maximum:
            self._limit = min(float(self.maximum), self._limit + 1.0 / self._limit)
            self._notify()

    async def wait_for_change(self, timeout: float) -> None:
        """Sleep until a slot is released or the limit grows, or `timeout` passes."""
        with anyio.move_on_after(timeout):
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
