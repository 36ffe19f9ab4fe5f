"""Synthetic sample media: small, real, deterministic files written through PyAV.

The demo's sample files (`manifests/make_media.py`) and the tests' on-the-fly media
(`tests/media_factory.py`) both come from here, so there is one encoder to keep working.
Video is scrolling colour bars with a bouncing white square; audio is a pitch-gliding
harmonic tone chopped into ~4 "syllables" a second, so a human can see and hear that a file
plays. Pure Python (no numpy): frames are built as bytes, which is fast enough at these sizes.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
from av.audio.stream import AudioStream
from av.container import OutputContainer
from av.stream import Disposition
from av.video.stream import VideoStream

# Container format name -> (video encoder, audio encoder or None for a silent-only format).
_VIDEO_FORMATS = {
    "mp4": ("libx264", "aac"),
    "mov": ("libx264", "aac"),
    "matroska": ("libx264", "aac"),
    "webm": ("libvpx", "libopus"),
    "h264": ("libx264", None),  # raw Annex B stream: no timestamps, no duration in a header
}
_VIDEO_SUFFIXES = {
    ".mp4": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".webm": "webm",
    ".h264": "h264",
}
# Suffix -> (container format, audio encoder). "ipod" is FFmpeg's muxer for .m4a (brand M4A).
_AUDIO_FORMATS = {
    ".mp3": ("mp3", "libmp3lame"),
    ".wav": ("wav", "pcm_s16le"),
    ".m4a": ("ipod", "aac"),
}
# Muxers stamp their library version and the time of writing unless asked to be bit-exact;
# both would make regenerated samples differ from the committed ones.
_BITEXACT = {"fflags": "+bitexact"}
_TRACK_RATE = 16_000  # sample rate of a video's own audio track
_BARS = (  # SMPTE-ish colour bars, RGB
    (192, 192, 192),
    (192, 192, 0),
    (0, 192, 192),
    (0, 192, 0),
    (192, 0, 192),
    (192, 0, 0),
    (0, 0, 192),
    (16, 16, 16),
)


def make_video(
    path: Path,
    *,
    seconds: float = 1.0,
    width: int = 64,
    height: int = 36,
    fps: int = 5,
    container: str | None = None,
    audio: bool = True,
) -> Path:
    """Write an H.264 (VP8 for webm) video of `seconds` at `fps`; return `path`.

    `container` is an FFmpeg muxer name ("mp4", "mov", "matroska", "webm", "h264"); by default
    it follows the suffix. Width and height must be even (4:2:0 chroma). With `audio`, the
    file also carries a mono speech-like track (none for raw "h264").
    """
    fmt = container or _VIDEO_SUFFIXES.get(path.suffix.lower())
    if fmt not in _VIDEO_FORMATS:
        raise ValueError(f"{path.name}: no video container for {container or path.suffix!r}")
    if width % 2 or height % 2:
        raise ValueError(f"{width}x{height}: width and height must be even for yuv420p")
    video_codec, audio_codec = _VIDEO_FORMATS[fmt]
    frames = max(1, round(seconds * fps))
    with av.open(str(path), "w", format=fmt, options=_BITEXACT) as out:
        video = out.add_stream(video_codec, rate=fps, options={"crf": "30", "threads": "1"})
        assert isinstance(video, VideoStream)  # the codec name is not a literal mypy can map
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        if video_codec == "libvpx":  # libvpx ignores crf without a bitrate ceiling
            video.bit_rate = 200_000
        track: AudioStream | None = None
        if audio and audio_codec is not None:
            track = _add_mono(out, audio_codec, _TRACK_RATE)
        for i in range(frames):
            frame = av.VideoFrame.from_bytes(_bars(i, frames, width, height), width, height)
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if track is not None:
            _encode_tone(out, track, frames / fps, _TRACK_RATE)
    return path


def make_audio(
    path: Path,
    *,
    seconds: float = 1.0,
    sample_rate: int = 8000,
    cover_art: bool = False,
    pauses: Sequence[tuple[float, float]] = (),
) -> Path:
    """Write a mono speech-like clip of `seconds`; .mp3, .wav or .m4a by suffix. Return `path`.

    `pauses` are (start, end) seconds of silence, as between a speaker's sentences.

    `cover_art` (mp3 only) adds an ID3 front-cover picture, which FFmpeg shows as a video
    stream flagged as an attached picture, as it does for real music files.
    """
    if path.suffix.lower() not in _AUDIO_FORMATS:
        raise ValueError(f"{path.name}: no audio container for suffix {path.suffix!r}")
    fmt, codec = _AUDIO_FORMATS[path.suffix.lower()]
    if cover_art and fmt != "mp3":
        raise ValueError(f"{path.name}: cover art is only written into mp3")
    with av.open(str(path), "w", format=fmt, options=_BITEXACT) as out:
        stream = _add_mono(out, codec, sample_rate)
        if cover_art:
            _add_cover(out)
        _encode_tone(out, stream, seconds, sample_rate, pauses)
    return path


def _add_mono(out: OutputContainer, codec: str, rate: int) -> AudioStream:
    stream = out.add_stream(codec, rate=rate, layout="mono")
    assert isinstance(stream, AudioStream)  # the codec name is not a literal mypy can map
    return stream


def _add_cover(out: OutputContainer, side: int = 16) -> None:
    cover = out.add_stream("png", rate=1)
    assert isinstance(cover, VideoStream)
    cover.width, cover.height, cover.pix_fmt = side, side, "rgb24"
    cover.disposition = Disposition.attached_pic
    frame = av.VideoFrame.from_bytes(_bars(0, 1, side, side), side, side)
    frame = frame.reformat(format="rgb24")
    frame.pts = 0
    out.mux(cover.encode(frame) + cover.encode(None))


def _bars(index: int, count: int, width: int, height: int) -> bytes:
    """RGBA pixels of frame `index`: bars scroll one screen per clip, a square bounces."""
    shift = index * width // max(count, 1)
    row = b"".join(
        bytes((*_BARS[((x + shift) * len(_BARS) // width) % len(_BARS)], 255)) for x in range(width)
    )
    pixels = bytearray(row * height)
    side = max(2, height // 4)
    travel = max(width - side, 1)
    left = abs((index * 7) % (2 * travel) - travel)  # to and fro across the frame
    top = (height - side) // 2
    white = b"\xff" * (4 * side)
    for y in range(top, top + side):
        start = 4 * (y * width + left)
        pixels[start : start + len(white)] = white
    return bytes(pixels)


def _encode_tone(
    out: OutputContainer,
    stream: AudioStream,
    seconds: float,
    rate: int,
    pauses: Sequence[tuple[float, float]] = (),
) -> None:
    """Encode `seconds` of speech-like tone into `stream`, 1024 samples a frame, silent
    during `pauses`."""
    samples = _tone(round(seconds * rate), rate)
    for start, end in pauses:
        first, last = round(start * rate), min(len(samples), round(end * rate))
        samples[first:last] = array("h", bytes(2 * max(0, last - first)))
    for start in range(0, len(samples), 1024):
        chunk = samples[start : start + 1024]
        frame = av.AudioFrame(format="s16", layout="mono", samples=len(chunk))
        frame.planes[0].update(chunk.tobytes())
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def _tone(count: int, rate: int) -> array[int]:
    """`count` s16 samples: a voice-like 120→220 Hz glide with 3 harmonics and syllable gaps."""
    seconds = max(count / rate, 1e-9)
    low, high = 120.0, 220.0
    samples = array("h", bytes(2 * count))
    for i in range(count):
        t = i / rate
        phase = 2 * math.pi * (low * t + (high - low) * t * t / (2 * seconds))
        voice = math.sin(phase) + 0.5 * math.sin(2 * phase) + 0.25 * math.sin(3 * phase)
        envelope = math.sin(math.pi * 4 * t) ** 2  # four syllables a second
        samples[i] = int(9000 * envelope * voice)  # peak 1.75 * 9000 stays inside s16
    return samples
