"""Writing manifests: `init` (from files named by a pattern) and `convert` (CSV <-> YAML/JSON).

`init --video 'media/{name}.mp4' --audio 'dubs/{name}_{lang}.wav'` pairs every video with
every dub of the same `{name}`: one job per pair, id `{name}-{lang}`; each video is written
as one fan-out entry (`dubs:`), with one dub too, so that an `output_pattern` of `{name}` and
`{lang}` fits every job. What it
cannot pair is said (`Pairing.unpaired`): a dub whose `{name}` is no video's, a video
without a dub, a name or language that cannot make a job id, a second dub of one video and
language, a dub of a known video in another audio format than the pattern's. A pattern's
fields and each `*` in it match within one folder level (no `/`); a pattern with a `*` finds
only the formats the API takes (`{name}_{lang}.*`: `.mp3` and `.wav` dubs alike). A field
given twice must match the same text both times. A dub is
paired with the longest video name it can be read with, so `intro_long_es.wav` is
`intro_long` in Spanish when both `intro` and `intro_long` are videos.

`convert A B` reads A by its extension (like every command) and writes B by its own: `.csv`,
`.json`, else YAML. Ids, paths (relative to B's folder), TTS speakers and each job's output
path are kept, so a converted manifest runs on the same state file without paying again: a
YAML or JSON file written into another folder names the results' folder (`output_dir`, the
source's own or its default `out/`) unless it is the new file's default. A CSV has no place
for manifest-wide settings: defaults and an `output_pattern` are written into each row; a
results' folder other than the CSV's own default (`out/` next to it: an `output_dir`, or a
CSV written away from the source, whose results are in `out/` next to the source) or
changed `limits` are refused rather than dropped.

Both refuse to replace a file that exists, and check what they made by the manifest's own
rules before writing it.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.csvmanifest import write_csv
from pipeline.errors import ManifestError
from pipeline.failed import to_manifest
from pipeline.manifest import ID_PATTERN, Limits, Manifest, load_manifest, parse_document
from pipeline.preflight import AUDIO_CONTAINERS, VIDEO_CONTAINERS
from pipeline.report import atomic_write

_FIELD = re.compile(r"\{(\w*)\}")


@dataclass(frozen=True)
class Pattern:
    """A file pattern such as `dubs/{name}_{lang}.wav`: a glob to list candidates, and a
    regular expression to read the fields back out of a name."""

    text: str
    fields: tuple[str, ...]

    @classmethod
    def parse(cls, option: str, text: str, wanted: Sequence[str]) -> Pattern:
        found = _FIELD.findall(text)
        unknown = sorted(set(found) - set(wanted))
        missing = [f for f in wanted if f not in found]
        if unknown or missing:
            names = ", ".join(f"{{{f}}}" for f in wanted)
            raise ManifestError([f"{option} {text!r}: give exactly the fields {names}"])
        return cls(text, tuple(found))

    def glob(self) -> str:
        """Each field and each `*` of the pattern as a glob's `*`, the rest literal."""
        literals = _FIELD.split(self.text)[::2]
        return "*".join("*".join(map(glob.escape, part.split("*"))) for part in literals)

    def other_formats(self) -> Pattern | None:
        """The pattern with `.*` for its own extension (`dubs/{name}_{lang}.*` for
        `dubs/{name}_{lang}.wav`), to find files only another extension kept out; None when
        its extension is a wildcard already, or a field."""
        suffix = Path(self.text).suffix
        if not suffix or "*" in suffix or "{" in suffix:
            return None
        return Pattern(self.text[: -len(suffix)] + ".*", self.fields)

    def regex(self, choices: Mapping[str, Sequence[str]] | None = None) -> re.Pattern[str]:
        """The pattern as a regex; a field in `choices` matches one of its values (longest
        first), the others any text within one folder level (`{name}` as much as it can, so
        that an unpaired `my_intro_es.wav` is named `my_intro`)."""
        parts = _FIELD.split(self.text)
        out, seen = [], set()
        for index, part in enumerate(parts):
            if index % 2 == 0:  # a `*` is any text within one folder level, as in its glob
                out.append("[^/]*".join(map(re.escape, part.split("*"))))
            elif part in seen:
                out.append(f"(?P={part})")
            else:
                seen.add(part)
                values = sorted((choices or {}).get(part, ()), key=len, reverse=True)
                loose = "[^/]+" if part == "name" else "[^/]+?"
                body = "|".join(map(re.escape, values)) if values else loose
                out.append(f"(?P<{part}>{body})")
        return re.compile("^" + "".join(out) + "$")


