"""Preflight: everything that can be checked before the first request, checked at once.

Each distinct media file is probed (PyAV, through `pipeline.media`) and hashed exactly once,
however many jobs use it; the results travel on to the runner so nothing is read twice.

A job with a local video and an audio dub, one of them over the API's length limit, is a
long job: instead of being refused it is planned into segments (`pipeline.longform`; the
plans travel on in `Checked.long`), and refused only when it cannot be (a dub longer than its
video without `extend`, limits that leave no room for a cut).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

import av

from pipeline.errors import ManifestError
from pipeline.longform.cut import fingerprinted, video_rate
from pipeline.longform.pauses import Pause, pauses_in
from pipeline.longform.segments import LongPlan, PlanError, plan_job
from pipeline.manifest import MB, Job, Limits, Manifest, Parsed, job_label, parse_manifest
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
    whose records a run must leave exactly as they are. `long` holds the plan of each long
    job (`pipeline.longform`), by id. `aliases`: fingerprints an earlier version gave a job's
    inputs (a speaker id as written, not as the list spells it, `pipeline.speakers`) -> the
    job's id; reconcile rewrites such records to the job's fingerprint."""

    manifest: Manifest
    media: dict[Path, MediaFile]
    invalid: dict[str, list[str]] = field(default_factory=dict)
    untouched: frozenset[str] = frozenset()
    whole: Manifest | None = None
    long: dict[str, LongPlan] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    @property
    def full(self) -> Manifest:
        return self.whole if self.whole is not None else self.manifest


def load_all(path: Path) -> Manifest:
    """`manifest.load_manifest`, but a manifest with structural problems is refused with every
    file problem too: the jobs that could be built are preflighted, the files of entries that
    could not are probed, and everything goes out in one list (one pass, README)."""
    parsed = parse_manifest(path)
    if not parsed.problems:
        return parsed.manifest
    raise ManifestError(parsed.problems + _file_problems(parsed))


def _file_problems(parsed: Parsed) -> list[str]:
    try:
        checked = preflight(parsed.manifest, keep_going=True)
    except ManifestError as exc:  # every job built has a problem
        found = list(exc.problems)
    else:
        found = [p for problems in checked.invalid.values() for p in problems]
    words, limits = parsed.manifest.wording, parsed.manifest.limits
    media: dict[Path, MediaFile | str] = {}
    for where, fld, path in parsed.loose:
        if path not in media:
            try:
                media[path] = _inspect(path)
            except MediaProbeError as exc:
                media[path] = str(exc)
        facts = media[path]
        head = f"{where} {words.noun} '{words.name(fld)}'"
        if isinstance(facts, str):
            found.append(f"{head}: {path}: {facts}")
        else:
            found.extend(
                f"{head}: {path.name}: {p}" for p in _limit_problems(fld, facts.info, limits)
            )
    return found


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
    plans: dict[str, LongPlan] = {}
    pauses: dict[Path, list[Pause]] = {}  # a dub shared by several jobs is decoded once
    words = manifest.wording
    for job in chosen:
        before = len(problems)
        label = job_label(job)
        for media_path in job.media_paths():
            if media_path not in media and media_path not in failed:
                try:
                    media[media_path] = _inspect(media_path)
                except MediaProbeError as exc:
                    failed[media_path] = str(exc)
        long = _is_long(job, media, manifest.limits)
        for fld, path in (("video", job.video), ("audio", job.audio)):
            if path is None:
                continue
            head = f"{label} {words.noun} '{words.name(fld)}'"
            if path in failed:
                problems.append(f"{head}: {path}: {failed[path]}")
            else:
                problems.extend(
                    f"{head}: {path.name}: {p}"
                    for p in _limit_problems(fld, media[path].info, manifest.limits, job, long)
                )
        problems.extend(
            f"{label} {words.noun} '{words.name('tts.text')}': {p}"
            for p in _tts_problems(job, manifest.limits)
        )
        if long and len(problems) == before:
            try:
                plans[job.id] = _plan(job, media, manifest.limits, pauses)
            except PlanError as exc:
                problems.append(f"{label} {words.noun} '{words.name(exc.field)}': {exc}")
        if len(problems) > before:
            invalid[job.id] = problems[before:]
    if problems and (not keep_going or len(invalid) == len(chosen)):
        raise ManifestError(problems)
    if not invalid and len(chosen) == len(manifest.jobs):
        return Checked(manifest=manifest, media=media, long=plans)
    runnable = [job for job in chosen if job.id not in invalid]
    return Checked(
        manifest=replace(manifest, jobs=tuple(runnable)),
        media={p: m for p, m in media.items() if any(p in j.media_paths() for j in runnable)},
        invalid=invalid,
        untouched=frozenset(j.id for j in manifest.jobs) - {j.id for j in runnable},
        whole=manifest,
        long={i: plan for i, plan in plans.items() if i not in invalid},
    )


