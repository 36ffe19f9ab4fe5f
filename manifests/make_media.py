"""Regenerate the demo's sample media in pipeline/examples/media/: `python manifests/make_media.py`.

The files are committed so the demo needs no encoder; this script documents how they were
made. Output is deterministic for a given PyAV build (bit-exact muxing, single-threaded x264).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a plain script from a checkout, installed or not

from pipeline._samples import make_audio, make_video  # noqa: E402
from pipeline.media import probe  # noqa: E402

MEDIA = ROOT / "pipeline" / "examples" / "media"
# seconds of silence in talk_es.mp3: sentence ends, some longer than others
TALK_PAUSES = ((6.0, 6.4), (13.0, 13.3), (21.0, 21.7), (27.5, 27.8), (36.0, 36.5), (44.0, 44.8))
TALK_PAUSES += ((52.0, 52.3), (58.0, 58.6), (64.0, 64.3))


def main() -> None:
    MEDIA.mkdir(parents=True, exist_ok=True)
    made = [
        make_video(MEDIA / "intro.mp4", seconds=2, width=160, height=90, fps=10),
        make_video(MEDIA / "promo.mov", seconds=2, width=160, height=90, fps=10, audio=False),
        make_audio(MEDIA / "intro_es.mp3", seconds=2, sample_rate=16_000),
        make_audio(MEDIA / "intro_de.wav", seconds=1.5, sample_rate=16_000),
        make_audio(MEDIA / "promo_es.wav", seconds=2, sample_rate=11_025),
        make_audio(MEDIA / "remix_de.wav", seconds=1, sample_rate=16_000),
        # a long job (70 s): tiny picture, a low-rate dub with a speaker's pauses between
        # sentences, where the planner cuts it into segments
        make_video(MEDIA / "talk.mp4", seconds=70, width=64, height=36, fps=5, audio=False),
        make_audio(MEDIA / "talk_es.mp3", seconds=70, sample_rate=8000, pauses=TALK_PAUSES),
    ]
    for path in made:
        info = probe(path)
        frame = f" {info.width}x{info.height}" if info.kind == "video" else ""
        print(
            f"{path.relative_to(ROOT)}: {info.kind} {info.container}{frame}"
            f" {info.duration:.2f} s {info.size / 1024:.1f} KiB"
        )


if __name__ == "__main__":
    main()
