"""Long jobs (issue 9): pause detection, planning, cutting, stitching, and whole runs against
the simulator, interrupted and resumed in every state a long job can be in."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest

import pipeline.reconcile
from pipeline.cli import main
from pipeline.client import PixverseClient
from pipeline.longform import run as longrun
from pipeline.longform.cut import cut_segments, fingerprinted, video_rate
from pipeline.longform.pauses import Pause, find_pauses, pauses_in
from pipeline.longform.segments import LongPlan, plan_cuts, plan_job
from pipeline.longform.stitch import stitch
from pipeline.manifest import Job, Limits, load_manifest
from pipeline.media import probe
from pipeline.preflight import preflight
from pipeline.preview import forecast
from pipeline.simulator import Simulator, serve
from pipeline.state import StateStore
from tests.harness import STATE_NAME, fast_sim, project, run_once, sha256, sim_in_thread
from tests.media_factory import make_audio, make_video
from tests.windows import crashpoint_cmd, env_for, pipeline_cmd, run_args

FPS = 5
SECONDS = 70.0
# silences in the 70 s dub: the planner should cut in 20.0-20.6 and 45.0-45.8 (the longest
# in the later half of each 30 s window), never in the shorter ones nor mid-word
GAPS = ((20.0, 20.6), (26.0, 26.4), (45.0, 45.8), (55.0, 55.5))
LONG = """
version: 1
jobs:
  - id: talk-es
    video: media/talk.mp4
    audio: media/talk_es.mp3
"""
SEGMENTS = 3
FRAME = 1 / FPS


class Crash(BaseException):
    """Stands for a power cut: no `except Exception` catches it, nothing after it runs."""


@pytest.fixture(scope="module")
def long_media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("long-media")
    make_video(folder / "talk.mp4", seconds=SECONDS, width=64, height=36, fps=FPS, audio=False)
    make_audio(folder / "talk_es.mp3", seconds=SECONDS, pauses=GAPS)
    return folder


@pytest.fixture(scope="module")
def short_long_media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 35 s job (two segments): the resume tests run it three times each."""
    folder = tmp_path_factory.mktemp("short-long-media")
    make_video(folder / "talk.mp4", seconds=35, width=64, height=36, fps=FPS, audio=False)
    make_audio(folder / "talk_es.mp3", seconds=35, pauses=GAPS[:1])
    return folder


def long_project(tmp_path: Path, media: Path, manifest: str = LONG) -> Path:
    path = project(tmp_path, manifest)
    shutil.copytree(media, tmp_path / "media", dirs_exist_ok=True)
    return path


def check_result(path: Path, dub: Path) -> None:
    """One mp4 as long as the dub (within a frame), decoding from its first frame to its last
    with timestamps one frame apart, with the dub's own sound."""
    info = probe(path)
    seconds = probe(dub).duration
    assert info.has_audio
    assert abs(info.duration - seconds) <= FRAME
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = [float(f.pts * stream.time_base) for f in container.decode(stream)]
    assert len(times) == round(seconds * FPS)
    assert all(abs(b - a - FRAME) < 1e-3 for a, b in itertools.pairwise(times))
    assert times[0] == 0.0
    # the sound is the original dub: its silences are where the dub's are
    original, stitched = pauses_in(dub), pauses_in(path)
    assert len(original) == len(stitched) > 0
    assert all(abs(a.start - b.start) < 0.05 for a, b in zip(original, stitched, strict=True))


def paid_once(sim: Simulator, segments: int = SEGMENTS) -> None:
    assert len(sim.ledger.generations) == segments
    assert set(sim.ledger.generations_per_inputs().values()) == {1}


# the pause detector and the planner -----------------------------------------------------


