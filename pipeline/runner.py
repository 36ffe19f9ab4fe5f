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
* Several API keys: each is an `Account` of `pipeline.pool` with its own limiter, submitter
  (replay verdict), media ids and tally; new work goes to a key with a free slot, a submitted
  job stays with the key that sent it, and a refused or empty key is retired for the run.

Every state change goes through `StateStore` and is committed before the next request.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from pipeline.account import check_balance
from pipeline.budget import Budget
from pipeline.client import PixverseClient, Speaker, Submission, VideoStatus, new_trace_id
from pipeline.download import Link, download_result
from pipeline.errors import (
    ApiError,
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
    map_disk_errors,
)
from pipeline.failed import failed_this_run, write_failed_manifest
from pipeline.generating import is_terminal, settle, started_at
from pipeline.jobstate import JobState
from pipeline.limiter import LimiterTiming, Permit, SlotLimiter
from pipeline.longform.run import LongJobs, legacy_fingerprints
from pipeline.manifest import Job
from pipeline.media import ResultCheck, judge_result
from pipeline.outputs import archive_path, job_path
from pipeline.plan import (
    WorkQueue,
    estimate_credits,
    fingerprint,
    generate_body,
    input_seconds,
)
from pipeline.poller import Poller
from pipeline.pool import Account, AccountPool, Binding
from pipeline.preflight import Checked
from pipeline.progress import LogProgress, ProgressSink, Snapshot, Tracker
from pipeline.reconcile import reconcile, take_paid_from
from pipeline.report import (
    ReportRow,
    credits_total,
    job_rows,
    keys_line,
    new_run_id,
    run_facts,
    summary_line,
    write_report,
)
from pipeline.retry import Sleep
from pipeline.secrets import Redactor
from pipeline.speakers import SpeakerBook, needs_list, resolve_checked
from pipeline.state import JobRecord, StateStore
from pipeline.submit import (
    BootClock,
    Submitter,
    SubmitTries,
    boot_time,
    iso,
    unanswered_send,
)

log = logging.getLogger("pipeline.runner")

DOWNLOAD_BACKLOG = 8  # finished generations that may wait for downloads, per admission place


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
    # busy replies to a possibly-processed trace id must last this long before the id counts
    # as pinned to "busy" by the gateway and is replaced (pipeline.submit)
    busy_pinned_after: float = 5.0
    probe_backoff: float = 1.0  # first wait between probes of a busy account (pipeline.limiter)
    ceiling_probe_every: float = 120.0  # seconds between tries above the learned ceiling
    run_id: str | None = None  # names the run in its report (default: a new one)
    started_at: float | None = None  # when the command started, before preflight (default: now)
    max_credits: int | None = None  # `--max-credits`: this run's spend never passes it
    retry_failed: bool = False  # `--retry-failed`: failures that would recur are sent again
    keep_segments: bool = False  # `--keep-segments`: a long job's segment files stay after


@dataclass
class RunOutcome:
    rows: list[ReportRow]
    exit_code: ExitCode
    problem: str | None  # the account/state problem that stopped the run, if any
    interrupted: bool
    peak_slots: int
    slot_rejections: int
    report_path: Path
    run_id: str = ""
    credits_this_run: int = 0  # net: refunds this run took off are counted
    failed_manifest: Path | None = None  # failed.yaml, when jobs failed this run
    keys: list[dict[str, object]] = field(default_factory=list)  # per key: `Account.tally`

    @property
    def summary(self) -> str:
        return summary_line(self.rows) + keys_line(self.keys)


@dataclass(eq=False)
class _Ticket:
    """What one job's task holds, released in `finally`; its slot as `pipeline.submit` sees it."""

    pool: AccountPool
    job_id: str
    admitted: bool = True
    downloading: bool = False  # holds a place among the jobs between generation and DONE
    binding: Binding = field(default_factory=Binding)  # the key it goes to (`pipeline.pool`)
    permit: Permit | None = None  # the generation slot, while held
    holder: Account | None = None  # whose slot `permit` is
    reuploaded: bool = False
    tries: SubmitTries = field(default_factory=SubmitTries)
    scope: anyio.CancelScope | None = None  # cancelled when its key is refused mid-run

    @property
    def held(self) -> bool:
        return self.permit is not None

    @property
    def account(self) -> Account:
        """The key of a job already bound to one (a submission, a generation, a download)."""
        assert self.binding.account is not None
        return self.binding.account

    async def acquire(self) -> None:
        """A slot of the job's own key (a re-send goes out with the key that sent it)."""
        account = self.account
        self.permit, self.holder = await account.limiter.acquire(), account

    def take(self, permit: Permit, holder: Account) -> None:
        self.permit, self.holder = permit, holder

    def adopt(self) -> None:
        """A generation found running: counted in its key's slots, never waits."""
        self.permit, self.holder = self.account.limiter.adopt(), self.account

    def release(self) -> None:
        if self.permit is not None and self.holder is not None:
            permit, self.permit = self.permit, None
            self.holder.limiter.release(permit)
            self.pool.notify()


