"""Closer to the real API (issue 11): what the corrected contract says PixVerse really sends.

The documented refusal of a media id, the speaker list on either of two paths with the
documented ids, no `credits` in the lip-sync reply, a `size` that is not a byte count,
numbers that may arrive as strings, and uploads by `file_url` in a url-encoded form.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pipeline.cli import main
from pipeline.client import (
    ClientConfig,
    PixverseClient,
    _is_stale_media,
    classify_envelope,
    refused_id_field,
)
from pipeline.errors import (
    CreditsError,
    EndpointError,
    JobError,
    ServerBusyError,
    SlotLimitError,
    TransportError,
)
from pipeline.manifest import load_manifest
from pipeline.plan import estimate_credits
from pipeline.preflight import preflight
from pipeline.runner import ExitCode
from pipeline.simulator import serve
from pipeline.state import MIGRATIONS, StateStore
from tests.gateway_proxy import Call, Forward, gateway_proxy
from tests.harness import (
    FAST_RETRY,
    STATE_NAME,
    fast_sim,
    job_uploads,
    project,
    run_once,
    sha256,
    sim_in_thread,
    tts_manifest,
)
from tests.media_factory import make_audio, make_video
from tests.test_client import serve_app

pytestmark = pytest.mark.anyio

API = "/openapi/v2"
GENERATE = f"{API}/video/lip_sync/generate"
UPLOAD = f"{API}/media/upload"
TTS_LIST = f"{API}/video/lip_sync/tts_list"
TTS_SPEAKER = f"{API}/video/tts_speaker"

# pixverse-api.md, "TTS speakers": the documented ids and names, in the documented order.
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


def refusal(field_name: str, apostrophe: str = "\u2019") -> str:
    """The lip-sync guide's wording for an id the server cannot find."""
    what = "audio" if field_name == "audio_media_id" else "video"
    return (
        f"couldn{apostrophe}t find a matching {field_name}."
        f" Please re-upload your {what} and try again."
    )


# -- 1. a refused media id, in the documented wording


@pytest.mark.parametrize("apostrophe", ["\u2019", "'"])
@pytest.mark.parametrize("field_name", ["video_media_id", "audio_media_id", "source_video_id"])
def test_every_documented_refusal_names_its_field(field_name: str, apostrophe: str) -> None:
    message = refusal(field_name, apostrophe)
    assert refused_id_field(message) == field_name
    assert refused_id_field(message.upper()) == field_name
    exc = JobError(message, err_code=400017, err_msg=message)
    body = {field_name: 123456789012345, "lip_sync_tts_speaker_id": "7"}
    # an uploaded id can be uploaded again; the user's own PixVerse video cannot
    assert _is_stale_media(exc, body) is (field_name != "source_video_id")


@pytest.mark.parametrize(
    ("message", "field_name"),
    [
        ("no matching video_media_id", "video_media_id"),  # the simulator's older wording
        ("audio_media_id not found, please re-upload it", "audio_media_id"),
        ("Couldn't find a matching VIDEO_MEDIA_ID", "video_media_id"),
        ("unsupported lip_sync_tts_speaker_id '99'", None),
        ("video_media_id 1 has media_type 'audio', not 'video'", None),
        ("give only one of source_video_id and video_media_id", None),
        ("source_video_id or video_media_id is required", None),
        ("lip_sync_tts_content is longer than 200 characters", None),
        ("couldn't find a matching speaker", None),
        ("", None),
    ],
)
def test_only_a_field_name_with_matching_or_reupload_is_a_refused_id(
    message: str, field_name: str | None
) -> None:
    assert refused_id_field(message) == field_name
    exc = JobError(message, err_code=400017, err_msg=message)
    body = {"video_media_id": 1, "audio_media_id": 2}
    assert _is_stale_media(exc, body) is (field_name is not None)


def test_a_refusal_naming_a_field_the_body_lacks_is_no_stale_media() -> None:
    message = refusal("audio_media_id")
    exc = JobError(message, err_code=400017, err_msg=message)
    tts_body = {"video_media_id": 1, "lip_sync_tts_speaker_id": "7", "lip_sync_tts_content": "hi"}
    assert not _is_stale_media(exc, tts_body)
    # 500008 names nothing: stale only when the body carries an uploaded id
    not_found = JobError("x", err_code=500008, err_msg="requested data not found")
    assert _is_stale_media(not_found, tts_body)
    assert not _is_stale_media(not_found, {"source_video_id": 1, "lip_sync_tts_content": "hi"})