def test_the_pause_detector_finds_the_silent_gaps_between_tone_bursts(tmp_path: Path) -> None:
    dub = make_audio(tmp_path / "bursts.wav", seconds=12, pauses=((3.0, 3.5), (7.2, 8.0)))
    found = pauses_in(dub)
    assert [(round(p.start, 1), round(p.end, 1)) for p in found] == [(3.0, 3.5), (7.2, 8.0)]
    # the syllable dips of the tone (a few ms each, four a second) are words, not pauses
    assert find_pauses([1000] * 8000 + [0] * 400 + [1000] * 8000) == []
    assert find_pauses([1000] * 8000 + [0] * 2000 + [1000] * 8000) == [Pause(1.0, 1.25)]


def test_cuts_land_in_the_gaps(long_media: Path) -> None:
    dub = long_media / "talk_es.mp3"
    cuts = plan_cuts(SECONDS, pauses_in(dub), 30.0, 1.0, Fraction(FPS))
    times = [k / FPS for k in cuts[1:]]
    assert len(times) == 2
    assert 20.0 < times[0] < 20.6
    assert 45.0 < times[1] < 45.8


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        (30.0, [0.0]),  # exactly the limit: one segment
        (30.1, [0.0, 29.1]),  # a little over: the last segment keeps its 1 s minimum
        (60.5, [0.0, 30.0, 59.5]),  # the last would be 0.5 s: the cut before moves earlier
        (70.0, [0.0, 30.0, 60.0]),  # no pause anywhere: cut at the limit
    ],
)
def test_planner_edges(total: float, expected: list[float]) -> None:
    cuts = plan_cuts(total, [], 30.0, 1.0, Fraction(10))  # on a 10 fps grid
    assert [k / 10 for k in cuts] == expected
    ends = [*(k / 10 for k in cuts[1:]), total]
    lengths = [end - k / 10 for k, end in zip(cuts, ends, strict=True)]
    assert all(1.0 - 1e-9 <= length <= 30.0 + 1e-9 for length in lengths)


def test_a_pause_too_close_to_the_end_is_not_taken() -> None:
    # a pause at 60.2 s would leave a 0.3 s last segment; the one at 45 s is taken instead
    pauses = [Pause(45.0, 45.4), Pause(60.1, 60.3)]
    cuts = plan_cuts(60.5, pauses, 30.0, 1.0, Fraction(FPS))
    assert [k / FPS for k in cuts] == [0.0, 30.0, 45.2]


def _plan(tmp: Path, video_seconds: float, extend: str | None = None) -> LongPlan:
    job = Job("j", "jobs[0]", video=tmp / "v.mp4", audio=tmp / "a.wav", extend=extend)
    return plan_job(
        job,
        video_seconds=video_seconds,
        dub_seconds=SECONDS,
        fps=Fraction(FPS),
        pauses=[],
        video_sha="v",
        audio_sha="a",
        limits=Limits(),
    )


def test_a_segment_is_paid_under_the_content_of_its_range(tmp_path: Path, long_media: Path) -> None:
    dub = long_media / "talk_es.mp3"
    plan = fingerprinted(_plan(tmp_path, SECONDS), "video-sha", dub)  # cut at 30 and 60 s
    again = LongPlan.from_json(plan.job_id, plan.basis, plan.to_json())
    assert again == plan
    assert [again.segment_fingerprint(i) for i in (1, 2, 3)] == list(plan.fingerprints)
    assert len(set(plan.fingerprints)) == 3
    # the dub re-recorded in its last segment only: the other two send what they sent
    changed = make_audio(tmp_path / "changed.mp3", seconds=SECONDS, pauses=(*GAPS, (64, 65)))
    other = fingerprinted(_plan(tmp_path, SECONDS), "video-sha", changed)
    assert other.fingerprints[:2] == plan.fingerprints[:2]
    assert other.fingerprints[2] != plan.fingerprints[2]
    # another video: every segment sends another picture
    moved = fingerprinted(_plan(tmp_path, SECONDS), "other-video-sha", dub)
    assert not set(moved.fingerprints) & set(plan.fingerprints)
    # the fingerprint of earlier versions (basis and range) is still known, per segment
    assert len({plan.legacy_fingerprint(i) for i in (1, 2, 3)} - set(plan.fingerprints)) == 3
    assert "cut to the dub's" in _plan(tmp_path, 80.0).line()
    assert "held on its last frame" in _plan(tmp_path, 20.0, "freeze").line()


