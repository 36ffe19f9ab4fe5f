"""Real media for the simulator: probing uploads, and producing result videos.

Result videos are real, playable MP4s, made in memory with the video id written into the
container metadata (so every video id has distinct bytes): the uploaded source video's picture
(or, for a `source_video_id`, the bundled `assets/base.mp4`, 64x64 H.264, 1 s) with the uploaded
audio (or, for TTS, a speech-like tone as long as the script) re-encoded to AAC as its sound
track. No lips move, but a person playing the demo's output sees their clip carrying the dub.
PyAV calls block, so callers run them in a worker thread.
"""

from __future__ import annotations

import functools
import hashlib
import io
import tempfile
import threading
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import av
import av.error

from pipeline._samples import make_audio
from pipeline.media import duration_of

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".webm"})
AUDIO_EXTENSIONS = frozenset({".mp3", ".wav", ".m4a", ".aac"})
# Used only when the filename has no known extension.
CONTENT_TYPES: dict[str, str] = {
    "video/mp4": "video",
    "video/quicktime": "video",
    "video/webm": "video",
    "audio/mpeg": "audio",
    "audio/mp3": "audio",
    "audio/wav": "audio",
    "audio/x-wav": "audio",
    "audio/wave": "audio",
    "audio/mp4": "audio",
    "audio/x-m4a": "audio",
    "audio/aac": "audio",
}

BASE_CLIP = "base.mp4"
BASE_CLIP_SIZE = 64
BASE_CLIP_FRAMES = 12


class InvalidMediaError(Exception):
    """The bytes are not media PyAV can read, or lack the expected kind of stream."""


@dataclass(frozen=True)
class Probe:
    duration: float  # seconds
    width: int = 0  # video only
    height: int = 0


def media_type_for(filename: str, content_type: str | None) -> str | None:
    """`"video"`, `"audio"` or None (unsupported), by extension, else by content type."""
    suffix = Path(filename).suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in AUDIO_EXTENSIONS:
        return "audio"
    if suffix:
        return None
    return CONTENT_TYPES.get((content_type or "").split(";")[0].strip().lower())


