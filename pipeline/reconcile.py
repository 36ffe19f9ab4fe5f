"""Reconcile: bring the state file in line with the manifest before a run, and order the work.

What a re-run does with each job (README, "Resume semantics") is decided here, in one place:
done jobs with their file are skipped, a missing file is fetched again, changed inputs and
`--redo` start over, failed jobs are retried, and everything paid for is picked up as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.jobstate import PAID_STATES, JobState
from pipeline.manifest import Job
from pipeline.plan import fingerprint
from pipeline.preflight import Checked
from pipeline.state import JobRecord, StateStore


def reconcile(
    checked: Checked, store: StateStore, output_dir: Path, redo: frozenset[str] = frozenset()
) -> list[Job]:
    """Bring the state file in line with the manifest; return the jobs with work left, in the
    order that keeps slots busy: running generations first, then ambiguous submissions, then
    downloads, then new work."""
    order = {
        JobState.GENERATING: 0,
        JobState.SUBMITTING: 1,
        JobState.DOWNLOADING: 2,
        JobState.PENDING: 3,
    }
    todo: list[tuple[int, int, Job]] = []
    orphans = _paid_orphans(checked, store)
    for index, job in enumerate(checked.manifest.jobs):
        fp = fingerprint(job, checked.media)
        record = store.find(job.id)
        if record is None:
            orphan = orphans.pop(fp, None)
            if orphan is None:
                record = store.add_job(job.id, fp)
            else:
                record = _adopt(store, orphan, job.id, output_dir)
        if job.id in redo:
            record = _restart(store, record, fp, "--redo: start over")
        elif record.fingerprint != fp:
            record = _restart(store, record, fp, "inputs changed: redo")
        elif record.state is JobState.DONE:
            if _output_intact(record, output_dir / f"{job.id}.mp4"):
                continue
            record = store.transition(
                job.id, JobState.DOWNLOADING, "output missing: download again"
            )
        elif record.state is JobState.FAILED:
            record = _restart(store, record, fp, "failed before: retry")
        elif record.state is JobState.UNCONFIRMED:
            continue  # parked: re-sending could pay twice; only --redo submits it again
        todo.append((order[record.state], index, job))
    return [job for _, _, job in sorted(todo, key=lambda t: (t[0], t[1]))]


def _paid_orphans(checked: Checked, store: StateStore) -> dict[str, JobRecord]:
    """Paid-for jobs whose id is no longer in the manifest, by fingerprint. A derived id
    changes when a file is renamed, and an explicit `id:` may be added later: the same inputs
    under a new id must pick up what was paid for, not pay again."""
    ids = {job.id for job in checked.manifest.jobs}
    orphans: dict[str, JobRecord] = {}
    for record in store.jobs():
        if record.id not in ids and record.state in PAID_STATES:
            orphans.setdefault(record.fingerprint, record)
    return orphans


def _adopt(store: StateStore, orphan: JobRecord, job_id: str, output_dir: Path) -> JobRecord:
    output = None
    if orphan.state is JobState.DONE and orphan.output and Path(orphan.output).is_file():
        target = output_dir / f"{job_id}.mp4"
        os.replace(orphan.output, target)  # same folder: a rename, not a copy
        output = str(target)
    return store.rename_job(
        orphan.id, job_id, f"same inputs as '{orphan.id}', already paid for", output=output
    )


def _restart(store: StateStore, record: JobRecord, fp: str, detail: str) -> JobRecord:
    fields = {
        "fingerprint": fp,
        "attempts": 0,
        "trace_id": None,
        "video_id": None,
        "last_credits": 0,
        "error": None,
        "output": None,
        "bytes": None,
        "sent_at": None,
        "resend_after": None,
        "trace_ambiguous": 0,
        "key_fp": None,
    }
    if record.state is JobState.PENDING:
        return store.update(record.id, detail, **fields)
    return store.transition(record.id, JobState.PENDING, detail, **fields)


def _output_intact(record: JobRecord, path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size == record.bytes
    except OSError:
        return False
