"""Kill-and-resume, as a user would do it: `python -m pipeline run` in a subprocess against the
simulator (in a thread of this process), SIGKILLed at seeded random moments and re-run each
time, then run once more to the end. Shared by the fast test (`tests/test_exactly_once.py`) and
`make reliability` (`tests/reliability.py`).

The simulator's `generate_reply_seconds` keeps each generate reply back after the generation
started (and was charged): a run killed in that gap leaves a trace id the gateway has not
cached yet, the window issue 5 found paying twice.

    python -m tests.killrun --seed 3 [--jobs 13 --kills 8] [--python P --root DIR]

`--python`/`--root` run another checkout's pipeline (e.g. an older commit, to see the test
fail there) against this checkout's simulator; `--no-request-timeout` for a CLI without it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __name__ == "__main__":  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.simulator import Simulator
from tests.harness import REPO, STATE_NAME, fast_sim, project, sim_in_thread, tts_manifest

TIME_SCALE = 0.005  # fast_sim's: real seconds per simulated second


@dataclass(frozen=True)
class KillPlan:
    """One kill-and-resume trial. Durations are real seconds."""

    seed: int
    jobs: int = 13
    kills: int = 8
    concurrency: int = 3  # --concurrency, and the account's limit
    reply_seconds: float = 0.6  # generate reply held back after the generation started
    generation_seconds: float = 1.5
    request_timeout: float | None = 1.0  # None: leave the CLI's default (an older CLI)
    transfer_seconds: float = 0.0  # every upload and download takes this long
    replays: bool = True  # False: a gateway without the reply cache (unanswered sends park)
    max_delay: float = 0.6  # a kill lands 0..max_delay s after the run's first request
    final_timeout: float = 120.0


@dataclass
class KillFigures:
    seed: int
    jobs: int
    kills: int = 0
    kills_in_reply_window: int = 0  # kills while a generate request awaited its reply
    runs: int = 0
    exit_codes: list[int] = field(default_factory=list)  # of runs that ended by themselves
    generations: int = 0
    duplicates: dict[str, int] = field(default_factory=dict)  # TTS script -> generations, > 1
    jobs_done: int = 0
    jobs_unconfirmed: int = 0  # parked (a gateway that does not replay)
    replays: bool = True
    bad_outputs: list[str] = field(default_factory=list)  # jobs whose mp4 is not served bytes
    slot_refusals: int = 0  # 500044 replies
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Paid once, nothing lost: every job done, or (without replay) parked unconfirmed."""
        if not self.exit_codes or self.duplicates or self.bad_outputs:
            return False
        if self.replays:
            return self.jobs_done == self.jobs and self.exit_codes[-1] == 0
        finished = self.jobs_done + self.jobs_unconfirmed == self.jobs
        return finished and self.exit_codes[-1] == (0 if self.jobs_unconfirmed == 0 else 75)

    def line(self) -> str:
        return (
            f"seed {self.seed}: {self.kills} SIGKILLs ({self.kills_in_reply_window} while a"
            f" generate reply was pending), {self.runs} runs, {self.generations} generations"
            f" for {self.jobs} jobs, duplicates {self.duplicates or 0},"
            f" {self.jobs_done} done, {self.jobs_unconfirmed} unconfirmed,"
            f" {len(self.bad_outputs)} bad mp4s,"
            f" {self.slot_refusals} x 500044, last exit {self.exit_codes[-1:] or '-'},"
            f" {self.seconds:.1f} s"
        )


@dataclass(frozen=True)
class Pipeline:
    """Which checkout's `python -m pipeline` to run."""

    python: str = sys.executable
    root: Path = REPO


def run_command(
    plan: KillPlan, manifest: Path, out: Path, sim: Simulator, pipeline: Pipeline
) -> tuple[list[str], dict[str, str]]:
    args = [pipeline.python, "-m", "pipeline", "run", str(manifest), "--out", str(out)]
    args += ["--poll-interval", "0.05", "--concurrency", str(plan.concurrency)]
    if plan.request_timeout is not None:
        args += ["--request-timeout", str(plan.request_timeout)]
    env = {
        **os.environ,
        "PYTHONPATH": str(pipeline.root),
        "PIXVERSE_API_KEY": "sim-key",
        "PIXVERSE_BASE_URL": sim.url,
    }
    return args, env