def _is_long(job: Job, media: dict[Path, MediaFile], limits: Limits) -> bool:
    """A local video and an audio dub, both readable, one of them over the length limit."""
    if job.video not in media or job.audio not in media:
        return False
    assert job.video is not None
    assert job.audio is not None
    video, audio = media[job.video].info, media[job.audio].info
    if video.kind != "video" or audio.kind != "audio":
        return False
    return video.duration > limits.video_max_seconds or audio.duration > limits.audio_max_seconds


def _plan(
    job: Job, media: dict[Path, MediaFile], limits: Limits, pauses: dict[Path, list[Pause]]
) -> LongPlan:
    assert job.video is not None
    assert job.audio is not None
    video, audio = media[job.video], media[job.audio]
    try:
        if job.audio not in pauses:
            pauses[job.audio] = pauses_in(job.audio)
        fps = video_rate(job.video)
    except (av.FFmpegError, ValueError, IndexError) as exc:
        raise PlanError("audio", f"cannot read it to plan its segments: {exc}") from exc
    plan = plan_job(
        job,
        video_seconds=video.info.duration,
        dub_seconds=audio.info.duration,
        fps=fps,
        pauses=pauses[job.audio],
        video_sha=video.sha256,
        audio_sha=audio.sha256,
        limits=limits,
    )
    try:
        return fingerprinted(plan, video.sha256, job.audio)
    except (av.FFmpegError, ValueError, IndexError) as exc:
        raise PlanError("audio", f"cannot read it to plan its segments: {exc}") from exc


def _inspect(path: Path) -> MediaFile:
    if not path.exists():
        raise MediaProbeError("file not found")
    if not path.is_file():
        raise MediaProbeError("not a regular file")
    if path.stat().st_size == 0:
        raise MediaProbeError("file is empty")
    return MediaFile(path=path, info=probe(path), sha256=sha256_file(path))


def _limit_problems(
    fld: str, info: MediaInfo, limits: Limits, job: Job | None = None, long: bool = False
) -> list[str]:
    """What breaks the API's limits; a long job's length is planned instead (`_plan`)."""
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
    if info.duration > max_s and not long:
        hint = _hint(job) if job is not None else ""
        problems.append(f"{info.duration:.1f} s is over the limit of {max_s:g} s{hint}")
    if fld == "video" and info.width and info.height:
        side = max(info.width, info.height)
        if side > limits.video_max_side:
            problems.append(
                f"{info.width}x{info.height} px: the longer side is over the limit"
                f" of {limits.video_max_side} px"
            )
    return problems


def _hint(job: Job) -> str:
    """How a job over the length limit could become a long job, cut into segments."""
    if job.tts is not None:
        return (
            "; to run a longer video, give its dub as an audio file (`audio:`): a long job is"
            " cut into segments at the dub's pauses"
        )
    if job.video_id is not None:
        return "; to run a longer dub, give the video as a local file (`video:`) to be cut"
    return ""


def _tts_problems(job: Job, limits: Limits) -> list[str]:
    if job.tts is None:
        return []
    length = len(job.tts.text)
    if not job.tts.text.strip():
        return [f"is empty (1 to {limits.tts_max_chars} characters)"]
    if length > limits.tts_max_chars:
        # a TTS voice's timing is not known in advance, so a video cannot be cut to match it
        return [
            f"{length} characters is over the limit of {limits.tts_max_chars}: record the"
            " script as an audio file and give it as `audio:` (a long dub is cut into"
            " segments at its pauses)"
        ]
    return []
