"""Submitting a paid generation exactly once: when a trace id is sent, re-sent or replaced.

The rules (pixverse-api.md, "Trace-id semantics"):

* Intent first. Before every send, the trace id's send time, the moment until which that send
  may still be processed (`resend_after`: send time + request timeout + a margin) and the key's
  fingerprint are committed, so a run that dies anywhere finds them.
* No race. A send with no reply (timeout, reset, or a run that died) may still be processed:
  its trace id is re-sent only after `resend_after`. The gateway records a reply only when the
  first request finishes and treats an earlier duplicate as new: a second charge, or a 500044
  because the first holds the slot (which proves nothing). The job holds no slot while it waits.
  The deadline is kept on two clocks (`resend_wait`): the wall clock, and CLOCK_BOOTTIME with
  the boot's id, which no NTP step moves and which outlives the process; within the boot that
  sent, both must have passed it. After a reboot (another boot id) only the wall clock is left.
* A reply to a send made after every earlier send's deadline is definitive (the replay of the
  first): a video id means generating; 500044 or a 4xx rejection means a new trace id next
  time. A "busy" reply to an id that may have been processed is re-sent with the same id,
  because a proxy in front of the gateway can answer busy without asking it; `PINNED_BUSY`
  busy answers in a row lasting `pinned_busy_after` seconds are the gateway's own, pinned
  replay: the id is replaced. An HTTP 429 (a rate limiter) never counts; a refused connection
  sent nothing, so it is not ambiguous at all. The next send after a busy reply waits at the
  client's overload gate (`pipeline.gate`), which paces every request of the key; the wait
  comes before the send facts are written, so the deadline counts from the real send, and it
  is no try.
* A gateway that does not replay (the probe of `pipeline.replay` says so) makes a re-send a
  new paid request: an unanswered send is never re-sent automatically. A re-send relies on a
  verdict probed in the same run (a recorded one may have gone stale). The job is parked as
  UNCONFIRMED (trace id, time sent, what to do) until the user decides (`--redo ID`).
* The replay is per API key: a submission is only ever re-sent with the key that sent it
  (the runner leaves another key's jobs alone; see `foreign_key`).
* A send set aside while its outcome was unknown (archived: its job's inputs changed, `--redo`,
  its job left the manifest; `unanswered_send`) may have been paid for: it is still re-sent,
  as it was (the body saved with each send, its key, after its deadline), so the gateway's
  replay gives its video. It never gets a new trace id: a definitive refusal ends it, nothing
  having been paid.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import anyio

from pipeline.client import PixverseClient, Submission, new_trace_id
from pipeline.errors import (
    ApiError,
    FatalError,
    JobError,
    NotSentError,
    ServerBusyError,
    TransientError,
    TransportError,
)
from pipeline.gate import Pass
from pipeline.jobstate import JobState
from pipeline.replay import probe_replay
from pipeline.retry import Sleep, backoff
from pipeline.state import JobRecord, StateStore

log = logging.getLogger("pipeline.submit")

PINNED_BUSY = 3  # busy replies in a row to a possibly-processed id before it is replaced
# The gateway's replay is re-probed after this long (the contract's replay window is 24 h).
REPLAY_CHECK_MAX_AGE = 24 * 3600.0
# The gateway replays a trace id's reply for 24 h (pixverse-api.md): a re-send later than this
# after the id's first send could be a new paid request, so it is never made automatically.
REPLAY_WINDOW_SAFE = 23 * 3600.0
# A silent send counts as over after the request timeout plus this share of it: room for the
# server to finish a request whose client gave up (clock steps, a slow gateway).
RESEND_MARGIN = 0.1


# the kernel's id of this boot (random, new at every boot): names the CLOCK_BOOTTIME a
# deadline was read on (proc(5))
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class BootTime:
    """A moment on this boot's CLOCK_BOOTTIME: it never steps (an NTP step, a board without an
    RTC setting its clock late) and counts suspend, and it runs on across process restarts
    within one boot, which `boot_id` names."""

    boot_id: str
    seconds: float


BootClock = Callable[[], "BootTime | None"]


def boot_time() -> BootTime | None:
    """Now on CLOCK_BOOTTIME with the boot's id; None where either is missing (not Linux)."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    boot_id = _boot_id()
    if clock is None or boot_id is None:
        return None
    return BootTime(boot_id, time.clock_gettime(clock))