def kill_and_resume(
    workdir: Path,
    plan: KillPlan,
    pipeline: Pipeline = Pipeline(),
) -> KillFigures:
    """Run the trial in `workdir` (a fresh folder); return its figures. Never raises on a
    broken invariant: the caller asserts on the figures (`KillFigures.ok`)."""
    rng = random.Random(f"killrun:{plan.seed}")
    figures = KillFigures(plan.seed, plan.jobs, replays=plan.replays)
    manifest = project(workdir, tts_manifest(plan.jobs))
    out = workdir / "out"
    logs = workdir / "logs"
    logs.mkdir()
    config = fast_sim(
        concurrency_limit=plan.concurrency,
        generation_seconds=plan.generation_seconds / TIME_SCALE,
        generate_reply_seconds=plan.reply_seconds / TIME_SCALE,
        transfer_seconds=plan.transfer_seconds / TIME_SCALE,
        seed=plan.seed,
        reply_cache=plan.replays,
    )
    started = time.monotonic()
    with sim_in_thread(config) as sim:
        args, env = run_command(plan, manifest, out, sim, pipeline)
        ledger = sim.ledger
        # a few runs may end by themselves between kills; bounded, so a trial always stops
        while figures.kills < plan.kills and figures.runs < plan.kills * 3:
            figures.runs += 1
            seen = len(ledger.requests)
            with (logs / f"run-{figures.runs}.log").open("wb") as log:
                proc = subprocess.Popen(args, env=env, stdout=log, stderr=log, cwd=workdir)
                while len(ledger.requests) == seen and proc.poll() is None:
                    time.sleep(0.005)
                try:
                    proc.wait(rng.uniform(0.0, plan.max_delay))
                except subprocess.TimeoutExpired:
                    pending = [
                        r
                        for r in ledger.requests
                        if r.path.endswith("/lip_sync/generate") and r.http_status is None
                    ]
                    proc.kill()  # SIGKILL: no cleanup of any kind
                    proc.wait(30)
                    figures.kills += 1
                    figures.kills_in_reply_window += bool(pending)
                    continue
            figures.exit_codes.append(proc.returncode)
            finished = proc.returncode == 0 or (not plan.replays and proc.returncode == 75)
            if finished:  # nothing left to kill: all done, or the rest parked
                break
        else:
            finished = False
        if not finished:
            figures.runs += 1
            with (logs / "final.log").open("wb") as log:
                final = subprocess.run(
                    args, env=env, stdout=log, stderr=log, cwd=workdir, timeout=plan.final_timeout
                )
            figures.exit_codes.append(final.returncode)
        sim.settle()
        _count(figures, sim, out)
    figures.seconds = time.monotonic() - started
    return figures


def _count(figures: KillFigures, sim: Simulator, out: Path) -> None:
    outcome = check_outputs(sim, out)
    figures.generations = outcome.generations
    figures.slot_refusals = outcome.slot_refusals
    figures.duplicates = outcome.duplicates
    figures.jobs_done = outcome.done
    figures.jobs_unconfirmed = sum(1 for s in outcome.states.values() if s == "unconfirmed")
    figures.bad_outputs = outcome.bad_outputs


@dataclass
class Outcome:
    """What a state file, an output folder and the simulator's ledger say after a trial."""

    generations: int
    duplicates: dict[str, int]  # TTS script -> generations, where more than one
    states: dict[str, str]  # job id -> state
    done: int
    bad_outputs: list[str]  # done jobs whose mp4 is missing or not the bytes served
    leftovers: list[str]  # .part and staging files left in the output folder
    superseded: int  # files moved aside into superseded/
    slot_refusals: int  # 500044 replies


def check_outputs(sim: Simulator, out: Path) -> Outcome:
    ledger = sim.ledger
    per_script: dict[str, int] = {}
    for generation in ledger.generations.values():
        script = str(generation.body.get("lip_sync_tts_content"))
        per_script[script] = per_script.get(script, 0) + 1
    states: dict[str, str] = {}
    bad: list[str] = []
    for job_id, state, video_id in job_states(out / STATE_NAME):
        if "@" in job_id:
            continue  # archived
        states[job_id] = state
        if state != "done":
            continue
        mp4 = out / f"{job_id}.mp4"
        served = ledger.served_downloads.get(video_id or 0)
        if not mp4.is_file() or hashlib.sha256(mp4.read_bytes()).hexdigest() != served:
            bad.append(job_id)
    names = [p.name for p in out.iterdir()] if out.is_dir() else []
    superseded = out / "superseded"
    return Outcome(
        generations=len(ledger.generations),
        duplicates={script: n for script, n in per_script.items() if n > 1},
        states=states,
        done=sum(1 for s in states.values() if s == "done"),
        bad_outputs=bad,
        leftovers=sorted(n for n in names if n.endswith((".part", ".adopt.mp4"))),
        superseded=len(list(superseded.iterdir())) if superseded.is_dir() else 0,
        slot_refusals=sum(1 for r in ledger.requests if r.err_code == 500044),
    )


def job_states(state: Path) -> list[tuple[str, str, int | None]]:
    """(id, state, video_id) of every job in a state file, read-only."""
    if not state.exists():
        return []
    conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT id, state, video_id FROM jobs ORDER BY id").fetchall()
    finally:
        conn.close()
    return [(str(i), str(s), v) for i, s, v in rows]


def job_events(state: Path, job_id: str) -> list[tuple[str | None, str, str]]:
    """A job's event log (from, to, detail): what a failure report shows."""
    conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT from_state, to_state, detail FROM events WHERE job_id = ? ORDER BY seq",
            (job_id,),
        ).fetchall()
    finally:
        conn.close()
    return [tuple(r) for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, action="append", required=True)
    parser.add_argument("--jobs", type=int, default=KillPlan.jobs)
    parser.add_argument("--kills", type=int, default=KillPlan.kills)
    parser.add_argument("--reply-seconds", type=float, default=KillPlan.reply_seconds)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--root", type=Path, default=REPO)
    parser.add_argument("--no-request-timeout", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    pipeline = Pipeline(args.python, args.root.resolve())
    results = []
    for seed in args.seed:
        plan = KillPlan(
            seed=seed,
            jobs=args.jobs,
            kills=args.kills,
            reply_seconds=args.reply_seconds,
            request_timeout=None if args.no_request_timeout else KillPlan.request_timeout,
        )
        with tempfile.TemporaryDirectory(prefix="killrun-") as tmp:
            figures = kill_and_resume(Path(tmp), plan, pipeline)
        results.append(figures)
        print(json.dumps(asdict(figures)) if args.json else figures.line(), flush=True)
    return 0 if all(f.ok for f in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
