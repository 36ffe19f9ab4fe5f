"""The PixVerse simulator, driven over loopback with a plain aiohttp client.

Each test starts its own simulator (a free port, `time_scale` well under 1, so a "20 s"
generation takes a few tens of milliseconds) and asserts on replies and on the ledger.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import av
import pytest

from pipeline.simulator import SimConfig, Simulator, canonical_body, serve
from tests.media_factory import make_audio, make_video

pytestmark = pytest.mark.anyio

KEY = "sim-key"
KNOWN_VIDEO = 391504857968062
GENERATE = "/openapi/v2/video/lip_sync/generate"
UPLOAD = "/openapi/v2/media/upload"
BALANCE = "/openapi/v2/account/balance"
TTS_LIST = "/openapi/v2/video/lip_sync/tts_list"
FAST = 0.002  # real seconds per simulated second: a 20 s generation takes 40 ms
DOCUMENTED_SPEAKERS = [
    ("7", "Harper"),
    ("8", "Ava"),
    ("3", "Isabella"),
    ("9", "Sophia"),
    ("1", "Emily"),
    ("5", "Chloe"),
    ("10", "Julia"),
    ("11", "Mason"),
    ("12", "Jack"),
    ("4", "Liam"),
    ("2", "James"),
    ("13", "Oliver"),
    ("6", "Adrian"),
    ("14", "Ethan"),
    ("Auto", "Auto"),
]


# -- a thin client


@dataclass
class Api:
    session: aiohttp.ClientSession
    sim: Simulator

    async def call(
        self,
        method: str,
        path: str,
        *,
        trace: str | None = None,
        key: str | None = KEY,
        **kwargs: Any,
    ) -> tuple[int, dict[str, Any]]:
        """(HTTP status, parsed envelope). A fresh trace id unless one is given."""
        headers = {"Ai-trace-id": trace or str(uuid.uuid4())}
        if key is not None:
            headers["API-KEY"] = key
        async with self.session.request(
            method, self.sim.url + path, headers=headers, **kwargs
        ) as reply:
            return reply.status, json.loads(await reply.read())

    async def generate(self, body: dict[str, Any], trace: str | None = None) -> dict[str, Any]:
        return (await self.call("POST", GENERATE, json=body, trace=trace))[1]

    async def status(self, video_id: int, trace: str | None = None) -> dict[str, Any]:
        envelope = (await self.call("GET", f"/openapi/v2/video/result/{video_id}", trace=trace))[1]
        assert envelope["ErrCode"] == 0, envelope
        resp: dict[str, Any] = envelope["Resp"]
        return resp

    async def wait_terminal(self, video_id: int) -> dict[str, Any]:
        with anyio.fail_after(5):
            # Polling is the protocol: the server has no way to notify the client.
            while (resp := await self.status(video_id))["status"] == 5:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        return resp

    async def balance(self) -> tuple[int, int]:
        resp = (await self.call("GET", BALANCE))[1]["Resp"]
        return resp["credit_monthly"], resp["credit_package"]

    async def upload(self, path: Path, name: str | None = None) -> tuple[int, dict[str, Any]]:
        form = aiohttp.FormData()
        data = await anyio.Path(path).read_bytes()
        form.add_field("file", data, filename=name or path.name)
        return await self.call("POST", UPLOAD, data=form)


@pytest.fixture
def config() -> SimConfig:
    return SimConfig(time_scale=FAST)


@pytest.fixture
async def api(config: SimConfig) -> AsyncIterator[Api]:
    async with serve(config) as sim, aiohttp.ClientSession() as session:
        yield Api(session, sim)


def tts(content: str = "Hello there", speaker: str = "1") -> dict[str, Any]:
    return {
        "source_video_id": KNOWN_VIDEO,
        "lip_sync_tts_speaker_id": speaker,
        "lip_sync_tts_content": content,
    }


# -- transport: auth, trace id, envelope


async def test_bad_or_missing_key_is_401_with_400012(api: Api) -> None:
    assert await api.call("GET", BALANCE, key="wrong") == (
        401,
        {"ErrCode": 400012, "ErrMsg": "invalid API-KEY", "Resp": None},
    )
    status, envelope = await api.call("POST", GENERATE, key=None, json=tts())
    assert (status, envelope["ErrCode"]) == (401, 400012)
    assert api.sim.ledger.generations == {}


async def test_missing_trace_id_is_400011_and_header_case_is_ignored(api: Api) -> None:
    url = api.sim.url + BALANCE
    async with api.session.get(url, headers={"API-KEY": KEY}) as reply:
        assert (reply.status, (await reply.json())["ErrCode"]) == (400, 400011)
    async with api.session.get(url, headers={"API-KEY": KEY, "AI-TRACE-ID": "t-1"}) as reply:
        assert (reply.status, (await reply.json())["ErrCode"]) == (200, 0)
    assert api.sim.ledger.requests[-1].trace_id == "t-1"


async def test_ledger_records_every_request_without_the_key(api: Api) -> None:
    await api.call("GET", BALANCE, trace="a")
    headers = {"API-KEY": KEY, "Ai-trace-id": "b"}
    async with api.session.get(api.sim.url + "/openapi/v2/no/such/endpoint", headers=headers):
        pass
    records = api.sim.ledger.requests
    assert [(r.method, r.path, r.trace_id, r.http_status) for r in records] == [
        ("GET", BALANCE, "a", 200),
        ("GET", "/openapi/v2/no/such/endpoint", "b", 404),
    ]
    assert KEY not in repr(api.sim.ledger)


# -- uploads


async def test_upload_real_media_returns_media_ids(api: Api, tmp_path: Path) -> None:
    files = [
        make_audio(tmp_path / "voice.wav", seconds=1.5),
        make_audio(tmp_path / "voice.mp3", seconds=1.0),
        make_video(tmp_path / "face.mp4"),
    ]
    replies = [await api.upload(path) for path in files]

    assert [(status, env["ErrCode"], env["Resp"]["media_type"]) for status, env in replies] == [
        (200, 0, "audio"),
        (200, 0, "audio"),
        (200, 0, "video"),
    ]
    ids = [env["Resp"]["media_id"] for _, env in replies]
    assert all(isinstance(i, int) and 15 <= len(str(i)) <= 18 for i in ids)
    assert len(set(ids)) == 3
    uploads = api.sim.ledger.uploads
    assert [(u.media_id, u.filename) for u in uploads] == [
        (i, p.name) for i, p in zip(ids, files, strict=True)
    ]
    assert uploads[0].sha256 == hashlib.sha256(files[0].read_bytes()).hexdigest()
    assert uploads[0].duration == pytest.approx(1.5)


async def test_upload_refusals(api: Api, config: SimConfig, tmp_path: Path) -> None:
    wav = make_audio(tmp_path / "voice.wav", seconds=1.0)
    garbage = tmp_path / "broken.mp4"
    garbage.write_bytes(b"not a video at all" * 10)

    unsupported = await api.upload(wav, name="voice.ogg")
    invalid = await api.upload(garbage)
    too_long = await api.upload(make_audio(tmp_path / "long.wav", seconds=31))
    url_form = aiohttp.FormData(
        {"file_url": "https://example.com/a.mp4"}, default_to_multipart=True
    )
    by_url = await api.call("POST", UPLOAD, data=url_form)
    config.max_upload_bytes = 1000
    too_big = await api.upload(wav)

    for status, envelope in (unsupported, invalid, too_long, by_url, too_big):
        assert (status, envelope["ErrCode"]) == (400, 400017), envelope
    assert "invalid media" in invalid[1]["ErrMsg"]
    assert "file_url" in by_url[1]["ErrMsg"]
    assert api.sim.ledger.uploads == []


# -- generate: refusals


async def _media_ids(api: Api, tmp_path: Path) -> tuple[int, int]:
    """(video media id, audio media id) of two fresh uploads."""
    video = (await api.upload(make_video(tmp_path / "face.mp4")))[1]["Resp"]["media_id"]
    audio = (await api.upload(make_audio(tmp_path / "voice.wav", seconds=1.0)))[1]["Resp"][
        "media_id"
    ]
    return video, audio


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"source_video_id": KNOWN_VIDEO}, "neither audio_media_id nor"),
        ({"lip_sync_tts_speaker_id": "1", "lip_sync_tts_content": "hi"}, "is required"),
        ({**tts(), "video_media_id": "VIDEO"}, "only one of"),
        (
            {**tts(), "source_video_id": 123456789012345},
            "a matching source_video_id. Please re-upload",
        ),
        (
            {**tts(), "source_video_id": None, "video_media_id": 1},
            "a matching video_media_id. Please re-upload",
        ),
        ({**tts(), "source_video_id": None, "video_media_id": "AUDIO"}, "not 'video'"),
        (
            {"source_video_id": KNOWN_VIDEO, "audio_media_id": 1},
            "a matching audio_media_id. Please re-upload",
        ),
        ({"source_video_id": KNOWN_VIDEO, "audio_media_id": "VIDEO"}, "not 'audio'"),
        ({**tts(), "audio_media_id": "AUDIO"}, "not both"),
        (tts(speaker="15"), "unsupported lip_sync_tts_speaker_id"),
        (tts(content="x" * 201), "longer than 200 characters"),
        (tts(content="this is Forbidden talk"), "content rules"),
    ],
)
async def test_generate_400017_cases(
    api: Api, tmp_path: Path, body: dict[str, Any], message: str
) -> None:
    video, audio = await _media_ids(api, tmp_path)
    names = {"VIDEO": video, "AUDIO": audio}
    body = {k: names.get(v, v) if isinstance(v, str) else v for k, v in body.items()}

    status, envelope = await api.call("POST", GENERATE, json=body)

    assert (status, envelope["ErrCode"]) == (400, 400017), envelope
    assert message in envelope["ErrMsg"]
    assert api.sim.ledger.generations == {}
    assert api.sim.ledger.credits_charged == 0


async def test_accepted_inputs_just_inside_the_rules(api: Api, tmp_path: Path) -> None:
    video, audio = await _media_ids(api, tmp_path)
    bodies = [
        tts(speaker="auto"),
        tts(speaker="AUTO", content="x" * 200),
        {"video_media_id": video, "audio_media_id": audio},
        {"source_video_id": KNOWN_VIDEO, "audio_media_id": audio},
    ]
    for body in bodies:
        assert (await api.generate(body))["ErrCode"] == 0
    assert len(api.sim.ledger.generations) == 4


@pytest.mark.parametrize(
    "payload",
    [
        {"data": b"{not json"},
        {"json": [tts()]},
        {"json": {**tts(), "source_video_id": "391504857968062"}},
        {"json": {**tts(), "source_video_id": True}},
        {"json": {**tts(), "lip_sync_tts_content": 12}},
    ],
)
async def test_generate_wrong_types_are_400013(api: Api, payload: dict[str, Any]) -> None:
    status, envelope = await api.call("POST", GENERATE, **payload)
    assert (status, envelope["ErrCode"]) == (400, 400013)
    assert api.sim.ledger.generations == {}


async def test_no_permission_key_gets_500020(api: Api, config: SimConfig) -> None:
    config.api_keys = frozenset({KEY, "viewer"})
    config.no_permission_keys = frozenset({"viewer"})
    status, envelope = await api.call("POST", GENERATE, key="viewer", json=tts())
    assert (status, envelope["ErrCode"]) == (200, 500020)
    assert (await api.generate(tts()))["ErrCode"] == 0


async def test_forget_media_makes_every_media_id_unknown(
    api: Api, config: SimConfig, tmp_path: Path
) -> None:
    video, audio = await _media_ids(api, tmp_path)
    config.forget_media = True
    envelope = await api.generate({"video_media_id": video, "audio_media_id": audio})
    assert (envelope["ErrCode"], envelope["ErrMsg"]) == (
        400017,
        "couldn\u2019t find a matching video_media_id. Please re-upload your video and try again.",
    )


# -- concurrency, credits, outcomes


async def test_concurrency_limit_answers_500044_and_peak_is_recorded(
    api: Api, config: SimConfig
) -> None:
    config.concurrency_limit = 2
    config.generation_seconds = 50  # 100 ms
    first = await api.generate(tts("one"))
    await api.generate(tts("two"))

    status, refused = await api.call("POST", GENERATE, json=tts("three"))

    assert (status, refused["ErrCode"]) == (200, 500044)
    assert api.sim.ledger.peak_concurrent == 2
    assert len(api.sim.ledger.generations) == 2
    await api.wait_terminal(first["Resp"]["video_id"])
    assert (await api.generate(tts("three")))["ErrCode"] == 0
    assert api.sim.ledger.peak_concurrent == 2


async def test_generation_past_ten_minutes_frees_its_slot(api: Api, config: SimConfig) -> None:
    config.concurrency_limit = 1
    config.generation_seconds = 100_000  # never finishes during the test
    config.time_scale = 0.0005  # the 10-minute slot rule fires after 300 ms
    first = (await api.generate(tts("one")))["Resp"]["video_id"]
    assert (await api.generate(tts("two")))["ErrCode"] == 500044

    await anyio.sleep(0.4)

    assert (await api.generate(tts("two")))["ErrCode"] == 0
    assert (await api.status(first))["status"] == 5


async def test_price_model_charges_and_500090_when_short(
    api: Api, config: SimConfig, tmp_path: Path
) -> None:
    config.credit_monthly = 10
    config.credit_package = 10
    config.send_credits = True  # the replies say what each generation cost
    _, audio = await api.upload(make_audio(tmp_path / "voice.wav", seconds=1.5))
    audio_id = audio["Resp"]["media_id"]

    # 16 UTF-8 bytes of script: two 15-byte chunks, 8 credits, all from the monthly credits.
    first = await api.generate(tts("é" * 8))
    # 1.5 s of audio: 2 seconds rounded up, 8 credits: 2 monthly + 6 package.
    second = await api.generate({"source_video_id": KNOWN_VIDEO, "audio_media_id": audio_id})
    short = await api.call("POST", GENERATE, json=tts("x" * 16))

    assert (first["Resp"]["credits"], second["Resp"]["credits"]) == (8, 8)
    assert short == (200, {"ErrCode": 500090, "ErrMsg": "insufficient balance", "Resp": None})
    assert await api.balance() == (0, 4)
    assert api.sim.ledger.credits_charged == 16
    assert (await api.generate(tts("x" * 15)))["Resp"]["credits"] == 4


@pytest.mark.parametrize(
    ("knob", "terminal"), [("moderation_probability", 7), ("fail_probability", 8)]
)
async def test_moderated_or_failed_generation_is_refunded(
    api: Api, config: SimConfig, knob: str, terminal: int
) -> None:
    setattr(config, knob, 1.0)
    video_id = (await api.generate(tts("x" * 30)))["Resp"]["video_id"]
    assert await api.balance() == (10_000 - 8, 0)

    resp = await api.wait_terminal(video_id)

    assert (resp["status"], resp["url"]) == (terminal, "")
    assert await api.balance() == (10_000, 0)
    assert (api.sim.ledger.credits_charged, api.sim.ledger.credits_refunded) == (8, 8)
    assert api.sim.ledger.generations[video_id].status == terminal


async def test_outcomes_are_reproducible_from_the_seed() -> None:
    async def outcomes() -> list[int]:
        config = SimConfig(time_scale=FAST, seed=7, fail_probability=0.5, concurrency_limit=20)
        async with serve(config) as sim, aiohttp.ClientSession() as session:
            api = Api(session, sim)
            for n in range(12):
                await api.generate(tts(f"line {n}"))
            return [g.outcome for g in sim.ledger.generations.values()]

    first = await outcomes()
    assert first == await outcomes()
    assert set(first) == {1, 8}


async def test_generation_jitter_spreads_durations_reproducibly() -> None:
    async def durations(jitter: float) -> list[float]:
        config = SimConfig(time_scale=FAST, seed=3, generation_jitter=jitter, concurrency_limit=20)
        async with serve(config) as sim, aiohttp.ClientSession() as session:
            api = Api(session, sim)
            for n in range(10):
                await api.generate(tts(f"line {n}"))
            return [g.seconds for g in sim.ledger.generations.values()]

    nominal = 20.0 * FAST
    assert set(await durations(0.0)) == {nominal}
    spread = await durations(0.5)
    assert spread == await durations(0.5)
    assert all(0.5 * nominal <= d <= 1.5 * nominal for d in spread)
    assert max(spread) - min(spread) > 0.2 * nominal


# -- status and downloads


async def test_status_goes_from_5_to_1_with_a_signed_link(api: Api) -> None:
    video_id = (await api.generate(tts()))["Resp"]["video_id"]
    running = await api.status(video_id)
    assert (running["status"], running["url"], running["size"]) == (5, "", 0)

    done = await api.wait_terminal(video_id)

    assert done["status"] == 1
    assert set(done) == {
        "id", "status", "url", "size", "outputWidth", "outputHeight", "create_time",
        "modify_time", "seed", "prompt", "negative_prompt", "resolution_ratio", "style",
    }  # fmt: skip
    assert done["id"] == video_id
    assert "sig=" in done["url"]
    assert done["size"] > 1000


async def test_unknown_video_is_500008_and_known_videos_are_finished(api: Api) -> None:
    status, envelope = await api.call("GET", "/openapi/v2/video/result/123456789012345")
    assert (status, envelope["ErrCode"], envelope["ErrMsg"]) == (
        200,
        500008,
        "requested data not found",
    )
    assert (await api.status(KNOWN_VIDEO))["status"] == 1


async def test_download_is_a_playable_mp4_recorded_in_the_ledger(api: Api) -> None:
    ids = [(await api.generate(tts(f"line {n}")))["Resp"]["video_id"] for n in range(2)]
    bodies = []
    for video_id in ids:
        done = await api.wait_terminal(video_id)
        async with api.session.get(done["url"]) as reply:
            assert reply.status == 200
            assert reply.content_length == done["size"]
            bodies.append(await reply.read())

    assert bodies[0] != bodies[1]
    for video_id, body in zip(ids, bodies, strict=True):
        assert len(body) == (await api.status(video_id))["size"]
        assert api.sim.ledger.served_downloads[video_id] == hashlib.sha256(body).hexdigest()
        with av.open(io.BytesIO(body), mode="r") as container:
            assert str(video_id) in container.metadata["comment"]
            assert len(list(container.decode(video=0))) == 12


async def test_expired_or_forged_link_is_403_and_a_new_poll_signs_a_new_one(
    api: Api, config: SimConfig
) -> None:
    config.link_ttl_seconds = 100  # 200 ms: room for a fetch on a loaded machine
    video_id = (await api.generate(tts()))["Resp"]["video_id"]
    url = (await api.wait_terminal(video_id))["url"]
    async with api.session.get(url.replace("sig=", "sig=0")) as forged:
        assert forged.status == 403

    await anyio.sleep(0.3)

    async with api.session.get(url) as expired:
        assert expired.status == 403
    async with api.session.get((await api.status(video_id))["url"]) as fresh:
        assert fresh.status == 200
    assert len(api.sim.ledger.generations) == 1


async def test_truncated_download_is_cut_short_and_not_recorded(
    api: Api, config: SimConfig
) -> None:
    video_id = (await api.generate(tts()))["Resp"]["video_id"]
    url = (await api.wait_terminal(video_id))["url"]
    config.truncate_downloads = 1

    async with api.session.get(url) as reply:
        with pytest.raises(aiohttp.ClientPayloadError):
            await reply.read()

    assert video_id not in api.sim.ledger.served_downloads
    async with api.session.get(url) as reply:
        assert len(await reply.read()) == reply.content_length
    assert video_id in api.sim.ledger.served_downloads


# -- the reply cache


async def test_status_reusing_a_trace_id_keeps_its_first_answer(api: Api) -> None:
    video_id = (await api.generate(tts()))["Resp"]["video_id"]
    assert (await api.status(video_id, trace="poll"))["status"] == 5

    assert (await api.wait_terminal(video_id))["status"] == 1
    assert (await api.status(video_id, trace="poll"))["status"] == 5
    assert api.sim.ledger.reused_trace_ids("/openapi/v2/video/result") == ["poll"]


async def test_generate_reusing_a_trace_id_returns_the_same_video(api: Api) -> None:
    first = await api.generate(tts(), trace="job-1")
    again = await api.generate(tts(), trace="job-1")
    other_endpoint = await api.call("GET", BALANCE, trace="job-1")

    assert again == first
    assert other_endpoint == (200, first)  # replayed on any endpoint
    assert len(api.sim.ledger.generations) == 1
    assert api.sim.ledger.credits_charged == 4  # 11 bytes of script: one 15-byte chunk
    assert api.sim.ledger.generations_per_body() == {
        json.dumps(tts(), sort_keys=True, separators=(",", ":")): 1
    }
    assert api.sim.ledger.duplicate_bodies() == []


async def test_refusals_are_cached_too(api: Api, config: SimConfig) -> None:
    config.concurrency_limit = 0
    assert (await api.generate(tts(), trace="t"))["ErrCode"] == 500044
    config.concurrency_limit = 5
    assert (await api.generate(tts(), trace="t"))["ErrCode"] == 500044
    assert (await api.generate(tts(), trace="t2"))["ErrCode"] == 0


async def test_without_the_reply_cache_a_trace_id_is_not_deduplicated(
    api: Api, config: SimConfig
) -> None:
    config.reply_cache = False
    await api.generate(tts(), trace="same")
    await api.generate(tts(), trace="same")
    assert api.sim.ledger.generations_per_body() == {canonical_body(tts()): 2}


async def test_dropped_generate_reply_is_processed_and_replayed(
    api: Api, config: SimConfig
) -> None:
    config.drop_generate_replies = 1
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await api.generate(tts(), trace="job-1")

    assert len(api.sim.ledger.generations) == 1
    (record,) = api.sim.ledger.generations.values()
    assert record.trace_id == "job-1"
    retry = await api.generate(tts(), trace="job-1")
    assert retry["Resp"]["video_id"] == record.video_id
    assert len(api.sim.ledger.generations) == 1
    assert api.sim.ledger.credits_charged == 4
    dropped, replayed = api.sim.ledger.requests_to(GENERATE)
    assert (dropped.fault, dropped.http_status, replayed.replayed) == ("drop", None, True)


# -- injected faults


async def test_injected_faults_answer_first_and_are_not_cached(api: Api, config: SimConfig) -> None:
    config.transient_errors = 1
    config.html_errors = 1
    config.rate_limit_errors = 1
    url = api.sim.url + BALANCE
    headers = {"API-KEY": KEY, "Ai-trace-id": "same"}

    async with api.session.get(url, headers=headers) as html:
        assert (html.status, html.content_type) == (502, "text/html")
        assert b"Bad Gateway" in await html.read()
    async with api.session.get(url, headers=headers) as limited:
        assert (limited.status, limited.headers["Retry-After"]) == (429, "1")
        assert (await limited.json())["ErrCode"] == 500069
    async with api.session.get(url, headers=headers) as overloaded:
        assert overloaded.status == 500
        assert (await overloaded.json())["err_code"] == 500069
    async with api.session.get(url, headers=headers) as real:
        assert (real.status, (await real.json())["ErrCode"]) == (200, 0)
    faults = [r.fault for r in api.sim.ledger.requests]
    assert faults == ["html", "rate_limit", "transient", None]


async def test_tts_list_pages_the_fifteen_speakers(api: Api) -> None:
    _, page1 = await api.call("GET", TTS_LIST, params={"page_num": 1, "page_size": 10})
    _, page2 = await api.call("GET", TTS_LIST, params={"page_num": 2, "page_size": 10})
    speakers = page1["Resp"]["data"] + page2["Resp"]["data"]
    assert page1["Resp"]["total"] == 15
    # the documented ids, which are not the positions in the list
    assert [(s["speaker_id"], s["name"]) for s in speakers] == DOCUMENTED_SPEAKERS
    status, bad = await api.call("GET", TTS_LIST, params={"page_num": "zero"})
    assert (status, bad["ErrCode"]) == (400, 400013)


async def test_another_accounts_video_is_not_found(config: SimConfig) -> None:
    config.api_keys = frozenset({KEY, "other"})
    async with serve(config) as sim, aiohttp.ClientSession() as session:
        api = Api(session, sim)
        video_id = (await api.generate(tts()))["Resp"]["video_id"]
        status, envelope = await api.call(
            "GET", f"/openapi/v2/video/result/{video_id}", key="other"
        )
    assert status == 200
    assert envelope["ErrCode"] == 500008


async def test_absurd_ids_are_400013_not_a_crash(api: Api) -> None:
    status, envelope = await api.call("GET", "/openapi/v2/video/result/" + "9" * 5000)
    assert envelope["ErrCode"] == 400013
    assert status == 400


async def test_a_deleted_video_is_status_6_and_its_link_is_gone(api: Api) -> None:
    video_id = (await api.generate(tts()))["Resp"]["video_id"]
    done = await api.wait_terminal(video_id)
    assert done["status"] == 1
    api.sim.config.deleted_video_ids.add(video_id)
    assert (await api.status(video_id))["status"] == 6
    async with api.session.get(done["url"]) as reply:
        assert reply.status == 404


async def test_ids_never_repeat_across_simulator_processes() -> None:
    async def first_media_and_video() -> tuple[int, int]:
        async with serve(SimConfig(time_scale=FAST)) as sim, aiohttp.ClientSession() as session:
            api = Api(session, sim)
            return (await api.generate(tts()))["Resp"]["video_id"], len(sim.ledger.uploads)

    first, second = await first_media_and_video(), await first_media_and_video()
    assert first[0] != second[0]
