"""The run's spending cap (`run --max-credits N`): asked before each submission, told after.

Contract:

* `spent()` (given by the runner) is what this run has cost so far, net, as the state file
  records it: each accepted submission's credits (the reply's figure, else the price model's),
  less the refunds of status 7 and 8.
* `ask(job_id, estimate)` is called before a submission may leave. It answers True, and holds
  `estimate` for the job, only if `spent() + everything held + estimate <= cap`; otherwise
  False, and the job must stay unsent (it stays pending for the next run). A job asking again
  replaces its own hold, so a retry of the same submission is never counted twice.
* `settle(job_id)` is called once the submission's outcome is in the state file (charged: its
  credits are in `spent()` now, the real figure where the reply gave one; or refused, never
  charged): the hold goes. A submission whose outcome stays unknown (no reply) keeps its hold
  until the run ends: it may have been charged.
* Without a cap every ask is granted; the budget still counts, for the log.

Nothing here sends or sleeps: it is plain arithmetic, safe to call between two awaits.
"""

from __future__ import annotations

from collections.abc import Callable


class Budget:
    def __init__(self, cap: int | None, spent: Callable[[], int]) -> None:
        if cap is not None and cap < 0:
            raise ValueError("a credit cap cannot be negative")
        self.cap = cap
        self._spent = spent
        self._held: dict[str, int] = {}
        self.refused: list[str] = []  # jobs held back by the cap, in the order they asked

    @property
    def spent(self) -> int:
        """What this run has cost so far (net), as the state file records it."""
        return self._spent()

    @property
    def committed(self) -> int:
        """Spent plus held: what this run has paid or may have paid."""
        return self._spent() + sum(self._held.values())

    def ask(self, job_id: str, estimate: int) -> bool:
        """May `job_id` be submitted at about `estimate` credits? Holds the estimate if so."""
        if self.cap is None:  # granted: what was spent need not be read for it
            self._held[job_id] = estimate
            return True
        others = self._spent() + sum(v for k, v in self._held.items() if k != job_id)
        if others + estimate > self.cap:
            self._held.pop(job_id, None)
            if job_id not in self.refused:
                self.refused.append(job_id)
            return False
        self._held[job_id] = estimate
        return True

    def settle(self, job_id: str) -> None:
        """The submission's outcome is recorded (charged or refused): drop its hold."""
        self._held.pop(job_id, None)

    def why_refused(self) -> str | None:
        """One line for the log and the report's `problem`, or None if nothing was held back."""
        if not self.refused:
            return None
        return (
            f"--max-credits {self.cap}: {len(self.refused)} jobs not submitted, they would have"
            f" taken this run's spend past the cap (spent {self._spent()}); they stay pending"
            " for the next run"
        )
