"""What a status reply means for a paid, generating job (the poller delivers the replies).

* Statuses 1, 6, 7 and 8 are terminal; everything else (5, 2, 3, a negative or unreadable
  value, 5 with a `url` already filled) means "still generating".
* `started_at`: the server's `create_time` moves `submitted_at` back (never before the trace
  id's first send), so the 10-minute slot rule counts from when the generation really began.
* `settle`: the state a terminal status leads to, committed: DOWNLOADING (1), PENDING again
  for a refunded status 8 while attempts remain, FAILED otherwise (7 and 8 refunded, 6 not).
"""

from __future__ import annotations

import logging

from pipeline.client import VideoStatus
from pipeline.errors import JobError, VideoGoneError
from pipeline.jobstate import JobState
from pipeline.state import JobRecord, StateStore

log = logging.getLogger("pipeline.runner")

TERMINAL = frozenset({1, 6, 7, 8})


def is_terminal(status: VideoStatus) -> bool:
    return status.status in TERMINAL


def started_at(store: StateStore, record: JobRecord, status: VideoStatus) -> JobRecord:
    """Move `submitted_at` back to the server's `create_time` when it is earlier, never
    before the trace id's first send (a clock that differs from ours cannot push it out
    of the window in which the generation really started)."""
    created, first_sent, submitted = status.created_at, record.sent_at, record.submitted_at
    if created is None or first_sent is None or submitted is None:
        return record
    started = min(max(created, first_sent), submitted)
    if submitted - started < 1.0:
        return record
    return store.update(record.id, "started per create_time", submitted_at=started)


def settle(store: StateStore, record: JobRecord, status: int, max_attempts: int) -> JobRecord:
    """`max_attempts` 0: a status 8 is final (an archived record is never resubmitted)."""
    job_id = record.id
    if status == 1:
        return store.transition(job_id, JobState.DOWNLOADING, "status 1: succeeded")
    refund = {"credits": record.credits - record.last_credits, "last_credits": 0}
    if status == 8 and record.attempts < max_attempts:
        log.info("%s: generation failed (status 8), resubmitting", job_id)
        return store.transition(job_id, JobState.PENDING, "status 8: resubmit", **refund)
    reason = {
        6: "status 6: the video was deleted",
        7: "status 7: content moderation rejected the result (credits refunded)",
        8: f"status 8: generation failed {record.attempts} times (credits refunded)",
    }[status]
    refund = refund if status != 6 else {}
    log.warning("%s: %s", job_id, reason)
    kind = VideoGoneError if status == 6 else JobError  # the error tree's name for it
    return store.transition(
        job_id, JobState.FAILED, reason, error=reason, error_class=kind.__name__, **refund
    )
