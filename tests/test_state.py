"""The state file: durable transitions, the transition table, the lock, migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pipeline.errors import LockedError, StateError
from pipeline.jobstate import TRANSITIONS, IllegalTransitionError, JobState
from pipeline.state import MIGRATIONS, StateStore


def test_transitions_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    store = StateStore.open(path)
    store.add_job("a", "fp1")
    store.transition("a", JobState.SUBMITTING, trace_id="trace-1")
    store.transition("a", JobState.GENERATING, video_id=123456789012345, attempts=1)
    store.close()
    # a second connection (as after a crash) sees every committed change
    again = StateStore.open(path)
    record = again.job("a")
    assert record.state is JobState.GENERATING
    assert record.trace_id == "trace-1"
    assert record.video_id == 123456789012345
    assert record.attempts == 1
    assert [e[2] for e in again.events("a")] == ["pending", "submitting", "generating"]
    again.close()


def test_illegal_transition_names_both_states(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path / "s.sqlite")
    store.add_job("a", "fp")
    with pytest.raises(IllegalTransitionError, match="pending -> done"):
        store.transition("a", JobState.DONE)
    assert store.job("a").state is JobState.PENDING
    store.close()


def test_every_state_has_a_row_in_the_table() -> None:
    assert set(TRANSITIONS) == set(JobState)
    # a job is done only through a download, and submitted only from PENDING (new trace id)
    assert [s for s, to in TRANSITIONS.items() if JobState.DONE in to] == [JobState.DOWNLOADING]
    assert [s for s, to in TRANSITIONS.items() if JobState.SUBMITTING in to] == [JobState.PENDING]


def test_second_open_is_refused_while_locked(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    first = StateStore.open(path)
    with pytest.raises(LockedError, match="another run"):
        StateStore.open(path)
    first.close()
    StateStore.open(path).close()  # free again once the first run is gone


def test_unknown_fields_are_refused(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path / "s.sqlite")
    store.add_job("a", "fp")
    with pytest.raises(ValueError, match="not job fields"):
        store.update("a", api_key="x")
    store.close()


def test_media_cache_round_trip(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path / "s.sqlite")
    store.save_media("abc", "http://x", "video", 111)
    assert store.media_id("abc", "http://x") == 111
    assert store.media_id("abc", "http://other") is None
    store.forget_media("abc", "http://x")
    assert store.media_id("abc", "http://x") is None
    store.close()


def test_schema_version_is_recorded_and_a_newer_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    StateStore.open(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
        str(len(MIGRATIONS)),
    )
    conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="newer"):
        StateStore.open(path)


def test_read_only_needs_an_existing_file(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no state file"):
        StateStore.read_only(tmp_path / "missing.sqlite")
    path = tmp_path / "s.sqlite"
    writer = StateStore.open(path)
    writer.add_job("a", "fp")
    reader = StateStore.read_only(path)  # works while a run holds the lock
    assert [r.id for r in reader.jobs()] == ["a"]
    reader.close()
    writer.close()


# The schema as the first release wrote it (MIGRATIONS[0] then; kept verbatim on purpose: an
# old state file must keep opening whatever later migrations add).
OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE media (sha256 TEXT NOT NULL, base_url TEXT NOT NULL, kind TEXT NOT NULL,
    media_id INTEGER NOT NULL, uploaded_at REAL NOT NULL, PRIMARY KEY (sha256, base_url));
CREATE TABLE jobs (id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, trace_id TEXT, video_id INTEGER,
    credits INTEGER NOT NULL DEFAULT 0, last_credits INTEGER NOT NULL DEFAULT 0, output TEXT,
    bytes INTEGER, error TEXT, ambiguous INTEGER NOT NULL DEFAULT 0, submitted_at REAL,
    updated_at REAL NOT NULL);
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL,
    at REAL NOT NULL, from_state TEXT, to_state TEXT NOT NULL, detail TEXT);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO jobs (id, fingerprint, state, attempts, video_id, credits, output, bytes,
    updated_at) VALUES ('a', 'fp', 'done', 1, 42, 4, '/out/a.mp4', 10, 1.0);
INSERT INTO events (job_id, at, from_state, to_state, detail) VALUES ('a', 1.0, NULL,
    'pending', 'new job');
"""


