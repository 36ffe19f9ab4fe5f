"""Second adversarial review of the exactly-once machinery (after "Fix review findings R1-R7").

Each test demonstrates one finding (ids S1, S2, ...) against real HTTP over loopback: the
bundled simulator, the simulator behind `tests.gateway_proxy`, or behind a listener that can
be closed and reopened on the same port (a gateway that is down for a while). Each failed on
the code under review and turned green with the fix.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
import anyio
import pytest
from aiohttp import web

from pipeline.client import ClientConfig, PixverseClient
from pipeline.manifest import load_manifest
from pipeline.preflight import preflight
from pipeline.replay import PROBE_PREFIX
from pipeline.retry import RetryPolicy
from pipeline.runner import RunOptions, RunOutcome, run_batch
from pipeline.simulator import Simulator, serve
from pipeline.state import JobRecord, StateStore
from tests.gateway_proxy import Call, Forward, Hook, envelope, gateway_proxy, passthrough
from tests.harness import FAST_RETRY, REQUEST_TIMEOUT, STATE_NAME, fast_sim, project
from tests.test_review_findings import GENERATE, UPLOAD, finish_running, generations_for, tts_jobs

pytestmark = pytest.mark.anyio

HOUR = 3600.0


async def run_with(
    sim: Simulator,
    manifest: Path,
    out: Path,
    *,
    api_key: str = "sim-key",
    base_url: str | None = None,
    request_timeout: float = REQUEST_TIMEOUT,
    retry: RetryPolicy = FAST_RETRY,
    wall: Callable[[], float] = time.time,
    **options: object,
) -> RunOutcome:
    """`tests.harness.run_once`, with the retry policy and the client's wall clock chosen (a
    clock moved on stands for a run made that much later)."""
    checked = preflight(load_manifest(manifest))
    run_options = replace(RunOptions(output_dir=out, poll_interval=0.02), **options)  # type: ignore[arg-type]
    store = StateStore.open(out / STATE_NAME)
    try:
        config = ClientConfig(
            base_url=base_url or sim.url,
            api_key=api_key,
            retry=retry,
            request_timeout=request_timeout,
        )
        async with PixverseClient(config) as client:
            return await run_batch(checked, store, client, run_options, wall=wall)
    finally:
        store.close()


def later(hours: float) -> Callable[[], float]:
    return lambda: time.time() + hours * HOUR


def job_record(out: Path, job_id: str) -> JobRecord:
    store = StateStore.open(out / STATE_NAME)
    try:
        return store.job(job_id)
    finally:
        store.close()


# A gateway that goes down and comes back on the same address --------------------------------


@dataclass
class Switchable:
    """A proxy to the simulator whose listening socket can be closed (connections refused,
    as when the gateway is down) and opened again on the same port. Every reply closes its
    connection, so no pooled connection outlives a close."""

    url: str
    _open: Callable[[], Awaitable[None]] = field(repr=False)
    _server: asyncio.AbstractServer | None = field(default=None, repr=False)
    seen: list[Call] = field(default_factory=list)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()  # the listening socket only
            self._server = None

    async def open(self) -> None:
        await self._open()


@asynccontextmanager
async def switchable_proxy(upstream: str, hook: Hook = passthrough) -> AsyncIterator[Switchable]:
    counts: dict[str, int] = {}
    session = aiohttp.ClientSession(auto_decompress=False)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        key = "/video/result" if "/video/result/" in request.path else request.path
        counts[key] = counts.get(key, 0) + 1
        call = Call(key, counts[key], request.headers.get("Ai-trace-id", ""), body)
        proxy.seen.append(call)

        async def forward() -> web.Response:
            headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
            async with session.request(
                request.method, upstream + request.path_qs, headers=headers, data=body
            ) as reply:
                data = await reply.read()
                return web.Response(status=reply.status, body=data, content_type=reply.content_type)

        response = await hook(call, forward)
        response.force_close()
        return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    assert runner.server is not None

    async def open_() -> None:
        loop = asyncio.get_running_loop()
        proxy._server = await loop.create_server(runner.server, "127.0.0.1", port)  # type: ignore[arg-type]

    proxy = Switchable(f"http://127.0.0.1:{port}", open_)
    await proxy.open()
    try:
        yield proxy
    finally:
        proxy.close()
        await runner.cleanup()
        await session.close()


# S1 -----------------------------------------------------------------------------------------


async def test_s1_a_resend_after_the_replay_window_does_not_pay_twice(tmp_path: Path) -> None:
    """The contract: the gateway replays the first reply of a trace id "for 24 hours". Run 1
    sends job `a`; the generation is made and charged, the reply is lost, and the run ends
    (here: its one try is spent; equally a SIGKILL, a reboot, an outage). The next run comes
    25 hours later (a weekend, a cron that was off). The replay probe passes (it uses fresh
    trace ids), so the old id is re-sent, but the gateway no longer holds its reply: the
    re-send starts (and charges) a second generation. A send older than the replay window can
    no longer be confirmed by re-sending; it must be treated like a gateway that does not
    replay (parked as unconfirmed), never re-sent blindly.

    The simulator's 24 h are scaled (here one real second); the client's clock is moved on
    25 hours for run 2, so both sides agree that the window has passed."""
    manifest = project(tmp_path, tts_jobs({"a": "line a"}))
    out = tmp_path / "out"
    window = 1.0  # real seconds the simulator replays a trace id's first reply
    async with serve(fast_sim(reply_cache_seconds=window / 0.005)) as sim:
        sim.config.drop_generate_replies = 1  # processed and charged, the reply lost
        first = await run_with(
            sim, manifest, out, request_timeout=0.5, retry=replace(FAST_RETRY, attempts=1)
        )
        assert first.rows[0].state == "unfinished:submitting", first.rows[0]
        assert generations_for(sim, "line a") == 1
        await anyio.sleep(window * 1.2)  # the gateway forgets the reply (its "24 h" pass)
        await run_with(sim, manifest, out, request_timeout=0.5, wall=later(25))
        paid = generations_for(sim, "line a")
    assert paid == 1, f"job a was paid for {paid} times"


# S2 -----------------------------------------------------------------------------------------


def lose_first_then_busy(busy: frozenset[int], rate_limited: frozenset[int] = frozenset()) -> Hook:
    """Generate call 1 is processed but its reply lost (a 502 page); the calls in `busy` get a
    load balancer's 500069 and those in `rate_limited` a rate limiter's 429 (Retry-After
    0.6 s), neither forwarded; every other call goes through."""

    async def hook(call: Call, forward: Forward) -> web.Response:
        if call.path == GENERATE and call.number == 1:
            await forward()
            return web.Response(status=502, text="<html>502 Bad Gateway</html>")
        if call.path == GENERATE and call.number in busy:
            return envelope(500069, "system overloaded", status=500)
        if call.path == GENERATE and call.number in rate_limited:
            return web.Response(
                status=429, text="429: Too Many Requests", headers={"Retry-After": "0.6"}
            )
        return await forward()

    return hook


async def test_s2_rate_limited_replies_do_not_make_quick_busy_replies_pinned(
    tmp_path: Path,
) -> None:
    """Job `a`'s first send is processed, its reply lost. After the deadline the same id is
    re-sent three times and a load balancer answers 500069 three times within a few
    milliseconds: not "lasting", so the id is kept (R2). Then a rate limiter answers 429
    (Retry-After 0.6 s) twice. A 429 "never counts", yet at the second one `now - busy_since`
    exceeds `busy_pinned_after` and the three quick busy replies are taken for the gateway's
    pinned replay: the id is replaced and the job is paid for a second time."""
    manifest = project(tmp_path, tts_jobs({"a": "line a"}))
    out = tmp_path / "out"
    hook = lose_first_then_busy(busy=frozenset({2, 3, 4}), rate_limited=frozenset({5, 6}))
    async with serve(fast_sim()) as sim, gateway_proxy(sim.url, hook) as proxy:
        await run_with(
            sim,
            manifest,
            out,
            base_url=proxy.url,
            request_timeout=0.5,
            retry=replace(FAST_RETRY, attempts=10),
            busy_pinned_after=0.3,
        )
    assert generations_for(sim, "line a") == 1, "job a was paid for twice"


async def test_s2_quick_busy_replies_in_two_runs_are_not_a_pinned_replay(tmp_path: Path) -> None:
    """Run 1: the first send is processed and its reply lost; the re-sends get three quick
    500069s from a load balancer (not lasting: kept, R2), and the run's tries are spent. The
    next night, the same balancer answers three quick 500069s again. Together they "last" the
    hour between the runs (busy_since is stored), so the id is taken for pinned and replaced:
    the job is paid for twice. No busy reply lasted more than milliseconds in either run."""
    manifest = project(tmp_path, tts_jobs({"a": "line a"}))
    out = tmp_path / "out"
    hook = lose_first_then_busy(busy=frozenset(range(2, 8)))
    async with serve(fast_sim()) as sim, gateway_proxy(sim.url, hook) as proxy:
        first = await run_with(sim, manifest, out, base_url=proxy.url, request_timeout=0.5)
        assert first.rows[0].state == "unfinished:submitting", first.rows[0]
        await run_with(sim, manifest, out, base_url=proxy.url, request_timeout=0.5, wall=later(1))
    assert generations_for(sim, "line a") == 1, "job a was paid for twice"


# S3 -----------------------------------------------------------------------------------------


async def test_s3_an_unserved_speaker_list_does_not_strand_paid_generations(
    tmp_path: Path,
) -> None:
    """Run 1 leaves job `a` generating (paid). Run 2 adds a TTS job `b`; the gateway answers
    the probe's uploads, the balance and the polls, but both speaker-list paths answer a
    plain 404 (a gateway that routes only part of the API, or PixVerse moving the list once
    more). The speaker list is only needed by the pending TTS jobs: they should wait, and
    `a`'s paid result should be fetched. Instead the whole run stops with exit 2 ("bad
    manifest or usage"), every night, and `a` is never downloaded."""
    manifest = project(tmp_path, tts_jobs({"a": "line a"}))
    out = tmp_path / "out"
    async with serve(fast_sim(generation_seconds=1e6)) as sim:
        first = await run_with(sim, manifest, out, max_wait=0.1)
        assert {r.state for r in first.rows} == {"unfinished:generating"}
        finish_running(sim)
        sim.config.generation_seconds = 20.0
        sim.config.speaker_paths = frozenset()  # both paths: a plain 404
        manifest.write_text(tts_jobs({"a": "line a", "b": "line b"}), encoding="utf-8")
        second = await run_with(sim, manifest, out)
    rows = {r.id: r for r in second.rows}
    assert rows["a"].state == "done", (second.problem, rows["a"])
    assert (out / "a.mp4").is_file()


