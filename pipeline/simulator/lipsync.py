"""Parsing and checking a lip-sync generate body, before anything is looked up.

The checks that need the simulator's state (do these media ids exist? is there a free slot and
enough credit?) live in `backend`; everything decidable from the body alone lives here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pipeline.simulator.catalog import find_speaker
from pipeline.simulator.config import SimConfig
from pipeline.simulator.envelope import PARAM_INVALID, PARAM_TYPE, ApiError

_INT_FIELDS = ("source_video_id", "video_media_id", "audio_media_id")
_STR_FIELDS = ("lip_sync_tts_speaker_id", "lip_sync_tts_content")


@dataclass(frozen=True)
class TtsScript:
    speaker_id: str
    content: str


@dataclass(frozen=True)
class LipSyncRequest:
    """A well-formed generate body: exactly one video source and one voice."""

    source_video_id: int | None  # exactly one of these two is set
    video_media_id: int | None
    voice: int | TtsScript  # an audio_media_id, or a TTS speaker and script


def parse_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400013 when it is not one."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(PARAM_TYPE, "request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise ApiError(PARAM_TYPE, "request body must be a JSON object")
    return body


def read_request(body: dict[str, Any]) -> LipSyncRequest:
    """Type-check the known fields (400013) and the combinations the contract allows (400017).

    JSON null counts as an absent field, as does an empty or blank TTS string.
    """
    ints: dict[str, int | None] = {}
    for name in _INT_FIELDS:
        value = body.get(name)
        # bool is an int subclass in Python, but `true` is no id.
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ApiError(PARAM_TYPE, f"{name} must be an integer")
        ints[name] = value
    strs: dict[str, str | None] = {}
    for name in _STR_FIELDS:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise ApiError(PARAM_TYPE, f"{name} must be a string")
        strs[name] = value if value and value.strip() else None
    source_video_id, video_media_id = ints["source_video_id"], ints["video_media_id"]
    if source_video_id is not None and video_media_id is not None:
        raise ApiError(PARAM_INVALID, "give only one of source_video_id and video_media_id")
    if source_video_id is None and video_media_id is None:
        raise ApiError(PARAM_INVALID, "source_video_id or video_media_id is required")
    voice = _voice(
        ints["audio_media_id"], strs["lip_sync_tts_speaker_id"], strs["lip_sync_tts_content"]
    )
    return LipSyncRequest(source_video_id, video_media_id, voice)


def _voice(
    audio_media_id: int | None, speaker_id: str | None, content: str | None
) -> int | TtsScript:
    has_tts = speaker_id is not None or content is not None
    if audio_media_id is not None:
        if has_tts:
            raise ApiError(PARAM_INVALID, "give either audio_media_id or TTS, not both")
        return audio_media_id
    if not has_tts:
        raise ApiError(
            PARAM_INVALID,
            "neither audio_media_id nor lip_sync_tts_speaker_id + lip_sync_tts_content given",
        )
    if speaker_id is None:
        raise ApiError(PARAM_INVALID, "lip_sync_tts_speaker_id is required for TTS")
    if content is None:
        raise ApiError(PARAM_INVALID, "lip_sync_tts_content is required for TTS")
    return TtsScript(speaker_id, content)


def check_tts(script: TtsScript, config: SimConfig) -> None:
    """The speaker must be on the list and the script within the length and content rules."""
    if find_speaker(script.speaker_id, config.speakers) is None:
        raise ApiError(PARAM_INVALID, f"unsupported lip_sync_tts_speaker_id {script.speaker_id!r}")
    if len(script.content) > config.tts_max_chars:
        raise ApiError(
            PARAM_INVALID,
            f"lip_sync_tts_content is longer than {config.tts_max_chars} characters",
        )
    folded = script.content.casefold()
    if any(word.casefold() in folded for word in config.tts_banned_words):
        raise ApiError(PARAM_INVALID, "lip_sync_tts_content violates the content rules")
