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

A job's final name is its `output` path when the manifest gives one (`outputs.job_path`), so a
done job whose path changed is the same move: its file goes to the new path, the record says
so, nothing is paid or downloaded. A stitched long job whose path changed moves in the same
step (`Stitched`), so swaps between long and ordinary jobs stage like any other. No move lands
on the result of a record that does not move (a job left out by `--only`): that move is not
made, the file stays where its record says. The state file's `output` (and a long job's row)
is where each file is; no other record of the paths is needed.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.errors import StateError
from pipeline.jobstate import PAID_STATES, JobState
from pipeline.manifest import Job
from pipeline.outputs import (
    archive_path,
    in_segments_dir,
    job_path,
    long_staging_path,
    place,
    prune_empty,
    result_path,
    size_of,
    staging_path,
)
from pipeline.plan import changed_inputs, estimate_credits, fingerprint, input_facts
from pipeline.preflight import Checked
from pipeline.state import ARCHIVE_MARK, JobRecord, StateStore

log = logging.getLogger("pipeline.reconcile")

# which of several paid records with the same inputs a job takes: the one furthest along
_PREFERENCE = {JobState.DONE: 0, JobState.DOWNLOADING: 1, JobState.GENERATING: 2}
# ErrCodes of failures the same inputs meet again however often they are sent
# (pixverse-api.md, "Error codes"): input moderation; 400xxx are rejections of the body
_PERMANENT_CODES = frozenset({500054, 500063})
_ACCOUNT_CODES = frozenset({400012})  # a bad key is the account's problem, not the job's


@dataclass(frozen=True)
class Decision:
    """What a run does with one job's record: `skip` (done, or held back), `download` (done,
    file missing), `restart` (start over: pays again), `resume` (go on from its state),
    `parked` (unconfirmed), `held` (a permanent failure not retried)."""

    action: str
    detail: str


def permanent_failure(record: JobRecord) -> str | None:
    """Why a failed record would fail the same way if sent again, or None when a retry may
    succeed (status 8, a transport problem, a deleted video: each retried by the next run).

    Permanent: input moderation (500054, 500063), any 400xxx rejection of the body (a content
    rule, an unknown media or speaker id), an unknown speaker found before sending, and status
    7 (content moderation of the result: the same inputs meet the same rule)."""
    if record.state is not JobState.FAILED:
        return None
    return permanent_reason(record.err_code, record.error_class, record.error)


def permanent_reason(err_code: object, error_class: object, error: object) -> str | None:
    """`permanent_failure`'s rule on a failure's facts (a record's, or a report row's)."""
    code = err_code if isinstance(err_code, int) else None
    rejected = code is not None and 400000 <= code < 500000 and code not in _ACCOUNT_CODES
    if code is not None and (code in _PERMANENT_CODES or rejected):
        return f"ErrCode {code}"
    if error_class == "ManifestError":
        return "a problem in the manifest"
    if str(error or "").startswith("status 7:"):  # `runner._terminal`'s wording
        return "status 7, content moderation"
    return None


def decide(
    job_id: str,
    record: JobRecord,
    fp: str,
    *,
    intact: bool,
    redo: frozenset[str],
    retry_failed: bool,
    changed: str = "inputs",
) -> Decision:
    """What to do with a job's record (the one `plan_records` gave it); `intact`: its result
    file is in place; `changed`: which inputs differ, for the reason. Pure: `reconcile`
    carries the decision out, `preview` only tells it."""
    if job_id in redo:
        return Decision("restart", "--redo: start over")
    if record.fingerprint != fp:
        return Decision("restart", f"{changed} changed: redo")
    if record.state is JobState.DONE:
        if intact:
            return Decision("skip", "suspect result kept" if record.suspect else "done")
        return Decision("download", "output missing: download again")
    if record.state is JobState.FAILED:
        why = permanent_failure(record)
        if why is not None and not retry_failed:
            return Decision(
                "held",
                f"failed for good ({why}): not retried; change its inputs, or"
                f" --retry-failed, or --redo {job_id}",
            )
        return Decision("restart", "failed before: retry")
    if record.state is JobState.UNCONFIRMED:
        # parked: re-sending could pay twice; only --redo submits it again
        return Decision("parked", "unconfirmed: only --redo sends it again")
    return Decision("resume", record.state.value)


