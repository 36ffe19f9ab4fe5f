"""The state file: stdlib SQLite, WAL and synchronous=FULL, one per output folder.

Every write commits before the function returns, so a state change is durable before the next
side effect (a request, a rename). A second run on the same file is refused through an
exclusive `flock` on `<state>.lock`, taken before anything else is touched.

A record whose id holds `ARCHIVE_MARK` is archived: a paid result no job of the current manifest
wants, kept so a later manifest with the same inputs takes it over instead of paying again.
Manifest ids cannot hold the mark (`manifest.ID_PATTERN`), so no job ever runs under one.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from pipeline.errors import DiskError, LockedError, StateError
from pipeline.jobstate import JobState, check_transition

# Named migrations, applied in order; `meta.schema_version` counts how many have run.
MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_initial",
        """
        CREATE TABLE media (
            sha256 TEXT NOT NULL,
            base_url TEXT NOT NULL,
            kind TEXT NOT NULL,
            media_id INTEGER NOT NULL,
            uploaded_at REAL NOT NULL,
            PRIMARY KEY (sha256, base_url)
        );
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            trace_id TEXT,
            video_id INTEGER,
            credits INTEGER NOT NULL DEFAULT 0,
            last_credits INTEGER NOT NULL DEFAULT 0,
            output TEXT,
            bytes INTEGER,
            error TEXT,
            ambiguous INTEGER NOT NULL DEFAULT 0,
            submitted_at REAL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL,
            at REAL NOT NULL,
            from_state TEXT,
            to_state TEXT NOT NULL,
            detail TEXT
        );
        """,
    ),
    (
        # Exactly-once facts (pixverse-api.md, "Trace-id semantics"): when the current trace id
        # last left, until when an unanswered send may still be processed, whether the id may
        # have been processed unseen, and which key sent it; plus the gateway replay probe.
        # A SUBMITTING job of an older file may have been sent: it waits out the old default
        # request timeout (30 s + 10 %) like any unanswered send.
        "0002_sends_and_keys",
        """
        ALTER TABLE jobs ADD COLUMN sent_at REAL;
        ALTER TABLE jobs ADD COLUMN resend_after REAL;
        ALTER TABLE jobs ADD COLUMN trace_ambiguous INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE jobs ADD COLUMN key_fp TEXT;
        UPDATE jobs SET sent_at = updated_at, resend_after = updated_at + 33.0
            WHERE state = 'submitting';
        CREATE TABLE gateway_checks (
            base_url TEXT NOT NULL,
            key_fp TEXT NOT NULL,
            replays INTEGER NOT NULL,
            detail TEXT NOT NULL,
            checked_at REAL NOT NULL,
            PRIMARY KEY (base_url, key_fp)
        );
        """,
    ),
    (
        "0003_credits_estimated",
        # 1 when any attempt's credits came from the price model (the reply had no `credits`)
        "ALTER TABLE jobs ADD COLUMN credits_estimated INTEGER NOT NULL DEFAULT 0",
    ),
    # A take-over renames a job's history: without this every rename scanned the whole table.
    ("0004_events_job_index", "CREATE INDEX events_job_id ON events (job_id, seq)"),
    # When busy replies to a possibly-processed trace id began. No longer read: a pinned "busy"
    # is now told from a proxy's passing one within one run (pipeline.submit, review S2).
    ("0005_busy_since", "ALTER TABLE jobs ADD COLUMN busy_since REAL"),
    (
        # What made `error`, for reports and JSON logs: the error tree's class name, and the
        # API's ErrCode and ErrMsg when a reply gave them. Cleared whenever `error` is.
        "0006_error_facts",
        """
        ALTER TABLE jobs ADD COLUMN error_class TEXT;
        ALTER TABLE jobs ADD COLUMN err_code INTEGER;
        ALTER TABLE jobs ADD COLUMN err_msg TEXT;
        """,
    ),
    (
        # `inputs`: what the job's fingerprint was made of (`plan.input_facts`, JSON), so a
        # restart can say which input changed. `suspect`: why a downloaded result looks wrong
        # (too short, no decodable frame); the job stays done (paid, kept) but flagged.
        "0007_inputs_and_suspect",
        """
        ALTER TABLE jobs ADD COLUMN inputs TEXT;
        ALTER TABLE jobs ADD COLUMN suspect TEXT;
        """,
    ),
    (
        # The slot ceiling the limiter learned from 500044 (most generations running when the
        # account refused one more), per base URL and key, for `status` to show.
        "0008_slot_ceilings",
        """
        CREATE TABLE slot_ceilings (
            base_url TEXT NOT NULL,
            key_fp TEXT NOT NULL,
            ceiling INTEGER NOT NULL,
            concurrency INTEGER NOT NULL,
            learned_at REAL NOT NULL,
            PRIMARY KEY (base_url, key_fp)
        )
        """,
    ),
    (
        # Long jobs (pipeline.longform): the plan a job was cut by (kept, so a resumed run
        # never re-plans what it paid for), and whether its segments were stitched into
        # `output` (its length in `bytes`). The segments themselves are ordinary job records.
        "0009_long_jobs",
        """
        CREATE TABLE long_jobs (
            id TEXT PRIMARY KEY,
            basis TEXT NOT NULL,
            plan TEXT NOT NULL,
            stitched INTEGER NOT NULL DEFAULT 0,
            output TEXT,
            bytes INTEGER,
            updated_at REAL NOT NULL
        )
        """,
    ),
    (
        # The TTS speaker list a run last read, per base URL (pipeline.speakers): speakers by
        # name resolve to the same ids offline (validate, --dry-run) and when the list cannot
        # be read. Only ever replaced whole by a newer list.
        "0010_speakers",
        """
        CREATE TABLE speakers (
            base_url TEXT NOT NULL,
            speaker_id TEXT NOT NULL,
            name TEXT NOT NULL,
            seen_at REAL NOT NULL,
            PRIMARY KEY (base_url, speaker_id)
        )
        """,
    ),
    # Why a long job could not be cut or stitched (so `status` and `report` tell what the run
    # said); cleared when it is expanded again or stitched.
    ("0011_long_job_errors", "ALTER TABLE long_jobs ADD COLUMN error TEXT"),
    (
        # The re-send deadline on a clock that never steps (review 4, F4): CLOCK_BOOTTIME's
        # reading of `resend_after`, and the boot it belongs to. Older records have neither
        # and are judged by the wall clock alone, as before.
        "0012_boot_clock",
        """
        ALTER TABLE jobs ADD COLUMN resend_after_boot REAL;
        ALTER TABLE jobs ADD COLUMN boot_id TEXT;
        """,
    ),
    (
        # What the current trace id's send carried (review 4, F1): its generate body (JSON:
        # media ids, speaker, script; never the key) and the price model's estimate, so a
        # send set aside unanswered (its job edited, removed, redone) can be re-sent as it
        # was and its credits counted. Older records have neither.
        "0013_sent_body",
        """
        ALTER TABLE jobs ADD COLUMN sent_body TEXT;
        ALTER TABLE jobs ADD COLUMN sent_estimate INTEGER;
        """,
    ),
    (
        # Every name a list kept above gave one speaker, with that speaker's id, kept when a
        # later list renames or drops it (pipeline.speakers): a name that resolved before
        # still finds the id its paid work was made with. Seeded from the lists kept so far.
        "0014_speaker_names",
        """
        CREATE TABLE speaker_names (
            base_url TEXT NOT NULL,
            name TEXT NOT NULL,
            speaker_id TEXT NOT NULL,
            seen_at REAL NOT NULL,
            PRIMARY KEY (base_url, name)
        );
        INSERT INTO speaker_names
            SELECT base_url, lower(trim(name)), min(speaker_id), max(seen_at) FROM speakers
            WHERE trim(name) != '' GROUP BY base_url, lower(trim(name))
            HAVING count(DISTINCT speaker_id) = 1
        """,
    ),
    (
        # The result as the download's check read it (seconds, "WIDTHxHEIGHT"), so a report
        # of 10,000 results does not open each file again (issue 6); a file whose length is no
        # longer `bytes` is read again.
        "0015_result_facts",
        """
        ALTER TABLE jobs ADD COLUMN result_seconds REAL;
        ALTER TABLE jobs ADD COLUMN result_resolution TEXT;
        """,
    ),
]

ARCHIVE_MARK = "@"  # in archive ids, `<old id>@<video id>`; never in a manifest id
_MOVING = "@moving@"  # prefix of the temporary ids of `reassign`, inside its transaction

# "database or disk is full" and "disk I/O error" (what a write refused with EFBIG or EDQUOT
# becomes): the disk, not the file, is the problem (https://sqlite.org/rescode.html).
_DISK_CODES = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR})

_UPDATABLE = frozenset(
    {
        "attempts",
        "trace_id",
        "video_id",
        "credits",
        "last_credits",
        "output",
        "bytes",
        "error",
        "ambiguous",
        "submitted_at",
        "fingerprint",
        "sent_at",
        "resend_after",
        "resend_after_boot",
        "boot_id",
        "sent_body",
        "sent_estimate",
        "trace_ambiguous",
        "key_fp",
        "busy_since",
        "credits_estimated",
        "error_class",
        "err_code",
        "err_msg",
        "inputs",
        "suspect",
        "result_seconds",
        "result_resolution",
    }
)
_ERROR_FACTS = ("error_class", "err_code", "err_msg")


class Event(NamedTuple):
    """One line of a job's history: a transition (or an update, `from_state == to_state`)."""

    at: float
    from_state: str | None
    to_state: str
    detail: str


