"""Recorded replies, replayed against the real client: does it read them as the contract says?

`tests/recordings/` holds JSON files in the format of `pixverse-batch doctor --record`: the
documented examples of pixverse-api.md (`"source": "documented example"`) and whatever a user
records from their own account. Each file is served by a tiny aiohttp server at its recorded
method and path, and the client call that would hit it (upload, generate, status, speakers,
balance) must give what the contract says: the value in `Resp`, or the right error class from
`pipeline.errors`. The expectation is a file's `expect`, else `derive()` works it out from the
contract's rules. A recording the client reads differently fails its own test, named by file.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from pipeline import errors
from pipeline.cli import main
from pipeline.client import API_PREFIX, ClientConfig, PixverseClient
from pipeline.replay import probe_samples
from pipeline.retry import RetryPolicy
from tests.harness import REPO, fast_sim, sim_in_thread

FOLDER = REPO / "tests" / "recordings"
RECORDINGS = sorted(FOLDER.rglob("*.json"))
QUICK = RetryPolicy(attempts=2, max_elapsed=5, initial_wait=0.001, max_wait=0.002)
SECRET = "sk-live-SECRET-recorded-0123456789"
# Served by aiohttp itself, or meaningless once the body is re-encoded.
_UNSERVED = frozenset(
    {"content-length", "content-type", "content-encoding", "transfer-encoding", "date", "server"}
)

AUTH_CODES = {400012, 500020}
BUSY_CODES = {500069, 500100, 99999}
JOB_CODES = {500008, 500054, 500063, 500064}


def _lenient_int(value: Any) -> int | None:
    """pixverse-api.md: an integer, or a string of digits, means that number."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def call_kind(method: str, path: str) -> str:
    """Which client call would have sent this request."""
    path = path[path.find(API_PREFIX) :].removeprefix(API_PREFIX)
    kinds = {
        ("POST", "/media/upload"): "upload",
        ("POST", "/video/lip_sync/generate"): "generate",
        ("GET", "/video/lip_sync/tts_list"): "speakers",
        ("GET", "/video/tts_speaker"): "speakers",
        ("GET", "/account/balance"): "balance",
    }
    if method == "GET" and path.startswith("/video/result/"):
        return "status"
    return kinds.get((method, path), "unknown")


def derive(recording: dict[str, Any]) -> dict[str, Any]:
    """What the contract says the client makes of this reply (pixverse-api.md, "Transport",
    "Error codes" and each endpoint's `Resp`)."""
    reply = recording["response"]
    status, body = reply["status"], reply["body"]
    if reply["body_kind"] != "json" or not isinstance(body, dict):
        # not JSON: a transport error; a bad key stays a bad key, and an HTML 404 means the
        # base URL does not serve the API
        if reply["body_kind"] != "json" and status in (401, 404):
            return {"error": "AuthError" if status == 401 else "EndpointError"}
        return {"error": "TransportError"}
    code = _lenient_int(body["ErrCode"] if "ErrCode" in body else body.get("err_code"))
    coded = {} if code is None else {"err_code": code}
    if status == 401:
        return {"error": "AuthError", **coded}
    if code is None:
        return {"error": "TransportError"}  # JSON, but a proxy's, not PixVerse's envelope
    if code == 0 and 200 <= status < 300:
        resp = body["Resp"] if "Resp" in body else body.get("resp")
        value = _value(call_kind(**_request(recording)), resp) if isinstance(resp, dict) else None
        return {"error": "ApiError"} if value is None else {"value": value}
    if code in AUTH_CODES:
        return {"error": "AuthError", **coded}
    if code == 500090:
        return {"error": "CreditsError", **coded}
    if code == 500044:
        return {"error": "SlotLimitError", **coded}
    if code in BUSY_CODES or status == 429:
        return {"error": "ServerBusyError", **coded}
    if 400000 <= code < 500000 or code in JOB_CODES:
        return {"error": "JobError", **coded}
    return {"error": "ApiError", **coded}  # a code the contract does not list: some refusal


