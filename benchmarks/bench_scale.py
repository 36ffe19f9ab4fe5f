"""Issue 6's scale figures: CPU and memory of the pipeline process over thousands of jobs.

    python benchmarks/bench_scale.py [--sizes 1000 3000 10000] [--cpu-jobs 3000]
                                     [--stream-mb 50] [--write docs/benchmarks.md]

Every figure is of the pipeline's own process: `pixverse-batch run` (and `validate`) started
as a child of this script, its CPU (user + system, all its threads) and peak RSS read from
`os.wait4` when it exits, interpreter start-up, manifest parsing, preflight and the report
included. The simulator runs in another child process (this file with `--serve`), so its work
is never counted. Jobs are TTS lines on 20 distinct tiny videos (every job its own inputs, 20
files to upload), account limit and `--concurrency` 200, generations of 10 ms,
`--poll-interval` 0.05 s, a fresh output folder per size.

* per size: CPU per job, peak RSS, the state file's size (database and WAL after the run)
  per job, uploads per distinct file (the simulator's ledger), then the wall time of
  `validate` on that manifest and output folder, and of `run` again on the finished run
  (nothing to do), with the requests that second run sent;
* `--cpu-jobs`: the issue's "CPU per job, 3,000 jobs" row (one of the sizes, or a run more);
* stream: one job whose video is a real H.264 file of about `--stream-mb` MB (noise, which
  does not compress, so the result the simulator makes from it is as large), under the
  simulator's own 50 MiB upload limit: peak RSS of that run minus that of the same job with
  a tiny video. The upload and the download each move the whole file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Run as a script from a checkout, `pipeline` need not be installed; hence imports below it.
sys.path.insert(0, str(REPO))
# ruff: noqa: E402

from benchmarks.bench_slots import write_doc
from pipeline._samples import make_video

VIDEOS = 20
LIMIT = 200
POLL = 0.05
GENERATION = 0.01  # seconds at status 5 (sim seconds at time scale 1)
SIM_KEY = "sim-key"
GENERATE = "/openapi/v2/video/lip_sync/generate"
UPLOAD = "/openapi/v2/media/upload"
PROBE_PREFIX = "pixverse-batch-replay-probe"  # pipeline.replay: the probe's uploads


# the simulator, in its own process ----------------------------------------------------------


def serve(knobs: dict[str, Any]) -> None:
    """`--serve`: the simulator with `knobs`; prints its URL, then answers `ledger` lines on
    stdin with a JSON summary of its ledger; exits at the end of stdin."""
    import anyio
    import anyio.to_thread

    from pipeline.simulator import SimConfig
    from pipeline.simulator import serve as serve_sim

    async def main() -> None:
        async with serve_sim(SimConfig(**knobs)) as sim:
            print(sim.url, flush=True)
            while line := await anyio.to_thread.run_sync(sys.stdin.readline):
                if line.strip() == "ledger":
                    print(json.dumps(_summary(sim.ledger)), flush=True)

    anyio.run(main)


def _summary(ledger: Any) -> dict[str, Any]:
    uploads: dict[str, int] = {}
    for u in ledger.uploads:
        if not u.filename.startswith(PROBE_PREFIX):
            uploads[u.sha256] = uploads.get(u.sha256, 0) + 1
    return {
        "requests": len(ledger.requests),
        "by_kind": _kinds(ledger.requests),
        "generations": len(ledger.generations),
        "uploads_per_file": sorted(set(uploads.values())),
        "files_uploaded": len(uploads),
        "peak": ledger.peak_concurrent,
    }


def _kinds(requests: list[Any]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for r in requests:
        kind = f"{r.method} {r.path.split('/openapi/v2/')[-1].split('/')[0]}"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


class SimProcess:
    def __init__(self, **knobs: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", json.dumps(knobs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError("the simulator did not start")

    def ledger(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("ledger\n")
        self.proc.stdin.flush()
        summary: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return summary

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def sim_knobs(**more: Any) -> dict[str, Any]:
    return {
        "concurrency_limit": LIMIT,
        "generation_seconds": GENERATION,
        "time_scale": 1.0,
        "credit_monthly": 10**9,
        "seed": 6,
        **more,
    }


# the pipeline, in its own process -----------------------------------------------------------


@dataclass
class Child:
    code: int
    wall: float
    cpu: float  # user + system seconds
    rss_mb: float  # peak resident set
    stderr: str = ""


def pipeline(*args: str, env: dict[str, str] | None = None) -> Child:
    """`pixverse-batch ARGS` as a child process, measured when it exits (`os.wait4`)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Child(
        code=proc.returncode,
        wall=time.monotonic() - started,
        cpu=usage.ru_utime + usage.ru_stime,
        rss_mb=usage.ru_maxrss / 1024,  # Linux: KiB
        stderr=err[-2000:],
    )


