"""How busy the runner keeps the account's generation slots, against a naive "waves" client.

    python benchmarks/bench_slots.py [--jobs 30] [--concurrency 5] [--repeat 3]

Both clients use the project's own PixverseClient against a fresh simulator over loopback, one
after the other in this process, and the table shows RATIOS (baseline wall / pipeline wall):
absolute timings on a shared machine are noise, so nothing here passes or fails.

The baseline is how simple scripts work: upload once, then for each wave of `concurrency` jobs
submit, poll and download each job, and start the next wave only when all of this wave are done,
so a slot sits idle while the wave's slowest job finishes. On 500044 it sleeps a fixed time and
retries; on status 8 it resubmits inside the wave.

Scenarios: equal generation times (waves lose little), times spread 0.5x-1.5x as real ones are
(`SimConfig.generation_jitter`: each wave waits for its slowest job), an account limit below
`--concurrency` (AIMD against fixed-sleep retries), and status-8 failures (a resubmitted job is
a job twice as long, and holds up its whole wave).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio

REPO = Path(__file__).resolve().parent.parent
# Run as a script from a checkout, `pipeline` need not be installed; hence imports below it.
sys.path.insert(0, str(REPO))
# ruff: noqa: E402

from pipeline.client import ClientConfig, PixverseClient, VideoStatus, new_trace_id
from pipeline.download import Link, download_result
from pipeline.errors import SlotLimitError
from pipeline.manifest import Job, load_manifest
from pipeline.plan import generate_body
from pipeline.preflight import Checked, preflight
from pipeline.retry import RetryPolicy
from pipeline.runner import RunOptions, run_batch
from pipeline.simulator import SimConfig, Simulator, serve
from pipeline.simulator.config import DEFAULT_API_KEY
from pipeline.state import StateStore

GENERATION_SECONDS = 20.0  # simulated; with TIME_SCALE a generation takes 0.1 real seconds
TIME_SCALE = 0.005
POLL_SECONDS = 0.02  # both clients poll this often
RETRY_SLEEP = 0.05  # the baseline's fixed sleep after a 500044
MAX_ATTEMPTS = 3  # generations per job, as RunOptions.max_attempts
TERMINAL = frozenset({1, 6, 7, 8})
FAST_RETRY = RetryPolicy(attempts=4, max_elapsed=10, initial_wait=0.005, max_wait=0.02)

Runner = Callable[[Checked, PixverseClient, Path, int], Awaitable[float]]


@dataclass(frozen=True)
class Scenario:
    name: str
    limit: int  # the simulated account's concurrency limit
    fail_probability: float = 0.0
    jitter: float = 0.0  # SimConfig.generation_jitter


@dataclass(frozen=True)
class Measure:
    wall: float
    utilisation: float  # generation busy time / (limit * wall)
    rejections: int  # 500044 replies the simulator sent


class _Trace:
    """A SubmissionTrace in memory: the baseline keeps no state file."""

    def __init__(self) -> None:
        self._trace_id = new_trace_id()

    def current(self) -> str:
        return self._trace_id

    def rotate(self) -> str:
        self._trace_id = new_trace_id()
        return self._trace_id

    def ambiguous(self) -> None:
        pass


async def run_waves(checked: Checked, client: PixverseClient, out: Path, concurrency: int) -> float:
    """The baseline; returns its wall seconds from the first upload to the last download."""
    await anyio.Path(out).mkdir(parents=True, exist_ok=True)
    jobs = list(checked.manifest.jobs)
    start = time.perf_counter()
    media_ids: dict[Path, int] = {}
    for path in dict.fromkeys(p for job in jobs for p in job.media_paths()):
        media_ids[path] = (await client.upload(path)).media_id
    for first in range(0, len(jobs), concurrency):
        async with anyio.create_task_group() as tg:
            for job in jobs[first : first + concurrency]:
                tg.start_soon(_waves_job, client, job, media_ids, out)
    return time.perf_counter() - start


async def _waves_job(
    client: PixverseClient, job: Job, media_ids: dict[Path, int], out: Path
) -> None:
    body = generate_body(job, media_ids)
    for _ in range(MAX_ATTEMPTS):
        while True:
            try:  # a new trace id each try: the reply cache would replay the 500044
                video_id = (await client.generate(body, _Trace())).video_id
                break
            except SlotLimitError:
                await anyio.sleep(RETRY_SLEEP)
        status = await _poll(client, video_id)
        if status.status == 1:
            link = Link(status.url, status.size)
            await download_result(client, video_id, out / f"{job.id}.mp4", link)
            return
        if status.status != 8:
            return


async def _poll(client: PixverseClient, video_id: int) -> VideoStatus:
    while True:
        await anyio.sleep(POLL_SECONDS)
        status = await client.status(video_id)
        if status.status in TERMINAL:
            return status


async def run_pipeline(
    checked: Checked, client: PixverseClient, out: Path, concurrency: int
) -> float:
    """The project's runner; returns the wall seconds of `run_batch`."""
    options = RunOptions(
        output_dir=out,
        concurrency=concurrency,
        poll_interval=POLL_SECONDS,
        max_attempts=MAX_ATTEMPTS,
    )
    store = StateStore.open(out / ".pixverse-batch.sqlite")
    try:
        start = time.perf_counter()
        outcome = await run_batch(checked, store, client, options)
        wall = time.perf_counter() - start
    finally:
        store.close()
    if outcome.problem is not None or outcome.interrupted:
        raise RuntimeError(f"the pipeline run stopped: {outcome.problem or 'interrupted'}")
    return wall


