"""How a take-over scales: every job of a big manifest renamed at once (paid records adopted).

    python benchmarks/bench_renames.py [--sizes 2000 8000]

Each size gets a fresh state file holding that many paid (generating) jobs with three events
each, written straight into SQLite so that set-up takes no time; then `reconcile` runs once with
a manifest where every job has a new id and the same inputs, and that call alone is timed. A
linear take-over costs about 4x for 4x the jobs; the ratio column says how far from that it is.
Absolute timings on a shared machine are noise: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Run as a script from a checkout, `pipeline` need not be installed; hence imports below it.
sys.path.insert(0, str(REPO))
# ruff: noqa: E402

from pipeline.manifest import Job, Limits, Manifest, Tts
from pipeline.plan import fingerprint
from pipeline.preflight import Checked
from pipeline.reconcile import reconcile
from pipeline.state import StateStore

VIDEO_ID = 391504857968062


def checked(prefix: str, count: int) -> Checked:
    jobs = tuple(
        Job(f"{prefix}-{i}", f"jobs[{i}]", video_id=VIDEO_ID, tts=Tts(f"line {i}", "1"))
        for i in range(count)
    )
    return Checked(Manifest(Path("manifest.yaml"), None, Limits(), jobs), {})


def seed(path: Path, count: int) -> None:
    StateStore.open(path).close()  # the schema, through the real migrations
    jobs = checked("old", count).manifest.jobs
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO jobs (id, fingerprint, state, attempts, video_id, credits, updated_at)"
            " VALUES (?, ?, 'generating', 1, ?, 4, 0)",
            [(job.id, fingerprint(job, {}), 1000 + i) for i, job in enumerate(jobs)],
        )
        conn.executemany(
            "INSERT INTO events (job_id, at, from_state, to_state, detail) VALUES (?, 0, ?, ?, '')",
            [
                (job.id, before, after)
                for job in jobs
                for before, after in (
                    (None, "pending"),
                    ("pending", "submitting"),
                    ("submitting", "generating"),
                )
            ],
        )
    conn.close()


def take_over_seconds(count: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.sqlite"
        seed(path, count)
        store = StateStore.open(path)
        try:
            started = time.perf_counter()
            left = reconcile(checked("new", count), store, Path(tmp))
            elapsed = time.perf_counter() - started
            assert len(left) == count
            assert all(r.id.startswith("new-") for r in store.jobs())
        finally:
            store.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    args = parser.parse_args()
    print(f"{'jobs':>6} {'seconds':>9} {'x first':>8} {'jobs ratio':>11}")
    first: tuple[int, float] | None = None
    for count in args.sizes:
        seconds = take_over_seconds(count)
        first = first or (count, seconds)
        print(f"{count:>6} {seconds:>9.2f} {seconds / first[1]:>8.1f} {count / first[0]:>11.1f}")


if __name__ == "__main__":
    main()