def run_args(manifest: Path, out: Path, url: str, *more: str) -> list[str]:
    return [
        "-q",
        "run",
        str(manifest),
        "--out",
        str(out),
        "--concurrency",
        str(LIMIT),
        "--poll-interval",
        str(POLL),
        "--base-url",
        url,
        "--api-key",
        SIM_KEY,
        *more,
    ]


# the projects -------------------------------------------------------------------------------


def make_videos(media: Path) -> list[str]:
    """20 distinct tiny videos (each a different length: different bytes)."""
    media.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(VIDEOS):
        name = f"v{i:02d}.mp4"
        make_video(media / name, seconds=1.0 + 0.2 * i, audio=False)
        names.append(name)
    return names


def write_manifest(root: Path, jobs: int, videos: list[str]) -> Path:
    lines = ["version: 1", "defaults: {tts_speaker: '1'}", "jobs:"]
    lines += [
        f"  - {{id: job-{i}, video: media/{videos[i % len(videos)]}, tts: {{text: 'line {i}'}}}}"
        for i in range(jobs)
    ]
    path = root / f"jobs-{jobs}.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_noise_video(path: Path, megabytes: float) -> Path:
    """A real H.264 mp4 of about `megabytes` MB (10^6 bytes; the API allows 50 MiB): noise
    frames do not compress. Under the API's 30 s and 1920 px, so preflight and the simulator
    take it as an upload."""
    import av

    width, height, fps = 640, 360, 25
    frame_bytes = width * height * 3 // 2
    target = megabytes * 1e6
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps, options={"qp": "0", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        written = packets = frames = 0
        # the encoder holds a frame or two back: stop when what it holds would reach the size
        while packets == 0 or written + (frames - packets + 1) * written / packets < target:
            frame = av.VideoFrame(width, height, "yuv420p")
            noise = os.urandom(frame_bytes)
            for plane, start, size in _planes(frame, width, height):
                plane.update(noise[start : start + size])
            frame.pts, frame.time_base = frames, Fraction(1, fps)
            frames += 1
            for packet in stream.encode(frame):
                written += packet.size
                packets += 1
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def _planes(frame: Any, width: int, height: int) -> list[tuple[Any, int, int]]:
    luma = width * height
    chroma = luma // 4
    y, u, v = frame.planes
    return [(y, 0, luma), (u, luma, chroma), (v, luma + chroma, chroma)]


# the scenarios ------------------------------------------------------------------------------


@dataclass
class Scale:
    jobs: int
    run: Child
    state_bytes: int
    ledger: dict[str, Any]
    validate: Child
    rerun: Child
    rerun_requests: dict[str, int] = field(default_factory=dict)


def state_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.glob(".pixverse-batch.sqlite*"))


def scale(root: Path, jobs: int, videos: list[str]) -> Scale:
    manifest = write_manifest(root, jobs, videos)
    out = root / f"out-{jobs}"
    sim = SimProcess(**sim_knobs())
    try:
        run = pipeline(*run_args(manifest, out, sim.url))
        if run.code != 0:
            raise RuntimeError(f"run of {jobs} jobs exited {run.code}: {run.stderr}")
        ledger = sim.ledger()
        size = state_bytes(out)
        validate = pipeline("-q", "validate", str(manifest), "--out", str(out))
        if validate.code != 0:
            raise RuntimeError(f"validate exited {validate.code}: {validate.stderr}")
        rerun = pipeline(*run_args(manifest, out, sim.url))
        if rerun.code != 0:
            raise RuntimeError(f"rerun exited {rerun.code}: {rerun.stderr}")
        after = sim.ledger()
    finally:
        sim.close()
    sent = {k: n - ledger["by_kind"].get(k, 0) for k, n in after["by_kind"].items()}
    return Scale(jobs, run, size, ledger, validate, rerun, {k: n for k, n in sent.items() if n})


