"""A run's long jobs: segments in as ordinary jobs, one stitched file out.

Before reconcile, `LongJobs.expand` replaces each long job of the run by its segment jobs
(`<id>~1`, `<id>~2`, ...: manifest ids cannot hold `~`), their inputs the cut files in
`OUT/segments/<id>/`, with their fingerprints from the plan (what each sends), so reconcile
knows every segment before anything is cut. Cutting happens during the run, in a worker
thread (`prepare_inputs`), only for the segments that still have to be sent: the runner
submits other work meanwhile and admits each segment as soon as its files are made. From
there on the segments are jobs like any other: uploaded, submitted exactly once, polled,
downloaded, resumed, adopted and redone by the same machinery and the same state file. The
plan a job was cut by is saved in the state file (`long_jobs`) and reused, so a resumed run
cuts at the same frames.

When a run's last segment of a job is done (`settle`), the results are stitched
(`pipeline.longform.stitch`) into the job's path (`OUT/<id>.mp4`, or its `output`), placed
without overwriting anything, and
only then is the job recorded as stitched; the segment folder is removed after that unless
`--keep-segments`. A stitched job whose file is intact is not expanded again, and its
segments' records are left as they are; if the job's `output` changed since, the stitched
file moves there with reconcile's moves (`moves`, `pipeline.reconcile.Stitched`: nothing is
stitched, downloaded or paid again). The job's state is derived
from its segments: failed when one of them failed for good (its row names the segment and
why), done once stitched.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio
import anyio.from_thread
import anyio.to_thread
import av

from pipeline.errors import map_disk_errors
from pipeline.jobstate import JobState
from pipeline.longform.cut import cut_files, cut_segments, fingerprinted
from pipeline.longform.segments import LongPlan
from pipeline.longform.stitch import StitchError, stitch
from pipeline.manifest import MB, Job
from pipeline.media import MediaProbeError, probe, sha256_file
from pipeline.outputs import (
    SEGMENT_MARK,
    job_path,
    long_staging_path,
    place,
    segments_dir,
    size_of,
)
from pipeline.preflight import Checked, MediaFile
from pipeline.reconcile import Stitched, intact
from pipeline.report import SUSPECT, ReportRow
from pipeline.state import JobRecord, LongRecord, StateStore

log = logging.getLogger("pipeline.longform")
CANNOT_CUT = "cannot cut its segments"


def parent_of(record_id: str) -> str | None:
    """The long job a segment record belongs to (None: not a segment, or archived)."""
    parent, mark, _ = record_id.partition(SEGMENT_MARK)
    return parent if mark and "@" not in record_id else None


@dataclass
class LongJobs:
    checked: Checked  # as preflight made it: long jobs whole, their plans in `long`
    store: StateStore
    output_dir: Path
    keep_segments: bool = False
    redo: frozenset[str] = frozenset()  # `--redo`: these long jobs start over, segments and all
    plans: dict[str, LongPlan] = field(default_factory=dict)  # as cut (a saved plan wins)
    segments: dict[str, list[Job]] = field(default_factory=dict)  # of the jobs expanded
    stitched: set[str] = field(default_factory=set)
    problems: dict[str, str] = field(default_factory=dict)  # job id -> why it was not stitched
    uncut: set[str] = field(default_factory=set)  # jobs whose segments could not be cut
    moves: list[Stitched] = field(default_factory=list)  # stitched files due at a new path
    media: dict[Path, MediaFile] = field(default_factory=dict)  # the run's, with the cuts
    _locks: dict[str, anyio.Lock] = field(default_factory=dict)
    _cut_locks: dict[str, anyio.Lock] = field(default_factory=dict)

    # before the run ------------------------------------------------------------------------

    async def expand(self) -> Checked:
        """The checked manifest with each long job replaced by its segments. Nothing is cut
        here: a segment's cut files are made when it needs them (`prepare_inputs`), while the
        rest of the run goes on."""
        jobs: list[Job] = []
        self.media = dict(self.checked.media)  # cut files join it as they are made
        leave = set(self.checked.untouched)  # parents not run: their segments stay as they are
        for job in self.checked.manifest.jobs:
            plan = self.checked.long.get(job.id)
            if plan is None:
                jobs.append(job)
                continue
            plan = await self._plan(job, plan)
            if job.id in self.redo or any(parent_of(i) == job.id for i in self.redo):
                self.store.save_stitched(job.id, None, None)  # (a segment of it) redone
            elif self._is_stitched(job, plan):
                self.stitched.add(job.id)
                leave.add(job.id)
                self._tidy(job.id)
                continue
            self.store.save_long_error(job.id, None)  # tried again now: said again if it recurs
            for note in plan.notes:
                log.info("%s: %s", job.id, note)
            log.info("%s", plan.line())
            folder = segments_dir(self.output_dir, job.id)
            files = [cut_files(folder, i) for i in range(1, len(plan.cuts) + 1)]
            self.segments[job.id] = plan.segment_jobs(job, files)
            jobs.extend(self.segments[job.id])
        self._upgrade_fingerprints()
        untouched = {
            r.id for r in self.store.jobs() if (parent := parent_of(r.id)) and parent in leave
        }
        return replace(
            self.checked,
            manifest=replace(self.checked.manifest, jobs=tuple(jobs)),
            media=self.media,
            untouched=self.checked.untouched | untouched,
        )

    async def _plan(self, job: Job, planned: LongPlan) -> LongPlan:
        """The plan saved for these inputs and parameters, else `planned`; saved, keeping a
        stitched result that the plan would stitch again the same (`LongPlan.same_result`:
        other limits that cut in the same places)."""
        assert job.video is not None
        assert job.audio is not None
        video_sha = self.checked.media[job.video].sha256
        saved = self.store.long_plan(planned.basis)
        plan = await anyio.to_thread.run_sync(resolve_plan, planned, saved, video_sha, job.audio)
        row = long_row(self.store.long_jobs(), job.id)
        self.store.save_long_plan(
            job.id, plan.basis, plan.to_json(), keep=row is not None and same_plan(row, plan)
        )
        self.plans[job.id] = plan
        return plan

    def _is_stitched(self, job: Job, plan: LongPlan) -> bool:
        """Stitched for these inputs, its file where its row says, or found at the job's
        path or its staging name (a run died between a move and its record). If the job's
        `output` changed, its move joins reconcile's (`moves`): one step with the other
        results, so a swap with an ordinary job stages both and displaces neither."""
        row = long_row(self.store.long_jobs(), job.id)
        if row is None or not row.stitched or not same_plan(row, plan) or row.output is None:
            return False
        home = job_path(self.output_dir, job.id, job.output)
        claimed = {r.output for r in self.store.jobs(archived=True) if r.output and intact(r)}
        staged = long_staging_path(self.output_dir, job.id)
        for where in dict.fromkeys((row.output, str(home), str(staged))):
            if where != row.output and where in claimed:
                continue  # another result's file, however long
            if size_of(Path(where)) == row.bytes:
                if where != row.output:
                    self.store.save_stitched(job.id, where, row.bytes)
                if where != str(home):
                    self.moves.append(Stitched(job.id, Path(where), home, row.bytes or 0))
                return True
        return False

    def _upgrade_fingerprints(self) -> None:
        """Records saved under a segment's fingerprint of an earlier version take its content
        fingerprint, so what they paid for is theirs still (`LongPlan.legacy_fingerprint`)."""
        records = self.store.jobs(archived=True)
        for record_id, fingerprint in legacy_upgrades(records, self.plans.values()).items():
            self.store.update(
                record_id,
                "fingerprint: the segment's content (the earlier range-only one recognised)",
                fingerprint=fingerprint,
            )

    # cutting, while the run goes on ---------------------------------------------------------

    def needs_inputs(self, job: Job) -> bool:
        """A segment whose cut files are not made (or not checked) yet in this run."""
        return job.segment is not None and any(p not in self.media for p in job.media_paths())

    async def prepare_inputs(
        self, job_id: str, indexes: Sequence[int], ready: Callable[[int], None] | None = None
    ) -> bool:
        """Make the cut files of segments `indexes` of `job_id` (those not made for their
        fingerprint), in a worker thread, one call for them all; each is hashed and probed
        into the run's media and `ready(index)` told as soon as its files are (in the event
        loop). False: the job cannot be cut (its problem said). Raises DiskError."""
        lock = self._cut_locks.setdefault(job_id, anyio.Lock())
        async with lock:
            if job_id in self.uncut:
                return False
            segments = {s.segment.index: s for s in self.segments[job_id] if s.segment}
            todo = [i for i in indexes if self.needs_inputs(segments[i])]
            for index in (i for i in indexes if i not in todo):
                if ready is not None:
                    ready(index)
            if not todo:
                return True
            job = next(j for j in self.checked.manifest.jobs if j.id == job_id)
            assert job.video is not None
            assert job.audio is not None
            folder = segments_dir(self.output_dir, job_id)
            limit = self.checked.manifest.limits.video_max_mb * MB
            video, audio, plan = job.video, job.audio, self.plans[job_id]

            def arrived(index: int, facts: list[MediaFile]) -> None:
                for fact in facts:
                    self.media[fact.path] = fact
                if ready is not None:
                    ready(index)

            def made(index: int, files: tuple[Path, Path]) -> None:  # in the worker thread
                anyio.from_thread.check_cancelled()  # a stopped run waits for one cut at most
                facts = [MediaFile(path, probe(path), sha256_file(path)) for path in files]
                anyio.from_thread.run_sync(arrived, index, facts)

            def work() -> None:
                with map_disk_errors(f"cannot cut {job_id}'s segments into {folder}"):
                    cut_segments(
                        plan, video, audio, folder, max_bytes=limit, wanted=todo, on_cut=made
                    )

            try:
                await anyio.to_thread.run_sync(work)
            except (av.FFmpegError, MediaProbeError, ValueError, IndexError) as exc:
                self.problems[job_id] = f"{CANNOT_CUT}: {' '.join(str(exc).split())}"
                self.uncut.add(job_id)
                self.store.save_long_error(job_id, self.problems[job_id])
                log.error("%s: %s", job_id, self.problems[job_id])
                return False
            return True

    def _tidy(self, job_id: str) -> None:
        """A stitched job's segment folder goes, unless `--keep-segments`."""
        if not self.keep_segments:
            folder = segments_dir(self.output_dir, job_id)
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):  # the last long job's: `segments/` goes too
                folder.parent.rmdir()

    # during the run -----------------------------------------------------------------------

    async def settle(self, job_id: str) -> None:
        """Stitch `job_id` if all its segments are done with their files; once at a time.
        Raises DiskError when the result cannot be written."""
        lock = self._locks.setdefault(job_id, anyio.Lock())
        async with lock:
            if job_id in self.stitched or job_id not in self.segments:
                return
            records = [self.store.find(s.id) for s in self.segments[job_id]]
            if not all(_done(r) for r in records):
                return
            results = [Path(str(r.output)) for r in records if r is not None]
            stitched = await anyio.to_thread.run_sync(self._stitch, job_id, results)
            if stitched is None:
                problem = self.problems[job_id]
                suspect = next((r for r in records if r is not None and r.suspect), None)
                if suspect is not None:  # what the API made: paid again only on purpose
                    problem += (
                        f"; {suspect.id} is suspect ({suspect.suspect}): --redo {suspect.id}"
                        " pays for that segment alone"
                    )
                self.problems[job_id] = problem
                self.store.save_long_error(job_id, problem)
                return
            # the file is in place before the state file says so: a crash in between
            # stitches again next time (the first file goes to superseded/), never loses one
            dest, size = stitched
            self.store.save_stitched(job_id, str(dest), size)
            self.stitched.add(job_id)
            self.problems.pop(job_id, None)
            self._tidy(job_id)

    async def settle_all(self) -> None:
        for job_id in list(self.segments):
            await self.settle(job_id)

    def _stitch(self, job_id: str, results: Sequence[Path]) -> tuple[Path, int] | None:
        """Blocking, and touching no state: the stitched file placed at the job's name."""
        job = next(j for j in self.checked.manifest.jobs if j.id == job_id)
        assert job.audio is not None
        plan = self.plans[job_id]
        tmp = self.output_dir / f".{job_id}.stitch.mp4"
        dest = job_path(self.output_dir, job_id, job.output)
        with map_disk_errors(f"cannot write {dest}"):
            try:
                mode = stitch(plan, results, job.audio, tmp)
            except StitchError as exc:
                self.problems[job_id] = str(exc)
                log.error("%s: %s; the segments are kept, the next run tries again", job_id, exc)
                return None
            aside = place(tmp, dest)
            size = dest.stat().st_size
        how = "segments copied" if mode == "copy" else "segments encoded again"
        log.info(
            "%s: %d segments stitched into %s (%s, the dub's %.1f s)%s",
            job_id,
            len(results),
            dest,
            how,
            plan.dub_seconds,
            f"; what stood there went to {aside}" if aside else "",
        )
        return dest, size

    # after the run -------------------------------------------------------------------------

    def rows(self, rows: Sequence[ReportRow]) -> list[ReportRow]:
        """Report rows with each long job's derived from the state file (`long_rows`), but
        for jobs found invalid (`--keep-going`)."""
        return long_rows(rows, self.store, leave=self.checked.invalid)

    def failed_since(self, since: float) -> list[Job]:
        """Long jobs of the run failed now: by a segment that failed at or after `since`, or
        in this run, as they could not be cut or stitched."""
        failed = []
        for job in self.checked.manifest.jobs:
            if job.id in self.problems and job.id not in self.stitched:
                failed.append(job)
                continue
            for segment in self.segments.get(job.id, []):
                record = self.store.find(segment.id)
                if record is not None and record.state is JobState.FAILED:
                    history = self.store.history(segment.id)
                    if any(e.to_state == "failed" and e.at >= since for e in history):
                        failed.append(job)
                        break
        return failed


