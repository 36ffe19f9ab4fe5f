"""Real media for tests, written on the fly into tmp dirs: tiny files, tens of milliseconds each.

The encoders live in `pipeline._samples`, shared with `manifests/make_media.py` (which makes
the demo's committed samples); this module adds what only tests want, such as broken files.

    make_video(tmp_path / "clip.mp4")                           # 1 s, 64x36, 5 fps, AAC track
    make_video(tmp_path / "long.mov", seconds=31, fps=1)        # 31 frames: still fast
    make_video(tmp_path / "wide.mp4", width=2000, height=100, fps=1)
    make_video(tmp_path / "named.mp4", container="mov")         # QuickTime bytes, mp4 name
    make_audio(tmp_path / "voice.wav", seconds=1.5)             # .mp3, .wav or .m4a
"""

from __future__ import annotations

from pathlib import Path

import av

from pipeline._samples import make_audio, make_video

__all__ = ["make_audio", "make_truncated", "make_video", "remux"]


def make_truncated(path: Path, *, keep: float = 0.5) -> Path:
    """An mp4/mov cut to `keep` of its bytes, like an interrupted copy: the index is lost.

    FFmpeg's muxer writes the moov atom (the index) at the end, so any cut loses it.
    """
    data = make_video(path).read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def remux(src: Path, dest: Path, options: dict[str, str], container: str | None = None) -> Path:
    """`src`'s packets, as they are, muxed again into `dest` with muxer `options` (such as
    FFmpeg's mov/mp4 `movflags`: faststart, fragmented); `container` as in `make_video`."""
    with (
        av.open(str(src)) as inp,
        av.open(str(dest), "w", format=container, options=options) as out,
    ):
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return dest