def _request(recording: dict[str, Any]) -> dict[str, str]:
    return {"method": recording["request"]["method"], "path": recording["request"]["path"]}


def _value(kind: str, resp: dict[str, Any]) -> dict[str, Any] | None:
    """The fields a successful `Resp` must give the client, or None if it lacks them."""
    if kind == "upload":
        media_id = _lenient_int(resp.get("media_id"))
        return (
            None
            if media_id is None
            else {"media_id": media_id, "media_type": resp.get("media_type")}
        )
    if kind == "generate":
        video_id = _lenient_int(resp.get("video_id"))
        credits = resp.get("credits")
        credits = credits if isinstance(credits, int) else None  # optional: the price model
        return None if video_id is None else {"video_id": video_id, "credits": credits}
    if kind == "status":
        state = _lenient_int(resp.get("status"))
        if state is None:
            return {}
        return {"status": state, **({"url": resp.get("url")} if state == 1 else {})}
    if kind == "speakers":
        data = resp.get("data") or []
        return {"speakers": [[str(s["speaker_id"]), str(s.get("name", ""))] for s in data]}
    if kind == "balance":
        monthly, package = resp.get("credit_monthly"), resp.get("credit_package")
        if _lenient_int(monthly) is None or _lenient_int(package) is None:
            return None
        return {"spendable": int(monthly) + int(package)}
    return None


# One send with a fixed trace id: the test only reads the reply.
TRACE_ID = "0b8e6bd5-6c47-4b2a-9d1e-3f0a7c2e4d51"


