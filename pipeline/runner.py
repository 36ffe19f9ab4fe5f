"""The runner: upload -> submit -> poll -> download for every job, resumably.

Concurrency model (all tasks live in one anyio task group):

* A spawner admits jobs one by one while fewer than `concurrency + upload_ahead` are between
  admission and the end of their generation: back-pressure, so a 10,000-job manifest never
  means 10,000 live tasks, and uploads run a bounded distance ahead of submissions.
* Uploads and downloads run under their own capacity limiters and never hold a generation
  slot, so a free slot never waits for a file transfer.
* `SlotLimiter` holds a slot from submission to terminal status: slow start, a ceiling learned
  from 500044, one probe at a time while someone else fills the account (`pipeline.limiter`).
* One `Poller` task polls every generating job when its end is likely (`pipeline.poller`);
  the reply that shows a terminal status commits it and frees the slot in the same step.

Every state change goes through `StateStore` and is committed before the next request.
"""

from __future__ import annotations

import logging
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from pipeline.account import check_balance, unknown_speakers
from pipeline.client import PixverseClient, VideoStatus, new_trace_id
from pipeline.download import Link, download_result
from pipeline.errors import (
    AuthError,
    CreditsError,
    DiskError,
    EndpointError,
    FatalError,
    JobError,
    ManifestError,
    PipelineError,
    SlotLimitError,
    StaleMediaError,
    StateError,
    TransientError,
    VideoGoneError,
)
from pipeline.generating import is_terminal, settle, started_at
from pipeline.jobstate import JobState
from pipeline.limiter import LimiterTiming, Permit, SlotLimiter
from pipeline.manifest import Job
from pipeline.plan import WorkQueue, estimate_credits, generate_body, input_seconds
from pipeline.poller import Poller
from pipeline.preflight import Checked
from pipeline.progress import LogProgress, ProgressSink
from pipeline.reconcile import reconcile
from pipeline.replay import probe_replay
from pipeline.report import ReportRow, build_rows, summary_line, write_report
from pipeline.retry import Sleep
from pipeline.state import JobRecord, StateStore
from pipeline.submit import Submitter, SubmitTries

log = logging.getLogger("pipeline.runner")

# The gateway's replay is re-probed after this long (the contract's replay window is 24 h).
REPLAY_CHECK_MAX_AGE = 24 * 3600.0


class ExitCode(IntEnum):
    OK = 0  # every job done
    JOBS_FAILED = 1  # some jobs failed, the rest done
    USAGE = 2  # bad manifest or usage; nothing sent
    STATE = 3  # state file unreadable, or locked by another run
    ACCOUNT = 4  # bad key, no permission, or out of credits
    DISK = 74  # a result, report or the state file could not be written (EX_IOERR)
    UNFINISHED = 75  # interrupted or unfinished: run the same command again (EX_TEMPFAIL)


@dataclass(frozen=True)
class RunOptions:
    output_dir: Path
    concurrency: int = 5
    poll_interval: float = 5.0
    max_attempts: int = 3
    upload_concurrency: int = 3
    download_concurrency: int = 3
    upload_ahead: int = 5  # jobs that may upload while waiting for a slot
    # PixVerse FAQ: a generation running past 10 minutes no longer holds a concurrency slot.
    slot_release_after: float = 600.0
    # Typical clients give up after 10 minutes (pixverse-api.md); a generation still at
    # status 5 after this long is left for the next run instead of hanging a nightly batch.
    max_wait: float = 1800.0
    redo: frozenset[str] = frozenset()  # job ids to start over even if paid (`--redo`)
    handle_signals: bool = False  # SIGINT/SIGTERM stop the run cleanly (CLI only: main thread)
    progress_every: float = 30.0  # seconds between progress log lines
    probe_backoff: float = 1.0  # first wait between probes of a busy account (pipeline.limiter)
    ceiling_probe_every: float = 120.0  # seconds between tries above the learned ceiling


@dataclass
class RunOutcome:
    rows: list[ReportRow]
    exit_code: ExitCode
    problem: str | None  # the account/state problem that stopped the run, if any
    interrupted: bool
    peak_slots: int
    slot_rejections: int
    report_path: Path

    @property
    def summary(self) -> str:
        return summary_line(self.rows)


