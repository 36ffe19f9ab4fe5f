"""Downloading a finished generation: stream, check the length, fsync, rename into place.

The output file appears only complete: bytes go to a hidden temporary file in the output folder,
whose length must match `Content-Length` (not the status reply's `size`, unit undocumented),
then it is fsynced and atomically renamed, and the folder fsynced. An expired link (HTTP 403) or
a failed transfer gets a freshly signed link from the status endpoint. A download problem never
triggers a generation.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import aiofiles
import anyio

from pipeline.client import PixverseClient
from pipeline.errors import TransientError, TransportError, VideoGoneError
from pipeline.outputs import place
from pipeline.retry import Sleep

log = logging.getLogger("pipeline.download")

CHUNK = 1 << 16


class LinkExpiredError(TransientError):
    """The signed link answered 403: fetch a new one from the status endpoint."""


@dataclass(frozen=True)
class Link:
    url: str | None
    size: int | None


async def download_result(
    client: PixverseClient,
    video_id: int,
    dest: Path,
    link: Link,
    *,
    tries: int = 5,
    sleep: Sleep = anyio.sleep,
) -> int:
    """Fetch video `video_id` to `dest`; return its byte count. Raises TransientError when
    every try failed (the job stays resumable) or JobError when the video is gone."""
    last: TransientError | None = None
    for attempt in range(tries):
        if link.url is None or attempt > 0:
            link = await _fresh_link(client, video_id)
        try:
            return await fetch_to_file(client, link, dest)
        except LinkExpiredError as exc:
            log.info("video %s: link expired, fetching a new one", video_id)
            last = exc
        except TransportError as exc:
            log.info("video %s: download try %d failed: %s", video_id, attempt + 1, exc)
            last = exc
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


async def fetch_to_file(client: PixverseClient, link: Link, dest: Path) -> int:
    assert link.url is not None
    tmp = dest.with_name(f".{dest.name}.part")
    written, placed = 0, False
    try:
        async with client.open_download(link.url) as response:
            if response.status == 403:
                raise LinkExpiredError("link expired or invalid", http_status=403)
            if response.status != 200:
                raise TransportError("download failed", http_status=response.status)
            expected = response.content_length
            async with aiofiles.open(tmp, "wb") as out:
                async for chunk in response.content.iter_chunked(CHUNK):
                    await out.write(chunk)
                    written += len(chunk)
                await out.flush()
                await anyio.to_thread.run_sync(os.fsync, out.fileno())
        if expected is not None and written != expected:
            raise TransportError(f"got {written} bytes, Content-Length says {expected}")
        place(tmp, dest)  # never over a file already there: that one goes to superseded/
        placed = True
        _fsync_dir(dest.parent)
    finally:
        if not placed:
            tmp.unlink(missing_ok=True)
    return written


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
