"""The three sins under a misbehaving network: never pay twice, never drop a paid result,
never hang. Each test puts a real proxy (tests/gateway_proxy.py) or a crashed state file
between the real client and the real simulator."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from aiohttp import web

from pipeline.jobstate import JobState
from pipeline.manifest import load_manifest
from pipeline.plan import fingerprint
from pipeline.preflight import preflight
from pipeline.runner import ExitCode
from pipeline.simulator import serve
from pipeline.state import StateStore
from tests.gateway_proxy import Call, Forward, envelope, gateway_proxy, status_of
from tests.harness import STATE_NAME, fast_sim, project, run_once, tts_manifest

pytestmark = pytest.mark.anyio

GENERATE = "/openapi/v2/video/lip_sync/generate"


def state_of(out: Path, job_id: str) -> JobState:
    store = StateStore.read_only(out / STATE_NAME)
    try:
        return store.job(job_id).state
    finally:
        store.close()


async def test_a_proxy_timeout_after_acceptance_is_resent_not_repaid(tmp_path: Path) -> None:
    """A 504 with a JSON body that is not PixVerse's envelope: the API may have accepted it."""

    async def hook(call: Call, forward: Forward) -> web.Response:
        reply = await forward()
        if call.path == GENERATE and call.number == 1:
            return web.json_response({"message": "Endpoint request timed out"}, status=504)
        return reply

    manifest = project(tmp_path, tts_manifest(1))
    async with serve(fast_sim()) as sim, gateway_proxy(sim.url, hook) as proxy:
        outcome = await run_once(sim, manifest, tmp_path / "out", base_url=proxy.url)
    assert outcome.exit_code is ExitCode.OK
    sends = [c.trace_id for c in proxy.seen if c.path == GENERATE]
    assert len(sends) == 2
    assert sends[0] == sends[1]  # re-sent with the same trace id ...
    assert len(sim.ledger.generations) == 1  # ... so the gateway replayed, nobody paid twice
    assert outcome.rows[0].ambiguous_submissions == 1


async def test_busy_after_a_lost_reply_keeps_the_trace_id(tmp_path: Path) -> None:
    """Lost reply, then a front proxy says 500069 without asking the API: rotating the trace id
    now would start a second, paid generation."""

    async def hook(call: Call, forward: Forward) -> web.Response:
        if call.path == GENERATE and call.number == 1:
            await forward()  # accepted and charged upstream ...
            return web.Response(status=502, text="<html>bad gateway</html>")  # ... reply lost
        if call.path == GENERATE and call.number == 2:
            return envelope(500069, "system overloaded", status=500)  # never reached the API
        return await forward()

    manifest = project(tmp_path, tts_manifest(1))
    async with serve(fast_sim()) as sim, gateway_proxy(sim.url, hook) as proxy:
        outcome = await run_once(sim, manifest, tmp_path / "out", base_url=proxy.url)
    assert outcome.exit_code is ExitCode.OK
    sends = [c.trace_id for c in proxy.seen if c.path == GENERATE]
    assert len(sends) == 3
    assert len(set(sends)) == 1
    assert len(sim.ledger.generations) == 1


async def test_an_odd_reply_never_fails_a_paid_result(tmp_path: Path) -> None:
    """Status 1 was seen, the download broke, and the poll for a fresh link got an unknown
    ErrCode: the job must stay resumable, and the next run must download, not regenerate."""
    seen_done = False

    async def hook(call: Call, forward: Forward) -> web.Response:
        nonlocal seen_done
        if call.path == "/video/result" and seen_done:
            seen_done = False
            return envelope(500032, "temporarily unavailable")
        reply = await forward()
        if call.path == "/video/result" and status_of(reply) == 1:
            seen_done = True
        return reply

    manifest = project(tmp_path, tts_manifest(1))
    out = tmp_path / "out"
    async with serve(fast_sim(truncate_downloads=1)) as sim:
        async with gateway_proxy(sim.url, hook) as proxy:
            first = await run_once(sim, manifest, out, base_url=proxy.url)
        assert first.exit_code is ExitCode.UNFINISHED
        assert state_of(out, "job-0") is JobState.DOWNLOADING
        assert first.rows[0].error is not None
        assert "500032" in first.rows[0].error
        second = await run_once(sim, manifest, out)
    assert second.exit_code is ExitCode.OK
    assert len(sim.ledger.generations) == 1


async def test_odd_replies_while_generating_leave_the_job_resumable(tmp_path: Path) -> None:
    async def hook(call: Call, forward: Forward) -> web.Response:
        if call.path == "/video/result":
            return envelope(500008, "requested data not found")
        return await forward()

    manifest = project(tmp_path, tts_manifest(1))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        async with gateway_proxy(sim.url, hook) as proxy:
            first = await run_once(sim, manifest, out, base_url=proxy.url)
        assert first.exit_code is ExitCode.UNFINISHED
        assert state_of(out, "job-0") is JobState.GENERATING
        second = await run_once(sim, manifest, out)
    assert second.exit_code is ExitCode.OK
    assert len(sim.ledger.generations) == 1


