"""Command-line conventions for unattended runs: dated and JSON logs with a run id and a start
line, -q/-v anywhere, every request under -v, --json, status exit codes, closed pipes, a wrong
base URL named, and --notify-url."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from aiohttp import web

from pipeline import notify
from pipeline.cli import main
from pipeline.client import ClientConfig, PixverseClient, key_fingerprint
from pipeline.errors import TransportError
from pipeline.simulator import Simulator, serve
from tests.harness import FAST_RETRY, REPO, fast_sim, project, run_once, sim_in_thread, tts_manifest

SECRET = "sk-live-SECRET-0123456789abcdef"
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"
FAILS = "  - {id: bad, video: media/intro.mp4, tts: {text: forbidden}}\n"


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    with sim_in_thread(fast_sim(api_keys=frozenset({SECRET}))) as simulator:
        monkeypatch.setenv("PIXVERSE_API_KEY", SECRET)
        monkeypatch.setenv("PIXVERSE_BASE_URL", simulator.url)
        yield simulator


def _run(manifest: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(manifest), "--out", str(out), "--poll-interval", "0.02", *extra]


def test_text_log_lines_are_dated_and_the_run_starts_with_a_start_line(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project(tmp_path, tts_manifest(2))
    out = tmp_path / "out"
    assert main([*_run(manifest, out), "--concurrency", "2"]) == 0
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines
    assert all(re.match(rf"^{ISO} (INFO|WARNING|ERROR|DEBUG) ", line) for line in lines), err
    report = json.loads((out / "report.json").read_text())
    start = lines[0].split(" ", 2)[2]
    assert start == (
        f"run {report['run_id']} started: pixverse-batch 0.1.0, manifest {manifest},"
        f" output {out}, concurrency 2, base URL {sim.url}, key {key_fingerprint(SECRET)}"
    )
    assert lines[-1].endswith(f"run {report['run_id']} ended: exit 0 (every job done)")
    assert SECRET not in err


def test_json_logs_carry_the_run_and_the_job(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project(tmp_path, tts_manifest(2) + FAILS)
    out = tmp_path / "out"
    # the format, like -q and -v, is taken after the command too
    assert main([*_run(manifest, out), "--log-format", "json"]) == 1
    err = capsys.readouterr().err
    events = [json.loads(line) for line in err.splitlines()]  # every line is one object
    run_id = json.loads((out / "report.json").read_text())["run_id"]
    assert events
    assert all(e["run_id"] == run_id for e in events)
    assert all(re.fullmatch(ISO, e["time"]) for e in events)
    assert all({"time", "level", "logger", "message"} <= set(e) for e in events)
    submitted = [e for e in events if "submitted as video" in e["message"]]
    assert {e["job_id"] for e in submitted} == {"job-0", "job-1"}
    for event in submitted:
        assert event["state"] == "generating"
        assert event["video_id"] == int(event["message"].split("video ")[1].split()[0])
        assert event["attempt"] == 1
    failed = next(e for e in events if e.get("job_id") == "bad" and "failed" in e["message"])
    assert failed["level"] == "warning"
    assert failed["state"] == "failed"
    assert failed["err_code"] == 400017
    assert failed["error_class"] == "JobError"
    assert SECRET not in err


def test_quiet_and_verbose_work_after_the_command_and_verbose_shows_each_request(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project(tmp_path, tts_manifest(1))
    assert main([*_run(manifest, tmp_path / "out"), "-v"]) == 0
    err = capsys.readouterr().err
    generate = next(r for r in sim.ledger.requests if r.path.endswith("/lip_sync/generate"))
    line = next(line for line in err.splitlines() if generate.trace_id in line)
    assert re.search(
        rf"DEBUG POST /openapi/v2/video/lip_sync/generate trace={generate.trace_id}"
        r" -> HTTP 200 ErrCode 0, \d+ ms$",
        line,
    ), line
    polls = [line for line in err.splitlines() if "GET /openapi/v2/video/result/" in line]
    assert polls
    assert SECRET not in err
    assert main(["balance", "-q"]) == 0
    assert main(["-q", "balance"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["balance", "--verbose"]) == 0
    assert "GET /openapi/v2/account/balance trace=" in capsys.readouterr().err


def test_json_output_of_validate_status_balance_and_speakers(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project(tmp_path, tts_manifest(2))
    out = tmp_path / "out"
    assert main(["validate", str(manifest), "--json"]) == 0
    validated = json.loads(capsys.readouterr().out)
    assert validated["ok"] is True
    assert validated["jobs"] == 2
    assert validated["media_files"] == 1
    assert validated["credits_estimate"] == sum(validated["credits_estimate_per_job"].values())
    assert main(_run(manifest, out)) == 0
    capsys.readouterr()
    assert main(["status", "--out", str(out), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["summary"]["done"] == 2
    assert [job["id"] for job in status["jobs"]] == ["job-0", "job-1"]
    assert {job["state"] for job in status["jobs"]} == {"done"}
    assert all(job["video_id"] in sim.ledger.generations for job in status["jobs"])
    assert main(["balance", "--json"]) == 0
    balance = json.loads(capsys.readouterr().out)
    assert balance["spendable"] == balance["credit_monthly"] + balance["credit_package"]
    assert main(["speakers", "--json"]) == 0
    speakers = json.loads(capsys.readouterr().out)
    assert {"speaker_id": "1", "name": speakers[0]["name"]} in speakers or speakers
    assert any(s["name"] == "Harper" for s in speakers)
    (tmp_path / "broken.yaml").write_text("version: 1\njobs: [{id: a, video: nope.mp4, tts: {}}]\n")
    assert main(["validate", str(tmp_path / "broken.yaml"), "--json"]) == 2
    captured = capsys.readouterr()
    problems = json.loads(captured.out)
    assert problems["ok"] is False
    assert problems["problems"] == [
        line.removeprefix("error: ") for line in captured.err.splitlines()
    ]


def test_status_exits_0_all_done_1_failed_75_unfinished(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project(tmp_path, tts_manifest(2))
    out = tmp_path / "out"
    assert main(_run(manifest, out)) == 0
    assert main(["status", "--out", str(out)]) == 0
    assert main(["status", str(manifest), "--out", str(out)]) == 0
    # the manifest grew: a job not started yet is unfinished
    manifest.write_text(tts_manifest(3))
    assert main(["status", str(manifest), "--out", str(out)]) == 75
    assert re.search(r"job-2 +new +not started", capsys.readouterr().out)
    manifest.write_text(tts_manifest(2) + FAILS)
    assert main(_run(manifest, out)) == 1
    assert main(["status", "--out", str(out)]) == 1
    assert main(["status", "--out", str(out), "--json"]) == 1


def test_a_closed_pipe_ends_quietly_with_141(tmp_path: Path, sim: Simulator) -> None:
    manifest = project(tmp_path, tts_manifest(3))
    out = tmp_path / "out"
    assert main(_run(manifest, out, "-q")) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for command in (["status", "--out", str(out)], ["speakers"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", *command],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        proc.stdout.close()  # the reader is gone before a line is written: `| head -0`
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 141, stderr
        assert b"Traceback" not in stderr
        assert b"BrokenPipe" not in stderr
        assert b"Exception ignored" not in stderr


@pytest.mark.anyio
async def test_nothing_answering_at_the_base_url_names_the_setting(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connection refused
        manifest = project(tmp_path, tts_manifest(2))
        async with serve(fast_sim()) as simulator:
            outcome = await run_once(
                simulator, manifest, tmp_path / "out", base_url=f"http://127.0.0.1:{port}"
            )
    assert outcome.exit_code == 75  # an outage looks the same; the next run may well work
    assert outcome.problem is not None
    assert "PIXVERSE_BASE_URL" in outcome.problem
    assert "--base-url" in outcome.problem
    assert f"http://127.0.0.1:{port}" in outcome.problem
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "PIXVERSE_BASE_URL" in report["problem"]
    assert report["problem_class"] == "TransientError"


@pytest.mark.anyio
async def test_a_resumed_run_where_nothing_answers_names_the_setting_too(tmp_path: Path) -> None:
    """No replay probe this time (checked within 24 h): the job's own error says it."""
    manifest = project(tmp_path, tts_manifest(1))
    async with serve(fast_sim()) as simulator:
        assert (await run_once(simulator, manifest, tmp_path / "out")).exit_code == 0
    manifest.write_text(tts_manifest(2))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        async with serve(fast_sim()) as simulator:
            outcome = await run_once(simulator, manifest, tmp_path / "out", base_url=url)
    assert outcome.exit_code == 75
    assert "PIXVERSE_BASE_URL" in (outcome.rows[1].error or "")


