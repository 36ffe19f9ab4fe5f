"""Where result files go in the output folder, and the rule that none is ever overwritten.

Names, all in the output folder `out/`:

* `out/<job id>.mp4`: a job's result (`result_path`), unless the manifest gives it another
  path inside the folder (`output`, `output_pattern`: `out/es/intro.mp4`; `job_path`). Such a
  path is checked once, when the manifest is read (`output_problem`): relative, no `..`, an
  `.mp4`, no hidden part, none of the names below, and no two jobs on one path.
* `out/.<video id>.adopt.mp4`: a result waiting while ids move, so that swaps and cycles never
  need two files on one name (`staging_path`). Named by the video id, the one thing no two
  results share, so a run that died mid-move finds the file again. A long job's stitched
  result waits at `out/.<job id>.stitched.adopt.mp4` (`long_staging_path`).
* `out/superseded/<archive id>.mp4`: an archived record's result, once a job of the manifest
  needs its old name, or at once from a segment folder (`archive_path`).
* `out/superseded/<name>~<n>.mp4`: whatever stood where a file was placed (`place`).
* `out/segments/<parent>/`: a long job's cut inputs and its segments' results
  (`<parent>~<n>.mp4`), until they are stitched into `out/<parent>.mp4` (`pipeline.longform`).

Contract of `place(src, dest)`: `src` is renamed to `dest` (same file system: atomic), and
whatever was at `dest` is not replaced but first moved aside into `superseded/` under a free
name: a result paid for earlier, or a file someone else put there, always survives. Folders are
fsynced, so a move is durable before the state file records it. One process at a time works
in an output folder (the state file's lock), so looking for a free name, then renaming, is safe.
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping, Sequence
from pathlib import Path

SUPERSEDED = "superseded"
SEGMENTS = "segments"
SEGMENT_MARK = "~"  # segment job ids: `<parent>~<n>`; manifest ids cannot hold it
# the folders a job's own output path may not start with: the pipeline's, and failed.yaml's
# `retry/` (another output folder, with its own state file)
RESERVED = frozenset({SUPERSEDED, SEGMENTS, "retry"})
# what an `output` or `output_pattern` may name: the job's id, its fan-out entry's name (the
# entry's id, or its video's stem), the language under `dubs`, the video file's stem
OUTPUT_FIELDS = ("id", "name", "lang", "stem")


def result_path(output_dir: Path, job_id: str) -> Path:
    parent, mark, _ = job_id.partition(SEGMENT_MARK)
    if mark and "@" not in job_id:  # an archived segment's name stays by its archive id
        return segments_dir(output_dir, parent) / f"{job_id}.mp4"
    return output_dir / f"{job_id}.mp4"


def job_path(output_dir: Path, job_id: str, output: str | None) -> Path:
    """Where job `job_id`'s result goes: its checked `output` (relative to the folder), or
    `<id>.mp4` (`result_path`)."""
    return output_dir / output if output is not None else result_path(output_dir, job_id)


def expand_output(template: str, values: Mapping[str, str | None]) -> tuple[str | None, str]:
    """`template` with its `{field}`s filled from `values` (`OUTPUT_FIELDS`); returns
    (the path, "") or (None, the problem). A field whose value is None has none for this job
    (`{lang}` outside `dubs`)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:  # a lone `{` or `}`
        return None, f"{template!r}: {exc} (write a literal brace as {{{{ or }}}})"
    out: list[str] = []
    for literal, name, spec, conversion in parts:
        out.append(literal)
        if name is None:
            continue
        if name not in OUTPUT_FIELDS:
            allowed = ", ".join(f"{{{f}}}" for f in OUTPUT_FIELDS)
            return None, f"{template!r}: unknown field {{{name}}} (allowed: {allowed})"
        if spec or conversion:
            return None, f"{template!r}: write {{{name}}} without a format or conversion"
        value = values.get(name)
        if value is None:
            return None, f"{template!r}: this job has no {{{name}}} (only jobs under `dubs` do)"
        out.append(value)
    return "".join(out), ""


