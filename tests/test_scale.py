"""Issue 6's scale, at a small scale: what keeps a 10,000-job run cheap, checked for being
right (how cheap it is belongs to `benchmarks/bench_scale.py`; nothing here is timed)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import pipeline.htmlreport
import pipeline.report
from pipeline.jobstate import JobState
from pipeline.manifest import load_manifest
from pipeline.report import job_rows
from pipeline.runner import ExitCode
from pipeline.simulator import serve
from pipeline.state import StateStore
from tests.harness import STATE_NAME, fast_sim, job_uploads, run_once
from tests.media_factory import make_audio, make_video

pytestmark = pytest.mark.anyio


def many_jobs(root: Path, jobs: int) -> Path:
    """`jobs` jobs over 3 distinct videos and 3 distinct voices (6 files), every job its own
    pair or TTS line."""
    media = root / "media"
    media.mkdir(parents=True)
    for i in range(3):
        make_video(media / f"v{i}.mp4", seconds=1.0 + 0.5 * i)
        make_audio(media / f"a{i}.wav", seconds=1.0 + 0.25 * i)
    lines = ["version: 1", "defaults: {tts_speaker: '1'}", "jobs:"]
    for i in range(jobs):
        voice = f"audio: media/a{i % 3}.wav" if i < 9 else f"tts: {{text: 'line {i}'}}"
        lines.append(f"  - {{id: job-{i}, video: media/v{(i // 3) % 3}.mp4, {voice}}}")
    path = root / "manifest.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def test_each_distinct_file_is_uploaded_once_however_many_jobs_share_it(
    tmp_path: Path,
) -> None:
    manifest = many_jobs(tmp_path, 60)
    async with serve(fast_sim(concurrency_limit=20)) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out", concurrency=20)
    assert outcome.exit_code is ExitCode.OK
    assert len(sim.ledger.generations) == 60
    uploads = Counter(u.sha256 for u in job_uploads(sim.ledger))
    assert len(uploads) == 6  # every distinct file ...
    assert set(uploads.values()) == {1}  # ... once


async def test_the_report_takes_a_result_as_its_download_read_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report of 10,000 results opened each one again (half a millisecond each): the facts
    the download's check read are in the state file, and only a file whose length changed
    since is read again."""
    manifest = many_jobs(tmp_path, 4)
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        outcome = await run_once(sim, manifest, out)
    assert outcome.exit_code is ExitCode.OK
    store = StateStore.read_only(out / STATE_NAME)
    try:
        records = {r.id: r for r in store.jobs()}
        assert all(r.result_seconds and r.result_resolution for r in records.values())
        probed: list[Path] = []

        def probe(output: Path) -> tuple[float | None, str | None]:
            probed.append(output)
            return None, None

        monkeypatch.setattr(pipeline.report, "_probed", probe)
        changed = out / "job-1.mp4"
        changed.write_bytes(changed.read_bytes() + b"\0")
        rows = job_rows(load_manifest(manifest), store, run_id="r", now=0.0)
    finally:
        store.close()
    assert probed == [changed]
    by_id = {row.id: row for row in rows}
    for job_id in ("job-0", "job-2", "job-3"):
        record = records[job_id]
        assert by_id[job_id].duration == record.result_seconds
        assert by_id[job_id].resolution == record.result_resolution
    assert by_id["job-1"].duration is None  # what the (stand-in) probe said


async def test_a_page_shows_a_bounded_number_of_pictures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline.htmlreport, "MAX_PICTURES", 4)
    manifest = many_jobs(tmp_path, 6)
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        outcome = await run_once(sim, manifest, out)
    assert outcome.exit_code is ExitCode.OK
    page = (out / "report.html").read_text(encoding="utf-8")
    # jobs 0-2 share a video: it and their three results are the 4 videos shown, 6 times
    assert page.count("<img ") == 6
    assert len(list((out / ".thumbs").glob("*.jpg"))) == 4  # one per distinct video shown
    assert page.count("no picture: this page shows 4 videos") == 12 - 6
    assert page.count('class="play-button"') == 6  # every result still plays


def test_the_credits_total_follows_every_write_of_the_file(tmp_path: Path) -> None:
    """`total_credits` is read once and then kept by the writes (a sum per submission made
    long runs quadratic): after charges and refunds it is still the file's own sum."""
    store = StateStore.open(tmp_path / STATE_NAME)
    try:
        store.add_jobs({"a": "fa", "b": "fb"})
        assert store.total_credits() == 0
        for job_id, credits in (("a", 12), ("b", 30)):
            store.transition(job_id, JobState.SUBMITTING, "submitting", trace_id=f"t-{job_id}")
            store.transition(job_id, JobState.GENERATING, "video", video_id=1, credits=credits)
        assert store.total_credits() == 42
        store.transition("b", JobState.PENDING, "status 8: refunded", credits=0)
        store.update("a", "a count", attempts=1)  # no credits field: unchanged
        reread = StateStore.read_only(tmp_path / STATE_NAME)
        try:
            assert store.total_credits() == reread.total_credits() == 12
        finally:
            reread.close()
    finally:
        store.close()