@dataclass
class Pairing:
    """What `pair` found: each name's video and its dubs by language, and what it could not
    pair, one line each."""

    videos: dict[str, Path] = field(default_factory=dict)
    dubs: dict[str, dict[str, Path]] = field(default_factory=dict)
    unpaired: list[str] = field(default_factory=list)

    def matched(self) -> list[str]:
        return [
            f"{name}: {video} + {len(dubs)} dubs ({', '.join(sorted(dubs))})"
            for name, video in sorted(self.videos.items())
            if (dubs := self.dubs.get(name))
        ]


def pair(video: str, audio: str, root: Path) -> Pairing:
    """Every file below `root` matching the `video` pattern (`{name}`) paired with every file
    matching the `audio` pattern (`{name}`, `{lang}`) of the same name."""
    videos_at = Pattern.parse("--video", video, ("name",))
    dubs_at = Pattern.parse("--audio", audio, ("name", "lang"))
    found = Pairing()
    reader = videos_at.regex()
    for path in _files(videos_at, root, VIDEO_CONTAINERS):
        match = reader.match(path)
        if match is None:  # `*` crossed a folder, or a repeated field differs
            continue
        name = match["name"]
        if not ID_PATTERN.fullmatch(name):
            found.unpaired.append(f"{path}: {{name}} {name!r} cannot start a job id")
            continue
        found.videos[name] = Path(path)
    paired = dubs_at.regex({"name": list(found.videos)})
    loose = dubs_at.regex()
    for path in _files(dubs_at, root, AUDIO_CONTAINERS):
        match = paired.match(path)
        if match is None:
            guess = loose.match(path)
            if guess is not None:
                wanted = video.replace("{name}", guess["name"])
                found.unpaired.append(f"{path}: no video named {guess['name']!r} ({wanted})")
            continue
        name, lang = match["name"], match["lang"]
        if not ID_PATTERN.fullmatch(f"{name}-{lang}"):
            bad = f"{name}-{lang}"
            found.unpaired.append(f"{path}: {bad} is no valid job id ({ID_PATTERN.pattern})")
            continue
        first = found.dubs.get(name, {}).get(lang)
        if first is not None:  # intro_es.mp3 and intro_es.wav: one job, one dub
            found.unpaired.append(f"{path}: {name}-{lang} has a dub already ({first})")
            continue
        found.dubs.setdefault(name, {})[lang] = Path(path)
    other = dubs_at.other_formats()
    if other is not None:  # dubs of these videos in another audio format: said, not dropped
        reader = other.regex({"name": list(found.videos)})
        for path in _files(other, root, AUDIO_CONTAINERS):
            if loose.match(path) is None and reader.match(path) is not None:
                found.unpaired.append(
                    f"{path}: not {Path(audio).suffix} ({audio}); --audio '{other.text}'"
                    " pairs dubs of every audio format"
                )
    for name, alone in sorted(found.videos.items()):
        if not found.dubs.get(name):
            dubs = audio.replace("{name}", name)
            found.unpaired.append(f"{alone}: no dub matches {dubs}")
    return found


def init_document(
    found: Pairing, root: Path, folder: Path, output_pattern: str | None = None
) -> dict[str, Any]:
    """The manifest of `found`, its paths relative to `folder` (where it will be)."""

    def rel(path: Path) -> str:
        return os.path.relpath(root / path, folder)

    document: dict[str, Any] = {"version": 1}
    if output_pattern is not None:
        document["output_pattern"] = output_pattern
    jobs: list[dict[str, Any]] = []
    for name, video in sorted(found.videos.items()):
        dubs = found.dubs.get(name) or {}
        if dubs:  # one dub too: a fan-out job has its `{name}` and `{lang}` for output_pattern
            head = {} if video.stem == name else {"id": name}
            entry: dict[str, Any] = {**head, "video": rel(video)}
            entry["dubs"] = {lang: {"audio": rel(dubs[lang])} for lang in sorted(dubs)}
            jobs.append(entry)
    if not jobs:
        raise ManifestError(["init: no video and dub could be paired", *found.unpaired])
    document["jobs"] = jobs
    return document