def _media_ids(out: Path, kind: str) -> dict[int, str]:
    """media_id -> sha256 of the cached uploads of `kind` in a run's state file."""
    conn = sqlite3.connect(out / STATE_NAME)
    try:
        rows = conn.execute("SELECT media_id, sha256 FROM media WHERE kind = ?", (kind,))
        return {int(media_id): digest for media_id, digest in rows}
    finally:
        conn.close()


def _shared_media_manifest(voice: str, words: str) -> str:
    """Four videos, each with an audio job and a TTS job."""
    lines = ["version: 1", "jobs:"]
    for i in range(4):
        lines.append(
            f"  - {{id: v{i}-audio, video: media/face{i}.mp4, audio: media/{voice}{i}.wav}}"
        )
        lines.append(
            f"  - {{id: v{i}-tts, video: media/face{i}.mp4,"
            f" tts: {{text: '{words} {i}', speaker: '7'}}}}"
        )
    return "\n".join(lines) + "\n"


async def test_refused_cached_media_newer_speaker_path_and_no_credits_each_pair_paid_once(
    tmp_path: Path,
) -> None:
    """The issue's "done when": a simulator that refuses half of the cached media ids in the
    documented wording, serves speakers only on the newer path and sends no `credits`; every
    job completes and every input pair is paid once."""
    media = tmp_path / "media"
    media.mkdir()
    for i in range(4):
        make_video(media / f"face{i}.mp4", seconds=1.0 + i / 5)
        make_audio(media / f"a{i}.wav", seconds=1.0 + i / 10)
        make_audio(media / f"b{i}.wav", seconds=1.5 + i / 10)
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(_shared_media_manifest("a", "hello"), encoding="utf-8")
    out = tmp_path / "out"
    config = fast_sim(speaker_paths=frozenset({"tts_speaker"}))
    async with serve(config) as sim:
        first = await run_once(sim, manifest, out)
        assert first.exit_code is ExitCode.OK
        cached_videos = _media_ids(out, "video")
        assert len(cached_videos) == 4
        expired = sorted(cached_videos)[::2]
        config.expired_media_ids = set(expired)
        uploads_before = len(sim.ledger.uploads)
        # new audio and scripts, the same videos: the second run re-uses the cached video ids
        manifest.write_text(_shared_media_manifest("b", "again"), encoding="utf-8")
        second = await run_once(sim, manifest, out)

    assert second.exit_code is ExitCode.OK, second.rows
    assert {r.state for r in second.rows} == {"done"}
    ledger = sim.ledger
    refused = [r for r in ledger.requests_to(GENERATE) if r.err_code == 400017]
    assert len(refused) >= len(expired)  # the refusals did happen
    # each (video, voice) pair generated exactly once over both runs: 8 jobs a run
    per_pair = ledger.generations_per_inputs()
    assert len(per_pair) == 16
    assert set(per_pair.values()) == {1}
    assert ledger.duplicate_bodies() == []
    # only the refused videos went up again
    expired_digests = {cached_videos[m] for m in expired}
    reuploaded = {u.sha256 for u in ledger.uploads[uploads_before:] if u.media_type == "video"}
    assert reuploaded == expired_digests
    # the speakers came from the newer path, after one plain 404 on the documented one
    assert [r.http_status for r in ledger.requests_to(TTS_LIST)] == [404, 404]  # once a run
    assert [r.http_status for r in ledger.requests_to(TTS_SPEAKER)] == [200, 200]
    # no reply said what it cost: every figure is the price model's, and says so
    assert all(r.credits_estimated for r in second.rows)
    assert "(estimated" in second.summary
    for row in second.rows:
        assert row.video_id is not None
        assert sha256(out / f"{row.id}.mp4") == ledger.served_downloads[row.video_id]