def measure(sim: Simulator, wall: float) -> Measure:
    busy = sum(g.seconds for g in sim.ledger.generations.values())  # slot-seconds of work
    rejections = sum(1 for r in sim.ledger.requests if r.err_code == 500044)
    return Measure(wall, busy / (sim.config.concurrency_limit * wall), rejections)


async def one_run(
    scenario: Scenario, seed: int, runner: Runner, checked: Checked, out: Path, concurrency: int
) -> Measure:
    config = SimConfig(
        concurrency_limit=scenario.limit,
        generation_seconds=GENERATION_SECONDS,
        time_scale=TIME_SCALE,
        fail_probability=scenario.fail_probability,
        generation_jitter=scenario.jitter,
        seed=seed,
    )
    async with serve(config) as sim:
        client_config = ClientConfig(base_url=sim.url, api_key=DEFAULT_API_KEY, retry=FAST_RETRY)
        async with PixverseClient(client_config) as client:
            wall = await runner(checked, client, out, concurrency)
        return measure(sim, wall)


def make_project(root: Path, jobs: int) -> Checked:
    """`jobs` TTS jobs on one sample video (one upload, distinct bodies), preflighted."""
    (root / "media").mkdir(parents=True)
    shutil.copy(
        REPO / "pipeline" / "examples" / "media" / "intro.mp4", root / "media" / "intro.mp4"
    )
    lines = ["version: 1", "defaults: {tts_speaker: '1'}", "jobs:"]
    lines += [
        f"  - {{id: job-{i}, video: media/intro.mp4, tts: {{text: 'line {i}'}}}}"
        for i in range(jobs)
    ]
    manifest = root / "manifest.yaml"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return preflight(load_manifest(manifest))


COLUMNS = (
    ("scenario", 22),
    ("jobs", 5),
    ("base s", 8),
    ("pipe s", 8),
    ("ratio", 7),
    ("util base", 10),
    ("util pipe", 10),
    ("500044 base", 12),
    ("500044 pipe", 12),
)


def format_row(cells: list[str]) -> str:
    return "  ".join(
        cell.ljust(width) if i == 0 else cell.rjust(width)
        for i, (cell, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True))
    )


def summarise(scenario: Scenario, jobs: int, pairs: list[tuple[Measure, Measure]]) -> str:
    """Medians over repeats; the ratio is the median of each repeat's paired ratio."""

    def med(values: list[float]) -> float:
        return statistics.median(values)

    base, pipe = [b for b, _ in pairs], [p for _, p in pairs]
    return format_row(
        [
            scenario.name,
            str(jobs),
            f"{med([m.wall for m in base]):.2f}",
            f"{med([m.wall for m in pipe]):.2f}",
            f"{med([b.wall / p.wall for b, p in pairs]):.2f}",
            f"{med([m.utilisation for m in base]):.0%}",
            f"{med([m.utilisation for m in pipe]):.0%}",
            f"{med([m.rejections for m in base]):g}",
            f"{med([m.rejections for m in pipe]):g}",
        ]
    )


async def bench(args: argparse.Namespace, root: Path) -> None:
    checked = make_project(root / "project", args.jobs)
    conc = args.concurrency
    low = max(1, conc - 2)
    scenarios = [
        Scenario(f"equal (limit {conc})", conc),
        Scenario(f"0.5x-1.5x (limit {conc})", conc, jitter=0.5),
        Scenario(f"limit {low} < conc {conc}", low),
        Scenario(f"20% status 8 (limit {conc})", conc, fail_probability=0.2),
    ]
    if low == conc:  # --concurrency 1: no lower limit to test
        del scenarios[2]
    print(format_row([name for name, _ in COLUMNS]), flush=True)
    for index, scenario in enumerate(scenarios):
        pairs: list[tuple[Measure, Measure]] = []
        for rep in range(args.repeat):
            runners: list[tuple[str, Runner]] = [("base", run_waves), ("pipe", run_pipeline)]
            if rep % 2:  # alternate who goes first, so warm-up and drift favour neither
                runners.reverse()
            got: dict[str, Measure] = {}
            for name, runner in runners:
                out = root / f"s{index}-r{rep}-{name}"
                got[name] = await one_run(scenario, rep, runner, checked, out, conc)
            pairs.append((got["base"], got["pipe"]))
        print(summarise(scenario, args.jobs, pairs), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30, help="jobs per run (default 30)")
    parser.add_argument("--concurrency", type=int, default=5, help="client slots (default 5)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario (default 3)")
    args = parser.parse_args(argv)
    if min(args.jobs, args.concurrency, args.repeat) < 1:
        parser.error("--jobs, --concurrency and --repeat must be at least 1")
    logging.basicConfig(level=logging.ERROR)  # the runner's per-job warnings are not the point
    with tempfile.TemporaryDirectory(prefix="bench-slots-") as tmp:
        anyio.run(bench, args, Path(tmp))
    print(
        f"ratio = baseline wall / pipeline wall (>1: pipeline faster); medians of {args.repeat};"
        f" a generation takes {GENERATION_SECONDS * TIME_SCALE:g} s unless spread"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