# S4 -----------------------------------------------------------------------------------------


def busy_while(flag: list[bool]) -> Hook:
    async def hook(call: Call, forward: Forward) -> web.Response:
        if call.path == GENERATE and flag[0]:
            return envelope(500069, "system overloaded", status=500)
        return await forward()

    return hook


async def test_s4_a_refused_first_request_does_not_park_a_submission(tmp_path: Path) -> None:
    """Gateway without replay. Run 1: every generate answers 500069 (definitive: the id is
    replaced), so `a` is left SUBMITTING with an id that never left (as in R7). Run 2: the
    gateway is down (connection refused). The replay verdict is recorded and `a` needs no
    upload, speaker list or balance, so its generate is the client's first request; the
    refusal is NotSentError, but `_unreachable` re-raises it as a plain TransportError to add
    a base-URL hint, and the send counts as possibly processed. Run 3 (gateway back) probes,
    finds no replay and parks `a` as unconfirmed: it waits for a human and --redo, though
    no byte of it ever reached the gateway."""
    manifest = project(tmp_path, tts_jobs({"a": "line a"}))
    out = tmp_path / "out"
    overloaded = [True]
    async with (
        serve(fast_sim(reply_cache=False)) as sim,
        switchable_proxy(sim.url, busy_while(overloaded)) as proxy,
    ):
        first = await run_with(sim, manifest, out, base_url=proxy.url)
        assert first.rows[0].state == "unfinished:submitting", first.rows[0]
        assert job_record(out, "a").sent_at is None  # the current id never left
        proxy.close()  # the gateway is down: connections refused
        second = await run_with(sim, manifest, out, base_url=proxy.url)
        assert second.rows[0].state == "unfinished:submitting", second.rows[0]
        await proxy.open()
        overloaded[0] = False
        third = await run_with(sim, manifest, out, base_url=proxy.url)
    assert third.rows[0].state == "done", third.rows[0]
    assert generations_for(sim, "line a") == 1


