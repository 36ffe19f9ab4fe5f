"""Preflight: everything that can be checked before the first request, checked at once.

Each distinct media file is probed (PyAV, through `pipeline.media`) and hashed exactly once,
however many jobs use it; the results travel on to the runner so nothing is read twice.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.errors import ManifestError
from pipeline.manifest import MB, Job, Limits, Manifest
from pipeline.media import MediaInfo, MediaProbeError, probe, sha256_file

VIDEO_CONTAINERS = frozenset({"mp4", "mov"})
AUDIO_CONTAINERS = frozenset({"mp3", "wav"})


@dataclass(frozen=True)
class MediaFile:
    path: Path
    info: MediaInfo
    sha256: str


@dataclass(frozen=True)
class Checked:
    """A manifest that passed preflight, with the facts about each media file it uses.

    `manifest` holds the jobs to run. Under `--only` or `--keep-going` that is a part of
    `whole` (the manifest as loaded): `invalid` maps each selected job that failed preflight
    to its one-line problems, and `untouched` names the jobs of `whole` that are not run,
    whose records a run must leave exactly as they are."""

    manifest: Manifest
    media: dict[Path, MediaFile]
    invalid: dict[str, list[str]] = field(default_factory=dict)
    untouched: frozenset[str] = frozenset()
    whole: Manifest | None = None

    @property
    def full(self) -> Manifest:
        return self.whole if self.whole is not None else self.manifest


def select(manifest: Manifest, only: Collection[str]) -> list[str]:
    """The problems with `--only` ids: one line for each id no job has."""
    ids = {job.id for job in manifest.jobs}
    return [f"--only: no job with id {job_id!r}" for job_id in sorted(set(only) - ids)]


def preflight(
    manifest: Manifest, *, only: Collection[str] = (), keep_going: bool = False
) -> Checked:
    """Check files, containers, limits and TTS text of every job (of the `only` ones, when
    given); raise ManifestError listing every problem. With `keep_going`, only a manifest
    without a single valid job raises: the others go on, the invalid ones in `invalid`."""
    wanted = set(only)
    chosen = [job for job in manifest.jobs if not wanted or job.id in wanted]
    problems: list[str] = []
    media: dict[Path, MediaFile] = {}
    failed: dict[Path, str] = {}
    invalid: dict[str, list[str]] = {}
    for job in chosen:
        before = len(problems)
        label = f"job '{job.id}'" + ("" if job.where == f"job '{job.id}'" else f" ({job.where})")
        for fld, path in (("video", job.video), ("audio", job.audio)):
            if path is None:
                continue
            if path not in media and path not in failed:
                try:
                    media[path] = _inspect(path)
                except MediaProbeError as exc:
                    failed[path] = str(exc)
            if path in failed:
                problems.append(f"{label} field '{fld}': {path}: {failed[path]}")
            else:
                problems.extend(
                    f"{label} field '{fld}': {path.name}: {p}"
                    for p in _limit_problems(fld, media[path].info, manifest.limits)
                )
        problems.extend(
            f"{label} field 'tts.text': {p}" for p in _tts_problems(job, manifest.limits)
        )
        if len(problems) > before:
            invalid[job.id] = problems[before:]
    if problems and (not keep_going or len(invalid) == len(chosen)):
        raise ManifestError(problems)
    if not invalid and len(chosen) == len(manifest.jobs):
        return Checked(manifest=manifest, media=media)
    runnable = [job for job in chosen if job.id not in invalid]
    return Checked(
        manifest=replace(manifest, jobs=tuple(runnable)),
        media={p: m for p, m in media.items() if any(p in j.media_paths() for j in runnable)},
        invalid=invalid,
        untouched=frozenset(j.id for j in manifest.jobs) - {j.id for j in runnable},
        whole=manifest,
    )


def _inspect(path: Path) -> MediaFile:
    if not path.exists():
        raise MediaProbeError("file not found")
    if not path.is_file():
        raise MediaProbeError("not a regular file")
    if path.stat().st_size == 0:
        raise MediaProbeError("file is empty")
    return MediaFile(path=path, info=probe(path), sha256=sha256_file(path))


def _limit_problems(fld: str, info: MediaInfo, limits: Limits) -> list[str]:
    if fld == "video":
        allowed, max_mb, max_s = VIDEO_CONTAINERS, limits.video_max_mb, limits.video_max_seconds
    else:
        allowed, max_mb, max_s = AUDIO_CONTAINERS, limits.audio_max_mb, limits.audio_max_seconds
    problems = []
    if info.kind != fld:
        problems.append(f"is {info.kind}, expected {fld}")
    if info.container not in allowed:
        problems.append(
            f"container {info.container} not allowed (allowed: {', '.join(sorted(allowed))})"
        )
    if info.size > max_mb * MB:
        problems.append(f"{info.size / MB:.1f} MB is over the limit of {max_mb:g} MB")
    if info.duration > max_s:
        problems.append(f"{info.duration:.1f} s is over the limit of {max_s:g} s")
    if fld == "video" and info.width and info.height:
        side = max(info.width, info.height)
        if side > limits.video_max_side:
            problems.append(
                f"{info.width}x{info.height} px: the longer side is over the limit"
                f" of {limits.video_max_side} px"
            )
    return problems


def _tts_problems(job: Job, limits: Limits) -> list[str]:
    if job.tts is None:
        return []
    length = len(job.tts.text)
    if not job.tts.text.strip():
        return [f"is empty (1 to {limits.tts_max_chars} characters)"]
    if length > limits.tts_max_chars:
        return [f"{length} characters is over the limit of {limits.tts_max_chars}"]
    return []
