"""Issue 6's figures: how busy the runner keeps the account's slots, how few requests it wastes.

    python benchmarks/bench_slots.py [--only NAME ...] [--write docs/benchmarks.md]

Each scenario runs twice against a fresh bundled simulator (on its own thread and event loop,
over loopback): the project's runner, and a baseline written inside this file the way a user
would from the PixVerse guide (a semaphore of `--concurrency` around upload, submit, poll at a
fixed beat, download; on 500044 sleep one poll interval and retry). Figures come from the
simulator's ledger; times are reported in unscaled seconds (a scenario may run its clock fast:
generations, polls, transfers and the limiter's backoffs all scale together).

The bound: with generation times g_i and limit L, no client can finish before
max(sum g_i / L, max g_i) plus the first upload and the last download.

The runner's free trace-id replay probe (two uploads before the first submission) is not
measured: its verdict is pre-recorded in each run's state file, as a second run would find it.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread

REPO = Path(__file__).resolve().parent.parent
# Run as a script from a checkout, `pipeline` need not be installed; hence imports below it.
sys.path.insert(0, str(REPO))
# ruff: noqa: E402

from pipeline._samples import make_audio
from pipeline.client import ClientConfig, PixverseClient, new_trace_id
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

GENERATE = "/openapi/v2/video/lip_sync/generate"
RESULT = "/openapi/v2/video/result/"
TERMINAL = frozenset({1, 6, 7, 8})
RETRY = RetryPolicy(attempts=4, max_elapsed=10, initial_wait=0.005, max_wait=0.02)
# the example's video, shipped as package data (pipeline/examples/)
SAMPLE_VIDEO = REPO / "pipeline" / "examples" / "media" / "intro.mp4"


@dataclass(frozen=True)
class Scenario:
    name: str
    jobs: int
    limit: int  # the account's concurrency limit (simulator)
    concurrency: int  # the clients' --concurrency
    poll: float  # --poll-interval, unscaled seconds
    gen: tuple[float, float]  # generation times, unscaled seconds, uniform
    follows_input: bool = False  # generation time = the voice's length (else random)
    transfer: float = 0.0  # unscaled seconds every upload and download takes
    other_holds: float = 0.0  # another client fills every slot for this long first
    scale: float = 1.0  # real seconds per unscaled second
    repeat: int = 1  # runs (seeds seed, seed+1, ...); the verdict reads the median figure


SCENARIOS = (
    Scenario("util-input", 32, 4, 4, 0.1, (1.0, 2.0), follows_input=True, transfer=0.2, repeat=3),
    Scenario("util-random", 32, 4, 4, 0.1, (1.0, 2.0), transfer=0.2, repeat=3),
    Scenario("limit2-13", 13, 2, 6, 0.1, (1.0, 2.0)),
    Scenario("limit2-200", 200, 2, 6, 0.1, (1.0, 2.0), scale=0.2),
    Scenario("other-client", 8, 4, 4, 1.0, (1.0, 2.0), other_holds=4.0),
    Scenario("polls", 40, 4, 4, 1.0, (4.0, 8.0), scale=0.4),
    # 200 generations in flight at once: every gap still within --poll-interval (review8's R8-1)
    Scenario("polls-200", 200, 200, 200, 2.0, (8.0, 12.0)),
)


@dataclass
class Measure:
    wall: float  # unscaled seconds from the first request to the last download
    bound: float
    utilisation: float  # sum g / (L x span of generating)
    generate_requests: int
    refused: int
    during_other: int  # generate requests while the other client held every slot
    polls: list[int] = field(default_factory=list)  # status calls per generation
    delays: list[float] = field(default_factory=list)  # end of generation -> first seen
    widest_gap: float = 0.0  # the longest time between two polls of one generation / interval


# the project -------------------------------------------------------------------------------


def make_project(root: Path, scenario: Scenario) -> Checked:
    """Audio jobs on one shared video; each voice as long as its generation should be."""
    media = root / "media"
    media.mkdir(parents=True)
    shutil.copy(SAMPLE_VIDEO, media / "intro.mp4")
    low, high = scenario.gen
    lines = ["version: 1", "jobs:"]
    for i in range(scenario.jobs):
        seconds = low + (high - low) * ((i * 7919) % scenario.jobs) / max(1, scenario.jobs - 1)
        make_audio(media / f"voice-{i}.wav", seconds=seconds if scenario.follows_input else 1.0)
        lines.append(f"  - {{id: job-{i}, video: media/intro.mp4, audio: media/voice-{i}.wav}}")
    manifest = root / "manifest.yaml"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return preflight(load_manifest(manifest))


def sim_config(scenario: Scenario, seed: int) -> SimConfig:
    low, high = scenario.gen
    middle = (low + high) / 2
    return SimConfig(
        concurrency_limit=scenario.limit,
        generation_seconds=middle,
        generation_jitter=0.0 if scenario.follows_input else (high - middle) / middle,
        generation_per_input_second=1.0 if scenario.follows_input else 0.0,
        transfer_seconds=scenario.transfer,
        time_scale=scenario.scale,
        seed=seed,
    )


@contextmanager
def sim_in_thread(config: SimConfig) -> Iterator[Simulator]:
    """The simulator on its own event loop in a thread: its work never delays the client's."""
    ready: list[Simulator] = []
    started, stop = threading.Event(), threading.Event()

    async def main() -> None:
        async with serve(config) as sim:
            ready.append(sim)
            started.set()
            await anyio.to_thread.run_sync(stop.wait)

    thread = threading.Thread(target=anyio.run, args=(main,), daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("simulator did not start")
    try:
        yield ready[0]
    finally:
        stop.set()
        thread.join(10)


# the two clients ---------------------------------------------------------------------------


async def run_pipeline(checked: Checked, client: PixverseClient, out: Path, s: Scenario) -> None:
    options = RunOptions(
        output_dir=out,
        concurrency=s.concurrency,
        poll_interval=s.poll * s.scale,
        probe_backoff=1.0 * s.scale,
        ceiling_probe_every=120.0 * s.scale,
        progress_every=3600.0,
    )
    store = StateStore.open(out / ".pixverse-batch.sqlite")
    try:
        key_fp = client.config.key_fingerprint
        store.save_gateway_check(client.config.base_url, key_fp, True, "pre-recorded (bench)")
        outcome = await run_batch(checked, store, client, options)
    finally:
        store.close()
    if outcome.problem is not None or outcome.interrupted or outcome.exit_code != 0:
        raise RuntimeError(f"the pipeline run stopped: {outcome.problem or outcome.exit_code}")


async def run_baseline(checked: Checked, client: PixverseClient, out: Path, s: Scenario) -> None:
    """The guide's script: a semaphore around upload, submit, poll, download."""
    await anyio.Path(out).mkdir(parents=True, exist_ok=True)
    slots = anyio.Semaphore(s.concurrency)
    shared: dict[Path, int] = {}
    lock = anyio.Lock()

    async def upload(path: Path) -> int:
        async with lock:  # the one video goes up once; every voice is its own file
            if path not in shared:
                shared[path] = (await client.upload(path)).media_id
        return shared[path]

    async def one(job: Job) -> None:
        async with slots:
            ids = {path: await upload(path) for path in job.media_paths()}
            body = generate_body(job, ids)
            while True:
                try:
                    video_id = (await client.generate(body, new_trace_id())).video_id
                    break
                except SlotLimitError:
                    await anyio.sleep(s.poll * s.scale)
            while True:
                await anyio.sleep(s.poll * s.scale)
                status = await client.status(video_id)
                if status.status in TERMINAL:
                    break
            link = Link(status.url, status.size)
            await download_result(client, video_id, out / f"{job.id}.mp4", link)

    async with anyio.create_task_group() as tg:
        for job in checked.manifest.jobs:
            tg.start_soon(one, job)


async def fill_account(client: PixverseClient, sim: Simulator, s: Scenario) -> float:
    """Another client takes every slot for `other_holds`; returns when they end (sim clock)."""
    config = sim.config
    media = (await client.upload(SAMPLE_VIDEO)).media_id
    per_input, config.generation_per_input_second = config.generation_per_input_second, 0.0
    jitter, config.generation_jitter = config.generation_jitter, 0.0
    generation, config.generation_seconds = config.generation_seconds, s.other_holds
    for i in range(s.limit):
        body = {
            "video_media_id": media,
            "lip_sync_tts_speaker_id": "1",
            "lip_sync_tts_content": f"another client, take {i}",
        }
        await client.generate(body, new_trace_id())
    config.generation_per_input_second, config.generation_jitter = per_input, jitter
    config.generation_seconds = generation
    return max(g.created_at + g.seconds for g in sim.ledger.generations.values())


# measuring ---------------------------------------------------------------------------------


async def one_run(checked: Checked, s: Scenario, who: str, root: Path, seed: int) -> Measure:
    with sim_in_thread(sim_config(s, seed)) as sim:
        config = ClientConfig(base_url=sim.url, api_key=DEFAULT_API_KEY, retry=RETRY)
        async with PixverseClient(config) as client:
            others_end = await fill_account(client, sim, s) if s.other_holds else None
            theirs = set(sim.ledger.generations)
            first_request = len(sim.ledger.requests)
            first_transfer = len(sim.ledger.transfers)
            runner = run_pipeline if who == "pipeline" else run_baseline
            start = time.monotonic()
            await runner(checked, client, root / f"{s.name}-{who}", s)
            wall = time.monotonic() - start
        return measure(sim, s, wall, theirs, (first_request, first_transfer), others_end)


def measure(
    sim: Simulator,
    s: Scenario,
    wall: float,
    theirs: set[int],
    firsts: tuple[int, int],
    others_end: float | None,
) -> Measure:
    ledger = sim.ledger
    first_request, first_transfer = firsts
    ours = [g for v, g in ledger.generations.items() if v not in theirs]
    requests = ledger.requests[first_request:]
    generates = [r for r in requests if r.path == GENERATE]
    seconds = [g.seconds for g in ours]
    span = max(g.created_at + g.seconds for g in ours) - min(g.created_at for g in ours)
    transfers = ledger.transfers[first_transfer:]
    first_upload = min((t for t in transfers if t.kind == "upload"), key=lambda t: t.started)
    downloads = sorted((t for t in transfers if t.kind == "download"), key=lambda t: t.finished)
    edges = (first_upload.finished - first_upload.started) + (
        downloads[-1].finished - downloads[-1].started
    )
    bound = max(sum(seconds) / s.limit, max(seconds)) + edges
    polls: list[int] = []
    delays: list[float] = []
    by_video = Counter(r.path for r in requests if r.path.startswith(RESULT))
    asked: dict[str, list[float]] = {}
    for r in requests:
        if r.path.startswith(RESULT):
            asked.setdefault(r.path, []).append(r.at)
    widest = max(
        (b - a for times in asked.values() for a, b in itertools.pairwise(times)), default=0.0
    )
    for g in ours:
        path = f"{RESULT}{g.video_id}"
        end = g.created_at + g.seconds
        seen = [r.at for r in requests if r.path == path and r.at >= end]
        polls.append(by_video[path])
        if seen:
            delays.append((min(seen) - end) / s.scale)
    during = 0 if others_end is None else sum(1 for r in generates if r.at < others_end)
    return Measure(
        wall=wall / s.scale,
        bound=bound / s.scale,
        utilisation=sum(seconds) / (s.limit * span),
        generate_requests=len(generates),
        refused=sum(1 for r in generates if r.err_code == 500044),
        during_other=during,
        polls=polls,
        delays=delays,
        widest_gap=widest / (s.poll * s.scale),
    )


# the report --------------------------------------------------------------------------------

# (scenario, figure, how it reads a Measure, the target, whether it is met)
TARGETS: tuple[tuple[str, str, Callable[[Measure], float], str, Callable[[float], bool]], ...] = (
    ("util-input", "slot utilisation", lambda m: m.utilisation, ">= 0.96", lambda v: v >= 0.96),
    ("util-input", "bound / makespan", lambda m: m.bound / m.wall, ">= 0.92", lambda v: v >= 0.92),
    (
        "limit2-13",
        "share refused",
        lambda m: m.refused / m.generate_requests,
        "<= 0.10",
        lambda v: v <= 0.10,
    ),
    (
        "limit2-200",
        "share refused",
        lambda m: m.refused / m.generate_requests,
        "<= 0.03",
        lambda v: v <= 0.03,
    ),
    (
        "other-client",
        "generate requests while full",
        lambda m: m.during_other,
        "<= 10",
        lambda v: v <= 10,
    ),
    (
        "polls",
        "status calls per generation (median)",
        lambda m: statistics.median(m.polls),
        "<= 4",
        lambda v: v <= 4,
    ),
    (
        "polls",
        "finish -> seen, mean s",
        lambda m: statistics.fmean(m.delays),
        "<= 0.5",
        lambda v: v <= 0.5,
    ),
    (
        "polls",
        "widest gap between polls of one generation, x --poll-interval",
        lambda m: m.widest_gap,
        "<= 1",
        lambda v: v <= 1.0,
    ),
    (
        "polls-200",
        "widest gap between polls of one generation, x --poll-interval",
        lambda m: m.widest_gap,
        "<= 1",
        lambda v: v <= 1.0,
    ),
)


def verdicts(measures: dict[tuple[str, str], list[Measure]]) -> list[str]:
    lines = [
        "| scenario | figure (median of runs) | pipeline | baseline | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for name, figure, read, target, met in TARGETS:
        if (name, "pipeline") not in measures:
            continue
        ours = statistics.median(read(m) for m in measures[name, "pipeline"])
        theirs = statistics.median(read(m) for m in measures[name, "baseline"])
        lines.append(
            f"| {name} | {figure} | {ours:.3g} | {theirs:.3g} | {target}"
            f" | {'yes' if met(ours) else 'NO'} |"
        )
    return lines


def row(s: Scenario, who: str, m: Measure) -> str:
    refused = m.refused / m.generate_requests if m.generate_requests else 0.0
    return (
        f"| {s.name} | {who} | {m.bound:.2f} | {m.wall:.2f} | {m.bound / m.wall:.3f}"
        f" | {m.utilisation:.3f} | {m.generate_requests} | {refused:.1%}"
        f" | {m.during_other if s.other_holds else '-'}"
        f" | {statistics.median(m.polls):g} | {statistics.fmean(m.delays):.3f}"
        f" | {m.widest_gap:.2f} |"
    )


HEADER = (
    "| scenario | client | bound s | makespan s | bound/makespan | utilisation"
    " | generate requests | refused | sent while full | status calls / gen (median)"
    " | finish -> seen s (mean) | widest poll gap / interval |"
    "\n|---|---|---|---|---|---|---|---|---|---|---|---|"
)


async def bench(args: argparse.Namespace, root: Path) -> list[str]:
    lines = [HEADER]
    measures: dict[tuple[str, str], list[Measure]] = {}
    print(HEADER, flush=True)
    for s in SCENARIOS:
        if args.only and s.name not in args.only:
            continue
        checked = make_project(root / s.name, s)
        for run in range(s.repeat):
            for who in ("pipeline", "baseline"):
                m = await one_run(checked, s, who, root / str(run), args.seed + run)
                measures.setdefault((s.name, who), []).append(m)
                line = row(s, who, m)
                lines.append(line)
                print(line, flush=True)
    judged = verdicts(measures)
    print("\n".join(judged), flush=True)
    return [*lines, "", *judged]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="scenario names (default: all)")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--write", type=Path, help="write the table into this markdown file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the runner's per-job lines are not the point
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-slots-") as tmp:
        lines = anyio.run(bench, args, Path(tmp))
    took = time.monotonic() - started
    print(f"took {took:.0f} s")
    if args.write:
        write_doc(args.write, lines, took)
    return 0


def write_doc(path: Path, table: list[str], took: float, marker: str = "bench") -> None:
    """Replace the block between the `marker` comments in `path` with this run's table (the
    block goes at the end when the file has no such markers yet)."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    block = "\n".join(table) + f"\n\nThis part of `make bench` took {took:.0f} s.\n"
    path.write_text(f"{head}{begin}\n{block}{end}{tail}", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