def reconcile(
    checked: Checked,
    store: StateStore,
    output_dir: Path,
    redo: frozenset[str] = frozenset(),
    *,
    retry_failed: bool = False,
    stitched: Sequence[Stitched] = (),
) -> list[Job]:
    """Bring the state file in line with the manifest; return the jobs with work left, in the
    order that keeps slots busy: running generations first, then ambiguous submissions, then
    downloads, then new work. `stitched`: long jobs' stitched results to move to their
    jobs' new paths with the records' results (`_settle`).

    Records of `checked.untouched` ids (jobs left out by `--only`, or invalid under
    `--keep-going`) are left exactly as they are: never archived, restarted or taken over,
    and no result moves onto their files."""
    jobs = checked.manifest.jobs
    fps = {job.id: fingerprint(job, checked.media) for job in jobs}
    facts = {job.id: input_facts(job, checked.media) for job in jobs}
    homes = {job.id: job_path(output_dir, job.id, job.output) for job in jobs}
    _respell(store, checked, fps, facts)
    _recover(store, output_dir, homes)
    before = {r.id: r for r in store.jobs(archived=True) if r.id not in checked.untouched}
    plan = plan_records(before, jobs, fps, redo)
    left = _take_over(store, plan, output_dir, homes, fps, facts, stitched)
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
        if job.id in plan.fresh and job.id in before:
            # its paid record was set aside just now (other inputs, or --redo): paying again
            why = "--redo" if job.id in redo else _changed(job, before[job.id], facts)
            _log_resubmission(job, checked, why)
        decision = decide(
            job.id,
            record,
            fp,
            # a result left where it is (its path holds another's) is checked there
            intact=intact(record) if job.id in left else intact(record, homes[job.id]),
            # a job whose paid record was just set aside starts fresh already
            redo=redo - plan.fresh.keys(),
            retry_failed=retry_failed,
            changed=changed_inputs(job, record.inputs, facts[job.id]),
        )
        if decision.action == "restart":
            _log_resubmission(job, checked, decision.detail)
            record = _restart(store, record, fp, decision.detail, facts[job.id])
        elif decision.action == "download":
            record = store.transition(job.id, JobState.DOWNLOADING, decision.detail)
        elif decision.action == "held":
            log.info("%s: %s", job.id, decision.detail)
            continue
        elif decision.action in ("skip", "parked"):
            continue
        todo.append((order[record.state], index, job))
    return [job for _, _, job in sorted(todo, key=lambda t: (t[0], t[1]))]


