"""The run report: `report.json` and `report.csv` in the output folder, and the summary line.

Written from the state file, so it tells the truth about every job of the manifest whatever
happened during the run. Both files are replaced atomically.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pipeline.errors import map_disk_errors
from pipeline.jobstate import JobState
from pipeline.state import JobRecord

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

    @classmethod
    def from_record(cls, record: JobRecord) -> ReportRow:
        done = record.state is JobState.DONE
        return cls(
            id=record.id,
            state=record.state.value
            if record.state in (JobState.DONE, JobState.FAILED)
            else f"unfinished:{record.state.value}",
            video_id=record.video_id,
            output=record.output if done else None,
            bytes=record.bytes if done else None,
            credits=record.credits,
            credits_estimated=record.credits_estimated,
            attempts=record.attempts,
            ambiguous_submissions=record.ambiguous,
            error=record.error,
        )


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


def write_report(
    output_dir: Path,
    rows: Sequence[ReportRow],
    extra: dict[str, object],
    redact: Callable[[str], str] = str,
) -> Path:
    """Write report.json (rows plus `extra` run facts) and report.csv; return the json path.
    Every text passes `redact` (the API key must not reach a report); raises DiskError."""
    output_dir.mkdir(parents=True, exist_ok=True)
    document = {**extra, "summary": summary_counts(rows), "jobs": [asdict(r) for r in rows]}
    json_path = output_dir / "report.json"
    _atomic_write(json_path, redact(json.dumps(document, indent=2, ensure_ascii=False) + "\n"))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in asdict(row).items()})
    _atomic_write(output_dir / "report.csv", redact(buffer.getvalue()))
    return json_path


def _csv_value(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"  # as in report.json
    return value


def summary_counts(rows: Sequence[ReportRow]) -> dict[str, int]:
    counts = Counter("unfinished" if r.state.startswith("unfinished") else r.state for r in rows)
    return {
        "jobs": len(rows),
        "done": counts["done"],
        "failed": counts["failed"],
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
    if c["ambiguous_submissions"]:
        line += f"; {c['ambiguous_submissions']} ambiguous submissions (see report)"
    return line


def _atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text` whole, or leave it as it was (and no temporary behind)."""
    tmp = path.with_name(f".{path.name}.tmp")
    placed = False
    with map_disk_errors(f"cannot write {path}"):
        try:
            with open(tmp, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            placed = True
        finally:
            # only a temporary that exists: on a read-only file system even unlinking a
            # missing file fails (EROFS), which would hide the error that matters
            if not placed and tmp.exists():
                tmp.unlink()
