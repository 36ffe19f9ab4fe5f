"""The run report: `report.json` and `report.csv` in the output folder, and the summary line.

Written from the state file, so it tells the truth about every job of the manifest whatever
happened during the run, and at the end of every run that knows its output folder, even one
stopped before it started (preflight, a signal): the morning never reads last night's report
by mistake, since both files carry the run id. Both files are replaced atomically, and so is
report.html, the same document as a page to look at (`pipeline.htmlreport`).

Per job, besides the state: its inputs (paths relative to the manifest, with their sha256),
the media ids they were uploaded as, the trace ids of its submissions, the result's duration
and resolution (probed), the seconds spent in each state (from the event log, all runs
together) and what made its error (class, ErrCode, ErrMsg).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.errors import map_disk_errors
from pipeline.htmlreport import page_parts
from pipeline.jobstate import JobState
from pipeline.manifest import Job, Manifest
from pipeline.media import MediaProbeError, probe
from pipeline.state import Event, JobRecord, StateStore

_SENDING = "sending trace id "  # `pipeline.submit`'s event detail before each send
_FINAL = frozenset({JobState.DONE.value, JobState.FAILED.value})
SUSPECT = "suspect"  # a done job whose result failed its probe (kept, paid for, flagged)
PAGE_NAME = "report.html"

# What each exit code of a run means, in words: for the end line, the page, the notification.
MEANINGS = {
    0: "every job done",
    1: "some jobs failed, the rest done",
    2: "bad manifest or usage, nothing sent",
    3: "state file locked or unreadable",
    4: "account problem",
    74: "a file could not be written",
    75: "unfinished: run the same command again",
}

COLUMNS = (
    "id",
    "state",
    "video_id",
    "output",
    "bytes",
    "credits",
    "credits_estimated",
    "attempts",
    "ambiguous_submissions",
    "error",
    # added for nightly runs: after the columns above, which scripts may read by position
    "run_id",
    "error_class",
    "err_code",
    "err_msg",
    "inputs",
    "media_ids",
    "trace_ids",
    "duration",
    "resolution",
    "stage_seconds",
    "key_fp",  # several keys: the fingerprint of the key the job was last sent with
    "language",
    # a long job's segments (pipeline.longform): `1:0-24.3:done:<video id> 2:...`
    "segments",
)


@dataclass(frozen=True)
class ReportRow:
    id: str
    state: str
    video_id: int | None
    output: str | None
    bytes: int | None
    credits: int
    credits_estimated: bool  # the reply reported no credits: the price model's figure
    attempts: int
    ambiguous_submissions: int  # sends whose reply never came: check these for duplicates
    error: str | None
    run_id: str | None = None
    error_class: str | None = None  # the error tree's class (JobError, TransportError, ...)
    err_code: int | None = None  # the API's ErrCode, when a reply gave one
    err_msg: str | None = None
    # [{"field": "video", "path": ..., "sha256": ...}, {"field": "tts", "speaker", "text"}, ...]
    inputs: list[dict[str, object]] = field(default_factory=list)
    media_ids: dict[str, int] = field(default_factory=dict)  # input field -> media id
    trace_ids: list[str] = field(default_factory=list)  # of its submissions, oldest first
    duration: float | None = None  # seconds of the result, probed
    resolution: str | None = None  # "WIDTHxHEIGHT" of the result, probed
    stage_seconds: dict[str, float] = field(default_factory=dict)  # state -> seconds in it
    key_fp: str | None = None  # fingerprint of the key it was last sent with (never the key)
    language: str | None = None  # the key under `dubs` of a fan-out job
    # a long job's segments, in order: index, start, end (s), video_id, credits, state, error
    segments: list[dict[str, object]] | None = None

    @classmethod
    def from_record(cls, record: JobRecord) -> ReportRow:
        done = record.state is JobState.DONE
        if done and record.suspect:
            state = SUSPECT
        elif record.state in (JobState.DONE, JobState.FAILED):
            state = record.state.value
        else:
            state = f"unfinished:{record.state.value}"
        return cls(
            id=record.id,
            state=state,
            video_id=record.video_id,
            output=record.output if done else None,
            bytes=record.bytes if done else None,
            credits=record.credits,
            credits_estimated=record.credits_estimated,
            attempts=record.attempts,
            ambiguous_submissions=record.ambiguous,
            error=record.error,
            error_class=record.error_class,
            err_code=record.err_code,
            err_msg=record.err_msg,
            key_fp=record.key_fp,
        )


_ROW_FIELDS = tuple(f.name for f in fields(ReportRow))


def build_rows(records: Sequence[JobRecord], stopped_by: str | None = None) -> list[ReportRow]:
    """One row a job. `stopped_by` (why the run ended early) becomes the error of unfinished
    jobs that have none of their own, so report.csv alone tells the morning why."""
    rows = [ReportRow.from_record(r) for r in records]
    if stopped_by:
        rows = [
            replace(r, error=f"not finished: {stopped_by}")
            if r.state.startswith("unfinished") and not r.error
            else r
            for r in rows
        ]
    return rows


def credits_total(rows: Sequence[ReportRow], store: StateStore | None) -> int:
    """What the jobs of `rows` have cost over all runs: their records' credits, and those of
    the records set aside from them (archived `<id>@<video id>`, a long job's `<id>~<n>@...`:
    after `--redo` or changed inputs), which were paid all the same."""
    total = sum(row.credits for row in rows)
    if store is None:
        return total
    ids = {row.id for row in rows}
    return total + sum(
        record.credits
        for record in store.jobs(archived=True)
        if record.archived and re.split(r"[~@]", record.id, maxsplit=1)[0] in ids
    )


def new_run_id(started: float) -> str:
    """A run's id: its UTC start time, readable and sortable, and 6 random hex digits, e.g.
    `20260114T023000Z-3f9a1c`."""
    stamp = datetime.fromtimestamp(started, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def iso_time(timestamp: float) -> str:
    """ISO 8601 in UTC, with its offset: `2026-01-14T02:30:00+00:00`."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def run_facts(
    run_id: str, manifest: Path, output_dir: Path, started: float, finished: float
) -> dict[str, object]:
    """The first fields of report.json: which run, of what, when. `manifest_dir` (absolute)
    lets the page link the sources from any working folder."""
    return {
        "run_id": run_id,
        "version": __version__,
        "manifest": str(manifest),
        "manifest_dir": str(manifest.resolve().parent),
        "output_dir": str(output_dir),
        "started_at": iso_time(started),
        "finished_at": iso_time(finished),
    }


