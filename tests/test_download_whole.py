"""A result lands only whole (R9-1, R9-2): every gzip member decoded, and an mp4 whose boxes
do not add up to its length (a body cut with no Content-Length to count against) refused.

Real media (tests/media_factory.py), the real client over loopback: aiohttp apps, or a raw
socket server where aiohttp.web cannot misbehave the way a CDN edge may."""

from __future__ import annotations

import gzip
import struct
import tempfile
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
from aiohttp import web

from pipeline.client import ClientConfig, PixverseClient
from pipeline.download import Fetched, Link, fetch_to_file
from pipeline.errors import TransportError
from tests.harness import FAST_RETRY
from tests.media_factory import make_video
from tests.raw_http import serve_raw
from tests.test_client import serve_app
from tests.test_review9_findings import FASTSTART, _close_delimited_cdn

pytestmark = pytest.mark.anyio


def _mp4() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        return make_video(Path(folder) / "r.mp4", seconds=2).read_bytes()


MP4 = _mp4()  # ftyp, free, mdat, moov: FFmpeg's layout, moov last


def _box_at(data: bytes, kind: bytes) -> int:
    """Where the top-level box `kind` starts (a plain 32-bit header, as FFmpeg writes)."""
    at = 0
    while data[at + 4 : at + 8] != kind:
        at += struct.unpack_from(">I", data, at)[0]
    return at


def _with_largesize(data: bytes) -> bytes:
    """FFmpeg's 8-byte `free` before `mdat` is room for a 64-bit header: use it (size 1, then
    the size as 64 bits); every sample stays at its offset."""
    free = _box_at(data, b"free")
    assert data[free : free + 4] == struct.pack(">I", 8)
    assert data[free + 12 : free + 16] == b"mdat"
    payload = struct.unpack_from(">I", data, free + 8)[0] - 8
    return data[:free] + struct.pack(">I4sQ", 1, b"mdat", 16 + payload) + data[free + 16 :]


def _mdat_to_the_end(data: bytes) -> bytes:
    """A faststart file's last box, `mdat`, with size 0: "to the end of the file"."""
    mdat = _box_at(data, b"mdat")
    assert mdat + struct.unpack_from(">I", data, mdat)[0] == len(data)  # it is the last box
    return data[:mdat] + struct.pack(">I", 0) + data[mdat + 4 :]


async def _fetch(url: str, dest: Path) -> Fetched:
    config = ClientConfig(base_url=url, api_key="k", retry=FAST_RETRY)
    async with PixverseClient(config) as client:
        return await fetch_to_file(client, Link(f"{url}/result.mp4", None), dest)


async def _refused(url: str, dest: Path) -> str:
    """The download fails as a transfer (a retried try, not a DiskError) and leaves nothing."""
    with pytest.raises(TransportError) as caught:
        await _fetch(url, dest)
    assert list(dest.parent.iterdir()) == []  # neither the result nor its .part
    return str(caught.value)


def _gzip_cdn(body: bytes) -> web.Application:
    """Sends `body` as it is, labelled gzip, with its Content-Length, in small writes (so
    members and padding straddle the chunks the client reads)."""

    async def result(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "video/mp4", "Content-Encoding": "gzip"}
        )
        response.content_length = len(body)
        await response.prepare(request)
        for at in range(0, len(body), 997):
            await response.write(body[at : at + 997])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/result.mp4", result)
    return app


# R9-1: gzip members ------------------------------------------------------------------------


