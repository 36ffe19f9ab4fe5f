"""Where result files go in the output folder, and the rule that none is ever overwritten.

Names, all in the output folder `out/`:

* `out/<job id>.mp4`: a job's result (`result_path`).
* `out/.<video id>.adopt.mp4`: a result waiting while ids move, so that swaps and cycles never
  need two files on one name (`staging_path`). Named by the video id, the one thing no two
  results share, so a run that died mid-move finds the file again.
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
from pathlib import Path

SUPERSEDED = "superseded"
SEGMENTS = "segments"
SEGMENT_MARK = "~"  # segment job ids: `<parent>~<n>`; manifest ids cannot hold it


def result_path(output_dir: Path, job_id: str) -> Path:
    parent, mark, _ = job_id.partition(SEGMENT_MARK)
    if mark and "@" not in job_id:  # an archived segment's name stays by its archive id
        return segments_dir(output_dir, parent) / f"{job_id}.mp4"
    return output_dir / f"{job_id}.mp4"


def segments_dir(output_dir: Path, parent: str) -> Path:
    """Where a long job's cuts and segment results wait until they are stitched."""
    return output_dir / SEGMENTS / parent


def in_segments_dir(path: Path, output_dir: Path) -> bool:
    """Is `path` a file in one of `output_dir`'s segment folders (removed once stitched)?"""
    return path.parent.parent == output_dir / SEGMENTS


def staging_path(output_dir: Path, video_id: int) -> Path:
    return output_dir / f".{video_id}.adopt.mp4"


def archive_path(output_dir: Path, record_id: str) -> Path:
    return output_dir / SUPERSEDED / f"{record_id}.mp4"


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


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
