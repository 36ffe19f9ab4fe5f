"""What each job asks of the API: its fingerprint, its generate body, its expected price."""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import math
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.manifest import Job

if TYPE_CHECKING:  # preflight plans long jobs with `pipeline.longform`, which prices them here
    from pipeline.preflight import MediaFile

# PixVerse's price snapshot (shared/pixverse-api.md): used only when a reply reports no credits.
CREDITS_PER_AUDIO_SECOND = 4
CREDITS_PER_TTS_CHUNK = 4
TTS_CHUNK_BYTES = 15
# Speech runs at about 15 characters a second: a TTS script's length in seconds, roughly.
TTS_CHARS_PER_SECOND = 15.0


def fingerprint(job: Job, media: Mapping[Path, MediaFile]) -> str:
    """A hash of everything that decides the job's result: content, not file names. A
    segment of a long job has its own, made of the content of its parent's inputs in its
    range: the bytes of its re-encoded cut (encoders need not be deterministic) never count."""
    if job.segment is not None:
        return job.segment.fingerprint
    parts: dict[str, Any] = {
        "video": media[job.video].sha256 if job.video is not None else None,
        "video_id": job.video_id,
        "audio": media[job.audio].sha256 if job.audio is not None else None,
        "tts": [job.tts.text, job.tts.speaker] if job.tts is not None else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def input_facts(job: Job, media: Mapping[Path, MediaFile]) -> dict[str, str]:
    """What the fingerprint is made of, field by field, as saved in a record's `inputs`: the
    files' sha256, the video id, the TTS speaker and text. Only for telling a person which
    input changed; `fingerprint` alone decides."""
    if job.segment is not None:
        part = job.segment
        return {"segment": f"{part.index}: {part.start:.3f}-{part.end:.3f} s of {part.parent}"}
    facts: dict[str, str] = {}
    if job.video is not None:
        facts["video"] = media[job.video].sha256
    if job.video_id is not None:
        facts["video_id"] = str(job.video_id)
    if job.audio is not None:
        facts["audio"] = media[job.audio].sha256
    if job.tts is not None:
        facts["tts"] = json.dumps([job.tts.speaker, job.tts.text], ensure_ascii=False)
    return facts


def changed_inputs(job: Job, before: str | None, now: Mapping[str, str]) -> str:
    """Which inputs differ from a record's saved `inputs` (JSON), for the log: `audio
    (media/intro_es.mp3)`, `tts text or speaker`; "inputs" when the record predates them."""
    try:
        old = json.loads(before) if before else None
    except ValueError:
        old = None
    if not isinstance(old, dict):
        return "inputs"
    names = []
    order = ["video", "video_id", "audio", "tts"]
    for name in sorted(set(old) | set(now), key=lambda n: order.index(n) if n in order else 9):
        if old.get(name) == now.get(name):
            continue
        path = job.video if name == "video" else job.audio if name == "audio" else None
        label = {"tts": "tts text or speaker", "video_id": "video_id"}.get(name, name)
        names.append(f"{label} ({path.name})" if path is not None else label)
    return ", ".join(names) or "inputs"


def generate_body(job: Job, media_ids: Mapping[Path, int]) -> dict[str, Any]:
    """The JSON body of `POST /video/lip_sync/generate`; ids go out as JSON numbers."""
    body: dict[str, Any] = {}
    if job.video_id is not None:
        body["source_video_id"] = job.video_id
    else:
        assert job.video is not None
        body["video_media_id"] = media_ids[job.video]
    if job.audio is not None:
        body["audio_media_id"] = media_ids[job.audio]
    else:
        assert job.tts is not None
        body["lip_sync_tts_speaker_id"] = job.tts.speaker
        body["lip_sync_tts_content"] = job.tts.text
    return body


def input_seconds(job: Job, media: Mapping[Path, MediaFile]) -> float:
    """How long the job's voice is (the audio, or the script spoken): what a generation's
    time may follow. The runner submits longest first and the poller learns from it. A
    segment's is its range (its cut files may not be made yet)."""
    if job.segment is not None:
        return job.segment.end - job.segment.start
    if job.audio is not None:
        return media[job.audio].info.duration
    if job.tts is not None:
        return len(job.tts.text) / TTS_CHARS_PER_SECOND
    return 0.0


class WorkQueue:
    """Jobs to admit, in the order given (reconcile's: paid work first), until asked for the
    longest first: then the rest by `input_seconds`, longest first, so that where generation
    times follow the input the run does not end with one long job alone."""

    def __init__(self, jobs: Sequence[Job], media: Mapping[Path, MediaFile]) -> None:
        self._media = media
        self._in_order: deque[Job] = deque(jobs)
        self._longest: list[tuple[float, int, Job]] | None = None
        self._added = itertools.count(len(jobs))

    def __bool__(self) -> bool:
        return bool(self._in_order or self._longest)

    def push(self, job: Job) -> None:
        """A job that joins later (a long job's segment once it is cut)."""
        if self._longest is None:
            self._in_order.append(job)
        else:
            entry = (-input_seconds(job, self._media), next(self._added), job)
            heapq.heappush(self._longest, entry)

    def pop(self, *, longest_first: bool = False) -> Job:
        if longest_first and self._longest is None:
            self._longest = [
                (-input_seconds(job, self._media), n, job) for n, job in enumerate(self._in_order)
            ]
            heapq.heapify(self._longest)
            self._in_order.clear()
        if self._longest is not None:
            return heapq.heappop(self._longest)[2]
        return self._in_order.popleft()


def estimate_credits(job: Job, media: Mapping[Path, MediaFile]) -> int:
    if job.audio is not None:
        seconds = input_seconds(job, media)
        return CREDITS_PER_AUDIO_SECOND * math.ceil(seconds)
    assert job.tts is not None
    return CREDITS_PER_TTS_CHUNK * math.ceil(len(job.tts.text.encode()) / TTS_CHUNK_BYTES)