async def test_a_refused_source_video_fails_its_job_without_uploading_again(
    tmp_path: Path,
) -> None:
    manifest = project(
        tmp_path,
        "version: 1\njobs:\n"
        "  - {id: gone, video_id: 123456789012345, audio: media/intro_es.mp3}\n"
        "  - {id: fine, video: media/intro.mp4, audio: media/intro_es.mp3}\n",
    )
    async with serve(fast_sim()) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out")
    assert outcome.exit_code is ExitCode.JOBS_FAILED
    rows = {r.id: r for r in outcome.rows}
    assert rows["fine"].state == "done"
    assert rows["gone"].state == "failed"
    assert rows["gone"].error == "400017: " + refusal("source_video_id")
    # one refused submission, no second one; the audio went up once for both jobs
    refused = [r for r in sim.ledger.requests_to(GENERATE) if r.err_code == 400017]
    assert len(refused) == 1
    assert sorted(u.filename for u in job_uploads(sim.ledger)) == ["intro.mp4", "intro_es.mp3"]


async def test_the_simulator_refuses_expired_media_ids_in_the_documented_wording(
    tmp_path: Path,
) -> None:
    async with serve(fast_sim()) as sim, aiohttp.ClientSession() as session:
        ids = []
        for path in (make_video(tmp_path / "f.mp4"), make_audio(tmp_path / "a.wav")):
            form = aiohttp.FormData()
            form.add_field("file", path.read_bytes(), filename=path.name)
            reply = await _call(session, sim.url, "POST", UPLOAD, data=form)
            ids.append(reply["Resp"]["media_id"])
        video, audio = ids
        sim.config.expired_media_ids = {audio}
        body = {"video_media_id": video, "audio_media_id": audio}
        for _ in range(2):  # an expired id stays expired
            reply = await _call(session, sim.url, "POST", GENERATE, json=body)
            assert (reply["ErrCode"], reply["ErrMsg"]) == (400017, refusal("audio_media_id"))
        sim.config.expired_media_ids = {video}
        reply = await _call(session, sim.url, "POST", GENERATE, json=body)
        assert reply["ErrMsg"] == refusal("video_media_id")
    assert sim.ledger.generations == {}


async def _call(
    session: aiohttp.ClientSession, base: str, method: str, path: str, **kwargs: Any
) -> Any:
    headers = {"API-KEY": "sim-key", "Ai-trace-id": str(uuid.uuid4())}
    async with session.request(method, base + path, headers=headers, **kwargs) as reply:
        return json.loads(await reply.read())


# -- 2 and 3. the speaker list on either path, with the documented ids


@pytest.mark.parametrize(
    ("served", "asked"),
    [
        (frozenset({"tts_list", "tts_speaker"}), [TTS_LIST]),
        (frozenset({"tts_list"}), [TTS_LIST]),
        (frozenset({"tts_speaker"}), [TTS_LIST, TTS_SPEAKER]),
    ],
)
async def test_speakers_come_from_whichever_path_answers_and_it_is_remembered(
    served: frozenset[str], asked: list[str]
) -> None:
    async with serve(fast_sim(speaker_paths=served)) as sim:
        config = ClientConfig(base_url=sim.url, api_key="sim-key", retry=FAST_RETRY)
        async with PixverseClient(config) as client:
            first = await client.speakers()
            again = await client.speakers()
            path = client.speaker_path
    assert [(s.speaker_id, s.name) for s in first] == DOCUMENTED_SPEAKERS
    assert again == first
    assert path == asked[-1].removeprefix(API)
    seen = [r.path for r in sim.ledger.requests if "tts" in r.path]
    assert seen == [*asked, asked[-1]]  # the second call went straight to the one that answered


async def test_the_newer_path_is_asked_with_its_page_sizes() -> None:
    queries: list[dict[str, str]] = []

    async def tts_speaker(request: web.Request) -> web.Response:
        queries.append(dict(request.query))
        return web.json_response({"ErrCode": 0, "ErrMsg": "ok", "Resp": {"total": 0, "data": []}})

    app = web.Application()
    app.router.add_get(TTS_SPEAKER, tts_speaker)  # tts_list: aiohttp's own plain 404
    async with serve_app(app) as url:
        config = ClientConfig(base_url=url, api_key="k", retry=FAST_RETRY)
        async with PixverseClient(config) as client:
            assert await client.speakers() == []
    assert queries == [{"page_num": "1", "page_size": "100", "speaker_type": "all"}]


