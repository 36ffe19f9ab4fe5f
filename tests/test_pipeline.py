"""End to end: the real runner and client against the real simulator over loopback."""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from pathlib import Path

import anyio
import av
import pytest

from pipeline.client import ClientConfig, PixverseClient
from pipeline.download import Link, download_result
from pipeline.jobstate import JobState
from pipeline.runner import ExitCode
from pipeline.simulator import serve
from pipeline.state import StateStore
from tests.harness import (
    EXAMPLE,
    FAST_RETRY,
    STATE_NAME,
    fast_sim,
    job_uploads,
    project,
    run_once,
    sha256,
    tts_manifest,
)

pytestmark = pytest.mark.anyio


def states(out: Path) -> dict[str, JobState]:
    store = StateStore.read_only(out / STATE_NAME)
    try:
        return {r.id: r.state for r in store.jobs()}
    finally:
        store.close()


async def test_mixed_manifest_downloads_every_result_byte_identical(tmp_path: Path) -> None:
    manifest = project(tmp_path)
    out = tmp_path / "out"
    async with serve(fast_sim(send_credits=True)) as sim:  # replies say what each one cost
        outcome = await run_once(sim, manifest, out)
    assert outcome.exit_code is ExitCode.OK
    ids = ["intro-es", "intro-de", "intro-fr", "remix-de", "promo-es", "promo-ja"]
    assert [r.id for r in outcome.rows] == ids
    assert all(r.state == "done" for r in outcome.rows)
    ledger = sim.ledger
    assert len(ledger.generations) == len(ids)
    assert ledger.duplicate_bodies() == []
    for row in outcome.rows:
        path = out / f"{row.id}.mp4"
        assert row.video_id is not None
        assert sha256(path) == ledger.served_downloads[row.video_id]
        assert row.bytes == path.stat().st_size
        with av.open(str(path)) as container:  # a real, playable mp4 with the dub's sound
            assert container.streams.video
            assert container.streams.audio
            width = container.streams.video[0].codec_context.width
        # the simulator keeps the uploaded clip's picture (160x90 samples; 64 px stand-in for
        # a source_video_id)
        assert width == (64 if row.id == "remix-de" else 160)
    # each body kind reached the API as the contract wants
    bodies = [g.body for g in ledger.generations.values()]
    assert sum("source_video_id" in b for b in bodies) == 1
    assert sum("lip_sync_tts_content" in b for b in bodies) == 2
    assert sum("audio_media_id" in b for b in bodies) == 4
    # the shared intro.mp4 went up once, as did every other distinct file
    names = sorted(u.filename for u in job_uploads(ledger))
    assert names == sorted(
        ["intro.mp4", "intro_es.mp3", "intro_de.wav", "remix_de.wav", "promo.mov", "promo_es.wav"]
    )
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["done"] == 6
    assert report["summary"]["credits"] == ledger.credits_net
    assert not any(job["credits_estimated"] for job in report["jobs"])
    with (out / "report.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == ids
    assert {r["state"] for r in rows} == {"done"}


@pytest.mark.parametrize("concurrency", [2, 5])
async def test_peak_concurrency_stays_within_the_limit_and_fills_it(
    tmp_path: Path, concurrency: int
) -> None:
    manifest = project(tmp_path, tts_manifest(12))
    # 0.3 s generations: ample time to fill every slot even on a loaded machine
    async with serve(fast_sim(concurrency_limit=10, generation_seconds=60.0)) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out", concurrency=concurrency)
    assert outcome.exit_code is ExitCode.OK
    assert sim.ledger.peak_concurrent <= concurrency
    assert sim.ledger.peak_concurrent == concurrency  # slots were kept busy
    assert all(r.err_code != 500044 for r in sim.ledger.requests)  # never over the limit


async def test_simulator_limit_below_concurrency_still_completes(tmp_path: Path) -> None:
    manifest = project(tmp_path, tts_manifest(10))
    async with serve(fast_sim(concurrency_limit=2)) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out", concurrency=5)
    assert outcome.exit_code is ExitCode.OK
    assert all(r.state == "done" for r in outcome.rows)
    assert sim.ledger.peak_concurrent <= 2
    assert outcome.slot_rejections >= 1  # it did hit 500044 ...
    rejected = [r for r in sim.ledger.requests if r.err_code == 500044]
    assert rejected
    # ... and learned: far fewer 500044 than submissions would cause without AIMD
    assert len(rejected) < 10
    assert sim.ledger.duplicate_bodies() == []
    assert len(sim.ledger.generations) == 10


async def test_interrupted_run_resumes_without_a_second_generation(tmp_path: Path) -> None:
    manifest = project(tmp_path, tts_manifest(8))
    out = tmp_path / "out"
    async with serve(fast_sim(generation_seconds=60.0)) as sim:
        with anyio.move_on_after(10) as scope:
            async with anyio.create_task_group() as tg:

                async def interrupt_after_three() -> None:
                    while len(sim.ledger.generations) < 3:  # noqa: ASYNC110 - polls the ledger
                        await anyio.sleep(0.005)
                    tg.cancel_scope.cancel()

                tg.start_soon(interrupt_after_three)
                await run_once(sim, manifest, out, concurrency=3)
        assert not scope.cancelled_caught
        mid = states(out)
        assert JobState.GENERATING in mid.values() or JobState.SUBMITTING in mid.values()
        assert JobState.DONE not in mid.values()
        outcome = await run_once(sim, manifest, out, concurrency=3)
    assert outcome.exit_code is ExitCode.OK
    assert len(sim.ledger.generations) == 8
    assert sim.ledger.duplicate_bodies() == []


async def test_no_poll_reuses_a_trace_id(tmp_path: Path) -> None:
    manifest = project(tmp_path, tts_manifest(4))
    async with serve(fast_sim(reply_cache=True)) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out")
    assert outcome.exit_code is ExitCode.OK
    polls = sim.ledger.requests_to("/openapi/v2/video/result")
    assert len(polls) >= 4
    # only the replay probe re-uses a trace id, on purpose, on the free upload endpoint
    assert sim.ledger.reused_trace_ids("/openapi/v2/video") == []
    assert not any(r.replayed for r in sim.ledger.requests if "/media/upload" not in r.path)


async def test_changed_input_redoes_only_that_job(tmp_path: Path) -> None:
    manifest = project(tmp_path)
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        await run_once(sim, manifest, out)
        before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
        assert len(sim.ledger.generations) == 6
        # new content for intro_de.wav (same name): only intro-de must be redone
        (tmp_path / "media" / "intro_de.wav").write_bytes(
            (tmp_path / "media" / "promo_es.wav").read_bytes()
        )
        outcome = await run_once(sim, manifest, out)
    assert outcome.exit_code is ExitCode.OK
    assert len(sim.ledger.generations) == 7
    newest = max(sim.ledger.generations.values(), key=lambda g: g.created_at)
    assert outcome.rows[1].id == "intro-de"
    assert outcome.rows[1].video_id == newest.video_id
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    changed = sorted(name for name in after if after[name] != before[name])
    assert changed == ["intro-de.mp4"]


async def test_finished_jobs_are_skipped_and_a_missing_file_is_downloaded_again(
    tmp_path: Path,
) -> None:
    manifest = project(tmp_path, tts_manifest(3))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        await run_once(sim, manifest, out)
        requests_before = len(sim.ledger.requests)
        again = await run_once(sim, manifest, out)
        assert again.exit_code is ExitCode.OK
        assert len(sim.ledger.requests) == requests_before  # nothing left to do: nothing sent
        (out / "job-1.mp4").unlink()
        third = await run_once(sim, manifest, out)
    assert third.exit_code is ExitCode.OK
    assert (out / "job-1.mp4").exists()
    assert len(sim.ledger.generations) == 3  # fetched again, never regenerated


async def test_ambiguous_submission_is_resent_with_the_same_trace_id(tmp_path: Path) -> None:
    manifest = project(tmp_path, tts_manifest(1))
    async with serve(fast_sim(drop_generate_replies=1)) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out")
    assert outcome.exit_code is ExitCode.OK
    sends = sim.ledger.requests_to("/openapi/v2/video/lip_sync/generate")
    assert len(sends) == 2
    assert sends[0].trace_id == sends[1].trace_id
    assert len(sim.ledger.generations) == 1  # the replayed reply, not a second charge
    assert outcome.rows[0].ambiguous_submissions == 1


async def test_trace_id_is_durable_before_the_request_leaves(tmp_path: Path) -> None:
    """Crash between send and reply: the saved trace id is what the server saw."""
    manifest = project(tmp_path, tts_manifest(1))
    out = tmp_path / "out"
    async with serve(fast_sim(drop_generate_replies=100)) as sim:
        outcome = await run_once(sim, manifest, out, request_timeout=0.5)
        assert outcome.exit_code is ExitCode.UNFINISHED  # every reply lost: resumable
        store = StateStore.read_only(out / STATE_NAME)
        record = store.job("job-0")
        store.close()
        assert record.state is JobState.SUBMITTING
        sent = {r.trace_id for r in sim.ledger.requests_to("/openapi/v2/video/lip_sync/generate")}
        assert sent == {record.trace_id}
        sim.config.drop_generate_replies = 0
        resumed = await run_once(sim, manifest, out)
    assert resumed.exit_code is ExitCode.OK
    assert len(sim.ledger.generations) == 1


async def test_out_of_credits_stops_submitting_then_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = project(tmp_path, tts_manifest(6))
    out = tmp_path / "out"
    async with serve(fast_sim(credit_monthly=12, concurrency_limit=10)) as sim:
        outcome = await run_once(sim, manifest, out, concurrency=2)
        assert outcome.exit_code is ExitCode.ACCOUNT
        assert outcome.problem is not None
        assert "insufficient credits" in outcome.problem
        done = [r for r in outcome.rows if r.state == "done"]
        assert 1 <= len(done) < 6  # in-flight jobs finished; their results are kept
        assert "need about 24 credits; the account has 12" in caplog.text  # warned up front
        waiting = [r for r in outcome.rows if r.state == "unfinished:pending"]
        assert waiting
        assert all(r.error is not None and "insufficient credits" in r.error for r in waiting)
        refused = [r for r in sim.ledger.requests if r.err_code == 500090]
        assert len(refused) <= 2  # submitting stopped at the first refusals (2 slots)
        assert all((out / f"{r.id}.mp4").exists() for r in done)
        sim.config.credit_monthly += 1000  # more credits, same account
        resumed = await run_once(sim, manifest, out, concurrency=2)
    assert resumed.exit_code is ExitCode.OK
    assert len(sim.ledger.generations) == 6
    assert sim.ledger.duplicate_bodies() == []


async def test_bad_key_stops_at_once_with_exit_4(tmp_path: Path) -> None:
    manifest = project(tmp_path, tts_manifest(3))
    async with serve(fast_sim()) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out", api_key="wrong-key")
    assert outcome.exit_code is ExitCode.ACCOUNT
    assert sim.ledger.generations == {}
    assert len(sim.ledger.requests) == 1  # the speaker check was refused; nothing followed


async def test_no_permission_stops_the_run(tmp_path: Path) -> None:
    manifest = project(tmp_path, tts_manifest(3))
    config = fast_sim(
        api_keys=frozenset({"sim-key", "viewer"}), no_permission_keys=frozenset({"viewer"})
    )
    async with serve(config) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out", api_key="viewer")
    assert outcome.exit_code is ExitCode.ACCOUNT
    assert sim.ledger.generations == {}
    assert outcome.problem is not None


async def test_status_8_is_resubmitted_up_to_max_attempts(tmp_path: Path) -> None:
    manifest = project(tmp_path, tts_manifest(2))
    async with serve(fast_sim(fail_probability=1.0)) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out", max_attempts=3)
    assert outcome.exit_code is ExitCode.JOBS_FAILED
    assert len(sim.ledger.generations) == 6  # 2 jobs x 3 attempts
    for row in outcome.rows:
        assert row.state == "failed"
        assert row.attempts == 3
        assert row.error is not None
        assert "status 8" in row.error
        assert row.credits == 0  # every failed attempt was refunded


async def test_status_7_and_rejections_fail_only_their_job(tmp_path: Path) -> None:
    manifest = project(
        tmp_path,
        """
version: 1
jobs:
  - {id: ok, video: media/intro.mp4, audio: media/intro_es.mp3}
  - {id: banned, video: media/intro.mp4, tts: {text: "a forbidden script", speaker: "1"}}
""",
    )
    async with serve(fast_sim()) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out")
    assert outcome.exit_code is ExitCode.JOBS_FAILED
    by_id = {r.id: r for r in outcome.rows}
    assert by_id["ok"].state == "done"
    assert by_id["banned"].state == "failed"
    assert by_id["banned"].error is not None
    assert by_id["banned"].error.startswith("400017")
    async with serve(fast_sim(moderation_probability=1.0)) as sim:
        moderated = await run_once(sim, manifest, tmp_path / "out2")
    ok = {r.id: r for r in moderated.rows}["ok"]
    assert ok.state == "failed"
    assert ok.error is not None
    assert "status 7" in ok.error
    assert len([g for g in sim.ledger.generations.values() if g.body.get("audio_media_id")]) == 1


async def test_unknown_speaker_holds_back_only_its_job(tmp_path: Path) -> None:
    """Issue 5, 2.7: one unknown speaker used to stop the whole run, paid work included."""
    manifest = project(
        tmp_path,
        "version: 1\njobs:\n"
        "  - {id: a, video: media/intro.mp4, tts: {text: hi, speaker: '99'}}\n"
        "  - {id: b, video: media/intro.mp4, tts: {text: hello, speaker: '7'}}\n",
    )
    async with serve(fast_sim()) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out")
    rows = {r.id: r for r in outcome.rows}
    assert rows["a"].state == "failed"
    assert rows["a"].error is not None
    assert "job 'a' field 'tts.speaker': unknown speaker '99'" in rows["a"].error
    assert rows["b"].state == "done"
    assert outcome.exit_code is ExitCode.JOBS_FAILED
    bodies = [g.body for g in sim.ledger.generations.values()]
    assert [b["lip_sync_tts_speaker_id"] for b in bodies] == ["7"]


async def test_transient_faults_are_retried_and_downloads_recovered(tmp_path: Path) -> None:
    manifest = project(tmp_path, tts_manifest(3))
    # one of each fault in a row: the first call needs four tries (FAST_RETRY allows four)
    config = fast_sim(transient_errors=1, html_errors=1, rate_limit_errors=1, truncate_downloads=2)
    async with serve(config) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out")
    assert outcome.exit_code is ExitCode.OK
    faults = {r.fault for r in sim.ledger.requests if r.fault}
    assert {"transient", "html", "rate_limit", "truncate"} <= faults
    assert len(sim.ledger.generations) == 3
    for row in outcome.rows:
        assert row.video_id is not None
        assert (
            sha256(tmp_path / "out" / f"{row.id}.mp4") == sim.ledger.served_downloads[row.video_id]
        )


async def test_expired_link_gets_a_fresh_one_without_regenerating(tmp_path: Path) -> None:
    # links live 60 simulated seconds = 0.3 s real: ample for a fetch on a loaded machine
    async with serve(fast_sim(link_ttl_seconds=60.0)) as sim:
        manifest = project(tmp_path, tts_manifest(1))
        await run_once(sim, manifest, tmp_path / "out")
        video_id = next(iter(sim.ledger.generations))
        config = ClientConfig(base_url=sim.url, api_key="sim-key", retry=FAST_RETRY)
        async with PixverseClient(config) as client:
            status = await client.status(video_id)
            await anyio.sleep(0.5)  # the link from that poll has expired
            dest = tmp_path / "again.mp4"
            fetched = await download_result(client, video_id, dest, Link(status.url, status.size))
    downloads = [r for r in sim.ledger.requests if not r.path.startswith("/openapi")]
    assert downloads[-2].http_status == 403
    assert downloads[-1].http_status == 200
    assert fetched.size == dest.stat().st_size
    assert sha256(dest) == sim.ledger.served_downloads[video_id]
    assert len(sim.ledger.generations) == 1


async def test_stale_media_id_is_uploaded_again_once(tmp_path: Path) -> None:
    manifest = project(tmp_path, tts_manifest(1))
    out = tmp_path / "out"
    async with serve(fast_sim()) as first:
        await run_once(first, manifest, out)
        port = first.url.rsplit(":", 1)[1]
    # a new server process on the same address knows none of the old media ids
    manifest.write_text(tts_manifest(1).replace("line 0", "changed line"), encoding="utf-8")
    async with serve(fast_sim(), port=int(port)) as second:
        outcome = await run_once(second, manifest, out)
    assert outcome.exit_code is ExitCode.OK
    stale = [r for r in second.ledger.requests if r.err_code == 400017]
    assert len(stale) == 1
    assert [u.filename for u in job_uploads(second.ledger)] == ["intro.mp4"]


async def test_state_records_every_transition(tmp_path: Path) -> None:
    manifest = project(tmp_path, tts_manifest(1))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        await run_once(sim, manifest, out)
    conn = sqlite3.connect(out / STATE_NAME)
    rows = conn.execute(
        "SELECT from_state, to_state FROM events WHERE job_id='job-0' ORDER BY seq"
    ).fetchall()
    conn.close()
    moves = [to for before, to in rows if before != to]
    assert moves == ["pending", "submitting", "generating", "downloading", "done"]
    # the send itself is recorded (send time, deadline) before the request leaves
    assert [to for before, to in rows if before == to] == ["submitting"]


async def test_a_free_slot_never_waits_for_a_download(tmp_path: Path) -> None:
    manifest = project(tmp_path, tts_manifest(3))
    # every transfer takes 0.5 s, a generation 0.1 s; one slot
    config = fast_sim(transfer_seconds=100.0, generation_seconds=20.0)
    async with serve(config) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out", concurrency=1)
    assert outcome.exit_code is ExitCode.OK
    first, second, _ = sorted(sim.ledger.generations.values(), key=lambda g: g.created_at)
    first_download = next(
        t for t in sim.ledger.transfers if t.kind == "download" and t.name == str(first.video_id)
    )
    # the second job was submitted while the first one's result was still downloading
    assert second.created_at < first_download.finished


async def test_uploads_run_a_bounded_distance_ahead_of_submissions(tmp_path: Path) -> None:
    manifest = project(
        tmp_path,
        """
version: 1
jobs:
  - {id: a, video_id: 391504857968062, audio: media/intro_es.mp3}
  - {id: b, video_id: 391504857968062, audio: media/intro_de.wav}
  - {id: c, video_id: 391504857968062, audio: media/promo_es.wav}
""",
    )
    config = fast_sim(transfer_seconds=20.0, generation_seconds=100.0)  # 0.1 s vs 0.5 s
    async with serve(config) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out", concurrency=1, upload_ahead=1)
    assert outcome.exit_code is ExitCode.OK
    audio = {"a": "intro_es.mp3", "b": "intro_de.wav", "c": "promo_es.wav"}
    created = {r.id: sim.ledger.generations[r.video_id].created_at for r in outcome.rows}  # type: ignore[index]
    order = sorted(created, key=created.__getitem__)  # a and b race for the one slot
    first_ends = created[order[0]] + config.real_seconds(config.generation_seconds)
    uploads = {t.name: t for t in sim.ledger.transfers if t.kind == "upload"}
    # the runner-up's audio went up while the first generated: no slot waited for it ...
    assert uploads[audio[order[1]]].finished < first_ends
    # ... but c, two jobs ahead of the only slot, waited its turn (upload_ahead=1)
    assert order[2] == "c"
    assert uploads[audio["c"]].started >= first_ends


async def test_media_ids_are_reused_on_later_runs(tmp_path: Path) -> None:
    manifest = project(tmp_path, tts_manifest(2))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        await run_once(sim, manifest, out)
        assert len(job_uploads(sim.ledger)) == 1
        manifest.write_text(tts_manifest(2).replace("line 1", "a new line"), encoding="utf-8")
        outcome = await run_once(sim, manifest, out)
    assert outcome.exit_code is ExitCode.OK
    assert len(job_uploads(sim.ledger)) == 1  # the redo used the saved media_id
    assert len(sim.ledger.generations) == 3


async def test_a_gateway_without_dedup_parks_a_lost_reply_and_pays_once(tmp_path: Path) -> None:
    """The contract's named alternative: no reply cache. The probe finds it out; a lost reply
    is then parked as unconfirmed (re-sending would be a second paid request), kept parked by
    later runs, and only `--redo` submits the job again."""
    manifest = project(
        tmp_path,
        "version: 1\njobs:\n"
        "  - {id: a, video: media/intro.mp4, tts: {text: hi, speaker: auto}}\n"
        "  - {id: b, video: media/intro.mp4, tts: {text: ho, speaker: auto}}\n",
    )
    out = tmp_path / "out"
    async with serve(fast_sim(reply_cache=False, drop_generate_replies=1)) as sim:
        outcome = await run_once(sim, manifest, out, concurrency=1)
        assert outcome.exit_code is ExitCode.UNFINISHED
        rows = {r.id: r for r in outcome.rows}
        assert rows["a"].state == "unfinished:unconfirmed"
        assert rows["a"].ambiguous_submissions == 1
        assert rows["a"].error is not None
        assert "--redo a" in rows["a"].error
        assert rows["b"].state == "done"
        assert len(sim.ledger.generations) == 2  # each job paid once, the lost one included
        again = await run_once(sim, manifest, out)
        assert again.exit_code is ExitCode.UNFINISHED
        assert len(sim.ledger.generations) == 2  # still parked: nothing re-sent
        redone = await run_once(sim, manifest, out, redo=frozenset({"a"}))
    assert redone.exit_code is ExitCode.OK
    assert len(sim.ledger.generations) == 3  # the user chose to pay again
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["done"] == 2


async def test_one_poller_never_sleeps_past_the_poll_interval(tmp_path: Path) -> None:
    from pipeline.client import ClientConfig, PixverseClient
    from pipeline.manifest import load_manifest
    from pipeline.preflight import preflight
    from pipeline.runner import RunOptions, run_batch

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await anyio.sleep(seconds)

    manifest = project(tmp_path, tts_manifest(3))
    async with serve(fast_sim(generation_seconds=60.0)) as sim:
        store = StateStore.open(tmp_path / "out" / STATE_NAME)
        config = ClientConfig(base_url=sim.url, api_key="sim-key", retry=FAST_RETRY)
        async with PixverseClient(config) as client:
            options = RunOptions(output_dir=tmp_path / "out", poll_interval=0.05)
            outcome = await run_batch(
                preflight(load_manifest(manifest)), store, client, options, sleep=sleep
            )
        store.close()
    assert outcome.exit_code is ExitCode.OK
    polls = [s for s in slept if s < 1]  # the rest is the 30 s progress-line timer
    assert len(polls) >= 6
    # too few generations seen to learn from: every job is polled on the plain beat
    assert all(0 <= s <= 0.05 for s in polls)
    assert len(sim.ledger.requests_to("/openapi/v2/video/result/")) >= 6


async def test_a_generation_past_the_slot_time_frees_its_slot(tmp_path: Path) -> None:
    """PixVerse FAQ: a generation running past 10 minutes no longer holds a slot. Scaled down:
    slots are freed after 20 simulated seconds, generations take 100."""
    manifest = project(tmp_path, tts_manifest(2))
    config = fast_sim(generation_seconds=100.0, slot_seconds=20.0, concurrency_limit=1)
    async with serve(config) as sim:
        outcome = await run_once(
            sim, manifest, tmp_path / "out", concurrency=1, slot_release_after=0.15
        )
    assert outcome.exit_code is ExitCode.OK
    first, second = sorted(sim.ledger.generations.values(), key=lambda g: g.created_at)
    assert second.created_at < first.created_at + first.seconds  # they overlapped
    assert not [r for r in sim.ledger.requests if r.err_code == 500044]


async def test_downloads_and_uploads_keep_to_their_own_limits(tmp_path: Path) -> None:
    manifest = project(tmp_path, EXAMPLE)
    config = fast_sim(transfer_seconds=10.0)  # 50 ms per transfer
    async with serve(config) as sim:
        outcome = await run_once(
            sim, manifest, tmp_path / "out", upload_concurrency=2, download_concurrency=1
        )
    assert outcome.exit_code is ExitCode.OK

    def most_at_once(kind: str) -> int:
        events = sorted(
            [(t.started, 1) for t in sim.ledger.transfers if t.kind == kind]
            + [(t.finished, -1) for t in sim.ledger.transfers if t.kind == kind]
        )
        running = peak = 0
        for _, step in events:
            running += step
            peak = max(peak, running)
        return peak

    assert most_at_once("download") == 1
    assert most_at_once("upload") == 2


async def test_progress_lines_are_logged_for_unattended_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="pipeline")
    manifest = project(tmp_path, tts_manifest(3))
    async with serve(fast_sim(generation_seconds=60.0)) as sim:
        await run_once(sim, manifest, tmp_path / "out", progress_every=0.05)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    assert lines
    assert all(re.match(r"progress: [0-3]/3 done, \d+ failed", line) for line in lines)


