"""SIGKILLs aimed at each window of a job's life, each followed by a normal re-run.

A window with a server-visible mark is hit from outside: the simulator's knobs widen it
(`generate_reply_seconds`, `transfer_seconds`) and the test watches the ledger, then SIGKILLs
`python -m pipeline run` inside it. A window no request marks is hit from inside: the run is
started through `tests/crashpoint.py`, which SIGKILLs the process itself at that point.

Every scenario returns a `WindowResult`; `ok` is the invariant: the first run died by SIGKILL
inside the window, the re-run exits 0 with every job done, no input was generated twice, every
mp4 is the bytes the simulator served, and no `.part` or staging file is left behind.
Shared by `tests/test_exactly_once.py` and `make reliability`.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.simulator import SimConfig, Simulator
from tests.harness import REPO, STATE_NAME, fast_sim, project, sim_in_thread, tts_manifest
from tests.killrun import TIME_SCALE, Pipeline, check_outputs, job_states

CRASHPOINT = REPO / "tests" / "crashpoint.py"
SERVER = "SIGKILL from outside, watching the simulator"
INSIDE = "SIGKILL from inside (tests/crashpoint.py)"
# Which checkout runs (subprocesses start in "/", so PYTHONPATH alone decides), and its
# --request-timeout (None: an older CLI without it); `main`
# points them at another checkout to see a window break there.
PIPELINE = Pipeline()
REQUEST_TIMEOUT: float | None = 1.0


@dataclass
class WindowResult:
    window: str
    approach: str
    killed: bool = False  # the first run ended by SIGKILL
    at_window: bool = False  # what the state file and the ledger showed at the kill
    seen: str = ""  # that, in words
    exit_code: int | None = None  # of the re-run
    jobs: int = 0
    generations: int = 0
    duplicates: dict[str, int] = field(default_factory=dict)
    done: int = 0
    bad_outputs: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    superseded: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.killed
            and self.at_window
            and self.exit_code == 0
            and self.done == self.jobs
            and self.generations == self.jobs
            and not self.duplicates
            and not self.bad_outputs
            and not self.leftovers
        )

    def line(self) -> str:
        return (
            f"{self.window:<34} killed={self.killed} at_window={self.at_window}"
            f" re-run exit {self.exit_code}, {self.done}/{self.jobs} done,"
            f" {self.generations} generations, duplicates {self.duplicates or 0},"
            f" bad mp4s {len(self.bad_outputs)}, leftovers {len(self.leftovers)},"
            f" superseded {self.superseded}, {self.seconds:.1f} s  [{self.seen}]"
        )


def env_for(sim: Simulator) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(PIPELINE.root),
        "PIXVERSE_API_KEY": "sim-key",
        "PIXVERSE_BASE_URL": sim.url,
    }


def run_args(manifest: Path, out: Path, concurrency: int = 2) -> list[str]:
    args = ["run", str(manifest), "--out", str(out), "--poll-interval", "0.05"]
    args += ["--concurrency", str(concurrency)]
    if REQUEST_TIMEOUT is not None:
        args += ["--request-timeout", str(REQUEST_TIMEOUT)]
    return args


def pipeline_cmd(*args: str) -> list[str]:
    return [PIPELINE.python, "-m", "pipeline", *args]


def crashpoint_cmd(point: str, nth: int, *args: str) -> list[str]:
    return [PIPELINE.python, str(CRASHPOINT), point, str(nth), "--", *args]


def _finish(result: WindowResult, sim: Simulator, manifest: Path, out: Path) -> None:
    """The re-run, as a user would type it, then the checks."""
    rerun = subprocess.run(
        pipeline_cmd(*run_args(manifest, out)),
        env=env_for(sim),
        cwd="/",
        capture_output=True,
        timeout=120,
        check=False,
    )
    result.exit_code = rerun.returncode
    sim.settle()
    outcome = check_outputs(sim, out)
    result.generations = outcome.generations
    result.duplicates = outcome.duplicates
    result.done = outcome.done
    result.bad_outputs = outcome.bad_outputs
    result.leftovers = outcome.leftovers
    result.superseded = outcome.superseded


def _killed_from_inside(proc: subprocess.CompletedProcess[bytes]) -> bool:
    return proc.returncode == -signal.SIGKILL


def _sim(**knobs: object) -> SimConfig:
    return fast_sim(generation_seconds=0.1 / TIME_SCALE, **knobs)


def _states(out: Path) -> dict[str, str]:
    return {job_id: state for job_id, state, _ in job_states(out / STATE_NAME)}


def _sent_at(out: Path) -> dict[str, float | None]:
    """trace id -> sent_at of every job that has a trace id."""
    conn = sqlite3.connect(f"file:{out / STATE_NAME}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT trace_id, sent_at FROM jobs").fetchall()
    finally:
        conn.close()
    return {str(t): s for t, s in rows if t is not None}


def _inside(
    window: str, workdir: Path, point: str, jobs: int, check: Callable[[Simulator, Path], str]
) -> WindowResult:
    """Run once through crashpoint (dies at `point`), check the window, re-run, check all."""
    result = WindowResult(window, INSIDE, jobs=jobs)
    started = time.monotonic()
    manifest = project(workdir, tts_manifest(jobs))
    out = workdir / "out"
    with sim_in_thread(_sim()) as sim:
        first = subprocess.run(
            crashpoint_cmd(point, 1, *run_args(manifest, out, concurrency=1)),
            env=env_for(sim),
            cwd="/",
            capture_output=True,
            timeout=120,
            check=False,
        )
        result.killed = _killed_from_inside(first)
        result.seen = check(sim, out)
        result.at_window = result.seen.startswith("yes")
        _finish(result, sim, manifest, out)
    result.seconds = time.monotonic() - started
    return result


def intent_saved_not_sent(workdir: Path) -> WindowResult:
    """(a) The trace id, `sent_at` and `resend_after` are committed; the request never left."""

    def check(sim: Simulator, out: Path) -> str:
        sent = [r for r in sim.ledger.requests if r.path.endswith("/generate")]
        submitting = [s for s in _states(out).values() if s == "submitting"]
        stamped = [t for t, at in _sent_at(out).items() if at is not None]
        yes = not sent and len(submitting) == 1 and len(stamped) == 1
        return f"{'yes' if yes else 'no'}: {len(sent)} generate requests, state {submitting}"

    return _inside("a. intent saved, request not sent", workdir, "before-send", 2, check)


def accepted_reply_not_saved(workdir: Path) -> WindowResult:
    """(b) The gateway accepted (and charged) the generate; the reply arrived, unsaved."""

    def check(sim: Simulator, out: Path) -> str:
        traces = {g.trace_id for g in sim.ledger.generations.values()}
        states = _states(out)
        sent = _sent_at(out)
        yes = len(traces) == 1 and traces <= set(sent) and "submitting" in states.values()
        return (
            f"{'yes' if yes else 'no'}: {len(traces)} generations, states {sorted(states.values())}"
        )

    return _inside("b. accepted, reply not saved", workdir, "after-reply", 2, check)


def reply_pending(workdir: Path) -> WindowResult:
    """(b') The generation started (charged, holding its slot); its reply, held back 0.6 s by
    the gateway, has not come: the window of issue 5. Hit from outside."""
    result = WindowResult("b'. accepted, reply still pending", SERVER, jobs=2)
    started = time.monotonic()
    manifest = project(workdir, tts_manifest(result.jobs))
    out = workdir / "out"
    with sim_in_thread(_sim(generate_reply_seconds=0.6 / TIME_SCALE)) as sim:

        def pending() -> bool:
            return any(
                r.path.endswith("/generate") and r.http_status is None for r in sim.ledger.requests
            ) and bool(sim.ledger.generations)

        _kill_when(result, sim, pipeline_cmd(*run_args(manifest, out)), pending)
        states = _states(out)
        yes = "submitting" in states.values() and bool(sim.ledger.generations)
        result.at_window = result.killed and yes
        result.seen = f"{'yes' if yes else 'no'}: states {sorted(states.values())}"
        _finish(result, sim, manifest, out)
    result.seconds = time.monotonic() - started
    return result


def mid_upload(workdir: Path) -> WindowResult:
    """(c) A job's media is on its way up (each transfer takes 0.4 s); nothing generated."""
    result = WindowResult("c. mid-upload", SERVER, jobs=2)
    started = time.monotonic()
    manifest = project(workdir, tts_manifest(result.jobs))
    out = workdir / "out"
    with sim_in_thread(_sim(transfer_seconds=0.4 / TIME_SCALE)) as sim:

        def uploading() -> bool:
            uploads = [r for r in sim.ledger.requests if r.path.endswith("/media/upload")]
            # the first two are the replay probe's, one after the other
            return len(uploads) >= 3 and uploads[2].http_status is None

        _kill_when(result, sim, pipeline_cmd(*run_args(manifest, out)), uploading)
        yes = not sim.ledger.generations and set(_states(out).values()) == {"pending"}
        result.at_window = result.killed and yes
        result.seen = f"{'yes' if yes else 'no'}: {len(sim.ledger.generations)} generations"
        sim.config.transfer_seconds = 0.0
        _finish(result, sim, manifest, out)
    result.seconds = time.monotonic() - started
    return result


def mid_download(workdir: Path) -> WindowResult:
    """(d) A result's download was asked for and is on its way (0.4 s per transfer)."""
    result = WindowResult("d. mid-download (requested)", SERVER, jobs=2)
    started = time.monotonic()
    manifest = project(workdir, tts_manifest(result.jobs))
    out = workdir / "out"
    with sim_in_thread(_sim()) as sim:

        def downloading() -> bool:
            if sim.ledger.generations:
                sim.config.transfer_seconds = 0.4 / TIME_SCALE  # uploads are done by now
            return any(
                r.path.startswith("/media/result/") and r.http_status is None
                for r in sim.ledger.requests
            )

        _kill_when(result, sim, pipeline_cmd(*run_args(manifest, out)), downloading)
        states = _states(out)
        yes = "downloading" in states.values() and not list(out.glob("*.mp4"))
        result.at_window = result.killed and yes
        result.seen = f"{'yes' if yes else 'no'}: states {sorted(states.values())}"
        sim.config.transfer_seconds = 0.0
        _finish(result, sim, manifest, out)
    result.seconds = time.monotonic() - started
    return result


def part_written(workdir: Path) -> WindowResult:
    """(d') The first chunk of a result is on disk in its `.part` file."""

    def check(sim: Simulator, out: Path) -> str:
        parts = list(out.glob(".*.part"))
        states = _states(out)
        yes = len(parts) == 1 and parts[0].stat().st_size > 0 and "downloading" in states.values()
        return f"{'yes' if yes else 'no'}: parts {[p.name for p in parts]}"

    return _inside("d'. mid-download (bytes written)", workdir, "mid-download", 2, check)


def renamed_not_recorded(workdir: Path) -> WindowResult:
    """(e) A downloaded result was renamed to `<job>.mp4`; the job is not DONE yet."""

    def check(sim: Simulator, out: Path) -> str:
        states = _states(out)
        placed = [p.name for p in out.glob("*.mp4")]
        yes = len(placed) == 1 and states.get(placed[0][:-4]) == "downloading"
        return f"{'yes' if yes else 'no'}: files {placed}, states {sorted(states.values())}"

    return _inside("e. downloaded+renamed, not recorded", workdir, "after-rename", 2, check)


def take_over_moved(workdir: Path, placed: bool) -> WindowResult:
    """(e') Ids renamed in the manifest: reconcile moves the paid results along, each first to
    a staging name, then (once the id moves are committed) to its new name. Killed after the
    first move to a staging name, or after the first move to a new name (not yet recorded).
    The re-run must pay nothing and put every result at its new name."""
    where = "new name, not recorded" if placed else "staging, ids not moved"
    result = WindowResult(f"e'. take-over moved to {where}", INSIDE, jobs=2)
    nth = result.jobs + 1 if placed else 1
    started = time.monotonic()
    manifest = project(workdir, tts_manifest(result.jobs, prefix="old"))
    out = workdir / "out"
    with sim_in_thread(_sim()) as sim:
        first = subprocess.run(
            pipeline_cmd(*run_args(manifest, out)),
            env=env_for(sim),
            cwd="/",
            capture_output=True,
            check=False,
        )
        paid = len(sim.ledger.generations)
        manifest.write_text(tts_manifest(result.jobs, prefix="new"), encoding="utf-8")
        crashed = subprocess.run(
            crashpoint_cmd("take-over", nth, *run_args(manifest, out)),
            env=env_for(sim),
            cwd="/",
            capture_output=True,
            check=False,
        )
        result.killed = first.returncode == 0 and _killed_from_inside(crashed)
        staged = [p.name for p in out.glob(".*.adopt.mp4")]
        moved = sorted(p.name for p in out.glob("new-*.mp4"))
        yes = paid == result.jobs and (len(moved) == 1 if placed else len(staged) == 1)
        result.at_window = yes
        result.seen = f"{'yes' if yes else 'no'}: staged {staged}, placed {moved}"
        _finish(result, sim, manifest, out)
    result.seconds = time.monotonic() - started
    return result


def _kill_when(
    result: WindowResult, sim: Simulator, cmd: list[str], ready: Callable[[], bool]
) -> None:
    proc = subprocess.Popen(
        cmd,
        env=env_for(sim),
        cwd="/",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is None:
            proc.kill()  # SIGKILL
            result.killed = True
    finally:
        proc.kill()
        proc.wait(30)


WINDOWS: dict[str, Callable[[Path], WindowResult]] = {
    "intent-saved": intent_saved_not_sent,
    "reply-not-saved": accepted_reply_not_saved,
    "reply-pending": reply_pending,
    "mid-upload": mid_upload,
    "mid-download": mid_download,
    "part-written": part_written,
    "renamed": renamed_not_recorded,
    "take-over-staged": lambda workdir: take_over_moved(workdir, placed=False),
    "take-over-placed": lambda workdir: take_over_moved(workdir, placed=True),
}


def main(argv: list[str] | None = None) -> int:
    """python -m tests.windows [NAME ...] [--python P --root DIR --no-request-timeout]"""
    import argparse
    import logging
    import tempfile

    global PIPELINE, REQUEST_TIMEOUT
    parser = argparse.ArgumentParser(description="SIGKILLs aimed at each window")
    parser.add_argument("names", nargs="*", choices=[*WINDOWS, []])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--root", type=Path, default=REPO)
    parser.add_argument("--no-request-timeout", action="store_true")
    args = parser.parse_args(argv)
    PIPELINE = Pipeline(args.python, args.root.resolve())
    REQUEST_TIMEOUT = None if args.no_request_timeout else REQUEST_TIMEOUT
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)  # writes to killed clients
    results = []
    for name in args.names or WINDOWS:
        with tempfile.TemporaryDirectory(prefix="window-") as tmp:
            results.append(WINDOWS[name](Path(tmp)))
        print(("ok  " if results[-1].ok else "FAIL") + " " + results[-1].line(), flush=True)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
