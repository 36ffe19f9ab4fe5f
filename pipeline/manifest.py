"""The manifest, version 1: YAML, JSON or CSV in, frozen `Manifest` out, every problem at once.

This module checks structure only (schema, types, ids, exclusive fields, output paths).
Whether files exist and their media fit the limits is `pipeline.preflight`'s job
(`preflight.load_all` adds those problems to these). Paths are resolved against the manifest's
folder. Problems are one line each: ``job 'intro-es' field 'audio': ...``; in a CSV manifest
``row 5 column 'audio': ...`` (`pipeline.csvmanifest` reads the rows into the same document
a YAML file gives, so everything after parsing is the same).

The format is the file's extension: `.csv` is CSV, `.json` JSON (the YAML schema, written as
JSON), anything else YAML (`pipeline.documents` reads those two).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pipeline.csvmanifest import read_csv
from pipeline.documents import read_document
from pipeline.errors import ManifestError
from pipeline.outputs import (
    OUTPUT_FIELDS,
    expand_output,
    output_problem,
    result_path,
    shared_outputs,
)

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MB = 1024 * 1024

_TOP_KEYS = {"version", "output_dir", "output_pattern", "defaults", "limits", "jobs", "resume_from"}
_JOB_KEYS = {"id", "video", "video_id", "audio", "tts", "dubs", "extend", "output"}
# `extend`: what a long job does when its dub outlasts its video (pipeline.longform)
EXTEND_MODES = ("loop", "freeze")
_DUB_KEYS = {"audio", "tts", "output"}
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
    place and time range, and the fingerprint it is paid under (what it sends: the content of
    the parent's inputs in its range, `pipeline.longform.cut.fingerprinted`; never the bytes
    of a re-encoded cut)."""

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
    # the result's path inside the output folder (`output`/`output_pattern`, checked and
    # normalised: `es/intro.mp4`); None: `<id>.mp4` (`pipeline.outputs.job_path`)
    output: str | None = None

    def media_paths(self) -> list[Path]:
        return [p for p in (self.video, self.audio) if p is not None]


@dataclass(frozen=True)
class Wording:
    """How problems name places: YAML's `jobs[3]` and fields, or a CSV's rows and columns."""

    places: Sequence[str] | None = None  # each entry's place; None: `jobs[<index>]`
    noun: str = "field"
    names: Mapping[str, str] = field(default_factory=dict)  # a field's name in this format

    def name(self, fld: str) -> str:
        return self.names.get(fld, fld)


@dataclass(frozen=True)
class Manifest:
    path: Path
    output_dir: Path | None
    limits: Limits
    jobs: tuple[Job, ...] = field(default_factory=tuple)
    output_pattern: str | None = None  # as written (failed.yaml writes each job's `output`)
    wording: Wording = field(default_factory=Wording)  # how its problems name places
    # a state file whose paid work these jobs take instead of paying again (failed.yaml names
    # the state of the run it came from: `pipeline.reconcile.take_paid_from`)
    resume_from: Path | None = None


@dataclass(frozen=True)
class Parsed:
    """A manifest as far as it could be read: the jobs that could be built, every structural
    problem, and the media files named by entries that gave no job (`(place, field, path)`),
    so that preflight checks those too and reports every problem in one pass."""

    manifest: Manifest
    problems: list[str]
    loose: list[tuple[str, str, Path]]


def load_manifest(path: Path) -> Manifest:
    """Parse and structurally validate `path`; raise ManifestError listing every problem."""
    parsed = parse_manifest(path)
    if parsed.problems:
        raise ManifestError(parsed.problems)
    return parsed.manifest


def parse_manifest(path: Path) -> Parsed:
    """Read `path` (by its extension: CSV, JSON, else YAML) as far as it goes. Raises
    ManifestError only when the file cannot be read or parsed at all."""
    if path.suffix.lower() == ".csv":
        sheet = read_csv(path)
        wording = Wording(places=sheet.places, noun="column", names=sheet.columns)
        if not sheet.jobs:  # every row broken: the sheet's problems say why
            return Parsed(Manifest(path, None, Limits(), wording=wording), sheet.problems, [])
        parsed = _Parser(path, wording).parse({"version": 1, "jobs": sheet.jobs})
        return replace(parsed, problems=sheet.problems + parsed.problems)
    return _Parser(path).parse(read_document(path))


