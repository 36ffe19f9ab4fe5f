"""Where a dub is silent: an energy-based pause detector over the decoded audio.

The audio is decoded with PyAV to mono 16-bit samples at `DETECT_RATE` (plenty for telling
speech from silence), cut into 10 ms windows, and each window's mean energy compared with the
speech level (the 95th percentile of all windows): a window more than `SILENCE_DB` below it is
silent. A pause is a run of silent windows at least `MIN_PAUSE` long; shorter dips are the
stops and closures inside words, and a cut there would split a syllable. Pure Python over
small arrays (numpy is no dependency): about a second per ten minutes of audio.
"""

from __future__ import annotations

import math
import operator
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av

DETECT_RATE = 8000  # samples a second the detector works at
WINDOW_SECONDS = 0.01
SILENCE_DB = 30.0  # this far below the speech level is silence
MIN_PAUSE = 0.2  # seconds: shorter silent runs are inside words (stops, closures)


@dataclass(frozen=True)
class Pause:
    start: float  # seconds
    end: float

    @property
    def length(self) -> float:
        return self.end - self.start


def decode_mono(path: Path, rate: int = DETECT_RATE) -> array[int]:
    """The first audio stream of `path` as mono signed 16-bit samples at `rate`."""
    samples: array[int] = array("h")
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        for frame in container.decode(stream):
            for chunk in resampler.resample(frame):
                samples.frombytes(bytes(chunk.planes[0])[: 2 * chunk.samples])
        for chunk in resampler.resample(None):
            samples.frombytes(bytes(chunk.planes[0])[: 2 * chunk.samples])
    return samples


def find_pauses(
    samples: Sequence[int], rate: int = DETECT_RATE, *, min_pause: float = MIN_PAUSE
) -> list[Pause]:
    """The pauses in `samples` (mono), in order. Silence at the very start and end counts too."""
    size = max(1, round(rate * WINDOW_SECONDS))
    energies = [
        sum(map(operator.mul, samples[i : i + size], samples[i : i + size])) / size
        for i in range(0, len(samples), size)
    ]
    if not energies:
        return []
    level = sorted(energies)[min(len(energies) - 1, int(0.95 * len(energies)))]
    threshold = level * math.pow(10.0, -SILENCE_DB / 10.0)
    pauses: list[Pause] = []
    run_start: int | None = None
    for index, energy in enumerate([*energies, math.inf]):
        silent = energy <= threshold
        if silent and run_start is None:
            run_start = index
        elif not silent and run_start is not None:
            start = run_start * size / rate
            end = min(index * size, len(samples)) / rate
            if end - start >= min_pause - 1e-9:
                pauses.append(Pause(start, end))
            run_start = None
    return pauses


def pauses_in(path: Path) -> list[Pause]:
    """`find_pauses` over the decoded audio of `path` (blocking: PyAV decodes)."""
    return find_pauses(decode_mono(path))
