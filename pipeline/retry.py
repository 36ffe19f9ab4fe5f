"""Retry policy as data, built into a tenacity retrier in one factory.

Only the transient branch of the error tree is retried; waits are full-jitter exponential
(AWS architecture blog, "Exponential Backoff and Jitter"), raised to a server's `Retry-After`
when it sends one. Sleeping is injectable so tests run retries in milliseconds.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import tenacity

from pipeline.errors import ApiError, TransientError

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


def _wait(policy: RetryPolicy) -> Callable[[tenacity.RetryCallState], float]:
    jitter = tenacity.wait_random_exponential(multiplier=policy.initial_wait, max=policy.max_wait)

    def wait(state: tenacity.RetryCallState) -> float:
        delay = jitter(state)
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, ApiError) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, policy.max_retry_after))
        return delay

    return wait


def _log_before_sleep(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.info("retrying in %.2fs after attempt %d: %s", wait, state.attempt_number, exc)


def retrier(policy: RetryPolicy, sleep: Sleep = anyio.sleep) -> tenacity.AsyncRetrying:
    """A tenacity retrier for `policy`: transient errors only, re-raises the last one."""
    return tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(policy.attempts)
        | tenacity.stop_after_delay(policy.max_elapsed),
        wait=_wait(policy),
        retry=tenacity.retry_if_exception_type(TransientError),
        before_sleep=_log_before_sleep,
        sleep=sleep,
        reraise=True,
    )