def stream(root: Path, megabytes: float) -> tuple[Child, Child, int, int]:
    """The same one-job run with a tiny video and with a `megabytes` MB one; the two runs,
    and the bytes uploaded and downloaded by the big one."""
    media = root / "media"
    big = make_noise_video(media / "big.mp4", megabytes)
    tiny = media / "v00.mp4"
    children = []
    for video in (tiny, big):
        manifest = root / f"stream-{video.stem}.yaml"
        manifest.write_text(
            "version: 1\njobs:\n"
            f"  - {{id: one, video: media/{video.name}, tts: {{text: 'hello', speaker: '1'}}}}\n",
            encoding="utf-8",
        )
        sim = SimProcess(**sim_knobs())
        try:
            child = pipeline(*run_args(manifest, root / f"out-stream-{video.stem}", sim.url))
        finally:
            sim.close()
        if child.code != 0:
            raise RuntimeError(f"stream run exited {child.code}: {child.stderr}")
        children.append(child)
    result = root / "out-stream-big" / "one.mp4"
    return children[0], children[1], big.stat().st_size, result.stat().st_size


def profile(root: Path, jobs: int, videos: list[str], raw: Path) -> list[str]:
    """One more run of `jobs` jobs under py-spy (`--gil`: samples only while Python runs, so
    waits do not count), its raw stacks in `raw`; returns the functions of the pipeline (and
    aiohttp) that the most samples were inside, as lines."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    manifest = write_manifest(root, jobs, videos)
    sim = SimProcess(**sim_knobs())
    try:
        args = run_args(manifest, root / f"out-profile-{jobs}", sim.url)
        record = [spy, "record", "--gil", "--threads", "-r", "250", "-f", "raw", "-o", str(raw)]
        subprocess.run(
            [*record, "--", sys.executable, "-m", "pipeline", *args],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
    finally:
        sim.close()
    inside: dict[str, int] = {}
    total = 0
    for line in raw.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        for frame in {re.sub(r":\d+\)$", ")", f) for f in stack.split(";")}:
            if "pipeline/" in frame or "aiohttp/" in frame:
                inside[frame] = inside.get(frame, 0) + int(count)
    top = sorted(inside.items(), key=lambda item: -item[1])[:40]
    return [f"{100 * n / total:5.1f}%  {frame}" for frame, n in top]


# the report ---------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


def report(
    scales: list[Scale], cpu_row: Scale | None, streamed: tuple[Child, Child, int, int] | None
) -> list[str]:
    lines = [
        "| jobs | wall s | CPU s | CPU per job ms | peak RSS MB | state file MB | state bytes"
        " per job | distinct files uploaded (times each) | validate s | rerun s"
        " | rerun requests |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = sorted(
        {s.jobs: s for s in [*scales, *([cpu_row] if cpu_row else [])]}.values(),
        key=lambda s: s.jobs,
    )
    for s in rows:
        lines.append(
            f"| {s.jobs} | {s.run.wall:.1f} | {s.run.cpu:.1f} | {1000 * s.run.cpu / s.jobs:.2f}"
            f" | {s.run.rss_mb:.0f} | {s.state_bytes / 1e6:.1f} | {s.state_bytes / s.jobs:.0f}"
            f" | {s.ledger['files_uploaded']} ({', '.join(map(str, s.ledger['uploads_per_file']))})"
            f" | {s.validate.wall:.2f} | {s.rerun.wall:.2f}"
            f" | {', '.join(f'{k} {n}' for k, n in sorted(s.rerun_requests.items())) or 'none'} |"
        )
    lines += ["", "| figure | measured | target | met |", "|---|---|---|---|"]
    if cpu_row is not None:
        per_job = 1000 * cpu_row.run.cpu / cpu_row.jobs
        lines.append(
            f"| CPU per job, {cpu_row.jobs} jobs | {per_job:.2f} ms | <= 2 ms"
            f" | {verdict(per_job <= 2)} |"
        )
    if scales:
        big = max(scales, key=lambda s: s.jobs)
        per_job = 1000 * big.run.cpu / big.jobs
        per_job_bytes = [s.state_bytes / s.jobs for s in sorted(scales, key=lambda s: s.jobs)]
        spread = max(per_job_bytes) / min(per_job_bytes)
        once = big.ledger["uploads_per_file"] == [1] and big.ledger["files_uploaded"] == VIDEOS
        sizes = " / ".join(f"{s.jobs}" for s in sorted(scales, key=lambda s: s.jobs))
        if big is not cpu_row:
            lines.append(
                f"| CPU per job, {big.jobs} jobs | {per_job:.2f} ms | <= 2 ms"
                f" | {verdict(per_job <= 2)} |"
            )
        lines += [
            f"| peak RSS, {big.jobs} jobs | {big.run.rss_mb:.0f} MB | <= 200 MB"
            f" | {verdict(big.run.rss_mb <= 200)} |",
            f"| state file bytes per job at {sizes} jobs"
            f" | {' / '.join(f'{b:.0f}' for b in per_job_bytes)} (x{spread:.2f})"
            f" | linear (within 10 %) | {verdict(spread <= 1.1)} |",
            f"| each distinct file uploaded once, {big.jobs} jobs"
            f" | {big.ledger['files_uploaded']} files, {big.ledger['uploads_per_file']} times"
            f" | {VIDEOS} files, once each | {verdict(once)} |",
            f"| validate, {big.jobs} jobs | {big.validate.wall:.2f} s | <= 3 s"
            f" | {verdict(big.validate.wall <= 3)} |",
            f"| run again when finished, {big.jobs} jobs (nothing to do) | {big.rerun.wall:.2f} s"
            f" | <= 3 s | {verdict(big.rerun.wall <= 3)} |",
        ]
    if streamed is not None:
        tiny, big_run, up, down = streamed
        growth = big_run.rss_mb - tiny.rss_mb
        lines.append(
            f"| peak RSS growth moving {up / 1e6:.1f} MB up and {down / 1e6:.1f} MB down"
            f" | {growth:.1f} MB ({tiny.rss_mb:.0f} -> {big_run.rss_mb:.0f} MB) | < 20 MB"
            f" | {verdict(growth < 20)} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 3000, 10000])
    parser.add_argument(
        "--cpu-jobs", type=int, default=3000, help="the CPU row's jobs (one of --sizes, or run too)"
    )
    parser.add_argument("--stream-mb", type=float, default=50.0, help="0: skip the stream run")
    parser.add_argument("--write", type=Path, help="write the table into this markdown file")
    parser.add_argument(
        "--profile", type=Path, help="only profile a run of --cpu-jobs jobs with py-spy, to here"
    )
    args = parser.parse_args(argv)
    if args.serve:
        serve(json.loads(args.serve))
        return 0
    if args.profile:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            root = Path(tmp)
            print(
                "\n".join(profile(root, args.cpu_jobs, make_videos(root / "media"), args.profile))
            )
        return 0
    started = time.monotonic()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(tmp)
        videos = make_videos(root / "media")
        scales = [scale(root, n, videos) for n in args.sizes]
        cpu_row = next((s for s in scales if s.jobs == args.cpu_jobs), None)
        if cpu_row is None and args.cpu_jobs:
            cpu_row = scale(root, args.cpu_jobs, videos)
        streamed = stream(root, args.stream_mb) if args.stream_mb else None
    took = time.monotonic() - started
    lines = report(scales, cpu_row, streamed)
    lines += [
        "",
        f"Load average (1 min) when this part started: {load:.1f}, when it ended:"
        f" {os.getloadavg()[0]:.1f}, on {os.cpu_count()} cores.",
    ]
    print("\n".join(lines))
    print(f"took {took:.0f} s")
    if args.write:
        write_doc(args.write, lines, took, marker="scale")
    return 0


if __name__ == "__main__":
    sys.exit(main())
