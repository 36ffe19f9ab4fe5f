"""Stitching: the lip-synced segments' pictures in order, with the full original dub as sound.

The picture of segment i fills frames `plan.frame_ranges()[i]` of the result. When every
segment's result has the same codec parameters and exactly its share of frames, packets are
copied (timestamps moved by the segment's start); otherwise every frame is decoded and
encoded again on the plan's grid (a short result holds its last frame). The audio is the
original dub, whole, encoded once to AAC: no click or gap at a cut, and the result's length is
the dub's. Writes `tmp` (fsynced); the caller places it (`pipeline.outputs.place`). Blocking.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.video.stream import VideoStream

from pipeline.longform.cut import AUDIO_MAX_RATE, FrameGrid
from pipeline.longform.segments import LongPlan

log = logging.getLogger("pipeline.longform")


class StitchError(ValueError):
    """A segment result that cannot be read or joined (kept: it was paid for)."""


def stitch(plan: LongPlan, results: Sequence[Path], dub: Path, tmp: Path) -> str:
    """Write the stitched result of `plan` to `tmp`; return how: "copy" or "encode"."""
    try:
        mode = "copy" if _copyable(plan, results) else "encode"
        try:
            _write(plan, results, dub, tmp, mode)
        except (av.FFmpegError, ValueError) as exc:
            if mode == "encode":
                raise
            log.info("%s: stream copy refused (%s): encoding again", plan.job_id, exc)
            mode = "encode"
            _write(plan, results, dub, tmp, mode)
    except (av.FFmpegError, ValueError, IndexError) as exc:
        tmp.unlink(missing_ok=True)
        raise StitchError(f"cannot stitch the segments: {' '.join(str(exc).split())}") from exc
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    return mode


def _signature(stream: VideoStream) -> tuple[Any, ...]:
    context = stream.codec_context
    return (
        context.name,
        context.width,
        context.height,
        context.pix_fmt,
        bytes(context.extradata or b""),
        stream.time_base,
    )


def _copyable(plan: LongPlan, results: Sequence[Path]) -> bool:
    """Same codec parameters everywhere, and each result exactly its share of frames."""
    signatures = set()
    for path, (first, last) in zip(results, plan.frame_ranges(), strict=True):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            signatures.add(_signature(stream))
            count = sum(1 for p in container.demux(stream) if p.dts is not None)
        if count != last - first:
            return False
    return len(signatures) == 1


def _write(plan: LongPlan, results: Sequence[Path], dub: Path, tmp: Path, mode: str) -> None:
    with av.open(str(dub)) as sound, av.open(str(tmp), "w", format="mp4") as out:
        if mode == "copy":
            with av.open(str(results[0])) as first:
                template = first.streams.video[0]
                video = out.add_stream_from_template(template)
                video.time_base = template.time_base
            pictures = _copied(plan, results, video)
        else:
            video, pictures = _encoded(plan, results, out)
        audio, sounds = _dub(sound, out)
        _interleave(out, pictures, sounds)
        del audio


def _copied(
    plan: LongPlan, results: Sequence[Path], stream: VideoStream
) -> Iterator[av.Packet[Any]]:
    """Every segment's picture packets, their timestamps moved to the segment's start."""
    for path, (first, _) in zip(results, plan.frame_ranges(), strict=True):
        with av.open(str(path)) as container:
            source = container.streams.video[0]
            base = Fraction(source.time_base or Fraction(1, 1000))
            offset = round(Fraction(first) / plan.fps / base)
            zero: int | None = None
            for packet in container.demux(source):
                if packet.dts is None or packet.pts is None:
                    continue
                if zero is None:
                    zero = packet.pts
                packet.pts = packet.pts - zero + offset
                packet.dts = packet.dts - zero + offset
                packet.stream = stream
                yield packet


def _encoded(
    plan: LongPlan, results: Sequence[Path], out: OutputContainer
) -> tuple[VideoStream, Iterator[av.Packet[Any]]]:
    with av.open(str(results[0])) as first:
        width = first.streams.video[0].width & ~1
        height = first.streams.video[0].height & ~1
    stream = out.add_stream("libx264", rate=plan.fps, options={"crf": "18", "bf": "0"})
    assert isinstance(stream, VideoStream)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.time_base = 1 / plan.fps

    def packets() -> Iterator[av.Packet[Any]]:
        for path, (first_frame, last) in zip(results, plan.frame_ranges(), strict=True):
            grid = FrameGrid(path)
            try:
                for k in range(first_frame, last):
                    frame = grid.at(float((k - first_frame) / plan.fps))
                    if (frame.width, frame.height) != (width, height):
                        frame = frame.reformat(width=width, height=height)
                    frame.pts, frame.time_base = k, 1 / plan.fps
                    yield from stream.encode(frame)
            finally:
                grid.close()
        yield from stream.encode(None)

    return stream, packets()


def _dub(
    sound: InputContainer, out: OutputContainer
) -> tuple[AudioStream, Iterator[av.Packet[Any]]]:
    """The whole dub as AAC: mono or stereo, at its own rate (48 kHz at most)."""
    source = sound.streams.audio[0]
    rate = min(source.codec_context.sample_rate or AUDIO_MAX_RATE, AUDIO_MAX_RATE)
    layout = "mono" if (source.codec_context.channels or 1) == 1 else "stereo"
    stream = out.add_stream("aac", rate=rate, layout=layout)
    assert isinstance(stream, AudioStream)

    def packets() -> Iterator[av.Packet[Any]]:
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        written = 0  # samples so far: the dub starts at 0 with the picture, whatever its pts

        def encode(chunk: av.AudioFrame | None) -> Iterator[av.Packet[Any]]:
            nonlocal written
            if chunk is not None:
                chunk.pts, chunk.time_base = written, Fraction(1, rate)
                written += chunk.samples
            yield from stream.encode(chunk)

        for frame in sound.decode(source):
            for chunk in resampler.resample(frame):
                yield from encode(chunk)
        for chunk in resampler.resample(None):
            yield from encode(chunk)
        yield from encode(None)

    return stream, packets()


def _interleave(out: OutputContainer, *sources: Iterator[av.Packet[Any]]) -> None:
    """Mux packets of several streams in time order, so the muxer buffers little."""
    heads: list[av.Packet[Any] | None] = [next(s, None) for s in sources]
    while any(h is not None for h in heads):
        index = min(
            (i for i, h in enumerate(heads) if h is not None),
            key=lambda i: _seconds(heads[i]),
        )
        packet = heads[index]
        assert packet is not None
        out.mux(packet)
        heads[index] = next(sources[index], None)


def _seconds(packet: av.Packet[Any] | None) -> float:
    if packet is None or packet.dts is None or packet.time_base is None:
        return 0.0
    return float(packet.dts * packet.time_base)
