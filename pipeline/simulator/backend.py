"""The simulated PixVerse backend: accounts, uploaded media and generations.

It knows nothing of HTTP. Time comes from the injected clock (real seconds); SimConfig turns
the contract's simulated durations into real ones on every use, so tests can change the time
scale of a running server. Generations settle lazily: `settle()` runs at the start of every
request and makes every generation whose time is up terminal, refunding status 7 and 8.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.simulator.catalog import audio_price, tts_price
from pipeline.simulator.config import SimConfig
from pipeline.simulator.envelope import (
    CONCURRENCY_LIMIT,
    INPUT_MODERATED,
    INSUFFICIENT_BALANCE,
    NO_PERMISSION,
    PARAM_INVALID,
    ApiError,
)
from pipeline.simulator.ledger import GENERATING, GenerationRecord, Ledger, UploadRecord
from pipeline.simulator.lipsync import LipSyncRequest, TtsScript, check_tts

SUCCEEDED = 1
MODERATED = 7
FAILED = 8
_ID_RANGE = (10**14, 10**18 - 1)  # ids have 15 to 18 digits


@dataclass
class Account:
    """One API key's account. Balances derive from SimConfig, so tests can top up live."""

    account_id: int
    api_key: str = field(default="", repr=False)  # never printed (the ledger names the id)
    monthly_used: int = 0
    package_used: int = 0
    running: list[Generation] = field(default_factory=list)

    def balance(self, config: SimConfig) -> tuple[int, int]:
        """(credit_monthly, credit_package) left."""
        return (
            max(0, config.credits_for(self.api_key) - self.monthly_used),
            max(0, config.credit_package - self.package_used),
        )


@dataclass(frozen=True)
class Media:
    media_id: int
    media_type: str  # "video" or "audio"
    filename: str
    duration: float
    width: int
    height: int
    data: bytes = field(default=b"", repr=False)  # kept to build the result video from
    account_id: int | None = None  # the account that uploaded it: no other account may use it


@dataclass
class Generation:
    record: GenerationRecord
    account: Account
    ends_at: float  # clock reading when it turns terminal
    slot_until: float  # clock reading after which it no longer holds a concurrency slot
    from_monthly: int  # how the charge was split, so a refund goes back where it came from
    from_package: int
    seed: int
    modified_at: float

    @property
    def video_id(self) -> int:
        return self.record.video_id

    @property
    def status(self) -> int:
        return self.record.status


def not_found_message(field_name: str) -> str:
    """The lip-sync guide's refusal of an id the server cannot find, typographic apostrophe
    and all (pixverse-api.md, "Upload media")."""
    what = "audio" if field_name == "audio_media_id" else "video"
    return (
        f"couldn\u2019t find a matching {field_name}. Please re-upload your {what} and try again."
    )


