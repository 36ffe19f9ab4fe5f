"""The job state machine: one enum, one table of allowed transitions.

A job's state is what has been *paid for and saved*, so a run that dies anywhere resumes from it:

    PENDING ──► SUBMITTING ──► GENERATING ──► DOWNLOADING ──► DONE
       ▲            │  ▲           │                │
       └────────────┘  └(status 8: new attempt)     └──► FAILED
                    │
                    └──► UNCONFIRMED   (no reply, and the gateway does not replay trace ids:
                                        parked until the user decides with --redo)
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    PENDING = "pending"  # nothing paid for this attempt; upload and submit next
    SUBMITTING = "submitting"  # trace id saved, the generate request may have left: outcome unknown
    GENERATING = "generating"  # video_id saved; the job holds an account slot until terminal
    DOWNLOADING = "downloading"  # status 1 seen: a paid result to fetch, never to regenerate
    DONE = "done"  # the mp4 is in the output folder, length checked, fsynced
    FAILED = "failed"  # cannot succeed as submitted; `error` says why
    # a send got no reply and the gateway does not replay trace ids, so re-sending could pay
    # twice: parked (never re-sent automatically) until `--redo` or changed inputs
    UNCONFIRMED = "unconfirmed"


TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.SUBMITTING, JobState.FAILED}),
    # back to PENDING after a definitive rejection that deserves a new attempt (500044, busy,
    # stale media); GENERATING once the reply with the video_id is saved.
    JobState.SUBMITTING: frozenset(
        {JobState.GENERATING, JobState.PENDING, JobState.FAILED, JobState.UNCONFIRMED}
    ),
    # PENDING again after status 8 while attempts remain (a refunded failure).
    JobState.GENERATING: frozenset({JobState.DOWNLOADING, JobState.PENDING, JobState.FAILED}),
    # PENDING only when the manifest changed the job's inputs: the old result is not wanted.
    JobState.DOWNLOADING: frozenset({JobState.DONE, JobState.FAILED, JobState.PENDING}),
    # a finished job whose file went missing is downloaded again; changed inputs start over.
    JobState.DONE: frozenset({JobState.DOWNLOADING, JobState.PENDING}),
    # a new run retries failed jobs (7/8 are refunded, 400xxx never charged).
    JobState.FAILED: frozenset({JobState.PENDING}),
    # only the user's `--redo` (or changed inputs) submits a parked job again
    JobState.UNCONFIRMED: frozenset({JobState.PENDING}),
}

# States in which the account has (or may have) charged for a generation we must not lose.
PAID_STATES = frozenset(
    {
        JobState.SUBMITTING,
        JobState.GENERATING,
        JobState.DOWNLOADING,
        JobState.DONE,
        JobState.UNCONFIRMED,
    }
)


class IllegalTransitionError(RuntimeError):
    """A bug: code asked for a transition the table does not allow."""

    def __init__(self, job_id: str, current: JobState, target: JobState) -> None:
        super().__init__(f"job '{job_id}': illegal transition {current.value} -> {target.value}")


def check_transition(job_id: str, current: JobState, target: JobState) -> None:
    if target not in TRANSITIONS[current]:
        raise IllegalTransitionError(job_id, current, target)
