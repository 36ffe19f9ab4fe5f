"""`pixverse-batch validate`: a checked manifest told job by job, as lines or as one document.

Every job is listed with its inputs, its estimated credits (a long job's: its segments'), and
the path its result will have; with a state file, what is left to pay for; with `--online`,
what the account says, asked with read-only calls only (the speaker list and the balance):
speakers by name resolved, unknown ones refused (exit 2), the balance set against the
estimate (a warning, as in `run`). Offline, it says that it did not check the speakers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.client import ClientConfig, PixverseClient, Speaker
from pipeline.manifest import Job
from pipeline.outputs import job_path
from pipeline.plan import estimate_credits
from pipeline.preflight import Checked

_SHOWN_TEXT = 40  # characters of a TTS script a line shows


@dataclass(frozen=True)
class Online:
    """What the account said: its speakers (the first key's) and its credits (every key's)."""

    speakers: list[Speaker]
    spendable: int
    keys: int = 1


@dataclass(frozen=True)
class Validation:
    checked: Checked  # speakers resolved where a list was at hand
    output_dir: Path
    left: Mapping[str, int] | None = None  # per job, with a state file
    online: Online | None = None
    estimates: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "estimates",
            {
                job.id: self.checked.long[job.id].credits()
                if job.id in self.checked.long
                else estimate_credits(job, self.checked.media)
                for job in self.checked.manifest.jobs
            },
        )

    @property
    def has_tts(self) -> bool:
        return any(job.tts is not None for job in self.checked.manifest.jobs)

    def needed(self) -> int:
        """What is left to pay for (everything, without a state file)."""
        return sum((self.left or self.estimates).values())

    def job(self, job: Job) -> dict[str, Any]:
        base = self.checked.manifest.path.resolve().parent
        entry: dict[str, Any] = {"id": job.id, "where": job.where}
        if job.video is not None:
            entry["video"] = _shown(job.video, base)
        else:
            entry["video_id"] = job.video_id
        if job.audio is not None:
            entry["audio"] = _shown(job.audio, base)
        elif job.tts is not None:
            entry["tts"] = {"text": job.tts.text, "speaker": job.tts.speaker}
        entry["credits"] = self.estimates[job.id]
        if self.left is not None:
            entry["credits_left"] = self.left.get(job.id, 0)
        entry["output"] = str(job_path(self.output_dir, job.id, job.output))
        entry["long"] = job.id in self.checked.long
        return entry

    def document(self, manifest: Path) -> dict[str, Any]:
        jobs = self.checked.manifest.jobs
        document: dict[str, Any] = {
            "manifest": str(manifest),
            "ok": True,
            "jobs": len(jobs),
            "media_files": len(self.checked.media),
            "credits_estimate": sum(self.estimates.values()),
            "credits_estimate_per_job": self.estimates,
            "job_list": [self.job(job) for job in jobs],
            "long_jobs": {
                job_id: {
                    "segments": [[round(a, 3), round(b, 3)] for a, b in plan.ranges()],
                    "credits": plan.credits(),
                    "notes": list(plan.notes),
                }
                for job_id, plan in self.checked.long.items()
            },
            "speakers_checked": self.online is not None or not self.has_tts,
        }
        if self.online is not None:
            document["balance"] = {
                "spendable": self.online.spendable,
                "needed": self.needed(),
                "enough": self.online.spendable >= self.needed(),
            }
        return document

    def lines(self, manifest: Path) -> list[str]:
        jobs = self.checked.manifest.jobs
        total = sum(self.estimates.values())
        out = [
            f"{manifest}: {len(jobs)} jobs, {len(self.checked.media)} media files: OK;"
            f" about {total} credits at PixVerse's published prices"
        ]
        width = max((len(job.id) for job in jobs), default=0)
        for job in jobs:
            entry = self.job(job)
            credits = f"{entry['credits']} credits"
            if "credits_left" in entry:
                credits += f" ({entry['credits_left']} left)"
            where = _near(Path(entry["output"]))
            out.append(f"  {job.id:<{width}}  {_inputs(entry)}  {credits}  -> {where}")
        out += [plan.line() for plan in self.checked.long.values()]
        if self.online is not None:
            need, have = self.needed(), self.online.spendable
            keys = f" ({self.online.keys} keys together)" if self.online.keys > 1 else ""
            verdict = (
                "enough"
                if have >= need
                else "not enough: a run stops submitting when they run out (exit 4) and"
                " resumes after a top-up"
            )
            out.append(
                f"speakers checked; balance {have} credits{keys}, about {need} needed: {verdict}"
            )
        elif self.has_tts:
            out.append(
                "speakers not checked (offline): `validate --online` asks the account for its"
                " speakers and balance"
            )
        return out


async def ask_account(configs: Sequence[ClientConfig]) -> Online:
    """The speaker list (first key) and every key's balance: read-only requests only."""
    spendable = 0
    speakers: list[Speaker] = []
    for n, config in enumerate(configs):
        async with PixverseClient(config) as client:
            if n == 0:
                speakers = await client.speakers()
            spendable += (await client.balance()).spendable
    return Online(speakers, spendable, len(configs))


def _inputs(entry: Mapping[str, Any]) -> str:
    video = f"video {entry['video']}" if "video" in entry else f"video_id {entry['video_id']}"
    if "audio" in entry:
        return f"{video} + audio {entry['audio']}"
    tts = entry["tts"]
    text = tts["text"] if len(tts["text"]) <= _SHOWN_TEXT else tts["text"][:_SHOWN_TEXT] + "…"
    return f"{video} + tts {text!r} (speaker {tts['speaker']})"


def _near(path: Path) -> str:
    """A path relative to the working folder when it is below it, else as it is."""
    relative = os.path.relpath(path)
    return path.as_posix() if relative.startswith("..") else relative


def _shown(path: Path, base: Path) -> str:
    """A manifest's path as its author wrote it: relative to the manifest's folder."""
    return os.path.relpath(path, base)
