"""The overload gate: one backoff shared by every request of one client (one API key at one
base URL), so an overloaded API is probed, not hammered by every job at once.

Contract:

* While the API answers, `admit()` lets every request through at once.
* A refusal that says "later" (`paced`: 500069 and the other busy codes, HTTP 429, any reply
  with `Retry-After`) closes the gate for a backoff step: equal-jitter exponential on the retry
  policy's waits (the n-th refusal in a row: half to all of `initial_wait * 2**(n-1)`, capped
  at `max_wait`), raised to the server's `Retry-After` (clamped to `max_retry_after`). Requests
  that come meanwhile wait in arrival order. When the step has passed, the first of them goes
  out alone as the probe: its answer opens the gate for all; its refusal (or no reply) closes
  it for the next, longer step, and it waits again at the back. Requests already on their way
  when the gate closed do not lengthen the step. So an overload costs about one refused
  request per step, however many jobs wait.
* Waiting is no attempt. Each `Pass` says how long it waited (a task's total: `gate_waited`),
  and the retrier and the submitter leave that out of their elapsed time; only requests sent
  count as tries. Waiters take turns at probing (arrival order), so the refusals of an
  overload are shared out, and no job gives up merely because it waited.
* A sustained overload trips the gate: once `attempts` probes in a row were refused over at
  least `max_elapsed` (what one call bears on its own), `admit()` raises `OverloadedError`
  at once (nothing sent, not retried), except for one probe per step. The run then drains:
  its jobs stay resumable for the next run, instead of waiting out the overload for hours.
* Clock and sleep are injected (tests); the head of the queue sleeps once per step it is
  given, so an instant test sleep never spins.

The gate never decides what a reply means for a paid submission (`pipeline.submit` does): it
only decides when a request may leave.
"""

from __future__ import annotations

import contextvars
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from pipeline.errors import ApiError, OverloadedError, ServerBusyError

if TYPE_CHECKING:
    from pipeline.retry import RetryPolicy

log = logging.getLogger("pipeline.gate")


# seconds the current task has waited at gates (each task its own: a context variable)
_WAITED: contextvars.ContextVar[float] = contextvars.ContextVar("pipeline_gate_waited")


def gate_waited() -> float:
    """Seconds the current task has waited at overload gates so far (compare two readings)."""
    return _WAITED.get(0.0)


def paced(exc: BaseException) -> bool:
    """A refusal the gate paces (and so the retrier does not wait for itself)."""
    return isinstance(exc, ServerBusyError) or (
        isinstance(exc, ApiError) and exc.retry_after is not None
    )


@dataclass(eq=False)
class Pass:
    """One request's way through the gate; told its outcome once (later tellings are no-ops)."""

    epoch: int
    probe: bool = False
    waited: float = 0.0
    told: bool = False


class OverloadGate:
    def __init__(
        self,
        policy: RetryPolicy,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._sleep = sleep
        self._clock = clock
        self._streak = 0  # refusals in a row (one per step)
        self._epoch = 0  # bumped at each counted refusal: older passes do not count again
        self._open_at = 0.0  # the clock's time the current step ends
        self._closed_since: float | None = None
        self._probe: Pass | None = None
        self._queue: deque[Pass] = deque()
        self._changed = anyio.Event()
        self.refusals = 0  # every paced refusal seen, for the log

    @property
    def closed(self) -> bool:
        return self._streak > 0

    async def admit(self) -> Pass:
        """Wait until this request may leave (see the module docstring); its `Pass` is to be
        told the outcome (`answered`, `refused`, `unanswered`) or `abandon`ed."""
        entry = Pass(self._epoch)
        if not self.closed:
            return entry
        started = self._clock()
        slept_until: float | None = None
        self._queue.append(entry)
        try:
            while self.closed:
                if self._tripped():
                    if self._probe is None and self._clock() >= self._open_at:
                        break  # one probe per step, even now
                    raise OverloadedError(self._why())
                if self._queue[0] is entry and self._probe is None:
                    if self._open_at > self._clock() and slept_until != self._open_at:
                        slept_until = self._open_at
                        await self._sleep(self._open_at - self._clock())
                        continue  # meanwhile the gate may have opened, or the step grown
                    break
                changed = self._changed
                await changed.wait()
            if self.closed:
                entry.probe, self._probe = True, entry
            entry.epoch = self._epoch
            return entry
        finally:
            self._queue.remove(entry)
            entry.waited = max(0.0, self._clock() - started)
            _WAITED.set(gate_waited() + entry.waited)
            self._notify()

    def answered(self, entry: Pass) -> None:
        """An envelope came back (not a paced refusal): the API answers again."""
        if not self._tell(entry):
            return
        if entry.epoch == self._epoch and self.closed:
            log.info("the API answers again: the overload gate opens")
            self._streak, self._closed_since = 0, None
        self._notify()

    def refused(self, entry: Pass, retry_after: float | None) -> None:
        """A paced refusal ("later"): the gate closes for the next step."""
        if not self._tell(entry):
            return
        self.refusals += 1
        now = self._clock()
        if entry.epoch == self._epoch:
            self._streak += 1
            self._epoch += 1
            self._closed_since = now if self._closed_since is None else self._closed_since
            self._open_at = now + self._step(retry_after)
            log.info(
                "the API refused a request (%d in a row): the others wait until it is tried"
                " again in %.2f s",
                self._streak,
                self._open_at - now,
            )
        elif retry_after is not None:
            self._open_at = max(self._open_at, now + self._clamped(retry_after))
        self._notify()

    def unanswered(self, entry: Pass) -> None:
        """No reply at all: says nothing, except that a probe found no way through."""
        if entry.probe and not entry.told:
            self.refused(entry, None)
            return
        self.abandon(entry)

    def abandon(self, entry: Pass) -> None:
        """The request never got an outcome (cancelled, or never sent)."""
        if self._tell(entry):
            self._notify()

    def _tell(self, entry: Pass) -> bool:
        if entry.told:
            return False
        entry.told = True
        if self._probe is entry:
            self._probe = None
        return True

    def _step(self, retry_after: float | None) -> float:
        policy = self._policy
        base = min(policy.max_wait, policy.initial_wait * 2.0 ** min(self._streak - 1, 30))
        delay = base / 2 + random.uniform(0, base / 2)
        return delay if retry_after is None else max(delay, self._clamped(retry_after))

    def _clamped(self, retry_after: float) -> float:
        return min(max(0.0, retry_after), self._policy.max_retry_after)

    def _tripped(self) -> bool:
        since = self._closed_since
        return (
            self._streak >= self._policy.attempts
            and since is not None
            and self._clock() - since >= self._policy.max_elapsed
        )

    def _why(self) -> str:
        since = self._closed_since if self._closed_since is not None else self._clock()
        return (
            f"not sent: the API has refused every request for {self._clock() - since:.0f} s"
            f" ({self._streak} tries in a row, overloaded or rate limited); left for the"
            " next run"
        )

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