def resolve_plan(planned: LongPlan, saved: str | None, video_sha: str, audio: Path) -> LongPlan:
    """The plan a run goes by: the one saved for `planned`'s basis when there is one (a
    resumed run cuts where it did), fingerprinted (a plan saved by an earlier version has no
    fingerprints: `planned`'s when it cuts the same, else made: blocking), else `planned`."""
    if saved is None:
        return planned
    plan = LongPlan.from_json(planned.job_id, planned.basis, saved)
    if plan.fingerprints and plan.dub:
        return plan
    plan = replace(plan, dub=planned.dub)
    bare = replace(planned, fingerprints=(), notes=plan.notes)
    if bare == plan:
        return replace(plan, fingerprints=planned.fingerprints)
    return fingerprinted(plan, video_sha, audio)


def long_row(rows: Sequence[LongRecord], job_id: str) -> LongRecord | None:
    return next((r for r in rows if r.id == job_id), None)


def same_plan(row: LongRecord, plan: LongPlan) -> bool:
    """Whether the state file's row for a job is of `plan`: its basis, or a plan that
    stitches into the same file."""
    if row.basis == plan.basis:
        return True
    return plan.same_result(LongPlan.from_json(plan.job_id, row.basis, row.plan))


def legacy_fingerprints(plans: Iterable[LongPlan]) -> dict[str, str]:
    """Each segment's fingerprint of an earlier version (`LongPlan.legacy_fingerprint`) ->
    its content fingerprint, for the segments of `plans`."""
    return {
        plan.legacy_fingerprint(index): plan.segment_fingerprint(index)
        for plan in plans
        for index in range(1, len(plan.cuts) + 1)
    }


