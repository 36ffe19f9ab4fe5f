"""Downloading a finished generation: stream, check the length, fsync, rename into place.

The output file appears only complete and only as a video: bytes go to a hidden temporary file
in the output folder; what arrived must match `Content-Length` (counted as sent, before undoing
a `Content-Encoding` the CDN applied although identity was asked for; never the status reply's
`size`, whose unit is undocumented), it must probe as an mp4 with a video stream (a 200
with an HTML page is not a result), and its boxes must add up to its length (`isobmff`: a body
cut short with no `Content-Length`, close-delimited, reads as complete). Then it is fsynced,
placed without overwriting anything (`outputs.place`), and the folder fsynced.

An expired link (HTTP 403), a failed or bad transfer, or a status reply without a link yet (CDN
lag) costs one try, and the next gets a freshly signed link from the status endpoint, after a
jittered backoff. A download problem never triggers a generation. A local write that fails
(disk full, read-only) is a DiskError: no retry, the run stops.
"""

from __future__ import annotations

import logging
import os
import random
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import aiohttp
import anyio
import anyio.to_thread

from pipeline.client import PixverseClient
from pipeline.errors import TransientError, TransportError, VideoGoneError, map_disk_errors
from pipeline.isobmff import IncompleteError, check_whole
from pipeline.media import MediaProbeError, ResultCheck, inspect_result
from pipeline.outputs import place
from pipeline.retry import Sleep

log = logging.getLogger("pipeline.download")

CHUNK = 1 << 16
BATCH = 1 << 20  # bytes handed to the writing thread at once (held in memory meanwhile)
RESULT_CONTAINERS = frozenset({"mp4", "mov"})  # the ISO family, as media.probe names it
_GZIP_PADDING = b"\x00 \t\r\n\x0b\x0c"  # may follow a gzip member (zeros: as Python's gzip)


class LinkExpiredError(TransientError):
    """The signed link answered 403: fetch a new one from the status endpoint."""


@dataclass(frozen=True)
class Link:
    url: str | None
    size: int | None


@dataclass(frozen=True)
class Fetched:
    """A result in place: its byte count, and what reading it found (`media.inspect_result`:
    the caller judges it without opening it again)."""

    size: int
    check: ResultCheck


async def download_result(
    client: PixverseClient,
    video_id: int,
    dest: Path,
    link: Link,
    *,
    tries: int = 5,
    sleep: Sleep = anyio.sleep,
) -> Fetched:
    """Fetch video `video_id` to `dest`. Raises TransientError when
    every try failed (the job stays resumable), JobError when the video is gone, DiskError
    when the file cannot be written."""
    last: TransientError | None = None
    for attempt in range(tries):
        try:
            if link.url is None or attempt > 0:
                link = await _fresh_link(client, video_id)
            return await fetch_to_file(client, link, dest)
        except LinkExpiredError as exc:
            log.info("video %s: link expired, fetching a new one", video_id)
            last = exc  # a new link at once: nothing to wait for
        except TransientError as exc:
            log.info("video %s: download try %d failed: %s", video_id, attempt + 1, exc)
            last = exc
            if attempt + 1 < tries:
                await sleep(random.uniform(0, min(30.0, 0.5 * 2**attempt)))
    assert last is not None
    raise TransientError(f"download failed after {tries} tries: {last}") from last


async def _fresh_link(client: PixverseClient, video_id: int) -> Link:
    status = await client.status(video_id)
    if status.status == 6:
        raise VideoGoneError(f"video {video_id} was deleted before it could be downloaded")
    if status.status != 1 or status.url is None:
        # a paid result is never given up on a puzzling reply: the job stays resumable
        raise TransientError(f"video {video_id}: status {status.status} and no link yet")
    return Link(status.url, status.size)


async def fetch_to_file(client: PixverseClient, link: Link, dest: Path) -> Fetched:
    """Fetch `link` to `dest` (whole, checked, durable). Raises
    LinkExpiredError, TransportError (a failed or bad transfer), DiskError (a failed write)."""
    with map_disk_errors(f"cannot save {dest}"):  # the rename and the folder's fsync
        return await _fetch(client, link, dest)


async def _fetch(client: PixverseClient, link: Link, dest: Path) -> Fetched:
    assert link.url is not None
    tmp = dest.with_name(f".{dest.name}.part")
    placed = False
    try:
        async with client.open_download(link.url) as response:
            if response.status == 403:
                raise LinkExpiredError("link expired or invalid", http_status=403)
            if response.status != 200:
                raise TransportError("download failed", http_status=response.status)
            fetched = await _receive(response, tmp, dest)
        placed = True
    finally:
        # only a temporary that exists: on a read-only file system even unlinking a
        # missing file fails (EROFS), which would hide the error that matters
        if not placed and tmp.exists():
            tmp.unlink()
    return fetched


