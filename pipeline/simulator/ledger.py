"""Ledger: what the simulator saw and did, kept as plain objects for tests to assert on.

The ledger never stores an API key: generations and requests name the account by its id.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

GENERATING = 5  # PixVerse status of a running generation


@dataclass
class RequestRecord:
    """One HTTP request the simulator received (API call or download)."""

    method: str
    path: str
    trace_id: str | None
    http_status: int | None  # None: the connection was closed without a reply
    err_code: int | None  # None when the reply was not an envelope (HTML, download, dropped)
    at: float  # the simulator's clock when the request arrived
    replayed: bool = False  # answered from the reply cache
    fault: str | None = None  # the injected fault, if one fired: "transient", "html", ...
    account_id: int | None = None  # the account of an authenticated API call


@dataclass
class GenerationRecord:
    """One lip-sync generation the simulator created (and charged for)."""

    video_id: int
    account_id: int
    body: dict[str, Any]  # the generate body as received
    trace_id: str
    created_at: float
    credits: int
    outcome: int  # the terminal status decided at creation: 1, 7 or 8
    status: int = GENERATING  # 5 until settled, then `outcome`
    refunded: bool = False
    seconds: float = 0.0  # real seconds it spends at status 5 (holding a slot)


@dataclass
class TransferRecord:
    """One upload or download, with when it started and finished on the simulator's clock."""

    kind: str  # "upload" or "download"
    name: str  # the uploaded file name, or the video id downloaded
    started: float
    finished: float


@dataclass
class UploadRecord:
    media_id: int
    media_type: str  # "video" or "audio"
    filename: str
    sha256: str  # of the uploaded bytes
    duration: float  # seconds, as probed
    account_id: int | None = None  # the account that uploaded it


def canonical_body(body: dict[str, Any]) -> str:
    """The canonical JSON form of a generate body: equal bodies give equal strings."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Ledger:
    requests: list[RequestRecord] = field(default_factory=list)
    generations: dict[int, GenerationRecord] = field(default_factory=dict)
    uploads: list[UploadRecord] = field(default_factory=list)
    served_downloads: dict[int, str] = field(default_factory=dict)  # video_id -> sha256 hex
    transfers: list[TransferRecord] = field(default_factory=list)
    peak_concurrent: int = 0  # most generations at status 5 at once for one key
    peak_by_account: dict[int, int] = field(default_factory=dict)  # the same, per account id
    credits_charged: int = 0
    credits_refunded: int = 0

    def generations_per_body(self) -> Counter[str]:
        """How many generations each distinct generate body produced (canonical JSON keys)."""
        return Counter(canonical_body(g.body) for g in self.generations.values())

    def duplicate_bodies(self) -> list[str]:
        """Canonical bodies that were generated more than once."""
        return sorted(body for body, n in self.generations_per_body().items() if n > 1)

    def generations_per_inputs(self) -> Counter[tuple[str, str]]:
        """How many generations each (video, voice) input pair produced, by content: an upload
        by its sha256 (a re-upload under a new media id is the same input), a source video by
        its id, TTS by speaker and script. Counts what a body asked for, whatever its ids."""
        digests = {u.media_id: u.sha256 for u in self.uploads}

        def upload(media_id: Any) -> str:
            return f"upload:{digests.get(media_id, media_id)}"

        def inputs(body: dict[str, Any]) -> tuple[str, str]:
            if "video_media_id" in body:
                video = upload(body["video_media_id"])
            else:
                video = f"video_id:{body.get('source_video_id')}"
            if "audio_media_id" in body:
                voice = upload(body["audio_media_id"])
            else:
                speaker = str(body.get("lip_sync_tts_speaker_id", "")).casefold()
                voice = f"tts:{speaker}:{body.get('lip_sync_tts_content')}"
            return video, voice

        return Counter(inputs(g.body) for g in self.generations.values())

    def requests_to(self, path_prefix: str, method: str | None = None) -> list[RequestRecord]:
        return [
            r
            for r in self.requests
            if r.path.startswith(path_prefix) and (method is None or r.method == method)
        ]

    def reused_trace_ids(self, path_prefix: str = "/openapi/v2") -> list[str]:
        """Trace ids sent on more than one request whose path starts with `path_prefix`."""
        counts = Counter(
            r.trace_id for r in self.requests_to(path_prefix) if r.trace_id is not None
        )
        return sorted(trace for trace, n in counts.items() if n > 1)

    @property
    def credits_net(self) -> int:
        return self.credits_charged - self.credits_refunded
