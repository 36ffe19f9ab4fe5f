"""Cutting a long job's inputs into segment files with PyAV, and reading frames on a grid.

Each segment's video is re-encoded (H.264, CRF 18, no B-frames) from the source's frames
on the plan's constant frame grid, so it starts on a keyframe at timestamp 0 and holds
exactly its share of frames; a dub longer than the video takes the video again from its start
(`extend: loop`) or holds its last frame (`freeze`). Each segment's audio is the dub's samples
over the same range, as 16-bit mono WAV (exact to the sample; it only drives the lip sync:
the stitched result carries the original dub). Files are written to a temporary name, then
renamed: a file at its final name is whole. Blocking: callers use a worker thread.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
from av.audio.stream import AudioStream
from av.video.stream import VideoStream

from pipeline.longform.segments import LongPlan

CRFS = ("18", "23", "28")  # high quality first; coarser only if a cut is over the size limit
AUDIO_MAX_RATE = 48_000
_BITEXACT = {"fflags": "+bitexact"}


def video_rate(path: Path) -> Fraction:
    """The video's frame rate (average, else guessed, else 25), the grid its cuts land on."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else Fraction(25)


def cut_files(folder: Path, index: int) -> tuple[Path, Path]:
    """The (video, audio) cut files of segment `index` (1-based) in `folder`."""
    return folder / f"cut-{index}.mp4", folder / f"cut-{index}.wav"


def cut_segments(
    plan: LongPlan, video: Path, audio: Path, folder: Path, max_bytes: float | None = None
) -> list[tuple[Path, Path]]:
    """Write every missing cut file of `plan` into `folder`; return all (video, audio) pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [cut_files(folder, i) for i in range(1, len(plan.cuts) + 1)]
    if not all(v.exists() for v, _ in files):
        for _index, ((first, last), (dest, _)) in enumerate(
            zip(plan.frame_ranges(), files, strict=True), 1
        ):
            if not dest.exists():
                _cut_video(plan, video, first, last, dest, max_bytes)
    if not all(a.exists() for _, a in files):
        rate, samples = decode_pcm(audio)
        for (start, end), (_, dest) in zip(plan.ranges(), files, strict=True):
            if not dest.exists():
                part = samples[round(start * rate) : round(end * rate)]
                _write_wav(dest, part, rate)
    return files


class FrameGrid:
    """Frames of a video by time, read forward (seeking back when asked for an earlier one):
    `at(t)` is the frame showing at `t` seconds from the stream's start."""

    def __init__(self, path: Path) -> None:
        self._container = av.open(str(path))
        self.stream = self._container.streams.video[0]
        base = self.stream.time_base or Fraction(1, 1000)
        self._base = Fraction(base)
        self._origin = (self.stream.start_time or 0) * self._base
        self._frames: Iterator[av.VideoFrame] | None = None
        self._current: av.VideoFrame | None = None
        self._next: av.VideoFrame | None = None

    def close(self) -> None:
        self._container.close()

    def _time(self, frame: av.VideoFrame) -> float:
        return float((frame.pts or 0) * self._base - self._origin)

    def _restart(self, seconds: float) -> None:
        offset = int((Fraction(seconds) + self._origin) / self._base)
        self._container.seek(max(0, offset), stream=self.stream, backward=True)
        self._frames = iter(self._container.decode(self.stream))
        self._current = next(self._frames, None)
        self._next = next(self._frames, None)
        if self._current is None:
            raise ValueError("no video frame decodes")

    def at(self, seconds: float) -> av.VideoFrame:
        slack = 1e-6
        if self._current is None or self._time(self._current) > seconds + slack:
            self._restart(seconds)
        assert self._current is not None
        assert self._frames is not None
        while self._next is not None and self._time(self._next) <= seconds + slack:
            self._current, self._next = self._next, next(self._frames, None)
        return self._current


def _source_time(plan: LongPlan, frame: int) -> float:
    seconds = float(frame / plan.fps)
    last = plan.video_seconds - float(1 / plan.fps)
    if plan.extend == "loop" and plan.video_seconds > 0:
        return seconds % plan.video_seconds
    return min(seconds, max(0.0, last))  # freeze, and the video cut to the dub


def _cut_video(
    plan: LongPlan, source: Path, first: int, last: int, dest: Path, max_bytes: float | None
) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    for crf in CRFS:
        grid = FrameGrid(source)
        try:
            width, height = grid.stream.width & ~1, grid.stream.height & ~1
            with av.open(str(tmp), "w", format="mp4", options=_BITEXACT) as out:
                stream = out.add_stream("libx264", rate=plan.fps, options={"crf": crf, "bf": "0"})
                assert isinstance(stream, VideoStream)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.time_base = 1 / plan.fps
                for k in range(first, last):
                    frame = grid.at(_source_time(plan, k))
                    if (frame.width, frame.height) != (width, height):
                        frame = frame.reformat(width=width, height=height)
                    # the encoder copies the picture when it is sent: one frame may go twice
                    frame.pts, frame.time_base = k - first, 1 / plan.fps
                    out.mux(stream.encode(frame))
                out.mux(stream.encode(None))
        finally:
            grid.close()
        if max_bytes is None or tmp.stat().st_size <= max_bytes:
            break
    _settle(tmp, dest)


def decode_pcm(path: Path) -> tuple[int, array[int]]:
    """The first audio stream of `path` as mono 16-bit samples, at its rate (48 kHz at most)."""
    samples: array[int] = array("h")
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = min(stream.codec_context.sample_rate or AUDIO_MAX_RATE, AUDIO_MAX_RATE)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        for frame in container.decode(stream):
            for chunk in resampler.resample(frame):
                samples.frombytes(bytes(chunk.planes[0])[: 2 * chunk.samples])
        for chunk in resampler.resample(None):
            samples.frombytes(bytes(chunk.planes[0])[: 2 * chunk.samples])
    return rate, samples


def _write_wav(dest: Path, samples: array[int], rate: int) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    with av.open(str(tmp), "w", format="wav", options=_BITEXACT) as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        assert isinstance(stream, AudioStream)
        for start in range(0, len(samples), 1024):
            chunk = samples[start : start + 1024]
            frame = av.AudioFrame(format="s16", layout="mono", samples=len(chunk))
            frame.planes[0].update(chunk.tobytes())
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    _settle(tmp, dest)


def _settle(tmp: Path, dest: Path) -> None:
    """fsync `tmp`, rename it to `dest`: a cut at its final name is whole."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, dest)
