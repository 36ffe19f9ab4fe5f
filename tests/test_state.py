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