@asynccontextmanager
async def serving(recording: dict[str, Any], hits: list[str]) -> AsyncIterator[str]:
    """A server answering the recorded request with the recorded reply, 404 to anything else."""
    reply = recording["response"]
    body = reply["body"]
    data = (json.dumps(body) if reply["body_kind"] == "json" else str(body)).encode()
    headers = {k: v for k, v in reply["headers"].items() if k.lower() not in _UNSERVED}
    content_type = next(
        (v for k, v in reply["headers"].items() if k.lower() == "content-type"), "text/plain"
    ).split(";")[0]

    async def answer(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(
            status=reply["status"], body=data, headers=headers, content_type=content_type
        )

    path = recording["request"]["path"]
    app = web.Application()
    app.router.add_route(recording["request"]["method"], path[path.find(API_PREFIX) :], answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def _drive(client: PixverseClient, kind: str, path: str, scratch: Path) -> dict[str, Any]:
    """Make the client call `kind`, as the pipeline does; return what it read."""
    if kind == "upload":
        media = scratch / "probe.wav"
        media.write_bytes(probe_samples()[0])
        sent = await client.upload(media)
        return {"media_id": sent.media_id, "media_type": sent.media_type}
    if kind == "generate":
        body = {"video_media_id": 365829416727552, "audio_media_id": 365829416727553}
        submission = await client.generate(body, TRACE_ID)
        return {"video_id": submission.video_id, "credits": submission.credits}
    if kind == "status":
        status = await client.status(int(path.rsplit("/", 1)[-1]))
        return {"status": status.status, **({"url": status.url} if status.status == 1 else {})}
    if kind == "speakers":
        return {"speakers": [[s.speaker_id, s.name] for s in await client.speakers()]}
    if kind == "balance":
        return {"spendable": (await client.balance()).spendable}
    raise AssertionError(f"no client call sends {path}")


async def replay_recording(file: Path, scratch: Path) -> None:
    """Serve `file` and check the client reads it as its `expect` (or the contract) says."""
    name = file.relative_to(FOLDER) if file.is_relative_to(FOLDER) else file.name
    recording = json.loads(file.read_text(encoding="utf-8"))
    expect = recording.get("expect") or derive(recording)
    kind = call_kind(**_request(recording))
    hits: list[str] = []
    raised: errors.ApiError | None = None
    async with serving(recording, hits) as url:
        config = ClientConfig(base_url=url, api_key="recording-key", retry=QUICK)
        async with PixverseClient(config) as client:
            try:
                got = await _drive(client, kind, recording["request"]["path"], scratch)
            except errors.ApiError as exc:
                got, raised = {}, exc
    assert hits, f"{name}: the client never asked for {recording['request']['path']}"
    if raised is not None:
        wanted = getattr(errors, expect.get("error", ""), None)
        assert wanted is not None, f"{name}: expected {expect}, the client raised {raised!r}"
        assert isinstance(raised, wanted), f"{name}: expected {wanted.__name__}, got {raised!r}"
        if "err_code" in expect:
            assert raised.err_code == expect["err_code"], f"{name}: {raised!r}"
        return
    assert "value" in expect, f"{name}: expected {expect}, the client read {got}"
    value = expect["value"]
    if kind == "speakers":  # the client may page on; the recorded page comes first
        got["speakers"] = got["speakers"][: len(value["speakers"])]
    assert got == {**got, **value}, f"{name}: expected {value}, the client read {got}"


@pytest.mark.anyio
@pytest.mark.parametrize("file", RECORDINGS, ids=[str(p.relative_to(FOLDER)) for p in RECORDINGS])
async def test_the_client_reads_each_recording_as_the_contract_says(
    file: Path, tmp_path: Path
) -> None:
    await replay_recording(file, tmp_path)


@pytest.mark.parametrize("file", RECORDINGS, ids=[str(p.relative_to(FOLDER)) for p in RECORDINGS])
def test_each_documented_example_is_marked_and_agrees_with_the_contract_rules(file: Path) -> None:
    recording = json.loads(file.read_text(encoding="utf-8"))
    if "expect" in recording:
        assert derive(recording) == recording["expect"], file.name
    if file.parent.name == "documented-examples":
        assert recording["source"] == "documented example", file.name


def test_the_documented_examples_cover_the_contract() -> None:
    stems = {p.stem for p in (FOLDER / "documented-examples").glob("*.json")}
    assert stems >= {
        "upload",
        "generate-without-credits",
        "status-5-generating",
        "status-1-succeeded",
        "tts-list",
        "balance",
        "error-500044-concurrency",
        "error-400017-invalid-parameter",
        "error-500008-not-found",
        "error-http-500-lower-case",
        "error-401-invalid-account",
    }


@pytest.mark.anyio
async def test_a_recording_the_client_reads_otherwise_fails_naming_the_file(
    tmp_path: Path,
) -> None:
    """The checker can fail: a 500044 said to mean a plain job failure is caught."""
    recording = json.loads(
        (FOLDER / "documented-examples" / "error-500044-concurrency.json").read_text()
    )
    recording["expect"] = {"error": "JobError", "err_code": 500044}
    wrong = tmp_path / "wrong-500044.json"
    wrong.write_text(json.dumps(recording))
    with pytest.raises(AssertionError, match=r"wrong-500044\.json: expected JobError"):
        await replay_recording(wrong, tmp_path)


def test_doctor_record_writes_recordings_this_test_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mine"
    with sim_in_thread(fast_sim(api_keys=frozenset({SECRET}))) as sim:
        monkeypatch.setenv("PIXVERSE_API_KEY", SECRET)
        args = ["doctor", "--base-url", sim.url, "--record", str(folder)]
        assert main(args) == 0
        sent = len(sim.ledger.requests)
    assert f"recorded {sent} exchanges" in capsys.readouterr().err
    files = sorted(folder.glob("*.json"))
    assert len(files) == sent
    assert [call_kind(**_request(json.loads(f.read_text()))) for f in files] == [
        "balance",
        "speakers",
        "upload",
        "upload",
        "status",
    ]
    for file in files:
        text = file.read_text(encoding="utf-8")
        assert SECRET not in text, file.name
        recording = json.loads(text)
        assert "api-key" not in {k.lower() for k in recording["request"]["headers"]}, file.name
        assert recording["request"]["headers"]["Ai-trace-id"], file.name
        anyio.run(replay_recording, file, tmp_path)
