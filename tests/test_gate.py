"""The overload gate on fake time: one probe per backoff step, the others waiting in turn."""

from __future__ import annotations

import anyio
import anyio.abc
import pytest

from pipeline.errors import OverloadedError
from pipeline.gate import OverloadGate, Pass, gate_waited
from pipeline.retry import RetryPolicy
from tests.fake_time import FakeTime, wait_all_tasks_blocked

pytestmark = pytest.mark.anyio

# steps: the n-th refusal in a row waits between half and all of 1, 2, 4, 8 ... 8 s
POLICY = RetryPolicy(attempts=3, max_elapsed=20.0, initial_wait=1.0, max_wait=8.0)


class Requests:
    """Tasks asking the gate; `admitted` in the order they got through."""

    def __init__(self, gate: OverloadGate, tg: anyio.abc.TaskGroup) -> None:
        self.gate, self.tg = gate, tg
        self.admitted: list[tuple[str, Pass]] = []
        self.overloaded: list[str] = []
        self.waited: dict[str, float] = {}

    def ask(self, *names: str) -> None:
        for name in names:
            self.tg.start_soon(self._one, name)

    async def _one(self, name: str) -> None:
        try:
            entry = await self.gate.admit()
        except OverloadedError:
            self.overloaded.append(name)
            return
        self.waited[name] = gate_waited()
        self.admitted.append((name, entry))

    def names(self) -> list[str]:
        return [name for name, _ in self.admitted]

    def take(self, name: str) -> Pass:
        return next(entry for n, entry in self.admitted if n == name)


def closed_gate(time: FakeTime, policy: RetryPolicy = POLICY) -> OverloadGate:
    """A gate whose first request was just refused (500069 or 429)."""
    gate = OverloadGate(policy, sleep=time.sleep, clock=time.clock)
    gate.refused(Pass(0), None)
    return gate


async def test_an_open_gate_lets_every_request_through_at_once() -> None:
    time = FakeTime()
    gate = OverloadGate(POLICY, sleep=time.sleep, clock=time.clock)
    async with anyio.create_task_group() as tg:
        requests = Requests(gate, tg)
        requests.ask("a", "b", "c")
        await wait_all_tasks_blocked()
    assert requests.names() == ["a", "b", "c"]
    assert not any(entry.probe for _, entry in requests.admitted)
    assert time.slept == []


async def test_after_a_refusal_one_probe_goes_out_per_step_and_its_answer_opens_for_all() -> None:
    time = FakeTime()
    gate = closed_gate(time)
    async with anyio.create_task_group() as tg:
        requests = Requests(gate, tg)
        requests.ask("a", "b", "c")
        await time.advance(0.49)  # the first step lasts at least half of 1 s
        assert requests.names() == []
        await time.advance(0.51)
        assert requests.names() == ["a"]  # the first to come, alone
        assert requests.take("a").probe
        gate.answered(requests.take("a"))
        await wait_all_tasks_blocked()
    assert requests.names() == ["a", "b", "c"]  # the others at once, none a probe
    assert not gate.closed
    assert requests.waited == {"a": 1.0, "b": 1.0, "c": 1.0}  # waiting is counted


async def test_a_refused_probe_waits_behind_the_others_and_the_next_step_is_longer() -> None:
    time = FakeTime()
    gate = closed_gate(time)
    async with anyio.create_task_group() as tg:
        requests = Requests(gate, tg)
        requests.ask("a", "b")
        await time.advance(1.0)
        gate.refused(requests.take("a"), None)  # the probe is refused too
        requests.ask("a again")
        await time.advance(0.99)  # the second step lasts at least half of 2 s
        assert requests.names() == ["a"]
        await time.advance(1.01)
        assert requests.names() == ["a", "b"]  # b's turn: the probes take turns
        gate.answered(requests.take("b"))
        await wait_all_tasks_blocked()
    assert requests.names() == ["a", "b", "a again"]


async def test_refusals_of_requests_already_under_way_do_not_lengthen_the_step() -> None:
    time = FakeTime()
    gate = OverloadGate(POLICY, sleep=time.sleep, clock=time.clock)
    under_way = [await gate.admit() for _ in range(4)]  # sent before the overload began
    for entry in under_way:
        gate.refused(entry, None)  # one counted, the three others were sent before it
    async with anyio.create_task_group() as tg:
        requests = Requests(gate, tg)
        requests.ask("a")
        await time.advance(1.0)  # a first step (four in a row would be 4-8 s)
        assert requests.names() == ["a"]
        gate.answered(requests.take("a"))


async def test_retry_after_raises_the_step() -> None:
    time = FakeTime()
    gate = OverloadGate(POLICY, sleep=time.sleep, clock=time.clock)
    gate.refused(await gate.admit(), 30.0)
    async with anyio.create_task_group() as tg:
        requests = Requests(gate, tg)
        requests.ask("a")
        await time.advance(29.9)
        assert requests.names() == []
        await time.advance(0.1)
        assert requests.names() == ["a"]
        gate.answered(requests.take("a"))


async def test_a_sustained_overload_trips_the_gate_and_requests_fail_at_once() -> None:
    """`attempts` (3) refusals in a row over `max_elapsed` (20 s): what one call bears. Then
    nothing waits: a request fails at once, unsent, but one probe per step still goes out."""
    time = FakeTime()
    gate = closed_gate(time)
    async with anyio.create_task_group() as tg:
        requests = Requests(gate, tg)
        for n in range(2):
            requests.ask(f"probe {n}")
            await time.advance(8.0)
            gate.refused(requests.take(f"probe {n}"), None)  # 3 in a row by now, 16 s
        await time.advance(4.0)  # 20 s closed; the third step (2-4 s) passed too
        requests.ask("probe 2", "c")
        await wait_all_tasks_blocked()
        assert requests.names() == ["probe 0", "probe 1", "probe 2"]
        assert requests.overloaded == ["c"]  # not sent, at once
        gate.refused(requests.take("probe 2"), None)
        requests.ask("d")
        await wait_all_tasks_blocked()
        assert requests.overloaded == ["c", "d"]  # the next step has not passed
        await time.advance(8.0)
        requests.ask("probe 3")
        await wait_all_tasks_blocked()
        gate.answered(requests.take("probe 3"))  # the API answers again: open
        requests.ask("e")
        await wait_all_tasks_blocked()
    assert requests.names()[-2:] == ["probe 3", "e"]
    assert not gate.closed


async def test_a_probe_cancelled_on_its_way_hands_the_turn_on() -> None:
    time = FakeTime()
    gate = closed_gate(time)
    async with anyio.create_task_group() as tg:
        requests = Requests(gate, tg)
        requests.ask("a", "b")
        await time.advance(1.0)
        gate.abandon(requests.take("a"))  # never sent (its task was cancelled)
        await wait_all_tasks_blocked()
        assert requests.names() == ["a", "b"]
        assert requests.take("b").probe
        gate.answered(requests.take("b"))