class Backend:
    def __init__(self, config: SimConfig, ledger: Ledger, clock: Callable[[], float]) -> None:
        self.config = config
        self.ledger = ledger
        self.clock = clock
        # Separate streams, so how many ids were drawn never changes which outcome comes next.
        # Ids differ in every process (as PixVerse's never repeat): a restarted simulator must
        # not hand a cached media_id or video_id of the last one to someone else's upload.
        self._id_rng = random.Random(f"{config.seed}:ids:{secrets.token_hex(8)}")
        self._outcome_rng = random.Random(f"{config.seed}:outcomes")
        self._duration_rng = random.Random(f"{config.seed}:durations")
        self._accounts: dict[str, Account] = {}
        self._media: dict[int, Media] = {}
        self._generations: dict[int, Generation] = {}
        self._pending: list[Generation] = []
        self._wall_at_start = time.time()
        self.started_at = clock()

    # -- clocks and ids

    def iso_time(self, at: float) -> str:
        """The wall-clock time of clock reading `at`, as PixVerse formats it."""
        wall = self._wall_at_start + (at - self.started_at)
        return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _new_id(self) -> int:
        while True:
            candidate = self._id_rng.randint(*_ID_RANGE)
            if not self._id_taken(candidate):
                return candidate

    def _id_taken(self, candidate: int) -> bool:
        return (
            candidate in self._media
            or candidate in self._generations
            or candidate in self.config.known_video_ids
        )

    # -- accounts

    def account(self, api_key: str) -> Account:
        account = self._accounts.get(api_key)
        if account is None:
            digest = hashlib.sha256(api_key.encode()).digest()
            account_id = _ID_RANGE[0] + int.from_bytes(digest[:8]) % (9 * 10**14)
            account = self._accounts[api_key] = Account(account_id, api_key)
        return account

    # -- media

    def add_media(
        self,
        media_type: str,
        filename: str,
        sha256: str,
        duration: float,
        width: int = 0,
        height: int = 0,
        data: bytes = b"",
        account_id: int | None = None,
    ) -> Media:
        media = Media(
            self._new_id(), media_type, filename, duration, width, height, data, account_id
        )
        self._media[media.media_id] = media
        self.ledger.uploads.append(
            UploadRecord(media.media_id, media_type, filename, sha256, duration, account_id)
        )
        return media

    def _media_of(
        self, media_id: int, field_name: str, media_type: str, account: Account | None = None
    ) -> Media:
        config = self.config
        media = self._media.get(media_id)
        if config.forget_media or media_id in config.expired_media_ids:
            media = None
        owner = media.account_id if media is not None else None
        if account is not None and owner is not None and owner != account.account_id:
            media = None  # another account's upload: as unknown as any other id
        if media is None:
            raise ApiError(PARAM_INVALID, not_found_message(field_name))
        if media.media_type != media_type:
            raise ApiError(
                PARAM_INVALID,
                f"{field_name} {media_id} has media_type {media.media_type!r}, not {media_type!r}",
            )
        if media.filename in self.config.moderated_filenames:
            raise ApiError(INPUT_MODERATED, "content moderation rejected the input")
        return media

    # -- generations

    def generation(self, video_id: int) -> Generation | None:
        return self._generations.get(video_id)

    def sources(self, video_id: int) -> tuple[bytes | None, bytes | None]:
        """The uploaded video and audio bytes a generation was made from (None: not uploaded,
        e.g. a source_video_id or a TTS script)."""
        generation = self._generations.get(video_id)
        if generation is None:
            return None, None
        body = generation.record.body

        def data(field_name: str) -> bytes | None:
            media = self._media.get(body.get(field_name, 0))
            return media.data if media is not None and media.data else None

        return data("video_media_id"), data("audio_media_id")

    def is_finished_video(self, video_id: int) -> bool:
        """A video PixVerse made earlier: a known id, or a generation that succeeded."""
        if video_id in self.config.known_video_ids:
            return True
        generation = self._generations.get(video_id)
        return generation is not None and generation.status == SUCCEEDED

    def settle(self) -> None:
        """Make every generation whose time is up terminal, refunding failures."""
        now = self.clock()
        still_pending: list[Generation] = []
        for generation in self._pending:
            if now < generation.ends_at:
                still_pending.append(generation)
                continue
            record = generation.record
            record.status = record.outcome
            generation.modified_at = generation.ends_at
            generation.account.running.remove(generation)
            if record.outcome in (MODERATED, FAILED):  # refunded automatically [doc]
                generation.account.monthly_used -= generation.from_monthly
                generation.account.package_used -= generation.from_package
                record.refunded = True
                self.ledger.credits_refunded += record.credits
        self._pending = still_pending

    def running_count(self, account: Account) -> int:
        """Generations holding a slot: at status 5 and started under 10 simulated minutes ago."""
        now = self.clock()
        return sum(1 for g in account.running if now < g.slot_until)

    def price(self, request: LipSyncRequest, account: Account | None = None) -> int:
        """The cost in credits; checks the voice (audio media id, or TTS speaker and script)."""
        if isinstance(request.voice, TtsScript):
            check_tts(request.voice, self.config)
            return tts_price(request.voice.content)
        media = self._media_of(request.voice, "audio_media_id", "audio", account)
        return audio_price(media.duration)

    def generate(
        self, api_key: str, body: dict[str, Any], request: LipSyncRequest, trace_id: str
    ) -> Generation:
        """Check, charge and start one generation; raises ApiError for every refusal."""
        config = self.config
        if api_key in config.no_permission_keys:
            raise ApiError(NO_PERMISSION, "no permission for this operation")
        source = request.source_video_id
        if source is not None and not self.is_finished_video(source):
            raise ApiError(PARAM_INVALID, not_found_message("source_video_id"))
        account = self.account(api_key)
        if request.source_video_id is None and request.video_media_id is not None:
            self._media_of(request.video_media_id, "video_media_id", "video", account)
        credits = self.price(request, account) * config.price_multiplier
        if self.running_count(account) >= config.limit_for(api_key):
            raise ApiError(CONCURRENCY_LIMIT, "concurrent generation limit reached")
        monthly, package = account.balance(config)
        if monthly + package < credits:
            raise ApiError(INSUFFICIENT_BALANCE, "insufficient balance")
        seconds = self._duration(self._voice_seconds(request))
        return self._start(account, body, trace_id, credits, min(monthly, credits), seconds)

    def _voice_seconds(self, request: LipSyncRequest) -> float:
        if isinstance(request.voice, TtsScript):
            return len(request.voice.content) / 15.0
        media = self._media.get(request.voice)
        return media.duration if media is not None else 0.0

    def _duration(self, voice_seconds: float) -> float:
        """Simulated seconds a new generation takes: `generation_seconds` (or
        `generation_per_input_second` times the voice's seconds), spread uniformly by
        `generation_jitter` (0.5: anywhere from half to one and a half times as long)."""
        config = self.config
        jitter = min(max(config.generation_jitter, 0.0), 1.0)
        spread = self._duration_rng.uniform(1.0 - jitter, 1.0 + jitter) if jitter else 1.0
        per_input = config.generation_per_input_second
        base = per_input * voice_seconds if per_input > 0 else config.generation_seconds
        return base * spread

    def _start(
        self,
        account: Account,
        body: dict[str, Any],
        trace_id: str,
        credits: int,
        monthly: int,
        sim_seconds: float,
    ) -> Generation:
        config = self.config
        now = self.clock()
        seconds = config.real_seconds(sim_seconds)
        draw = self._outcome_rng.random()
        if draw < config.moderation_probability:
            outcome = MODERATED
        elif draw < config.moderation_probability + config.fail_probability:
            outcome = FAILED
        else:
            outcome = SUCCEEDED
        record = GenerationRecord(
            video_id=self._new_id(),
            account_id=account.account_id,
            body=body,
            trace_id=trace_id,
            created_at=now,
            credits=credits,
            outcome=outcome,
            status=GENERATING,
            seconds=seconds,
        )
        generation = Generation(
            record=record,
            account=account,
            ends_at=now + seconds,
            slot_until=now + config.real_seconds(config.slot_seconds),
            from_monthly=monthly,
            from_package=credits - monthly,
            seed=self._outcome_rng.randint(0, 2**31 - 1),
            modified_at=now,
        )
        account.monthly_used += generation.from_monthly
        account.package_used += generation.from_package
        account.running.append(generation)
        self._generations[record.video_id] = generation
        self._pending.append(generation)
        self.ledger.generations[record.video_id] = record
        self.ledger.credits_charged += credits
        running = self.running_count(account)
        self.ledger.peak_concurrent = max(self.ledger.peak_concurrent, running)
        peaks = self.ledger.peak_by_account
        peaks[account.account_id] = max(peaks.get(account.account_id, 0), running)
        return generation
