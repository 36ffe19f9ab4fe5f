"""Test harness: the real client and runner against the real simulator over loopback."""

from __future__ import annotations

import hashlib
import shutil
import threading
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

import anyio
import anyio.to_thread

from pipeline.client import ClientConfig, PixverseClient
from pipeline.manifest import load_manifest
from pipeline.preflight import preflight
from pipeline.replay import PROBE_PREFIX
from pipeline.retry import RetryPolicy
from pipeline.runner import RunOptions, RunOutcome, run_batch
from pipeline.simulator import SimConfig, Simulator, serve
from pipeline.simulator.ledger import Ledger, UploadRecord
from pipeline.state import StateStore

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "pipeline" / "examples" / "media"
FAST_RETRY = RetryPolicy(attempts=4, max_elapsed=10, initial_wait=0.005, max_wait=0.02)
STATE_NAME = ".pixverse-batch.sqlite"
# A silent submission is re-sent only after this (plus 10 %): short, so lost replies cost
# tests about two seconds each, long enough for a loaded machine to answer small calls.
REQUEST_TIMEOUT = 2.0

EXAMPLE = """
version: 1
defaults:
  tts_speaker: "Auto"
jobs:
  - id: intro-es
    video: media/intro.mp4
    audio: media/intro_es.mp3
  - id: intro-de
    video: media/intro.mp4
    audio: media/intro_de.wav
  - id: intro-fr
    video: media/intro.mp4
    tts: {text: "Bonjour à tous", speaker: "3"}
  - id: remix-de
    video_id: 391504857968062
    audio: media/remix_de.wav
  - id: promo
    video: media/promo.mov
    dubs:
      es: {audio: media/promo_es.wav}
      ja: {tts: {text: "こんにちは"}}
"""


def fast_sim(**knobs: object) -> SimConfig:
    """A simulator where a "20 s" generation takes 0.1 s."""
    config = SimConfig(generation_seconds=20.0, time_scale=0.005, seed=1)
    return replace(config, **knobs)  # type: ignore[arg-type]


def project(tmp_path: Path, manifest: str = EXAMPLE) -> Path:
    """A manifest folder with the sample media copied in; returns the manifest path."""
    shutil.copytree(SAMPLES, tmp_path / "media", dirs_exist_ok=True)
    path = tmp_path / "manifest.yaml"
    path.write_text(manifest, encoding="utf-8")
    return path


def tts_manifest(count: int, prefix: str = "job") -> str:
    """`count` TTS jobs on one uploaded video: cheap, many, distinct bodies."""
    lines = ["version: 1", "defaults: {tts_speaker: '1'}", "jobs:"]
    lines += [
        f"  - {{id: {prefix}-{i}, video: media/intro.mp4, tts: {{text: 'line {i}'}}}}"
        for i in range(count)
    ]
    return "\n".join(lines) + "\n"


async def run_once(
    sim: Simulator,
    manifest: Path,
    out: Path,
    *,
    api_key: str = "sim-key",
    api_keys: Sequence[str] = (),
    base_url: str | None = None,
    request_timeout: float = REQUEST_TIMEOUT,
    only: tuple[str, ...] = (),
    keep_going: bool = False,
    **options: object,
) -> RunOutcome:
    """One `pixverse-batch run`, in-process: preflight, lock the state, run, report.
    `api_keys`: several keys, each its own account (instead of `api_key`)."""
    checked = preflight(load_manifest(manifest), only=only, keep_going=keep_going)
    run_options = replace(RunOptions(output_dir=out, poll_interval=0.02), **options)  # type: ignore[arg-type]
    store = StateStore.open(out / STATE_NAME)
    try:
        configs = [
            ClientConfig(
                base_url=base_url or sim.url,
                api_key=key,
                retry=FAST_RETRY,
                request_timeout=request_timeout,
            )
            for key in (api_keys or [api_key])
        ]
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(PixverseClient(c)) for c in configs]
            return await run_batch(
                checked, store, clients[0] if len(clients) == 1 else clients, run_options
            )
    finally:
        store.close()


def job_uploads(ledger: Ledger) -> list[UploadRecord]:
    """The uploads of job media, without the two the trace-id replay probe makes."""
    return [u for u in ledger.uploads if not u.filename.startswith(PROBE_PREFIX)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def sim_in_thread(config: SimConfig) -> Iterator[Simulator]:
    """The simulator on its own event loop in a thread, for tests that call the sync CLI."""
    ready: list[Simulator] = []
    started = threading.Event()
    stop = threading.Event()

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
