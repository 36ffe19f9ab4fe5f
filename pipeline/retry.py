"""Retry policy as data, built into a tenacity retrier in one factory.

Only the transient branch of the error tree is retried; waits are full-jitter exponential
(AWS architecture blog, "Exponential Backoff and Jitter"), raised to a server's `Retry-After`
when it sends one. Sleeping is injectable so tests run retries in milliseconds.

A `gated` retrier serves calls that pass a client's overload gate (`pipeline.gate`): the gate
paces every "later" refusal (and `Retry-After`) for all the client's requests at once, so the
retrier does not wait for those itself, and the time spent waiting there does not count
against the elapsed time (waiting is no attempt; every request sent is one). A tripped gate's
OverloadedError is not retried.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.lowlevel
import tenacity

from pipeline.errors import ApiError, OverloadedError, TransientError
from pipeline.gate import gate_waited, paced

log = logging.getLogger("pipeline.retry")

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # tries in all, the first included
    max_elapsed: float = 120.0  # seconds after which no new try starts
    initial_wait: float = 0.5  # full jitter draws from [0, initial * 2**n], capped below
    max_wait: float = 20.0
    max_retry_after: float = 120.0  # a larger Retry-After is clamped to this


def backoff(policy: RetryPolicy, failures: int, retry_after: float | None = None) -> float:
    """The wait before try `failures + 1` when the caller paces retries itself (a paid
    submission): full jitter, raised to a clamped `Retry-After`, as the retrier does."""
    delay = random.uniform(0, min(policy.max_wait, policy.initial_wait * 2 ** min(failures, 30)))
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.max_retry_after))
    return delay


def _wait(policy: RetryPolicy, gated: bool) -> Callable[[tenacity.RetryCallState], float]:
    jitter = tenacity.wait_random_exponential(multiplier=policy.initial_wait, max=policy.max_wait)

    def wait(state: tenacity.RetryCallState) -> float:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        if gated and exc is not None and paced(exc):
            return 0.0  # the gate holds the next attempt back, with everyone else's
        delay = jitter(state)
        if isinstance(exc, ApiError) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, policy.max_retry_after))
        return delay

    return wait


def _stop(policy: RetryPolicy, gated: bool) -> Callable[[tenacity.RetryCallState], bool]:
    """Attempts or elapsed time used up; with a gate, the time waited there not counted."""
    before = gate_waited() if gated else 0.0

    def stop(state: tenacity.RetryCallState) -> bool:
        waited = gate_waited() - before if gated else 0.0
        elapsed = (state.seconds_since_start or 0.0) - waited
        return state.attempt_number >= policy.attempts or elapsed >= policy.max_elapsed

    return stop


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, TransientError) and not isinstance(exc, OverloadedError)


def _log_before_sleep(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.info("retrying in %.2fs after attempt %d: %s", wait, state.attempt_number, exc)


def retrier(
    policy: RetryPolicy, sleep: Sleep = anyio.sleep, *, gated: bool = False
) -> tenacity.AsyncRetrying:
    """A tenacity retrier for `policy`: transient errors only, re-raises the last one.
    `gated`: the calls pass an overload gate (see the module docstring). Make one per call:
    a gated one counts the gate from its making."""

    async def pause(seconds: float) -> None:
        if seconds > 0:
            await sleep(seconds)
        else:
            await anyio.lowlevel.checkpoint()

    return tenacity.AsyncRetrying(
        stop=_stop(policy, gated),
        wait=_wait(policy, gated),
        retry=tenacity.retry_if_exception(_retryable),
        before_sleep=_log_before_sleep,
        sleep=pause,
        reraise=True,
    )
