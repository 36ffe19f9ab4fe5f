"""The client's error boundary and retry policy, against real servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
from aiohttp import web

from pipeline.client import ClientConfig, PixverseClient, classify_envelope, parse_retry_after
from pipeline.errors import (
    ApiError,
    AuthError,
    CreditsError,
    JobError,
    ServerBusyError,
    SlotLimitError,
    TransportError,
)
from pipeline.retry import RetryPolicy

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(attempts=3, max_elapsed=5, initial_wait=0.001, max_wait=0.002)


@asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class Recorder:
    """Counts requests and remembers trace ids and keys seen."""

    def __init__(self) -> None:
        self.traces: list[str] = []
        self.keys: list[str] = []

    def note(self, request: web.Request) -> None:
        self.traces.append(request.headers.get("ai-trace-id", ""))
        self.keys.append(request.headers.get("API-KEY", ""))


@pytest.mark.parametrize(
    ("status", "payload", "expected"),
    [
        (200, {"ErrCode": 0, "ErrMsg": "ok", "Resp": {"a": 1}}, None),
        (200, {"err_code": 0, "err_msg": "ok", "resp": {"a": 1}}, None),
        (401, {"ErrCode": 400012, "ErrMsg": "invalid account"}, AuthError),
        (200, {"ErrCode": 500020, "ErrMsg": "no permission"}, AuthError),
        (200, {"ErrCode": 500090, "ErrMsg": "balance"}, CreditsError),
        (200, {"ErrCode": 500044, "ErrMsg": "limit"}, SlotLimitError),
        (500, {"err_code": 500069, "err_msg": "overloaded"}, ServerBusyError),
        (500, {"ErrCode": 500100, "ErrMsg": "db"}, ServerBusyError),
        (200, {"ErrCode": 99999, "ErrMsg": "unknown"}, ServerBusyError),
        (429, {"ErrCode": 1, "ErrMsg": "slow down"}, ServerBusyError),
        (400, {"ErrCode": 400017, "ErrMsg": "invalid parameter"}, JobError),
        (200, {"ErrCode": 400013, "ErrMsg": "wrong type"}, JobError),
        (200, {"ErrCode": 500054, "ErrMsg": "moderation"}, JobError),
        (200, {"ErrCode": 500008, "ErrMsg": "not found"}, JobError),
        (502, {"nothing": "here"}, TransportError),  # a proxy's JSON: outcome unknown
        (504, {"message": "Endpoint request timed out"}, TransportError),
        (200, {"ErrCode": 0, "Resp": None}, TransportError),
        (200, ["not", "an", "object"], TransportError),
        (200, {"Resp": {}}, TransportError),
    ],
)
async def test_envelope_classification(status: int, payload: object, expected: type | None) -> None:
    if expected is None:
        assert classify_envelope(status, payload) == {"a": 1}
    else:
        with pytest.raises(expected):
            classify_envelope(status, payload)


async def test_retry_after_is_read_from_429() -> None:
    with pytest.raises(ServerBusyError) as caught:
        classify_envelope(429, {"ErrCode": 500069, "ErrMsg": "x"}, {"Retry-After": "7"})
    assert caught.value.retry_after == 7.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("-3", 0.0),  # nonsense: no wait, the jittered backoff applies
        ("Sun, 06 Nov 1994 08:49:37 GMT", 60.0),  # RFC 9110's example date, 60 s ahead
        ("Sunday, 06-Nov-94 08:49:37 GMT", 60.0),  # the obsolete RFC 850 form
        ("Sun, 06 Nov 1994 08:47:37 GMT", 0.0),  # already past
        ("soon", None),
        ("inf", None),
    ],
)
async def test_retry_after_reads_seconds_and_http_dates(value: str, expected: float | None) -> None:
    """RFC 9110 10.2.3: delay-seconds or an HTTP-date, the date counted from now."""
    now = datetime(1994, 11, 6, 8, 48, 37, tzinfo=UTC).timestamp()
    assert parse_retry_after({"retry-after": value}, now=lambda: now) == expected


def _faulty_app(rec: Recorder) -> web.Application:
    async def html(request: web.Request) -> web.Response:
        rec.note(request)
        return web.Response(status=502, text="<html>Bad gateway</html>", content_type="text/html")

    async def empty(request: web.Request) -> web.Response:
        rec.note(request)
        return web.Response(status=200, body=b"")

    async def slow(request: web.Request) -> web.Response:
        rec.note(request)
        await asyncio.sleep(1)
        return web.json_response({"ErrCode": 0, "Resp": {}})

    async def reset(request: web.Request) -> web.StreamResponse:
        rec.note(request)
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    async def half(request: web.Request) -> web.StreamResponse:
        rec.note(request)
        response = web.StreamResponse(headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b'{"ErrCode": 0,')
        assert request.transport is not None
        request.transport.close()
        return response

    async def busy_then_ok(request: web.Request) -> web.Response:
        rec.note(request)
        if len(rec.traces) < 3:
            return web.json_response(
                {"ErrCode": 500069, "ErrMsg": "busy"}, status=429, headers={"Retry-After": "0.01"}
            )
        return web.json_response(
            {
                "ErrCode": 0,
                "ErrMsg": "ok",
                "Resp": {"account_id": 1, "credit_monthly": 5, "credit_package": 2},
            }
        )

    app = web.Application()
    app.router.add_get("/html/openapi/v2/account/balance", html)
    app.router.add_get("/empty/openapi/v2/account/balance", empty)
    app.router.add_get("/slow/openapi/v2/account/balance", slow)
    app.router.add_get("/reset/openapi/v2/account/balance", reset)
    app.router.add_get("/half/openapi/v2/account/balance", half)
    app.router.add_get("/busy/openapi/v2/account/balance", busy_then_ok)
    return app


@pytest.mark.parametrize("route", ["html", "empty", "slow", "reset", "half"])
async def test_transport_faults_map_to_transport_error_and_are_retried(route: str) -> None:
    rec = Recorder()
    async with serve_app(_faulty_app(rec)) as url:
        config = ClientConfig(
            base_url=f"{url}/{route}", api_key="k-secret", request_timeout=0.3, retry=FAST
        )
        async with PixverseClient(config) as client:
            with pytest.raises(TransportError) as caught:
                await client.balance()
    # retried, then gave up, with a fresh trace id every attempt (aiohttp itself re-sends an
    # idempotent request once when a reused keep-alive connection was reset: same attempt)
    assert len(set(rec.traces)) == FAST.attempts
    assert "k-secret" not in str(caught.value)
    assert isinstance(caught.value, ApiError)


async def test_a_401_html_page_is_still_an_auth_error() -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=401, text="<html>Unauthorized</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/openapi/v2/account/balance", refuse)
    async with serve_app(app) as url:
        config = ClientConfig(base_url=url, api_key="k", retry=FAST)
        async with PixverseClient(config) as client:
            with pytest.raises(AuthError):
                await client.balance()


async def test_connection_refused_is_a_transport_error() -> None:
    async with serve_app(web.Application()) as url:
        pass  # the port is closed again
    config = ClientConfig(base_url=url, api_key="k", retry=FAST)
    async with PixverseClient(config) as client:
        with pytest.raises(TransportError):
            await client.balance()


async def test_busy_is_retried_with_retry_after_then_succeeds() -> None:
    rec = Recorder()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async with serve_app(_faulty_app(rec)) as url:
        config = ClientConfig(base_url=f"{url}/busy", api_key="k-1", retry=FAST)
        # the clock that goes with an instant sleep: it stands still
        async with PixverseClient(config, sleep=sleep, clock=lambda: 0.0) as client:
            balance = await client.balance()
    assert balance.spendable == 7
    assert len(rec.traces) == 3
    assert all(s >= 0.01 for s in slept)  # Retry-After honoured over the tiny jitter
    assert rec.keys == ["k-1"] * 3  # API-KEY on every request


async def test_generate_sends_once_and_leaves_re_sending_to_the_caller() -> None:
    """A paid submission is never re-sent inside the client: a re-send before the first
    send's deadline could race it (issue 5, section 1); `pipeline.submit` decides."""
    seen: list[str] = []
    replies = ["drop", "busy", "ok"]

    async def generate(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers["Ai-trace-id"])
        kind = replies.pop(0)
        if kind == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if kind == "busy":
            return web.json_response({"err_code": 500069, "err_msg": "busy"}, status=500)
        return web.json_response({"ErrCode": 0, "ErrMsg": "ok", "Resp": {"video_id": 42}})

    app = web.Application()
    app.router.add_post("/openapi/v2/video/lip_sync/generate", generate)
    async with serve_app(app) as url:
        config = ClientConfig(base_url=url, api_key="k", retry=FAST)
        async with PixverseClient(config) as client:
            with pytest.raises(TransportError):
                await client.generate({"source_video_id": 1}, "t-0")
            with pytest.raises(ServerBusyError):
                await client.generate({"source_video_id": 1}, "t-0")
            submission = await client.generate({"source_video_id": 1}, "t-1")
    assert submission.video_id == 42
    assert submission.credits is None  # the lip-sync reply documents only video_id
    assert seen == ["t-0", "t-0", "t-1"]  # one request per call, with the caller's id


async def test_job_errors_are_not_retried() -> None:
    calls: list[int] = []

    async def generate(request: web.Request) -> web.Response:
        calls.append(1)
        return web.json_response({"ErrCode": 400017, "ErrMsg": "unsupported speaker"}, status=400)

    app = web.Application()
    app.router.add_post("/openapi/v2/video/lip_sync/generate", generate)
    async with serve_app(app) as url:
        config = ClientConfig(base_url=url, api_key="k", retry=FAST)
        async with PixverseClient(config) as client:
            with pytest.raises(JobError, match="unsupported speaker"):
                await client.generate({"source_video_id": 1}, "t-0")
    assert len(calls) == 1