# cutting and stitching ---------------------------------------------------------------------


@pytest.mark.parametrize("extend", [None, "loop", "freeze"])
def test_cuts_hold_their_share_of_frames(tmp_path: Path, extend: str | None) -> None:
    video_seconds = SECONDS if extend is None else 12.0
    video = make_video(tmp_path / "v.mp4", seconds=video_seconds, fps=FPS, audio=False)
    dub = make_audio(tmp_path / "a.wav", seconds=SECONDS)
    plan = fingerprinted(_plan(tmp_path, video_seconds, extend), "v", dub)
    assert video_rate(video) == FPS
    files = cut_segments(plan, video, dub, tmp_path / "cuts")
    for (first, last), (start, end), (cut_video, cut_audio) in zip(
        plan.frame_ranges(), plan.ranges(), files, strict=True
    ):
        with av.open(str(cut_video)) as container:
            packets = [p for p in container.demux(container.streams.video[0]) if p.dts is not None]
            assert packets[0].is_keyframe
        assert len(packets) == last - first
        assert abs(probe(cut_audio).duration - (end - start)) < 1e-3


def test_stitching_copies_or_encodes_with_the_original_dub(
    tmp_path: Path, long_media: Path
) -> None:
    video, dub = long_media / "talk.mp4", long_media / "talk_es.mp3"
    plan = fingerprinted(_plan(tmp_path, SECONDS), "v", dub)
    cuts = cut_segments(plan, video, dub, tmp_path / "cuts")
    # the segments' results here carry no sound at all: the result's must be the dub's
    results = [v for v, _ in cuts]
    assert stitch(plan, results, dub, tmp_path / "copied.mp4") == "copy"
    check_result(tmp_path / "copied.mp4", dub)
    # a result one frame short cannot be copied: encoded again, its last frame held
    short = tmp_path / "short.mp4"
    first, last = plan.frame_ranges()[1]
    make_video(short, seconds=(last - first - 1) / FPS, width=64, height=36, fps=FPS)
    results[1] = short
    assert stitch(plan, results, dub, tmp_path / "encoded.mp4") == "encode"
    check_result(tmp_path / "encoded.mp4", dub)


# whole runs --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_70_s_job_becomes_one_70_s_mp4_from_three_generations(
    tmp_path: Path, long_media: Path
) -> None:
    manifest = long_project(tmp_path, long_media)
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        outcome = await run_once(sim, manifest, out)
        assert outcome.exit_code == 0
        paid_once(sim)
        again = await run_once(sim, manifest, out)  # nothing left to do, nothing paid
        assert again.exit_code == 0
        paid_once(sim)
    check_result(out / "talk-es.mp4", long_media / "talk_es.mp3")
    assert not (out / "segments").exists()  # removed once stitched
    report = json.loads((out / "report.json").read_text())
    [row] = report["jobs"]
    assert row["state"] == "done"
    assert [s["index"] for s in row["segments"]] == [1, 2, 3]
    assert {s["state"] for s in row["segments"]} == {"done"}
    assert row["credits"] == sum(s["credits"] for s in row["segments"]) > 0
    assert all(s["video_id"] for s in row["segments"])
    assert row["segments"][0]["start"] == 0
    assert row["segments"][-1]["end"] == SECONDS
    assert report["summary"] == report["summary"] | {"jobs": 1, "done": 1}
    assert "talk-es," in (out / "report.csv").read_text()