@dataclass(frozen=True)
class JobRecord:
    id: str
    fingerprint: str
    state: JobState
    attempts: int  # generations the server accepted for this job (each one was charged)
    trace_id: str | None  # trace id of the current submission attempt
    video_id: int | None
    credits: int  # net credits spent by this job (refunds of status 7/8 taken off)
    last_credits: int  # what the current attempt was charged, refunded on 7/8
    output: str | None
    bytes: int | None
    error: str | None
    ambiguous: int  # submissions whose outcome was unknown when the reply did not arrive
    submitted_at: float | None
    updated_at: float
    sent_at: float | None  # when the current trace id first left (None: not sent yet)
    # while set, a send of the current trace id got no reply and may still be processed until
    # this wall-clock time (and, in the same boot, `resend_after_boot`): re-sending before it
    # could race the first send (paid twice)
    resend_after: float | None
    trace_ambiguous: bool  # the current trace id may have been processed without our seeing it
    key_fp: str | None  # fingerprint of the API key that sent the current submission
    busy_since: float | None  # first of the busy replies in a row to a possibly-processed id

    @property
    def awaiting_reply(self) -> bool:
        """The latest send of the current trace id got no reply (or the run died first)."""
        return self.resend_after is not None

    credits_estimated: bool = False  # some of `credits` is the price model's, not the API's
    error_class: str | None = None  # the error tree's class behind `error`, when one was
    err_code: int | None = None  # the API's ErrCode behind `error`, when a reply gave one
    err_msg: str | None = None  # the API's ErrMsg behind `error`
    inputs: str | None = None  # JSON of `plan.input_facts` when the record was (re)started
    suspect: str | None = None  # a done result that failed its probe: why (kept, flagged)
    # `resend_after` on the CLOCK_BOOTTIME of boot `boot_id` (`pipeline.submit.resend_wait`);
    # meaningful only while `resend_after` is set
    resend_after_boot: float | None = None
    boot_id: str | None = None
    sent_body: str | None = None  # JSON of the generate body the current trace id was sent with
    sent_estimate: int | None = None  # the price model's credits for that send
    result_seconds: float | None = None  # the result's length as its download's check read it
    result_resolution: str | None = None  # its "WIDTHxHEIGHT", read then

    @property
    def archived(self) -> bool:
        return ARCHIVE_MARK in self.id

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        return cls.from_values(dict(row))

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> JobRecord:
        """A record from its columns' values, as SQLite gives them back (ints for flags)."""
        values["state"] = JobState(values["state"])
        # `status` reads a file read-only, unmigrated: columns of later migrations may be missing
        for name in (
            "sent_at",
            "resend_after",
            "key_fp",
            "busy_since",
            *_ERROR_FACTS,
            "inputs",
            "suspect",
            "resend_after_boot",
            "boot_id",
            "sent_body",
            "sent_estimate",
            "result_seconds",
            "result_resolution",
        ):
            values.setdefault(name, None)
        values["trace_ambiguous"] = bool(values.get("trace_ambiguous", 0))
        values["credits_estimated"] = bool(values.get("credits_estimated", 0))
        return cls(**values)


