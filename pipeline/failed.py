"""`failed.yaml`: the jobs that failed this run, as a manifest that validates and runs as is.

Written into the output folder at the end of every run that had failures, and removed by a run
that had none, so it never lists an older night's failures. Paths are relative to the output
folder (where the file is); jobs of a `dubs:` fan-out are written back as fan-out, under the
same ids, with the same `output` paths, so a fix made there and run carries over. Its own
`output_dir` is `retry/` next to it: running it never touches the nightly folder's state
(whose done jobs it would otherwise set aside as unwanted, see `pipeline.reconcile`). Its
`resume_from` names that state file, read only: what the run paid for a job of the list (a
long job's done segments) is taken, not paid again (`pipeline.reconcile.take_paid_from`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import map_disk_errors
from pipeline.jobstate import JobState
from pipeline.manifest import Job, Limits, Manifest
from pipeline.report import atomic_write
from pipeline.state import StateStore

FAILED_NAME = "failed.yaml"
RETRY_DIR = "retry"

_HEADER = """\
# The jobs that failed in run {run_id}, as a manifest: fix what their `error` in report.csv
# names, then `pixverse-batch run {name}` (results go to {retry}/ next to this file, or --out;
# what that run paid for these jobs, such as a long job's done segments, is taken from the
# state file `resume_from` names, not paid again).
# Written by pixverse-batch at the end of the run; the next run replaces or removes it.
"""


def failed_this_run(store: StateStore, manifest: Manifest, since: float) -> list[Job]:
    """The jobs of `manifest` that are failed now and became so at or after `since` (the
    run's start): an older failure the run did not retry is not this run's."""
    failed = []
    for job in manifest.jobs:
        record = store.find(job.id)
        if record is None or record.state is not JobState.FAILED:
            continue
        history = store.history(job.id)
        if any(e.to_state == JobState.FAILED.value and e.at >= since for e in history):
            failed.append(job)
    return failed


def write_failed_manifest(
    output_dir: Path,
    manifest: Manifest,
    failed: Sequence[Job],
    run_id: str,
    *,
    state: Path | None = None,
) -> Path | None:
    """Write `failed` as OUTPUT/failed.yaml, or remove the file when nothing failed; return
    its path (None when removed). `state`: the run's state file, its `resume_from`. Raises
    DiskError."""
    path = output_dir / FAILED_NAME
    if not failed:
        with map_disk_errors(f"cannot remove {path}"):
            path.unlink(missing_ok=True)
        return None
    document = to_manifest(manifest, failed, output_dir.resolve(), state)
    text = _HEADER.format(run_id=run_id, name=FAILED_NAME, retry=RETRY_DIR)
    text += yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    atomic_write(path, text)
    return path


def to_manifest(
    manifest: Manifest,
    jobs: Sequence[Job],
    folder: Path,
    state: Path | None = None,
    output_dir: str | None = RETRY_DIR,
) -> dict[str, Any]:
    """A version-1 manifest document of `jobs`, paths relative to `folder`; each job's
    `output` spelled out where it has one (a pattern is not carried over, its paths are);
    `state` (the run's state file) as its `resume_from`."""
    document: dict[str, Any] = {"version": 1}
    if output_dir is not None:
        document["output_dir"] = output_dir
    if state is not None:
        document["resume_from"] = os.path.relpath(state.resolve(), folder)
    limits = _changed_limits(manifest.limits)
    if limits:
        document["limits"] = limits
    entries: list[dict[str, Any]] = []
    fan_outs: dict[str, dict[str, Any]] = {}
    for job in jobs:
        if job.dub is None:
            entries.append({"id": job.id, **_video(job, folder), **_voice(job, folder)})
            continue
        entry = fan_outs.get(job.dub.entry)
        if entry is None:
            # ids come out the same: `<entry id>-<lang>`, or derived from the same file name
            head = {"id": job.dub.entry_id} if job.dub.entry_id is not None else {}
            entry = fan_outs[job.dub.entry] = {**head, **_video(job, folder), "dubs": {}}
            entries.append(entry)
        entry["dubs"][job.dub.lang] = _voice(job, folder)
    document["jobs"] = entries
    return document


def _video(job: Job, folder: Path) -> dict[str, Any]:
    extend = {"extend": job.extend} if job.extend is not None else {}
    if job.video is not None:
        return {"video": os.path.relpath(job.video, folder), **extend}
    return {"video_id": job.video_id, **extend}


def _voice(job: Job, folder: Path) -> dict[str, Any]:
    output = {"output": job.output} if job.output is not None else {}
    if job.audio is not None:
        return {"audio": os.path.relpath(job.audio, folder), **output}
    assert job.tts is not None
    # the speaker spelled out: `defaults:` are not carried over
    return {"tts": {"text": job.tts.text, "speaker": job.tts.speaker}, **output}


def _changed_limits(limits: Limits) -> dict[str, Any]:
    values, default = asdict(limits), asdict(Limits())
    return {f.name: values[f.name] for f in fields(Limits) if values[f.name] != default[f.name]}
