"""Pay once, lose nothing (issue 5): downloads and uploads against a misbehaving CDN, a proxy,
a file changed under our feet, and a folder that cannot take the results.

Everything runs the real client and runner against the real simulator over loopback, with
the real reverse proxy of tests/gateway_proxy.py (or a tiny aiohttp CDN) in between.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from aiohttp import web

from pipeline.cli import main
from pipeline.client import ClientConfig, PixverseClient
from pipeline.download import Link, fetch_to_file
from pipeline.jobstate import JobState
from pipeline.manifest import load_manifest
from pipeline.media import probe
from pipeline.preflight import Checked, preflight
from pipeline.runner import ExitCode, RunOptions, RunOutcome, run_batch
from pipeline.simulator import Simulator, serve
from pipeline.state import StateStore
from tests.fs_faults import mount_tmpfs, umount
from tests.gateway_proxy import Call, Forward, gateway_proxy, status_of
from tests.harness import (
    FAST_RETRY,
    STATE_NAME,
    fast_sim,
    job_uploads,
    project,
    sha256,
    sim_in_thread,
    tts_manifest,
)
from tests.media_factory import make_audio, make_video
from tests.test_client import serve_app
from tests.test_review9_findings import FASTSTART, _close_delimited_cdn

RESULT = "/video/result"
ONE_JOB = "version: 1\njobs:\n  - {id: j1, video: media/intro.mp4, audio: media/%s}\n"


async def _short_sleep(seconds: float) -> None:
    """Backoffs and polls in milliseconds: what they wait for is not time but a reply."""
    await anyio.sleep(min(seconds, 0.02))


async def run_checked(
    sim: Simulator, checked: Checked, out: Path, *, base_url: str | None = None
) -> RunOutcome:
    """`harness.run_once` from an already preflighted manifest, with injected short sleeps."""
    store = StateStore.open(out / STATE_NAME)
    try:
        config = ClientConfig(base_url=base_url or sim.url, api_key="sim-key", retry=FAST_RETRY)
        async with PixverseClient(config) as client:
            options = RunOptions(output_dir=out, poll_interval=0.02)
            return await run_batch(checked, store, client, options, sleep=_short_sleep)
    finally:
        store.close()


async def run_fast(
    sim: Simulator, manifest: Path, out: Path, *, base_url: str | None = None
) -> RunOutcome:
    return await run_checked(sim, preflight(load_manifest(manifest)), out, base_url=base_url)


def _job(out: Path, job_id: str) -> tuple[JobState, str | None]:
    store = StateStore.read_only(out / STATE_NAME)
    try:
        record = store.job(job_id)
        return record.state, record.error
    finally:
        store.close()


def _edit_status(reply: web.Response, **resp: object) -> web.Response:
    payload = json.loads(reply.body)  # type: ignore[arg-type]
    payload["Resp"].update(resp)
    return web.json_response(payload, status=reply.status)


# 1. a status-1 reply without a link (CDN lag) ----------------------------------------------


@pytest.mark.anyio
async def test_a_finished_video_without_a_link_yet_is_asked_again(tmp_path: Path) -> None:
    """Status 1 with an empty url, three times: the paid result is fetched all the same."""
    blanks = 3

    async def hook(call: Call, forward: Forward) -> web.Response:
        nonlocal blanks
        reply = await forward()
        if call.path == RESULT and status_of(reply) == 1 and blanks > 0:
            blanks -= 1
            return _edit_status(reply, url="", size=0)
        return reply

    manifest = project(tmp_path, tts_manifest(1))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim, gateway_proxy(sim.url, hook) as proxy:
        outcome = await run_fast(sim, manifest, out, base_url=proxy.url)
    assert blanks == 0
    assert outcome.exit_code is ExitCode.OK, outcome.rows
    assert len(sim.ledger.generations) == 1
    (video_id,) = sim.ledger.generations
    assert sha256(out / "job-0.mp4") == sim.ledger.served_downloads[video_id]


# 4. a CDN that compresses the mp4 although identity was asked for --------------------------


@pytest.fixture(scope="module")
def result_mp4(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_video(tmp_path_factory.mktemp("cdn") / "result.mp4").read_bytes()


@pytest.mark.anyio
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_cdn_that_compresses_the_mp4_anyway(
    tmp_path: Path, result_mp4: bytes, encoding: str
) -> None:
    packed = gzip.compress(result_mp4) if encoding == "gzip" else zlib.compress(result_mp4)
    asked: list[str | None] = []

    async def compressed(request: web.Request) -> web.Response:
        asked.append(request.headers.get("Accept-Encoding"))
        # whatever was asked: the body is compressed, Content-Length is the compressed size
        return web.Response(
            body=packed, content_type="video/mp4", headers={"Content-Encoding": encoding}
        )

    app = web.Application()
    app.router.add_get("/r.mp4", compressed)
    async with serve_app(app) as url:
        config = ClientConfig(base_url=url, api_key="k", retry=FAST_RETRY)
        async with PixverseClient(config) as client:
            fetched = await fetch_to_file(
                client, Link(f"{url}/r.mp4", len(result_mp4)), tmp_path / "r.mp4"
            )
    assert asked == ["identity"]
    assert fetched.size == len(result_mp4)
    assert (tmp_path / "r.mp4").read_bytes() == result_mp4
    assert [p.name for p in tmp_path.iterdir()] == ["r.mp4"]


# 6. an HTML page sent with 200 and no size -------------------------------------------------


@pytest.mark.anyio
async def test_an_html_page_with_status_200_is_not_saved_as_the_result(tmp_path: Path) -> None:
    """The first download answers 200 text/html and the status reply gives no size: the page
    must not become job-0.mp4; the next try (fresh link) gets the real video, paid once."""
    urls: dict[str, str] = {}

    async def hook(call: Call, forward: Forward) -> web.Response:
        if call.path.startswith("/media/result/") and call.number == 1:
            page = "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
            return web.Response(text=page, content_type="text/html")
        reply = await forward()
        if call.path == RESULT and status_of(reply) == 1:
            # downloads through the proxy too, and no size to compare with
            link = json.loads(reply.body)["Resp"]["url"]  # type: ignore[arg-type]
            return _edit_status(reply, url=link.replace(urls["sim"], urls["proxy"]), size=0)
        return reply

    manifest = project(tmp_path, tts_manifest(1))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim, gateway_proxy(sim.url, hook) as proxy:
        urls.update(sim=sim.url, proxy=proxy.url)
        outcome = await run_fast(sim, manifest, out, base_url=proxy.url)
        downloads = [c for c in proxy.seen if c.path.startswith("/media/result/")]
    assert len(downloads) == 2  # the page, then the video
    assert outcome.exit_code is ExitCode.OK, outcome.rows
    (video_id,) = sim.ledger.generations
    assert sha256(out / "job-0.mp4") == sim.ledger.served_downloads[video_id]
    assert probe(out / "job-0.mp4").kind == "video"
    assert sorted(p.name for p in out.glob("*.mp4*")) == ["job-0.mp4"]


# 6'. a result cut short with no Content-Length ---------------------------------------------


@pytest.mark.anyio
async def test_a_close_delimited_result_cut_short_is_fetched_again(tmp_path: Path) -> None:
    """The first link goes to an edge that sends half of a faststart mp4 without
    Content-Length and closes (it probes and decodes as a whole video): a failed try, not
    DONE and not a disk error; the next try's fresh link gets the real video, paid once."""
    edited = 0

    async def hook(call: Call, forward: Forward) -> web.Response:
        nonlocal edited
        reply = await forward()
        if call.path == RESULT and status_of(reply) == 1 and not edited:
            edited += 1
            return _edit_status(reply, url=f"{edge}/result.mp4", size=0)
        return reply

    manifest = project(tmp_path, tts_manifest(1))
    out = tmp_path / "out"
    async with (
        _close_delimited_cdn(FASTSTART, len(FASTSTART) // 2) as edge,
        serve(fast_sim()) as sim,
        gateway_proxy(sim.url, hook) as proxy,
    ):
        outcome = await run_fast(sim, manifest, out, base_url=proxy.url)
    assert edited == 1
    assert outcome.exit_code is ExitCode.OK, outcome.rows
    (video_id,) = sim.ledger.generations
    assert sim.ledger.served_downloads.get(video_id) == sha256(out / "job-0.mp4")
    assert sorted(p.name for p in out.glob("*.mp4*")) == ["job-0.mp4"]
    assert _job(out, "job-0") == (JobState.DONE, None)


# 7. the upload reads the file again after preflight hashed it -----------------------------


@pytest.mark.anyio
async def test_a_file_changed_after_preflight_fails_its_job_and_is_not_cached(
    tmp_path: Path,
) -> None:
    second = "  - {id: j2, video: media/promo.mov, audio: media/intro_de.wav}\n"
    manifest = project(tmp_path, ONE_JOB % "intro_de.wav" + second)
    audio = tmp_path / "media" / "intro_de.wav"
    checked = preflight(load_manifest(manifest))
    checked_hash = checked.media[audio.resolve()].sha256
    make_audio(audio, seconds=0.7)  # someone re-exports the take while the run starts
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        outcome = await run_checked(sim, checked, out)
        assert outcome.exit_code is ExitCode.JOBS_FAILED
        for job_id in ("j1", "j2"):
            state, error = _job(out, job_id)
            assert state is JobState.FAILED
            assert error is not None
            assert "intro_de.wav changed during the run" in error
        assert sim.ledger.generations == {}  # nothing submitted with unchecked media
        # the second job sharing the file learns it from the first: one upload, not two
        assert [u.filename for u in sim.ledger.uploads].count("intro_de.wav") == 1
        store = StateStore.read_only(out / STATE_NAME)
        try:
            assert store.media_id(checked_hash, sim.url) is None
        finally:
            store.close()
        # the next run checks the file as it is now, and goes through
        again = await run_fast(sim, manifest, out)
    assert again.exit_code is ExitCode.OK, again.rows


# 8. upload name and content type from the probed container --------------------------------


def _file_part(body: bytes) -> tuple[str, str]:
    """(filename, Content-Type) of the multipart part carrying the file."""
    head = body.split(b"\r\n\r\n", 2)[:2]
    headers = b"\r\n".join(head).decode("latin-1")
    name = re.search(r'filename="([^"]*)"', headers)
    kind = re.search(r"(?im)^Content-Type:\s*([^\r\n;]+)", headers)
    assert name is not None, headers
    assert kind is not None, headers
    return name.group(1), kind.group(1).strip()


@pytest.mark.anyio
async def test_an_upload_is_named_for_what_it_contains(tmp_path: Path) -> None:
    """A WAV named take1.flac passes preflight (judged by content): it goes up as take1.wav,
    audio/wav, since the server judges by the name."""
    manifest = project(tmp_path, ONE_JOB % "take1.flac")
    shutil.copy(tmp_path / "media" / "intro_de.wav", tmp_path / "media" / "take1.flac")
    async with serve(fast_sim()) as sim, gateway_proxy(sim.url) as proxy:
        outcome = await run_fast(sim, manifest, tmp_path / "out", base_url=proxy.url)
        parts = [_file_part(c.body) for c in proxy.seen if c.path.endswith("/media/upload")]
    assert ("take1.wav", "audio/wav") in parts
    assert ("intro.mp4", "video/mp4") in parts
    assert sorted(u.filename for u in job_uploads(sim.ledger)) == ["intro.mp4", "take1.wav"]
    assert outcome.exit_code is ExitCode.OK, outcome.rows


# 5. an output folder that cannot take a file: nothing is paid for -------------------------


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder that refuses new files even to root: a read-only tmpfs if this process may
    mount one, else /proc (no regular files can be created there)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if mount_tmpfs(folder, "ro,size=64k"):
        try:
            yield folder
        finally:
            umount(folder)
    else:
        yield Path("/proc")


def test_a_read_only_output_folder_stops_before_any_request(
    tmp_path: Path,
    read_only_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = project(tmp_path, tts_manifest(12))
    with sim_in_thread(fast_sim()) as sim:
        monkeypatch.setenv("PIXVERSE_API_KEY", "sim-key")
        monkeypatch.setenv("PIXVERSE_BASE_URL", sim.url)
        args = ["run", str(manifest), "--out", str(read_only_folder)]
        code = main([*args, "--state", str(tmp_path / "state.sqlite"), "--poll-interval", "0.02"])
        assert sim.ledger.requests == []
        assert sim.ledger.generations == {}
    assert code == ExitCode.USAGE
    err = [
        line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error: ")
    ]
    assert len(err) == 1, err
    assert err[0].startswith(f"error: output folder {read_only_folder}: cannot write there")