def parse_document(path: Path, document: Any) -> Parsed:
    """A manifest document (what a YAML file holds) as if read from `path`: for manifests
    made in memory (`pipeline.authoring`), checked by the same rules before they are written."""
    return _Parser(path).parse(document)


class _Parser:
    def __init__(self, path: Path, wording: Wording | None = None) -> None:
        self.path = path
        self.base = path.resolve().parent
        self.words = wording or Wording()
        self.problems: list[str] = []
        self.files: list[tuple[str, str, Path]] = []  # every media path found, with its place
        self._paths: dict[str, Path] = {}  # by the text that named it
        self.pattern: str | None = None

    def fail(self, where: str, fld: str, message: str) -> None:
        self.problems.append(f"{where} {self.words.noun} '{self.words.name(fld)}': {message}")

    def unknown(
        self, where: str, key: Any, allowed: Iterable[str], prefix: str = "", what: str = "field"
    ) -> None:
        """An unknown field, with the nearest known one when there is one close enough."""
        known = sorted(allowed)
        near = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        hint = f"; did you mean `{near[0]}`?" if near else ""
        self.fail(where, f"{prefix}{key}", f"unknown {what}{hint} (allowed: {', '.join(known)})")

    def parse(self, data: Any) -> Parsed:
        if not isinstance(data, dict):
            raise ManifestError(
                [
                    "manifest: the top level must be a mapping with `version` and `jobs`"
                    " (a CSV manifest is read as CSV when its name ends in .csv)"
                ]
            )
        for key in sorted(set(data) - _TOP_KEYS, key=str):
            self.unknown("manifest", key, _TOP_KEYS)
        if data.get("version") != 1:
            self.fail("manifest", "version", f"must be 1, got {data.get('version')!r}")
        output_dir = self._output_dir(data.get("output_dir"))
        self.pattern = self._pattern(data.get("output_pattern"))
        resume_from = self._output_dir(data.get("resume_from"), "resume_from")
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
        self._check_outputs(jobs)
        manifest = Manifest(
            path=self.path,
            output_dir=output_dir,
            limits=limits,
            jobs=tuple(jobs),
            output_pattern=self.pattern,
            wording=self.words,
            resume_from=resume_from,
        )
        used = {p for job in jobs for p in job.media_paths()}
        loose = [(w, f, p) for w, f, p in self.files if p not in used]
        return Parsed(manifest, self.problems, loose)

    def _pattern(self, value: Any) -> str | None:
        if value is None:
            return None
        if not _is_text(value):
            self.fail("manifest", "output_pattern", "must be a path such as {lang}/{name}.mp4")
            return None
        # the pattern's own faults are said once here, not once for every job
        path, problem = expand_output(str(value), {name: name for name in OUTPUT_FIELDS})
        if path is not None:
            problem = output_problem(path)[1]
        if problem:
            self.fail("manifest", "output_pattern", problem)
            return None
        return str(value)

    def _output(self, where: str, own: Any, values: Mapping[str, str | None]) -> str | None:
        """The job's result path: its own `output` (a job's, a dub's or its fan-out entry's),
        else the manifest's `output_pattern`, filled and checked; None: `<id>.mp4`."""
        fld, template = ("output", own) if own is not None else ("output_pattern", self.pattern)
        if template is None:
            return None
        if not _is_text(template):
            self.fail(where, "output", "must be a path inside the output folder, like es/a.mp4")
            return None
        path, problem = expand_output(str(template), values)
        if path is not None:
            path, problem = output_problem(path)
        if problem:
            self.fail(where, fld, problem)
            return None
        return path

    def _output_dir(self, value: Any, name: str = "output_dir") -> Path | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail("manifest", name, "must be a non-empty path string")
            return None
        # `../out` (as `convert` writes for a folder beside it) named as `run` names it
        return Path(os.path.normpath(self.base / value))

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
                self.unknown("manifest", key, known, prefix="limits.", what="limit")
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
            self.unknown("manifest", key, _DEFAULT_KEYS, prefix="defaults.")
        speaker = value.get("tts_speaker")
        if speaker is not None and not _is_text(speaker):
            self.fail("manifest", "defaults.tts_speaker", "must be a non-empty string")
            return None
        return str(speaker) if speaker is not None else None

    def _job(self, index: int, raw: Any, speaker: str | None) -> list[Job]:
        places = self.words.places
        where = places[index] if places else f"jobs[{index}]"
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
            elif not places:  # a CSV row keeps its row number
                where = f"job '{explicit}'"
        for key in sorted(set(raw) - _JOB_KEYS, key=str):
            self.unknown(where, key, _JOB_KEYS)
        video, video_id = self._video(where, raw)
        extend = self._extend(where, raw)
        if "dubs" in raw:
            jobs = self._fan_out(where, raw, explicit, video, video_id, speaker)
            return [replace(job, extend=extend) for job in jobs]
        audio, tts = self._voice(where, raw, speaker)
        if (video is None and video_id is None) or (audio is None and tts is None):
            return []
        job_id = str(explicit) if explicit is not None else _derived_id(video, video_id, audio, tts)
        values = {"id": job_id, "name": job_id, "lang": None, "stem": _video_stem(video, video_id)}
        output = self._output(where, raw.get("output"), values)
        return [Job(job_id, where, video, video_id, audio, tts, extend=extend, output=output)]

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
                self.unknown(dub_where, key, _DUB_KEYS)
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
                stem = _video_stem(video, video_id)
                values = {"id": job_id, "name": base, "lang": lang, "stem": stem}
                own = dub.get("output", raw.get("output"))
                output = self._output(dub_where, own, values)
                dub = Dub(where, explicit, lang)
                jobs.append(Job(job_id, dub_where, video, video_id, audio, tts, dub, output=output))
        return jobs

    def _video(self, where: str, raw: Mapping[str, Any]) -> tuple[Path | None, int | None]:
        has_path, has_id = "video" in raw, "video_id" in raw
        if has_path == has_id:
            self.fail(
                where,
                "video",
                f"give exactly one of `{self.words.name('video')}` (a local file) or"
                f" `{self.words.name('video_id')}`",
            )
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
            self.fail(
                where,
                "audio",
                f"give exactly one of `{self.words.name('audio')}` (a local file) or"
                f" `{self.words.name('tts')}`",
            )
            return None, None
        if has_audio:
            return self._path(where, "audio", raw["audio"]), None
        return None, self._tts(where, raw["tts"], speaker)

    def _tts(self, where: str, raw: Any, speaker: str | None) -> Tts | None:
        if not isinstance(raw, dict):
            self.fail(where, "tts", "must be a mapping {text: ..., speaker: ...}")
            return None
        for key in sorted(set(raw) - _TTS_KEYS, key=str):
            self.unknown(where, key, _TTS_KEYS, prefix="tts.")
        text = raw.get("text")
        if not isinstance(text, str):
            self.fail(where, "tts.text", "must be a string")
            return None
        chosen = raw.get("speaker", speaker)
        if isinstance(chosen, int) and not isinstance(chosen, bool):
            chosen = str(chosen)
        if not _is_text(chosen):
            fix = (
                "set it here or in defaults.tts_speaker"
                if self.words.places is None
                else ("give it in this row")
            )
            self.fail(where, "tts.speaker", f"missing: {fix}")
            return None
        return Tts(text=text, speaker=str(chosen))

    def _path(self, where: str, fld: str, value: Any) -> Path | None:
        if not _is_text(value):
            self.fail(where, fld, "must be a file path string")
            return None
        # one Path per file, however many jobs name it: a 10,000-job manifest's dict lookups by
        # path then find it by identity, not by comparing parts (issue 6: CPU per job)
        path = self._paths.get(str(value))
        if path is None:
            path = self._paths[str(value)] = self.base / str(value)
        self.files.append((where, fld, path))
        return path

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

    def _check_outputs(self, jobs: list[Job]) -> None:
        """No two jobs on one result path, nor one's file where another's folder is."""
        paths = [
            (job_label(job), job.output or result_path(Path(), job.id).as_posix(), job.output)
            for job in jobs
        ]
        for label, problem in shared_outputs(paths):
            self.fail(label, "output", problem)


def job_label(job: Job) -> str:
    """A job as problems name it: `job 'promo-es' (jobs[4].dubs.es)`."""
    return f"job '{job.id}'" + ("" if job.where == f"job '{job.id}'" else f" ({job.where})")


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