def job_rows(
    manifest: Manifest,
    store: StateStore | None,
    *,
    run_id: str,
    now: float,
    hashes: Mapping[Path, str] | None = None,
    media_scope: str | None = None,
    key_scopes: Mapping[str, str] | None = None,
    stopped_by: str | None = None,
    problems: Sequence[str] = (),
    placeholder: str = "unfinished:pending",
    invalid: frozenset[str] = frozenset(),
) -> list[ReportRow]:
    """One full row a job of `manifest`, from `store` (None: no state file yet).

    `hashes` are the checked inputs' sha256 (None when preflight did not finish); `media_scope`
    names the account the media ids belong to (`key_scopes`: per key fingerprint, for a job
    sent with one of several keys). `problems` (preflight's one-line problems) become
    the error of the job each names; `stopped_by` that of unfinished jobs without one; a job
    without a record shows the `placeholder` state. Jobs named in `invalid` (not run under
    `--keep-going`) show as failed, whatever their record says."""
    base = manifest.path.resolve().parent
    rows = []
    # read once for every job: thousands of jobs, four queries each, were seconds
    records = {r.id: r for r in store.jobs()} if store is not None else {}
    histories = store.histories() if store is not None else {}
    media = store.media_ids() if store is not None else {}
    relative: dict[Path, str] = {}
    for job in manifest.jobs:
        record = records.get(job.id)
        if record is not None:
            row = ReportRow.from_record(record)
        else:
            row = ReportRow(job.id, placeholder, None, None, None, 0, False, 0, 0, None)
        # every change at once: a `replace` a field was a tenth of a 10,000-job report
        inputs = _inputs(job, base, hashes or {}, relative)
        changes: dict[str, Any] = {"run_id": run_id, "inputs": inputs}
        own = [p for p in problems if p.startswith(f"job '{job.id}'")]
        if own:
            changes.update(error="; ".join(own), error_class="ManifestError")
            if job.id in invalid:
                changes["state"] = JobState.FAILED.value
        elif stopped_by and row.state.startswith("unfinished") and not row.error:
            changes["error"] = f"not finished: {stopped_by}"
        if job.dub is not None:
            changes["language"] = job.dub.lang
        scope = (key_scopes or {}).get(record.key_fp or "", media_scope) if record else media_scope
        if store is not None and hashes is not None and scope is not None:
            changes["media_ids"] = _media_ids(job, media, hashes, scope)
        if record is not None:
            history = histories.get(job.id, [])
            changes["trace_ids"] = _trace_ids(history)
            changes["stage_seconds"] = _stage_seconds(history, now)
        state = changes.get("state", row.state)
        if record is not None and state in (JobState.DONE.value, SUSPECT) and row.output:
            changes["duration"], changes["resolution"] = _result_facts(record, Path(row.output))
        rows.append(replace(row, **changes))
    return rows