def probe(data: bytes, media_type: str) -> Probe:
    """Open `data` with PyAV and measure it; raises InvalidMediaError."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            streams = container.streams.video if media_type == "video" else container.streams.audio
            if not streams:
                raise InvalidMediaError(f"no {media_type} stream")
            stream = streams[0]
            width = height = 0
            if isinstance(stream, av.VideoStream):
                width, height = stream.codec_context.width, stream.codec_context.height
            duration = duration_of(container, [stream])
    except (av.error.FFmpegError, ValueError, IndexError) as exc:
        raise InvalidMediaError(str(exc)) from exc
    if duration is None:
        raise InvalidMediaError("duration unknown")
    return Probe(duration=duration, width=width, height=height)


def base_clip_bytes() -> bytes:
    return resources.files("pipeline.simulator").joinpath("assets", BASE_CLIP).read_bytes()


def compose(video: bytes, audio: bytes | None) -> bytes:
    """`video`'s picture stream remuxed (no re-encode) into an MP4, with `audio`'s first audio
    stream re-encoded to AAC beside it. The costly part of a result: cached per source pair."""
    output = io.BytesIO()
    with (
        av.open(io.BytesIO(video), mode="r") as source,
        av.open(io.BytesIO(audio or b""), mode="r") if audio else nullcontext() as sound,
        av.open(output, mode="w", format="mp4") as target,
    ):
        source_stream = source.streams.video[0]
        # every stream is declared before the first packet: MP4 writes its header then
        target_stream = target.add_stream_from_template(source_stream)
        encode_audio = _aac_track(target, sound) if sound is not None else None
        _copy_packets(source, {source_stream.index: target_stream}, target)
        if encode_audio is not None:
            encode_audio()
    return output.getvalue()


def stamp(master: bytes, video_id: int) -> bytes:
    """`master` remuxed stream for stream with `video_id` in its metadata: distinct bytes per
    video id for the price of a copy."""
    output = io.BytesIO()
    with (
        av.open(io.BytesIO(master), mode="r") as source,
        av.open(output, mode="w", format="mp4") as target,
    ):
        target.metadata["title"] = f"PixVerse simulator result {video_id}"
        target.metadata["comment"] = f"pixverse-sim video_id={video_id}"
        streams = {s.index: target.add_stream_from_template(s) for s in source.streams}
        _copy_packets(source, streams, target)
    return output.getvalue()


def spoil(data: bytes, how: str) -> bytes:
    """A result that still probes as an mp4 with a video stream but is wrong: "short" keeps
    only the first picture packet (no sound), "garbled" keeps every packet with its bytes
    replaced by a pattern no decoder makes a frame of."""
    output = io.BytesIO()
    with (
        av.open(io.BytesIO(data), mode="r") as source,
        av.open(output, mode="w", format="mp4") as target,
    ):
        picture = source.streams.video[0]
        stream = target.add_stream_from_template(picture)
        for index, packet in enumerate(source.demux(picture)):
            if packet.dts is None or (how == "short" and index > 0):
                continue
            out: av.Packet[Any] = packet
            if how == "garbled":
                out = av.Packet(bytes(packet.size))  # zeros: no NAL unit starts in them
                out.pts, out.dts, out.duration = packet.pts, packet.dts, packet.duration
                out.time_base, out.is_keyframe = packet.time_base, packet.is_keyframe
            out.stream = stream
            target.mux(out)
    return output.getvalue()


def _copy_packets(
    source: av.container.InputContainer,
    streams: dict[int, Any],
    target: av.container.OutputContainer,
) -> None:
    for packet in source.demux(*(source.streams[i] for i in streams)):
        if packet.dts is None:  # the demuxer's end-of-stream flush packet
            continue
        packet.stream = streams[packet.stream.index]
        target.mux(packet)


def _aac_track(
    target: av.container.OutputContainer, sound: av.container.InputContainer
) -> Callable[[], None]:
    """Add a mono AAC stream to `target` now; the returned function encodes `sound` into it."""
    source_stream = sound.streams.audio[0]
    rate = source_stream.codec_context.sample_rate or 44100
    stream = target.add_stream("aac", rate=rate, layout="mono")
    assert isinstance(stream, av.AudioStream)

    def encode() -> None:
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
        for frame in sound.decode(source_stream):
            for chunk in resampler.resample(frame):
                target.mux(stream.encode(chunk))
        for chunk in resampler.resample(None):
            target.mux(stream.encode(chunk))
        target.mux(stream.encode(None))

    return encode


def speech_for(script: str) -> bytes:
    """A speech-like WAV as long as reading `script` aloud takes (about 12 characters a
    second, 1 to 30 s): what the simulator "speaks" for a TTS job."""
    return _speech(round(min(30.0, max(1.0, len(script) / 12)), 1))


@functools.lru_cache(maxsize=64)
def _speech(seconds: float) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = make_audio(Path(folder) / "tts.wav", seconds=seconds, sample_rate=16_000)
        return path.read_bytes()


def _frame_size(data: bytes) -> tuple[int, int]:
    with av.open(io.BytesIO(data), mode="r") as container:
        context = container.streams.video[0].codec_context
        return context.width, context.height


class ResultVideos:
    """Result MP4 bytes per video id, made on first use and then cached."""

    def __init__(self, base: bytes | None = None) -> None:
        self._base = base_clip_bytes() if base is None else base
        self._masters: dict[tuple[bytes, bytes], bytes] = {}  # by the sources' digests
        self._cache: dict[int, tuple[bytes, tuple[int, int]]] = {}
        self._lock = threading.Lock()

    def get(
        self,
        video_id: int,
        video: bytes | None = None,
        audio: bytes | None = None,
        flaw: Callable[[], str | None] = lambda: None,
    ) -> bytes:
        """Blocking: call from a worker thread. `video`/`audio` are the uploaded sources;
        `flaw` is asked once, when the video's bytes are made (see `spoil`)."""
        with self._lock:
            cached = self._cache.get(video_id)
        if cached is not None:
            return cached[0]
        data = stamp(self._master(video or self._base, audio), video_id)
        how = flaw()
        if how is not None:
            data = spoil(data, how)
        entry = (data, _frame_size(data))
        with self._lock:
            return self._cache.setdefault(video_id, entry)[0]

    def _master(self, video: bytes, audio: bytes | None) -> bytes:
        key = (hashlib.sha256(video).digest(), hashlib.sha256(audio or b"").digest())
        with self._lock:
            master = self._masters.get(key)
        if master is None:
            try:
                master = compose(video, audio)
            except (av.error.FFmpegError, ValueError, IndexError):
                # a source PyAV cannot put into an MP4 as it is: the bundled clip stands in
                master = compose(self._base, None)
            with self._lock:
                master = self._masters.setdefault(key, master)
        return master

    def has(self, video_id: int) -> bool:
        with self._lock:
            return video_id in self._cache

    def size_of(self, video_id: int) -> tuple[int, int]:
        """(width, height) of a result made by `get`; the base clip's size before that."""
        with self._lock:
            cached = self._cache.get(video_id)
        return cached[1] if cached is not None else (BASE_CLIP_SIZE, BASE_CLIP_SIZE)


def make_base_clip(path: Path) -> None:
    """Write the bundled base clip: how `assets/base.mp4` was made (kept for regeneration).

    A moving green square on a colour ramp, encoded with the libx264 that PyAV's wheels ship.
    """
    size = BASE_CLIP_SIZE
    with av.open(str(path), "w", format="mp4") as target:
        stream = target.add_stream("libx264", rate=BASE_CLIP_FRAMES)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "35"}
        for index in range(BASE_CLIP_FRAMES):
            frame = av.VideoFrame(size, size, "rgb24")
            line = frame.planes[0].line_size
            pixels = bytearray(line * size)
            for y in range(size):
                for x in range(size):
                    offset = y * line + 3 * x
                    inside = 16 <= y < 48 and index * 4 <= x < index * 4 + 16
                    pixels[offset : offset + 3] = bytes(
                        ((index * 20) % 256, 255 if inside else 0, 128)
                    )
            frame.planes[0].update(bytes(pixels))
            target.mux(stream.encode(frame))
        target.mux(stream.encode(None))


if __name__ == "__main__":
    make_base_clip(Path(__file__).with_name("assets") / BASE_CLIP)