def _paged_app(served: str, *, page: int, total: int, ignore_page_num: bool = False) -> Any:
    """A speaker list of `total` entries on path `served`, `page` a page whatever is asked."""
    asked: list[int] = []

    async def speakers(request: web.Request) -> web.Response:
        number = int(request.query["page_num"])
        asked.append(number)
        start = 0 if ignore_page_num else (number - 1) * page
        data = [
            {"speaker_id": str(i), "name": f"voice {i}"}
            for i in range(start, min(total, start + page))
        ]
        resp = {"total": str(total), "data": data}  # a total as a string: read leniently
        return web.json_response({"ErrCode": 0, "ErrMsg": "ok", "Resp": resp})

    async def json_404(request: web.Request) -> web.Response:
        return web.json_response({"message": "Not Found"}, status=404)

    app = web.Application()
    app.router.add_get(served, speakers)
    other = TTS_LIST if served == TTS_SPEAKER else TTS_SPEAKER
    app.router.add_get(other, json_404)  # a gateway's JSON 404: not an envelope either
    return app, asked


@pytest.mark.parametrize("served", [TTS_LIST, TTS_SPEAKER])
async def test_both_paths_are_paged_until_total(served: str) -> None:
    app, asked = _paged_app(served, page=10, total=25)
    async with serve_app(app) as url:
        config = ClientConfig(base_url=url, api_key="k", retry=FAST_RETRY)
        async with PixverseClient(config) as client:
            speakers = await client.speakers()
            assert client.speaker_path == served.removeprefix(API)
    assert [s.speaker_id for s in speakers] == [str(i) for i in range(25)]
    assert asked == [1, 2, 3]


async def test_a_server_ignoring_page_num_is_not_asked_forever() -> None:
    app, asked = _paged_app(TTS_LIST, page=10, total=25, ignore_page_num=True)
    async with serve_app(app) as url:
        config = ClientConfig(base_url=url, api_key="k", retry=FAST_RETRY)
        async with PixverseClient(config) as client:
            speakers = await client.speakers()
    assert len(speakers) == 10
    assert asked == [1, 2]  # page 2 brought nothing new


async def test_an_enveloped_404_is_an_answer_and_two_plain_404s_are_a_wrong_base_url() -> None:
    async def enveloped(request: web.Request) -> web.Response:
        return web.json_response({"ErrCode": 400017, "ErrMsg": "no list"}, status=404)

    app = web.Application()
    app.router.add_get(TTS_LIST, enveloped)
    async with serve_app(app) as url:
        config = ClientConfig(base_url=url, api_key="k", retry=FAST_RETRY)
        async with PixverseClient(config) as client:
            with pytest.raises(JobError, match="no list"):
                await client.speakers()
    async with serve_app(web.Application()) as url:
        config = ClientConfig(base_url=url, api_key="k", retry=FAST_RETRY)
        async with PixverseClient(config) as client:
            with pytest.raises(EndpointError, match="base URL"):
                await client.speakers()


