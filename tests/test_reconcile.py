"""Pay once, lose nothing: ids that change between runs (renumbering, swaps, renames, changed
inputs, `--redo`) never cost a second generation, and no paid mp4 is ever overwritten. Each test
runs the real runner against the real simulator, then checks the files and the ledger."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.jobstate import JobState
from pipeline.manifest import Job, Limits, Manifest, Tts
from pipeline.preflight import Checked
from pipeline.reconcile import reconcile
from pipeline.runner import RunOutcome
from pipeline.simulator import Simulator, serve
from pipeline.state import StateStore
from tests.harness import STATE_NAME, fast_sim, project, run_once, sha256

pytestmark = pytest.mark.anyio


def clips(texts: dict[str, str]) -> str:
    """A manifest of TTS jobs on one video: id -> script (the script decides the result)."""
    lines = ["version: 1", "defaults: {tts_speaker: '1'}", "jobs:"]
    lines += [
        f"  - {{id: {job_id}, video: media/intro.mp4, tts: {{text: '{text}'}}}}"
        for job_id, text in texts.items()
    ]
    return "\n".join(lines) + "\n"


def results(outcome: RunOutcome) -> dict[str, int]:
    """Job id -> video id, for done jobs."""
    return {r.id: r.video_id for r in outcome.rows if r.video_id is not None}


def check_outputs(outcome: RunOutcome, sim: Simulator) -> None:
    """Every done row names an existing file holding exactly what the server sent for it."""
    for row in outcome.rows:
        assert row.state == "done", row
        assert row.output is not None
        assert row.video_id is not None
        assert Path(row.output).is_file(), row.output
        assert Path(row.output).name == f"{row.id}.mp4"
        assert sha256(Path(row.output)) == sim.ledger.served_downloads[row.video_id]


def top_level_mp4s(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.suffix == ".mp4")


async def test_renumbering_after_a_deletion_pays_nothing_and_overwrites_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project(tmp_path, clips({"clip-1": "one", "clip-2": "two", "clip-3": "three"}))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        first = await run_once(sim, manifest, out)
        paid = results(first)
        # clip-1 is deleted and the rest renumbered: old clip-2 is clip-1 now, old clip-3 clip-2
        manifest.write_text(clips({"clip-1": "two", "clip-2": "three"}), encoding="utf-8")
        second = await run_once(sim, manifest, out)
        assert len(sim.ledger.generations) == 3  # nothing paid twice
        assert results(second) == {"clip-1": paid["clip-2"], "clip-2": paid["clip-3"]}
        check_outputs(second, sim)
        assert top_level_mp4s(out) == ["clip-1.mp4", "clip-2.mp4"]
        # old clip-1's paid result is kept aside, not overwritten by old clip-2's
        kept = out / "superseded" / f"clip-1@{paid['clip-1']}.mp4"
        assert sha256(kept) == sim.ledger.served_downloads[paid["clip-1"]]
        # the archived record is none of this manifest's jobs: not reported, not listed
        assert main(["status", str(manifest), "--out", str(out)]) == 0
        listed = capsys.readouterr().out
        assert "@" not in listed
        assert "2 jobs: 2 done" in listed
        assert main(["status", "--out", str(out)]) == 0
        listed = capsys.readouterr().out
        assert "@" not in listed
        assert "2 jobs: 2 done" in listed
        # bringing the deleted inputs back, under yet another id, adopts what was paid for
        manifest.write_text(
            clips({"clip-1": "two", "clip-2": "three", "clip-3": "one"}), encoding="utf-8"
        )
        third = await run_once(sim, manifest, out)
    assert len(sim.ledger.generations) == 3
    assert results(third) == {
        "clip-1": paid["clip-2"],
        "clip-2": paid["clip-3"],
        "clip-3": paid["clip-1"],
    }
    check_outputs(third, sim)
    assert not kept.exists()  # it moved back into place
    assert top_level_mp4s(out) == ["clip-1.mp4", "clip-2.mp4", "clip-3.mp4"]


async def test_swapping_two_ids_swaps_the_files_and_pays_nothing(tmp_path: Path) -> None:
    manifest = project(tmp_path, clips({"a": "alpha", "b": "bravo"}))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        first = await run_once(sim, manifest, out)
        paid = results(first)
        assert sha256(out / "a.mp4") != sha256(out / "b.mp4")
        manifest.write_text(clips({"a": "bravo", "b": "alpha"}), encoding="utf-8")
        swapped = await run_once(sim, manifest, out)
    assert len(sim.ledger.generations) == 2
    assert results(swapped) == {"a": paid["b"], "b": paid["a"]}
    check_outputs(swapped, sim)
    assert top_level_mp4s(out) == ["a.mp4", "b.mp4"]
    assert not (out / "superseded").exists()  # nothing was in the way: nothing set aside


async def test_a_three_way_cycle_pays_nothing(tmp_path: Path) -> None:
    manifest = project(tmp_path, clips({"a": "alpha", "b": "bravo", "c": "charlie"}))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        paid = results(await run_once(sim, manifest, out))
        manifest.write_text(clips({"a": "charlie", "b": "alpha", "c": "bravo"}), encoding="utf-8")
        cycled = await run_once(sim, manifest, out)
    assert len(sim.ledger.generations) == 3
    assert results(cycled) == {"a": paid["c"], "b": paid["a"], "c": paid["b"]}
    check_outputs(cycled, sim)


async def test_changed_inputs_keep_the_old_result_for_a_change_back(tmp_path: Path) -> None:
    """Today's inputs replace yesterday's under the same id: yesterday's paid result is kept
    aside, and changing the inputs back picks it up again instead of paying a third time."""
    manifest = project(tmp_path, clips({"a": "first take"}))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        first = await run_once(sim, manifest, out)
        manifest.write_text(clips({"a": "second take"}), encoding="utf-8")
        second = await run_once(sim, manifest, out)
        assert len(sim.ledger.generations) == 2
        old = first.rows[0].video_id
        assert old is not None
        kept = out / "superseded" / f"a@{old}.mp4"
        assert sha256(kept) == sim.ledger.served_downloads[old]
        check_outputs(second, sim)
        manifest.write_text(clips({"a": "first take"}), encoding="utf-8")
        back = await run_once(sim, manifest, out)
    assert len(sim.ledger.generations) == 2
    assert back.rows[0].video_id == old
    check_outputs(back, sim)
    assert (
        sha256(out / "superseded" / f"a@{second.rows[0].video_id}.mp4")
        == (
            sim.ledger.served_downloads[second.rows[0].video_id]  # type: ignore[index]
        )
    )


async def test_redo_keeps_the_result_it_replaces(tmp_path: Path) -> None:
    manifest = project(tmp_path, clips({"a": "take"}))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        first = await run_once(sim, manifest, out)
        redone = await run_once(sim, manifest, out, redo=frozenset({"a"}))
    assert len(sim.ledger.generations) == 2  # --redo pays again, on purpose ...
    check_outputs(redone, sim)
    old = first.rows[0].video_id
    assert old is not None
    assert redone.rows[0].video_id != old
    # ... but the result it replaces was paid for too: set aside, not overwritten
    assert sha256(out / "superseded" / f"a@{old}.mp4") == sim.ledger.served_downloads[old]


async def test_a_download_never_overwrites_a_file_in_its_way(tmp_path: Path) -> None:
    manifest = project(tmp_path, clips({"a": "take"}))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.mp4").write_bytes(b"a result from somewhere else")
    async with serve(fast_sim()) as sim:
        outcome = await run_once(sim, manifest, out)
    check_outputs(outcome, sim)
    aside = list((out / "superseded").iterdir())
    assert [p.read_bytes() for p in aside] == [b"a result from somewhere else"]


class Crash(Exception):
    """Stands for the process dying right after a file operation (nothing after it runs)."""


def crash_after_mp4_replace(number: int) -> Callable[..., None]:
    """os.replace that does its job, then "dies" after the `number`-th move of an mp4."""
    real = os.replace
    seen = 0

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        nonlocal seen
        real(src, dst)
        if str(src).endswith(".mp4") or str(dst).endswith(".mp4"):
            seen += 1
            if seen == number:
                raise Crash(f"crashed after moving {src} to {dst}")

    return replace


def crash_after_moving_to(target: Path) -> Callable[..., None]:
    """os.replace that does its job, then "dies" once a file has arrived at `target`."""
    real = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        real(src, dst)
        if Path(dst) == target:
            raise Crash(f"crashed after moving {src} to {dst}")

    return replace


@pytest.mark.parametrize("crash_at", range(1, 7))
async def test_a_crash_inside_a_take_over_is_recovered_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: int
) -> None:
    """A swap, a rename and a deletion at once; the run dies after each file move in turn. The
    next run ends with every reported output in place, and nothing generated again."""
    manifest = project(tmp_path, clips({"a": "alpha", "b": "bravo", "c": "charlie", "d": "x"}))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        paid = results(await run_once(sim, manifest, out))
        manifest.write_text(clips({"a": "bravo", "b": "alpha", "e": "charlie"}), encoding="utf-8")
        with monkeypatch.context() as patch:
            patch.setattr(os, "replace", crash_after_mp4_replace(crash_at))
            with pytest.raises(Crash):  # 6 moves: 3 to staging names, 3 to their new names
                await run_once(sim, manifest, out)
        after = await run_once(sim, manifest, out)
    assert len(sim.ledger.generations) == 4
    assert results(after) == {"a": paid["b"], "b": paid["a"], "e": paid["c"]}
    check_outputs(after, sim)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".adopt.mp4")]
    # the deleted job's result stays where it was: no job of the manifest wants that name
    assert top_level_mp4s(out) == ["a.mp4", "b.mp4", "d.mp4", "e.mp4"]
    assert sha256(out / "d.mp4") == sim.ledger.served_downloads[paid["d"]]
    store = StateStore.read_only(out / STATE_NAME)
    try:
        archived = [r for r in store.jobs(archived=True) if "@" in r.id]
    finally:
        store.close()
    assert [r.video_id for r in archived] == [paid["d"]]


async def test_a_crash_between_moving_a_file_and_recording_the_move(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renamed job takes over a paid result; the run dies right after the file moved, before
    the state file says so. The next run must report a file that exists, and pay nothing."""
    manifest = project(tmp_path, clips({"old": "take"}))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        await run_once(sim, manifest, out)
        manifest.write_text(clips({"new": "take"}), encoding="utf-8")
        with monkeypatch.context() as patch:
            patch.setattr(os, "replace", crash_after_moving_to(out / "new.mp4"))
            with pytest.raises(Crash):
                await run_once(sim, manifest, out)
        after = await run_once(sim, manifest, out)
    assert len(sim.ledger.generations) == 1
    check_outputs(after, sim)
    assert top_level_mp4s(out) == ["new.mp4"]


