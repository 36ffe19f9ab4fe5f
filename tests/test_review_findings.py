"""Adversarial review of issues 5 and 11: defects demonstrated against real HTTP.

Each test shows one finding of the review (ids R1, R2, ...): it failed on the code under
review, and the fix turned it green. Servers are the bundled simulator over loopback, or the
simulator behind `tests.gateway_proxy` where the misbehaviour is one the simulator cannot
express.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from pipeline.replay import PROBE_PREFIX
from pipeline.runner import ExitCode
from pipeline.simulator import Simulator, serve
from pipeline.simulator.state import STATE
from pipeline.state import StateStore
from tests.gateway_proxy import Call, Forward, envelope, gateway_proxy
from tests.harness import STATE_NAME, fast_sim, project, run_once

pytestmark = pytest.mark.anyio

GENERATE = "/openapi/v2/video/lip_sync/generate"
UPLOAD = "/openapi/v2/media/upload"
KNOWN_VIDEO = 391504857968062  # the simulator's "generated earlier" video: no upload needed


def tts_jobs(texts: dict[str, str]) -> str:
    """TTS jobs on the simulator's known source video: no job upload at all."""
    lines = ["version: 1", "jobs:"]
    lines += [
        f"  - {{id: {job_id}, video_id: {KNOWN_VIDEO}, tts: {{text: '{text}', speaker: '1'}}}}"
        for job_id, text in texts.items()
    ]
    return "\n".join(lines) + "\n"


def finish_running(sim: Simulator, key: str = "sim-key") -> None:
    """Every generation still at status 5 ends now (the next request settles it)."""
    state = sim.app[STATE]
    for generation in state.backend.account(key).running:
        generation.ends_at = state.clock()


def generations_for(sim: Simulator, text: str) -> int:
    return sum(
        1 for g in sim.ledger.generations.values() if g.body.get("lip_sync_tts_content") == text
    )


# R1 -----------------------------------------------------------------------------------------


async def test_r1_a_refused_probe_upload_does_not_strand_paid_generations(
    tmp_path: Path,
) -> None:
    """Run 1 leaves job `a` generating (paid). Run 2 adds job `b`, so the replay probe runs;
    the server refuses the probe's WAV (content moderation, or a media limit: 400017). The
    paid generation of `a` must still be polled and downloaded, and a report written."""
    manifest = project(tmp_path, tts_jobs({"a": "line a"}))
    out = tmp_path / "out"

    async def refuse_probe(call: Call, forward: Forward) -> web.Response:
        if call.path == UPLOAD and PROBE_PREFIX.encode() in call.body:
            return envelope(500054, "content moderation rejected the input")
        return await forward()

    async with serve(fast_sim(generation_seconds=1e6)) as sim:
        first = await run_once(sim, manifest, out, max_wait=0.1)
        assert {r.state for r in first.rows} == {"unfinished:generating"}
        finish_running(sim)
        manifest.write_text(tts_jobs({"a": "line a", "b": "line b"}), encoding="utf-8")
        async with gateway_proxy(sim.url, refuse_probe) as proxy:
            second = await run_once(sim, manifest, out, base_url=proxy.url)
    rows = {r.id: r for r in second.rows}
    assert rows["a"].state == "done"  # the paid result reached the output folder
    assert (out / "a.mp4").is_file()
    assert (out / "report.json").is_file()


# R2 -----------------------------------------------------------------------------------------


