"""Placeholder of the replay probe (the doctor branch brings the full module)."""

from __future__ import annotations

import io
import math
import struct
import wave
from dataclasses import dataclass

from pipeline.client import PixverseClient, new_trace_id
from pipeline.retry import retrier

PROBE_PREFIX = "pixverse-batch-probe"  # the probe's upload file names start with this


@dataclass(frozen=True)
class ReplayVerdict:
    replays: bool
    detail: str


def _wav(tone: float) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(
            b"".join(
                struct.pack("<h", int(8000 * math.sin(2 * math.pi * tone * i / 16000)))
                for i in range(16000)
            )
        )
    return buffer.getvalue()


async def probe_replay(client: PixverseClient) -> ReplayVerdict:
    async for attempt in retrier(client.config.retry):
        with attempt:
            return await _probe_once(client)
    raise AssertionError("unreachable")  # pragma: no cover


async def _probe_once(client: PixverseClient) -> ReplayVerdict:
    trace = new_trace_id()
    first = await client.upload_bytes(
        _wav(0.0), f"{PROBE_PREFIX}-a.wav", "audio/wav", trace_id=trace
    )
    second = await client.upload_bytes(
        _wav(440.0), f"{PROBE_PREFIX}-b.wav", "audio/wav", trace_id=trace
    )
    if first == second:
        return ReplayVerdict(True, f"same trace id, different file: media {first} back")
    return ReplayVerdict(False, f"same trace id, different file: new media {second}")