def tts_on_a_video_id(texts: dict[str, str]) -> Checked:
    """A checked manifest that needs no media files (a `video_id` and TTS): for store tests."""
    jobs = tuple(
        Job(job_id, f"job '{job_id}'", video_id=391504857968062, tts=Tts(text, "1"))
        for job_id, text in texts.items()
    )
    return Checked(Manifest(Path("manifest.yaml"), None, Limits(), jobs), {})


def test_a_take_over_reads_events_through_the_index(tmp_path: Path) -> None:
    """Renaming many jobs used to rewrite the whole events table once per job (quadratic):
    every statement on `events` during a take-over must find its rows through the index."""
    path = tmp_path / "s.sqlite"
    store = StateStore.open(path)
    count = 50
    reconcile(tts_on_a_video_id({f"old-{i}": f"line {i}" for i in range(count)}), store, tmp_path)
    for i in range(count):
        store.transition(f"old-{i}", JobState.SUBMITTING, trace_id=f"t-{i}")
        store.transition(f"old-{i}", JobState.GENERATING, video_id=1000 + i, attempts=1)
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    renamed = tts_on_a_video_id({f"new-{i}": f"line {i}" for i in range(count)})
    assert len(reconcile(renamed, store, tmp_path)) == count
    store._conn.set_trace_callback(None)
    assert {r.id: r.video_id for r in store.jobs()} == {f"new-{i}": 1000 + i for i in range(count)}
    store.close()
    on_events = [
        s for s in statements if "events" in s and not s.lstrip().upper().startswith("INSERT")
    ]
    assert on_events  # the take-over did touch the history
    conn = sqlite3.connect(path)
    try:
        for statement in on_events:
            plan = " / ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + statement))
            assert "SCAN events" not in plan, (statement, plan)
            assert "events_job_id" in plan, (statement, plan)
    finally:
        conn.close()


def test_an_unpaid_record_gives_way_to_a_paid_one_with_the_same_inputs(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path / "s.sqlite")
    reconcile(tts_on_a_video_id({"a": "same", "b": "same"}), store, tmp_path)
    store.transition("b", JobState.SUBMITTING, trace_id="t-b")
    store.transition("b", JobState.GENERATING, video_id=7, attempts=1)
    # b leaves the manifest; a, never submitted, has the inputs b paid for
    assert reconcile(tts_on_a_video_id({"a": "same"}), store, tmp_path) == [
        tts_on_a_video_id({"a": "same"}).manifest.jobs[0]
    ]
    assert store.job("a").video_id == 7
    assert store.job("a").state is JobState.GENERATING
    assert [r.id for r in store.jobs()] == ["a"]
    assert [r.state for r in store.jobs(archived=True) if r.archived] == [JobState.PENDING]
    store.close()
