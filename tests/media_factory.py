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

from pipeline._samples import make_audio, make_video

__all__ = ["make_audio", "make_truncated", "make_video"]


def make_truncated(path: Path, *, keep: float = 0.5) -> Path:
    """An mp4/mov cut to `keep` of its bytes, like an interrupted copy: the index is lost.

    FFmpeg's muxer writes the moov atom (the index) at the end, so any cut loses it.
    """
    data = make_video(path).read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path
