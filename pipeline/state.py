"""The state file: stdlib SQLite, WAL and synchronous=FULL, one per output folder.

Every write commits before the function returns, so a state change is durable before the next
side effect (a request, a rename). A second run on the same file is refused through an
exclusive `flock` on `<state>.lock`, taken before anything else is touched.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
]

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
    }
)


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

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        values = dict(row)
        values["state"] = JobState(values["state"])
        return cls(**values)


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

    def close(self) -> None:
        self._conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # jobs ---------------------------------------------------------------------------------

    def jobs(self) -> list[JobRecord]:
        rows = self._conn.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        return [JobRecord.from_row(r) for r in rows]

    def job(self, job_id: str) -> JobRecord:
        row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise StateError(f"job '{job_id}' is not in the state file")
        return JobRecord.from_row(row)

    def find(self, job_id: str) -> JobRecord | None:
        row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else JobRecord.from_row(row)

    def add_job(self, job_id: str, fingerprint: str) -> JobRecord:
        with self._write():
            self._conn.execute(
                "INSERT INTO jobs (id, fingerprint, state, updated_at) VALUES (?, ?, ?, ?)",
                (job_id, fingerprint, JobState.PENDING.value, self._clock()),
            )
            self._event(job_id, None, JobState.PENDING, "new job")
        return self.job(job_id)

    def transition(
        self, job_id: str, target: JobState, detail: str = "", **fields: Any
    ) -> JobRecord:
        """Move a job to `target` (checked against the table) and save `fields`, atomically."""
        current = self.job(job_id)
        check_transition(job_id, current.state, target)
        return self._update(job_id, current.state, target, detail, fields)

    def update(self, job_id: str, detail: str = "", **fields: Any) -> JobRecord:
        """Save `fields` without a state change (a new trace id, a count)."""
        current = self.job(job_id)
        return self._update(job_id, current.state, current.state, detail, fields)

    def _update(
        self, job_id: str, current: JobState, target: JobState, detail: str, fields: dict[str, Any]
    ) -> JobRecord:
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"not job fields: {sorted(unknown)}")
        if isinstance(fields.get("error"), str):
            fields = {**fields, "error": self._redact(fields["error"])}
        assignments = ", ".join(f"{name} = ?" for name in fields)
        sets = "state = ?, updated_at = ?" + (", " + assignments if fields else "")
        sql = f"UPDATE jobs SET {sets} WHERE id = ?"  # names come from _UPDATABLE
        with self._write():
            self._conn.execute(sql, (target.value, self._clock(), *fields.values(), job_id))
            self._event(job_id, current, target, detail)
        return self.job(job_id)

    def rename_job(
        self, old_id: str, new_id: str, detail: str, output: str | None = None
    ) -> JobRecord:
        """Give a job record (and its history) a new id, keeping everything it paid for."""
        record = self.job(old_id)
        with self._write():
            self._conn.execute(
                "UPDATE jobs SET id = ?, output = coalesce(?, output), updated_at = ? WHERE id = ?",
                (new_id, output, self._clock(), old_id),
            )
            self._conn.execute("UPDATE events SET job_id = ? WHERE job_id = ?", (new_id, old_id))
            self._event(new_id, record.state, record.state, f"renamed from '{old_id}': {detail}")
        return self.job(new_id)

    def events(self, job_id: str | None = None) -> list[tuple[str, str | None, str, str]]:
        sql = "SELECT job_id, from_state, to_state, detail FROM events"
        rows = (
            self._conn.execute(sql + " WHERE job_id = ? ORDER BY seq", (job_id,))
            if job_id is not None
            else self._conn.execute(sql + " ORDER BY seq")
        ).fetchall()
        return [tuple(r) for r in rows]

    # media --------------------------------------------------------------------------------

    def media_id(self, sha256: str, base_url: str) -> int | None:
        row = self._conn.execute(
            "SELECT media_id FROM media WHERE sha256 = ? AND base_url = ?", (sha256, base_url)
        ).fetchone()
        return None if row is None else int(row["media_id"])

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

    # internals ----------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[None]:
        try:
            with self._conn:
                yield
        except sqlite3.Error as exc:
            if _disk_problem(exc):
                raise _disk_error("cannot write the state file", exc) from exc
            raise StateError(f"cannot write state file: {exc}") from exc

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
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = int(row["value"]) if row else 0
    if version > len(MIGRATIONS):
        raise StateError(f"schema version {version} is newer than this pixverse-batch knows")
    for name, sql in MIGRATIONS[version:]:
        with conn:
            for statement in filter(str.strip, sql.split(";")):
                conn.execute(statement)
            conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                (str(MIGRATIONS.index((name, sql)) + 1),),
            )
