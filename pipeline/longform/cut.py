"""Cutting a long job's inputs into segment files with PyAV, and reading frames on a grid.

`fingerprinted` gives a plan its segments' fingerprints: what each sends, hashed from the
sources (the video's hash with the source times of the segment's frames, the dub's decoded
samples in its range), never from the cut bytes. `cut_segments` records in `cuts.json` which
fingerprint each cut was made for, so a cut of another plan is never sent as this one's.

Each segment's video is re-encoded (H.264, CRF 18, no B-frames) from the source's frames
on the plan's constant frame grid, so it starts on a keyframe at timestamp 0 and holds
exactly its share of frames; a dub longer than the video takes the video again from its start
(`extend: loop`) or holds its last frame (`freeze`). Each segment's audio is the dub's samples
over the same range, as 16-bit mono WAV (exact to the sample; it only drives the lip sync:
the stitched result carries the original dub). Files are written to a temporary name, then
renamed: a file at its final name is whole. Blocking: callers use a worker thread.
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from collections.abc import Callable, Collection, Iterator
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
from av.audio.stream import AudioStream
from av.video.stream import VideoStream

from pipeline.longform.segments import CUTTER, LongPlan

CRFS = ("18", "23", "28")  # high quality first; coarser only if a cut is over the size limit
AUDIO_MAX_RATE = 48_000
_BITEXACT = {"fflags": "+bitexact"}


def video_rate(path: Path) -> Fraction:
    """The video's frame rate (average, else guessed, else 25), the grid its cuts land on."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else Fraction(25)


CUTS_NAME = "cuts.json"  # in a segment folder: cut index -> the fingerprint it was cut for


def cut_files(folder: Path, index: int) -> tuple[Path, Path]:
    """The (video, audio) cut files of segment `index` (1-based) in `folder`."""
    return folder / f"cut-{index}.mp4", folder / f"cut-{index}.wav"


def fingerprinted(plan: LongPlan, video_sha: str, audio: Path) -> LongPlan:
    """`plan` with each segment's fingerprint: the cutter's version, the video's sha256 with
    the source times of the segment's frames (`LongPlan.source_time`), and the sha256 of the
    dub's samples in its range as the cut's WAV holds them. Blocking: the dub is decoded."""
    rate, chunks = _pcm(audio)
    bounds = [(round(start * rate), round(end * rate)) for start, end in plan.ranges()]
    hashers = [hashlib.sha256() for _ in bounds]
    at = 0
    for chunk in chunks:
        count = len(chunk) // 2
        for (first, last), hasher in zip(bounds, hashers, strict=True):
            low, high = max(first, at), min(last, at + count)
            if low < high:
                hasher.update(chunk[2 * (low - at) : 2 * (high - at)])
        at += count
    prints = []
    for (first, last), hasher in zip(plan.frame_ranges(), hashers, strict=True):
        times = [round(plan.source_time(k), 6) for k in range(first, last)]
        parts = {
            "cutter": CUTTER,
            "video": video_sha,
            "fps": str(plan.fps),
            "frames": hashlib.sha256(json.dumps(times).encode()).hexdigest(),
            "audio": hasher.hexdigest(),
            "rate": rate,
        }
        prints.append(hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest())
    return replace(plan, fingerprints=tuple(prints))


def cut_segments(
    plan: LongPlan,
    video: Path,
    audio: Path,
    folder: Path,
    max_bytes: float | None = None,
    *,
    wanted: Collection[int] | None = None,
    on_cut: Callable[[int, tuple[Path, Path]], None] | None = None,
) -> list[tuple[Path, Path]]:
    """Make sure the cut files of the `wanted` segments (1-based; all by default) are in
    `folder`, cut for this plan's fingerprints (`cuts.json` says which each was cut for: a
    cut of another plan is cut again); `on_cut(index, files)` is told of each as soon as it
    is ready. Returns every segment's (video, audio) pair."""
    folder.mkdir(parents=True, exist_ok=True)
    count = len(plan.cuts)
    files = [cut_files(folder, i) for i in range(1, count + 1)]
    made = _made(folder)
    samples: tuple[int, array[int]] | None = None
    for index in sorted(set(range(1, count + 1) if wanted is None else wanted)):
        pair = files[index - 1]
        fingerprint = plan.segment_fingerprint(index)
        if made.get(str(index)) != fingerprint or not all(p.exists() for p in pair):
            if made.pop(str(index), None) is not None:
                _record(folder, made)  # a cut being replaced belongs to no segment meanwhile
            first, last = plan.frame_ranges()[index - 1]
            _cut_video(plan, video, first, last, pair[0], max_bytes)
            if samples is None:
                samples = decode_pcm(audio)
            rate, pcm = samples
            start, end = plan.ranges()[index - 1]
            _write_wav(pair[1], pcm[round(start * rate) : round(end * rate)], rate)
            made[str(index)] = fingerprint
            _record(folder, made)
        if on_cut is not None:
            on_cut(index, pair)
    return files


def _made(folder: Path) -> dict[str, str]:
    """`cuts.json` of `folder`: which fingerprint each cut there was made for."""
    try:
        data = json.loads((folder / CUTS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _record(folder: Path, made: dict[str, str]) -> None:
    tmp = folder / f".{CUTS_NAME}.tmp"
    tmp.write_text(json.dumps(made, sort_keys=True), encoding="utf-8")
    _settle(tmp, folder / CUTS_NAME)


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
                    frame = grid.at(plan.source_time(k))
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
    rate, chunks = _pcm(path)
    for chunk in chunks:
        samples.frombytes(chunk)
    return rate, samples


def _pcm(path: Path) -> tuple[int, Iterator[bytes]]:
    """The rate of `path`'s first audio stream (48 kHz at most), and its samples as mono
    16-bit bytes, chunk by chunk, decoded as they are read."""
    with av.open(str(path)) as container:
        codec = container.streams.audio[0].codec_context
        rate = min(codec.sample_rate or AUDIO_MAX_RATE, AUDIO_MAX_RATE)

    def chunks() -> Iterator[bytes]:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            for frame in container.decode(stream):
                for chunk in resampler.resample(frame):
                    yield bytes(chunk.planes[0])[: 2 * chunk.samples]
            for chunk in resampler.resample(None):
                yield bytes(chunk.planes[0])[: 2 * chunk.samples]

    return rate, chunks()


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
