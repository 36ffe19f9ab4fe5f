"""SimConfig: every knob of the simulator, including the fault knobs tests flip at run time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEFAULT_API_KEY = "sim-key"

# The two speaker-list paths (pixverse-api.md, "TTS speakers"), as `speaker_paths` names them.
TTS_LIST = "tts_list"  # GET /openapi/v2/video/lip_sync/tts_list, the documented one
TTS_SPEAKER = "tts_speaker"  # GET /openapi/v2/video/tts_speaker, the newer one

# A finished video "generated earlier through the PixVerse API", valid as `source_video_id`.
DEFAULT_KNOWN_VIDEO_ID = 391504857968062


@dataclass
class SimConfig:
    """Knobs of one simulator instance.

    Mutable on purpose: tests flip knobs while the server runs, and the server reads them on
    every request. Exceptions: `seed` is read once, when the app is created; a generation's
    duration and slot time are fixed when it starts; a link's expiry when it is signed.

    Durations are in *simulated* seconds; `time_scale` converts them to real seconds (0.01
    makes a 20 s generation take 0.2 s).
    """

    api_keys: frozenset[str] = frozenset({DEFAULT_API_KEY})  # anything else: HTTP 401, 400012
    no_permission_keys: frozenset[str] = frozenset()  # valid, but generate answers 500020
    concurrency_limit: int = 5  # per-key generations at status 5; over it generate says 500044
    credit_monthly: int = 10_000  # each key is its own account starting with these credits
    credit_package: int = 0
    # Several accounts with their own plans: per API key, a concurrency limit and monthly
    # credits that replace `concurrency_limit` and `credit_monthly` for that key.
    key_limits: dict[str, int] = field(default_factory=dict)
    key_credits: dict[str, int] = field(default_factory=dict)
    generation_seconds: float = 20.0  # simulated time at status 5 before the terminal status
    generation_jitter: float = 0.0  # spread of generation times: 0.5 -> 0.5x to 1.5x, seeded
    # > 0: a generation takes this many simulated seconds per second of its voice (the audio's
    # duration, or the TTS script at 15 characters a second) instead of generation_seconds
    generation_per_input_second: float = 0.0
    time_scale: float = 1.0  # real seconds per simulated second
    fail_probability: float = 0.0  # terminal status 8, credits refunded
    moderation_probability: float = 0.0  # terminal status 7, credits refunded
    seed: int = 0  # seeds ids and outcomes, so runs are reproducible
    link_ttl_seconds: float = 600.0  # signed download links answer 403 after this
    reply_cache: bool = True  # the per-(API key, trace id) reply cache of the contract
    reply_cache_seconds: float = 24 * 3600.0  # how long a cached reply is replayed
    slot_seconds: float = 600.0  # a generation running longer no longer holds a slot (FAQ)
    known_video_ids: frozenset[int] = frozenset({DEFAULT_KNOWN_VIDEO_ID})
    max_upload_bytes: int = 50 * 1024 * 1024
    max_media_seconds: float = 30.0  # documented input limit for audio and video
    max_video_side: int = 1920  # documented input limit, longer side in pixels
    tts_max_chars: int = 200
    # the speaker-list paths served; one left out answers a plain 404, like an unknown route
    speaker_paths: frozenset[str] = frozenset({TTS_LIST, TTS_SPEAKER})
    # the speaker list served instead of the documented one (`catalog.SPEAKERS`): each entry
    # a `speaker_id`, a `name` and whatever other fields an account's list may carry; generate
    # accepts its ids (ignoring case). For speakers by name: two of one name, extra fields.
    speakers: tuple[dict[str, object], ...] | None = None
    send_credits: bool = False  # generate replies carry `credits` (the lip-sync docs show none)
    price_multiplier: int = 1  # the account charges this many times the published prices
    size_units: Literal["bytes", "kb"] = "bytes"  # the status `size` (unit undocumented)
    # The content rule the simulator enforces on TTS scripts (case-insensitive substrings).
    tts_banned_words: frozenset[str] = frozenset({"forbidden"})

    # Simulated seconds a generate request takes after the generation started (holding its
    # slot) and before the reply is sent and cached: a re-send of the same trace id in that
    # window is treated as new (a second charge, or 500044 since the first holds the slot).
    generate_reply_seconds: float = 0.0

    # Fault knobs. Counters decrement as they fire.
    drop_generate_replies: int = 0  # generate is processed and cached, then the socket closes
    transient_errors: int = 0  # next N API requests: HTTP 500, ErrCode 500069
    html_errors: int = 0  # next N API requests: HTTP 502 with an HTML gateway page
    rate_limit_errors: int = 0  # next N API requests: HTTP 429 with Retry-After: 1
    truncate_downloads: int = 0  # next N downloads: full Content-Length, half the bytes
    transfer_seconds: float = 0.0  # simulated time every upload and download takes (slow links)
    # the next N result videos made are flawed for good (every download of them is the same):
    # cut to their first frame, without sound; or with every picture packet garbled (still an
    # mp4 with a video stream, but no frame decodes). For testing the client's result probe.
    short_results: int = 0
    garbled_results: int = 0
    # uploads (by file name) whose content moderation refuses: generate answers 500054
    moderated_filenames: frozenset[str] = frozenset()
    # videos the account's owner deleted: status 6, and their links answer 404
    deleted_video_ids: set[int] = field(default_factory=set)
    forget_media: bool = False  # every media_id is unknown (expired media ids)
    # these media ids expired: generate refuses each from now on, in the documented wording
    expired_media_ids: set[int] = field(default_factory=set)
    lowercase_envelope_on_500: bool = True  # HTTP 500 replies use err_code/err_msg/resp

    def limit_for(self, api_key: str) -> int:
        """The concurrent-generation limit of `api_key`'s account."""
        return self.key_limits.get(api_key, self.concurrency_limit)

    def credits_for(self, api_key: str) -> int:
        """The monthly credits `api_key`'s account starts with."""
        return self.key_credits.get(api_key, self.credit_monthly)

    def real_seconds(self, simulated: float) -> float:
        """Real (clock) seconds that `simulated` seconds take under the current time scale."""
        return simulated * self.time_scale
