"""Thumbnails for report.html: one middle frame of a video, as a small JPEG, made once.

A thumbnail lives in `OUT/.thumbs/` under a name made of the file's path, size and mtime (a
hash of them), so a re-run finds it and decodes nothing: a night of 300 results costs one
`stat` per file on the next page. A file whose bytes changed (a new download) gets a new name,
and `prune` drops the thumbnails the page no longer shows.

`thumbnail()` never raises for a bad file: a missing, empty or undecodable video comes back
as a `Thumb` with `problem` set (one line for a person), which the page shows on the card.
PyAV encodes the JPEG itself (FFmpeg's mjpeg encoder), so no imaging library is needed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

THUMBS = ".thumbs"  # the folder, inside the output folder
WIDTH = 240  # pixels: a card shows two side by side
_SUFFIX = ".jpg"


@dataclass(frozen=True)
class Thumb:
    """`path` is the JPEG (None when there is none); `problem` why not, for the card."""

    path: Path | None
    problem: str | None = None


def thumbnail(video: Path, folder: Path) -> Thumb:
    """The middle frame of `video` as a JPEG in `folder`, made now or found from before."""
    try:
        stat = video.stat()
    except FileNotFoundError:
        return Thumb(None, "file missing")
    except OSError as exc:
        return Thumb(None, f"cannot read file: {exc.strerror or exc}")
    if stat.st_size == 0:
        return Thumb(None, "file is empty")
    target = folder / _name(video, stat)
    if target.exists():
        return Thumb(target)
    try:
        data = _middle_frame_jpeg(video)
    except av.FFmpegError as exc:  # its strerror, without the path the card already shows
        return Thumb(None, f"not a readable video: {_one_line(exc.strerror or exc)}")
    except (OSError, ValueError) as exc:
        return Thumb(None, f"not a readable video: {_one_line(exc)}")
    if data is None:
        return Thumb(None, "no picture in the file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write(target, data)
    except OSError as exc:  # a full disk costs the picture, never the page
        return Thumb(None, f"thumbnail not saved: {exc.strerror or exc}")
    return Thumb(target)


def target(video: Path, folder: Path) -> Path:
    """Where `video`'s thumbnail is (or would be) as the file stands now; raises OSError."""
    return folder / _name(video, video.stat())


def _name(video: Path, stat: os.stat_result) -> str:
    key = f"{video.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:32] + _SUFFIX


def prune(folder: Path, keep: Collection[Path]) -> None:
    """Remove the thumbnails in `folder` that are not in `keep` (files since replaced)."""
    names = {path.name for path in keep}
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.suffix == _SUFFIX and entry.name not in names:
            entry.unlink(missing_ok=True)


def _middle_frame_jpeg(video: Path) -> bytes | None:
    with av.open(str(video), metadata_errors="replace") as container:
        if not container.streams.video:
            return None
        stream = container.streams.video[0]
        middle = (container.duration or 0) / av.time_base / 2
        if middle > 0:
            # seek lands on the keyframe before the middle; decode on to the middle itself
            container.seek(int(middle * av.time_base), any_frame=False)
        frame = None
        for frame in container.decode(stream):
            if frame.time is None or frame.time >= middle:
                break
        if frame is None:
            return None
        return _jpeg(frame)


def _jpeg(frame: av.VideoFrame) -> bytes:
    width = min(WIDTH, frame.width)
    height = max(2, round(frame.height * width / frame.width))
    width, height = width - width % 2, height - height % 2  # 4:2:0 wants even sizes
    small = frame.reformat(width=width, height=height, format="yuvj420p")
    small.pts = 0
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    packets = [*encoder.encode(small), *encoder.encode(None)]
    return b"".join(bytes(packet) for packet in packets)


def _write(target: Path, data: bytes) -> None:
    """Whole or not at all: a thumbnail cut short would be reused night after night. The
    temporary is this process's own: `report` may run while a run writes its page."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _one_line(error: object) -> str:
    return " ".join(str(error).split())[:160]