@pytest.mark.anyio
async def test_keep_segments_keeps_the_cuts_and_results(tmp_path: Path, long_media: Path) -> None:
    manifest = long_project(tmp_path, long_media)
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        assert (await run_once(sim, manifest, out, keep_segments=True)).exit_code == 0
    kept = sorted(p.name for p in (out / "segments" / "talk-es").iterdir())
    assert kept == [
        *(f"cut-{i}.{x}" for i in (1, 2, 3) for x in ("mp4", "wav")),
        "cuts.json",  # which segment fingerprint each cut was made for
        *(f"talk-es~{i}.mp4" for i in (1, 2, 3)),
    ]


@pytest.mark.anyio
async def test_a_segment_failing_for_good_fails_its_job_and_says_which(
    tmp_path: Path, long_media: Path
) -> None:
    manifest = long_project(tmp_path, long_media)
    out = tmp_path / "out"
    # content moderation refuses the second segment's cut (500054): it fails for good
    async with serve(fast_sim(moderated_filenames=frozenset({"cut-2.mp4"}))) as sim:
        outcome = await run_once(sim, manifest, out)
        assert len(sim.ledger.generations) == 2  # the other segments are paid and kept
    assert outcome.exit_code == 1
    [row] = outcome.rows
    assert row.state == "failed"
    assert row.error is not None
    assert row.error.startswith("segment 2 (")
    assert "500054" in row.error
    assert [s["state"] for s in row.segments or []] == ["done", "failed", "done"]
    assert not (out / "talk-es.mp4").exists()
    assert (out / "segments" / "talk-es" / "talk-es~1.mp4").exists()
    assert "talk-es" in (out / "failed.yaml").read_text()


@pytest.mark.anyio
async def test_a_segment_ending_in_status_8_is_retried_as_its_own_job(
    tmp_path: Path, long_media: Path
) -> None:
    manifest = long_project(tmp_path, long_media)
    async with serve(fast_sim(fail_probability=1.0)) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out", max_attempts=2)
        assert len(sim.ledger.generations) == 2 * SEGMENTS
    [row] = outcome.rows
    assert row.state == "failed"
    assert row.attempts == 2 * SEGMENTS
    assert "segment 1 (" in str(row.error)
    assert "status 8" in str(row.error)


def _crash_on(nth: int, real: Callable[..., Any], *, after: bool = False) -> Callable[..., Any]:
    calls = 0

    def due() -> bool:
        nonlocal calls
        calls += 1
        return calls == nth

    if after:

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            if due():
                raise Crash
            return result

        return wrapper

    def before(*args: Any, **kwargs: Any) -> Any:
        if due():
            raise Crash
        return real(*args, **kwargs)

    return before


def _async_crash_on(nth: int, real: Callable[..., Any], *, after: bool) -> Callable[..., Any]:
    calls = 0

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == nth and not after:
            raise Crash
        result = await real(*args, **kwargs)
        if calls == nth:
            raise Crash
        return result

    return wrapper


# Where a long job can be when a run dies; each re-run must finish with every segment paid once.
STATES: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "cut, nothing sent": lambda mp: mp.setattr(
        PixverseClient,
        "generate",
        _async_crash_on(1, PixverseClient.generate, after=False),
    ),
    "a submission accepted, its reply not saved": lambda mp: mp.setattr(
        PixverseClient,
        "generate",
        _async_crash_on(2, PixverseClient.generate, after=True),
    ),
    "generating and downloading": lambda mp: mp.setattr(
        "pipeline.runner.download_result",
        _async_crash_on(1, longrun_download(), after=False),
    ),
    "every segment done, not stitched": lambda mp: mp.setattr(
        longrun, "stitch", _crash_on(1, longrun.stitch)
    ),
    "stitched file placed, not recorded": lambda mp: mp.setattr(
        longrun, "place", _crash_on(1, longrun.place, after=True)
    ),
    "stitched and recorded, segments not removed": lambda mp: mp.setattr(
        StateStore, "save_stitched", _crash_on(1, StateStore.save_stitched, after=True)
    ),
    # no crash: the run ends, then the user deletes the result (fetched again, not regenerated)
    "done, its result deleted": lambda mp: None,
}