def test_the_speakers_command_prints_the_documented_ids(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with sim_in_thread(fast_sim(speaker_paths=frozenset({"tts_speaker"}))) as sim:
        monkeypatch.setenv("PIXVERSE_API_KEY", "sim-key")
        monkeypatch.setenv("PIXVERSE_BASE_URL", sim.url)
        assert main(["speakers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [tuple(line.split()) for line in lines] == DOCUMENTED_SPEAKERS


async def test_a_tts_job_may_name_a_documented_id_that_is_not_its_position(
    tmp_path: Path,
) -> None:
    # "14" is Ethan, 14th in the list; "7" is Harper, first; "15" is no one
    manifest = project(
        tmp_path,
        "version: 1\njobs:\n"
        "  - {id: a, video: media/intro.mp4, tts: {text: hi, speaker: '14'}}\n"
        "  - {id: b, video: media/intro.mp4, tts: {text: ho, speaker: '7'}}\n",
    )
    async with serve(fast_sim()) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out")
    assert outcome.exit_code is ExitCode.OK


# -- 4. no credits in the lip-sync reply


async def test_without_credits_in_the_reply_the_report_says_estimated(tmp_path: Path) -> None:
    manifest = project(tmp_path)  # audio and TTS jobs, a source_video_id
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        outcome = await run_once(sim, manifest, out)
    assert outcome.exit_code is ExitCode.OK
    replies = [r for r in sim.ledger.requests_to(GENERATE) if r.err_code == 0]
    assert len(replies) == 6
    checked = preflight(load_manifest(manifest))
    jobs = {job.id: job for job in checked.manifest.jobs}
    for row in outcome.rows:
        assert row.credits_estimated
        assert row.credits == estimate_credits(jobs[row.id], checked.media)
    total = sum(r.credits for r in outcome.rows)
    assert f"~{total} credits (estimated" in outcome.summary
    report = json.loads((out / "report.json").read_text())
    assert all(job["credits_estimated"] is True for job in report["jobs"])
    with (out / "report.csv").open() as handle:
        assert {row["credits_estimated"] for row in csv.DictReader(handle)} == {"true"}


async def test_the_simulator_sends_credits_only_when_asked() -> None:
    body = {
        "source_video_id": 391504857968062,
        "lip_sync_tts_speaker_id": "7",
        "lip_sync_tts_content": "hello",
    }
    async with serve(fast_sim()) as sim, aiohttp.ClientSession() as session:
        plain = await _call(session, sim.url, "POST", GENERATE, json=body)
        sim.config.send_credits = True
        priced = await _call(session, sim.url, "POST", GENERATE, json=body)
    assert set(plain["Resp"]) == {"video_id"}
    assert set(priced["Resp"]) == {"video_id", "credits"}
    assert priced["Resp"]["credits"] == 4


async def test_a_state_file_from_before_the_column_opens_with_it(tmp_path: Path) -> None:
    """Migration 0002 on a state file that has jobs already: they read as not estimated."""
    path = tmp_path / "state.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0][1])
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.execute(
        "INSERT INTO jobs (id, fingerprint, state, updated_at) VALUES ('a', 'f', 'pending', 0)"
    )
    conn.commit()
    conn.close()
    store = StateStore.open(path)
    try:
        assert store.job("a").credits_estimated is False
        assert store.update("a", "test", credits_estimated=True).credits_estimated is True
    finally:
        store.close()


# -- 5. `size` is not a byte count


async def test_a_size_in_other_units_still_downloads_the_served_bytes(tmp_path: Path) -> None:
    manifest = project(tmp_path, tts_manifest(2))
    out = tmp_path / "out"
    async with serve(fast_sim(size_units="kb")) as sim:
        outcome = await run_once(sim, manifest, out)
    assert outcome.exit_code is ExitCode.OK, outcome.rows
    for row in outcome.rows:
        assert row.video_id is not None
        path = out / f"{row.id}.mp4"
        assert sha256(path) == sim.ledger.served_downloads[row.video_id]
        assert row.bytes == path.stat().st_size > 1024  # so `size` (in kB) differed
    assert len(sim.ledger.generations) == 2


# -- 6. lenient numbers


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"ErrCode": "0", "ErrMsg": "ok", "Resp": {"a": 1}}, None),
        ({"err_code": " 0 ", "err_msg": "ok", "resp": {"a": 1}}, None),
        ({"ErrCode": "500044", "ErrMsg": "limit"}, SlotLimitError),
        ({"ErrCode": "500090", "ErrMsg": "balance"}, CreditsError),
        ({"ErrCode": "500069", "ErrMsg": "busy"}, ServerBusyError),
        ({"ErrCode": "400017", "ErrMsg": "bad"}, JobError),
        ({"ErrCode": "", "ErrMsg": "?"}, TransportError),
        ({"ErrCode": "abc", "ErrMsg": "?"}, TransportError),
        ({"ErrCode": "-1", "ErrMsg": "?"}, TransportError),
        ({"ErrCode": True, "ErrMsg": "?"}, TransportError),
        ({"ErrCode": "\u0661", "ErrMsg": "?"}, TransportError),  # not an ASCII digit
    ],
)
def test_string_error_codes_mean_their_number(
    payload: dict[str, Any], expected: type[Exception] | None
) -> None:
    if expected is None:
        assert classify_envelope(200, payload) == {"a": 1}
    else:
        with pytest.raises(expected):
            classify_envelope(200, payload)


