"""The live display and the progress line: jobs per stage, slots against the limit, this
run's spend, and an ETA learned from the generations seen to finish."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from pipeline.client import ClientConfig, PixverseClient
from pipeline.jobstate import JobState
from pipeline.manifest import load_manifest
from pipeline.preflight import preflight
from pipeline.progress import LiveProgress, Snapshot, Tracker, details, format_eta
from pipeline.runner import ExitCode, RunOptions, run_batch
from pipeline.simulator import serve
from pipeline.state import StateStore
from tests.harness import FAST_RETRY, STATE_NAME, fast_sim, project, run_once, tts_manifest

LINE = re.compile(
    r"progress: (\d)/(\d) done, \d+ failed, \d+ generating, \d+ downloading, \d+ pending;"
    r" slots (\d)/(\d); (\d+) credits this run; ETA (learning|\d+s)"
)


@pytest.mark.anyio
async def test_the_progress_line_has_slots_spend_and_eta(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="pipeline")
    manifest = project(tmp_path, tts_manifest(6))
    async with serve(fast_sim(generation_seconds=30.0)) as sim:
        await run_once(sim, manifest, tmp_path / "out", progress_every=0.03, concurrency=2)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    matches = [LINE.fullmatch(line) for line in lines]
    assert lines
    assert all(matches), lines
    assert all(int(m[3]) <= int(m[4]) == 2 for m in matches if m)
    assert any(m[3] == "2" for m in matches if m)  # both slots seen in use
    assert any(m[6] != "learning" for m in matches if m)  # an ETA once a generation finished
    final = matches[-1]
    assert final is not None
    assert (final[1], final[5]) == ("6", "24")


def test_the_tracker_learns_generation_times(tmp_path: Path) -> None:
    now = [1000.0]
    store = StateStore.open(tmp_path / STATE_NAME, clock=lambda: now[0])
    store.add_jobs({f"j{i}": "fp" for i in range(4)})
    tracker = Tracker(lambda: now[0], started=1000.0)
    for job_id in ("j0", "j1"):
        store.transition(job_id, JobState.SUBMITTING)
        store.transition(job_id, JobState.GENERATING, submitted_at=now[0])
    assert tracker.observe(store.jobs(), slot_limit=2) is None  # nothing finished yet
    now[0] = 1030.0
    store.transition("j0", JobState.DOWNLOADING)
    now[0] = 1031.0
    eta = tracker.observe(store.jobs(), slot_limit=2)
    assert tracker.durations == [30.0]
    # j1 needs about 30 - 31 < 0 more; j2 and j3 take 30 s each over 2 slots
    assert eta == pytest.approx(30.0)
    store.close()
    assert format_eta(None) == "learning"
    assert format_eta(75.2) == "1m16s"
    assert format_eta(7300) == "2h01m"


def test_details_name_the_cap_when_there_is_one() -> None:
    text = details(
        Snapshot({"done": 1, "generating": 2}, 5, slots_used=2, slot_limit=4, credits=12, cap=40)
    )
    assert text == (
        "0 failed, 2 generating, 0 downloading, 0 pending; slots 2/4;"
        " 12 of 40 credits this run; ETA learning"
    )


@pytest.mark.anyio
async def test_the_live_display_shows_the_same(tmp_path: Path) -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160, color_system=None)
    manifest = project(tmp_path, tts_manifest(3))
    async with serve(fast_sim()) as sim:
        store = StateStore.open(tmp_path / "out" / STATE_NAME)
        config = ClientConfig(base_url=sim.url, api_key="sim-key", retry=FAST_RETRY)
        async with PixverseClient(config) as client:
            outcome = await run_batch(
                preflight(load_manifest(manifest)),
                store,
                client,
                RunOptions(output_dir=tmp_path / "out", poll_interval=0.02, max_credits=100),
                progress=LiveProgress(console, interval=0.02),
            )
        store.close()
    assert outcome.exit_code is ExitCode.OK
    shown = screen.getvalue()
    assert re.search(r"3/3 done, ETA (learning|\d+s)", shown)
    assert "0 failed, 0 generating, 0 downloading, 0 pending; slots 0/5; 12 of 100 credits" in shown