def take_paid_from(store: StateStore, source: Path, wanted: Mapping[str, str]) -> list[str]:
    """Copy in the paid records of the state file `source` (a manifest's `resume_from`: for
    failed.yaml, the state file of the run that wrote it) whose fingerprint a job of this run
    has (`wanted`: a fingerprint, or an earlier version's of it, -> the job's fingerprint) and
    that no paid record here has, nor their video. They come in under archive ids, so the
    reconcile that follows takes each over as it takes any paid record with a job's inputs: a
    done result is fetched again (its file is the other folder's), never generated again; a
    generating one is polled. Returns the ids copied in. (Both state files then count what
    such a record paid: each tells its own folder's jobs.)"""
    if not source.exists() or source.resolve() == store.path.resolve():
        return []
    try:
        other = StateStore.read_only(source)
    except StateError as exc:
        log.warning("%s not read (%s): nothing paid there is taken", source, exc)
        return []
    try:
        records = other.jobs(archived=True)
    finally:
        other.close()
    mine = store.jobs(archived=True)
    paid = {r.fingerprint for r in mine if r.state in PAID_STATES}
    videos = {r.video_id for r in mine if r.video_id is not None}
    names = {r.id for r in mine}
    taken = []
    for record in sorted(records, key=lambda r: (_PREFERENCE.get(r.state, 3), r.id)):
        fp = wanted.get(record.fingerprint)
        if (
            fp is None
            or fp in paid
            or record.state not in _PREFERENCE
            or record.video_id is None
            or record.video_id in videos
        ):
            continue
        state = JobState.DOWNLOADING if record.state is JobState.DONE else record.state
        new_id = _archive_id(replace(record, id=record.id.partition(ARCHIVE_MARK)[0]), names)
        detail = f"taken from {source} (as '{record.id}'): paid there, not paid again"
        store.import_record(replace(record, fingerprint=fp), new_id, state, detail)
        log.info("%s: %s", new_id, detail)
        paid.add(fp)
        videos.add(record.video_id)
        taken.append(new_id)
    return taken


def _respell(
    store: StateStore,
    checked: Checked,
    fps: Mapping[str, str],
    facts: Mapping[str, Mapping[str, str]],
) -> None:
    """Records fingerprinted by an earlier version with another spelling of a job's inputs
    (`Checked.aliases`: a speaker id as written) take the job's fingerprint and facts: the
    same inputs, so nothing is paid again (records of jobs not run stay as they are)."""
    for record in store.jobs(archived=True):
        job_id = checked.aliases.get(record.fingerprint)
        if job_id is not None and record.id not in checked.untouched:
            store.update(
                record.id,
                "fingerprint: the speaker id as the list spells it (same inputs)",
                fingerprint=fps[job_id],
                inputs=json.dumps(facts[job_id], sort_keys=True),
            )


def _changed(job: Job, record: JobRecord, facts: Mapping[str, Mapping[str, str]]) -> str:
    return changed_inputs(job, record.inputs, facts[job.id]) + " changed"


def _log_resubmission(job: Job, checked: Checked, why: str) -> None:
    """Every job that will be paid for again says why and what it will cost."""
    cost = estimate_credits(job, checked.media)
    log.info("%s: submitting again (%s): about %d credits", job.id, why, cost)


@dataclass
class _Plan:
    renames: dict[str, str] = field(default_factory=dict)  # record id -> its new id
    details: dict[str, str] = field(default_factory=dict)  # record id -> why, for the log
    fresh: dict[str, str] = field(default_factory=dict)  # job id -> fingerprint, new records


def plan_records(
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
        # a parked submission once set aside (by --redo, changed inputs, its job removed) is
        # not taken back: the job has moved on, and adopting it would park the job again
        set_aside = record.archived and record.state is JobState.UNCONFIRMED
        if record.id not in kept and record.state in PAID_STATES and not set_aside:
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
    store: StateStore,
    plan: _Plan,
    output_dir: Path,
    homes: Mapping[str, Path],
    fps: Mapping[str, str],
    facts: Mapping[str, Mapping[str, str]],
    stitched: Sequence[Stitched] = (),
) -> set[str]:
    """Carry out `plan`: ids, then files, each step durable before the next (see the module
    docstring); a crash between any two is repaired by the next run's `_recover`. Returns
    the ids of the results left where they are (`_settle`)."""
    staged: dict[str, str] = {}
    for old, new in plan.renames.items():
        record = store.job(old)
        if ARCHIVE_MARK in new or not movable(record, output_dir):
            continue  # an archived file stays put; a missing one is downloaded again
        assert record.video_id is not None  # DONE always has one
        staging = staging_path(output_dir, record.video_id)
        if record.output != str(staging):
            place(Path(str(record.output)), staging)
        staged[old] = str(staging)
    if plan.renames:
        store.reassign(plan.renames, plan.details, staged)
    if plan.fresh:
        store.add_jobs(plan.fresh, {i: json.dumps(facts[i], sort_keys=True) for i in plan.fresh})
    records = {r.id: r for r in store.jobs(archived=True)}
    # archived results standing where this manifest's jobs put theirs (or left at a staging
    # name by an interrupted run, or in a long job's segment folder, which goes once it is
    # stitched) go to superseded/
    names = {str(home) for home in homes.values()} | {str(s.home) for s in stitched}
    aside = {
        r.id: archive_path(output_dir, r.id)
        for r in records.values()
        if r.archived
        and movable(r, output_dir)
        and (
            r.output in names
            or r.output == str(staging_path(output_dir, r.video_id or 0))
            or in_segments_dir(Path(str(r.output)), output_dir)
        )
    }
    _move(store, records, aside, "kept aside: a job of the manifest needs its name")
    # results not at their job's path yet (just taken over, its `output` changed, or left
    # mid-move by a crash)
    due = {
        job_id: home
        for job_id, home in homes.items()
        if (r := records[job_id]).fingerprint == fps[job_id]
        and r.output != str(home)
        and movable(r, output_dir)
    }
    return _settle(store, records, due, output_dir, stitched)