def _stringify(payload: Any) -> Any:
    """Every code, status and id as a string of digits."""
    if isinstance(payload, dict):
        return {
            k: str(v)
            if k in {"ErrCode", "err_code", "status", "id", "video_id", "media_id", "total"}
            and isinstance(v, int)
            else _stringify(v)
            for k, v in payload.items()
        }
    if isinstance(payload, list):
        return [_stringify(v) for v in payload]
    return payload


async def test_string_numbers_and_unusual_statuses_complete_each_job_once(
    tmp_path: Path,
) -> None:
    """A gateway that sends every number as a string and, before the real status of each
    video, answers 2 (pending), 3 (in progress) and 5 with a `url` already filled."""
    manifest = project(tmp_path, tts_manifest(3))
    polls: Counter[int] = Counter()
    early = "/cdn/not-ready.mp4"

    async def hook(call: Call, forward: Forward) -> web.Response:
        if call.path == early:
            return web.Response(status=404, text="not ready")
        response = await forward()
        if response.content_type != "application/json":
            return response
        payload = json.loads(response.body)  # type: ignore[arg-type]
        resp = payload.get("Resp")
        if call.path == "/video/result" and isinstance(resp, dict):
            seen = polls[resp["id"]]
            polls[resp["id"]] += 1
            if seen < 3:
                status = (2, 3, 5)[seen]
                url = f"{proxy.url}{early}" if status == 5 else ""
                payload["Resp"] = {**resp, "status": status, "url": url, "size": 0}
        return web.json_response(_stringify(payload), status=response.status)

    async with serve(fast_sim()) as sim, gateway_proxy(sim.url, hook) as proxy:
        outcome = await run_once(sim, manifest, tmp_path / "out", base_url=proxy.url, max_wait=5)
    assert outcome.exit_code is ExitCode.OK, outcome.rows
    assert {r.state for r in outcome.rows} == {"done"}
    assert sim.ledger.duplicate_bodies() == []
    assert len(sim.ledger.generations) == 3
    assert all(n >= 4 for n in polls.values())  # each saw 2, 3, 5-with-url, then the real one
    assert not [c for c in proxy.seen if c.path == early]  # a url at status 5 is not a result


# -- 7. uploads as the real API takes them


async def test_uploads_in_either_encoding_with_extra_fields(tmp_path: Path) -> None:
    video = make_video(tmp_path / "face.mp4")
    async with serve(fast_sim()) as sim, aiohttp.ClientSession() as session:

        async def upload(data: Any) -> tuple[int, dict[str, Any]]:
            headers = {"API-KEY": "sim-key", "Ai-trace-id": str(uuid.uuid4())}
            async with session.post(sim.url + UPLOAD, headers=headers, data=data) as reply:
                return reply.status, json.loads(await reply.read())

        multipart = aiohttp.FormData()
        multipart.add_field("file", video.read_bytes(), filename="face.mp4")
        multipart.add_field("media_type", "video")
        multipart.add_field("kind", "whatever")
        by_file = await upload(multipart)
        url_multipart = aiohttp.FormData(
            {"file_url": "https://example.com/a.mp4", "media_type": "video"},
            default_to_multipart=True,
        )
        by_url_multipart = await upload(url_multipart)
        # the form PixVerse's MCP server sends: application/x-www-form-urlencoded
        by_url_form = await upload({"file_url": "https://example.com/a.mp4", "media_type": "video"})
        empty_form = await upload({"media_type": "video"})
        bytes_in_form = await upload({"file": "AAAA"})

    status, reply = by_file
    assert (status, reply["ErrCode"], reply["Resp"]["media_type"]) == (200, 0, "video")
    for status, reply in (by_url_multipart, by_url_form):
        assert (status, reply["ErrCode"]) == (400, 400017), reply
        assert "file_url" in reply["ErrMsg"]
    assert (empty_form[0], empty_form[1]["ErrCode"]) == (400, 400011)
    assert (bytes_in_form[0], bytes_in_form[1]["ErrCode"]) == (400, 400013)
    assert [u.filename for u in job_uploads(sim.ledger)] == ["face.mp4"]
