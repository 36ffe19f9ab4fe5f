"""Media facts read by FFmpeg's own demuxers (through PyAV), and content hashes.

`probe` trusts the bytes, never the file name: a QuickTime file named ``.mp4`` is reported as
``mov``. It never decodes: it reads headers, and only for raw streams without one (such as
Annex B H.264) does it walk the packets to add up their durations.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import av
import av.logging
from av.audio.stream import AudioStream
from av.container import InputContainer
from av.stream import Disposition
from av.video.stream import VideoStream

# FFmpeg calls the whole ISO-BMFF family one demuxer; the ftyp major brand tells them apart.
# https://www.ftyps.com lists the registered brands; anything else ISO-based is plain mp4.
_ISO_FAMILY = "mov,mp4,m4a,3gp,3g2,mj2"
_BRANDS = {"qt": "mov", "M4A": "m4a", "M4B": "m4a", "M4P": "m4a", "mjp2": "mj2"}
_EBML_DOCTYPE = b"\x42\x82"  # Matroska header element naming "matroska" or "webm"
# FFmpeg's log callback is process-wide; concurrent probes must not restore each other's level.
_LOG_LOCK = threading.Lock()


class MediaProbeError(ValueError):
    """A file that is not readable media, or media with neither a video nor an audio stream.

    The message is one line meant for a person, e.g. ``not a readable media file: moov atom
    not found``; callers prefix it with the file and job.
    """


@dataclass(frozen=True)
class MediaInfo:
    """What `probe` found. `has_audio` is true for any file with an audio stream."""

    kind: Literal["video", "audio"]
    container: str  # "mp4", "mov", "m4a", "mp3", "wav", "webm", "matroska", ... from the bytes
    duration: float  # seconds
    width: int | None  # video only
    height: int | None
    size: int  # bytes on disk
    has_audio: bool  # for a video: it also carries an audio track


def probe(path: Path) -> MediaInfo:
    """Describe the media in `path`; raise MediaProbeError if it is not usable media."""
    return _read(path, lambda container, size, _: _describe(container, path, size))


_T = TypeVar("_T")


def _read(path: Path, read: Callable[[InputContainer, int, _Logs], _T]) -> _T:
    """`read(container, size, FFmpeg's error lines)` of the media in `path`, opened once;
    MediaProbeError when it is not readable media."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise MediaProbeError(f"cannot read file: {exc.strerror or exc}") from exc
    if size == 0:
        raise MediaProbeError("file is empty")
    with _ffmpeg_errors() as logs:
        try:
            with av.open(str(path), metadata_errors="replace") as container:
                return read(container, size, logs)
        except (av.FFmpegError, OSError) as exc:
            detail = logs[-1][2] if logs else (exc.strerror or str(exc))
            raise MediaProbeError(f"not a readable media file: {_one_line(detail)}") from exc


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of the file's bytes, read `chunk_size` bytes at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


_Logs = list[tuple[int, str, str]]  # FFmpeg's log lines: level, component, message


@contextmanager
def _ffmpeg_errors() -> Iterator[_Logs]:
    """Capture FFmpeg's error lines (for messages) and keep its warnings off the terminal.

    PyAV installs no log callback by default, which also hides the reason an open failed
    ("moov atom not found"). Capturing at ERROR gets that reason without printing anything;
    repeat-skipping is off because a second bad file would otherwise log nothing.
    """
    with _LOG_LOCK:
        level, skip = av.logging.get_level(), av.logging.get_skip_repeated()
        av.logging.set_level(av.logging.ERROR)
        av.logging.set_skip_repeated(False)
        try:
            with av.logging.Capture() as logs:
                yield logs
        finally:
            av.logging.set_skip_repeated(skip)
            av.logging.set_level(level)


def _describe(container: InputContainer, path: Path, size: int) -> MediaInfo:
    videos = [
        s
        for s in container.streams.video
        if not s.disposition & Disposition.attached_pic  # cover art in an mp3 or m4a
    ]
    audios = list(container.streams.audio)
    if not videos and not audios:
        raise MediaProbeError("no video or audio stream")
    streams: list[VideoStream | AudioStream] = [*videos, *audios]
    duration = duration_of(container, streams)
    if duration is None:
        raise MediaProbeError("cannot tell how long the media is")
    return MediaInfo(
        kind="video" if videos else "audio",
        container=_container_name(container, path),
        duration=duration,
        width=(videos[0].width or None) if videos else None,
        height=(videos[0].height or None) if videos else None,
        size=size,
        has_audio=bool(audios),
    )