async def test_three_gzip_members_with_padding_between_and_after_land_whole(
    tmp_path: Path,
) -> None:
    thirds = [MP4[: len(MP4) // 3], MP4[len(MP4) // 3 : -100], MP4[-100:]]
    body = gzip.compress(thirds[0]) + b"\0\0\0" + gzip.compress(thirds[1])
    body += gzip.compress(thirds[2]) + b"\r\n \0\0"
    async with serve_app(_gzip_cdn(body)) as url:
        fetched = await _fetch(url, tmp_path / "a.mp4")
    assert (tmp_path / "a.mp4").read_bytes() == MP4
    assert fetched.size == len(MP4)


async def test_data_after_the_gzip_stream_that_is_no_member_is_refused(tmp_path: Path) -> None:
    """urllib3 drops such a tail silently; here it fails the try: the same silence would drop
    a damaged second member, and the file would be a part of the result."""
    body = gzip.compress(MP4) + b"<html>edge error</html>"
    async with serve_app(_gzip_cdn(body)) as url:
        message = await _refused(url, tmp_path / "a.mp4")
    assert "bad gzip data after member 1" in message


async def test_a_gzip_stream_cut_inside_its_last_member_is_refused(tmp_path: Path) -> None:
    """Only the second member's trailer (CRC and length) is missing: every byte of the video
    decodes, so only the gzip stream can tell the body is cut."""
    half = len(MP4) // 2
    body = gzip.compress(MP4[:half]) + gzip.compress(MP4[half:])[:-4]
    async with serve_app(_gzip_cdn(body)) as url:
        message = await _refused(url, tmp_path / "a.mp4")
    assert "the gzip stream is cut short" in message


# R9-2: the mp4's boxes against its length --------------------------------------------------


@pytest.mark.parametrize(
    ("name", "video"),
    [
        ("moov last", MP4),
        ("faststart", FASTSTART),
        ("64-bit mdat size", _with_largesize(MP4)),
        ("mdat to the end", _mdat_to_the_end(FASTSTART)),
    ],
)
async def test_a_whole_close_delimited_result_lands(
    tmp_path: Path, name: str, video: bytes
) -> None:
    async with _close_delimited_cdn(video, len(video)) as url:
        fetched = await _fetch(url, tmp_path / "a.mp4")
    assert (tmp_path / "a.mp4").read_bytes() == video, name
    assert fetched.check.info.container == "mp4"
    assert fetched.check.frame_problem is None


async def test_a_result_one_byte_short_is_refused(tmp_path: Path) -> None:
    """FFmpeg still reads a moov missing its last byte (the video probes and decodes), and a
    faststart file's front is all there is to probe: the box sizes tell, 64-bit ones too."""
    for video, cut_box in ((MP4, "moov"), (_with_largesize(FASTSTART), "mdat")):
        async with _close_delimited_cdn(video, len(video) - 1) as url:
            message = await _refused(url, tmp_path / "a.mp4")
        assert f"the download is cut short: the {cut_box} box at byte" in message
        assert "1 past the file's end" in message


async def test_a_cut_mdat_sized_to_the_end_is_refused_by_its_sample_offsets(
    tmp_path: Path,
) -> None:
    """Size 0 fits any length: only the moov's sample tables say where the media must end."""
    video = _mdat_to_the_end(FASTSTART)
    async with _close_delimited_cdn(video, len(video) - 1) as url:
        message = await _refused(url, tmp_path / "a.mp4")
    assert "the download is cut short: its samples reach byte" in message


async def test_a_faststart_result_cut_where_its_mdat_begins_is_refused(tmp_path: Path) -> None:
    """ftyp, moov and free arrive whole (the boxes tile the file): no mdat."""
    cut = _box_at(FASTSTART, b"mdat")
    async with _close_delimited_cdn(FASTSTART, cut) as url:
        message = await _refused(url, tmp_path / "a.mp4")
    assert "the download is cut short: it has no mdat box" in message


# a chunked body cut short: aiohttp's own check -------------------------------------------


def _chunked_cdn(body: bytes, *, last_chunk: bool) -> AbstractAsyncContextManager[str]:
    """HTTP/1.1 200 with `Transfer-Encoding: chunked`: all of `body` in one chunk, then the
    zero-length last chunk that ends the body (RFC 9112 7.1), or the connection closed."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nConnection: close\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n"
    chunk = f"{len(body):x}\r\n".encode() + body + b"\r\n"
    return serve_raw(head + chunk + (b"0\r\n\r\n" if last_chunk else b""))


async def test_a_chunked_body_without_its_last_chunk_is_refused_by_aiohttp(
    tmp_path: Path,
) -> None:
    """Every byte of the video arrives (its boxes add up), only the last chunk is missing:
    aiohttp raises ClientPayloadError ("not completed"), a failed try. So a chunked body cut
    anywhere is caught before the mp4 check is asked."""
    async with _chunked_cdn(MP4, last_chunk=True) as url:
        await _fetch(url, tmp_path / "whole.mp4")
    assert (tmp_path / "whole.mp4").read_bytes() == MP4
    (tmp_path / "whole.mp4").unlink()
    async with _chunked_cdn(MP4, last_chunk=False) as url:
        message = await _refused(url, tmp_path / "a.mp4")
    assert "Response payload is not completed" in message  # aiohttp's ClientPayloadError