@dataclass
class _Ticket:
    """What one job's task holds, released in `finally`; its slot as `pipeline.submit` sees it."""

    limiter: SlotLimiter
    admitted: bool = True
    permit: Permit | None = None  # the generation slot, while held
    reuploaded: bool = False
    tries: SubmitTries = field(default_factory=SubmitTries)

    @property
    def held(self) -> bool:
        return self.permit is not None

    async def acquire(self) -> None:
        self.permit = await self.limiter.acquire()

    def release(self) -> None:
        if self.permit is not None:
            permit, self.permit = self.permit, None
            self.limiter.release(permit)


@dataclass
class _Run:
    checked: Checked
    store: StateStore
    client: PixverseClient
    options: RunOptions
    sleep: Sleep
    wall: Callable[[], float]
    limiter: SlotLimiter = field(init=False)
    poller: Poller = field(init=False)
    admission: anyio.Semaphore = field(init=False)
    uploads: anyio.CapacityLimiter = field(init=False)
    downloads: anyio.CapacityLimiter = field(init=False)
    submitter: Submitter = field(init=False)
    stop_submitting: anyio.Event = field(default_factory=anyio.Event)
    # False when the gateway's trace-id replay could not be checked: nothing may be sent
    can_send: bool = True
    problem: FatalError | StateError | DiskError | TransientError | None = None
    media_locks: dict[str, anyio.Lock] = field(default_factory=dict)
    changed_media: set[str] = field(default_factory=set)  # checked hashes whose file changed
    _links: dict[str, Link] = field(default_factory=dict)  # fresh links from the last poll
    _scope: anyio.CancelScope = field(init=False)
    started: float = field(init=False)
    _saved_ceiling: int | None = None

    def __post_init__(self) -> None:
        self.started = self.wall()
        # nothing is re-sent until the probe says the gateway replays (see `prepare`)
        self.submitter = Submitter(self.store, self.client, self.sleep, self.wall, replays=False)
        o = self.options
        timing = LimiterTiming(o.probe_backoff, o.poll_interval, above_every=o.ceiling_probe_every)
        self.limiter = SlotLimiter(o.concurrency, timing, sleep=self.sleep)
        self.poller = Poller(self.client.status, o.poll_interval, sleep=self.sleep)
        self.admission = anyio.Semaphore(o.concurrency + max(0, o.upload_ahead))
        self.uploads = anyio.CapacityLimiter(o.upload_concurrency)
        self.downloads = anyio.CapacityLimiter(o.download_concurrency)

    @property
    def base_url(self) -> str:
        return self.client.config.base_url

    @property
    def media_scope(self) -> str:
        """Media ids belong to one account: cached per base URL and key fingerprint."""
        return f"{self.base_url} key:{self.submitter.key_fp}"

    # top level ----------------------------------------------------------------------------

    async def prepare(self, jobs: list[Job]) -> list[Job]:
        """Once, before the task group: the gateway's replay (probed), the TTS speakers and the
        balance. Returns the jobs to run. Nothing here holds back paid work: a job with an
        unknown speaker fails alone, and an unreadable list only holds the TTS jobs back."""
        pending = [j for j in jobs if self.store.job(j.id).state is JobState.PENDING]
        to_send = [
            j
            for j in jobs
            if self.store.job(j.id).state in (JobState.PENDING, JobState.SUBMITTING)
            and not self.submitter.foreign_key(self.store.job(j.id))
        ]
        if to_send:
            await self._check_gateway()
        if not self.can_send or not pending:
            return jobs
        held: set[str] = set()
        try:
            unknown = await unknown_speakers(pending, self.client)
        except TransientError as exc:
            held = {j.id for j in pending if j.tts is not None}
            if held:
                self._note_problem(exc)
                log.warning(
                    "cannot list the TTS speakers (%s): %d TTS jobs wait for the next run,"
                    " the rest go on",
                    exc,
                    len(held),
                )
        else:
            for job_id, problem in unknown.items():
                self.store.transition(job_id, JobState.FAILED, problem, error=problem)
                log.error("%s: held back: %s", job_id, problem)
            held = set(unknown)
        await check_balance(self.checked, [j for j in pending if j.id not in held], self.client)
        return [j for j in jobs if j.id not in held]

    async def _check_gateway(self) -> None:
        """Whether this base URL and key replay a re-used trace id: probed for free (two
        uploads) when not checked in the last REPLAY_CHECK_MAX_AGE, and recorded. Never
        assumed: if the probe cannot run, nothing is sent this run."""
        key_fp = self.submitter.key_fp
        known = self.store.gateway_check(self.base_url, key_fp)
        if known is not None and self.wall() - known[2] < REPLAY_CHECK_MAX_AGE:
            replays, detail = known[0], known[1]
        else:
            try:
                verdict = await probe_replay(self.client)
            except TransientError as exc:
                self.can_send = False
                self._note_problem(
                    TransientError(
                        f"cannot tell whether the gateway replays trace ids ({exc}): nothing"
                        " was submitted; paid work went on"
                    )
                )
                log.error("replay probe failed: %s; nothing is submitted this run", exc)
                return
            replays, detail = verdict.replays, verdict.detail
            self.store.save_gateway_check(self.base_url, key_fp, replays, detail)
            log.info("trace-id replay probe (key %s): %s", key_fp, detail)
        self.submitter.replays = replays
        if not replays:
            log.warning(
                "this gateway does not replay trace ids (%s): a submission whose reply is lost"
                " is parked as unconfirmed, never re-sent",
                detail,
            )

    def _note_problem(self, problem: TransientError) -> None:
        if self.problem is None:
            self.problem = problem

    async def execute(self, jobs: list[Job]) -> None:
        async with anyio.create_task_group() as polling:
            polling.start_soon(self.poller.run)
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                queue = WorkQueue(jobs, self.checked.media)
                while queue:
                    await self.admission.acquire()
                    job = queue.pop(longest_first=self.poller.size_predicts())
                    if self.stop_submitting.is_set() and self._is_new(job):
                        self.admission.release()
                        continue
                    tg.start_soon(self._job_task, job)
            polling.cancel_scope.cancel()

    def _is_new(self, job: Job) -> bool:
        return self.store.job(job.id).state is JobState.PENDING

    def _stop_run(self, problem: FatalError | StateError | DiskError) -> None:
        if self.problem is None:
            self.problem = problem
        log.error("stopping the run: %s", problem)
        self._scope.cancel()

    async def _job_task(self, job: Job) -> None:
        ticket = _Ticket(self.limiter)
        try:
            await self._drive(job, ticket)
        except JobError as exc:
            self._fail(job, exc)
        except CreditsError as exc:
            if self.problem is None:
                self.problem = exc
            self.stop_submitting.set()
            log.error("%s: out of credits; no new submissions, in-flight jobs finish", job.id)
        except (FatalError, StateError, DiskError) as exc:
            self._stop_run(exc)  # a disk error too: no paying for results that cannot be saved
        except TransientError as exc:
            log.warning("%s: left unfinished (resumable): %s", job.id, exc)
        except Exception:
            # A reply no one foresaw, or a bug: this job stops where its state says, the others
            # go on, and the run ends unfinished (exit 75) with the traceback in the log.
            log.exception("%s: left unfinished after an unexpected error", job.id)
        finally:
            self._drop_slot(ticket)
            self._leave_admission(ticket)

    def _fail(self, job: Job, exc: JobError) -> None:
        reason = (
            str(exc.err_msg or exc) if exc.err_code is None else f"{exc.err_code}: {exc.err_msg}"
        )
        state = self.store.job(job.id).state
        if state in (JobState.GENERATING, JobState.DOWNLOADING) and not isinstance(
            exc, VideoGoneError
        ):
            # A paid generation is never given up on one odd reply: failing it would make
            # the next run pay again. It stays resumable; `--redo` starts it over on purpose.
            self.store.update(job.id, f"left {state.value}: {reason}", error=reason)
            log.warning("%s: left %s (resumable): %s", job.id, state.value, reason)
            return
        self.store.transition(job.id, JobState.FAILED, reason, error=reason)
        log.warning("%s: failed: %s", job.id, reason)

    def _drop_slot(self, ticket: _Ticket) -> None:
        ticket.release()

    def _save_ceiling(self) -> None:
        """Record a newly learned ceiling for `status` (after the limiter has moved on)."""
        if (ceiling := self.limiter.ceiling) not in (None, self._saved_ceiling):
            self._saved_ceiling = ceiling
            key_fp, concurrency = self.submitter.key_fp, self.options.concurrency
            self.store.save_slot_ceiling(self.base_url, key_fp, ceiling, concurrency)

    def _leave_admission(self, ticket: _Ticket) -> None:
        if ticket.admitted:
            ticket.admitted = False
            self.admission.release()

    # the state machine --------------------------------------------------------------------

    async def _drive(self, job: Job, ticket: _Ticket) -> None:
        record = self.store.job(job.id)
        if record.state is not JobState.PENDING and self.submitter.foreign_key(record):
            # the gateway's replay and the video belong to the key that submitted it: another
            # key would pay again on a re-send and see 500008 on a poll
            note = f"submitted with key {record.key_fp}: run with that key to finish it"
            if record.error != note:
                self.store.update(job.id, note, error=note)
            log.warning("%s: left %s: %s", job.id, record.state.value, note)
            return
        resumed = record.state is JobState.GENERATING
        if record.state is JobState.SUBMITTING:
            record = self.submitter.resumed(record)
        while True:
            state = record.state
            if state is JobState.PENDING:
                if self.stop_submitting.is_set() or not self.can_send:
                    return
                await self._ensure_media(job)
                if not ticket.held:
                    await ticket.acquire()
                if self.stop_submitting.is_set():
                    return
                record = self.store.transition(
                    job.id,
                    JobState.SUBMITTING,
                    "submitting",
                    trace_id=new_trace_id(),
                    sent_at=None,
                    resend_after=None,
                    trace_ambiguous=0,
                    key_fp=self.submitter.key_fp,
                )
            elif state is JobState.SUBMITTING:
                if not self.can_send:
                    return
                record = await self._submit(job, record, ticket)
            elif state is JobState.GENERATING:
                record = await self._await_generation(job, record, ticket, poll_first=resumed)
                resumed = False
            elif state is JobState.DOWNLOADING:
                self._leave_admission(ticket)
                record = await self._download(job, record)
            else:
                return

    async def _ensure_media(self, job: Job) -> dict[Path, int]:
        ids: dict[Path, int] = {}
        for path in job.media_paths():
            facts = self.checked.media[path]
            kind = facts.info.kind
            lock = self.media_locks.setdefault(facts.sha256, anyio.Lock())
            async with lock:  # one upload per distinct content, however many jobs share it
                media_id = self.store.media_id(facts.sha256, self.media_scope)
                if media_id is None and facts.sha256 in self.changed_media:
                    raise _changed_file(path)  # known already: no second upload of it
                if media_id is None:
                    async with self.uploads:
                        sent = await self.client.upload(path, facts.info.container)
                    if sent.sha256 != facts.sha256:
                        # preflight checked other bytes: caching this media_id under their hash
                        # would submit unchecked media now and in every later run
                        self.changed_media.add(facts.sha256)
                        raise _changed_file(path)
                    if sent.media_type and sent.media_type != facts.info.kind:
                        raise JobError(f"{path.name}: uploaded as {sent.media_type}, not {kind}")
                    media_id = sent.media_id
                    self.store.save_media(facts.sha256, self.media_scope, facts.info.kind, media_id)
                    log.info("%s: uploaded %s as media %s", job.id, path.name, media_id)
            ids[path] = media_id
        return ids

    async def _submit(self, job: Job, record: JobRecord, ticket: _Ticket) -> JobRecord:
        async def body() -> dict[str, Any]:
            return generate_body(job, await self._ensure_media(job))

        try:
            sent = await self.submitter.step(record, body, ticket, ticket.tries)
        except SlotLimitError:
            # no backoff of its own: the limiter decides when this job (or any) sends again
            if ticket.permit is not None:
                permit, ticket.permit = ticket.permit, None
                self.limiter.rejected(permit)
            record = self.store.transition(job.id, JobState.PENDING, "500044: waiting for a slot")
            self._save_ceiling()
            return record
        except StaleMediaError:
            self._drop_slot(ticket)
            for path in job.media_paths():
                self.store.forget_media(self.checked.media[path].sha256, self.media_scope)
            if ticket.reuploaded:
                raise
            ticket.reuploaded = True
            return self.store.transition(job.id, JobState.PENDING, "stale media id: re-upload")
        except CreditsError:
            self._drop_slot(ticket)
            self.store.transition(job.id, JobState.PENDING, "500090: out of credits")
            raise
        except AuthError as exc:
            self._drop_slot(ticket)
            # 500020 and the like are the gateway's answer for this trace id, replayed if it
            # were re-sent: the next run needs a new one. A bare 401 may come from in front of
            # the gateway, so an id that may have been processed is kept.
            if exc.http_status != 401 or not self.store.job(job.id).trace_ambiguous:
                self.store.transition(job.id, JobState.PENDING, f"account problem: {exc}")
            raise
        if isinstance(sent, JobRecord):
            return sent  # parked, or to be sent again
        credits = (
            sent.credits if sent.credits is not None else estimate_credits(job, self.checked.media)
        )
        record = self.store.job(job.id)
        replayed = record.trace_ambiguous and record.sent_at is not None
        record = self.store.transition(
            job.id,
            JobState.GENERATING,
            f"video {sent.video_id}",
            video_id=sent.video_id,
            attempts=record.attempts + 1,
            credits=record.credits + credits,
            last_credits=credits,
            credits_estimated=record.credits_estimated or sent.credits is None,
            # a replayed reply may come long after the generation started, which was after the
            # id's first send: the slot's 10-minute release counts from there (refined by the
            # server's create_time on the first poll)
            submitted_at=record.sent_at if replayed else self.wall(),
            resend_after=None,
        )
        if ticket.permit is not None:
            self.limiter.accepted(ticket.permit)
            self._save_ceiling()
        log.info("%s: submitted as video %s (attempt %d)", job.id, sent.video_id, record.attempts)
        return record

    async def _await_generation(
        self, job: Job, record: JobRecord, ticket: _Ticket, *, poll_first: bool
    ) -> JobRecord:
        """Until a terminal status, which the poller's reply commits and frees the slot for."""
        video_id = record.video_id
        assert video_id is not None
        if ticket.permit is None:  # resumed: the generation already occupies an account slot
            ticket.permit = self.limiter.adopt()
        latest = record

        def on_status(status: VideoStatus) -> bool:
            nonlocal latest
            now = self.wall()
            latest = started_at(self.store, latest, status)
            running_for = now - (latest.submitted_at or 0)
            # the wait is counted per run: a resumed run gives a slow generation its own
            # --max-wait, not only what is left of the first run's
            waited = now - max(latest.submitted_at or 0, self.started)
            if ticket.permit is not None and running_for > self.options.slot_release_after:
                # the account no longer counts it either: let the next job in
                self._drop_slot(ticket)
                self._leave_admission(ticket)
            if not is_terminal(status):
                self.limiter.seen_running(ticket.permit)
                if waited > self.options.max_wait:
                    raise TransientError(
                        f"video {video_id} still generating after {running_for:.0f} s;"
                        " left for the next run"
                    )
                return False
            self._drop_slot(ticket)
            if status.status == 1:
                self._links[job.id] = Link(status.url, status.size)
            latest = settle(self.store, latest, status.status, self.options.max_attempts)
            return True

        await self.poller.watch(
            video_id,
            on_status,
            elapsed=max(0.0, self.wall() - (record.submitted_at or self.wall())),
            size=input_seconds(job, self.checked.media),
            poll_now=poll_first,
            poll_by=self.options.slot_release_after,
        )
        return latest

    async def _download(self, job: Job, record: JobRecord) -> JobRecord:
        assert record.video_id is not None
        dest = self.options.output_dir / f"{job.id}.mp4"
        link = self._links.pop(job.id, Link(None, None))
        async with self.downloads:
            size = await download_result(self.client, record.video_id, dest, link, sleep=self.sleep)
        log.info("%s: downloaded %s (%d bytes)", job.id, dest, size)
        return self.store.transition(
            job.id, JobState.DONE, "downloaded", output=str(dest), bytes=size, error=None
        )