def duration_of(
    container: InputContainer, streams: Sequence[VideoStream | AudioStream]
) -> float | None:
    """Seconds: the container's header, else the streams' headers, else the packets' clocks."""
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    headers = [
        float(s.duration * s.time_base) for s in streams if s.duration and s.time_base is not None
    ]
    if headers:
        return max(headers)
    # Raw streams (e.g. Annex B H.264) have no header: add up packet durations, no decoding.
    ends: dict[int, float] = {}
    for packet in container.demux(list(streams)):
        if packet.time_base is None or not packet.duration:
            continue
        step = float(packet.duration * packet.time_base)
        if packet.pts is None:
            end = ends.get(packet.stream.index, 0.0) + step
        else:
            end = float(packet.pts * packet.time_base) + step
        ends[packet.stream.index] = max(ends.get(packet.stream.index, 0.0), end)
    return max(ends.values(), default=None)


def _container_name(container: InputContainer, path: Path) -> str:
    name = container.format.name
    if name == _ISO_FAMILY:
        # QuickTime files from before ftyp existed have no brand at all: they are mov.
        brand = container.metadata.get("major_brand", "qt").strip()
        family = brand[:3] if brand[:3] in {"3gp", "3g2"} else "mp4"  # 3gp4, 3gp5, 3g2a...
        return _BRANDS.get(brand, family)
    if name == "matroska,webm":
        return _ebml_doctype(path)
    return name.split(",")[0]


def _ebml_doctype(path: Path) -> str:
    """Tell webm from matroska: FFmpeg has one demuxer for both; the EBML DocType says which."""
    with path.open("rb") as f:
        head = f.read(64)
    at = head.find(_EBML_DOCTYPE)
    if at < 0 or at + 3 > len(head) or not head[at + 2] & 0x80:
        return "matroska"
    length = head[at + 2] & 0x7F  # a one-byte EBML size, as every muxer writes it here
    return "webm" if head[at + 3 : at + 3 + length] == b"webm" else "matroska"


def _one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class ResultCheck:
    """A downloaded result as one reading of it found it: what `probe` says, and why its
    first video frame does not decode (None: it decodes; a file without video has none)."""

    info: MediaInfo
    frame_problem: str | None


def inspect_result(path: Path) -> ResultCheck:
    """`probe` and the first frame's decode in one opening of the file (a result is read
    once: on 10,000 jobs a second opening is seconds of CPU). Raises MediaProbeError when
    the file is not readable media, as `probe` does."""

    def read(container: InputContainer, size: int, logs: _Logs) -> ResultCheck:
        return ResultCheck(_describe(container, path, size), _frame_problem(container, logs))

    return _read(path, read)


def _frame_problem(container: InputContainer, logs: _Logs) -> str | None:
    if not container.streams.video:
        return None
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1  # one frame: decoder threads cost more than they give
    try:
        if _first_frame(container, stream) is None:
            return "its first video frame does not decode"
    except (av.FFmpegError, ValueError) as exc:
        detail = logs[-1][2] if logs else str(exc)
        return f"its first video frame does not decode: {_one_line(detail)}"
    return None


def result_problem(
    path: Path, audio_seconds: float | None, video_seconds: float | None = None
) -> str | None:
    """`judge_result` of the file at `path` (one that is no readable media: it does not
    decode)."""
    try:
        check = inspect_result(path)
    except MediaProbeError as exc:
        return f"its first video frame does not decode: {exc}"
    return judge_result(check, audio_seconds, video_seconds)


def judge_result(
    check: ResultCheck, audio_seconds: float | None, video_seconds: float | None = None
) -> str | None:
    """Why a downloaded result looks wrong although it is an mp4 with a video stream, or None.

    Its first video frame must decode, and when the dub's audio length is known (None for TTS:
    the spoken length is the server's), the result must cover it: not shorter than the audio,
    nor longer than the longer of the audio and the source video (a lip sync may keep the
    source's length), each within max(1 s, 10 %) of slack for encoders' padding."""
    if check.info.kind != "video":
        return "no video stream"
    if check.frame_problem is not None:
        return check.frame_problem
    duration = check.info.duration
    if audio_seconds is None:
        return None
    slack = max(1.0, 0.1 * audio_seconds)
    longest = max(audio_seconds, video_seconds or 0.0)
    if duration < audio_seconds - slack:
        return f"{duration:.1f} s long, shorter than its {audio_seconds:.1f} s of audio"
    if video_seconds is not None and duration > longest + slack:
        return f"{duration:.1f} s long, longer than its sources ({longest:.1f} s)"
    return None


def _first_frame(container: InputContainer, stream: VideoStream) -> av.VideoFrame | None:
    """The first decoded frame of `stream`, reading no further than needed (None: none)."""
    for packet in container.demux(stream):
        for frame in packet.decode():
            if isinstance(frame, av.VideoFrame):
                return frame
    return None