def _inputs(
    job: Job, base: Path, hashes: Mapping[Path, str], relative: dict[Path, str] | None = None
) -> list[dict[str, object]]:
    """The video source, then the voice: files with their sha256 (None: not checked).
    `relative`: paths relative to `base` already worked out (thousands of jobs share files)."""
    relative = {} if relative is None else relative

    def file(name: str, path: Path) -> dict[str, object]:
        if path not in relative:
            relative[path] = os.path.relpath(path, base)
        return {"field": name, "path": relative[path], "sha256": hashes.get(path)}

    inputs: list[dict[str, object]] = []
    if job.video is not None:
        inputs.append(file("video", job.video))
    if job.video_id is not None:
        inputs.append({"field": "video_id", "video_id": job.video_id})
    if job.audio is not None:
        inputs.append(file("audio", job.audio))
    if job.tts is not None:
        inputs.append({"field": "tts", "speaker": job.tts.speaker, "text": job.tts.text})
    return inputs


def _media_ids(
    job: Job, media: Mapping[tuple[str, str], int], hashes: Mapping[Path, str], scope: str
) -> dict[str, int]:
    ids = {}
    for name, path in (("video", job.video), ("audio", job.audio)):
        if path is not None and path in hashes:
            media_id = media.get((hashes[path], scope))
            if media_id is not None:
                ids[name] = media_id
    return ids


def _trace_ids(history: Sequence[Event]) -> list[str]:
    """Every trace id the job's submissions were sent with (`pipeline.submit` logs each send
    as "sending trace id ID" before it leaves), oldest first, each once."""
    found: dict[str, None] = {}
    for event in history:
        if event.detail.startswith(_SENDING):
            found.setdefault(event.detail[len(_SENDING) :].split()[0], None)
    return list(found)


def _stage_seconds(history: Sequence[Event], now: float) -> dict[str, float]:
    """Seconds spent in each state that is not final, over the job's whole history: from the
    event that entered it to the next one (the last, still open, until `now`)."""
    seconds: dict[str, float] = {}
    for event, after in zip(history, [*history[1:], None], strict=True):
        if event.to_state in _FINAL:
            continue
        until = after.at if after is not None else now
        seconds[event.to_state] = seconds.get(event.to_state, 0.0) + max(0.0, until - event.at)
    return {state: round(value, 1) for state, value in seconds.items()}


def _result_facts(record: JobRecord, output: Path) -> tuple[float | None, str | None]:
    """Duration and resolution of a result: as its download read them (state 0015) while the
    file still has the length it was downloaded with, else probed now."""
    if record.result_seconds is not None and record.bytes is not None:
        try:
            unchanged = output.stat().st_size == record.bytes
        except OSError:
            unchanged = False
        if unchanged:
            return record.result_seconds, record.result_resolution
    return _probed(output)


def _probed(output: Path) -> tuple[float | None, str | None]:
    """Duration and resolution of a result as FFmpeg reads it, or None when it cannot."""
    try:
        info = probe(output)
    except MediaProbeError:
        return None, None
    resolution = f"{info.width}x{info.height}" if info.width and info.height else None
    return round(info.duration, 3), resolution


def write_report(
    output_dir: Path,
    rows: Sequence[ReportRow],
    extra: dict[str, object],
    redact: Callable[[str], str] = str,
) -> Path:
    """Write report.json (rows plus `extra` run facts), report.csv and report.html; return the
    json path. Every text passes `redact` (the API key must not reach a report); raises
    DiskError."""
    output_dir.mkdir(parents=True, exist_ok=True)
    jobs = [_as_dict(r) for r in rows]
    document = {**extra, "summary": summary_counts(rows), "jobs": jobs}
    json_path = output_dir / "report.json"
    # each file a part at a time, each part redacted: a part is whole lines (or a whole
    # card), so no text that could hold a key spans two of them
    atomic_write_parts(json_path, map(redact, _json_parts(document)))
    atomic_write_parts(output_dir / "report.csv", map(redact, _csv_parts(jobs)))
    code = extra.get("exit_code")
    meaning = MEANINGS.get(code) if isinstance(code, int) else None
    page = page_parts(document, output_dir, meaning)
    atomic_write_parts(output_dir / PAGE_NAME, map(redact, page))
    return json_path