def _changed_file(path: Path) -> JobError:
    return JobError(
        f"{path.name} changed during the run (its content is not what was checked);"
        " the next run checks it again"
    )


async def run_batch(
    checked: Checked,
    store: StateStore,
    client: PixverseClient,
    options: RunOptions,
    *,
    sleep: Sleep = anyio.sleep,
    wall: Callable[[], float] = time.time,
    progress: ProgressSink | None = None,
) -> RunOutcome:
    """Run every job of `checked` to a terminal state (or as far as the account allows), then
    write the report. Raises ManifestError (unknown speaker) before anything is submitted."""
    options.output_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(checked, store, client, options, sleep, wall)
    sink = progress if progress is not None else LogProgress(options.progress_every)
    started = wall()
    jobs = reconcile(checked, store, options.output_dir, options.redo)
    try:
        jobs = await run.prepare(jobs)
    except FatalError as exc:
        run.problem = exc
    with anyio.CancelScope() as scope:
        if not isinstance(run.problem, FatalError):
            async with anyio.create_task_group() as tg:
                if options.handle_signals:
                    tg.start_soon(_cancel_on_signal, scope)
                tg.start_soon(_sample_progress, run, sink)
                await run.execute(jobs)
                tg.cancel_scope.cancel()
    _tell_progress(run, sink)  # the final picture
    sink.close()
    interrupted = scope.cancel_called
    stopped_by = str(run.problem) if run.problem else "interrupted" if interrupted else None
    rows = build_rows([store.job(j.id) for j in checked.manifest.jobs], stopped_by)
    exit_code = _exit_code(rows, run.problem, interrupted)
    report_path = write_report(
        options.output_dir,
        rows,
        {
            "manifest": str(checked.manifest.path),
            "started_at": _iso(started),
            "finished_at": _iso(wall()),
            "exit_code": int(exit_code),
            "problem": str(run.problem) if run.problem else None,
            "interrupted": interrupted,
            "peak_slots": run.limiter.peak,
            "slot_rejections": run.limiter.rejections,
            "slot_ceiling": run.limiter.ceiling,
        },
        redact=client.redact,
    )
    return RunOutcome(
        rows=rows,
        exit_code=exit_code,
        problem=str(run.problem) if run.problem else None,
        interrupted=interrupted,
        peak_slots=run.limiter.peak,
        slot_rejections=run.limiter.rejections,
        report_path=report_path,
    )


