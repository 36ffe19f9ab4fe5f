"""The replay probe and `pixverse-batch doctor`, against the real simulator over loopback."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import wave
from collections.abc import Iterator

import pytest
from aiohttp import web

from pipeline.cli import main
from pipeline.client import ClientConfig, Exchange, PixverseClient
from pipeline.doctor import NO_REPLAY_ADVICE, Recorded, recording, run_doctor
from pipeline.errors import AuthError, TransientError
from pipeline.replay import probe_replay, probe_samples
from pipeline.simulator import Simulator, serve
from pipeline.simulator.config import TTS_SPEAKER
from tests.gateway_proxy import Call, Forward, gateway_proxy
from tests.harness import FAST_RETRY, REPO, fast_sim, sim_in_thread

SECRET = "sk-live-SECRET-doctor-0123456789"
UPLOAD = "/openapi/v2/media/upload"


def client_for(url: str, key: str = "sim-key") -> PixverseClient:
    return PixverseClient(ClientConfig(base_url=url, api_key=key, retry=FAST_RETRY))


def upload_traces(sim: Simulator) -> list[str | None]:
    return [r.trace_id for r in sim.ledger.requests_to(UPLOAD)]


def test_the_probe_samples_are_two_different_valid_one_second_wavs() -> None:
    first, second = probe_samples()
    assert first != second
    for data in (first, second):
        with wave.open(io.BytesIO(data)) as clip:
            assert (clip.getnchannels(), clip.getsampwidth()) == (1, 2)
            assert clip.getnframes() == clip.getframerate()  # 1 s


@pytest.mark.anyio
@pytest.mark.parametrize("reply_cache", [True, False])
async def test_the_probe_tells_a_replaying_gateway_from_one_that_does_not(
    reply_cache: bool,
) -> None:
    async with serve(fast_sim(reply_cache=reply_cache)) as sim, client_for(sim.url) as client:
        verdict = await probe_replay(client)
    assert verdict.replays is reply_cache
    assert ("(replayed)" in verdict.detail) is reply_cache
    traces = upload_traces(sim)
    assert len(traces) == 2
    assert traces[0] == traces[1]  # one trace id, re-used on purpose
    assert sim.ledger.requests_to("/openapi/v2/video/lip_sync/generate") == []
    assert len(sim.ledger.uploads) == (1 if reply_cache else 2)  # a replay stores nothing new


@pytest.mark.anyio
@pytest.mark.parametrize("reply_cache", [True, False])
@pytest.mark.parametrize("fault", ["transient_errors", "html_errors"])
async def test_a_transient_fault_starts_a_new_attempt_with_a_new_trace_id(
    fault: str, reply_cache: bool
) -> None:
    config = fast_sim(reply_cache=reply_cache)
    setattr(config, fault, 1)  # the first upload (A of attempt 1) gets it
    async with serve(config) as sim, client_for(sim.url) as client:
        verdict = await probe_replay(client)
    assert verdict.replays is reply_cache
    first, *again = upload_traces(sim)
    assert len(again) == 2
    assert again[0] == again[1] != first


@pytest.mark.anyio
@pytest.mark.parametrize("reply_cache", [True, False])
async def test_a_lost_reply_to_the_second_upload_is_not_taken_for_a_verdict(
    reply_cache: bool,
) -> None:
    """B is processed, then a proxy answers 504: attempt 1 proves nothing, attempt 2 decides."""

    async def lose_second_upload(call: Call, forward: Forward) -> web.Response:
        reply = await forward()
        if call.path == UPLOAD and call.number == 2:
            return web.json_response({"message": "Endpoint request timed out"}, status=504)
        return reply

    async with (
        serve(fast_sim(reply_cache=reply_cache)) as sim,
        gateway_proxy(sim.url, lose_second_upload) as proxy,
        client_for(proxy.url) as client,
    ):
        verdict = await probe_replay(client)
    assert verdict.replays is reply_cache
    traces = upload_traces(sim)
    assert len(traces) == 4
    assert traces[0] == traces[1] != traces[2] == traces[3]


@pytest.mark.anyio
async def test_a_probe_that_cannot_complete_raises_the_transient_error() -> None:
    async with serve(fast_sim(transient_errors=100)) as sim, client_for(sim.url) as client:
        with pytest.raises(TransientError):
            await probe_replay(client)
    assert len(upload_traces(sim)) == FAST_RETRY.attempts  # one try of A per attempt


@pytest.mark.anyio
async def test_a_refused_key_propagates_from_the_probe_at_once() -> None:
    async with serve(fast_sim()) as sim, client_for(sim.url, key="wrong") as client:
        with pytest.raises(AuthError):
            await probe_replay(client)
    assert len(sim.ledger.requests) == 1


@pytest.fixture
def sim_key_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    with sim_in_thread(fast_sim(api_keys=frozenset({"sim-key", SECRET}))) as sim:
        monkeypatch.setenv("PIXVERSE_API_KEY", SECRET)
        monkeypatch.setenv("PIXVERSE_BASE_URL", sim.url)
        yield sim


def test_doctor_passes_on_a_replaying_gateway_and_generates_nothing(
    sim_key_env: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    verdicts = {line.split()[1]: line.split()[0] for line in lines[:-1]}
    names = ("key", "balance", "speakers", "replay", "envelope", "clock")
    assert verdicts == dict.fromkeys(names, "ok")
    assert "15 speakers" in out
    assert "HTTP 200, keys ErrCode/ErrMsg/Resp, ErrCode 500008" in out
    assert lines[-1] == "doctor: everything run relies on holds"
    assert SECRET not in out + err
    assert sim_key_env.ledger.requests_to("/openapi/v2/video/lip_sync/generate") == []
    assert sim_key_env.ledger.generations == {}


def test_doctor_without_replay_exits_4_and_says_what_run_will_do(
    sim_key_env: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    sim_key_env.config.reply_cache = False
    assert main(["doctor"]) == 4
    out = capsys.readouterr().out
    assert any(line.startswith("FAIL  replay") for line in out.splitlines())
    assert NO_REPLAY_ADVICE in out
    assert out.splitlines()[-1] == "doctor: run cannot rely on: replay"
    assert sim_key_env.ledger.requests_to("/openapi/v2/video/lip_sync/generate") == []


def test_doctor_says_which_speaker_list_answered(
    sim_key_env: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    sim_key_env.config.speaker_paths = frozenset({TTS_SPEAKER})  # only the newer path
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checks"]["speakers"]["path"] == "/video/tts_speaker"
    assert main(["doctor"]) == 0
    assert "15 speakers from /openapi/v2/video/tts_speaker" in capsys.readouterr().out


def test_doctor_json_is_one_object(
    sim_key_env: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    sim_key_env.config.reply_cache = False
    assert main(["doctor", "--json"]) == 4
    report = json.loads(capsys.readouterr().out)
    assert report["healthy"] is False
    assert report["checks"]["replay"]["replays"] is False
    assert report["checks"]["replay"]["advice"] == NO_REPLAY_ADVICE
    assert report["checks"]["envelope"]["http_status"] == 200
    assert report["checks"]["envelope"]["casing"] == "ErrCode/ErrMsg/Resp"
    assert report["checks"]["envelope"]["err_code"] == 500008
    assert report["checks"]["speakers"]["count"] == 15
    assert report["checks"]["balance"]["spendable"] == 10_000


def test_doctor_with_a_refused_key_exits_4_and_stops_asking(
    sim_key_env: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor", "--api-key", "sk-wrong-key"]) == 4
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("FAIL  key")
    assert "skip  replay" in out
    assert "sk-wrong-key" not in out + err
    assert len(sim_key_env.ledger.requests) == 1  # every other call would be refused too


def test_doctor_without_a_key_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PIXVERSE_API_KEY", raising=False)
    assert main(["doctor", "--base-url", "http://127.0.0.1:9"]) == 2
    assert "PIXVERSE_API_KEY" in capsys.readouterr().err


@pytest.mark.anyio
async def test_doctor_reads_a_lower_case_envelope_on_http_500() -> None:
    """The envelope check reports what it saw: here HTTP 500 and the lower-case keys."""

    async def lower_case_not_found(call: Call, forward: Forward) -> web.Response:
        if call.path != "/video/result":
            return await forward()
        body = {"err_code": 500008, "err_msg": "requested data not found", "resp": None}
        return web.json_response(body, status=500)

    async with serve(fast_sim()) as sim, gateway_proxy(sim.url, lower_case_not_found) as proxy:
        diagnosis, _ = await run_doctor(_config(proxy.url))
    envelope = next(c for c in diagnosis.checks if c.name == "envelope")
    assert envelope.verdict == "ok"
    assert envelope.data == {
        "http_status": 500,
        "casing": "err_code/err_msg/resp",
        "err_code": 500008,
    }
    assert "HTTP 500, keys err_code/err_msg/resp" in envelope.detail
    assert diagnosis.healthy


@pytest.mark.anyio
async def test_doctor_warns_about_a_clock_far_from_the_servers() -> None:
    async with serve(fast_sim()) as sim:
        diagnosis, _ = await run_doctor(_config(sim.url), clock=lambda: time.time() - 120)
    clock = next(c for c in diagnosis.checks if c.name == "clock")
    assert clock.verdict == "warn"
    assert "ahead of" in clock.detail
    assert diagnosis.healthy  # the pipeline does not rely on the clock


def test_sim_no_replay_flag_serves_a_gateway_without_replay(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """As a user would try it: `sim --no-replay` in one process, `doctor` in this one."""
    sim = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "sim", "--port", "0", "--no-replay"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None
        url = sim.stdout.readline().strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")
        args = ["--base-url", url, "--api-key", "sim-key", "--json"]
        assert main(["doctor", *args]) == 4
        assert json.loads(capsys.readouterr().out)["checks"]["replay"]["replays"] is False
    finally:
        sim.terminate()
        sim.wait(10)
        if sim.stdout is not None:
            sim.stdout.close()


def _config(url: str) -> ClientConfig:
    return ClientConfig(base_url=url, api_key="sim-key", retry=FAST_RETRY)


def test_a_recording_never_holds_the_key_even_when_a_server_echoes_it() -> None:
    exchange = Exchange(
        method="GET",
        path="/openapi/v2/account/balance",
        query={},
        request_headers={"Ai-trace-id": "t"},
        status=401,
        headers={"Content-Type": "application/json"},
        body=json.dumps({"ErrCode": 400012, "ErrMsg": f"invalid API-KEY {SECRET}"}).encode(),
    )
    saved = recording(Recorded(exchange, at=0.0), secret=SECRET)
    assert SECRET not in json.dumps(saved)
    assert saved["response"]["body"]["ErrMsg"] == "invalid API-KEY ***"
