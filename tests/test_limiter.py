"""The slot limiter on fake time: slow start, ceiling, no wake-up on 500044, one probe."""

from __future__ import annotations

import anyio
import pytest

from pipeline.limiter import LimiterTiming, Permit, SlotLimiter
from tests.fake_time import FakeTime, wait_all_tasks_blocked

pytestmark = pytest.mark.anyio

TIMING = LimiterTiming(probe_first=1.0, probe_max=5.0, above_after=4, above_every=1000.0)


class Jobs:
    """Tasks waiting for permits; `granted` in the order they came."""

    def __init__(self, limiter: SlotLimiter, tg: anyio.abc.TaskGroup) -> None:
        self.limiter, self.tg = limiter, tg
        self.granted: list[Permit] = []

    def ask(self, count: int = 1) -> None:
        for _ in range(count):
            self.tg.start_soon(self._one)

    async def _one(self) -> None:
        self.granted.append(await self.limiter.acquire())

    async def settle(self) -> list[Permit]:
        await wait_all_tasks_blocked()
        return self.granted


def limiter_on(time: FakeTime, maximum: int, timing: LimiterTiming = TIMING) -> SlotLimiter:
    return SlotLimiter(maximum, timing, clock=time.clock, sleep=time.sleep)


def polled(limiter: SlotLimiter, permits: list[Permit]) -> None:
    """A poll saw each of these generations still running."""
    for permit in permits:
        limiter.seen_running(permit)


async def fill(limiter: SlotLimiter, running: int) -> list[Permit]:
    """Slow-start `running` accepted generations, one submission at a time."""
    permits = []
    for _ in range(running):
        permit = await limiter.acquire()
        limiter.accepted(permit)
        permits.append(permit)
    return permits


async def test_slow_start_one_submission_then_one_more_per_acceptance() -> None:
    time = FakeTime()
    limiter = limiter_on(time, 4)
    async with anyio.create_task_group() as tg:
        jobs = Jobs(limiter, tg)
        jobs.ask(6)
        assert len(await jobs.settle()) == 1  # not 4 at once: the account's limit is unknown
        limiter.accepted(jobs.granted[0])
        assert len(await jobs.settle()) == 2
        limiter.accepted(jobs.granted[1])
        limiter.accepted((await jobs.settle())[2])
        limiter.accepted((await jobs.settle())[3])
        assert len(await jobs.settle()) == 4  # --concurrency reached: the rest wait
        limiter.release(jobs.granted[0])  # a generation ended: refilled at once
        assert len(await jobs.settle()) == 5
        tg.cancel_scope.cancel()
    assert limiter.ceiling is None
    assert limiter.peak == 4


async def test_a_refusal_wakes_no_waiter_and_sets_the_ceiling() -> None:
    time = FakeTime()
    limiter = limiter_on(time, 5)
    await fill(limiter, 2)
    third = await limiter.acquire()
    async with anyio.create_task_group() as tg:
        jobs = Jobs(limiter, tg)
        jobs.ask(3)
        assert await jobs.settle() == []
        limiter.rejected(third)  # 500044 with two running: the account allows two
        await time.advance(60.0)
        assert await jobs.settle() == []  # nobody re-sent: not at once, not after a backoff
        assert limiter.ceiling == 2
        assert not limiter.refusing
        assert time.slept == []  # our own limit: nothing to probe
        tg.cancel_scope.cancel()
    assert limiter.rejections == 1


async def test_someone_elses_load_keeps_the_ceiling_and_probes_one_at_a_time() -> None:
    time = FakeTime()
    limiter = limiter_on(time, 5)
    running = await fill(limiter, 3)
    limiter.rejected(await limiter.acquire())
    polled(limiter, running)  # all three were really running when the account refused
    assert limiter.ceiling == 3
    for permit in running:
        limiter.release(permit)  # our generations end; someone else takes every slot
    refused = await limiter.acquire()
    limiter.rejected(refused)  # 500044 holding none: not our limit
    assert limiter.ceiling == 3
    assert limiter.refusing
    async with anyio.create_task_group() as tg:
        jobs = Jobs(limiter, tg)
        jobs.ask(6)
        assert await jobs.settle() == []  # no one at once
        await time.advance(1.0)
        probes = await jobs.settle()
        assert len(probes) == 1  # one probe, the others wait
        assert probes[0].probe
        limiter.rejected(probes[0])
        await time.advance(1.0)
        assert len(await jobs.settle()) == 1  # backed off: 2 s now
        await time.advance(1.0)
        assert len(await jobs.settle()) == 2
        limiter.rejected(jobs.granted[1])
        await time.advance(4.0)
        limiter.rejected((await jobs.settle())[2])
        await time.advance(5.0)  # grown to probe_max (the poll interval), no further
        limiter.accepted((await jobs.settle())[3])  # the account took one: slow start again
        assert not limiter.refusing
        assert len(await jobs.settle()) == 5  # one more per acceptance, not all at once
        tg.cancel_scope.cancel()
    assert [s for s in time.slept if s > 0] == [1.0, 2.0, 4.0, 5.0]
    assert limiter.ceiling == 3  # someone else's load never lowered it
    assert limiter.rejections == 5