@functools.cache
def _boot_id() -> str | None:
    try:
        return BOOT_ID.read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeError):
        return None


def resend_wait(record: JobRecord, now: float, boot: BootTime | None) -> float:
    """Seconds until the unanswered send of `record` is surely over (<= 0: it is). `now` is
    the wall clock, `boot` this boot's clock (None: unknown). In the boot that sent, the
    deadline must have passed on both: a wall clock stepped forward after a crash would
    otherwise re-send into a send still in processing (review 4, F4). A record of another
    boot, or from a file older than migration 0010, has only the wall clock's deadline."""
    if record.resend_after is None:
        return 0.0
    wait = record.resend_after - now
    if boot is not None and record.resend_after_boot is not None and record.boot_id == boot.boot_id:
        wait = max(wait, record.resend_after_boot - boot.seconds)
    return wait


class Slot(Protocol):
    """A job's generation slot, as the runner keeps it."""

    @property
    def held(self) -> bool: ...

    async def acquire(self) -> None: ...

    def release(self) -> None: ...


@dataclass
class SubmitTries:
    """One job's submission tries in this run (in memory: a new run starts afresh)."""

    failures: int = 0  # sends that ended in no reply or a busy reply
    busy_in_row: int = 0  # busy replies in a row to a possibly-processed trace id
    busy_first_at: float | None = None  # when the first of them came
    first_at: float | None = None
    gate_waited: float = 0.0  # seconds its sends waited at the overload gate (no tries)


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def unconfirmed_advice(record: JobRecord, *, window_passed: bool = False) -> str:
    sent = iso(record.sent_at) if record.sent_at is not None else "an unknown time"
    why = (
        "the gateway's 24 h replay window has passed since"
        if window_passed
        else "this gateway does not replay trace ids"
    )
    then = (
        # set aside (its job edited, removed or redone): no job will send it again
        "; it was set aside, nothing more is sent for it"
        if record.archived
        else f"; to submit again, run with --redo {record.id}"
    )
    return (
        f"unconfirmed: trace id {record.trace_id} was sent at {sent} and no reply came; {why},"
        " so it is not re-sent (that could pay twice)."
        f" Check the PixVerse console for a lip-sync video created then{then}"
    )


def describe_wait(record: JobRecord, now: float, boot: BootClock = boot_time) -> str | None:
    """For `status`: what an unanswered submission is waiting for, or None."""
    if record.state is not JobState.SUBMITTING or record.resend_after is None:
        return None
    sent = iso(record.sent_at) if record.sent_at is not None else "?"
    wait = resend_wait(record, now, boot())
    if wait > 0:
        return (
            f"no reply to trace id {record.trace_id} sent {sent}; it may still be in"
            f" processing: re-sent with the same id after {iso(now + wait)}"
        )
    return f"no reply to trace id {record.trace_id} sent {sent}; re-sent by the next run"


def unanswered_send(record: JobRecord) -> bool:
    """A submission whose trace id may have been processed unseen: paid for, perhaps."""
    return record.state is JobState.SUBMITTING and (record.trace_ambiguous or record.awaiting_reply)


def set_aside_pending(records: Iterable[JobRecord]) -> list[JobRecord]:
    """The archived records (after an edit, a removal or `--redo`) a run still works on
    first (`runner.execute`): a paid video still generating or to be fetched, or a send that
    may have been processed unseen, re-sent with its own trace id and key. `status` counts
    them as unfinished; `--dry-run` shows them."""
    out = (JobState.GENERATING, JobState.DOWNLOADING)
    return [r for r in records if r.archived and (r.state in out or unanswered_send(r))]