# S5 -----------------------------------------------------------------------------------------


async def test_s5_a_refused_submission_is_not_held_for_the_key_that_tried_it(
    tmp_path: Path,
) -> None:
    """Key one: the probe, the speaker list and the balance are answered, then the gateway
    goes down (connections refused) just before `a`'s generate; every try is refused
    (NotSentError: nothing can have been processed) until the run's tries are spent. The
    user switches to key two. Nothing of `a` ever reached any gateway, so key two must submit
    it (R7); but the refused try wrote `sent_at`, and `foreign_key` reads that as "sent with
    key one": `a` is left "submitted with key ...: run with that key" every night."""
    manifest = project(tmp_path, tts_jobs({"a": "line a"}))
    out = tmp_path / "out"
    proxy_ref: list[Switchable] = []

    async def down_after_balance(call: Call, forward: Forward) -> web.Response:
        response = await forward()
        if call.path == "/openapi/v2/account/balance":
            proxy_ref[0].close()  # this reply still goes out; the next connection is refused
        return response

    async with (
        serve(fast_sim(api_keys=frozenset({"key-one", "key-two"}))) as sim,
        switchable_proxy(sim.url, down_after_balance) as proxy,
    ):
        proxy_ref.append(proxy)
        first = await run_with(sim, manifest, out, api_key="key-one", base_url=proxy.url)
        assert first.rows[0].state == "unfinished:submitting", first.rows[0]
        assert not [c for c in proxy.seen if c.path == GENERATE]  # no generate ever arrived
        record = job_record(out, "a")
        assert not record.trace_ambiguous
        second = await run_with(sim, manifest, out, api_key="key-two")
    assert second.rows[0].state == "done", second.rows[0]