def longrun_download() -> Callable[..., Any]:
    import pipeline.runner

    return pipeline.runner.download_result


@pytest.mark.anyio
@pytest.mark.parametrize("state", sorted(STATES))
async def test_resume_in_every_state(
    tmp_path: Path, short_long_media: Path, monkeypatch: pytest.MonkeyPatch, state: str
) -> None:
    manifest = long_project(tmp_path, short_long_media)
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        if state == "done, its result deleted":
            assert (await run_once(sim, manifest, out)).exit_code == 0
            (out / "talk-es.mp4").unlink()
        else:
            with monkeypatch.context() as patch:
                STATES[state](patch)
                with pytest.raises(BaseException) as crashed:  # noqa: PT011 (group or Crash)
                    await run_once(sim, manifest, out, request_timeout=1.0)
                assert (
                    crashed.group_contains(Crash)
                    if isinstance(crashed.value, BaseExceptionGroup)
                    else crashed.type is Crash
                )
        outcome = await run_once(sim, manifest, out, request_timeout=1.0)
        assert outcome.exit_code == 0, outcome.rows
        paid_once(sim, segments=2)
    check_result(out / "talk-es.mp4", short_long_media / "talk_es.mp3")
    assert not (out / "segments").exists()


@pytest.mark.parametrize(("point", "nth"), [("after-reply", 2), ("after-stitch", 1)])
def test_killed_midway_and_resumed_pays_each_segment_once(
    tmp_path: Path, long_media: Path, point: str, nth: int
) -> None:
    manifest = long_project(tmp_path, long_media)
    out = tmp_path / "out"
    with sim_in_thread(fast_sim()) as sim:
        env = env_for(sim)
        first = subprocess.run(
            crashpoint_cmd(point, nth, *run_args(manifest, out)),
            env=env,
            cwd="/",
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert first.returncode == -9, first.stderr.decode()[-2000:]
        again = subprocess.run(
            pipeline_cmd(*run_args(manifest, out)),
            env=env,
            cwd="/",
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert again.returncode == 0, again.stderr.decode()[-2000:]
        sim.settle()
        paid_once(sim)
    check_result(out / "talk-es.mp4", long_media / "talk_es.mp3")
    assert not (out / STATE_NAME).with_name(".talk-es.stitch.mp4").exists()


SWAP = """
version: 1
jobs:
  - {{id: talk-es, video: media/talk.mp4, audio: media/talk_es.mp3, output: {long}}}
  - {{id: a, video: media/intro.mp4, audio: media/intro_es.mp3, output: {short}}}
"""


@pytest.mark.anyio
@pytest.mark.parametrize("nth", [1, 2, 3, 4])
async def test_a_long_job_and_a_job_swapping_paths_lose_nothing_whenever_a_run_dies(
    tmp_path: Path, short_long_media: Path, monkeypatch: pytest.MonkeyPatch, nth: int
) -> None:
    """The stitched file and the ordinary result move in one step, through staging names:
    a run dying after any of the four moves (both staged, then one, then both at their new
    paths) leaves the next run to finish them, downloading, stitching and paying nothing."""
    manifest = long_project(
        tmp_path, short_long_media, SWAP.format(long="L/t.mp4", short="N/a.mp4")
    )
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        assert (await run_once(sim, manifest, out)).exit_code == 0
        made = {"talk-es": sha256(out / "L" / "t.mp4"), "a": sha256(out / "N" / "a.mp4")}
        paid, transfers = len(sim.ledger.generations), len(sim.ledger.transfers)
        manifest.write_text(SWAP.format(long="N/a.mp4", short="L/t.mp4"), encoding="utf-8")
        with monkeypatch.context() as patch:
            real = pipeline.reconcile.place
            patch.setattr("pipeline.reconcile.place", _crash_on(nth, real, after=True))
            with pytest.raises(Crash):
                await run_once(sim, manifest, out)
        outcome = await run_once(sim, manifest, out)
        assert (len(sim.ledger.generations), len(sim.ledger.transfers)) == (paid, transfers)
    assert outcome.exit_code == 0, outcome.rows
    assert {r.id: r.state for r in outcome.rows} == {"talk-es": "done", "a": "done"}
    assert {"talk-es": sha256(out / "N" / "a.mp4"), "a": sha256(out / "L" / "t.mp4")} == made
    assert not list(out.rglob("superseded"))
    assert not list(out.glob(".*.mp4"))


# preflight and validate -----------------------------------------------------------------


def test_validate_prints_the_plan(tmp_path: Path, long_media: Path) -> None:
    checked = preflight(load_manifest(long_project(tmp_path, long_media)))
    line = checked.long["talk-es"].line()
    assert line.startswith("talk-es: 70.0 s -> 3 segments: 0-20.")
    assert line.endswith("45.4-70.0; about 288 credits")


@pytest.mark.parametrize(
    ("job", "fragment"),
    [
        ("{id: j, video: media/short.mp4, audio: media/talk_es.mp3}", "extend: loop"),
        (
            "{id: j, video: media/talk.mp4, tts: {text: hi, speaker: '1'}}",
            "give its dub as an audio file",
        ),
        (
            f"{{id: j, video: media/short.mp4, tts: {{text: {'x' * 201}, speaker: '1'}}}}",
            "`audio:`",
        ),
        ("{id: j, video: media/short.mp4, audio: media/talk_es.mp3, extend: bounce}", "extend"),
    ],
)
def test_long_jobs_that_cannot_be_planned_are_refused(
    tmp_path: Path, long_media: Path, job: str, fragment: str
) -> None:
    manifest = long_project(tmp_path, long_media, f"version: 1\njobs:\n  - {job}\n")
    make_video(tmp_path / "media" / "short.mp4", seconds=5, fps=FPS)
    with pytest.raises(Exception, match="job 'j'") as refused:
        preflight(load_manifest(manifest))
    assert fragment in str(getattr(refused.value, "problems", refused.value))


def test_a_dub_longer_than_its_video_runs_with_extend(tmp_path: Path, long_media: Path) -> None:
    text = "version: 1\njobs:\n  - {id: j, video: media/short.mp4, audio: media/talk_es.mp3}\n"
    text = text.replace("}", ", extend: freeze}")
    manifest = long_project(tmp_path, long_media, text)
    make_video(tmp_path / "media" / "short.mp4", seconds=5, fps=FPS)
    plan = preflight(load_manifest(manifest)).long["j"]
    assert "held on its last frame" in plan.line()


@pytest.mark.anyio
async def test_a_long_job_midway_under_the_earlier_fingerprints_resumes_paying_nothing_twice(
    tmp_path: Path, short_long_media: Path
) -> None:
    """A state file as the version before content fingerprints left it: one segment done and
    paid, the other pending, the segments' records under the basis-and-range fingerprints,
    the saved plan without fingerprints, the cuts without `cuts.json`. (Checked once against
    that version's own run as well.) The upgraded run pays only the pending segment."""
    manifest = long_project(tmp_path, short_long_media)
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        first = await run_once(sim, manifest, out, max_credits=90)  # one segment of two
        assert first.exit_code == 75
        store = StateStore.open(out / STATE_NAME)
        try:
            [row] = store.long_jobs()
            plan = LongPlan.from_json("talk-es", row.basis, row.plan)
            for index in (1, 2):
                legacy = plan.legacy_fingerprint(index)
                store.update(f"talk-es~{index}", "as an earlier version", fingerprint=legacy)
            saved = json.loads(row.plan)
            old = {k: v for k, v in saved.items() if k not in ("fingerprints", "dub")}
            store.save_long_plan("talk-es", row.basis, json.dumps(old))
        finally:
            store.close()
        (out / "segments" / "talk-es" / "cuts.json").unlink()
        [done] = [r for r in _records(out) if r.state.value == "done"]
        outcome = await run_once(sim, manifest, out)
        assert outcome.exit_code == 0
        paid_once(sim, segments=2)
    assert done.fingerprint == plan.legacy_fingerprint(1)
    assert {r.id: r.video_id for r in _records(out)}[done.id] == done.video_id
    check_result(out / "talk-es.mp4", short_long_media / "talk_es.mp3")


def _records(out: Path) -> list[Any]:
    store = StateStore.read_only(out / STATE_NAME)
    try:
        return list(store.jobs())
    finally:
        store.close()


@pytest.mark.parametrize(
    ("redo", "said"),
    [
        ("talk-es~4", "--redo: 'talk-es~4': job 'talk-es' has 3 segments"),
        ("talk-es~0", "--redo: no job with id 'talk-es~0'"),
        ("other~1", "--redo: no job with id 'other~1'"),
    ],
)
def test_redo_of_a_segment_names_one_of_its_plan(
    tmp_path: Path, long_media: Path, capsys: pytest.CaptureFixture[str], redo: str, said: str
) -> None:
    manifest = long_project(tmp_path, long_media)
    assert main(["run", str(manifest), "--dry-run", "--redo", redo]) == 2
    assert said in capsys.readouterr().err


@pytest.mark.anyio
async def test_the_forecast_of_a_long_job_is_what_the_run_then_pays(
    tmp_path: Path, short_long_media: Path
) -> None:
    manifest = long_project(tmp_path, short_long_media)
    out = tmp_path / "out"

    def told(redo: frozenset[str] = frozenset()) -> tuple[str, str, int]:
        checked = preflight(load_manifest(manifest))
        records, long = [], []
        if (out / STATE_NAME).exists():
            store = StateStore.read_only(out / STATE_NAME)
            try:
                records, long = store.jobs(archived=True), store.long_jobs()
            finally:
                store.close()
        [step] = forecast(checked, records, out, long=long, redo=redo)
        return step.action, step.detail, step.credits

    async with serve(fast_sim()) as sim:
        plan = preflight(load_manifest(manifest)).long["talk-es"]
        assert told() == ("submit", "long job: 2 of 2 segments to submit", plan.credits())
        await run_once(sim, manifest, out, max_credits=90)  # the first segment only
        action, detail, credits = told()
        assert (action, detail) == ("submit", "long job: 1 of 2 segments to submit")
        assert 0 < credits < plan.credits()
        assert (await run_once(sim, manifest, out)).exit_code == 0
        assert told()[:2] == ("skip", "done: its segments are stitched")
        # one segment redone: that one is paid, the other downloaded again, for free
        redo = frozenset({"talk-es~2"})
        assert told(redo)[:2] == ("submit", "long job: 1 of 2 segments to submit")
        assert (await run_once(sim, manifest, out, redo=redo)).exit_code == 0
        assert len(sim.ledger.generations) == 3


@pytest.mark.anyio
async def test_keep_going_leaves_an_invalid_long_jobs_segment_records_alone(
    tmp_path: Path, short_long_media: Path
) -> None:
    """The manifest's only long job is invalid tonight (its dub now outlasts its video): the
    run of the other jobs must not archive the long job's paid segments (review 5, L16)."""
    text = LONG + "  - {id: short, video: media/intro.mp4, audio: media/intro_es.mp3}\n"
    manifest = long_project(tmp_path, short_long_media, text)
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        assert (await run_once(sim, manifest, out)).exit_code == 0
        paid = {r.id for r in _records(out)}
        assert {"talk-es~1", "talk-es~2"} <= paid
        make_audio(tmp_path / "media" / "talk_es.mp3", seconds=40, pauses=GAPS[:1])
        outcome = await run_once(sim, manifest, out, keep_going=True)
    assert outcome.exit_code == 1
    assert {r.id for r in _records(out)} == paid
    assert {row.id: row.state for row in outcome.rows}["talk-es"] == "failed"