def checked(target: Path, document: Mapping[str, Any]) -> Manifest:
    """`document` as a manifest at `target` (where its paths are relative to), or the
    ManifestError of every problem the manifest's rules find in it."""
    parsed = parse_document(target, document)
    if parsed.problems:
        raise ManifestError(parsed.problems)
    return parsed.manifest


def write_manifest(target: Path, document: Mapping[str, Any], header: str = "") -> Manifest:
    """Check `document` as a manifest at `target`, then write it there in the format its
    name says (never over a file that exists); return the manifest."""
    _free(target)
    manifest = checked(target, document)
    atomic_write(target, render(manifest, document, header, target.suffix))
    return manifest


def render(manifest: Manifest, document: Mapping[str, Any], header: str, suffix: str) -> str:
    """The text of a manifest: YAML (with `header` as comments), JSON, or CSV rows."""
    kind = suffix.lower()
    if kind == ".csv":
        return write_csv(csv_rows(manifest))
    if kind == ".json":
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    return comments + yaml.safe_dump(dict(document), sort_keys=False, allow_unicode=True, width=100)


def convert(source: Path, target: Path) -> Manifest:
    """`source` written again as `target` (see the module docstring)."""
    manifest = load_manifest(source)
    folder = target.resolve().parent
    if target.suffix.lower() == ".csv":
        _free(target)
        _fits_a_sheet(manifest, folder)
        atomic_write(target, write_csv(csv_rows(manifest, folder)))
        return load_manifest(target)
    results = _results(manifest)
    output_dir = None
    if manifest.output_dir is not None or results != folder / "out":
        output_dir = os.path.relpath(results, folder)  # its state file, and what it paid for
    document = to_manifest(manifest, manifest.jobs, folder, output_dir=output_dir)
    return write_manifest(target, document, f"converted from {source.name} by pixverse-batch")


def csv_rows(manifest: Manifest, folder: Path | None = None) -> list[dict[str, str]]:
    """One row a job, paths relative to `folder` (default: the manifest's own)."""
    base = folder or manifest.path.resolve().parent
    rows = []
    for job in manifest.jobs:
        row = {"id": job.id}
        if job.video is not None:
            row["video"] = os.path.relpath(job.video, base)
        else:
            row["video_id"] = str(job.video_id)
        if job.audio is not None:
            row["audio"] = os.path.relpath(job.audio, base)
        elif job.tts is not None:
            row["tts_text"], row["tts_speaker"] = job.tts.text, job.tts.speaker
        if job.output is not None:
            row["output"] = job.output
        if job.extend is not None:
            row["extend"] = job.extend
        rows.append(row)
    return rows


def _results(manifest: Manifest) -> Path:
    """Where `manifest`'s results and state file are: its `output_dir`, else `out/` next to
    it (as `run` puts them)."""
    if manifest.output_dir is not None:
        return manifest.output_dir.resolve()
    return manifest.path.resolve().parent / "out"


def _fits_a_sheet(manifest: Manifest, folder: Path) -> None:
    problems = []
    results = _results(manifest)
    if manifest.output_dir is not None and results != folder / "out":
        problems.append(
            f"manifest field 'output_dir': a CSV manifest has none (its results go to out/ next"
            f" to it, or --out): run it with --out {manifest.output_dir}, or keep YAML"
        )
    elif results != folder / "out":
        problems.append(
            f"{manifest.path.name}: its results and state file are in {results}; a CSV in"
            f" {folder} has its results in {folder / 'out'} and would pay for them again:"
            f" write the CSV next to {manifest.path.name}, or convert to YAML or JSON (they"
            " keep the results' folder)"
        )
    if manifest.limits != Limits():
        problems.append(
            "manifest field 'limits': a CSV manifest has none; keep YAML for other limits"
        )
    if problems:
        raise ManifestError(problems)


def _free(target: Path) -> None:
    if target.exists():
        raise ManifestError([f"{target}: exists; not replaced (remove it, or choose another)"])


def _files(pattern: Pattern, root: Path, formats: Collection[str]) -> list[str]:
    """The files a pattern's glob finds, as the pattern spells them (relative to `root`
    unless the pattern is absolute), sorted; with a `*` in the pattern, only files of the
    `formats` the API takes (by extension), so `{name}.*` finds no dub's notes or thumbnail."""
    names = glob.glob(pattern.glob(), root_dir=root)  # an absolute pattern gives absolute names
    wild = "*" in pattern.text
    return sorted(
        n
        for n in names
        if (root / n).is_file() and (not wild or Path(n).suffix.lower()[1:] in formats)
    )