@dataclass
class _Run:
    checked: Checked
    store: StateStore
    clients: list[PixverseClient]  # one per API key, in the order given
    options: RunOptions
    sleep: Sleep
    wall: Callable[[], float]
    pool: AccountPool = field(init=False)
    poller: Poller = field(init=False)
    admission: anyio.Semaphore = field(init=False)
    download_queue: anyio.Semaphore = field(init=False)  # jobs past generation, not yet DONE
    uploads: anyio.CapacityLimiter = field(init=False)
    downloads: anyio.CapacityLimiter = field(init=False)
    stop_submitting: anyio.Event = field(default_factory=anyio.Event)
    problem: FatalError | StateError | DiskError | TransientError | None = None
    # one upload per distinct content and key, however many jobs share it
    media_locks: dict[tuple[str, str], anyio.Lock] = field(default_factory=dict)
    media_cache: dict[tuple[str, str], int] = field(default_factory=dict)  # (sha256, scope)
    changed_media: set[str] = field(default_factory=set)  # checked hashes whose file changed
    _links: dict[str, Link] = field(default_factory=dict)  # fresh links from the last poll
    _watched: dict[int, Account] = field(default_factory=dict)  # video id -> the key that made it
    # video id -> its key's limiter's `answers` when its latest poll left (review 8, R8-2)
    _asked: dict[int, int] = field(default_factory=dict)
    _tickets: set[_Ticket] = field(default_factory=set)  # of the live job tasks
    _scope: anyio.CancelScope = field(init=False)
    started: float = field(init=False)
    budget: Budget = field(init=False)
    longform: LongJobs | None = None  # the run's long jobs, stitched as segments finish
    # `resolve_speakers`: why the speaker list could not be read, and the jobs whose speaker
    # is no speaker of the list (each with its one-line problem)
    speakers_unread: ApiError | None = None
    speaker_problems: dict[str, str] = field(default_factory=dict)
    _arrived: anyio.Event = field(default_factory=anyio.Event)  # a cut segment joined the queue
    _cutting: bool = False  # segments are being cut: more work may join the queue
    boot: BootClock = boot_time  # the re-send deadline's clock that never steps

    def __post_init__(self) -> None:
        self.started = self.wall()
        before = self.store.total_credits()
        self.budget = Budget(self.options.max_credits, lambda: self.store.total_credits() - before)
        o = self.options
        timing = LimiterTiming(o.probe_backoff, o.poll_interval, above_every=o.ceiling_probe_every)
        # per key: its own submitter (nothing is re-sent until its probe says the gateway
        # replays: see `prepare`) and limiter (`--concurrency` is per key)
        self.pool = AccountPool(
            [
                Account(
                    client,
                    Submitter(
                        self.store, client, self.sleep, self.wall, o.busy_pinned_after, self.boot
                    ),
                    SlotLimiter(o.concurrency, timing, sleep=self.sleep),
                )
                for client in self.clients
            ]
        )
        self.poller = Poller(self._status, o.poll_interval, sleep=self.sleep)
        keys = len(self.clients)
        self.admission = anyio.Semaphore(keys * (o.concurrency + max(0, o.upload_ahead)))
        # results waiting for a download slot: bounded (live tasks stay bounded), but far
        # more than admission, so slow downloads do not stop new work from taking the
        # account's slots (review 7, R7-1): downloading holds no slot
        admitted = keys * (o.concurrency + max(0, o.upload_ahead))
        self.download_queue = anyio.Semaphore(DOWNLOAD_BACKLOG * admitted + 64)
        self.uploads = anyio.CapacityLimiter(o.upload_concurrency)
        self.downloads = anyio.CapacityLimiter(o.download_concurrency)

    @property
    def base_url(self) -> str:
        return self.clients[0].config.base_url

    @property
    def media_scope(self) -> str:
        """The first key's media scope (`pipeline.pool.media_scope`)."""
        return self.pool.accounts[0].media_scope

    async def _status(self, video_id: int) -> VideoStatus:
        """A poll, with the key that created the video: another key would see 500008."""
        account = self._watched[video_id]
        self._asked[video_id] = account.limiter.answers  # what a reply can vouch for (R8-2)
        return await account.client.status(video_id)

    def _whose(self, account: Account) -> str:
        """How a message names a key when there are several (nothing when there is one)."""
        return f"key {account.key_fp}: " if self.pool.several else ""

    # top level ----------------------------------------------------------------------------

    async def resolve_speakers(self, checked: Checked) -> Checked:
        """Once, before reconcile: the TTS speakers named by id or name resolved to their ids
        from one speaker-list request (`pipeline.speakers`), so that fingerprints and bodies
        carry the id; not asked when every TTS job is paid for already and the list a run saw
        last (in the state file) finds their speakers. A key refused here stops the run
        (`problem`), as in `prepare`."""
        listed: list[Speaker] | None = None
        kept = SpeakerBook.kept(self.store, self.base_url)
        if needs_list(checked, self.store, kept, self.options.redo, self.options.retry_failed):
            try:
                listed = await self._speaker_list()
            except FatalError as exc:
                if _key_rejected(exc):
                    self.problem = exc
                else:  # a refusal of the list itself: not the jobs'
                    self.speakers_unread = exc
            except ApiError as exc:
                self.speakers_unread = exc
        self.checked, self.speaker_problems = resolve_checked(
            checked, self.store, listed, self.base_url
        )
        return self.checked

    async def prepare(self, jobs: list[Job]) -> list[Job]:
        """Once, before the task group: the gateway's replay (probed, per key), the TTS
        speakers (as `resolve_speakers` found them) and the balance. Returns the jobs to run.
        Nothing here holds back paid work: a job with an unknown speaker fails alone, and an
        unreadable list only holds the TTS jobs back."""
        pending = [j for j in jobs if self.store.job(j.id).state is JobState.PENDING]
        # anything that may be sent in this run: new work, unanswered sends, and generations
        # that may end in status 8 and be submitted again
        sendable = (JobState.PENDING, JobState.SUBMITTING, JobState.GENERATING)
        to_send = [
            record
            for record in (self.store.job(j.id) for j in jobs)
            if record.state in sendable and not self.pool.foreign(record)
        ]
        if to_send:
            await self._check_gateways(to_send)
        if not self.sending_allowed or not pending:
            return jobs
        held: set[str] = set()
        if self.speakers_unread is not None:  # not the jobs' fault: they wait
            exc = self.speakers_unread
            held = {j.id for j in pending if j.tts is not None}
            if held:
                self._note_problem(TransientError(f"cannot list the TTS speakers: {exc}"))
                log.warning(
                    "cannot list the TTS speakers (%s): %d TTS jobs wait for the next run,"
                    " the rest go on",
                    exc,
                    len(held),
                )
        else:
            ids = {j.id for j in pending}
            unknown = {i: p for i, p in self.speaker_problems.items() if i in ids}
            for job_id, problem in unknown.items():
                self.store.transition(
                    job_id, JobState.FAILED, problem, error=problem, error_class="ManifestError"
                )
                log.error("%s: held back: %s", job_id, problem)
            held = set(unknown)
        clients = [a.client for a in self.pool.usable()]
        await check_balance(self.checked, [j for j in pending if j.id not in held], clients)
        return [j for j in jobs if j.id not in held]

    async def _speaker_list(self) -> list[Speaker]:
        """The speaker list, asked with the first usable key; a refused key is retired and
        the next one asked (one key: the refusal stops the run, as ever)."""
        while True:
            usable = self.pool.usable()
            if not usable:  # the others cannot send: nothing new goes out anyway
                raise TransientError("no key left to list the TTS speakers with")
            account = usable[0]
            try:
                return await account.client.speakers()
            except AuthError as exc:
                if not _key_rejected(exc) or self.pool.retire(account, exc):
                    raise

    async def _check_gateways(self, records: list[JobRecord]) -> None:
        """Probe the keys that may send: every key when there is new work (or a send no key
        owns yet), else the keys that own the records."""
        new_work = any(r.state is JobState.PENDING or self.pool.owner(r) is None for r in records)
        owners = {self.pool.owner(r) for r in records}
        for account in self.pool.accounts:
            if new_work or account in owners:
                await self._check_gateway(account)

    async def _check_gateway(self, account: Account) -> None:
        """Whether this base URL and key replay a re-used trace id (`Submitter.verdict`: a
        recorded verdict under a day old, else the free probe). Never assumed: if the probe
        cannot run, nothing is sent with this key this run, and paid work goes on."""
        whose = self._whose(account)
        try:
            await account.submitter.verdict(fresh=False)
        except TransientError as exc:
            account.can_send = False
            self._note_problem(
                TransientError(f"{whose}{exc}: nothing was submitted; paid work went on")
            )
            log.error("%sreplay probe failed: %s; nothing is submitted this run", whose, exc)
        except FatalError as exc:
            if _key_rejected(exc):
                if self.pool.retire(account, exc):
                    raise
                return
            # e.g. no permission to upload: nothing can be submitted, but what was paid for
            # is still polled and fetched
            account.can_send = False
            self._note_problem(exc)
            log.error("%sreplay probe refused: %s; nothing is submitted this run", whose, exc)

    @property
    def sending_allowed(self) -> bool:
        """False once no key may send: retired, or its gateway's replay could not be checked."""
        return bool(self.pool.usable())

    def _note_problem(self, problem: TransientError | FatalError) -> None:
        if self.problem is None:
            self.problem = problem

    async def execute(self, jobs: list[Job]) -> None:
        async with anyio.create_task_group() as polling:
            polling.start_soon(self.poller.run)
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                for record in self.store.jobs(archived=True):
                    paid = record.state in (JobState.GENERATING, JobState.DOWNLOADING)
                    if (
                        record.archived
                        and (paid or unanswered_send(record))
                        and not self.pool.foreign(record)
                    ):
                        await self.admission.acquire()
                        tg.start_soon(self._archived_task, record.id)
                # segments still to be sent wait for their cut files, made meanwhile
                later = [j for j in jobs if self._waits_for_cut(j)]
                queue = WorkQueue([j for j in jobs if j not in later], self.checked.media)
                if later:
                    self._cutting = True
                    tg.start_soon(self._cut_segments, later, queue)
                while queue or self._cutting:
                    if not queue:
                        await self._arrived.wait()
                        self._arrived = anyio.Event()
                        continue
                    await self.admission.acquire()
                    job = queue.pop(longest_first=self.poller.size_predicts())
                    if self.stop_submitting.is_set() and self._is_new(job):
                        self.admission.release()
                        continue
                    tg.start_soon(self._job_task, job)
            polling.cancel_scope.cancel()

    def _waits_for_cut(self, job: Job) -> bool:
        """A long job's segment that will be sent but has no cut files yet in this run."""
        if self.longform is None or not self.longform.needs_inputs(job):
            return False
        return self.store.job(job.id).state in (JobState.PENDING, JobState.SUBMITTING)

    async def _cut_segments(self, later: list[Job], queue: WorkQueue) -> None:
        """Cut the segments in `later` (one worker thread, a long job at a time, in manifest
        order) while the spawner admits other work; each joins `queue` once its files are
        made. A job that cannot be cut leaves its segments out (its problem is reported)."""
        assert self.longform is not None
        waiting: dict[str, dict[int, Job]] = {}
        for job in later:
            assert job.segment is not None
            waiting.setdefault(job.segment.parent, {})[job.segment.index] = job
        try:
            for parent, segments in waiting.items():

                def ready(index: int, segments: dict[int, Job] = segments) -> None:
                    queue.push(segments[index])
                    self._arrived.set()

                await self.longform.prepare_inputs(parent, list(segments), ready)
        except DiskError as exc:
            self._stop_run(exc)
        finally:
            self._cutting = False
            self._arrived.set()

    async def _inputs_ready(self, job: Job) -> bool:
        """A segment about to be sent has its cut files (made now if it had none: a segment
        sent again after status 8). False: it cannot be cut."""
        if self.longform is None or job.segment is None or not self.longform.needs_inputs(job):
            return True
        return await self.longform.prepare_inputs(job.segment.parent, [job.segment.index])

    def _is_new(self, job: Job) -> bool:
        return self.store.job(job.id).state is JobState.PENDING

    def _stop_run(self, problem: FatalError | StateError | DiskError) -> None:
        if self.problem is None:
            self.problem = problem
        log.error("stopping the run: %s", problem)
        self._scope.cancel()

    async def _job_task(self, job: Job) -> None:
        await self._guarded(job.id, lambda ticket: self._drive(job, ticket))
        if job.segment is not None and self.longform is not None:
            await self._stitch(self.longform.settle(job.segment.parent))

    async def _stitch(self, settling: Awaitable[None]) -> None:
        """Stitch a long job whose segments are done (`pipeline.longform.run`)."""
        try:
            await settling
        except DiskError as exc:
            self._stop_run(exc)

    async def _archived_task(self, record_id: str) -> None:
        await self._guarded(record_id, lambda ticket: self._finish_archived(record_id, ticket))

    async def _guarded(self, job_id: str, work: Callable[[_Ticket], Awaitable[None]]) -> None:
        """Run one job's work; what it raises decides for the job, its key or the run."""
        ticket = _Ticket(self.pool, job_id)
        self._tickets.add(ticket)
        with anyio.CancelScope() as ticket.scope:
            await self._guarded_work(ticket, work)
        if ticket.scope.cancel_called:  # its key was refused while it was in flight
            record = self.store.job(job_id)
            log.warning(
                "%s: left %s for a later run: key %s was refused",
                job_id,
                record.state.value,
                record.key_fp,
            )

    async def _guarded_work(
        self, ticket: _Ticket, work: Callable[[_Ticket], Awaitable[None]]
    ) -> None:
        job_id = ticket.job_id
        try:
            await work(ticket)
        except JobError as exc:
            self._fail(job_id, exc)
        except CreditsError as exc:
            if self.pool.retire(ticket.binding.account or self.pool.accounts[0], exc):
                if self.problem is None:
                    self.problem = exc
                self.stop_submitting.set()
                log.error("%s: out of credits; no new submissions, in-flight jobs finish", job_id)
        except AuthError as exc:
            refused = ticket.binding.account
            if refused is None or self._key_refused(refused, exc):
                self._stop_run(exc)
            else:
                log.warning("%s: left for a later run: %s", job_id, exc)
        except (FatalError, StateError, DiskError) as exc:
            self._stop_run(exc)  # a disk error too: no paying for results that cannot be saved
        except TransientError as exc:
            self.store.update(job_id, f"left unfinished: {exc}", **_error_facts(exc))
            log.warning("%s: left unfinished (resumable): %s", job_id, exc)
        except Exception:
            # A reply no one foresaw, or a bug: this job stops where its state says, the others
            # go on, and the run ends unfinished (exit 75) with the traceback in the log.
            log.exception("%s: left unfinished after an unexpected error", job_id)
        finally:
            self._drop_slot(ticket)
            self.pool.unbind(ticket.binding)
            self._leave_admission(ticket)
            self._leave_download_queue(ticket)
            self._settle(job_id)
            self._tickets.discard(ticket)

    def _key_refused(self, account: Account, exc: AuthError) -> bool:
        """Retire a refused key (400012, 500020, HTTP 401): its generations stop being polled
        now and are left for a later run; jobs waiting for its slots go to another key, and a
        submission on its way gets its answer (a refusal sends it to another key too). True
        when every key is refused or retired: then the run stops, as it does with one key."""
        if self.pool.retire(account, exc):
            return True
        for ticket in list(self._tickets):
            record = self.store.find(ticket.job_id)
            if (
                ticket.scope is not None
                and ticket.binding.account is account
                and record is not None
                and record.state is JobState.GENERATING
                and record.key_fp in (account.key_fp, None)
            ):
                ticket.scope.cancel()
        return False

    def _fail(self, job_id: str, exc: JobError) -> None:
        reason = (
            str(exc.err_msg or exc) if exc.err_code is None else f"{exc.err_code}: {exc.err_msg}"
        )
        state = self.store.job(job_id).state
        if state in (JobState.GENERATING, JobState.DOWNLOADING) and not isinstance(
            exc, VideoGoneError
        ):
            # A paid generation is never given up on one odd reply: failing it would make
            # the next run pay again. It stays resumable; `--redo` starts it over on purpose.
            self.store.update(job_id, f"left {state.value}: {reason}", **_error_facts(exc, reason))
            log.warning("%s: left %s (resumable): %s", job_id, state.value, reason)
            return
        self.store.transition(job_id, JobState.FAILED, reason, **_error_facts(exc, reason))
        log.warning("%s: failed: %s", job_id, reason)

    def _drop_slot(self, ticket: _Ticket) -> None:
        ticket.release()

    def _save_ceiling(self, account: Account) -> None:
        """Record a newly learned ceiling for `status` (after the limiter has moved on)."""
        if (ceiling := account.limiter.ceiling) not in (None, account.saved_ceiling):
            account.saved_ceiling = ceiling
            key_fp, concurrency = account.key_fp, self.options.concurrency
            self.store.save_slot_ceiling(self.base_url, key_fp, ceiling, concurrency)

    async def _queue_for_download(self, ticket: _Ticket) -> None:
        """From admission to the download queue: a place there first (so when downloads fall
        behind, admission stops, and live tasks stay bounded: issue 6 found thousands of
        finished generations each waiting in a task for one of the download slots), then the
        admission place goes to the next job. The generation slot was given back already."""
        if not ticket.downloading:
            await self.download_queue.acquire()
            ticket.downloading = True
        self._leave_admission(ticket)

    def _leave_download_queue(self, ticket: _Ticket) -> None:
        if ticket.downloading:
            ticket.downloading = False
            self.download_queue.release()

    def _leave_admission(self, ticket: _Ticket) -> None:
        if ticket.admitted:
            ticket.admitted = False
            self.admission.release()

    # the state machine --------------------------------------------------------------------

    async def _drive(self, job: Job, ticket: _Ticket) -> None:
        record = self.store.job(job.id)
        if self.pool.foreign(record):
            # the gateway's replay and the video belong to the key that submitted it: another
            # key would pay again on a re-send and see 500008 on a poll
            note = f"submitted with key {record.key_fp}: run with that key to finish it"
            if record.error != note:
                self.store.update(job.id, note, error=note)
            log.warning("%s: left %s: %s", job.id, record.state.value, note)
            return
        if record.state is not JobState.PENDING and not self._bind_record(record, ticket):
            return
        resumed = record.state is JobState.GENERATING
        if record.state is JobState.SUBMITTING:
            record = ticket.account.submitter.resumed(record)
        while True:
            state = record.state
            if state is JobState.PENDING:
                # the cap is asked first: a job it holds back uploads nothing, takes no slot
                if self.stop_submitting.is_set() or not self.sending_allowed:
                    return
                if not self._budget_allows(job, record):
                    return
                if not await self._inputs_ready(job):
                    return
                if not await self._take_slot(job, ticket):
                    return
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
                    busy_since=None,
                    key_fp=ticket.account.key_fp,
                )
            elif state is JobState.SUBMITTING:
                if self._retired_before_sending(record, ticket):
                    record = self.store.transition(
                        job.id, JobState.PENDING, f"key {record.key_fp} retired: another key"
                    )
                    continue
                # a re-send from an earlier run may pay too, if the first never arrived
                if not ticket.account.sending_allowed or not self._budget_allows(job, record):
                    return
                record = await self._submit(job, record, ticket)
                self._settle(job.id)
            elif state is JobState.GENERATING:
                size = input_seconds(job, self.checked.media)
                record = await self._await_generation(
                    job.id, record, ticket, poll_first=resumed, size=size
                )
                resumed = False
            elif state is JobState.DOWNLOADING:
                await self._queue_for_download(ticket)
                dest = job_path(self.options.output_dir, job.id, job.output)
                with map_disk_errors(f"cannot create {dest.parent}"):
                    dest.parent.mkdir(parents=True, exist_ok=True)  # `output: es/a.mp4`, or a
                    # segment folder gone since
                record = await self._download(job.id, record, dest, ticket.account, job)
            else:
                return

    def _bind_record(self, record: JobRecord, ticket: _Ticket) -> bool:
        """Bind a record found past PENDING to its key: the one that sent it, or (a trace id
        that never left under a configured key) any usable key. False: leave it this run."""
        account = self.pool.owner(record)
        if account is None and record.state is JobState.SUBMITTING and self.pool.several:
            usable = self.pool.usable()
            account = max(usable, key=lambda a: a.unclaimed()) if usable else None
            if account is None:
                return False  # no key may send now; the trace id never left, nothing waits
        account = account or self.pool.accounts[0]  # no key recorded: an old file's record
        ticket.binding.account = account
        if account.retired is not None and not isinstance(account.retired, CreditsError):
            log.warning(
                "%s: left %s for a later run: key %s was refused (%s)",
                record.id,
                record.state.value,
                account.key_fp,
                account.retired,
            )
            return False
        return True

    def _retired_before_sending(self, record: JobRecord, ticket: _Ticket) -> bool:
        """A submission whose key was retired before its trace id ever left goes to another
        key (nothing was sent, so nothing can be paid twice); its slot is given back."""
        never_sent = record.sent_at is None and not record.trace_ambiguous
        if ticket.account.retired is None or not never_sent or not self.pool.usable():
            return False
        self._drop_slot(ticket)
        ticket.binding.account = None
        return True

    async def _take_slot(self, job: Job, ticket: _Ticket) -> bool:
        """Bind new work to a key (`AccountPool.choose`), upload its media under that key and
        take a slot of it; with several keys the binding may move to a key with a free slot
        meanwhile, and the media follow. False: no key may take new work now."""
        binding = ticket.binding
        while not ticket.held:
            account = self.pool.choose(binding)
            if account is None:
                return False
            try:
                await self._ensure_media(job, account)
            except AuthError as exc:
                if not self.pool.several or self._key_refused(account, exc):
                    raise
                continue  # that key is retired: the job chooses another
            permit = await self.pool.acquire(binding)
            if permit is not None:
                ticket.take(permit, account)
        return True

    def _budget_allows(self, job: Job, record: JobRecord) -> bool:
        """Ask the budget before a send that may be charged; log the cost of a resubmission."""
        cost = estimate_credits(job, self.checked.media)
        if not self.budget.ask(job.id, cost):
            log.warning(
                "%s: not submitted: about %d credits would take this run past --max-credits %d"
                " (%d spent or held); it stays pending",
                job.id,
                cost,
                self.budget.cap,
                self.budget.committed,
            )
            return False
        if record.state is JobState.PENDING and record.attempts:
            log.info(
                "%s: submitting again (attempt %d; the last ended without a result):"
                " about %d credits",
                job.id,
                record.attempts + 1,
                cost,
            )
        return True

    def _settle(self, job_id: str) -> None:
        """Tell the budget a submission's outcome is recorded, unless it is still unknown."""
        record = self.store.find(job_id)
        if record is None or record.state not in (JobState.SUBMITTING, JobState.UNCONFIRMED):
            self.budget.settle(job_id)

    async def _ensure_media(self, job: Job, account: Account) -> dict[Path, int]:
        """The job's media ids under `account`'s key, uploading what that key lacks."""
        ids: dict[Path, int] = {}
        scope = account.media_scope
        for path in job.media_paths():
            facts = self.checked.media[path]
            kind = facts.info.kind
            known = self.media_cache.get((facts.sha256, scope))
            if known is not None:  # the state file's, as this run last read or wrote it
                ids[path] = known
                continue
            lock = self.media_locks.setdefault((facts.sha256, scope), anyio.Lock())
            async with lock:  # one upload per distinct content, however many jobs share it
                media_id = self.store.media_id(facts.sha256, scope)
                if media_id is None and facts.sha256 in self.changed_media:
                    raise _changed_file(path)  # known already: no second upload of it
                if media_id is None:
                    async with self.uploads:
                        sent = await account.client.upload(path, facts.info.container)
                    if sent.sha256 != facts.sha256:
                        # preflight checked other bytes: caching this media_id under their hash
                        # would submit unchecked media now and in every later run
                        self.changed_media.add(facts.sha256)
                        raise _changed_file(path)
                    if sent.media_type and sent.media_type != facts.info.kind:
                        raise JobError(f"{path.name}: uploaded as {sent.media_type}, not {kind}")
                    media_id = sent.media_id
                    self.store.save_media(facts.sha256, scope, facts.info.kind, media_id)
                    log.info(
                        "%s: uploaded %s as media %s%s",
                        job.id,
                        path.name,
                        media_id,
                        f" (key {account.key_fp})" if self.pool.several else "",
                    )
            ids[path] = self.media_cache[facts.sha256, scope] = media_id
        return ids

    async def _submit(self, job: Job, record: JobRecord, ticket: _Ticket) -> JobRecord:
        account = ticket.account

        async def body() -> dict[str, Any]:
            return generate_body(job, await self._ensure_media(job, account))

        estimate = estimate_credits(job, self.checked.media)
        try:
            sent = await account.submitter.step(record, body, ticket, ticket.tries, estimate)
        except SlotLimitError:
            # no backoff of its own: the limiter decides when this job (or any) sends again
            if ticket.permit is not None:
                permit, ticket.permit = ticket.permit, None
                account.limiter.rejected(permit)
                self.pool.notify()
            record = self.store.transition(job.id, JobState.PENDING, "500044: waiting for a slot")
            self._save_ceiling(account)
            ticket.binding.account = None  # the next try goes to whichever key has room
            return record
        except StaleMediaError:
            self._drop_slot(ticket)
            for path in job.media_paths():
                sha256 = self.checked.media[path].sha256
                self.store.forget_media(sha256, account.media_scope)
                self.media_cache.pop((sha256, account.media_scope), None)
            if ticket.reuploaded:
                raise
            ticket.reuploaded = True
            return self.store.transition(job.id, JobState.PENDING, "stale media id: re-upload")
        except CreditsError as exc:
            self._drop_slot(ticket)
            record = self.store.transition(job.id, JobState.PENDING, "500090: out of credits")
            if self.pool.retire(account, exc):
                raise
            ticket.binding.account = None  # another key pays for it
            return record
        except AuthError as exc:
            self._drop_slot(ticket)
            # A refused key (400012, 500020, HTTP 401, whatever the HTTP status) is refused
            # before the trace id is looked up (the replay is per key), so it says nothing of
            # an earlier send: an id that may have been processed is kept with its send facts,
            # or the next run would pay again (review 4, F3). A first send refused so was
            # never processed: a new id next time.
            if not self.store.job(job.id).trace_ambiguous:
                record = self.store.transition(job.id, JobState.PENDING, f"account problem: {exc}")
            if not self.pool.several or self._key_refused(account, exc):
                raise
            if self.store.job(job.id).state is not JobState.PENDING:
                raise TransientError(f"key {account.key_fp} was refused: {exc}") from exc
            ticket.binding.account = None  # another key sends it
            return record
        if isinstance(sent, JobRecord):
            return sent  # parked, or to be sent again
        return self._accepted(job.id, sent, estimate, ticket)

    def _accepted(self, job_id: str, sent: Submission, estimate: int, ticket: _Ticket) -> JobRecord:
        """Commit an accepted submission (GENERATING, its credits) and tell its key's slots."""
        account = ticket.account
        credits = sent.credits if sent.credits is not None else estimate
        record = self.store.job(job_id)
        replayed = record.trace_ambiguous and record.sent_at is not None
        record = self.store.transition(
            job_id,
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
        account.generations += 1
        account.credits += credits
        if ticket.permit is not None:
            account.limiter.accepted(ticket.permit)
            self.pool.notify()
            self._save_ceiling(account)
        log.info(
            "%s: submitted as video %s (attempt %d)%s",
            job_id,
            sent.video_id,
            record.attempts,
            f" with key {account.key_fp}" if self.pool.several else "",
        )
        return record

    async def _finish_archived(self, record_id: str, ticket: _Ticket) -> None:
        """A paid generation no job wants any more (its inputs changed, `--redo`, its job left
        the manifest) is still fetched, into `superseded/<archive id>.mp4`, and never
        resubmitted: a paid result is never lost, and its record can be taken over again.
        A send set aside unanswered is resolved first (`_resend_set_aside`)."""
        record = self.store.job(record_id)
        if not self._bind_record(record, ticket):
            return
        if record.state is JobState.SUBMITTING:
            record = await self._resend_set_aside(record, ticket)
        resumed = True
        while True:
            if record.state is JobState.GENERATING:
                record = await self._await_generation(
                    record_id, record, ticket, poll_first=resumed, resubmit=False
                )
                resumed = False
            elif record.state is JobState.DOWNLOADING:
                await self._queue_for_download(ticket)
                dest = archive_path(self.options.output_dir, record_id)
                dest.parent.mkdir(parents=True, exist_ok=True)
                record = await self._download(record_id, record, dest, ticket.account)
                log.info("%s: a paid result no job wants any more, kept as %s", record_id, dest)
            else:
                return

    async def _resend_set_aside(self, record: JobRecord, ticket: _Ticket) -> JobRecord:
        """A send set aside while its outcome was unknown may have been paid for: its trace id
        is re-sent as it was (its saved body, its key, after its deadline: `Submitter.step`),
        never replaced, so a replaying gateway answers with the original video for free. A
        definitive refusal of the id (500044, 500090, a rejection, a pinned busy: after the
        deadline, the first send's own answer) ends it as FAILED, nothing having been paid;
        a gateway that does not replay parks it as UNCONFIRMED."""
        account = ticket.account
        record = account.submitter.resumed(record)
        if record.sent_body is None:
            raise TransientError(
                f"trace id {record.trace_id} was set aside unanswered, but its generate body"
                " was not saved (a state file from before 0013_sent_body), so it cannot be"
                " re-sent as it was; it is resolved if its inputs come back to a job"
            )
        body: dict[str, Any] = json.loads(record.sent_body)

        async def body_for() -> dict[str, Any]:
            return body

        estimate = record.sent_estimate or 0
        log.info(
            "%s: set aside unanswered, maybe paid for: re-sending trace id %s for its video",
            record.id,
            record.trace_id,
        )
        while record.state is JobState.SUBMITTING and account.sending_allowed:
            if not self.budget.ask(record.id, estimate):
                log.warning("%s: not re-sent: it would take this run past --max-credits", record.id)
                break
            try:
                sent = await account.submitter.step(record, body_for, ticket, ticket.tries)
            except (SlotLimitError, CreditsError, JobError) as exc:
                self._drop_slot(ticket)
                reason = f"set aside: trace id {record.trace_id} was refused ({exc}): nothing paid"
                record = self.store.transition(
                    record.id, JobState.FAILED, reason, **_error_facts(exc, reason)
                )
                log.info("%s: %s", record.id, reason)
                if isinstance(exc, CreditsError):
                    raise  # the key's problem too: as for any job
                break
            finally:
                self._settle(record.id)
            if isinstance(sent, JobRecord):
                record = sent  # parked, or to be sent again
                continue
            record = self._accepted(record.id, sent, estimate, ticket)
        return record

    def set_aside_problems(self) -> list[str]:
        """For the log and the report: sends set aside unanswered and not resolved (yet), and
        those parked in this run."""
        problems = []
        for record in self.store.jobs(archived=True):
            if not record.archived:
                continue
            sent = iso(record.sent_at) if record.sent_at is not None else "at an unknown time"
            if unanswered_send(record):
                owner = self.pool.owner(record)
                why = (
                    f"sent with key {record.key_fp}: run with that key to resolve it"
                    if owner is None and record.key_fp is not None
                    else f"{record.error or 'not re-sent in this run'}; the next run re-sends it"
                )
                problems.append(
                    f"{record.id}: a submission set aside unanswered (trace id"
                    f" {record.trace_id}, sent {sent}) may have been paid for: {why}"
                )
            elif record.state is JobState.UNCONFIRMED and record.updated_at >= self.started:
                problems.append(f"{record.id}: set aside, {record.error}")
        return problems

    async def _await_generation(
        self,
        job_id: str,
        record: JobRecord,
        ticket: _Ticket,
        *,
        poll_first: bool,
        resubmit: bool = True,
        size: float | None = None,
    ) -> JobRecord:
        """Until a terminal status, which the poller's reply commits and frees the slot for.
        `resubmit`: whether a refunded status 8 goes back to PENDING (not for archived
        records); `size`: the voice's length, which generation times may follow."""
        video_id = record.video_id
        assert video_id is not None
        account = ticket.account
        if ticket.permit is None:  # resumed: the generation already occupies an account slot
            ticket.adopt()
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
                account.limiter.seen_running(ticket.permit, self._asked.get(video_id))
                if waited > self.options.max_wait:
                    raise TransientError(
                        f"video {video_id} still generating after {running_for:.0f} s;"
                        " left for the next run"
                    )
                return False
            self._drop_slot(ticket)
            if status.status == 1:
                self._links[job_id] = Link(status.url, status.size)
            max_attempts = self.options.max_attempts if resubmit else 0
            charged = latest.credits
            latest = settle(self.store, latest, status.status, max_attempts)
            account.credits += latest.credits - charged  # a refund of status 7 or 8
            return True

        self._watched[video_id] = account  # polled with the key that created it
        try:
            await self.poller.watch(
                video_id,
                on_status,
                elapsed=max(0.0, self.wall() - (record.submitted_at or self.wall())),
                size=size,
                poll_now=poll_first,
                poll_by=self.options.slot_release_after,
                lane=account.key_fp,  # a key's closed gate holds only its own status calls
            )
        finally:
            self._watched.pop(video_id, None)
            self._asked.pop(video_id, None)
        return latest

    async def _download(
        self, job_id: str, record: JobRecord, dest: Path, account: Account, job: Job | None = None
    ) -> JobRecord:
        """Fetch the result, with the key that created it (a fresh link is a status call)."""
        assert record.video_id is not None
        link = self._links.pop(job_id, Link(None, None))
        client = account.client
        async with self.downloads:
            fetched = await download_result(client, record.video_id, dest, link, sleep=self.sleep)
        log.info("%s: downloaded %s (%d bytes)", job_id, dest, fetched.size)
        suspect = self._suspect(job, fetched.check)
        if suspect is not None:
            # paid for: kept where it is, flagged, never regenerated without --redo
            log.warning("%s: suspect result, kept as %s: %s", job_id, dest, suspect)
        info = fetched.check.info
        return self.store.transition(
            job_id,
            JobState.DONE,
            f"downloaded; suspect: {suspect}" if suspect else "downloaded",
            output=str(dest),
            bytes=fetched.size,
            error=f"suspect result: {suspect}" if suspect else None,
            suspect=suspect,
            result_seconds=round(info.duration, 3),
            result_resolution=f"{info.width}x{info.height}" if info.width and info.height else None,
        )

    def _suspect(self, job: Job | None, check: ResultCheck) -> str | None:
        """Why the downloaded result looks wrong (`media.judge_result` of the download's own
        check), or None. The audio's length is the yardstick; for TTS (or an archived record)
        only the frame; a long job's segment is measured by its range."""
        if job is not None and job.segment is not None:
            seconds = job.segment.end - job.segment.start
            return judge_result(check, seconds, seconds)
        media = self.checked.media
        audio = video = None
        if job is not None and job.audio is not None and job.audio in media:
            audio = media[job.audio].info.duration
        if job is not None and job.video is not None and job.video in media:
            video = media[job.video].info.duration
        return judge_result(check, audio, video)


def _redo_segments(redo: frozenset[str], longform: LongJobs) -> frozenset[str]:
    """`--redo` of a long job redoes each of its segments."""
    return redo | {s.id for job_id in redo for s in longform.segments.get(job_id, [])}


def _invalid_note(checked: Checked, invalid: Mapping[str, list[str]]) -> str | None:
    """The run's problem when jobs were not run: invalid under `--keep-going`, or held for a
    speaker no list finds (`pipeline.speakers`)."""
    if not invalid:
        return None
    note = f"{len(invalid)} invalid jobs not run (see problems)"
    return f"--keep-going: {note}" if checked.invalid else note


def _error_facts(exc: PipelineError, reason: str | None = None) -> dict[str, Any]:
    """The state fields that say what made a job's error (see `state.py`, 0005)."""
    code, message = (exc.err_code, exc.err_msg) if isinstance(exc, ApiError) else (None, None)
    return {
        "error": reason if reason is not None else str(exc),
        "error_class": type(exc).__name__,
        "err_code": code,
        "err_msg": message,
    }


def _changed_file(path: Path) -> JobError:
    return JobError(
        f"{path.name} changed during the run (its content is not what was checked);"
        " the next run checks it again"
    )


def _key_rejected(exc: ApiError) -> bool:
    """The key itself is refused: no call can work, polls included, so the run stops."""
    return isinstance(exc, AuthError) and (exc.http_status == 401 or exc.err_code == 400012)


async def run_batch(
    checked: Checked,
    store: StateStore,
    client: PixverseClient | Sequence[PixverseClient],
    options: RunOptions,
    *,
    sleep: Sleep = anyio.sleep,
    wall: Callable[[], float] = time.time,
    boot: BootClock = boot_time,
    progress: ProgressSink | None = None,
) -> RunOutcome:
    """Run every job of `checked` to a terminal state (or as far as the accounts allow), then
    write the report. `client`: one per API key (one base URL), each key its own account
    (`pipeline.pool`); `wall` and `boot`: the clocks (`boot` the steady one of the re-send
    deadline, `pipeline.submit.resend_wait`). Raises ManifestError (unknown speaker) before
    anything is submitted."""
    options.output_dir.mkdir(parents=True, exist_ok=True)
    clients = [client] if isinstance(client, PixverseClient) else list(client)
    redact = Redactor([c.config.api_key for c in clients])
    longform = LongJobs(
        checked, store, options.output_dir, options.keep_segments, redo=options.redo
    )
    expanded = await longform.expand()  # long jobs -> their segments, as jobs
    if checked.manifest.resume_from is not None:  # failed.yaml: what its run paid for
        fps = {fingerprint(job, expanded.media) for job in expanded.manifest.jobs}
        wanted = {fp: fp for fp in fps} | legacy_fingerprints(longform.plans.values())
        take_paid_from(store, checked.manifest.resume_from, wanted)
    run = _Run(expanded, store, clients, options, sleep, wall, longform=longform, boot=boot)
    sink = progress if progress is not None else LogProgress(options.progress_every)
    started = options.started_at if options.started_at is not None else wall()
    run_id = options.run_id or new_run_id(started)
    credits_before = store.total_credits()
    redo = _redo_segments(options.redo, longform)
    expanded = await run.resolve_speakers(expanded)  # names -> ids, before fingerprints
    jobs = reconcile(
        expanded,
        store,
        options.output_dir,
        redo,
        retry_failed=options.retry_failed,
        stitched=longform.moves,
    )
    for job_id, problems in checked.invalid.items():
        log.error("%s: not run (--keep-going): %s", job_id, "; ".join(problems))
    if run.problem is None:
        try:
            jobs = await run.prepare(jobs)
        except FatalError as exc:
            run.problem = exc
    tracker = Tracker(wall, started=run.started)
    with anyio.CancelScope() as scope:
        if not isinstance(run.problem, FatalError):
            async with anyio.create_task_group() as tg:
                if options.handle_signals:
                    tg.start_soon(_cancel_on_signal, scope)
                tg.start_soon(_sample_progress, run, tracker, sink)
                await run.execute(jobs)
                tg.cancel_scope.cancel()
        # long jobs whose segments were all done before this run (or whose stitch waited):
        # local work, done whatever else went wrong, unless files cannot be written
        if not isinstance(run.problem, DiskError | StateError):
            try:
                await longform.settle_all()
            except DiskError as exc:
                if run.problem is None or isinstance(run.problem, TransientError):
                    run.problem = exc
                log.error("stopping the run: %s", exc)
    _tell_progress(run, tracker, sink)  # the final picture
    sink.close()
    interrupted = scope.cancel_called
    if run.budget.why_refused() is not None:
        run._note_problem(TransientError(str(run.budget.why_refused())))
    stopped_by = str(run.problem) if run.problem else "interrupted" if interrupted else None
    invalid = expanded.invalid  # --keep-going's, and jobs held for a speaker no list finds
    invalid_problems = [p for problems in invalid.values() for p in problems]
    set_aside = run.set_aside_problems()
    for problem in set_aside:
        log.warning("%s", problem)
    rows = job_rows(
        checked.full,
        store,
        run_id=run_id,
        now=wall(),
        hashes={path: facts.sha256 for path, facts in checked.media.items()},
        media_scope=run.media_scope,
        key_scopes={a.key_fp: a.media_scope for a in run.pool.accounts},
        stopped_by=stopped_by,
        problems=invalid_problems,
        invalid=frozenset(invalid),
    )
    rows = longform.rows(rows)
    considered = {j.id for j in checked.manifest.jobs} | set(invalid)
    exit_code = _exit_code([r for r in rows if r.id in considered], run.problem, interrupted)
    failed = failed_this_run(store, checked.manifest, started) + longform.failed_since(started)
    failed += [job for job in checked.full.jobs if job.id in invalid]
    failed_path = write_failed_manifest(
        options.output_dir, checked.full, failed, run_id, state=store.path
    )
    spent = store.total_credits() - credits_before
    report_path = write_report(
        options.output_dir,
        rows,
        {
            **run_facts(run_id, checked.manifest.path, options.output_dir, started, wall()),
            "exit_code": int(exit_code),
            "problem": str(run.problem) if run.problem else _invalid_note(checked, invalid),
            "problem_class": type(run.problem).__name__
            if run.problem
            else "ManifestError"
            if invalid
            else None,
            "problems": invalid_problems + set_aside,
            "credits_this_run": spent,
            "credits_total": credits_total(rows, store),
            "failed_manifest": str(failed_path) if failed_path else None,
            "interrupted": interrupted,
            "peak_slots": run.pool.peak,
            "slot_rejections": run.pool.rejections,
            "slot_ceiling": run.pool.ceiling,
            "keys": run.pool.tallies(),
        },
        redact=redact,
    )
    retired = [a for a in run.pool.accounts if a.retired is not None]
    if run.pool.several and retired and len(retired) < len(run.pool.accounts):
        log.warning(
            "%d of %d keys retired in this run (%s); the others went on: see report.json keys",
            len(retired),
            len(run.pool.accounts),
            ", ".join(f"{a.key_fp}: {a.retired}" for a in retired),
        )
    return RunOutcome(
        rows=rows,
        exit_code=exit_code,
        problem=str(run.problem) if run.problem else None,
        interrupted=interrupted,
        peak_slots=run.pool.peak,
        slot_rejections=run.pool.rejections,
        report_path=report_path,
        run_id=run_id,
        credits_this_run=spent,
        failed_manifest=failed_path,
        keys=run.pool.tallies() if run.pool.several else [],
    )


async def _sample_progress(run: _Run, tracker: Tracker, sink: ProgressSink) -> None:
    while True:
        await run.sleep(sink.interval)
        _tell_progress(run, tracker, sink)


def _tell_progress(run: _Run, tracker: Tracker, sink: ProgressSink) -> None:
    """Sample the state file: jobs per stage, slots against the limit, this run's spend, and
    the ETA the tracker learns from the generations it saw finish."""
    ids = {j.id for j in run.checked.manifest.jobs}
    records = [r for r in run.store.jobs() if r.id in ids]
    counts = Counter(
        "suspect" if r.suspect and r.state is JobState.DONE else r.state.value for r in records
    )
    pool = run.pool
    sink.update(
        Snapshot(
            counts=counts,
            total=len(ids),
            slots_used=pool.running,
            # the learned ceiling, or --concurrency until the account has refused one more
            # (summed over the keys)
            slot_limit=pool.slot_limit,
            credits=run.budget.spent,
            cap=run.options.max_credits,
            eta=tracker.observe(records, pool.limit),
        )
    )


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
    if any(r.state in ("failed", "suspect") for r in rows):
        return ExitCode.JOBS_FAILED
    return ExitCode.OK
