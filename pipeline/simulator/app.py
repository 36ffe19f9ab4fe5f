"""The simulator's aiohttp application: one handler per PixVerse endpoint, and create_app.

Routes (pixverse-api.md, "Endpoints"):

- POST /openapi/v2/media/upload
- POST /openapi/v2/video/lip_sync/generate
- GET  /openapi/v2/video/lip_sync/tts_list?page_num=1&page_size=30
- GET  /openapi/v2/video/tts_speaker?page_num=1&page_size=100&speaker_type=all  (newer path)
- GET  /openapi/v2/video/result/{video_id}
- GET  /openapi/v2/account/balance
- GET  /media/result/{video_id}.mp4?exp=...&sig=...  the signed download link; no API key
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio.to_thread
from aiohttp import BodyPartReader, web

from pipeline.simulator.catalog import speaker_list
from pipeline.simulator.config import TTS_LIST, TTS_SPEAKER, SimConfig
from pipeline.simulator.envelope import (
    NOT_FOUND,
    PARAM_EMPTY,
    PARAM_INVALID,
    PARAM_TYPE,
    ApiError,
    Reply,
    success,
)
from pipeline.simulator.faults import take_flaw, take_truncation
from pipeline.simulator.gateway import ApiHandler, Call, Handler, api, recorded
from pipeline.simulator.ledger import Ledger, RequestRecord, TransferRecord
from pipeline.simulator.links import DOWNLOAD_PREFIX, download_path
from pipeline.simulator.lipsync import parse_body, read_request
from pipeline.simulator.media import InvalidMediaError, media_type_for, probe, speech_for
from pipeline.simulator.state import STATE, SimState

API_PREFIX = "/openapi/v2"
_MAX_ID_DIGITS = 20  # ids are 15-18 digits; Python refuses int() of very long digit strings
_CHUNK = 256 * 1024
TTS_SPEAKER_PAGE_SIZES = frozenset({10, 20, 50, 100})


async def upload(request: web.Request, call: Call) -> Reply:
    """Exactly one of `file` (the bytes, multipart) or `file_url`, which may also come in a
    url-encoded form (PixVerse's own MCP server sends it so). Other fields are ignored."""
    state = request.app[STATE]
    started = state.clock()
    file: tuple[str, str | None, bytes] | None = None
    file_url: str | None = None
    if request.content_type == "application/x-www-form-urlencoded":
        form = await request.post()
        if "file" in form:
            raise ApiError(PARAM_TYPE, "file must be sent as multipart/form-data")
        value = form.get("file_url")
        if isinstance(value, str) and value.strip():
            file_url = value.strip()
    elif request.content_type.startswith("multipart/"):
        async for part in await request.multipart():
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "file":
                data = await _read_limited(part, state.config.max_upload_bytes)
                file = (part.filename or "", part.headers.get("Content-Type"), data)
            elif part.name == "file_url":
                file_url = (await part.text()).strip() or None
    else:
        raise ApiError(PARAM_TYPE, "expected multipart/form-data or a url-encoded form")
    if file is not None and file_url is not None:
        raise ApiError(PARAM_INVALID, "give exactly one of file or file_url")
    if file_url is not None:
        # The simulator has no internet access, so it cannot fetch anything.
        raise ApiError(PARAM_INVALID, "file_url is not reachable from the simulator")
    if file is None:
        raise ApiError(PARAM_EMPTY, "file or file_url is required")
    filename, content_type, data = file
    await _slow_link(state, "upload", filename, started)
    media_type = media_type_for(filename, content_type)
    if media_type is None:
        raise ApiError(PARAM_INVALID, f"unsupported media format: {filename!r}")
    try:
        probed = await anyio.to_thread.run_sync(probe, data, media_type)
    except InvalidMediaError as exc:
        raise ApiError(PARAM_INVALID, f"invalid media: {exc}") from exc
    config = state.config
    if probed.duration > config.max_media_seconds:
        raise ApiError(PARAM_INVALID, f"media is longer than {config.max_media_seconds:g} s")
    if max(probed.width, probed.height) > config.max_video_side:
        raise ApiError(PARAM_INVALID, f"video is larger than {config.max_video_side} px")
    media = state.backend.add_media(
        media_type,
        filename,
        hashlib.sha256(data).hexdigest(),
        probed.duration,
        probed.width,
        probed.height,
        data,
        state.backend.account(call.api_key).account_id,
    )
    # The simulator does not serve uploads back; the url is informational, as PixVerse's is.
    url = f"{request.url.origin()}/media/upload/{media.media_id}{Path(filename).suffix.lower()}"
    return success({"media_id": media.media_id, "media_type": media_type, "url": url})


async def _slow_link(state: SimState, kind: str, name: str, started: float) -> None:
    """Spend `transfer_seconds` (scaled) on a transfer and log it, so tests can tell whether
    generations kept running while files moved."""
    delay = state.config.real_seconds(state.config.transfer_seconds)
    if delay > 0:
        await anyio.sleep(delay)
    state.ledger.transfers.append(TransferRecord(kind, name, started, state.clock()))


async def _read_limited(part: BodyPartReader, limit: int) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        data += chunk
        if len(data) > limit:
            raise ApiError(PARAM_INVALID, f"file is larger than {limit} bytes")
    return bytes(data)


async def generate(request: web.Request, call: Call) -> Reply:
    state = request.app[STATE]
    body = parse_body(await request.read())
    lipsync = read_request(body)
    generation = state.backend.generate(call.api_key, body, lipsync, call.trace_id)
    # The result is made while the generation runs (in a worker thread, not awaited), so a
    # status reply stays a lookup, as the real API's is, and never waits for PyAV.
    asyncio.get_running_loop().run_in_executor(None, _make_result, state, generation.video_id)
    # The generation (and its slot) exists from here; the reply, and so the gateway's cached
    # copy of it, only when the request finishes: a duplicate of this trace id arriving in
    # between is handled as a new request (pixverse-api.md, "Trace-id semantics").
    delay = state.config.real_seconds(state.config.generate_reply_seconds)
    if delay > 0:
        await anyio.sleep(delay)
    # The lip-sync reference shows only `video_id`; other generate endpoints add `credits`.
    resp: dict[str, Any] = {"video_id": generation.video_id}
    if state.config.send_credits:
        resp["credits"] = generation.record.credits
    return success(resp)


async def tts_list(request: web.Request, call: Call) -> Reply:
    """The documented speaker list: any positive page_size."""
    page_num = _positive_int(request.query.get("page_num", "1"), "page_num")
    page_size = _positive_int(request.query.get("page_size", "30"), "page_size")
    return _speaker_page(request.app[STATE].config, page_num, page_size)


async def tts_speaker(request: web.Request, call: Call) -> Reply:
    """The newer speaker path: page_size one of 10, 20, 50, 100; speaker_type "all"."""
    page_num = _positive_int(request.query.get("page_num", "1"), "page_num")
    page_size = _positive_int(request.query.get("page_size", "10"), "page_size")
    if page_size not in TTS_SPEAKER_PAGE_SIZES:
        raise ApiError(PARAM_TYPE, "page_size must be one of 10, 20, 50, 100")
    if request.query.get("speaker_type", "all") != "all":
        raise ApiError(PARAM_INVALID, "unsupported speaker_type")
    return _speaker_page(request.app[STATE].config, page_num, page_size)


def _speaker_page(config: SimConfig, page_num: int, page_size: int) -> Reply:
    start = (page_num - 1) * page_size
    speakers = speaker_list(config.speakers)
    return success({"total": len(speakers), "data": speakers[start : start + page_size]})


def _speaker_route(name: str, handler: ApiHandler) -> Handler:
    """A speaker path that answers like an unknown route (a plain 404) while
    `SimConfig.speaker_paths` leaves it out."""
    served, unserved = api(handler), recorded(not_found)

    async def route(request: web.Request) -> web.StreamResponse:
        if name in request.app[STATE].config.speaker_paths:
            return await served(request)
        return await unserved(request)

    return route


def _positive_int(text: str, name: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ApiError(PARAM_TYPE, f"{name} must be a positive integer")
    return int(text)


async def result(request: web.Request, call: Call) -> Reply:
    state = request.app[STATE]
    text = request.match_info["video_id"]
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_ID_DIGITS:
        raise ApiError(PARAM_TYPE, "video_id must be an integer")
    video_id = int(text)
    generation = state.backend.generation(video_id)
    if generation is not None and generation.account is not state.backend.account(call.api_key):
        generation = None  # another account's video: as unknown as any other id
        if video_id not in state.config.known_video_ids:
            raise ApiError(NOT_FOUND, "requested data not found")
    if video_id in state.config.deleted_video_ids:
        status, seed = 6, 0
        created = modified = state.backend.started_at
    elif generation is not None:
        status, seed = generation.status, generation.seed
        created, modified = generation.record.created_at, generation.modified_at
    elif video_id in state.config.known_video_ids:
        status, seed = 1, 0  # finished before this process started
        created = modified = state.backend.started_at
    else:
        raise ApiError(NOT_FOUND, "requested data not found")
    url, size = "", 0
    if status == 1:
        data = await _result_video(state, video_id)
        # "video size", unit undocumented: a client must not take it for the byte count
        size = len(data) if state.config.size_units == "bytes" else -(-len(data) // 1024)
        url = _signed_url(request, state, video_id)
    resp: dict[str, Any] = {
        "id": video_id,
        "status": status,
        "url": url,
        "size": size,
        "outputWidth": state.videos.size_of(video_id)[0],
        "outputHeight": state.videos.size_of(video_id)[1],
        "create_time": state.backend.iso_time(created),
        "modify_time": state.backend.iso_time(modified),
        "seed": seed,
        "prompt": "",
        "negative_prompt": "",
        "resolution_ratio": state.videos.size_of(video_id)[1],
        "style": "",
    }
    return success(resp)


async def _result_video(state: SimState, video_id: int) -> bytes:
    return await anyio.to_thread.run_sync(_make_result, state, video_id)


def _make_result(state: SimState, video_id: int) -> bytes:
    """Blocking (a worker thread): the result MP4, made once and cached."""
    video, audio = state.backend.sources(video_id)
    generation = state.backend.generation(video_id)
    script = generation.record.body.get("lip_sync_tts_content") if generation else None
    if audio is None and isinstance(script, str) and not state.videos.has(video_id):
        audio = speech_for(script)
    return state.videos.get(video_id, video, audio, functools.partial(take_flaw, state.config))


def _signed_url(request: web.Request, state: SimState, video_id: int) -> str:
    ttl = state.config.real_seconds(state.config.link_ttl_seconds)
    url = request.url.origin().with_path(download_path(video_id))
    return str(url.with_query(state.links.sign(video_id, ttl)))


async def balance(request: web.Request, call: Call) -> Reply:
    state = request.app[STATE]
    account = state.backend.account(call.api_key)
    monthly, package = account.balance(state.config)
    return success(
        {"account_id": account.account_id, "credit_monthly": monthly, "credit_package": package}
    )


async def download(request: web.Request, record: RequestRecord) -> web.StreamResponse:
    """The signed link: 403 when the signature is wrong or expired, else the MP4 bytes."""
    state = request.app[STATE]
    if len(request.match_info["video_id"]) > _MAX_ID_DIGITS:
        return web.Response(status=404, text="404 Not Found")
    video_id = int(request.match_info["video_id"])
    if not state.links.verify(video_id, request.query.get("exp"), request.query.get("sig")):
        return web.Response(status=403, text="403 Forbidden: link expired or signature invalid")
    if not state.backend.is_finished_video(video_id) or video_id in state.config.deleted_video_ids:
        return web.Response(status=404, text="404 Not Found")
    started = state.clock()
    data = await _result_video(state, video_id)
    await _slow_link(state, "download", str(video_id), started)
    response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
    response.content_length = len(data)
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    if take_truncation(state.config):
        record.fault = "truncate"
        await response.write(data[: len(data) // 2])
        if request.transport is not None:
            request.transport.close()  # flushes what was written, then closes
        return response
    await response.write(data)
    await response.write_eof()
    state.ledger.served_downloads[video_id] = hashlib.sha256(data).hexdigest()
    return response


async def not_found(request: web.Request, record: RequestRecord) -> web.StreamResponse:
    return web.Response(status=404, text="404 Not Found")


def create_app(
    config: SimConfig,
    ledger: Ledger | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    """The simulator as an aiohttp application; its state is `app[STATE]`."""
    app = web.Application()
    app[STATE] = SimState.build(config, Ledger() if ledger is None else ledger, clock)
    app.router.add_post(f"{API_PREFIX}/media/upload", api(upload))
    app.router.add_post(f"{API_PREFIX}/video/lip_sync/generate", api(generate, droppable=True))
    app.router.add_get(f"{API_PREFIX}/video/lip_sync/tts_list", _speaker_route(TTS_LIST, tts_list))
    app.router.add_get(f"{API_PREFIX}/video/tts_speaker", _speaker_route(TTS_SPEAKER, tts_speaker))
    app.router.add_get(f"{API_PREFIX}/video/result/{{video_id}}", api(result))
    app.router.add_get(f"{API_PREFIX}/account/balance", api(balance))
    app.router.add_get(DOWNLOAD_PREFIX + r"{video_id:\d+}.mp4", recorded(download))
    # Last, so every other request is recorded in the ledger too.
    app.router.add_route("*", "/{tail:.*}", recorded(not_found))
    return app