def _move(
    store: StateStore, records: Mapping[str, JobRecord], moves: Mapping[str, Path], detail: str
) -> None:
    """Move each record's file (record id -> destination), then record all moves at once."""
    for record_id, dest in moves.items():
        place(Path(str(records[record_id].output)), dest)
    if moves:
        store.save_outputs({i: str(dest) for i, dest in moves.items()}, detail)


@dataclass(frozen=True)
class Stitched:
    """A long job's stitched result whose job's path changed (`pipeline.longform`, its
    `long_jobs` row): it moves in `_settle`'s step with the records' results."""

    job_id: str
    output: Path  # where it is
    home: Path  # where its job's `output` puts it
    size: int


@dataclass(frozen=True)
class _Moving:
    """One file `_settle` moves: a record's result, or a long job's stitched file."""

    owner: str  # the record's id, or the long job's
    src: Path
    dest: Path
    stage: Path
    size: int
    long: bool = False


def _settle(
    store: StateStore,
    records: Mapping[str, JobRecord],
    due: Mapping[str, Path],
    output_dir: Path,
    stitched: Sequence[Stitched] = (),
) -> set[str]:
    """Move results to their jobs' paths: the records' (`due`) and long jobs' stitched files
    (`stitched`), in one step. A move onto the result of a record (or long job) that is not
    moving (a job left out by `--only`) is not made: the file stays where it is, and so does
    any whose move would land on it; the log says why. When one's path is where another
    moving file is now (two jobs swapped their `output`s), every file waits at its staging
    name first (recorded), so no move ever displaces a result that is itself about to move;
    the folders they left go when empty. Returns the ids of the records left in place."""
    moves = [
        _Moving(
            i, Path(str(r.output)), dest, staging_path(output_dir, r.video_id or 0), r.bytes or 0
        )
        for i, dest in due.items()
        if (r := records[i]).video_id is not None
    ]
    moves += [
        _Moving(s.job_id, s.output, s.home, long_staging_path(output_dir, s.job_id), s.size, True)
        for s in stitched
    ]
    moves = _unblocked(store, records, moves)
    sources = {str(m.src) for m in moves}
    if any(str(m.dest) in sources for m in moves):
        _shift(
            store, [(m, m.stage) for m in moves if m.src != m.stage], "waiting at its staging name"
        )
        moves = [replace(m, src=m.stage) for m in moves]
    _shift(store, [(m, m.dest) for m in moves], "moved to its job's path")
    for folder in {Path(source).parent for source in sources}:
        prune_empty(folder, output_dir)
    return {i for i in due if i not in {m.owner for m in moves if not m.long}}


