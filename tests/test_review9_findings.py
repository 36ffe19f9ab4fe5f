"""Review 9 findings: one-trip downloads (fe5f6a9), the state store's record cache and the
result facts the report reads. Each test fails today because of the defect it names."""

from __future__ import annotations

import contextlib
import gzip
import tempfile
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
from aiohttp import web

from pipeline.client import ClientConfig, PixverseClient
from pipeline.download import Link, fetch_to_file
from pipeline.errors import TransportError
from tests.harness import FAST_RETRY
from tests.media_factory import make_video, remux
from tests.raw_http import serve_raw
from tests.test_client import serve_app

pytestmark = pytest.mark.anyio


def _faststart_mp4() -> bytes:
    """A 3 s result with its moov before the media (as CDNs serve for streaming): its first
    half alone still probes as a whole 3 s mp4 video whose first frame decodes."""
    with tempfile.TemporaryDirectory() as folder:
        src = make_video(Path(folder) / "src.mp4", seconds=3)
        return remux(src, Path(folder) / "fast.mp4", {"movflags": "faststart"}).read_bytes()


FASTSTART = _faststart_mp4()


def _two_member_gzip_cdn(payload: bytes) -> web.Application:
    async def result(request: web.Request) -> web.Response:
        headers = {"Content-Type": "video/mp4", "Content-Encoding": "gzip"}
        return web.Response(body=payload, headers=headers)

    app = web.Application()
    app.router.add_get("/result.mp4", result)
    return app


async def test_a_multi_member_gzip_result_lands_whole(tmp_path: Path) -> None:
    """Defect: `download._Decoder` feeds every chunk to one `zlib.decompressobj`, which stops
    at the end of the first gzip member and leaves the rest in `unused_data`, which nobody
    reads; `finish` sees `eof` and accepts. Content-Length matches (it counts the encoded
    bytes), so the file is the first member's bytes only. With a faststart mp4 that front
    half passes `_check_video` (moov first: full duration, first frame decodes) and is placed
    as the job's result, to be recorded DONE, not suspect (sin: a paid result lost, replaced
    by half of it, and the report says done); with moov at the end every try fails, a fresh
    link and a full transfer each, every run. Expected: every member is decoded (as Python's
    gzip and RFC 1952 allow) and the file equals the video sent, or data after the first
    member is refused as a bad transfer (retried), never ignored."""
    half = len(FASTSTART) // 2
    payload = gzip.compress(FASTSTART[:half]) + gzip.compress(FASTSTART[half:])
    assert gzip.decompress(payload) == FASTSTART  # the body is a well-formed gzip stream
    dest = tmp_path / "a.mp4"
    async with serve_app(_two_member_gzip_cdn(payload)) as url:
        config = ClientConfig(base_url=url, api_key="k", retry=FAST_RETRY)
        async with PixverseClient(config) as client:
            with contextlib.suppress(TransportError):  # refusing it (retried) is fine
                await fetch_to_file(client, Link(f"{url}/result.mp4", None), dest)
    assert not dest.exists() or dest.read_bytes() == FASTSTART


def _close_delimited_cdn(body: bytes, sent: int) -> AbstractAsyncContextManager[str]:
    """An HTTP/1.1 server that answers 200 without Content-Length or chunking (the body ends
    when the connection closes, RFC 9112 6.3 rule 8) and closes after `sent` bytes."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nConnection: close\r\n\r\n"
    return serve_raw(head + body[:sent])


async def test_a_close_delimited_body_cut_short_is_not_a_result(tmp_path: Path) -> None:
    """Defect: the only length check is against Content-Length (`_receive`); a 200 without
    it (close-delimited, as an HTTP/1.0 proxy or a CDN edge may send) that stops early reads
    as a complete body in aiohttp, and `_check_video` cannot tell: a faststart mp4's first
    half probes with its full duration and a decodable first frame. So half a video lands at
    the job's path and is recorded DONE, not even suspect (sin: a paid result lost, the
    report lying). Expected: a cut is caught before the rename: e.g. the mp4's own boxes
    checked against the file length (the `mdat` reaches the end), or, with no length to
    check, the status reply's `size` / a second opinion asked for; the try fails and is
    retried with a fresh link."""
    dest = tmp_path / "a.mp4"
    async with _close_delimited_cdn(FASTSTART, len(FASTSTART) // 2) as url:
        config = ClientConfig(base_url=url, api_key="k", retry=FAST_RETRY)
        async with PixverseClient(config) as client:
            with contextlib.suppress(TransportError):  # the cut refused: as it should be
                await fetch_to_file(client, Link(f"{url}/result.mp4", None), dest)
    assert not dest.exists() or dest.read_bytes() == FASTSTART
