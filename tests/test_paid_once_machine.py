"""Paid once, whatever happens in whatever order: a hypothesis state machine (issue 5, section 4).

The real runner and client against the simulator (in a thread) over loopback. Hypothesis
picks a sequence of: a lost generate reply (the gateway processed it, the socket closed), a
reply held back after the generation started, an account limit below the run's (500044),
proxy errors, a run cancelled at a random moment (a crash: what a cancelled task leaves is what
a killed process leaves, as every state change is committed before the next request), and a
run to the end (submit, poll, download). The gateway replays trace ids, or (drawn once per
example) does not. After every step: no input was generated twice, every paid job points at a
generation of its own inputs, every finished mp4 is the bytes served. At the end, with the
faults cleared, one more run leaves every job done (or, without replay, parked unconfirmed),
each generated exactly once (a parked one at most once: it may have died before sending).

Examples: 6 fixed ones in `make test` (`FAST`); `make reliability` runs 100 random ones
(`FULL`, with PAID_ONCE_EXAMPLES=full).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from pipeline.jobstate import JobState
from pipeline.state import JobRecord, StateStore
from tests.harness import STATE_NAME, fast_sim, project, run_once, sim_in_thread, tts_manifest

JOBS = 4
TIME_SCALE = 0.005  # fast_sim's
REQUEST_TIMEOUT = 0.5  # a silent send is re-sent 0.55 s after it left
# every hold is shorter than the request timeout: the contract's gateway answers within it
HOLDS = (0.3, 0.15, 0.0)
# crashes land anywhere in a run: before, during and after the first sends
CRASH_AFTER = (0.2, 0.1, 0.3, 0.4, 0.05, 0.6, 0.8)

# Real time is part of each step (crashes land after so many seconds), so a failing example is
# reported as found, not shrunk; and no example database is written into the checkout.
_COMMON = settings(
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
# make test: the same few examples every time (derandomized), a few seconds
FAST = settings(_COMMON, max_examples=6, stateful_step_count=5, derandomize=True)
FULL = settings(_COMMON, max_examples=100, stateful_step_count=10)  # make reliability


class PaidOnce(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._stack = ExitStack()
        self.tmp = Path(tempfile.mkdtemp(prefix="paid-once-"))
        self._stack.callback(shutil.rmtree, self.tmp, ignore_errors=True)
        self.manifest = project(self.tmp, tts_manifest(JOBS))
        self.out = self.tmp / "out"
        self.config = fast_sim(concurrency_limit=3, seed=3)
        self.sim = self._stack.enter_context(sim_in_thread(self.config))
        self.replays = True
        self.runs = 0

    @initialize(replays=st.booleans())
    def gateway(self, replays: bool) -> None:
        """A gateway that replays trace ids (the contract), or one that does not."""
        self.replays = replays
        self.config.reply_cache = replays

    def _faults(self, hold: float, lost: int, limit: int, proxy: int) -> None:
        config = self.config
        config.generate_reply_seconds = hold / TIME_SCALE  # delayed replies
        config.drop_generate_replies = lost  # processed, then the socket closed
        config.concurrency_limit = limit  # below the run's 3: 500044 until it learns
        config.transient_errors = proxy  # 500069 from a proxy, retried

    @rule(
        after=st.sampled_from(CRASH_AFTER),
        hold=st.sampled_from(HOLDS),
        lost=st.integers(0, 2),
        limit=st.integers(1, 3),
        proxy=st.integers(0, 2),
    )
    def crash(self, after: float, hold: float, lost: int, limit: int, proxy: int) -> None:
        """A run cancelled `after` seconds in, wherever it is (the next run resumes it)."""
        self._faults(hold, lost, limit, proxy)

        async def go() -> None:
            with anyio.move_on_after(after):
                await self._run()

        anyio.run(go)

    @rule(
        hold=st.sampled_from(HOLDS),
        lost=st.integers(0, 2),
        limit=st.integers(1, 3),
        proxy=st.integers(0, 2),
    )
    def run(self, hold: float, lost: int, limit: int, proxy: int) -> None:
        """A run to its end: submit, poll, download, or stop where the faults leave it."""
        self._faults(hold, lost, limit, proxy)

        async def go() -> None:
            with anyio.fail_after(60):
                await self._run()

        anyio.run(go)

    async def _run(self) -> None:
        self.runs += 1
        await run_once(
            self.sim,
            self.manifest,
            self.out,
            request_timeout=REQUEST_TIMEOUT,
            concurrency=3,
        )

    # the promise --------------------------------------------------------------------------

    @invariant()
    def paid_once(self) -> None:
        per_input = Counter(self.sim.ledger.generations_per_inputs())
        assert all(n == 1 for n in per_input.values()), per_input
        generations = self.sim.ledger.generations
        for record in self._records():
            if record.state in (JobState.GENERATING, JobState.DOWNLOADING, JobState.DONE):
                assert record.video_id in generations, record
                script = generations[record.video_id].body["lip_sync_tts_content"]
                assert script == f"line {record.id.removeprefix('job-')}", record
            if record.state is JobState.DONE:
                data = Path(str(record.output)).read_bytes()
                served = self.sim.ledger.served_downloads[record.video_id or 0]
                assert hashlib.sha256(data).hexdigest() == served, record

    def teardown(self) -> None:
        try:
            if self.runs:
                self._finish()
        finally:
            self._stack.close()

    def _finish(self) -> None:
        """Faults off, the account back to 3: one more run ends everything."""
        self._faults(hold=0.0, lost=0, limit=3, proxy=0)

        async def go() -> None:
            with anyio.fail_after(60):
                await self._run()

        anyio.run(go)
        self.paid_once()
        states = Counter(r.state for r in self._records())
        allowed = {JobState.DONE} if self.replays else {JobState.DONE, JobState.UNCONFIRMED}
        assert set(states) <= allowed, states
        if self.replays:
            assert len(self.sim.ledger.generations) == JOBS  # each exactly once (paid_once)

    def _records(self) -> list[JobRecord]:
        if not (self.out / STATE_NAME).exists():
            return []
        store = StateStore.read_only(self.out / STATE_NAME)
        try:
            return store.jobs()
        finally:
            store.close()


PaidOnce.TestCase.settings = FULL if os.environ.get("PAID_ONCE_EXAMPLES") == "full" else FAST


@pytest.mark.timeout(900)
# A run cancelled mid-download leaves its `.part` file object to the garbage collector (the
# cancelled `aiofiles` close never runs): reported as a defect, harmless to this promise.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_paid_once_whatever_the_order() -> None:
    PaidOnce.TestCase().runTest()
