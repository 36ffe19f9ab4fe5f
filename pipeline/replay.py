"""The replay probe: does this gateway replay the first reply for a re-used trace id?

Exactly-once submission rests on it (pixverse-api.md, "Trace-id semantics"): a generate re-sent
with the same trace id after a lost reply must get the original `video_id` back, not start (and
charge) a second generation. The contract's [decided] check costs nothing, because uploads are
free: upload a file A with a fresh trace id T, then a different file B with the same T. A's
`media_id` back means the gateway replays; a new id means it does not.

"If the probe cannot run, retry it; never assume": an attempt that fails transiently is
started over with a NEW trace id (a half-finished attempt proves nothing, and its trace id may
hold a cached reply of either upload), under the client's retry policy. If no attempt
completes, the TransientError is raised for the caller to decide.
"""

from __future__ import annotations

import io
import math
import sys
import wave
from array import array
from dataclasses import dataclass
from functools import cache

from pipeline.client import PixverseClient, new_trace_id

_RATE = 16_000  # Hz, 16-bit mono: 1 s is 32 kB, tiny for any server that takes wav
PROBE_PREFIX = "pixverse-batch-replay-probe"  # the probe's upload names start with this
_NAMES = (f"{PROBE_PREFIX}-a.wav", f"{PROBE_PREFIX}-b.wav")


@dataclass(frozen=True)
class ReplayVerdict:
    replays: bool  # the gateway replayed the first reply for a re-used trace id
    detail: str  # one human line, e.g. "same trace id, different file: media 123 back (replayed)"


async def probe_replay(client: PixverseClient) -> ReplayVerdict:
    """Upload two different tiny WAVs under one trace id and compare the media ids.

    Raises TransientError when no attempt could complete; other ApiErrors (a refused key, a
    server that refuses the sample) propagate at once.
    """
    first, second = probe_samples()
    async for attempt in client.retrying():
        with attempt:
            trace_id = new_trace_id()
            media_a, _ = await client.upload_bytes(first, _NAMES[0], "audio/wav", trace_id=trace_id)
            media_b, _ = await client.upload_bytes(
                second, _NAMES[1], "audio/wav", trace_id=trace_id
            )
            if media_b == media_a:
                return ReplayVerdict(
                    True, f"same trace id, different file: media {media_a} back (replayed)"
                )
            return ReplayVerdict(
                False,
                f"same trace id, different file: new media {media_b}"
                f" (the first was {media_a}): not replayed",
            )
    raise AssertionError("unreachable: tenacity re-raises")  # pragma: no cover


@cache
def probe_samples() -> tuple[bytes, bytes]:
    """Two valid 1 s WAVs (16-bit mono, 16 kHz) that differ in bytes: a 440 Hz and a 660 Hz
    tone. Tones, not silence: a server screening audio has no reason to refuse either."""
    return _wav_tone(440.0), _wav_tone(660.0)


def _wav_tone(frequency: float) -> bytes:
    samples = array(
        "h", (int(8000 * math.sin(2 * math.pi * frequency * i / _RATE)) for i in range(_RATE))
    )
    if sys.byteorder == "big":
        samples.byteswap()  # WAV samples are little-endian
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(_RATE)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()
