"""Reconcile: bring the state file in line with the manifest before a run, and order the work.

What a re-run does with each job (README, "Resume semantics") is decided here, in one place:
done jobs with their file are skipped, a missing file is fetched again, changed inputs and
`--redo` start over, failed jobs are retried, and everything paid for is picked up as it is.

Records are matched to jobs by fingerprint, not by id, so that nothing is paid twice:

1. a record under the job's id with the job's fingerprint stays;
2. otherwise a paid record (PAID_STATES) with the job's fingerprint, whatever its id (another
   job's, a removed job's, an archived one), moves to the job's id: renames, renumbering, swaps
   and cycles all cost nothing;
3. a paid record no job wants is archived (`<old id>@<video id>`, see `state.ARCHIVE_MARK`), not
   destroyed, so a later manifest bringing its inputs back takes it over. Its file stays where
   it is until a job of the manifest needs that name, then goes to `superseded/<archive id>.mp4`;
4. a job left without a record gets a fresh one; an unpaid record with other inputs restarts.

Files follow their records without ever overwriting a result (`pipeline.outputs`), in steps a
crash may interrupt anywhere: a moving result goes to its staging name (by video id), then the
id moves are committed in one transaction, then files go to their final names, then those are
committed. Each run starts by finding files an interrupted run left behind (`_recover`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.jobstate import PAID_STATES, JobState
from pipeline.manifest import Job
from pipeline.outputs import SUPERSEDED, archive_path, place, result_path, staging_path
from pipeline.plan import fingerprint
from pipeline.preflight import Checked
from pipeline.state import ARCHIVE_MARK, JobRecord, StateStore

# which of several paid records with the same inputs a job takes: the one furthest along
_PREFERENCE = {JobState.DONE: 0, JobState.DOWNLOADING: 1, JobState.GENERATING: 2}


def reconcile(
    checked: Checked, store: StateStore, output_dir: Path, redo: frozenset[str] = frozenset()
) -> list[Job]:
    """Bring the state file in line with the manifest; return the jobs with work left, in the
    order that keeps slots busy: running generations first, then ambiguous submissions, then
    downloads, then new work."""
    jobs = checked.manifest.jobs
    fps = {job.id: fingerprint(job, checked.media) for job in jobs}
    _recover(store, output_dir)
    plan = _plan({r.id: r for r in store.jobs(archived=True)}, jobs, fps, redo)
    _take_over(store, plan, output_dir, jobs, fps)
    order = {
        JobState.GENERATING: 0,
        JobState.SUBMITTING: 1,
        JobState.DOWNLOADING: 2,
        JobState.PENDING: 3,
    }
    todo: list[tuple[int, int, Job]] = []
    for index, job in enumerate(jobs):
        fp = fps[job.id]
        record = store.job(job.id)
        # by now a record of another fingerprint, or one to redo, is never a paid one (_plan)
        if job.id in redo and job.id not in plan.fresh:
            record = _restart(store, record, fp, "--redo: start over")
        elif record.fingerprint != fp:
            record = _restart(store, record, fp, "inputs changed: redo")
        elif record.state is JobState.DONE:
            if _intact(record, result_path(output_dir, job.id)):
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


@dataclass
class _Plan:
    renames: dict[str, str] = field(default_factory=dict)  # record id -> its new id
    details: dict[str, str] = field(default_factory=dict)  # record id -> why, for the log
    fresh: dict[str, str] = field(default_factory=dict)  # job id -> fingerprint, new records


def _plan(
    records: Mapping[str, JobRecord],
    jobs: Sequence[Job],
    fps: Mapping[str, str],
    redo: frozenset[str],
) -> _Plan:
    """Decide which record each job gets; touches nothing."""
    plan = _Plan()
    same = {
        job.id
        for job in jobs
        if job.id not in redo and job.id in records and records[job.id].fingerprint == fps[job.id]
    }
    kept = {i for i in same if records[i].state in PAID_STATES}
    paid: dict[str, list[JobRecord]] = {}
    for record in sorted(records.values(), key=lambda r: (_PREFERENCE.get(r.state, 3), r.id)):
        if record.id not in kept and record.state in PAID_STATES:
            paid.setdefault(record.fingerprint, []).append(record)
    for job in jobs:
        if job.id in kept or job.id in redo:
            continue
        if paid.get(fps[job.id]):  # even over an unpaid record of its own: never pay twice
            record = paid[fps[job.id]].pop(0)
            plan.renames[record.id] = job.id
            plan.details[record.id] = f"same inputs as '{record.id}', already paid for"
        elif job.id in same:
            kept.add(job.id)  # unpaid, nothing paid elsewhere: it goes on as it is
    taken = set(plan.renames.values())
    job_ids = {job.id for job in jobs}
    names = set(records)
    for record in records.values():
        if record.id in kept or record.id in plan.renames or record.archived:
            continue
        if record.id in taken:
            why = f"'{record.id}' went to a record already paid for with its inputs"
        elif record.state not in PAID_STATES:
            continue  # unpaid: restarted in place if its job is still there, else left alone
        elif record.id in redo:
            why = "--redo: kept aside, not overwritten"
        elif record.id in job_ids:
            why = f"'{record.id}' now has other inputs"
        else:
            why = "no job of the manifest has these inputs"
        plan.renames[record.id] = _archive_id(record, names)
        plan.details[record.id] = f"archived: {why}"
    leaving = set(plan.renames)
    for job in jobs:
        if job.id not in taken and (job.id not in records or job.id in leaving):
            plan.fresh[job.id] = fps[job.id]
    return plan


def _archive_id(record: JobRecord, names: set[str]) -> str:
    """`<id>@<video id>` (`<id>@<n>` without one), a name no manifest id can take."""
    tag = str(record.video_id) if record.video_id is not None else "1"
    candidate, n = f"{record.id}{ARCHIVE_MARK}{tag}", 1
    while candidate in names:
        n += 1
        candidate = f"{record.id}{ARCHIVE_MARK}{tag}.{n}"
    names.add(candidate)
    return candidate


def _take_over(
    store: StateStore, plan: _Plan, output_dir: Path, jobs: Sequence[Job], fps: Mapping[str, str]
) -> None:
    """Carry out `plan`: ids, then files, each step durable before the next (see the module
    docstring); a crash between any two is repaired by the next run's `_recover`."""
    staged: dict[str, str] = {}
    for old, new in plan.renames.items():
        record = store.job(old)
        if ARCHIVE_MARK in new or not _movable(record, output_dir):
            continue  # an archived file stays put; a missing one is downloaded again
        assert record.video_id is not None  # DONE always has one
        staging = staging_path(output_dir, record.video_id)
        if record.output != str(staging):
            place(Path(str(record.output)), staging)
        staged[old] = str(staging)
    if plan.renames:
        store.reassign(plan.renames, plan.details, staged)
    if plan.fresh:
        store.add_jobs(plan.fresh)
    records = {r.id: r for r in store.jobs(archived=True)}
    # archived results standing where this manifest's jobs put theirs (or left at a staging
    # name by an interrupted run) go to superseded/
    names = {str(result_path(output_dir, job.id)) for job in jobs}
    aside = {
        r.id: archive_path(output_dir, r.id)
        for r in records.values()
        if r.archived
        and _movable(r, output_dir)
        and (r.output in names or r.output == str(staging_path(output_dir, r.video_id or 0)))
    }
    _move(store, records, aside, "kept aside: a job of the manifest needs its name")
    # results not at their job's name yet (just taken over, or left mid-move by a crash)
    due = {
        job.id: result_path(output_dir, job.id)
        for job in jobs
        if (r := records[job.id]).fingerprint == fps[job.id]
        and r.output != str(result_path(output_dir, job.id))
        and _movable(r, output_dir)
    }
    _move(store, records, due, "moved to its job's name")