def foreign_key(record: JobRecord, key_fp: str) -> bool:
    """Was `record` submitted (or maybe submitted) with a key other than `key_fp`'s? A trace id
    that never left belongs to no key yet."""
    if record.key_fp is None or record.key_fp == key_fp:
        return False
    never_sent = record.sent_at is None and not record.trace_ambiguous
    return not (record.state is JobState.SUBMITTING and never_sent)


@dataclass
class Submitter:
    store: StateStore
    client: PixverseClient
    sleep: Sleep
    wall: Callable[[], float]
    # a "busy" reply to a possibly-processed id counts as the gateway's pinned replay only once
    # busy replies to it have lasted this long (a proxy's passing busy must not make us pay)
    pinned_busy_after: float = 5.0
    boot: BootClock = boot_time  # the deadline's second clock (`resend_wait`)
    replays: bool | None = None  # the gateway's replay, as last probed (None: not known)
    _probed: bool = False  # probed in this run: fresh enough to re-send on
    # the probe failed in this run: nothing more is sent, and it is not tried again
    probe_failed: TransientError | None = None
    _probe_lock: anyio.Lock = field(default_factory=anyio.Lock)

    @property
    def key_fp(self) -> str:
        return self.client.config.key_fingerprint

    def foreign_key(self, record: JobRecord) -> bool:
        """Submitted (or maybe submitted) with another API key: not ours to send or poll."""
        return foreign_key(record, self.key_fp)

    def resumed(self, record: JobRecord) -> JobRecord:
        """A SUBMITTING job found at the start of a run: an unanswered send is ambiguous."""
        if record.awaiting_reply:
            return self._no_reply(record, "resumed: the last send got no reply")
        return record

    async def verdict(self, *, fresh: bool) -> bool:
        """Whether the gateway replays a re-used trace id for this base URL and key. `fresh`:
        probed in this run (what a re-send of a possibly-processed id relies on: a verdict from
        earlier may have gone stale). Otherwise a verdict recorded in the last
        REPLAY_CHECK_MAX_AGE will do. Raises TransientError when the probe cannot run: never
        assumed either way."""
        async with self._probe_lock:
            if self.probe_failed is not None:
                raise self.probe_failed  # once a run: no probe storm into an outage
            if self._probed or (not fresh and self.replays is not None):
                assert self.replays is not None
                return self.replays
            base_url = self.client.config.base_url
            known = None if fresh else self.store.gateway_check(base_url, self.key_fp)
            if known is not None and self.wall() - known[2] < REPLAY_CHECK_MAX_AGE:
                self.replays = known[0]
                return known[0]
            try:
                found = await probe_replay(self.client)
            except FatalError:
                raise
            except ApiError as exc:  # transient, or the probe's upload refused: unknown
                self.probe_failed = TransientError(
                    f"cannot tell whether the gateway replays trace ids: {exc}"
                )
                raise self.probe_failed from exc
            self.store.save_gateway_check(base_url, self.key_fp, found.replays, found.detail)
            log.info("trace-id replay probe (key %s): %s", self.key_fp, found.detail)
            if not found.replays:
                log.warning(
                    "this gateway does not replay trace ids: a submission whose reply is lost"
                    " is parked as unconfirmed, never re-sent"
                )
            self.replays, self._probed = found.replays, True
            return found.replays

    async def step(
        self,
        record: JobRecord,
        body_for: Callable[[], Awaitable[Mapping[str, Any]]],
        slot: Slot,
        tries: SubmitTries,
        estimate: int | None = None,
    ) -> Submission | JobRecord:
        """One send of a SUBMITTING job (after waiting out an earlier silent send), saved
        with its body and `estimate` (credits, by the price model). Returns the accepted
        Submission, or the record to look at next (still SUBMITTING: send again;
        UNCONFIRMED: parked). Raises what the reply means otherwise (SlotLimitError,
        JobError, FatalError, ...); TransientError when this run has tried long enough or
        cannot tell whether a re-send is safe. An archived record (a send set aside) never
        gets a new trace id: a definitive refusal of its id raises JobError."""
        assert record.state is JobState.SUBMITTING
        assert record.trace_id is not None
        if record.trace_ambiguous or record.awaiting_reply:
            # a re-send of an id that may have been processed: safe only on a gateway that
            # replays, as probed in this run, and within its replay window
            if self._past_replay_window(record):
                return self._park(record, slot, unconfirmed_advice(record, window_passed=True))
            if not await self.verdict(fresh=True):
                return self._park(record, slot)
            await self._wait_out(record, slot)
        if not slot.held:
            await slot.acquire()
        try:
            body = await body_for()
        except JobError as exc:
            if record.trace_ambiguous:
                # failing it would let the next run start over with a new id: paid twice if
                # the first send was processed. It stays resumable.
                raise TransientError(
                    f"cannot re-send trace id {record.trace_id}: {exc}; left for the next run"
                ) from exc
            raise
        # the shared overload gate first (`pipeline.gate`): the deadline written next must
        # count from when the request really leaves, not from before a wait there
        entry = await self.client.admit()
        try:
            return await self._send(record, body, tries, estimate, entry, slot)
        finally:
            self.client.gate.abandon(entry)  # not sent after all: a no-op once told

    async def _send(
        self,
        record: JobRecord,
        body: Mapping[str, Any],
        tries: SubmitTries,
        estimate: int | None,
        entry: Pass,
        slot: Slot,
    ) -> Submission | JobRecord:
        """The send itself, its facts committed first; what its outcome means (see `step`)."""
        tries.gate_waited += entry.waited
        now, boot = self.wall(), self.boot()
        tries.first_at = now if tries.first_at is None else tries.first_at
        timeout = self.client.config.request_timeout * (1 + RESEND_MARGIN)
        before = record
        record = self.store.update(
            record.id,
            f"sending trace id {record.trace_id}",
            # the first send of this id: its generation, if any, started after this moment
            sent_at=now if record.sent_at is None else record.sent_at,
            resend_after=now + timeout,
            resend_after_boot=None if boot is None else boot.seconds + timeout,
            boot_id=None if boot is None else boot.boot_id,
            key_fp=self.key_fp,
            sent_body=json.dumps(dict(body), sort_keys=True, ensure_ascii=False),
            sent_estimate=estimate if estimate is not None else record.sent_estimate,
        )
        trace_id = record.trace_id
        assert trace_id is not None
        try:
            return await self.client.generate(body, trace_id, entry)
        except NotSentError as exc:
            # no connection was made: nothing can have been processed, nothing to wait for;
            # the send facts go back to what they were (an id that never left has no key)
            tries.failures += 1
            tries.busy_in_row, tries.busy_first_at = 0, None
            record = self.store.update(
                record.id,
                f"not sent: {exc}",
                resend_after=None,
                sent_at=before.sent_at,
                key_fp=before.key_fp,
            )
            self._give_up_if_tried_enough(record, tries, exc)
            await self.sleep(backoff(self.client.config.retry, tries.failures - 1))
            return record
        except TransportError as exc:
            tries.failures += 1
            tries.busy_in_row, tries.busy_first_at = 0, None
            record = self._no_reply(record, f"no reply: {exc}")
            log.info(
                "%s: no reply to trace id %s (%s); it may have been processed",
                record.id,
                trace_id,
                exc,
            )
            if not await self.verdict(fresh=True):
                return self._park(record, slot)
            self._give_up_if_tried_enough(record, tries, exc)
            return record
        except ServerBusyError as exc:
            tries.failures += 1
            return self._busy(record, tries, exc)
        except ApiError as exc:
            # an envelope came back (500044, a rejection, an account problem): the send is
            # over, so nothing is left to wait for; what it means is the caller's to decide
            self.store.update(record.id, f"reply: {exc}", resend_after=None)
            raise

    async def _wait_out(self, record: JobRecord, slot: Slot) -> None:
        now = self.wall()
        wait = resend_wait(record, now, self.boot())
        if wait <= 0:
            return
        if slot.held:
            slot.release()  # whether the first send holds an account slot is unknown
        log.info(
            "%s: trace id %s may still be in processing; re-sending it at %s (in %.1f s)",
            record.id,
            record.trace_id,
            iso(now + wait),
            wait,
        )
        await self.sleep(wait)

    def _busy(self, record: JobRecord, tries: SubmitTries, exc: ServerBusyError) -> JobRecord:
        """A "later" reply; the next send waits at the client's overload gate, which paces it
        (Retry-After included) with every other request of the key."""
        now = self.wall()
        record = self.store.update(record.id, f"busy: {exc}", resend_after=None)
        if exc.http_status == 429:
            # a rate limiter in front: it never pins a replay, and it breaks a streak
            tries.busy_in_row, tries.busy_first_at = 0, None
        elif record.trace_ambiguous:
            tries.busy_in_row += 1
            tries.busy_first_at = now if tries.busy_first_at is None else tries.busy_first_at
        if not record.trace_ambiguous or self._pinned(tries, now):
            # a definitive answer, replayed for this id from now on: the next try needs a new one
            tries.busy_in_row, tries.busy_first_at = 0, None
            if record.archived:
                # no job wants a new try: the id's first send was refused, nothing was paid
                raise JobError(
                    f"definitive busy reply to trace id {record.trace_id}: nothing was paid",
                    http_status=exc.http_status,
                    err_code=exc.err_code,
                    err_msg=exc.err_msg,
                ) from exc
            record = self.store.update(
                record.id,
                "definitive busy reply: new trace id",
                trace_id=new_trace_id(),
                sent_at=None,
                trace_ambiguous=0,
                key_fp=None,
            )
        self._give_up_if_tried_enough(record, tries, exc)
        return record

    def _pinned(self, tries: SubmitTries, now: float) -> bool:
        """Busy replies to a possibly-processed id, sent after its deadline, `PINNED_BUSY` in a
        row within this run, from the first to the last lasting `pinned_busy_after` seconds:
        the gateway stored "busy" as the id's first reply (had the first send been processed,
        its video id would come back instead). Nothing else may come between them."""
        first = tries.busy_first_at if tries.busy_first_at is not None else now
        return tries.busy_in_row >= PINNED_BUSY and now - first >= self.pinned_busy_after

    def _past_replay_window(self, record: JobRecord) -> bool:
        return record.sent_at is not None and self.wall() - record.sent_at >= REPLAY_WINDOW_SAFE

    def _no_reply(self, record: JobRecord, detail: str) -> JobRecord:
        if record.trace_ambiguous:
            return self.store.update(record.id, detail)
        return self.store.update(
            record.id, detail, trace_ambiguous=1, ambiguous=record.ambiguous + 1
        )

    def _park(self, record: JobRecord, slot: Slot, advice: str | None = None) -> JobRecord:
        if slot.held:
            slot.release()
        advice = advice or unconfirmed_advice(record)
        log.warning("%s: %s", record.id, advice)
        return self.store.transition(record.id, JobState.UNCONFIRMED, advice, error=advice)

    def _give_up_if_tried_enough(
        self, record: JobRecord, tries: SubmitTries, exc: TransientError
    ) -> None:
        policy = self.client.config.retry
        # the time spent waiting at the overload gate is no try
        elapsed = self.wall() - (tries.first_at or self.wall()) - tries.gate_waited
        if tries.failures >= policy.attempts or elapsed >= policy.max_elapsed:
            raise TransientError(
                f"submission not confirmed after {tries.failures} tries: {exc}"
                f" (trace id {record.trace_id} is kept for the next run)"
            ) from exc
