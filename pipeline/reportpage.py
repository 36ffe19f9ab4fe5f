"""`pixverse-batch report OUT`: report.html again, at any time, offline, from the state file.

The job cards come from the state file as it is now (read-only: a run in progress keeps its
lock and its pace), through the manifest the last run named in report.json when it still
loads (or `--manifest`), so they carry the same facts as the run's own page. Without a
manifest the records alone are shown, with the inputs the last report gave each job. The
top of the page (run id, times, exit code, this run's spend) stays that of the last run's
report.json. Only report.html is written (atomically); report.json and report.csv stay the
run's record. No request is sent and no key is needed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from pipeline.errors import ManifestError
from pipeline.htmlreport import build_page
from pipeline.longform.run import long_rows, parent_of, status_rows
from pipeline.manifest import Manifest, load_manifest
from pipeline.report import (
    MEANINGS,
    PAGE_NAME,
    ReportRow,
    atomic_write,
    build_rows,
    credits_total,
    job_rows,
    summary_counts,
)
from pipeline.session import STATE_NAME
from pipeline.state import StateStore

log = logging.getLogger("pipeline.reportpage")


def rebuild_page(
    out: Path,
    *,
    state: Path | None = None,
    manifest: Path | None = None,
    redact: Callable[[str], str] = str,
    now: Callable[[], float] = time.time,
) -> Path:
    """Write `out/report.html` from the state file (default `out/.pixverse-batch.sqlite`) and
    return its path. Raises ManifestError (no such folder, nothing to report, a bad
    `--manifest`), StateError (unreadable state file), DiskError (the page not written)."""
    if not out.is_dir():
        raise ManifestError([f"{out}: no such output folder"])
    last = _last_report(out)
    state_path = state or out / STATE_NAME
    if state_path.exists():
        rows, total = _rows_from_state(state_path, _manifest(manifest, last), last, now())
        jobs: list[dict[str, Any]] = [asdict(row) for row in rows]
        summary: dict[str, Any] = dict(summary_counts(rows))
    elif last.get("jobs"):
        jobs, summary = list(last["jobs"]), dict(last.get("summary") or {})
        total = int(last.get("credits_total") or 0)
    else:
        raise ManifestError([f"{out}: nothing to report: no state file and no report.json"])
    document = {
        **{k: v for k, v in last.items() if k not in ("jobs", "summary")},
        "credits_total": total,
        "summary": summary,
        "jobs": jobs,
    }
    code = document.get("exit_code")
    meaning = MEANINGS.get(code) if isinstance(code, int) else None
    path = out / PAGE_NAME
    atomic_write(path, redact(build_page(document, out, meaning)))
    return path


def _last_report(out: Path) -> dict[str, Any]:
    """The last run's report.json, or nothing when there is none or it does not parse."""
    try:
        document = json.loads((out / "report.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s/report.json not read (%s): the page shows no run facts", out, exc)
        return {}
    return document if isinstance(document, dict) else {}


def _manifest(given: Path | None, last: Mapping[str, Any]) -> Manifest | None:
    """`--manifest` (its problems are the user's to fix: raised), else the last report's
    (gone or changed since: the records alone are shown)."""
    if given is not None:
        return load_manifest(given)
    name, folder = last.get("manifest"), last.get("manifest_dir")
    if not name:
        return None
    path = Path(str(folder)) / Path(str(name)).name if folder else Path(str(name))
    try:
        return load_manifest(path)
    except ManifestError as exc:
        log.warning("manifest %s not loaded (%s): the page shows the records alone", path, exc)
        return None


def _rows_from_state(
    state_path: Path, manifest: Manifest | None, last: Mapping[str, Any], now: float
) -> tuple[list[ReportRow], int]:
    """The job rows, and what they cost over all runs (`report.credits_total`)."""
    store = StateStore.read_only(state_path)
    try:
        rows = _rows(store, manifest, last, now)
        return rows, credits_total(rows, store)
    finally:
        store.close()


def _rows(
    store: StateStore, manifest: Manifest | None, last: Mapping[str, Any], now: float
) -> list[ReportRow]:
    run_id = str(last.get("run_id") or "") or None
    if manifest is not None:  # a long job's row derived from its segments, as the run's
        return long_rows(job_rows(manifest, store, run_id=run_id or "", now=now), store)
    earlier = {job.get("id"): job for job in last.get("jobs") or []}
    rows = []
    records = store.jobs()
    singles = build_rows([r for r in records if parent_of(r.id) is None])
    for row in singles + status_rows(records, store.long_jobs()):
        before = earlier.get(row.id) or {}
        rows.append(
            replace(row, inputs=list(before.get("inputs") or []), language=before.get("language"))
        )
    return rows