def _unblocked(
    store: StateStore, records: Mapping[str, JobRecord], moves: list[_Moving]
) -> list[_Moving]:
    """`moves` without those that would displace a result that stays: a record's or a long
    job's intact file that is not moving, or the file of a move left out (in turn)."""
    moving = {(m.owner, m.long) for m in moves}
    staying = {
        str(r.output): f"'{r.id}'"
        for r in records.values()
        if r.output and (r.id, False) not in moving and intact(r)
    }
    staying |= {
        str(row.output): f"long job '{row.id}'"
        for row in store.long_jobs()
        if row.stitched
        and row.output
        and (row.id, True) not in moving
        and size_of(Path(row.output)) == row.bytes
    }
    kept = list(moves)
    while blocked := [m for m in kept if str(m.dest) in staying]:
        for m in blocked:
            log.warning(
                "%s: its result stays at %s: its new path %s holds the result of %s, which"
                " does not move in this run",
                m.owner,
                m.src,
                m.dest,
                staying[str(m.dest)],
            )
            staying[str(m.src)] = f"long job '{m.owner}'" if m.long else f"'{m.owner}'"
        kept = [m for m in kept if m not in blocked]
    return kept


def _shift(store: StateStore, moves: Sequence[tuple[_Moving, Path]], detail: str) -> None:
    """Move each file to its destination, then record all moves (records' in one
    transaction, then each long job's row)."""
    for move, dest in moves:
        place(move.src, dest)
    outputs = {m.owner: str(dest) for m, dest in moves if not m.long}
    if outputs:
        store.save_outputs(outputs, detail)
    for move, dest in moves:
        if move.long:
            store.save_stitched(move.owner, str(dest), move.size)


def _recover(store: StateStore, output_dir: Path, homes: Mapping[str, Path]) -> None:
    """Find the file of each done record that lost it to an interrupted move: at its staging
    name, or at its home (its job's path, `<job id>.mp4`, or superseded/<archive id>.mp4),
    with its length and no other record's claim. What is found nowhere is downloaded again
    (never regenerated)."""
    records = store.jobs(archived=True)
    whole = {r.id for r in records if r.output and intact(r)}
    claimed = {r.output for r in records if r.id in whole}
    claimed |= {row.output for row in store.long_jobs() if row.stitched and row.output}
    found: dict[str, str] = {}
    for record in records:
        if record.state is not JobState.DONE or record.video_id is None or record.id in whole:
            continue
        if record.archived:
            home = archive_path(output_dir, record.id)
        else:
            home = homes.get(record.id) or result_path(output_dir, record.id)
        for candidate in (str(staging_path(output_dir, record.video_id)), str(home)):
            if candidate not in claimed and intact(record, Path(candidate)):
                found[record.id] = candidate
                claimed.add(candidate)
                break
    if found:
        store.save_outputs(found, "found its file after an interrupted move")


def _restart(
    store: StateStore, record: JobRecord, fp: str, detail: str, facts: Mapping[str, str]
) -> JobRecord:
    fields = {
        "fingerprint": fp,
        "inputs": json.dumps(facts, sort_keys=True),
        "suspect": None,
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


def movable(record: JobRecord, output_dir: Path) -> bool:
    """A done record whose file is intact in this output folder (at any depth, a long job's
    segment folder included): renames and new `output` paths move it along. (A file
    elsewhere, as under an earlier `--out`, is left alone: its job downloads its result
    again.)"""
    if record.state is not JobState.DONE or record.output is None:
        return False
    return Path(record.output).is_relative_to(output_dir) and intact(record)


def intact(record: JobRecord, path: Path | None = None) -> bool:
    """Is the record's file (or `path`) there with the record's length?"""
    where = path if path is not None else record.output
    if where is None:
        return False
    try:
        found = os.stat(where)
    except OSError:
        return False
    return stat.S_ISREG(found.st_mode) and found.st_size == record.bytes