def _move(
    store: StateStore, records: Mapping[str, JobRecord], moves: Mapping[str, Path], detail: str
) -> None:
    """Move each record's file (record id -> destination), then record all moves at once."""
    for record_id, dest in moves.items():
        place(Path(str(records[record_id].output)), dest)
    if moves:
        store.save_outputs({i: str(dest) for i, dest in moves.items()}, detail)


def _recover(store: StateStore, output_dir: Path) -> None:
    """Find the file of each done record that lost it to an interrupted move: at its staging
    name, or at its home (`<job id>.mp4`, or superseded/<archive id>.mp4), with its length and
    no other record's claim. What is found nowhere is downloaded again (never regenerated)."""
    records = store.jobs(archived=True)
    claimed = {r.output for r in records if r.output and _intact(r)}
    found: dict[str, str] = {}
    for record in records:
        if record.state is not JobState.DONE or record.video_id is None or _intact(record):
            continue
        home = (archive_path if record.archived else result_path)(output_dir, record.id)
        for candidate in (str(staging_path(output_dir, record.video_id)), str(home)):
            if candidate not in claimed and _intact(record, Path(candidate)):
                found[record.id] = candidate
                claimed.add(candidate)
                break
    if found:
        store.save_outputs(found, "found its file after an interrupted move")


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
        "busy_since": None,
    }
    if record.state is JobState.PENDING:
        return store.update(record.id, detail, **fields)
    return store.transition(record.id, JobState.PENDING, detail, **fields)


def _movable(record: JobRecord, output_dir: Path) -> bool:
    """A done record whose file is intact in this output folder: renames move it along. (A file
    elsewhere, as under an earlier `--out`, is left alone: its job downloads its result again.)"""
    return (
        record.state is JobState.DONE
        and record.output is not None
        and Path(record.output).parent in (output_dir, output_dir / SUPERSEDED)
        and _intact(record)
    )


def _intact(record: JobRecord, path: Path | None = None) -> bool:
    """Is the record's file (or `path`) there with the record's length?"""
    where = path if path is not None else (Path(record.output) if record.output else None)
    try:
        return where is not None and where.is_file() and where.stat().st_size == record.bytes
    except OSError:
        return False