async def test_a_release_while_refusing_lets_one_job_in() -> None:
    time = FakeTime()
    limiter = limiter_on(time, 5)
    running = await fill(limiter, 3)
    limiter.rejected(await limiter.acquire())  # ceiling 3
    polled(limiter, running)
    limiter.release(running[0])
    limiter.rejected(await limiter.acquire())  # refused at 2 < 3: someone else took it
    assert limiter.refusing
    async with anyio.create_task_group() as tg:
        jobs = Jobs(limiter, tg)
        jobs.ask(3)
        assert await jobs.settle() == []
        limiter.release(running[1])  # one of ours ended: its slot is ours to reuse
        granted = await jobs.settle()
        assert len(granted) == 1
        assert not granted[0].probe
        tg.cancel_scope.cancel()


async def test_above_the_ceiling_rarely_and_less_often_after_each_refusal() -> None:
    time = FakeTime()
    limiter = limiter_on(time, 4)
    permits = await fill(limiter, 2)
    limiter.rejected(await limiter.acquire())
    polled(limiter, permits)
    assert limiter.ceiling == 2

    async def finish_one() -> Permit:
        """A generation at the ceiling ends; its replacement is sent and accepted."""
        limiter.release(permits.pop(0))
        permit = await limiter.acquire()
        limiter.accepted(permit)
        permits.append(permit)
        polled(limiter, permits)
        return permit

    for _ in range(TIMING.above_after - 1):
        await finish_one()
        assert await try_acquire(limiter) is None
    await finish_one()
    above = await try_acquire(limiter)  # the 4th finish at the ceiling: one try above it
    assert above is not None
    assert above.above
    assert await try_acquire(limiter) is None  # one at a time
    limiter.rejected(above)
    assert limiter.ceiling == 2
    for _ in range(2 * TIMING.above_after - 1):
        await finish_one()
        assert await try_acquire(limiter) is None  # not yet: the interval doubled
    await finish_one()
    second = await try_acquire(limiter)
    assert second is not None
    assert second.above
    limiter.accepted(second)  # the account took a third ...
    assert limiter.ceiling == 2  # ... if the other two were still running then
    polled(limiter, permits)
    assert limiter.ceiling == 3
    assert limiter.rejections == 2


class AtCeiling:
    """Generations at the ceiling: each `turn` ends the oldest and sends its replacement."""

    def __init__(self, limiter: SlotLimiter, permits: list[Permit]) -> None:
        self.limiter, self.permits = limiter, permits

    @classmethod
    async def learned(cls, maximum: int, timing: LimiterTiming) -> AtCeiling:
        """Two accepted, the third refused: a ceiling of 2, both seen running after it."""
        limiter = SlotLimiter(maximum, timing)
        permits = await fill(limiter, 2)
        limiter.rejected(await limiter.acquire())
        polled(limiter, permits)
        return cls(limiter, permits)

    async def turn(self) -> None:
        self.limiter.release(self.permits.pop(0))
        permit = await self.limiter.acquire()
        self.limiter.accepted(permit)
        self.permits.append(permit)
        polled(self.limiter, self.permits)

    async def turns_until_a_try_above(self, most: int) -> int:
        """Finishes until one try above the ceiling is granted (held, not answered yet)."""
        for count in range(1, most + 1):
            await self.turn()
            above = await try_acquire(self.limiter)
            if above is not None:
                assert above.above
                self.above = above
                return count
        raise AssertionError(f"no try above the ceiling in {most} finishes")


async def test_a_first_ceiling_is_provisional_and_tried_again_on_a_short_beat_until_confirmed() -> (
    None
):
    """R1: a refusal may come from someone else holding slots for a moment, so one refusal
    is not the account's limit: it is tried again every `provisional_turns` turnovers until
    `confirm_tries` tries were refused; then rarely, every refusal doubling the interval."""
    timing = LimiterTiming(above_after=20, above_every=1e9, provisional_turns=3, confirm_tries=2)
    slots = await AtCeiling.learned(5, timing)
    limiter = slots.limiter
    assert (limiter.ceiling, limiter.provisional) == (2, True)
    assert await slots.turns_until_a_try_above(50) == 6  # 3 turnovers of 2 slots
    limiter.rejected(slots.above)
    assert (limiter.ceiling, limiter.provisional) == (2, True)  # once is not yet the limit
    assert await slots.turns_until_a_try_above(50) == 6  # the same beat, not doubled
    limiter.rejected(slots.above)
    assert (limiter.ceiling, limiter.provisional) == (2, False)  # came back: the account's
    # rare from now on: above_after doubled by each of the two refusals
    assert await slots.turns_until_a_try_above(200) == 80
    assert limiter.rejections == 3


