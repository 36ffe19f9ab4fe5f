"""The TTS speaker list and the price model, as PixVerse documents them."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Speaker:
    speaker_id: str
    name: str


# The documented list (docs: "How to use Speech (Lip sync)"), in the documented order. The id is
# not the position in the list: written out literally, never derived from the order.
SPEAKERS: tuple[Speaker, ...] = (
    Speaker("7", "Harper"),
    Speaker("8", "Ava"),
    Speaker("3", "Isabella"),
    Speaker("9", "Sophia"),
    Speaker("1", "Emily"),
    Speaker("5", "Chloe"),
    Speaker("10", "Julia"),
    Speaker("11", "Mason"),
    Speaker("12", "Jack"),
    Speaker("4", "Liam"),
    Speaker("2", "James"),
    Speaker("13", "Oliver"),
    Speaker("6", "Adrian"),
    Speaker("14", "Ethan"),
    Speaker("Auto", "Auto"),
)

# Examples in the docs send "auto" while the list says "Auto": match case-insensitively.
_BY_FOLDED_ID = {speaker.speaker_id.casefold(): speaker for speaker in SPEAKERS}

CREDITS_PER_AUDIO_SECOND = 4
CREDITS_PER_TTS_CHUNK = 4
TTS_CHUNK_BYTES = 15


def find_speaker(
    speaker_id: str, listed: tuple[dict[str, object], ...] | None = None
) -> Speaker | None:
    """The speaker with this id (ignoring case): of `listed` when given (`SimConfig.speakers`),
    else of the documented list."""
    if listed is None:
        return _BY_FOLDED_ID.get(speaker_id.casefold())
    for entry in listed:
        if str(entry["speaker_id"]).casefold() == speaker_id.casefold():
            return Speaker(str(entry["speaker_id"]), str(entry.get("name", "")))
    return None


def speaker_list(listed: tuple[dict[str, object], ...] | None = None) -> list[dict[str, object]]:
    """The speaker list as served: `listed` (`SimConfig.speakers`), else the documented one."""
    if listed is not None:
        return [dict(entry) for entry in listed]
    return [{"speaker_id": s.speaker_id, "name": s.name} for s in SPEAKERS]


def audio_price(seconds: float) -> int:
    """4 credits per second of audio, rounded up (older PixVerse pricing page).

    The duration is first rounded to the millisecond, so container rounding noise such as
    1.0000001 s does not cost a whole extra second.
    """
    return CREDITS_PER_AUDIO_SECOND * math.ceil(round(seconds, 3))


def tts_price(script: str) -> int:
    """4 credits per 15 bytes of UTF-8 script, rounded up."""
    return CREDITS_PER_TTS_CHUNK * math.ceil(len(script.encode("utf-8")) / TTS_CHUNK_BYTES)