def _by_id(record: JobRecord) -> str:
    return record.id


class LongRecord(NamedTuple):
    """A long job's row: its plan (JSON, by `basis`) and, once stitched, its result."""

    id: str
    basis: str
    plan: str
    stitched: bool
    output: str | None
    bytes: int | None
    error: str | None = None  # why it could not be cut or stitched (the last run's word)


class StateStore:
    """Durable job and media records. Use `StateStore.open(path)` (locks) or `read_only`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        lock_fd: int | None,
        clock: Callable[[], float],
        redact: Callable[[str], str] = str,
    ):
        self._conn = conn
        self._lock_fd = lock_fd
        self._clock = clock
        self._redact = redact  # applied to every `error` and event detail before it is saved
        # `total_credits` once read, then kept up to date by `_update` (the only writer of
        # `credits`): summing every record per submission made a long run quadratic
        self._credits: int | None = None
        # the records as this run last read or wrote them (a run holds the lock: nobody else
        # writes), so the reads around every write are not queries; none when read-only
        self._records: dict[str, JobRecord] | None = {} if lock_fd is not None else None
        self._all_read = False  # `_records` holds every record (`jobs` filled it)

    @classmethod
    def open(
        cls, path: Path, clock: Callable[[], float] = time.time, redact: Callable[[str], str] = str
    ) -> StateStore:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock_fd = _lock(path.with_name(path.name + ".lock"))
        except LockedError:
            raise
        except OSError as exc:
            raise StateError(f"{path}: cannot create the state file: {exc.strerror}") from exc
        try:
            conn = _connect(path)
            _migrate(conn)
        except (sqlite3.Error, StateError) as exc:
            os.close(lock_fd)
            if _disk_problem(exc):
                raise _disk_error(f"{path}: cannot write the state file", exc) from exc
            raise StateError(f"{path}: cannot open state file: {exc}") from exc
        return cls(conn, lock_fd, clock, redact)

    @staticmethod
    def ensure_unlocked(path: Path) -> None:
        """Raise LockedError if a run holds `path` now; creates nothing. (Advisory: `open`
        takes the real lock.)"""
        lock_path = path.with_name(path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except OSError:
            return  # no lock file yet, or not ours to open: `open` will say
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LockedError(f"{lock_path}: another run is using this state file") from exc
        finally:
            os.close(fd)  # closing drops a lock we took

    @classmethod
    def read_only(cls, path: Path) -> StateStore:
        if not path.exists():
            raise StateError(f"{path}: no state file (nothing has run for this output folder)")
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            conn.row_factory = sqlite3.Row
            conn.execute("SELECT count(*) FROM jobs").fetchone()
        except sqlite3.Error as exc:
            raise StateError(f"{path}: cannot read state file: {exc}") from exc
        return cls(conn, None, time.time)

    @property
    def path(self) -> Path:
        """The state file's path, as SQLite opened it."""
        row = self._conn.execute("PRAGMA database_list").fetchone()
        return Path(str(row[2]))

    def close(self) -> None:
        self._conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # jobs ---------------------------------------------------------------------------------

    def jobs(self, *, archived: bool = False) -> list[JobRecord]:
        """Every job record by id; archived ones (see the module docstring) only if asked."""
        if self._records is None or not self._all_read:
            rows = self._conn.execute("SELECT * FROM jobs").fetchall()
            records = {r["id"]: JobRecord.from_row(r) for r in rows}
            if self._records is None:
                return sorted(
                    (r for r in records.values() if archived or not r.archived), key=_by_id
                )
            self._records.clear()
            self._records.update(records)
            self._all_read = True
        every = sorted(self._records.values(), key=_by_id)
        return every if archived else [r for r in every if not r.archived]

    def job(self, job_id: str) -> JobRecord:
        record = self.find(job_id)
        if record is None:
            raise StateError(f"job '{job_id}' is not in the state file")
        return record

    def find(self, job_id: str) -> JobRecord | None:
        if self._records is not None and job_id in self._records:
            return self._records[job_id]
        row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        record = JobRecord.from_row(row)
        if self._records is not None:
            self._records[job_id] = record
        return record

    def add_job(self, job_id: str, fingerprint: str) -> JobRecord:
        self._all_read = False  # a record the cache has not read
        with self._write():
            self._conn.execute(
                "INSERT INTO jobs (id, fingerprint, state, updated_at) VALUES (?, ?, ?, ?)",
                (job_id, fingerprint, JobState.PENDING.value, self._clock()),
            )
            self._event(job_id, None, JobState.PENDING, "new job")
        return self.job(job_id)

    def add_jobs(self, jobs: Mapping[str, str], inputs: Mapping[str, str] | None = None) -> None:
        """`add_job` for many (job id -> fingerprint, with `inputs[job id]` saved as the
        record's `inputs` where given), in one transaction."""
        inputs = inputs or {}
        self._all_read = False  # records the cache has not read
        with self._write():
            for job_id, fingerprint in jobs.items():
                self._conn.execute(
                    "INSERT INTO jobs (id, fingerprint, state, updated_at, inputs)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        job_id,
                        fingerprint,
                        JobState.PENDING.value,
                        self._clock(),
                        inputs.get(job_id),
                    ),
                )
                self._event(job_id, None, JobState.PENDING, "new job")

    def import_record(self, record: JobRecord, job_id: str, state: JobState, detail: str) -> None:
        """Copy a paid record of another state file in as `job_id` (in `state`), what it paid
        for and its generation with it, never its file (the other folder's) or error."""
        values = {
            "id": job_id,
            "fingerprint": record.fingerprint,
            "state": state.value,
            "attempts": record.attempts,
            "trace_id": record.trace_id,
            "video_id": record.video_id,
            "credits": record.credits,
            "last_credits": record.last_credits,
            "ambiguous": record.ambiguous,
            "submitted_at": record.submitted_at,
            "updated_at": self._clock(),
            "key_fp": record.key_fp,
            "credits_estimated": int(record.credits_estimated),
            "inputs": record.inputs,
        }
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        self._all_read = False  # a record the cache has not read
        self._credits = None  # its credits count in the total: read again
        with self._write():
            self._conn.execute(
                f"INSERT INTO jobs ({names}) VALUES ({marks})", tuple(values.values())
            )
            self._event(job_id, None, state, detail)

    def transition(
        self, job_id: str, target: JobState, detail: str = "", **fields: Any
    ) -> JobRecord:
        """Move a job to `target` (checked against the table) and save `fields`, atomically."""
        current = self.job(job_id)
        check_transition(job_id, current.state, target)
        return self._update(current, target, detail, fields)

    def update(self, job_id: str, detail: str = "", **fields: Any) -> JobRecord:
        """Save `fields` without a state change (a new trace id, a count)."""
        current = self.job(job_id)
        return self._update(current, current.state, detail, fields)

    def _update(
        self, record: JobRecord, target: JobState, detail: str, fields: dict[str, Any]
    ) -> JobRecord:
        """Write the change, committed, and return the record as it now is in the file (made
        from `record` and the change: reading it back cost a query per write)."""
        job_id, current = record.id, record.state
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"not job fields: {sorted(unknown)}")
        if "error" in fields and not any(name in fields for name in _ERROR_FACTS):
            fields = {**fields, **dict.fromkeys(_ERROR_FACTS)}  # a new reason, facts unknown
        for name in ("error", "err_msg"):
            if isinstance(fields.get(name), str):
                fields = {**fields, name: self._redact(fields[name])}
        assignments = ", ".join(f"{name} = ?" for name in fields)
        sets = "state = ?, updated_at = ?" + (", " + assignments if fields else "")
        sql = f"UPDATE jobs SET {sets} WHERE id = ?"  # names come from _UPDATABLE
        now = self._clock()
        with self._write():
            changed = self._conn.execute(sql, (target.value, now, *fields.values(), job_id))
            if changed.rowcount != 1:
                raise StateError(f"job '{job_id}' is not in the state file")
            self._event(job_id, current, target, detail)
        if self._credits is not None and "credits" in fields:
            self._credits += int(fields["credits"]) - record.credits
        values = {**record.__dict__, **fields, "state": target, "updated_at": now}
        updated = JobRecord.from_values(values)
        if self._records is not None:
            self._records[job_id] = updated
        return updated

    def reassign(
        self,
        renames: Mapping[str, str],
        details: Mapping[str, str],
        outputs: Mapping[str, str] | None = None,
    ) -> None:
        """Give records new ids, with their history, keeping everything they paid for: all in
        ONE transaction, so a crash leaves every record under its old id or its new one.

        `renames` maps old id -> new id and may be any permutation (swaps, cycles) or send
        records to archive ids; a new id must be free once the renamed records have left theirs.
        `details[old]` says why, in the event log. `outputs[old]`, if given, is where that
        record's file is now (saved in the same transaction)."""
        outputs = outputs or {}
        states = {old: self.job(old).state for old in renames}
        self._forget_records()
        with self._write():
            # through temporary ids first: a swap or cycle never has two records on one id
            for old in renames:
                self._rekey(old, _MOVING + old)
            for old, new in renames.items():
                self._rekey(_MOVING + old, new)
                if old in outputs:
                    self._conn.execute(
                        "UPDATE jobs SET output = ? WHERE id = ?", (outputs[old], new)
                    )
                state = states[old]
                self._event(new, state, state, f"renamed from '{old}': {details[old]}")

    def save_outputs(self, outputs: Mapping[str, str], detail: str) -> None:
        """Record where files are now (job id -> path), in one transaction."""
        self._forget_records()
        with self._write():
            for job_id, output in outputs.items():
                row = self._conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,))
                state = JobState(row.fetchone()["state"])
                self._conn.execute(
                    "UPDATE jobs SET output = ?, updated_at = ? WHERE id = ?",
                    (output, self._clock(), job_id),
                )
                self._event(job_id, state, state, f"{detail}: {output}")

    def events(self, job_id: str | None = None) -> list[tuple[str, str | None, str, str]]:
        sql = "SELECT job_id, from_state, to_state, detail FROM events"
        rows = (
            self._conn.execute(sql + " WHERE job_id = ? ORDER BY seq", (job_id,))
            if job_id is not None
            else self._conn.execute(sql + " ORDER BY seq")
        ).fetchall()
        return [tuple(r) for r in rows]

    def history(self, job_id: str) -> list[Event]:
        """The job's events, oldest first, with their times (follows renames)."""
        rows = self._conn.execute(
            "SELECT at, from_state, to_state, detail FROM events WHERE job_id = ? ORDER BY seq",
            (job_id,),
        ).fetchall()
        return [Event(float(r[0]), r[1], r[2], r[3] or "") for r in rows]

    def histories(self) -> dict[str, list[Event]]:
        """Every job's `history`, by job id, in one read (a report of thousands of jobs)."""
        found: dict[str, list[Event]] = {}
        rows = self._conn.execute(
            "SELECT job_id, at, from_state, to_state, detail FROM events ORDER BY job_id, seq"
        )
        for r in rows:
            found.setdefault(r[0], []).append(Event(float(r[1]), r[2], r[3], r[4] or ""))
        return found

    def total_credits(self) -> int:
        """Net credits of every record, archived ones too: what all runs have cost."""
        if self._credits is None or self._lock_fd is None:  # read-only: a run may be writing
            row = self._conn.execute("SELECT coalesce(sum(credits), 0) FROM jobs").fetchone()
            self._credits = int(row[0])
        return self._credits

    # media --------------------------------------------------------------------------------

    def media_id(self, sha256: str, base_url: str) -> int | None:
        row = self._conn.execute(
            "SELECT media_id FROM media WHERE sha256 = ? AND base_url = ?", (sha256, base_url)
        ).fetchone()
        return None if row is None else int(row["media_id"])

    def media_ids(self) -> dict[tuple[str, str], int]:
        """Every cached media id, by (sha256, base URL and key scope)."""
        rows = self._conn.execute("SELECT sha256, base_url, media_id FROM media")
        return {(str(r[0]), str(r[1])): int(r[2]) for r in rows}

    def save_media(self, sha256: str, base_url: str, kind: str, media_id: int) -> None:
        with self._write():
            self._conn.execute(
                "INSERT OR REPLACE INTO media VALUES (?, ?, ?, ?, ?)",
                (sha256, base_url, kind, media_id, self._clock()),
            )

    def forget_media(self, sha256: str, base_url: str) -> None:
        with self._write():
            self._conn.execute(
                "DELETE FROM media WHERE sha256 = ? AND base_url = ?", (sha256, base_url)
            )

    # the gateway's trace-id replay, as probed (pixverse-api.md: checkable for free) ----------

    def gateway_check(self, base_url: str, key_fp: str) -> tuple[bool, str, float] | None:
        """(replays, detail, checked_at) of the last probe for this base URL and key."""
        row = self._conn.execute(
            "SELECT replays, detail, checked_at FROM gateway_checks"
            " WHERE base_url = ? AND key_fp = ?",
            (base_url, key_fp),
        ).fetchone()
        if row is None:
            return None
        return bool(row["replays"]), str(row["detail"]), float(row["checked_at"])

    def save_gateway_check(self, base_url: str, key_fp: str, replays: bool, detail: str) -> None:
        with self._write():
            self._conn.execute(
                "INSERT OR REPLACE INTO gateway_checks VALUES (?, ?, ?, ?, ?)",
                (base_url, key_fp, int(replays), detail, self._clock()),
            )

    # the account's slot ceiling, as the limiter learned it ------------------------------------

    def save_slot_ceiling(self, base_url: str, key_fp: str, ceiling: int, concurrency: int) -> None:
        with self._write():
            self._conn.execute(
                "INSERT OR REPLACE INTO slot_ceilings VALUES (?, ?, ?, ?, ?)",
                (base_url, key_fp, ceiling, concurrency, self._clock()),
            )

    def slot_ceilings(self) -> list[tuple[str, str, int, int, float]]:
        """(base_url, key_fp, ceiling, concurrency asked, learned_at), newest first; none in a
        file of an older version (`status` reads files without migrating them)."""
        if not self._has_table("slot_ceilings"):
            return []
        rows = self._conn.execute(
            "SELECT base_url, key_fp, ceiling, concurrency, learned_at FROM slot_ceilings"
            " ORDER BY learned_at DESC"
        ).fetchall()
        return [
            (
                str(r["base_url"]),
                str(r["key_fp"]),
                int(r["ceiling"]),
                int(r["concurrency"]),
                float(r["learned_at"]),
            )
            for r in rows
        ]

    # long jobs (pipeline.longform) -------------------------------------------------------

    def long_jobs(self) -> list[LongRecord]:
        """Every long job's row; none in a file of an older version (read unmigrated)."""
        if not self._has_table("long_jobs"):
            return []
        columns = {r[1] for r in self._conn.execute("PRAGMA table_info(long_jobs)")}
        error = "error" if "error" in columns else "NULL"  # a file of 0009 (read unmigrated)
        rows = self._conn.execute(
            f"SELECT id, basis, plan, stitched, output, bytes, {error} FROM long_jobs ORDER BY id"
        ).fetchall()
        return [LongRecord(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6]) for r in rows]

    def long_plan(self, basis: str) -> str | None:
        """The plan saved for `basis` (under any job id), or None."""
        row = self._conn.execute(
            "SELECT plan FROM long_jobs WHERE basis = ? ORDER BY updated_at LIMIT 1", (basis,)
        ).fetchone()
        return None if row is None else str(row[0])

    def save_long_plan(self, job_id: str, basis: str, plan: str, *, keep: bool = False) -> None:
        """Record the job's plan; a row of other inputs (another basis) starts over, unless
        `keep`: its stitched result is this plan's too."""
        with self._write():
            row = self._conn.execute(
                "SELECT basis FROM long_jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is not None and (keep or row[0] == basis):
                self._conn.execute(
                    "UPDATE long_jobs SET basis = ?, plan = ? WHERE id = ?", (basis, plan, job_id)
                )
                return
            self._conn.execute(
                "INSERT OR REPLACE INTO long_jobs (id, basis, plan, stitched, updated_at)"
                " VALUES (?, ?, ?, 0, ?)",
                (job_id, basis, plan, self._clock()),
            )

    def save_stitched(self, job_id: str, output: str | None, size: int | None) -> None:
        """The job's segments are stitched into `output` (None: not, or no longer)."""
        with self._write():
            self._conn.execute(
                "UPDATE long_jobs SET stitched = ?, output = ?, bytes = ?, error = NULL,"
                " updated_at = ? WHERE id = ?",
                (int(output is not None), output, size, self._clock(), job_id),
            )

    # the TTS speaker list, as a run last read it (pipeline.speakers) ------------------------

    def save_speakers(self, base_url: str, speakers: Sequence[tuple[str, str]]) -> None:
        """Replace the list kept for `base_url` by `speakers` ((id, name), in list order), and
        remember each name one speaker of it has (`speaker_names`: never forgotten)."""
        ids: dict[str, set[str]] = {}
        for sid, name in speakers:
            if name.strip():
                ids.setdefault(name.strip().casefold(), set()).add(sid)
        now = self._clock()
        with self._write():
            self._conn.execute("DELETE FROM speakers WHERE base_url = ?", (base_url,))
            self._conn.executemany(
                "INSERT OR REPLACE INTO speakers VALUES (?, ?, ?, ?)",
                [(base_url, sid, name, now) for sid, name in speakers],
            )
            self._conn.executemany(
                "INSERT OR REPLACE INTO speaker_names VALUES (?, ?, ?, ?)",
                [(base_url, name, *one, now) for name, one in ids.items() if len(one) == 1],
            )

    def speaker_names(self, base_url: str | None = None) -> list[tuple[str, str]]:
        """(name casefolded, id) of every name a kept list gave one speaker, for `base_url`
        (None: every base URL, the latest first); none in a file of an older version."""
        if not self._has_table("speaker_names"):
            return []
        if base_url is None:
            rows = self._conn.execute(
                "SELECT name, speaker_id FROM speaker_names ORDER BY seen_at DESC"
            ).fetchall()
        else:
            rows = self._conn.execute(
                "SELECT name, speaker_id FROM speaker_names WHERE base_url = ?", (base_url,)
            ).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def speakers(self, base_url: str | None = None) -> list[tuple[str, str]]:
        """(id, name) of the list kept for `base_url` (None: the base URL read last), in the
        order it was saved; none in a file of an older version (read unmigrated)."""
        if not self._has_table("speakers"):
            return []
        if base_url is None:
            row = self._conn.execute(
                "SELECT base_url FROM speakers ORDER BY seen_at DESC LIMIT 1"
            ).fetchone()
            if row is None:
                return []
            base_url = str(row[0])
        rows = self._conn.execute(
            "SELECT speaker_id, name FROM speakers WHERE base_url = ? ORDER BY rowid",
            (base_url,),
        ).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def save_long_error(self, job_id: str, error: str | None) -> None:
        """Why the job could not be cut or stitched (None: no such problem now)."""
        with self._write():
            self._conn.execute(
                "UPDATE long_jobs SET error = ?, updated_at = ? WHERE id = ?",
                (None if error is None else self._redact(error), self._clock(), job_id),
            )

    # internals ----------------------------------------------------------------------------

    def _has_table(self, name: str) -> bool:
        """A file opened read-only is not migrated: an older one may lack a table."""
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        return self._conn.execute(query, (name,)).fetchone() is not None

    @contextmanager
    def _write(self) -> Iterator[None]:
        try:
            with self._conn:
                yield
        except sqlite3.Error as exc:
            if _disk_problem(exc):
                raise _disk_error("cannot write the state file", exc) from exc
            raise StateError(f"cannot write state file: {exc}") from exc

    def _forget_records(self) -> None:
        """Before a write that is not `_update`'s: the records are read again afterwards."""
        if self._records is not None:
            self._records.clear()
        self._all_read = False

    def _rekey(self, old_id: str, new_id: str) -> None:
        # events are found through the events_job_id index: rows of this job only
        changed = self._conn.execute(
            "UPDATE jobs SET id = ?, updated_at = ? WHERE id = ?", (new_id, self._clock(), old_id)
        ).rowcount
        if changed != 1:
            raise StateError(f"job '{old_id}' is not in the state file")
        self._conn.execute("UPDATE events SET job_id = ? WHERE job_id = ?", (new_id, old_id))

    def _event(self, job_id: str, current: JobState | None, target: JobState, detail: str) -> None:
        detail = self._redact(detail)
        self._conn.execute(
            "INSERT INTO events (job_id, at, from_state, to_state, detail) VALUES (?, ?, ?, ?, ?)",
            (job_id, self._clock(), current.value if current else None, target.value, detail),
        )


def _disk_problem(exc: Exception) -> bool:
    return isinstance(exc, sqlite3.Error) and exc.sqlite_errorcode & 0xFF in _DISK_CODES


def _disk_error(what: str, exc: Exception) -> DiskError:
    return DiskError(f"{what}: {exc}; free some space, then run the same command again")


def _lock(lock_path: Path) -> int:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise LockedError(f"{lock_path}: another run is using this state file") from exc
    return fd


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level="DEFERRED")
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    """Apply the missing migrations, each with its version bump in ONE transaction.

    Python's sqlite3 opens its implicit transaction only before INSERT/UPDATE/DELETE, so DDL
    outside an explicit BEGIN commits statement by statement: a first run that died between two
    CREATEs left a file that never opened again ("table media already exists").

    After each, the WAL is checkpointed into the file and truncated: a dozen migrations leave
    some 200 kB of WAL otherwise, more than twice what a new state file needs (a small disk)."""
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            version = _schema_version(conn)
            if version == len(MIGRATIONS):
                conn.rollback()
                return
            _name, sql = MIGRATIONS[version]
            for statement in filter(str.strip, sql.split(";")):
                conn.execute(statement)
            conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(version + 1),)
            )
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = int(row["value"]) if row else 0
    if version > len(MIGRATIONS):
        raise StateError(f"schema version {version} is newer than this pixverse-batch knows")
    return version