async def test_r2_busy_replies_to_a_possibly_processed_trace_id_never_pay_twice(
    tmp_path: Path,
) -> None:
    """The first send is processed (video created, charged) but its reply is lost (a 502 page).
    After the deadline the same trace id is re-sent; a load balancer in front answers 500069
    three times in a row without asking the gateway (the simulator's own `transient_errors`
    fault is exactly that: answered before the reply cache, never cached). Nothing proves the
    first send failed, so the id must not be replaced: one generation, not two."""
    manifest = project(tmp_path, tts_jobs({"a": "line a"}))
    out = tmp_path / "out"

    async def lose_then_busy(call: Call, forward: Forward) -> web.Response:
        if call.path == GENERATE and call.number == 1:
            await forward()  # processed and charged; the reply never reaches the client
            return web.Response(status=502, text="<html>502 Bad Gateway</html>")
        if call.path == GENERATE and call.number in (2, 3, 4):
            return envelope(500069, "system overloaded", status=500)
        return await forward()

    async with (
        serve(fast_sim()) as sim,
        gateway_proxy(sim.url, lose_then_busy) as proxy,
    ):
        await run_once(sim, manifest, out, base_url=proxy.url, request_timeout=0.5)
        # the next nightly run (the first may have run out of tries in this run)
        outcome = await run_once(sim, manifest, out, base_url=proxy.url, request_timeout=0.5)
    assert generations_for(sim, "line a") == 1, "job a was paid for twice"
    assert outcome.exit_code is ExitCode.OK


# R3 -----------------------------------------------------------------------------------------


async def test_r3_a_plain_429_on_a_gateway_without_replay_does_not_park_the_job(
    tmp_path: Path,
) -> None:
    """The contract: "HTTP 429 is not documented but a client must treat it like 500069 and
    honour Retry-After". A rate limiter in front (aiohttp's own `HTTPTooManyRequests`, nginx's
    `limit_req`) answers 429 with a text body and never forwards the request, so nothing was
    processed. On a gateway without replay the job must be submitted again (new trace id,
    after Retry-After), not parked until a human runs --redo."""
    manifest = project(tmp_path, tts_jobs({"a": "line a"}))
    out = tmp_path / "out"

    async def rate_limited_once(call: Call, forward: Forward) -> web.Response:
        if call.path == GENERATE and call.number == 1:
            return web.Response(
                status=429, text="429: Too Many Requests", headers={"Retry-After": "0"}
            )
        return await forward()

    async with (
        serve(fast_sim(reply_cache=False)) as sim,
        gateway_proxy(sim.url, rate_limited_once) as proxy,
    ):
        outcome = await run_once(sim, manifest, out, base_url=proxy.url)
    rows = {r.id: r for r in outcome.rows}
    assert rows["a"].state == "done", rows["a"]
    assert generations_for(sim, "line a") == 1


# R4 -----------------------------------------------------------------------------------------


async def test_r4_a_paid_generation_archived_mid_flight_is_still_downloaded(
    tmp_path: Path,
) -> None:
    """Job `a` is submitted (paid) and still generating when the run ends. The user then edits
    its script. The new script is a new job, but the old generation was paid for: its video
    must still be fetched (into superseded/, like an archived done result), not left as an
    id in an archived record that no run ever polls."""
    manifest = project(tmp_path, tts_jobs({"a": "old line"}))
    out = tmp_path / "out"
    async with serve(fast_sim(generation_seconds=1e6)) as sim:
        first = await run_once(sim, manifest, out, max_wait=0.1)
        assert {r.state for r in first.rows} == {"unfinished:generating"}
        old_video = first.rows[0].video_id
        assert old_video is not None
        finish_running(sim)  # the paid generation is finished on the server now
        manifest.write_text(tts_jobs({"a": "new line"}), encoding="utf-8")
        sim.config.generation_seconds = 20.0
        await run_once(sim, manifest, out)
        await run_once(sim, manifest, out)  # and the night after
        served = set(sim.ledger.served_downloads)
    store = StateStore.open(out / STATE_NAME)
    try:
        archived = [r for r in store.jobs(archived=True) if r.video_id == old_video]
    finally:
        store.close()
    assert len(archived) == 1  # the paid video id is kept (archived), but...
    assert old_video in served, "the paid video of the old script was never downloaded"


# R5 -----------------------------------------------------------------------------------------