async def test_a_live_progress_bar_for_a_terminal(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from pipeline.client import ClientConfig, PixverseClient
    from pipeline.manifest import load_manifest
    from pipeline.preflight import preflight
    from pipeline.progress import LiveProgress
    from pipeline.runner import RunOptions, run_batch

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system=None)
    manifest = project(tmp_path, tts_manifest(2))
    async with serve(fast_sim()) as sim:
        store = StateStore.open(tmp_path / "out" / STATE_NAME)
        config = ClientConfig(base_url=sim.url, api_key="sim-key", retry=FAST_RETRY)
        async with PixverseClient(config) as client:
            outcome = await run_batch(
                preflight(load_manifest(manifest)),
                store,
                client,
                RunOptions(output_dir=tmp_path / "out", poll_interval=0.02),
                progress=LiveProgress(console, interval=0.02),
            )
        store.close()
    assert outcome.exit_code is ExitCode.OK
    shown = screen.getvalue()
    assert "lip sync" in shown
    assert "2/2 done, ETA" in shown
    assert "0 failed, 0 generating, 0 downloading, 0 pending; slots 0/5" in shown


async def test_chaos_keeps_every_invariant(tmp_path: Path) -> None:
    """Everything at once, seeded: a smaller account than --concurrency, failures, moderation,
    lost replies, proxy errors, torn downloads, varied generation times. Whatever happens, no
    job is paid for more often than it was tried, every result is the served bytes, and the
    report's credits are the account's."""
    manifest = project(tmp_path, tts_manifest(30))
    out = tmp_path / "out"
    config = fast_sim(
        concurrency_limit=3,
        fail_probability=0.2,
        moderation_probability=0.05,
        generation_jitter=0.5,
        drop_generate_replies=3,
        transient_errors=1,  # these hit the first calls; FAST_RETRY gives each call 4 tries
        html_errors=1,
        rate_limit_errors=1,
        truncate_downloads=3,
        seed=11,
        send_credits=True,  # the report's credits are then the account's, not estimates
    )
    async with serve(config) as sim:
        outcome = await run_once(sim, manifest, out, concurrency=5, max_attempts=3)
        sim.settle()
    assert outcome.exit_code in (ExitCode.OK, ExitCode.JOBS_FAILED)
    assert {r.state for r in outcome.rows} <= {"done", "failed"}
    assert sim.ledger.peak_concurrent <= 3
    per_body = sim.ledger.generations_per_body()
    for row in outcome.rows:
        body = next(
            b for b in per_body if json.loads(b)["lip_sync_tts_content"] == f"line {row.id[4:]}"
        )
        assert per_body[body] == row.attempts  # one paid generation per recorded attempt
        if row.state == "done":
            assert row.video_id is not None
            assert sha256(out / f"{row.id}.mp4") == sim.ledger.served_downloads[row.video_id]
    assert sum(r.credits for r in outcome.rows) == sim.ledger.credits_net
    assert not any(r.credits_estimated for r in outcome.rows)
    # and the chaos did happen
    faults = {r.fault for r in sim.ledger.requests if r.fault}
    assert {"drop", "truncate", "transient", "html", "rate_limit"} <= faults
    assert any(r.err_code == 500044 for r in sim.ledger.requests)
    assert any(r.attempts > 1 for r in outcome.rows)
    assert any(r.ambiguous_submissions for r in outcome.rows)