@pytest.mark.parametrize(
    "odd",
    [
        {"ErrCode": 0, "ErrMsg": "", "Resp": None},
        {"ErrCode": 0, "ErrMsg": "", "Resp": [1, 2]},
        {"ErrCode": 0, "ErrMsg": "", "Resp": {"status": "done"}},
        {"ErrCode": "0"},
        "not even an object",
    ],
)
async def test_nothing_unmapped_escapes_from_odd_poll_replies(tmp_path: Path, odd: object) -> None:
    async def hook(call: Call, forward: Forward) -> web.Response:
        if call.path == "/video/result" and call.number <= 2:
            return web.json_response(odd)
        return await forward()

    manifest = project(tmp_path, tts_manifest(1))
    async with serve(fast_sim()) as sim, gateway_proxy(sim.url, hook) as proxy:
        outcome = await run_once(sim, manifest, tmp_path / "out", base_url=proxy.url)
    assert outcome.exit_code is ExitCode.OK
    assert (tmp_path / "out" / "report.json").exists()
    assert len(sim.ledger.generations) == 1


async def test_no_permission_does_not_pin_the_job_to_a_refused_trace_id(tmp_path: Path) -> None:
    manifest = project(tmp_path, tts_manifest(1))
    out = tmp_path / "out"
    config = fast_sim(
        api_keys=frozenset({"sim-key", "team"}), no_permission_keys=frozenset({"team"})
    )
    async with serve(config) as sim:
        refused = await run_once(sim, manifest, out, api_key="team")
        assert refused.exit_code is ExitCode.ACCOUNT
        sim.config.no_permission_keys = frozenset()  # the admin grants the permission
        granted = await run_once(sim, manifest, out, api_key="team")
    assert granted.exit_code is ExitCode.OK
    sends = [r.trace_id for r in sim.ledger.requests_to(GENERATE)]
    assert len(sends) == 2
    assert sends[0] != sends[1]  # the refused id was not re-sent into its cached refusal


async def test_a_submission_resumed_after_a_crash_is_counted_as_ambiguous(tmp_path: Path) -> None:
    """The run died after writing SUBMITTING: the id may or may not have reached the API."""
    manifest = project(tmp_path, tts_manifest(1))
    out = tmp_path / "out"
    checked = preflight(load_manifest(manifest))
    job = checked.manifest.jobs[0]
    store = StateStore.open(out / STATE_NAME)
    store.add_job(job.id, fingerprint(job, checked.media))
    store.transition(job.id, JobState.SUBMITTING, "intent", trace_id="trace-1")
    # the send left (its deadline long past) and the run died before the reply was saved
    sent = time.time() - 60  # within the gateway's 24 h replay window
    store.update(job.id, "crashed after this", sent_at=sent, resend_after=sent + 33)
    store.close()
    async with serve(fast_sim()) as sim:
        outcome = await run_once(sim, manifest, out)
    assert outcome.exit_code is ExitCode.OK
    assert [r.trace_id for r in sim.ledger.requests_to(GENERATE)] == ["trace-1"]
    assert outcome.rows[0].ambiguous_submissions == 1
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["ambiguous_submissions"] == 1


async def test_a_generation_stuck_at_status_5_does_not_hang_the_run(tmp_path: Path) -> None:
    manifest = project(tmp_path, tts_manifest(2))
    out = tmp_path / "out"
    async with serve(fast_sim(generation_seconds=1e6)) as sim:  # never finishes
        outcome = await run_once(sim, manifest, out, max_wait=0.2)
        assert outcome.exit_code is ExitCode.UNFINISHED
        assert {state_of(out, r.id) for r in outcome.rows} == {JobState.GENERATING}
        assert (out / "report.json").exists()
        # the next run polls the same videos; nothing is submitted again
        again = await run_once(sim, manifest, out, max_wait=0.2)
    assert again.exit_code is ExitCode.UNFINISHED
    assert len(sim.ledger.generations) == 2


async def test_redo_starts_a_paid_job_over_on_purpose(tmp_path: Path) -> None:
    manifest = project(tmp_path, tts_manifest(2))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        await run_once(sim, manifest, out)
        outcome = await run_once(sim, manifest, out, redo=frozenset({"job-1"}))
    assert outcome.exit_code is ExitCode.OK
    assert len(sim.ledger.generations) == 3
    assert outcome.rows[1].video_id != outcome.rows[0].video_id


async def test_slots_freed_by_the_ten_minute_rule_admit_new_jobs(tmp_path: Path) -> None:
    """Long generations give their slot back; admission must follow, or slots sit idle."""
    manifest = project(tmp_path, tts_manifest(6))
    config = fast_sim(generation_seconds=300.0, slot_seconds=20.0, concurrency_limit=2)
    async with serve(config) as sim:
        outcome = await run_once(
            sim, manifest, tmp_path / "out", concurrency=2, upload_ahead=0, slot_release_after=0.15
        )
    assert outcome.exit_code is ExitCode.OK
    generations = sorted(sim.ledger.generations.values(), key=lambda g: g.created_at)
    first_ends = generations[0].created_at + generations[0].seconds
    started_meanwhile = [g for g in generations if g.created_at < first_ends]
    assert len(started_meanwhile) >= 4  # more than the 2 slots + 0 lookahead of admission


async def test_a_deleted_result_fails_its_job_instead_of_waiting_forever(tmp_path: Path) -> None:
    manifest = project(tmp_path, tts_manifest(1))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        first = await run_once(sim, manifest, out)
        video_id = first.rows[0].video_id
        assert video_id is not None
        (out / "job-0.mp4").unlink()  # lost locally: the next run downloads it again ...
        sim.config.deleted_video_ids.add(video_id)  # ... but it was deleted on PixVerse too
        second = await run_once(sim, manifest, out)
    assert second.exit_code is ExitCode.JOBS_FAILED
    assert second.rows[0].error is not None
    assert "deleted" in second.rows[0].error
    assert len(sim.ledger.generations) == 1  # failed, not silently regenerated
