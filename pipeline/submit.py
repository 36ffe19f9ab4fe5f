"""Submitting a paid generation exactly once: when a trace id is sent, re-sent or replaced.

The rules (pixverse-api.md, "Trace-id semantics"):

* Intent first. Before every send, the trace id's send time, the moment until which that send
  may still be processed (`resend_after`: send time + request timeout + a margin) and the key's
  fingerprint are committed, so a run that dies anywhere finds them.
* No race. A send with no reply (timeout, reset, or a run that died) may still be processed:
  its trace id is re-sent only after `resend_after`. The gateway records a reply only when the
  first request finishes and treats an earlier duplicate as new: a second charge, or a 500044
  because the first holds the slot (which proves nothing). The job holds no slot while it waits.
* A reply to a send made after every earlier send's deadline is definitive (the replay of the
  first): a video id means generating; 500044 or a 4xx rejection means a new trace id next
  time. A "busy" reply to an id that may have been processed is re-sent with the same id a
  few times first, because a proxy in front of the gateway can answer busy without asking it;
  `PINNED_BUSY` busy answers in a row are the gateway's own, pinned replay: the id is replaced.
* A gateway that does not replay (the probe of `pipeline.replay` says so) makes a re-send a
  new paid request: an unanswered send is never re-sent automatically. The job is parked as
  UNCONFIRMED (trace id, time sent, what to do) until the user decides (`--redo ID`).
* The replay is per API key: a submission is only ever re-sent with the key that sent it
  (the runner leaves another key's jobs alone; see `foreign_key`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pipeline.client import PixverseClient, Submission, new_trace_id
from pipeline.errors import ApiError, ServerBusyError, TransientError, TransportError
from pipeline.jobstate import JobState
from pipeline.retry import Sleep, backoff
from pipeline.state import JobRecord, StateStore

log = logging.getLogger("pipeline.submit")

PINNED_BUSY = 3  # busy replies in a row to a possibly-processed id before it is replaced
# A silent send counts as over after the request timeout plus this share of it: room for the
# server to finish a request whose client gave up (clock steps, a slow gateway).
RESEND_MARGIN = 0.1


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
    first_at: float | None = None


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def unconfirmed_advice(record: JobRecord) -> str:
    sent = iso(record.sent_at) if record.sent_at is not None else "an unknown time"
    return (
        f"unconfirmed: trace id {record.trace_id} was sent at {sent} and no reply came; this"
        " gateway does not replay trace ids, so it is not re-sent (that could pay twice)."
        " Check the PixVerse console for a lip-sync video created then; to submit again,"
        f" run with --redo {record.id}"
    )


def describe_wait(record: JobRecord, now: float) -> str | None:
    """For `status`: what an unanswered submission is waiting for, or None."""
    if record.state is not JobState.SUBMITTING or record.resend_after is None:
        return None
    sent = iso(record.sent_at) if record.sent_at is not None else "?"
    if record.resend_after > now:
        return (
            f"no reply to trace id {record.trace_id} sent {sent}; it may still be in"
            f" processing: re-sent with the same id after {iso(record.resend_after)}"
        )
    return f"no reply to trace id {record.trace_id} sent {sent}; re-sent by the next run"


@dataclass
class Submitter:
    store: StateStore
    client: PixverseClient
    sleep: Sleep
    wall: Callable[[], float]
    replays: bool  # the probe's verdict for this base URL and key

    @property
    def key_fp(self) -> str:
        return self.client.config.key_fingerprint

    def foreign_key(self, record: JobRecord) -> bool:
        """Submitted (or maybe submitted) with another API key: not ours to send or poll."""
        return record.key_fp is not None and record.key_fp != self.key_fp

    def resumed(self, record: JobRecord) -> JobRecord:
        """A SUBMITTING job found at the start of a run: an unanswered send is ambiguous."""
        if record.awaiting_reply:
            return self._no_reply(record, "resumed: the last send got no reply")
        return record

    async def step(
        self,
        record: JobRecord,
        body_for: Callable[[], Awaitable[Mapping[str, Any]]],
        slot: Slot,
        tries: SubmitTries,
    ) -> Submission | JobRecord:
        """One send of a SUBMITTING job (after waiting out an earlier silent send). Returns
        the accepted Submission, or the record to look at next (still SUBMITTING: send again;
        UNCONFIRMED: parked). Raises what the reply means otherwise (SlotLimitError,
        JobError, FatalError, ...); TransientError when this run has tried long enough."""
        assert record.state is JobState.SUBMITTING
        assert record.trace_id is not None
        if record.awaiting_reply:
            if not self.replays:
                return self._park(record, slot)
            await self._wait_out(record, slot)
        if not slot.held:
            await slot.acquire()
        body = await body_for()
        now = self.wall()
        tries.first_at = now if tries.first_at is None else tries.first_at
        timeout = self.client.config.request_timeout * (1 + RESEND_MARGIN)
        record = self.store.update(
            record.id,
            f"sending trace id {record.trace_id}",
            # the first send of this id: its generation, if any, started after this moment
            sent_at=now if record.sent_at is None else record.sent_at,
            resend_after=now + timeout,
            key_fp=self.key_fp,
        )
        trace_id = record.trace_id
        assert trace_id is not None
        try:
            return await self.client.generate(body, trace_id)
        except TransportError as exc:
            tries.failures += 1
            record = self._no_reply(record, f"no reply: {exc}")
            log.info(
                "%s: no reply to trace id %s (%s); it may have been processed",
                record.id,
                trace_id,
                exc,
            )
            if not self.replays:
                return self._park(record, slot)
            self._give_up_if_tried_enough(record, tries, exc)
            return record
        except ServerBusyError as exc:
            tries.failures += 1
            return await self._busy(record, tries, exc)
        except ApiError as exc:
            # an envelope came back (500044, a rejection, an account problem): the send is
            # over, so nothing is left to wait for; what it means is the caller's to decide
            self.store.update(record.id, f"reply: {exc}", resend_after=None)
            raise

    async def _wait_out(self, record: JobRecord, slot: Slot) -> None:
        assert record.resend_after is not None
        wait = record.resend_after - self.wall()
        if wait <= 0:
            return
        if slot.held:
            slot.release()  # whether the first send holds an account slot is unknown
        log.info(
            "%s: trace id %s may still be in processing; re-sending it at %s (in %.1f s)",
            record.id,
            record.trace_id,
            iso(record.resend_after),
            wait,
        )
        await self.sleep(wait)

    async def _busy(self, record: JobRecord, tries: SubmitTries, exc: ServerBusyError) -> JobRecord:
        record = self.store.update(record.id, f"busy: {exc}", resend_after=None)
        if record.trace_ambiguous:
            tries.busy_in_row += 1
        if not record.trace_ambiguous or tries.busy_in_row >= PINNED_BUSY:
            # a definitive answer, replayed for this id from now on: the next try needs a new one
            tries.busy_in_row = 0
            record = self.store.update(
                record.id,
                "definitive busy reply: new trace id",
                trace_id=new_trace_id(),
                sent_at=None,
                trace_ambiguous=0,
            )
        self._give_up_if_tried_enough(record, tries, exc)
        await self.sleep(backoff(self.client.config.retry, tries.failures - 1, exc.retry_after))
        return record

    def _no_reply(self, record: JobRecord, detail: str) -> JobRecord:
        if record.trace_ambiguous:
            return self.store.update(record.id, detail)
        return self.store.update(
            record.id, detail, trace_ambiguous=1, ambiguous=record.ambiguous + 1
        )

    def _park(self, record: JobRecord, slot: Slot) -> JobRecord:
        if slot.held:
            slot.release()
        advice = unconfirmed_advice(record)
        log.warning("%s: %s", record.id, advice)
        return self.store.transition(record.id, JobState.UNCONFIRMED, advice, error=advice)

    def _give_up_if_tried_enough(
        self, record: JobRecord, tries: SubmitTries, exc: TransientError
    ) -> None:
        policy = self.client.config.retry
        elapsed = self.wall() - (tries.first_at or self.wall())
        if tries.failures >= policy.attempts or elapsed >= policy.max_elapsed:
            raise TransientError(
                f"submission not confirmed after {tries.failures} tries: {exc}"
                f" (trace id {record.trace_id} is kept for the next run)"
            ) from exc
