"""The manifest, version 1: YAML in, frozen `Manifest` out, every problem reported at once.

This module checks structure only (schema, types, ids, exclusive fields). Whether files exist
and their media fit the limits is `pipeline.preflight`'s job. Paths are resolved against the
manifest's folder. Problems are one line each: ``job 'intro-es' field 'audio': ...``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipeline.errors import ManifestError

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MB = 1024 * 1024

_TOP_KEYS = {"version", "output_dir", "defaults", "limits", "jobs"}
_JOB_KEYS = {"id", "video", "video_id", "audio", "tts", "dubs", "extend"}
# `extend`: what a long job does when its dub outlasts its video (pipeline.longform)
EXTEND_MODES = ("loop", "freeze")
_DUB_KEYS = {"audio", "tts"}
_TTS_KEYS = {"text", "speaker"}
_DEFAULT_KEYS = {"tts_speaker"}


@dataclass(frozen=True)
class Limits:
    """Input limits from PixVerse's lip-sync guide; a manifest's `limits:` overrides them."""

    video_max_mb: float = 50
    video_max_seconds: float = 30
    video_max_side: int = 1920
    audio_max_mb: float = 50
    audio_max_seconds: float = 30
    tts_max_chars: int = 200
    # the shortest segment a long job is cut into (the contract names no minimum; 1 s is safe)
    segment_min_seconds: float = 1


@dataclass(frozen=True)
class Tts:
    text: str
    speaker: str


@dataclass(frozen=True)
class Dub:
    """Where a fan-out job came from, so it can be written back as fan-out (`failed.yaml`)."""

    entry: str  # the fan-out entry's place, e.g. "jobs[4]" or "job 'promo'"
    entry_id: str | None  # the entry's own `id`, if it had one (job ids are `<id>-<lang>`)
    lang: str  # the key under `dubs`


@dataclass(frozen=True)
class Segment:
    """What makes a job one segment of a long job (`pipeline.longform`): its parent's id, its
    place and time range, and the fingerprint it is paid under (the parent's input hashes,
    the range and the planning parameters: never the bytes of a re-encoded cut)."""

    parent: str
    index: int  # 1-based
    start: float  # seconds into the parent's dub
    end: float
    fingerprint: str


@dataclass(frozen=True)
class Job:
    """One lip-sync generation: exactly one video source and exactly one voice source."""

    id: str
    where: str  # the job's place in the manifest, e.g. "jobs[3].dubs.es"
    video: Path | None = None
    video_id: int | None = None
    audio: Path | None = None
    tts: Tts | None = None
    dub: Dub | None = None  # set for the jobs of a `dubs:` fan-out
    extend: str | None = None  # "loop" or "freeze": a long dub outlasting its video
    segment: Segment | None = None  # set for the segment jobs a long job is cut into

    def media_paths(self) -> list[Path]:
        return [p for p in (self.video, self.audio) if p is not None]


@dataclass(frozen=True)
class Manifest:
    path: Path
    output_dir: Path | None
    limits: Limits
    jobs: tuple[Job, ...] = field(default_factory=tuple)


# libyaml's parser when PyYAML has it: the pure-Python one takes about 1 ms a job on a
# 10,000-job manifest (issue 6); both build the same nodes for the constructor below
if TYPE_CHECKING:
    _SafeLoader = yaml.SafeLoader
else:
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):
    """A safe loader that refuses duplicate mapping keys (PyYAML silently keeps the last)."""


def _construct_unique_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, bool):
            # YAML 1.1: `no`, `on`, `yes`, `off` as keys become booleans (Norway's "no")
            problem = f"key {key_node.value!r} reads as {key}: write it in quotes"
            raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
        if not isinstance(key, str | int | float) and key is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"keys must be plain words, not {type(key).__name__}",
                key_node.start_mark,
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_unique_mapping,
)


def load_manifest(path: Path) -> Manifest:
    """Parse and structurally validate `path`; raise ManifestError listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError([f"{path}: cannot read manifest: {exc}"]) from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ManifestError([f"{path}: invalid YAML: {detail}"]) from exc
    return _Parser(path).parse(data)