# S6 -----------------------------------------------------------------------------------------


async def test_s6_a_failing_probe_is_not_rerun_by_every_job(tmp_path: Path) -> None:
    """A recorded verdict lets run 2 start without probing. Then the gateway fails: every
    generate and every upload gets a 502 page. Each of the ten jobs sends its generate, loses
    the reply, and runs the whole replay probe again (all its tries) under the probe lock,
    one job after another: 4 uploads x 10 jobs here; with the default policy (6 tries, up to
    2 minutes, or 10 minutes a try when the gateway swallows requests) a long outage turns
    a nightly run into hours of serial probing. Once the probe has failed in a run, the
    failure should be remembered (and submissions stopped), not re-probed per job."""
    manifest = project(tmp_path, tts_jobs({"z": "line z"}))
    out = tmp_path / "out"
    failing = [False]

    async def outage(call: Call, forward: Forward) -> web.Response:
        if failing[0] and call.path in (GENERATE, UPLOAD):
            return web.Response(status=502, text="<html>502 Bad Gateway</html>")
        return await forward()

    async with serve(fast_sim()) as sim, gateway_proxy(sim.url, outage) as proxy:
        first = await run_with(sim, manifest, out, base_url=proxy.url)
        assert first.rows[0].state == "done"
        failing[0] = True
        jobs = {"z": "line z"} | {f"j{i}": f"line {i}" for i in range(10)}
        manifest.write_text(tts_jobs(jobs), encoding="utf-8")
        start = len(proxy.seen)
        await run_with(sim, manifest, out, base_url=proxy.url, request_timeout=0.5)
        calls = proxy.seen[start:]
    probe_uploads = [c for c in calls if c.path == UPLOAD and PROBE_PREFIX.encode() in c.body]
    assert len(probe_uploads) <= 2 * FAST_RETRY.attempts, (
        f"{len(probe_uploads)} probe uploads in one run"
    )


# S7 -----------------------------------------------------------------------------------------


async def test_s7_a_redone_unconfirmed_job_is_not_parked_again(tmp_path: Path) -> None:
    """Gateway without replay. Run 1: `a`'s reply is lost, so it is parked as unconfirmed.
    The user checks the console (nothing there) and runs with --redo a: the parked record is
    archived and `a` is submitted afresh; that generation fails (status 8, refunded). The next
    night `a` should simply be retried like any failed job. Instead its
    own failed record is unpaid, so the archived unconfirmed record (UNCONFIRMED counts as
    paid) is adopted back by fingerprint and `a` is parked again with the old advice: each
    failure of a redone job needs another human --redo."""
    manifest = project(tmp_path, tts_jobs({"a": "line a"}))
    out = tmp_path / "out"
    async with serve(fast_sim(reply_cache=False)) as sim:
        sim.config.drop_generate_replies = 1
        first = await run_with(sim, manifest, out, request_timeout=0.5)
        assert first.rows[0].state == "unfinished:unconfirmed", first.rows[0]
        sim.config.fail_probability = 1.0  # status 8: refunded, retried by the next run
        second = await run_with(sim, manifest, out, redo=frozenset({"a"}), max_attempts=1)
        assert second.rows[0].state == "failed", second.rows[0]
        sim.config.fail_probability = 0.0
        third = await run_with(sim, manifest, out)
    assert third.rows[0].state == "done", third.rows[0]