def legacy_upgrades(records: Sequence[JobRecord], plans: Iterable[LongPlan]) -> dict[str, str]:
    """Record id -> its content fingerprint, for each record saved under a segment
    fingerprint of an earlier version of one of `plans`."""
    legacy = legacy_fingerprints(plans)
    return {r.id: legacy[r.fingerprint] for r in records if r.fingerprint in legacy}


def _done(record: JobRecord | None) -> bool:
    if record is None or record.state is not JobState.DONE or record.output is None:
        return False
    try:
        return Path(record.output).stat().st_size == record.bytes
    except OSError:
        return False


def _segment_state(record: JobRecord | None) -> str:
    if record is None:
        return "unfinished:pending"
    if record.state in (JobState.DONE, JobState.FAILED):
        return record.state.value
    return f"unfinished:{record.state.value}"


def long_rows(
    rows: Sequence[ReportRow],
    store: StateStore,
    *,
    probe_results: bool = True,
    leave: Collection[str] = (),
) -> list[ReportRow]:
    """`rows` with each long job's (one with a row in the state file's `long_jobs`) derived
    from that row and its segments' records: the run's report, `report`, `status` alike.
    Rows of `leave` (jobs refused by preflight now) stay as they are."""
    entries = {e.id: e for e in store.long_jobs() if e.id not in leave}
    if not any(row.id in entries for row in rows):
        return list(rows)
    records = {r.id: r for r in store.jobs() if parent_of(r.id) is not None}
    return [
        derived(row, entries[row.id], records, probe_results) if row.id in entries else row
        for row in rows
    ]