async def test_renaming_a_file_or_adding_an_id_never_pays_again(tmp_path: Path) -> None:
    """Derived ids come from file names: after a rename the same inputs arrive under a new id
    and must take over what was paid for under the old one."""
    manifest = project(
        tmp_path, "version: 1\njobs:\n  - {video: media/intro.mp4, audio: media/intro_es.mp3}\n"
    )
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        first = await run_once(sim, manifest, out)
        assert [r.id for r in first.rows] == ["intro-intro_es"]
        (tmp_path / "media" / "intro_es.mp3").rename(tmp_path / "media" / "spanish.mp3")
        manifest.write_text(
            "version: 1\njobs:\n  - {video: media/intro.mp4, audio: media/spanish.mp3}\n"
        )
        renamed = await run_once(sim, manifest, out)
        manifest.write_text(
            "version: 1\njobs:\n  - {id: es, video: media/intro.mp4, audio: media/spanish.mp3}\n"
        )
        explicit = await run_once(sim, manifest, out)
    assert len(sim.ledger.generations) == 1  # paid once, across three names
    assert [r.id for r in renamed.rows] == ["intro-spanish"]
    assert [r.id for r in explicit.rows] == ["es"]
    assert explicit.exit_code is ExitCode.OK
    assert explicit.rows[0].video_id == first.rows[0].video_id
    assert sorted(p.name for p in out.glob("*.mp4")) == ["es.mp4"]  # the file moved along


async def test_an_input_refused_by_moderation_fails_only_its_job(tmp_path: Path) -> None:
    manifest = project(tmp_path)
    config = fast_sim(moderated_filenames=frozenset({"promo.mov"}), send_credits=True)
    async with serve(config) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out")
    assert outcome.exit_code is ExitCode.JOBS_FAILED
    failed = {r.id: r.error for r in outcome.rows if r.state == "failed"}
    assert set(failed) == {"promo-es", "promo-ja"}
    assert all(e is not None and e.startswith("500054") for e in failed.values())
    assert sum(r.state == "done" for r in outcome.rows) == 4
    assert sim.ledger.credits_net == sum(r.credits for r in outcome.rows)
