"""The generation-slot limiter: how many generations this run may have in flight, learned from
500044 without hammering the account.

Contract (every number is "generations of this run on the account"):

* A job asks for a slot (`acquire`) before each submission and gets a `Permit`. It reports the
  reply: `accepted` (a video id: the permit now stands for a running generation), `rejected`
  (500044: the permit is gone) or `release` (the generation ended, passed the 10-minute slot
  rule, or the submission did not happen or got another answer). A generation found running
  at the start of a run is counted with `adopt`, which never waits.
* Slow start: the run may hold one slot, and one more per accepted submission, up to
  `maximum` (`--concurrency`) or the learned ceiling, so a run never opens with a burst of
  refusals. Slots given back are refilled at once up to that level.
* A 500044 never wakes a waiting job. It is read against the ceiling, the most generations
  this run had running when the account refused one more:
  - with no ceiling known yet and some running, the running count becomes the ceiling: the
    account's limit as this run sees it;
  - while holding at least the ceiling, it only confirms the ceiling;
  - while holding fewer than the ceiling (or none), someone else is using the account (another
    client, a nightly run's old generations): the ceiling stays, and the account is "refusing".
* While refusing, nothing is submitted above what was running, except one probe at a time:
  the first waiting job submits after a backoff that starts at `probe_first` and doubles up to
  `probe_max` (the poll interval). Every other job waits for a slot this run gives back or for
  the probe's acceptance, which ends the refusal and restarts slow start from there.
* One refusal is one sample. Nothing in a 500044 tells "the account's limit is N" from
  "someone else held some slots for a moment" (another client, a nightly run's leftovers, the
  console): only a try above the ceiling does, and at the true limit each try costs a refused
  request. So a ceiling just learned from a refusal is *provisional*: it is tried again every
  `provisional_turns` turnovers of its slots (that many times the ceiling of generations
  finished at it), until `confirm_tries` tries above it were refused (the limit came back with
  other generations running: it is the account's). The beat is long enough that a short run at
  its true limit pays one refusal only (13 jobs at limit 2: about 6 turnovers in all), short
  enough that a foreign load at the start does not keep the run low for the rest of it.
* Above a confirmed ceiling, rarely: after `above_after` generations finished while at the
  ceiling, or `above_every` seconds, one submission above it. Every refused try (provisional or
  not) doubles both intervals, so a long run at its true limit pays a handful of refusals.
* A try above accepted shows the ceiling was low (someone else's load when it was learned, or
  counted low): slow start climbs again from there, one more per acceptance up to `maximum`,
  and the next refusal at or above the old ceiling sets the new one (provisional again; never
  below the old). Someone else's load never lowers the ceiling.
* Counted, not guessed: "running" is what this run knows, and a generation may have ended
  since its last poll. So a ceiling learned from a refusal, or grown by an acceptance, counts
  only the generations seen still running (`seen_running`) after that answer; one seen ended
  first may have ended before it, and is not counted (the ceiling errs low, never high: too
  high, every refusal below it would read as someone else's load).

No HTTP here: the clock and the sleep are injected, so tests drive it with fake time.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio


@dataclass(frozen=True)
class LimiterTiming:
    probe_first: float = 1.0  # seconds before the first probe while the account refuses
    probe_max: float = 5.0  # the probe backoff grows to this (the poll interval)
    above_after: int = 20  # generations finished at the ceiling before one try above it
    above_every: float = 120.0  # or this many seconds, whichever comes first
    provisional_turns: int = 6  # a provisional ceiling: a try above every 6 x ceiling finishes
    confirm_tries: int = 2  # refused tries above that make a learned ceiling the account's


@dataclass(eq=False)
class Permit:
    """One slot as a job holds it: a submission on its way, or (once `accepted`) a running
    generation. `probe` and `above` say why it was granted beyond the current level."""

    running: bool = False
    probe: bool = False
    above: bool = False
    active: bool = True


@dataclass(eq=False)
class _Evidence:
    """An answer that sets (`refused`) or raises the ceiling to `value`, counting `unsure`:
    generations not yet seen running after the answer."""

    raise_: bool
    value: int
    unsure: set[Permit]
    floor: int = 1  # a refusal never takes the ceiling below this (what the account took)
    number: int = 0  # the limiter's count of answers learned from when this one came (R8-2)


@dataclass(eq=False)
class _Waiter:
    event: anyio.Event
    permit: Permit | None = None


class SlotLimiter:
    def __init__(
        self,
        maximum: int,
        timing: LimiterTiming | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if maximum < 1:
            raise ValueError("the slot maximum must be at least 1")
        self.maximum = maximum
        self.timing = timing or LimiterTiming()
        self._clock, self._sleep = clock, sleep
        self.ceiling: int | None = None  # most running when the account refused one more
        self._cap = 1  # slots that may be held without probing (slow start begins at one)
        self._running = 0  # accepted generations holding a slot
        self._runs: set[Permit] = set()  # their permits
        self._evidence: list[_Evidence] = []
        self._answers = 0  # evidence learned so far (`answers`)
        self._sending = 0  # granted submissions without an answer yet
        self._waiters: deque[_Waiter] = deque()
        self.refusing = False  # someone else's load fills the account: probes only
        self._backoff = 0.0
        self._probe_at = 0.0
        self._probe_out = False  # a probe (refusing) or an above-ceiling try is in flight
        self._prober: anyio.CancelScope | None = None  # the waiter sleeping until `_probe_at`
        self._prober_waiter: _Waiter | None = None
        self._finished_at_ceiling = 0  # since the ceiling was learned or last tried
        self._confirm_left = 0  # refused tries above still needed to confirm the ceiling
        self._climb = False  # a try above was accepted: slow start again, up to the maximum
        self._above_after = self.timing.above_after
        self._above_every = self.timing.above_every
        self._above_since = clock()
        self.peak = 0  # most slots held at once (reports, benchmarks and tests read it)
        self.rejections = 0

    @property
    def held(self) -> int:
        return self._running + self._sending

    @property
    def running(self) -> int:
        return self._running

    @property
    def limit(self) -> int:
        """Slots this run may fill right now without a probe."""
        return self._cap

    def describe(self) -> str:
        """For the progress line: slots in use / the ceiling (or the maximum, not yet met)."""
        if self.ceiling is None:
            return f"slots {self._running}/{self.maximum}"
        how = ", provisional" if self.provisional else ", climbing" if self._climb else ""
        refusing = ", account busy elsewhere" if self.refusing else ""
        return f"slots {self._running}/{self.ceiling} (learned ceiling{how}{refusing})"

    @property
    def provisional(self) -> bool:
        """The ceiling rests on too few refusals to be the account's: tried again soon."""
        return self.ceiling is not None and self._confirm_left > 0 and not self._climb

    # asking ---------------------------------------------------------------------------------

    async def acquire(self) -> Permit:
        """Wait for a slot; FIFO among waiters. While the account refuses, the first waiter
        with no probe out sleeps the backoff and then submits as the probe."""
        waiter = _Waiter(anyio.Event())
        self._waiters.append(waiter)
        try:
            self._dispatch()
            while waiter.permit is None:
                if self._may_probe(waiter):
                    await self._wait_to_probe(waiter)
                else:
                    await waiter.event.wait()
                    waiter.event = anyio.Event()
        except BaseException:
            if waiter.permit is not None:
                self.release(waiter.permit)
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
                self._dispatch()  # a prober that leaves hands the role on
            raise
        return waiter.permit

    def _may_probe(self, waiter: _Waiter) -> bool:
        return (
            self.refusing
            and not self._probe_out
            and self._prober is None
            and bool(self._waiters)
            and self._waiters[0] is waiter
        )

    async def _wait_to_probe(self, waiter: _Waiter) -> None:
        with anyio.CancelScope() as scope:
            self._prober, self._prober_waiter = scope, waiter
            try:
                await self._sleep(max(0.0, self._probe_at - self._clock()))
            finally:
                self._prober = self._prober_waiter = None
        if scope.cancel_called or waiter.permit is not None:
            return  # granted meanwhile, or the refusal ended: look again
        if self.refusing and not self._probe_out and self._clock() >= self._probe_at:
            self._grant(waiter, probe=True)

    def adopt(self) -> Permit:
        """A generation already running on the account (a resumed run): counted, never waits."""
        self._running += 1
        self._cap = max(self._cap, min(self._target(), self._running))
        self.peak = max(self.peak, self.held)
        permit = Permit(running=True)
        self._runs.add(permit)
        return permit

    @property
    def answers(self) -> int:
        """Answers learned from so far: read it when a poll is asked, give it to
        `seen_running` with the reply (review 8, R8-2)."""
        return self._answers

    def seen_running(self, permit: Permit | None, asked: int | None = None) -> None:
        """A poll saw this generation still running: it counts for what was learned before.
        `asked`: `answers` when the poll left; an answer learned after it is not vouched for
        (a reply delivered late may describe a generation that has since ended: counting it
        would set the ceiling above the account's limit)."""
        if permit is None:
            return
        for evidence in list(self._evidence):
            if asked is not None and evidence.number > asked:
                continue
            evidence.unsure.discard(permit)
            self._settle(evidence)

    # the account's answers --------------------------------------------------------------------

    def accepted(self, permit: Permit) -> None:
        """The submission got a video id: its slot now holds a running generation."""
        _check_sending(permit)
        permit.running = True
        self._sending -= 1
        self._running += 1
        others = set(self._runs)
        self._runs.add(permit)
        if permit.probe or permit.above:
            self._probe_out = False
        if permit.probe:
            self.refusing = False  # the account took one more: slow start again from here
        if permit.above:
            self._above_reset(self._above_after, self._above_every)
            self._climb = True  # the ceiling was low: find the account's limit again
        if self.ceiling is not None and self._running > self.ceiling:
            self._learn(_Evidence(raise_=True, value=self._running, unsure=others))
        if not self.refusing:  # while refusing, only the probe's acceptance opens up
            self._cap = max(self._cap, min(self._target(), self._running + 1))
        self._dispatch()

    def rejected(self, permit: Permit) -> None:
        """500044: the permit is gone. Wakes no one (see the module docstring)."""
        _check_sending(permit)
        permit.active = False
        self._sending -= 1
        self.rejections += 1
        if permit.probe or permit.above:
            self._probe_out = False
        running = self._running
        if permit.above:
            self._above_reset(2 * self._above_after, 2 * self._above_every)
        learning = self.ceiling is None or self._climb  # slow start, or a climb above it
        if learning and running > (self.ceiling or 0):
            self._set_ceiling(running)
        elif self.ceiling is not None and running >= self.ceiling:
            self._climb = False
            self._confirm_left = max(0, self._confirm_left - 1)  # the limit came back
        if self.ceiling is not None and running >= self.ceiling:
            self._cap = self.ceiling  # our own limit: the next release lets the next job in
            return
        # someone else's load: hold what runs, probe with a growing backoff
        self._cap = running
        if not self.refusing or permit.probe:
            first = min(self.timing.probe_first, self.timing.probe_max)
            grown = min(self.timing.probe_max, self._backoff * 2)
            self._backoff = first if not self.refusing else max(first, grown)
            self._probe_at = self._clock() + self._backoff
        self.refusing = True
        self._wake_prober()  # a timer, not a submission: it sends when the backoff is over

    def release(self, permit: Permit) -> None:
        """The slot is free: a generation ended (or stopped counting), or a submission that
        holds it will not be sent or got an answer other than a video id or 500044."""
        if not permit.active:
            return
        permit.active = False
        if permit.running:
            if self.ceiling is not None and self._running >= self.ceiling:
                self._finished_at_ceiling += 1
            self._running -= 1
            self._runs.discard(permit)
            for evidence in list(self._evidence):
                if permit in evidence.unsure:  # it may have ended before that answer
                    evidence.unsure.discard(permit)
                    evidence.value -= 1
                    self._settle(evidence)
        else:
            self._sending -= 1
            if permit.probe or permit.above:
                self._probe_out = False
        self._dispatch()

    # internals ------------------------------------------------------------------------------

    def _target(self) -> int:
        if self.ceiling is None or self._climb:
            return self.maximum
        return min(self.maximum, self.ceiling)

    def _set_ceiling(self, running: int) -> None:
        """A refusal while holding `running`, with no ceiling yet or climbing above it: the
        account's limit as this run sees it, provisional, never below the ceiling it passed."""
        floor = self.ceiling or 1
        self.ceiling = running  # at most: see `_settle`
        self._climb = False
        self._confirm_left = self.timing.confirm_tries
        self._evidence.clear()  # older answers: this one is newer
        self._above_reset(self._above_after, self._above_every)
        self._learn(_Evidence(raise_=False, value=running, unsure=set(self._runs), floor=floor))

    def _learn(self, evidence: _Evidence) -> None:
        self._answers += 1
        evidence.number = self._answers
        self._evidence.append(evidence)
        self._settle(evidence)

    def _settle(self, evidence: _Evidence) -> None:
        """Apply what is sure of `evidence` so far; drop it once nothing is unsure."""
        if not evidence.raise_ and self.ceiling is not None:
            self.ceiling = max(evidence.floor, min(self.ceiling, evidence.value))
            self._cap = min(self._cap, self._target())
        if evidence.raise_ and (self.ceiling is None or evidence.value <= self.ceiling):
            evidence.unsure.clear()  # nothing left to raise
        if evidence.unsure:
            return
        self._evidence.remove(evidence)
        if evidence.raise_ and self.ceiling is not None and evidence.value > self.ceiling:
            self.ceiling = evidence.value

    def _above_reset(self, after: int, every: float) -> None:
        self._above_after, self._above_every = after, every
        self._finished_at_ceiling = 0
        self._above_since = self._clock()

    def _above_due(self) -> bool:
        ceiling = self.ceiling
        if (
            ceiling is None
            or self.refusing
            or self._probe_out
            or self._climb  # slow start is on its way up already
            or ceiling >= self.maximum
            or self.held >= self.maximum
            or self._running < ceiling
        ):
            return False
        finished = self._finished_at_ceiling
        if self._confirm_left > 0 and finished >= self.timing.provisional_turns * ceiling:
            return True
        return (
            finished >= self._above_after or self._clock() - self._above_since >= self._above_every
        )

    def _dispatch(self) -> None:
        """Grant waiting jobs, oldest first, whatever fits; wake a new prober if one is due."""
        while self._waiters and self.held < self._cap:
            self._grant(self._waiters[0])
        if self._waiters and self._above_due():
            self._grant(self._waiters[0], above=True)
        self._wake_prober()
        if self._prober is not None and (not self.refusing or self.held < self._cap):
            self._prober.cancel()

    def _wake_prober(self) -> None:
        if self._waiters and self.refusing and not self._probe_out and self._prober is None:
            self._waiters[0].event.set()  # it becomes the prober (sleeps, then probes)

    def _grant(self, waiter: _Waiter, *, probe: bool = False, above: bool = False) -> None:
        self._waiters.remove(waiter)
        self._sending += 1
        self.peak = max(self.peak, self.held)
        if probe or above:
            self._probe_out = True
        waiter.permit = Permit(probe=probe, above=above)
        waiter.event.set()
        if self._prober is not None and self._prober_waiter is waiter:
            self._prober.cancel()


def _check_sending(permit: Permit) -> None:
    if not permit.active or permit.running:
        raise RuntimeError("an answer for a permit that is not a submission on its way (a bug)")