def status_rows(records: Sequence[JobRecord], long: Sequence[LongRecord]) -> list[ReportRow]:
    """A row for each long job of the state file, from its row and its segments' records
    alone (`status` reads no media)."""
    segments = {r.id: r for r in records if parent_of(r.id) is not None}
    blank = ReportRow("", "unfinished:pending", None, None, None, 0, False, 0, 0, None)
    return [derived(replace(blank, id=e.id), e, segments, probe_results=False) for e in long]


def derived(
    row: ReportRow, entry: LongRecord, records: Mapping[str, JobRecord], probe_results: bool
) -> ReportRow:
    """A long job's row: done once stitched with its file in place (suspect when a segment's
    result is: the stitched file shows it), failed when a segment failed (its facts: the
    segment's ErrCode and class) or the job could not be cut or stitched, else unfinished at
    its least advanced segment, or `unfinished:stitching`."""
    plan = LongPlan.from_json(entry.id, entry.basis, entry.plan)
    segments: list[dict[str, object]] = []
    ours: list[JobRecord] = []
    for index, (start, end) in enumerate(plan.ranges(), 1):
        record = records.get(f"{entry.id}{SEGMENT_MARK}{index}")
        if record is not None:
            ours.append(record)
        segments.append(
            {
                "index": index,
                "start": round(start, 3),
                "end": round(end, 3),
                "video_id": record.video_id if record else None,
                "credits": record.credits if record else 0,
                "state": _segment_state(record),
                "error": record.error if record and record.state is JobState.FAILED else None,
            }
        )
    row = replace(
        row,
        video_id=None,
        output=None,
        bytes=None,
        duration=None,
        resolution=None,
        credits=sum(r.credits for r in ours),
        credits_estimated=any(r.credits_estimated for r in ours),
        attempts=sum(r.attempts for r in ours),
        ambiguous_submissions=sum(r.ambiguous for r in ours),
        segments=segments,
        key_fp=None,
    )

    def where(index: int) -> str:
        start, end = plan.ranges()[index - 1]
        return f"segment {index} ({round(start, 3)}-{round(end, 3)} s)"

    if entry.stitched and entry.output is not None and size_of(Path(entry.output)) == entry.bytes:
        suspect = next((r for r in ours if r.suspect), None)
        row = replace(row, state=JobState.DONE.value, output=entry.output, bytes=entry.bytes)
        if suspect is not None:
            why = f"{where(_index(suspect))} suspect: {suspect.suspect}"
            row = replace(row, state=SUSPECT, error=why)
        else:
            row = replace(row, error=None, error_class=None, err_code=None, err_msg=None)
        if probe_results:
            try:
                info = probe(Path(entry.output))
            except MediaProbeError:
                info = None
            if info is not None:
                resolution = f"{info.width}x{info.height}" if info.width else None
                row = replace(row, duration=round(info.duration, 3), resolution=resolution)
        return row
    failed = next((r for r in ours if r.state is JobState.FAILED), None)
    if failed is not None:
        return replace(
            row,
            state=JobState.FAILED.value,
            error=f"{where(_index(failed))} failed: {failed.error}",
            error_class=failed.error_class,
            err_code=failed.err_code,
            err_msg=failed.err_msg,
        )
    if entry.error is not None:
        return replace(
            row,
            state=JobState.FAILED.value,
            error=entry.error,
            # a cut that fails is the input's problem; a stitch, a segment result's
            error_class="ManifestError" if entry.error.startswith(CANNOT_CUT) else "StitchError",
            err_code=None,
            err_msg=None,
        )
    states = [str(s["state"]) for s in segments]
    if all(state == JobState.DONE.value for state in states):
        return replace(row, state="unfinished:stitching")
    behind = next(state for state in states if state != JobState.DONE.value)
    return replace(row, state=behind)


def _index(record: JobRecord) -> int:
    """A segment record's place in its job (1-based)."""
    return int(record.id.rpartition(SEGMENT_MARK)[2])