async def _receive(response: aiohttp.ClientResponse, tmp: Path, dest: Path) -> Fetched:
    """Stream the body into `tmp`, then (`_land`) check it and place it at `dest`.

    Bytes go to the file from a worker thread, `BATCH` at a time (at most that much is held in
    memory); the file is opened with the first batch, and the last batch, flush, fsync, close,
    the check and the rename into place are one trip to the thread: a result under a megabyte
    costs one trip, not one per chunk or step (issue 6: CPU per job).

    Only the file operations are disk errors: a failed read (aiohttp's ClientOSError is an
    OSError too) stays a transport error, mapped where the response was opened."""
    what = f"cannot save {dest}"
    expected = response.content_length
    decoder = _Decoder(response.headers.get("Content-Encoding"))
    received = written = 0
    out: list[BinaryIO] = []  # the file, once opened
    try:
        batch: list[bytes] = []
        pending = 0
        async for chunk in response.content.iter_chunked(CHUNK):
            received += len(chunk)
            data = decoder.feed(chunk)
            batch.append(data)
            pending += len(data)
            written += len(data)
            if pending >= BATCH:
                with map_disk_errors(what):
                    await anyio.to_thread.run_sync(_write, tmp, out, batch)
                batch, pending = [], 0
        data = decoder.finish()
        batch.append(data)
        written += len(data)
        if expected is not None and received != expected:
            # before any rename: a cut transfer never lands (nor is it fsynced for nothing)
            raise TransportError(f"got {received} bytes, Content-Length says {expected}")
        check = await anyio.to_thread.run_sync(_land, tmp, out, batch, dest, what)
    finally:
        if out and not out[0].closed:
            with map_disk_errors(what):
                out[0].close()
    return Fetched(written, check)


def _land(tmp: Path, out: list[BinaryIO], batch: list[bytes], dest: Path, what: str) -> ResultCheck:
    """In the worker thread: the last bytes, durable (`_finish`), checked as a video
    (`_check_video`), then placed at `dest` without overwriting anything (`outputs.place`,
    which fsyncs the folder after the rename); `what` names a failed write."""
    with map_disk_errors(what):
        _finish(tmp, out, batch)
    check = _check_video(tmp)  # outside the disk mapping: a bad video is a failed try
    with map_disk_errors(what):
        place(tmp, dest)
    return check


def _write(path: Path, out: list[BinaryIO], batch: list[bytes]) -> None:
    if not out:
        out.append(path.open("wb"))
    out[0].writelines(batch)


def _finish(path: Path, out: list[BinaryIO], batch: list[bytes]) -> None:
    """The last bytes, then flush, fsync and close: durable before the rename."""
    _write(path, out, batch)
    out[0].flush()
    os.fsync(out[0].fileno())
    out[0].close()


class _Decoder:
    """Undoes a gzip or deflate `Content-Encoding` (none: bytes pass through).

    A gzip body may be several members one after another (RFC 1952 2.2; `gzip`, urllib3 and
    Python's gzip read them all): each member's end starts a new decoder on what follows.
    Zero bytes and ASCII whitespace after a member are padding, skipped; anything else there
    must be another member, or the transfer is bad (urllib3 drops such a tail silently, which
    would also drop a damaged member). A stream that ends inside a member is cut short."""

    def __init__(self, encoding: str | None) -> None:
        self.encoding = (encoding or "identity").strip().lower()
        if self.encoding not in {"identity", "gzip", "x-gzip", "deflate"}:
            raise TransportError(f"download sent with Content-Encoding {encoding!r}")
        self._zlib: zlib._Decompress | None = None
        self._members = 0  # gzip members decoded to their end

    def feed(self, chunk: bytes) -> bytes:
        if self.encoding == "identity" or not chunk:
            return chunk
        if self.encoding == "deflate":
            if self._zlib is None:
                # "deflate" should be zlib-wrapped (RFC 9110 8.4.1.2); some servers send it
                # raw, which aiohttp also accepts: a zlib stream starts with CM = 8 in the
                # low nibble
                raw = chunk[0] & 0x0F != 8
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
            return self._inflate(self._zlib, chunk)
        out = []
        while chunk:
            if self._zlib is None:
                if self._members:
                    chunk = chunk.lstrip(_GZIP_PADDING)
                    if not chunk:
                        break
                self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out.append(self._inflate(self._zlib, chunk))
            if not self._zlib.eof:
                break
            chunk = self._zlib.unused_data  # the next member (or padding) begins here
            self._zlib = None
            self._members += 1
        return b"".join(out)

    def _inflate(self, decoder: zlib._Decompress, chunk: bytes) -> bytes:
        try:
            return decoder.decompress(chunk)
        except zlib.error as exc:
            where = f" after member {self._members}" if self._members else ""
            raise TransportError(f"download: bad {self.encoding} data{where}: {exc}") from exc

    def finish(self) -> bytes:
        if self._zlib is None:  # identity, nothing sent, or a gzip member's end
            return b""
        if not self._zlib.eof:
            raise TransportError(f"download: the {self.encoding} stream is cut short")
        return self._zlib.flush()


def _check_video(path: Path) -> ResultCheck:
    """A result is a whole mp4 with a video stream (`isobmff.check_whole`); anything else (an
    error page sent with 200, a placeholder, a body cut short) is a failed try, never a DONE
    job."""
    try:
        check = inspect_result(path)
    except MediaProbeError as exc:
        raise TransportError(f"the download is not a video: {exc}") from exc
    info = check.info
    if info.kind != "video" or info.container not in RESULT_CONTAINERS:
        raise TransportError(f"the download is {info.container} {info.kind}, not an mp4 video")
    try:
        # a body cut short with no Content-Length (close-delimited) arrives as if whole, and
        # a faststart mp4's front half probes and decodes: its boxes tell
        check_whole(path)
    except IncompleteError as exc:
        raise TransportError(f"the download is cut short: {exc}") from exc
    return check


def check_writable(folder: Path) -> None:
    """Raise OSError unless `folder` can take a file: a probe file is created, written,
    fsynced and removed (before anything is paid for, not after)."""
    probe_file = folder / f".pixverse-batch-probe-{os.getpid()}"
    fd = os.open(probe_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            os.write(fd, b"probe\n")  # a full disk still lets an empty file be created
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        probe_file.unlink()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