def test_a_state_file_of_the_first_schema_still_reads_and_migrates(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    conn.close()
    reader = StateStore.read_only(path)  # `status` on an old file, before any run migrated it
    assert [(r.id, r.state, r.video_id) for r in reader.jobs()] == [("a", JobState.DONE, 42)]
    reader.close()
    store = StateStore.open(path)
    assert store.job("a").output == "/out/a.mp4"
    assert [e[3] for e in store.events("a")] == ["new job"]
    store.close()
    conn = sqlite3.connect(path)
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    conn.close()
    assert version == (str(len(MIGRATIONS)),)
    assert "events_job_id" in indexes


def test_a_migration_that_dies_halfway_leaves_a_file_that_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqlite3 runs DDL outside the implicit transaction: each CREATE used to commit on its own,
    so a first run that died halfway left a file that never opened again."""
    path = tmp_path / "s.sqlite"
    name, sql = MIGRATIONS[0]
    with monkeypatch.context() as patch:
        # the real first migration, then a statement that fails: as a crash right there
        patch.setattr("pipeline.state.MIGRATIONS", [(name, sql + ";\nCREATE TABLE broken (")])
        with pytest.raises(StateError):
            StateStore.open(path)
    store = StateStore.open(path)  # the real migrations, from the start
    store.add_job("a", "fp")
    assert store.job("a").state is JobState.PENDING
    store.close()


def test_reassign_moves_records_in_a_cycle_with_their_history(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path / "s.sqlite")
    for job_id in ("a", "b", "c"):
        store.add_job(job_id, f"fp-{job_id}")
    store.transition("a", JobState.SUBMITTING, trace_id="t-a")
    store.reassign({"a": "b", "b": "c", "c": "a"}, {"a": "same inputs", "b": "x", "c": "y"})
    assert {r.id: r.fingerprint for r in store.jobs()} == {"a": "fp-c", "b": "fp-a", "c": "fp-b"}
    assert store.job("b").trace_id == "t-a"
    assert [e[2] for e in store.events("b")] == ["pending", "submitting", "submitting"]
    assert "renamed from 'a'" in store.events("b")[-1][3]
    # an archive id hides a record from a manifest's view, but it is still there
    store.reassign({"c": "c@1"}, {"c": "no job wants it"})
    assert [r.id for r in store.jobs()] == ["a", "b"]
    assert [r.id for r in store.jobs(archived=True)] == ["a", "b", "c@1"]
    store.close()


def test_an_imported_record_is_seen_by_a_store_that_read_every_record(tmp_path: Path) -> None:
    """`import_record` (failed.yaml's `resume_from`) adds a paid record: a store that had read
    all its records and their credits (it keeps them) lists it and counts its credits."""
    other = StateStore.open(tmp_path / "other.sqlite")
    other.add_job("x", "fp-x")
    other.transition("x", JobState.SUBMITTING, trace_id="trace-x")
    paid = other.transition("x", JobState.GENERATING, video_id=42, attempts=1, credits=30)
    other.close()
    store = StateStore.open(tmp_path / "state.sqlite")
    store.add_job("a", "fp-a")
    assert [r.id for r in store.jobs()] == ["a"]
    assert store.total_credits() == 0
    store.import_record(paid, "x@42", JobState.GENERATING, "taken from the other run")
    assert [r.id for r in store.jobs(archived=True)] == ["a", "x@42"]
    assert store.job("x@42").video_id == 42
    assert store.total_credits() == 30
    store.close()
    again = StateStore.open(tmp_path / "state.sqlite")
    assert again.total_credits() == 30
    again.close()