def _csv_parts(jobs: Sequence[Mapping[str, object]], rows: int = 500) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for index, job in enumerate(jobs, 1):
        writer.writerow([_csv_value(name, job.get(name)) for name in COLUMNS])
        if index % rows == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _json_parts(document: Mapping[str, object]) -> Iterator[str]:
    """report.json: the run's facts indented, then `jobs` (the last key) one job a line.
    Indenting goes through the json module's Python encoder, its C one only without; for
    10,000 jobs that was seconds, and a line per job reads (and greps) as well."""
    facts = {k: v for k, v in document.items() if k != "jobs"}
    jobs = document.get("jobs")
    if not isinstance(jobs, list) or not facts:
        yield json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        return
    head = json.dumps(facts, indent=2, ensure_ascii=False)
    yield f'{head[:-2]},\n  "jobs": ' + ("[\n" if jobs else "[]")
    last = len(jobs) - 1
    for index, job in enumerate(jobs):
        yield f"    {json.dumps(job, ensure_ascii=False)}{',' if index < last else ''}\n"
    yield ("  ]\n}\n" if jobs else "\n}\n")


def _as_dict(row: ReportRow) -> dict[str, object]:
    """`dataclasses.asdict` without its deep copy (a row's lists and dicts are only read)."""
    return {name: getattr(row, name) for name in _ROW_FIELDS}


def _csv_value(name: str, value: object) -> object:
    """A spreadsheet-friendly cell: lists as `a b`, mappings as `k=v k=v`, inputs as
    `video=media/intro.mp4@<sha256>`; report.json keeps the structure."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"  # as in report.json
    if name == "inputs" and isinstance(value, list):
        return " ".join(_input_cell(item) for item in value)
    if name == "segments" and isinstance(value, list):
        return " ".join(
            f"{s['index']}:{s['start']}-{s['end']}:{s['state']}:{s['video_id'] or ''}"
            for s in value
        )
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return value


def _input_cell(item: Mapping[str, object]) -> str:
    if "path" in item:
        digest = item.get("sha256")
        return f"{item['field']}={item['path']}" + (f"@{digest}" if digest else "")
    if "video_id" in item:
        return f"video_id={item['video_id']}"
    return f"tts={item.get('speaker')}:{item.get('text')!r}"


def summary_counts(rows: Sequence[ReportRow]) -> dict[str, int]:
    counts = Counter("unfinished" if r.state.startswith("unfinished") else r.state for r in rows)
    return {
        "jobs": len(rows),
        "done": counts["done"],
        "failed": counts["failed"],
        "suspect": counts[SUSPECT],
        "unfinished": counts["unfinished"],
        "credits": sum(r.credits for r in rows),
        "credits_estimated_jobs": sum(r.credits_estimated for r in rows),
        "ambiguous_submissions": sum(r.ambiguous_submissions for r in rows),
    }


def summary_line(rows: Sequence[ReportRow]) -> str:
    c = summary_counts(rows)
    credits = f"{c['credits']} credits (all runs)"
    if c["credits_estimated_jobs"]:  # some replies reported no credits: the price model's figure
        credits = f"~{c['credits']} credits (estimated, all runs)"
    line = (
        f"{c['jobs']} jobs: {c['done']} done, {c['failed']} failed, {c['unfinished']} unfinished;"
        f" {credits}"
    )
    if c[SUSPECT]:
        line += f"; {c[SUSPECT]} suspect results (kept; see report)"
    if c["ambiguous_submissions"]:
        line += f"; {c['ambiguous_submissions']} ambiguous submissions (see report)"
    return line


def keys_line(keys: Sequence[Mapping[str, object]]) -> str:
    """What each of several keys did this run, for the summary line (`Account.tally`); empty
    for one key. A retired key says so: the run may still exit 0 when the others finished."""
    if len(keys) < 2:
        return ""
    parts = []
    for key in keys:
        part = f"{key['key_fp']} {key['generations']} generations {key['credits']} credits"
        if key.get("retired"):
            part += f" (retired: {key['retired']})"
        parts.append(part)
    retired = sum(1 for key in keys if key.get("retired"))
    head = f"; keys ({retired} of {len(keys)} retired): " if retired else "; keys: "
    return head + ", ".join(parts)


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text` whole, or leave it as it was (and no temporary behind)."""
    atomic_write_parts(path, [text])


def atomic_write_parts(path: Path, parts: Iterable[str]) -> None:
    """`atomic_write` of the text the `parts` make, written one after the other."""
    tmp = path.with_name(f".{path.name}.tmp")
    placed = False
    with map_disk_errors(f"cannot write {path}"):
        try:
            with open(tmp, "w", encoding="utf-8", newline="") as handle:
                for part in parts:
                    handle.write(part)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            placed = True
        finally:
            # only a temporary that exists: on a read-only file system even unlinking a
            # missing file fails (EROFS), which would hide the error that matters
            if not placed and tmp.exists():
                tmp.unlink()