def output_problem(path: str) -> tuple[str, str]:
    """(`path` normalised, "") when it is a result path a job may have, or ("", the problem):
    relative, inside the output folder, an `.mp4`, no hidden part, no pipeline folder."""
    if path.startswith(("/", "\\")) or (path[:1].isalpha() and path[1:2] == ":"):
        return "", f"{path!r} is absolute: give a path inside the output folder, like es/a.mp4"
    if "\\" in path:
        return "", f"{path!r}: separate folders with /, not \\"
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        return "", f"{path!r} leaves the output folder (..): give a path inside it"
    if not parts or not parts[-1].lower().endswith(".mp4") or parts[-1].lower() == ".mp4":
        return "", f"{path!r} must name an .mp4 file (results are mp4)"
    hidden = next((p for p in parts if p.startswith(".")), None)
    if hidden is not None:
        return "", f"{path!r}: {hidden!r} starts with a dot, kept for the pipeline's own files"
    if parts[0] in RESERVED or SUPERSEDED in parts[:-1]:
        name = parts[0] if parts[0] in RESERVED else SUPERSEDED
        return "", f"{path!r}: {name}/ is the pipeline's own folder; choose another"
    return "/".join(parts), ""


def shared_outputs(paths: Sequence[tuple[str, str, str | None]]) -> list[tuple[str, str]]:
    """(label, problem) of each job whose result path another job has too, or that is a
    folder of another's (ignoring case, as macOS and Windows do). `paths`: each job's label,
    result path (relative) and own `output` (None: `<id>.mp4`)."""
    found: list[tuple[str, str]] = []
    files: dict[str, tuple[str, str, str | None]] = {}
    folders: dict[str, tuple[str, str, str | None]] = {}
    for entry in paths:
        label, path, own = entry
        parts = path.casefold().split("/")
        for n in range(1, len(parts)):
            folders.setdefault("/".join(parts[:n]), entry)
        other = files.setdefault(path.casefold(), entry)
        # two `<id>.mp4` meet only when the ids do, which the manifest's id check says
        if other is not entry and (own or other[2]) is not None:
            found.append(
                (
                    label,
                    f"{path} is also the result of {other[0]}: two jobs cannot share one"
                    " output; give one of them another `output`",
                )
            )
    for key, (label, path, _) in files.items():
        if key in folders:
            holder, inside, _ = folders[key]
            found.append(
                (
                    label,
                    f"{path} is a folder of {holder}'s output {inside}: one of them needs"
                    " another path",
                )
            )
    return found


def segments_dir(output_dir: Path, parent: str) -> Path:
    """Where a long job's cuts and segment results wait until they are stitched."""
    return output_dir / SEGMENTS / parent


def in_segments_dir(path: Path, output_dir: Path) -> bool:
    """Is `path` a file in one of `output_dir`'s segment folders (removed once stitched)?"""
    return path.parent.parent == output_dir / SEGMENTS


def staging_path(output_dir: Path, video_id: int) -> Path:
    return output_dir / f".{video_id}.adopt.mp4"


def long_staging_path(output_dir: Path, job_id: str) -> Path:
    """Where a long job's stitched result waits while results swap paths (`staging_path`'s
    counterpart: a long job has no video id of its own)."""
    return output_dir / f".{job_id}.stitched.adopt.mp4"


def archive_path(output_dir: Path, record_id: str) -> Path:
    return output_dir / SUPERSEDED / f"{record_id}.mp4"


def size_of(path: Path) -> int | None:
    """The length of the file at `path` (None: no file there, or none that can be read)."""
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def place(src: Path, dest: Path) -> Path | None:
    """Rename `src` to `dest` without destroying anything; return where a file that stood at
    `dest` went (into `superseded/`), or None if the name was free."""
    aside = move_aside(dest) if os.path.lexists(dest) else None
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dest)
    fsync_dir(dest.parent)
    if src.parent != dest.parent:
        fsync_dir(src.parent)
    return aside


def move_aside(path: Path) -> Path:
    """Move `path` into `superseded/` next to it, as `<stem>~<n><suffix>` with the first free n."""
    folder = path.parent / SUPERSEDED
    folder.mkdir(exist_ok=True)
    n = 1
    while os.path.lexists(folder / f"{path.stem}~{n}{path.suffix}"):
        n += 1
    target = folder / f"{path.stem}~{n}{path.suffix}"
    os.replace(path, target)
    fsync_dir(folder)
    fsync_dir(path.parent)
    return target


def prune_empty(folder: Path, root: Path) -> None:
    """Remove `folder` and its parents while they are empty, up to `root` (kept): what a
    moved result leaves behind (`es/` after `es/intro.mp4` went elsewhere)."""
    while folder != root and folder.is_relative_to(root):
        try:
            folder.rmdir()
        except OSError:  # not empty (or not ours): leave it and everything above it
            return
        folder = folder.parent


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
