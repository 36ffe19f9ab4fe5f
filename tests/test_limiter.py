"""The AIMD slot limiter."""

from __future__ import annotations

import anyio
import pytest

from pipeline.limiter import SlotLimiter

pytestmark = pytest.mark.anyio


async def test_acquire_blocks_at_the_limit_and_release_wakes() -> None:
    limiter = SlotLimiter(2)
    await limiter.acquire()
    await limiter.acquire()
    got_third = anyio.Event()

    async def third() -> None:
        await limiter.acquire()
        got_third.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(third)
        await anyio.sleep(0.01)
        assert not got_third.is_set()
        limiter.release()
        with anyio.fail_after(1):
            await got_third.wait()
    assert limiter.held == 2
    assert limiter.peak == 2


async def test_rejection_shrinks_to_what_ran_and_finishing_grows_back() -> None:
    limiter = SlotLimiter(5)
    for _ in range(4):
        await limiter.acquire()
    limiter.on_rejected()  # 4 held when the 4th submission was refused: the account allows 3
    assert limiter.limit == 3
    limiter.release()
    assert limiter.held == 3
    # the next acquire must wait until a generation finishes
    with anyio.move_on_after(0.02) as scope:
        await limiter.acquire()
    assert scope.cancelled_caught
    steps = 0
    while limiter.limit < 5:
        limiter.on_finished()
        steps += 1
    assert steps >= 3  # additive: about `limit` completions per extra slot
    assert limiter.limit == 5


async def test_rejection_never_goes_below_one() -> None:
    limiter = SlotLimiter(3)
    await limiter.acquire()
    limiter.on_rejected()
    assert limiter.limit == 1
    limiter.release()
    await limiter.acquire()  # progress stays possible
    assert limiter.held == 1


async def test_wait_for_change_returns_on_release_or_timeout() -> None:
    limiter = SlotLimiter(1)
    await limiter.acquire()
    with anyio.fail_after(1):
        await limiter.wait_for_change(0.01)  # times out quietly

    async def release_soon() -> None:
        await anyio.sleep(0.01)
        limiter.release()

    async with anyio.create_task_group() as tg:
        tg.start_soon(release_soon)
        with anyio.fail_after(1):
            await limiter.wait_for_change(30)
    assert limiter.held == 0


def test_release_without_acquire_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        SlotLimiter(1).release()
