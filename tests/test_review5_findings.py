"""Review 5: long jobs, several keys, nightly runs and report.html, attacked for the three
sins (paying twice, losing a paid result, an idle slot while work waits) and for truthfulness.

Each test is a demonstrated finding on the code as reviewed, marked strict xfail: it passes
(as an expected failure) while the defect is there, and turns into an error once it is fixed,
so the fix removes the mark. The real client and runner talk to the bundled simulator over
loopback, as everywhere else in the suite."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.htmlreport import advice
from pipeline.longform import run as longrun
from pipeline.manifest import load_manifest
from pipeline.media import probe
from pipeline.preflight import preflight
from pipeline.preview import forecast, remaining_credits
from pipeline.reportpage import rebuild_page
from pipeline.simulator import Simulator, serve
from pipeline.simulator.media import spoil
from pipeline.state import JobRecord, StateStore
from tests.harness import STATE_NAME, fast_sim, project, run_once, sim_in_thread
from tests.media_factory import make_audio, make_video
from tests.pagecheck import Page

FPS = 5
LONG = """
version: 1
jobs:
  - id: talk
    video: media/talk.mp4
    audio: media/talk.mp3
"""


def long_job(
    tmp_path: Path, seconds: float = 35.0, pauses: Sequence[tuple[float, float]] = ((20.0, 20.6),)
) -> Path:
    """A manifest with one long job (a 35 s video and dub: two segments)."""
    manifest = project(tmp_path, LONG)
    media = tmp_path / "media"
    make_video(media / "talk.mp4", seconds=seconds, width=64, height=36, fps=FPS, audio=False)
    make_audio(media / "talk.mp3", seconds=seconds, pauses=pauses)
    return manifest


def paid_per_inputs(sim: Simulator) -> list[int]:
    return sorted(sim.ledger.generations_per_inputs().values())


def _records(out: Path, *, archived: bool = False) -> list[JobRecord]:
    store = StateStore.open(out / STATE_NAME)
    try:
        return store.jobs(archived=archived)
    finally:
        store.close()


@pytest.mark.anyio
async def test_l1_a_changed_dub_is_cut_again_not_served_from_the_old_cuts(
    tmp_path: Path,
) -> None:
    """A long job is stopped midway (here by --max-credits; a kill or a failed segment leaves
    the same folder), its cuts left in `OUT/segments/<id>/`. The user then fixes the dub (a
    pause moved) and runs again. The new dub gives a new plan and new segment fingerprints,
    but `cut_segments` writes only *missing* files named `cut-<n>`, so the new segments are
    the old cuts: the old audio is sent (its media id even comes from the cache), a generation
    of exactly the inputs already paid for is paid again, and the stitched result lip-syncs
    the old dub under the new one. Sins: paying twice for one segment, and a wrong result
    counted done."""
    manifest = long_job(tmp_path)
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        first = await run_once(sim, manifest, out, max_credits=90)  # one segment of two
        assert first.exit_code == 75
        assert len(sim.ledger.generations) == 1
        # the user fixes the dub: the pause is at 17 s now
        make_audio(tmp_path / "media" / "talk.mp3", seconds=35.0, pauses=((17.0, 17.6),))
        second = await run_once(sim, manifest, out, keep_segments=True)
        assert second.exit_code == 0
        paid = paid_per_inputs(sim)
    cut = out / "segments" / "talk" / "cut-1.wav"
    # the new plan's first segment ends in the new pause; the cut sent is the old one
    assert paid == [1, 1, 1], "an input pair already paid for was generated again"
    assert 16.9 < probe(cut).duration < 17.7


@pytest.mark.anyio
async def test_l2_an_archived_segment_result_survives_the_stitch(tmp_path: Path) -> None:
    """A long job's first segment is paid and downloaded, then the run stops (--max-credits).
    The user changes the video; the next run archives the paid segment record (`talk~1@<video
    id>`, as reconcile does for any paid record no job wants: "an archived result stays at its
    old name until a job needs that name, then goes to superseded/"). Its file is in
    `OUT/segments/talk/`, where `_movable` does not look, so it is never moved aside properly:
    the new segment's download pushes it into `segments/talk/superseded/`, the archived record
    still names `segments/talk/talk~1.mp4`, and once the job is stitched the whole segment
    folder is removed. Sin: losing a paid result (the archive record points at nothing)."""
    manifest = long_job(tmp_path)
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        await run_once(sim, manifest, out, max_credits=90)
        [paid] = [r for r in _records(out) if r.state.value == "done"]
        make_video(tmp_path / "media" / "talk.mp4", seconds=35, width=80, height=48, fps=FPS)
        second = await run_once(sim, manifest, out)
        assert second.exit_code == 0
    [archived] = [r for r in _records(out, archived=True) if r.video_id == paid.video_id]
    assert "@" in archived.id
    assert archived.output is not None
    assert Path(archived.output).is_file(), f"{archived.id}'s file {archived.output} is gone"
    assert Path(archived.output).stat().st_size == archived.bytes


@pytest.mark.anyio
async def test_l3_limits_that_give_the_same_cuts_pay_nothing_again(tmp_path: Path) -> None:
    """A 35 s long job is done (two segments, cut in the pause at 20.3 s). The user then adds
    `limits: {audio_max_seconds: 28}` to the manifest (or any `segment_min_seconds`): the
    planner cuts at exactly the same frame, the segments send exactly the same inputs, yet
    the plan's `basis` hashes the limits, every segment fingerprint changes, and both
    segments are generated and paid again (and the done result is set aside for a copy of
    itself). Sin: paying twice for one segment."""
    manifest = long_job(tmp_path)
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        assert (await run_once(sim, manifest, out)).exit_code == 0
        assert len(sim.ledger.generations) == 2
        text = manifest.read_text().replace("jobs:", "limits: {audio_max_seconds: 28}\njobs:")
        manifest.write_text(text)
        plan = preflight(load_manifest(manifest)).long["talk"]
        assert len(plan.cuts) == 2
        assert 20.0 < plan.cuts[1] / FPS < 20.6  # the same cut as before
        assert (await run_once(sim, manifest, out)).exit_code == 0
        assert len(sim.ledger.generations) == 2, "the same segments were paid again"


@pytest.mark.anyio
async def test_l4_a_dub_changed_in_its_last_segment_pays_only_that_segment(
    tmp_path: Path,
) -> None:
    """A 35 s long job is done. The user re-records only the end of the dub (a pause added at
    27 s, inside the second segment). The planner cuts at the same frame, and the first
    segment's cut files are byte for byte the ones already paid for (the simulator's ledger
    counts generations per input content), but each segment's fingerprint is the parent's
    whole-file hashes plus its range, so the unchanged first segment is generated and paid
    again. The issue asks for "the same exactly-once rules" as any job, and an ordinary job
    with the same input content never pays twice. Sin: paying twice for one segment."""
    manifest = long_job(tmp_path)
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        assert (await run_once(sim, manifest, out)).exit_code == 0
        make_audio(tmp_path / "media" / "talk.mp3", seconds=35, pauses=((20.0, 20.6), (27, 27.5)))
        assert (await run_once(sim, manifest, out)).exit_code == 0
        generations = len(sim.ledger.generations)
        paid = paid_per_inputs(sim)
    assert paid == [1, 1, 1], "byte-identical segment inputs were generated twice"
    assert generations == 3


@pytest.mark.anyio
async def test_l5_failed_yaml_of_a_long_job_does_not_pay_its_done_segments_again(
    tmp_path: Path,
) -> None:
    """A long job's second segment is refused by input moderation (500054); its first is paid
    and done. The run writes failed.yaml with the long job, to be run "as is" into `retry/`
    (its own state file). Once the cause is gone (here: the moderation knob off, standing for
    the user's fix), running failed.yaml cuts the job again into a fresh state file and pays
    for *every* segment, the done one included: a failed ordinary job has nothing paid, but a
    failed long job does. Sin: paying twice for one segment."""
    manifest = long_job(tmp_path)
    out = tmp_path / "out"
    config = fast_sim(moderated_filenames=frozenset({"cut-2.mp4"}))
    async with serve(config) as sim:
        first = await run_once(sim, manifest, out)
        assert first.exit_code == 1
        assert len(sim.ledger.generations) == 1  # segment 1 paid and done
        failed = out / "failed.yaml"
        assert "talk" in failed.read_text()
        config.moderated_filenames = frozenset()
        retry = await run_once(sim, failed, out / "retry")
        assert retry.exit_code == 0
        generations = len(sim.ledger.generations)
    assert generations == 2, "segment 1, done before, was generated and paid again"


@pytest.mark.anyio
async def test_l6_a_suspect_segment_makes_its_long_job_suspect(tmp_path: Path) -> None:
    """The first generation of a long job comes back flawed (the simulator's `short_results`:
    one frame, no sound). The download probe marks that segment's record suspect, as for any
    job, but the stitcher fills the missing frames by holding the one it has, the parent is
    reported `done` and the run exits 0: a 20 s frozen picture in the middle of the result,
    and the morning report says all is well, where an ordinary job with that result is
    `suspect` (exit 1). Promise broken: the report and exit code tell the truth."""
    manifest = long_job(tmp_path)
    out = tmp_path / "out"
    async with serve(fast_sim(short_results=1)) as sim:
        outcome = await run_once(sim, manifest, out, concurrency=1)
        assert len(sim.ledger.generations) == 2
    assert any(r.suspect for r in _records(out)), "a segment was marked suspect"
    [row] = outcome.rows
    assert (row.state, outcome.exit_code) == ("suspect", 1), (row.state, outcome.exit_code)


@pytest.mark.anyio
async def test_l7_the_forecast_of_a_renamed_long_job_is_what_the_run_pays(
    tmp_path: Path,
) -> None:
    """A long job is done; the user renames it (`talk` -> `talk-2`). The run takes every paid
    segment record over by fingerprint and pays nothing (right), but `preview._long_step`
    looks for segment records by the new id only, so `run --dry-run` says "long job: 2 of 2
    segments to submit (about 144 credits)" and `validate` counts them as credits left.
    Promise broken (issue 7, before spending): the forecast is what the run would do."""
    manifest = long_job(tmp_path)
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        assert (await run_once(sim, manifest, out)).exit_code == 0
        manifest.write_text(manifest.read_text().replace("id: talk", "id: talk-2"))
        checked = preflight(load_manifest(manifest))
        store = StateStore.read_only(out / STATE_NAME)
        try:
            steps = forecast(checked, store.jobs(archived=True), out, long=store.long_jobs())
        finally:
            store.close()
        assert (await run_once(sim, manifest, out)).exit_code == 0
        assert len(sim.ledger.generations) == 2  # the run paid nothing
    assert remaining_credits(steps) == {"talk-2": 0}, [s.detail for s in steps]


@pytest.mark.anyio
async def test_l8_report_advice_for_a_long_job_failed_for_good_is_true(tmp_path: Path) -> None:
    """A long job's second segment is refused by input moderation (500054): a failure the next
    run holds back (`reconcile.permanent_failure`). The parent's report row carries the text
    ("segment 2 (...) failed: ...") but none of the segment's facts (err_code, error_class:
    None), so report.html's advice, which reads them, says "the next run retries it: run the
    same command again"; the next run indeed sends nothing and the job stays failed, night
    after night. Promise broken (issue 10: each problem "with its one-line reason and what to
    do"; issue 7: report.json carries the ErrCode per job)."""
    manifest = long_job(tmp_path)
    out = tmp_path / "out"
    async with serve(fast_sim(moderated_filenames=frozenset({"cut-2.mp4"}))) as sim:
        assert (await run_once(sim, manifest, out)).exit_code == 1
        again = await run_once(sim, manifest, out)  # the advice followed
        assert again.exit_code == 1
        assert len(sim.ledger.generations) == 1  # nothing was retried: the segment is held
    [row] = json.loads((out / "report.json").read_text())["jobs"]
    assert row["state"] == "failed"
    assert "500054" in row["error"]
    told = advice(row)
    assert "fails the same way" in told, told


@pytest.mark.anyio
async def test_l9_the_report_command_shows_a_long_job_as_the_run_did(tmp_path: Path) -> None:
    """A long job is done and stitched; the run's own report.html shows its card `done` with
    its segments. `pixverse-batch report OUT` (issue 10: the page again "at any time, offline,
    from the state file") builds its rows with `report.job_rows` over the manifest, which knows
    nothing of long jobs (`LongJobs.rows` is only applied by the runner): the parent has no
    record of its own, so its card says it was never started and the problems list tells the
    producer to run again a job that is finished. Promise broken: report truthfulness."""
    manifest = long_job(tmp_path)
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        assert (await run_once(sim, manifest, out)).exit_code == 0
    run_page = Page.parse((out / "report.html").read_text(encoding="utf-8"))
    assert run_page.card("talk").attrs["data-state"] == "done"
    rebuilt = Page.parse(rebuild_page(out).read_text(encoding="utf-8"))
    card = rebuilt.card("talk")
    assert card.attrs["data-state"] == "done", card.attrs


def _cli(*args: str) -> int:
    return main([*args])


def test_l10_one_bad_segment_can_be_redone_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first segment of a long job comes back as an mp4 whose pictures do not decode (the
    simulator's `garbled_results`): it is paid and kept (suspect), and stitching fails, in
    this run and every later one, since the result is what the API made. Issue 9: "resume,
    adopt and redo work on them [segments]". The runner redoes a segment given its id, but the
    CLI refuses `--redo talk~1` ("no job with id"), so the only way out is `--redo talk`,
    which pays for every segment again, the good ones too. Sin: paying twice for a segment."""
    manifest = long_job(tmp_path)
    out = tmp_path / "out"
    base = ["--out", str(out), "--poll-interval", "0.02", "--concurrency", "1"]
    with sim_in_thread(fast_sim(garbled_results=1)) as sim:
        monkeypatch.setenv("PIXVERSE_API_KEY", "sim-key")
        monkeypatch.setenv("PIXVERSE_BASE_URL", sim.url)
        assert _cli("run", str(manifest), *base) == 1  # cannot stitch a garbled segment
        assert _cli("run", str(manifest), *base) == 1  # nor on the next night
        assert len(sim.ledger.generations) == 2
        code = _cli("run", str(manifest), *base, "--redo", "talk~1")
        generations = len(sim.ledger.generations)
    assert (code, generations) == (0, 3), "redoing the bad segment alone"


def test_l11_status_exits_as_the_run_did_for_a_long_job_that_cannot_be_stitched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long job whose stitching fails (here a garbled segment result, paid and kept) is
    `failed` in the run's report and the run exits 1. `status` promises to exit "like `run`
    would have" (issue 7: 1 when a job failed, 75 when some are unfinished), but
    `longform.status_rows` only knows segment states: every segment is done, so it says
    `unfinished:stitching` and exits 75, which tells cron "run again, it resumes"; it does
    not. Promise broken: status exit codes."""
    manifest = long_job(tmp_path)
    out = tmp_path / "out"
    base = ["--out", str(out), "--poll-interval", "0.02", "--concurrency", "1"]
    with sim_in_thread(fast_sim(garbled_results=1)) as sim:
        monkeypatch.setenv("PIXVERSE_API_KEY", "sim-key")
        monkeypatch.setenv("PIXVERSE_BASE_URL", sim.url)
        assert _cli("run", str(manifest), *base) == 1
    assert _cli("status", "--out", str(out)) == 1


@pytest.mark.anyio
async def test_l12_credits_in_total_count_every_run(tmp_path: Path) -> None:
    """A job is done (one generation paid), then run again with `--redo` (a second paid). The
    state file's own total (`StateStore.total_credits`: "what all runs have cost") is the sum
    of both, as is the simulator's charge; report.json's `credits_total`, documented in
    docs/nightly.md as "what the manifest's jobs have cost over all runs" and shown on
    report.html as "credits in total (all runs)", sums only the current records and says one
    generation's price: the archived paid record is left out. Promise broken: the morning
    report's spend is true."""
    manifest = project(
        tmp_path,
        "version: 1\njobs:\n  - {id: j, video: media/intro.mp4, audio: media/intro_es.mp3}\n",
    )
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        assert (await run_once(sim, manifest, out)).exit_code == 0
        assert (await run_once(sim, manifest, out, redo=frozenset({"j"}))).exit_code == 0
        charged = sim.ledger.credits_net
        assert len(sim.ledger.generations) == 2
    store = StateStore.read_only(out / STATE_NAME)
    try:
        recorded = store.total_credits()
    finally:
        store.close()
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert recorded == charged
    assert report["credits_total"] == recorded, (report["credits_total"], recorded)


@pytest.mark.anyio
async def test_l13_ordinary_work_is_not_held_back_while_long_jobs_are_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest with an ordinary job and a long one. `LongJobs.expand` cuts every long job
    (H.264 re-encoding at CRF 18, in one worker thread, one job after another) before
    reconcile and before the first submission, so every slot of the account sits idle for
    the whole cutting, minutes for a few minutes of HD video per long job, while an ordinary
    job could be generating. Here the cut waits (up to 5 s) for the ordinary job's generation
    to start; it never does. Sin: a slot idle while work waits."""
    manifest = long_job(tmp_path)
    text = (
        manifest.read_text()
        + "  - {id: short, video: media/intro.mp4, audio: media/intro_es.mp3}\n"
    )
    manifest.write_text(text)
    out = tmp_path / "out"
    seen: list[bool] = []
    real = getattr(longrun, "cut_segments")  # noqa: B009 (imported there, patched there)

    async with serve(fast_sim()) as sim:

        def slow_cut(*args: object, **kwargs: object) -> object:
            deadline = time.monotonic() + 5.0
            while not sim.ledger.generations and time.monotonic() < deadline:
                time.sleep(0.05)  # stands for a long encode
            seen.append(bool(sim.ledger.generations))
            return real(*args, **kwargs)

        monkeypatch.setattr(longrun, "cut_segments", slow_cut)
        assert (await run_once(sim, manifest, out)).exit_code == 0
    assert seen == [True], "nothing was generating while the long job was cut"


@pytest.mark.anyio
async def test_l14_a_long_job_that_cannot_be_cut_is_in_failed_yaml(tmp_path: Path) -> None:
    """A long job's video probes (preflight passes) but its pictures do not decode, so its
    segments cannot be cut: the run reports the job `failed` ("cannot cut its segments") and
    exits 1. failed.yaml, "the jobs that failed this run as a manifest" (issue 7), is built
    from segment failures only (`LongJobs.failed_since`), so it is not written at all and
    report.json says `failed_manifest: null`. Promise broken: failed.yaml lists this run's
    failures."""

    manifest = long_job(tmp_path)
    video = tmp_path / "media" / "talk.mp4"
    video.write_bytes(spoil(video.read_bytes(), "garbled"))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        outcome = await run_once(sim, manifest, out)
        assert not sim.ledger.generations
    [row] = outcome.rows
    assert (row.state, outcome.exit_code) == ("failed", 1)
    assert "cannot cut" in str(row.error)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["failed_manifest"] is not None
    assert "talk" in (out / "failed.yaml").read_text(encoding="utf-8")


class _Crash(BaseException):
    """Stands for a power cut: no `except Exception` catches it."""


@pytest.mark.anyio
async def test_l15_done_segments_are_stitched_whatever_else_went_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run dies after every segment of a long job is downloaded, before stitching. The next
    run (the manifest gained a TTS job, and the speaker list cannot be read tonight: a
    transient problem that holds back only the TTS job) has nothing to send for the long job;
    its stitch is left to `settle_all`, which runs only `if self.problem is None`. So the
    paid, downloaded segments are not stitched, the long job stays `unfinished:stitching`
    and the morning has no result, for a problem that has nothing to do with it. Promise
    broken: a paid result is delivered as soon as it can be (it is only local work)."""
    manifest = long_job(tmp_path)
    out = tmp_path / "out"
    config = fast_sim()
    async with serve(config) as sim:
        with monkeypatch.context() as patch:

            def crash(*args: object, **kwargs: object) -> str:
                raise _Crash

            patch.setattr(longrun, "stitch", crash)
            with pytest.raises(BaseException):  # noqa: B017, PT011 (a group holding _Crash)
                await run_once(sim, manifest, out)
        assert len(sim.ledger.generations) == 2
        tts = "  - {id: hello, video: media/intro.mp4, tts: {text: hello, speaker: '1'}}\n"
        manifest.write_text(manifest.read_text() + tts)
        config.speaker_paths = frozenset()  # neither speaker path answers tonight
        outcome = await run_once(sim, manifest, out)
    states = {row.id: row.state for row in outcome.rows}
    assert states["talk"] == "done", states


@pytest.mark.anyio
async def test_l16_only_leaves_a_long_jobs_segment_records_alone(tmp_path: Path) -> None:
    """A long job is done; then `run --only short` runs the manifest's other job. Records of
    jobs left out by `--only` must be "left exactly as they are" (`reconcile`), and
    `LongJobs.expand` adds the segments of parents not run to `untouched`, but only when the
    run has a long job of its own (`if not self.checked.long: return self.checked`). Here
    it has none, so reconcile finds `talk~1` and `talk~2`, paid records no job of the run
    wants, and archives them. That run's report calls the finished long job
    `unfinished:pending`, and every later report gives it 0 credits (its spend vanishes from
    "credits in total"). Promise broken: --only leaves other jobs' records alone; reports
    true."""
    manifest = long_job(tmp_path)
    short = "  - {id: short, video: media/intro.mp4, audio: media/intro_es.mp3}\n"
    manifest.write_text(manifest.read_text() + short)
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        first = await run_once(sim, manifest, out, only=("talk",))
        assert first.exit_code == 0
        paid = {r.id: r.credits for r in _records(out)}
        assert set(paid) == {"talk~1", "talk~2"}
        second = await run_once(sim, manifest, out, only=("short",))
        assert second.exit_code == 0
        records = {r.id for r in _records(out)}
        third = await run_once(sim, manifest, out)
    assert set(paid) <= records, f"segment records archived by --only short: {records}"
    talk = next(r for r in third.rows if r.id == "talk")
    assert (talk.state, talk.credits) == ("done", sum(paid.values()))