async def _sample_progress(run: _Run, sink: ProgressSink) -> None:
    while True:
        await run.sleep(sink.interval)
        _tell_progress(run, sink)


def _tell_progress(run: _Run, sink: ProgressSink) -> None:
    ids = {j.id for j in run.checked.manifest.jobs}
    counts = Counter(r.state.value for r in run.store.jobs() if r.id in ids)
    sink.update(counts, len(ids), run.limiter.describe())


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


async def _cancel_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.warning(
                "%s: stopping; run the same command again to resume", signal.Signals(signum).name
            )
            scope.cancel()
            return


def exit_code_for(error: PipelineError) -> ExitCode:
    """The documented exit code of an error that ends a command (the CLI uses it too)."""
    if isinstance(error, ManifestError | EndpointError):
        return ExitCode.USAGE
    if isinstance(error, StateError):
        return ExitCode.STATE
    if isinstance(error, DiskError):
        return ExitCode.DISK
    if isinstance(error, FatalError):
        return ExitCode.ACCOUNT
    return ExitCode.UNFINISHED  # transient: the same command again finishes the work


def _exit_code(rows: list[ReportRow], problem: PipelineError | None, interrupted: bool) -> ExitCode:
    if problem is not None and not isinstance(problem, TransientError):
        return exit_code_for(problem)
    if interrupted or any(r.state.startswith("unfinished") for r in rows):
        return ExitCode.UNFINISHED
    if any(r.state == "failed" for r in rows):
        return ExitCode.JOBS_FAILED
    return ExitCode.OK
