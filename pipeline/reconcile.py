"""Reconcile: bring the state file in line with the manifest before a run, and order the work.

What a re-run does with each job (README, "Resume semantics") is decided here, in one place:
done jobs with their file are skipped, a missing file is fetched again, changed inputs and
`--redo` start over, failed jobs are retried, and everything paid for is picked up as it is.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.jobstate import JobState
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
    for index, job in enumerate(checked.manifest.jobs):
        fp = fingerprint(job, checked.media)
        record = store.find(job.id)
        if record is None:
            record = store.add_job(job.id, fp)
        elif job.id in redo:
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
        todo.append((order[record.state], index, job))
    return [job for _, _, job in sorted(todo, key=lambda t: (t[0], t[1]))]


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
    }
    if record.state is JobState.PENDING:
        return store.update(record.id, detail, **fields)
    return store.transition(record.id, JobState.PENDING, detail, **fields)


def _output_intact(record: JobRecord, path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size == record.bytes
    except OSError:
        return False