async def test_an_accepted_try_above_climbs_again_one_more_per_acceptance() -> None:
    """The ceiling was someone else's load: the next tries do not wait another interval each."""
    slots = await AtCeiling.learned(5, LimiterTiming(above_after=4, above_every=1e9))
    limiter = slots.limiter
    await slots.turns_until_a_try_above(10)
    async with anyio.create_task_group() as tg:
        jobs = Jobs(limiter, tg)
        jobs.ask(5)
        limiter.accepted(slots.above)  # the account took a third
        assert len(await jobs.settle()) == 1  # slow start again: one more ...
        limiter.accepted(jobs.granted[0])
        assert len(await jobs.settle()) == 2  # ... per acceptance
        limiter.accepted(jobs.granted[1])
        assert len(await jobs.settle()) == 2  # --concurrency 5 reached
        assert limiter.held == 5
        tg.cancel_scope.cancel()
    assert limiter.rejections == 1


async def test_a_refusal_in_the_climb_sets_the_ceiling_never_below_the_old_one() -> None:
    slots = await AtCeiling.learned(6, LimiterTiming(above_after=1, above_every=1e9))
    limiter = slots.limiter
    await slots.turns_until_a_try_above(5)
    limiter.accepted(slots.above)
    climbing = await limiter.acquire()  # granted at once: the climb
    limiter.accepted(climbing)
    refused = await limiter.acquire()
    limiter.rejected(refused)  # 500044 with 4 running: the account's limit, as far as known
    assert (limiter.ceiling, limiter.provisional) == (4, True)
    assert limiter.limit == 4
    for permit in [*slots.permits, slots.above]:
        limiter.release(permit)  # seen ended, never seen running after the refusal
    assert limiter.ceiling == 2  # counted low, but not below what the account took before
    assert limiter.limit == 2
    assert await try_acquire(limiter) is not None  # one running of two: room for one more


async def test_a_generation_seen_ended_after_a_refusal_is_not_counted() -> None:
    """A generation may end unseen between polls: counted at a 500044, it would make the
    ceiling too high, and every later refusal would read as someone else's load."""
    limiter = SlotLimiter(6)
    running = await fill(limiter, 3)
    limiter.rejected(await limiter.acquire())  # 3 running, as far as this run knows
    assert limiter.ceiling == 3
    polled(limiter, running[:2])
    limiter.release(running[2])  # seen ended first: maybe before the refusal
    assert limiter.ceiling == 2
    limiter.seen_running(running[0])
    assert limiter.ceiling == 2  # settled: later polls change nothing


async def test_an_acceptance_above_the_ceiling_counts_only_generations_seen_running() -> None:
    limiter = SlotLimiter(6, LimiterTiming(above_after=1, above_every=1000.0))
    running = await fill(limiter, 2)
    limiter.rejected(await limiter.acquire())
    polled(limiter, running)
    limiter.release(running.pop())  # one finished at the ceiling: one try above it is due
    replacement = await limiter.acquire()
    limiter.accepted(replacement)
    running.append(replacement)
    above = await try_acquire(limiter)
    assert above is not None
    assert above.above
    limiter.accepted(above)  # three accepted, as far as this run knows ...
    limiter.release(running[0])  # ... but one is seen ended first: maybe before the answer
    limiter.seen_running(running[1])
    assert limiter.ceiling == 2


async def try_acquire(limiter: SlotLimiter) -> Permit | None:
    """A permit if one is granted without anything else happening, else None."""
    got: list[Permit] = []

    async def one() -> None:
        got.append(await limiter.acquire())

    async with anyio.create_task_group() as tg:
        tg.start_soon(one)
        await wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    return got[0] if got else None


async def test_adopting_a_running_generation_never_waits() -> None:
    limiter = SlotLimiter(1)
    adopted = [limiter.adopt() for _ in range(3)]  # more than --concurrency ran before
    assert limiter.running == 3
    async with anyio.create_task_group() as tg:
        jobs = Jobs(limiter, tg)
        jobs.ask(1)
        for permit in adopted:
            assert await jobs.settle() == []
            limiter.release(permit)
        assert len(await jobs.settle()) == 1
        tg.cancel_scope.cancel()


async def test_releasing_twice_counts_once_and_cancelled_waiters_leave() -> None:
    limiter = SlotLimiter(1)
    permit = await limiter.acquire()
    with anyio.move_on_after(0.01):
        await limiter.acquire()  # gives up waiting
    limiter.release(permit)
    limiter.release(permit)
    assert limiter.held == 0
    again = await limiter.acquire()
    assert limiter.held == 1
    limiter.release(again)