@pytest.mark.anyio
async def test_a_connection_lost_after_replies_is_not_blamed_on_the_base_url() -> None:
    config = ClientConfig(base_url="", api_key="sim-key", retry=FAST_RETRY)
    async with serve(fast_sim()) as simulator:
        config = replace(config, base_url=simulator.url)
        client = PixverseClient(config)
        await client.__aenter__()
        await client.balance()
    try:
        with pytest.raises(TransportError) as caught:
            await client.balance()  # the simulator is gone now
    finally:
        await client.__aexit__(None, None, None)
    assert "PIXVERSE_BASE_URL" not in str(caught.value)


@dataclass
class Hook:
    """A webhook on loopback that fails its first `failures` posts with HTTP 500."""

    failures: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""


@contextmanager
def webhook(failures: int = 0) -> Iterator[Hook]:
    hook = Hook(failures=failures)
    started, stop = threading.Event(), threading.Event()

    async def receive(request: web.Request) -> web.Response:
        hook.bodies.append(await request.json())
        if len(hook.bodies) <= hook.failures:
            return web.Response(status=500, text="try later")
        return web.Response(text="ok")

    async def main_loop() -> None:
        app = web.Application()
        app.router.add_post("/hooks/T000/SECRETPATH", receive)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        hook.url = f"http://127.0.0.1:{port}/hooks/T000/SECRETPATH"
        started.set()
        await anyio.to_thread.run_sync(stop.wait)
        await runner.cleanup()

    thread = threading.Thread(target=anyio.run, args=(main_loop,), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield hook
    finally:
        stop.set()
        thread.join(10)


def test_notify_url_gets_the_summary_retried_after_a_failure(
    tmp_path: Path,
    sim: Simulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(notify, "FIRST_WAIT", 0.01)
    manifest = project(tmp_path, tts_manifest(2) + FAILS)
    out = tmp_path / "out"
    with webhook(failures=1) as hook:
        assert main([*_run(manifest, out), "--notify-url", hook.url]) == 1
    assert len(hook.bodies) == 2  # the first answered 500: tried again
    body = hook.bodies[-1]
    report = json.loads((out / "report.json").read_text())
    assert body["run_id"] == report["run_id"]
    assert body["exit_code"] == 1
    assert body["summary"] == report["summary"]
    assert body["credits_this_run"] == report["credits_this_run"]
    assert body["failed_jobs"] == [{"id": "bad", "error": report["jobs"][2]["error"]}]
    assert "jobs" not in body
    assert body["text"].startswith(
        f"pixverse-batch run {report['run_id']}: exit 1 (some jobs failed"
    )
    assert "2/3 done, 1 failed" in body["text"]
    assert SECRET not in json.dumps(hook.bodies)
    err = capsys.readouterr().err
    assert "notification to 127.0.0.1 failed (try 1 of 3): HTTP 500" in err
    assert "SECRETPATH" not in err  # a webhook's path is its secret: the host only


def test_a_failed_notification_never_changes_the_exit_code(
    tmp_path: Path,
    sim: Simulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(notify, "FIRST_WAIT", 0.01)
    manifest = project(tmp_path, tts_manifest(1))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"
        assert main([*_run(manifest, tmp_path / "out"), "--notify-url", url]) == 0
    err = capsys.readouterr().err
    assert err.count("notification to 127.0.0.1 failed") == 3
    # a run stopped by preflight notifies too
    with webhook() as hook:
        bad = tmp_path / "bad.yaml"
        bad.write_text(
            "version: 1\njobs: [{id: a, video: media/nope.mp4, tts: {text: hi, speaker: '1'}}]\n"
        )
        assert (
            main(["run", str(bad), "--out", str(tmp_path / "out"), "--notify-url", hook.url]) == 2
        )
    assert [b["exit_code"] for b in hook.bodies] == [2]
    assert "field 'video'" in hook.bodies[0]["text"]


def test_sigterm_during_a_run_still_reports_and_notifies(tmp_path: Path) -> None:
    config = fast_sim(generation_seconds=400.0)  # 2 s per generation
    with sim_in_thread(config) as simulator, webhook() as hook:
        manifest = project(tmp_path, tts_manifest(2))
        out = tmp_path / "out"
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PIXVERSE_API_KEY": "sim-key",
            "PIXVERSE_BASE_URL": simulator.url,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", *_run(manifest, out), "--notify-url", hook.url],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        while not simulator.ledger.generations:
            anyio.run(anyio.sleep, 0.01)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 75
    report = json.loads((out / "report.json").read_text())
    assert report["exit_code"] == 75
    assert report["interrupted"] is True
    assert [b["exit_code"] for b in hook.bodies] == [75]