class _Parser:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.resolve().parent
        self.problems: list[str] = []

    def fail(self, where: str, fld: str, message: str) -> None:
        self.problems.append(f"{where} field '{fld}': {message}")

    def parse(self, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(
                ["manifest: the top level must be a mapping with `version` and `jobs`"]
            )
        for key in sorted(set(data) - _TOP_KEYS, key=str):
            self.fail("manifest", str(key), f"unknown field (allowed: {_names(_TOP_KEYS)})")
        if data.get("version") != 1:
            self.fail("manifest", "version", f"must be 1, got {data.get('version')!r}")
        output_dir = self._output_dir(data.get("output_dir"))
        limits = self._limits(data.get("limits"))
        speaker = self._default_speaker(data.get("defaults"))
        raw_jobs = data.get("jobs")
        jobs: list[Job] = []
        if not isinstance(raw_jobs, list) or not raw_jobs:
            self.fail("manifest", "jobs", "must be a non-empty list of jobs")
        else:
            for index, raw in enumerate(raw_jobs):
                jobs.extend(self._job(index, raw, speaker))
        self._check_unique(jobs)
        if self.problems:
            raise ManifestError(self.problems)
        return Manifest(path=self.path, output_dir=output_dir, limits=limits, jobs=tuple(jobs))

    def _output_dir(self, value: Any) -> Path | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail("manifest", "output_dir", "must be a non-empty path string")
            return None
        return self.base / value

    def _limits(self, value: Any) -> Limits:
        if value is None:
            return Limits()
        if not isinstance(value, dict):
            self.fail("manifest", "limits", "must be a mapping")
            return Limits()
        known = {f.name: f for f in fields(Limits)}
        chosen: dict[str, Any] = {}
        for key, number in value.items():
            if key not in known:
                self.fail("manifest", f"limits.{key}", f"unknown limit (allowed: {_names(known)})")
            elif isinstance(number, bool) or not isinstance(number, int | float) or number <= 0:
                self.fail("manifest", f"limits.{key}", f"must be a positive number, got {number!r}")
            else:
                chosen[key] = int(number) if known[key].type == "int" else float(number)
        return Limits(**chosen)

    def _default_speaker(self, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            self.fail("manifest", "defaults", "must be a mapping")
            return None
        for key in sorted(set(value) - _DEFAULT_KEYS, key=str):
            self.fail("manifest", f"defaults.{key}", "unknown field (allowed: tts_speaker)")
        speaker = value.get("tts_speaker")
        if speaker is not None and not _is_text(speaker):
            self.fail("manifest", "defaults.tts_speaker", "must be a non-empty string")
            return None
        return str(speaker) if speaker is not None else None

    def _job(self, index: int, raw: Any, speaker: str | None) -> list[Job]:
        where = f"jobs[{index}]"
        if not isinstance(raw, dict):
            self.fail(where, "-", "each job must be a mapping")
            return []
        explicit = raw.get("id")
        if explicit is not None:
            if not isinstance(explicit, str):
                # YAML 1.1 reads `010` as 8 and `no` as false: only a string is what was meant
                self.fail(where, "id", f"{explicit!r} is not text: write it in quotes")
                explicit = None
            elif not ID_PATTERN.fullmatch(explicit):
                self.fail(where, "id", f"{explicit!r} must match {ID_PATTERN.pattern}")
                explicit = None
            else:
                where = f"job '{explicit}'"
        for key in sorted(set(raw) - _JOB_KEYS, key=str):
            self.fail(where, str(key), f"unknown field (allowed: {_names(_JOB_KEYS)})")
        video, video_id = self._video(where, raw)
        extend = self._extend(where, raw)
        if "dubs" in raw:
            jobs = self._fan_out(where, raw, explicit, video, video_id, speaker)
            return [replace(job, extend=extend) for job in jobs]
        audio, tts = self._voice(where, raw, speaker)
        if (video is None and video_id is None) or (audio is None and tts is None):
            return []
        job_id = str(explicit) if explicit is not None else _derived_id(video, video_id, audio, tts)
        return [Job(job_id, where, video, video_id, audio, tts, extend=extend)]

    def _extend(self, where: str, raw: Mapping[str, Any]) -> str | None:
        value = raw.get("extend")
        if value is None or value in EXTEND_MODES:
            return None if value is None else str(value)
        self.fail(where, "extend", f"must be one of {', '.join(EXTEND_MODES)}, got {value!r}")
        return None

    def _fan_out(
        self,
        where: str,
        raw: dict[str, Any],
        explicit: Any,
        video: Path | None,
        video_id: int | None,
        speaker: str | None,
    ) -> list[Job]:
        for key in ("audio", "tts"):
            if key in raw:
                self.fail(where, key, "not allowed next to `dubs`; put it inside each dub")
        dubs = raw["dubs"]
        if not isinstance(dubs, dict) or not dubs:
            self.fail(where, "dubs", "must be a non-empty mapping of language -> {audio|tts}")
            return []
        base = str(explicit) if explicit is not None else _video_stem(video, video_id)
        jobs = []
        for lang, dub in dubs.items():
            dub_where = f"{where}.dubs.{lang}"
            if not isinstance(dub, dict):
                self.fail(dub_where, "-", "must be a mapping with `audio` or `tts`")
                continue
            for key in sorted(set(dub) - _DUB_KEYS, key=str):
                self.fail(dub_where, str(key), "unknown field (allowed: audio, tts)")
            audio, tts = self._voice(dub_where, dub, speaker)
            if not isinstance(lang, str):
                self.fail(dub_where, "dubs", f"language {lang!r} is not text: write it in quotes")
                continue
            wanted = f"{base}-{lang}"
            if explicit is not None and not ID_PATTERN.fullmatch(wanted):
                self.fail(dub_where, "dubs", f"job id {wanted!r} must match {ID_PATTERN.pattern}")
                continue
            job_id = _sanitize(wanted)
            if (video is not None or video_id is not None) and (
                audio is not None or tts is not None
            ):
                dub = Dub(where, explicit, lang)
                jobs.append(Job(job_id, dub_where, video, video_id, audio, tts, dub))
        return jobs

    def _video(self, where: str, raw: Mapping[str, Any]) -> tuple[Path | None, int | None]:
        has_path, has_id = "video" in raw, "video_id" in raw
        if has_path == has_id:
            self.fail(where, "video", "give exactly one of `video` (a local file) or `video_id`")
            return None, None
        if has_path:
            return self._path(where, "video", raw["video"]), None
        value = raw["video_id"]
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            self.fail(where, "video_id", f"must be a positive integer video id, got {value!r}")
            return None, None
        return None, value

    def _voice(
        self, where: str, raw: Mapping[str, Any], speaker: str | None
    ) -> tuple[Path | None, Tts | None]:
        has_audio, has_tts = "audio" in raw, "tts" in raw
        if has_audio == has_tts:
            self.fail(where, "audio", "give exactly one of `audio` (a local file) or `tts`")
            return None, None
        if has_audio:
            return self._path(where, "audio", raw["audio"]), None
        return None, self._tts(where, raw["tts"], speaker)

    def _tts(self, where: str, raw: Any, speaker: str | None) -> Tts | None:
        if not isinstance(raw, dict):
            self.fail(where, "tts", "must be a mapping {text: ..., speaker: ...}")
            return None
        for key in sorted(set(raw) - _TTS_KEYS, key=str):
            self.fail(where, f"tts.{key}", "unknown field (allowed: text, speaker)")
        text = raw.get("text")
        if not isinstance(text, str):
            self.fail(where, "tts.text", "must be a string")
            return None
        chosen = raw.get("speaker", speaker)
        if isinstance(chosen, int) and not isinstance(chosen, bool):
            chosen = str(chosen)
        if not _is_text(chosen):
            self.fail(where, "tts.speaker", "missing: set it here or in defaults.tts_speaker")
            return None
        return Tts(text=text, speaker=str(chosen))

    def _path(self, where: str, fld: str, value: Any) -> Path | None:
        if not _is_text(value):
            self.fail(where, fld, "must be a file path string")
            return None
        return self.base / str(value)

    def _check_unique(self, jobs: list[Job]) -> None:
        by_key: dict[str, list[Job]] = {}
        for job in jobs:
            by_key.setdefault(job.id.lower(), []).append(job)
        for same in by_key.values():
            if len(same) > 1:
                places = ", ".join(j.where for j in same)
                self.fail(
                    f"job '{same[0].id}'",
                    "id",
                    f"used by {len(same)} jobs ({places}), ids are unique ignoring case;"
                    " give these jobs explicit, different `id`s",
                )


def output_dir_of(path: Path) -> Path | None:
    """The `output_dir` a manifest names, read even when the manifest does not load (so a run
    stopped by a bad manifest still knows where its report goes); None if it names none."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    value = data.get("output_dir") if isinstance(data, dict) else None
    return path.resolve().parent / value if isinstance(value, str) and value.strip() else None


def _names(keys: Iterable[str]) -> str:
    return ", ".join(sorted(keys))


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _sanitize(candidate: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", candidate).lstrip("._-") or "job"
    return cleaned[:64]


def _video_stem(video: Path | None, video_id: int | None) -> str:
    return video.stem if video is not None else f"v{video_id}"


def _derived_id(
    video: Path | None, video_id: int | None, audio: Path | None, tts: Tts | None
) -> str:
    """A deterministic id from the job's file names (or a short hash of its TTS script)."""
    if audio is not None:
        voice = audio.stem
    else:
        assert tts is not None
        digest = hashlib.sha256(f"{tts.speaker}\0{tts.text}".encode()).hexdigest()[:8]
        voice = f"tts-{digest}"
    return _sanitize(f"{_video_stem(video, video_id)}-{voice}")