async def test_r5_a_resubmission_in_a_run_that_began_with_only_generations_is_not_parked(
    tmp_path: Path,
) -> None:
    """Run 1 dies (here: gives up waiting) with job `a` generating. Run 2 finds only generating
    jobs, so it never probes the gateway and keeps `replays=False`. The generation ends in
    status 8 (refunded), `a` is resubmitted in the same run, and that reply is lost. The
    gateway replays (the simulator's default), so the same trace id after the deadline is
    the safe retry; instead the job is parked as unconfirmed until someone runs --redo."""
    manifest = project(tmp_path, tts_jobs({"a": "line a"}))
    out = tmp_path / "out"
    async with serve(fast_sim(generation_seconds=1e6)) as sim:
        first = await run_once(sim, manifest, out, max_wait=0.1)
        assert {r.state for r in first.rows} == {"unfinished:generating"}
        state = sim.app[STATE]
        for generation in state.backend.account("sim-key").running:
            generation.record.outcome = 8  # generation failed: refunded, to be resubmitted
        finish_running(sim)
        sim.config.generation_seconds = 20.0
        sim.config.drop_generate_replies = 1  # the resubmission is processed, its reply lost
        outcome = await run_once(sim, manifest, out, request_timeout=0.5)
    rows = {r.id: r for r in outcome.rows}
    assert rows["a"].state == "done", rows["a"]
    assert generations_for(sim, "line a") == 2  # the failed one and the resubmission, no more


# R6 -----------------------------------------------------------------------------------------


async def test_r6_a_resend_is_not_made_on_a_stale_replay_verdict(tmp_path: Path) -> None:
    """Yesterday's run probed the gateway (it replayed) and saved the verdict. Today the same
    base URL no longer replays (a new gateway deployment, a failover region, a test server
    restarted without dedup). A lost reply is then re-sent on the old verdict and starts a
    second paid generation. A re-send is the one moment the verdict decides money: it should
    be checked (two free uploads) right before, or at least once per run."""
    manifest = project(tmp_path, tts_jobs({"a": "line a"}))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        first = await run_once(sim, manifest, out)
        assert first.exit_code is ExitCode.OK
        sim.config.reply_cache = False  # the gateway no longer replays
        sim.config.drop_generate_replies = 1  # b's send is processed, its reply lost
        manifest.write_text(tts_jobs({"a": "line a", "b": "line b"}), encoding="utf-8")
        await run_once(sim, manifest, out, request_timeout=0.5)
    assert generations_for(sim, "line b") == 1, "job b was paid for twice"


# R7 -----------------------------------------------------------------------------------------


async def test_r7_an_unsent_submission_is_not_held_for_the_key_that_never_sent_it(
    tmp_path: Path,
) -> None:
    """Key one meets an overloaded gateway: every generate answers 500069 (definitive, so the
    trace id is replaced each time) until this run's tries run out. The job is left
    SUBMITTING with a fresh trace id that never left, yet stamped with key one. The user
    switches to key two (key one is the one in trouble): nothing of this job was ever
    processed under any key, so key two must submit it; instead it is left "submitted with
    key ...: run with that key to finish it", every night."""
    manifest = project(tmp_path, tts_jobs({"a": "line a"}))
    out = tmp_path / "out"
    overloaded = True

    async def busy_while_overloaded(call: Call, forward: Forward) -> web.Response:
        if call.path == GENERATE and overloaded:
            return envelope(500069, "system overloaded", status=500)
        return await forward()

    async with (
        serve(fast_sim(api_keys=frozenset({"key-one", "key-two"}))) as sim,
        gateway_proxy(sim.url, busy_while_overloaded) as proxy,
    ):
        first = await run_once(sim, manifest, out, api_key="key-one", base_url=proxy.url)
        assert first.rows[0].state == "unfinished:submitting"
        store = StateStore.open(out / STATE_NAME)
        try:
            record = store.job("a")
        finally:
            store.close()
        assert record.sent_at is None  # the current trace id never left
        assert not record.trace_ambiguous
        overloaded = False
        second = await run_once(sim, manifest, out, api_key="key-two", base_url=proxy.url)
    assert second.rows[0].state == "done", second.rows[0]
