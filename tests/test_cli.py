"""The command line: exit codes, preflight, the lock, key secrecy, and real processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.simulator import Simulator
from pipeline.state import StateStore
from tests.harness import REPO, STATE_NAME, fast_sim, project, sim_in_thread, tts_manifest
from tests.media_factory import make_audio, make_truncated, make_video

SECRET = "sk-live-SECRET-0123456789abcdef"
# a text log line: an ISO 8601 time with its UTC offset, then the level
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) ")


@pytest.fixture
def sim_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    config = fast_sim(api_keys=frozenset({"sim-key", SECRET}))
    with sim_in_thread(config) as sim:
        monkeypatch.setenv("PIXVERSE_API_KEY", "sim-key")
        monkeypatch.setenv("PIXVERSE_BASE_URL", sim.url)
        yield sim


def job_yaml(video: str = "media/intro.mp4", voice: str = "audio: media/intro_es.mp3") -> str:
    return f"version: 1\njobs:\n  - id: j1\n    video: {video}\n    {voice}\n"


def _oversized(tmp: Path) -> str:
    return "version: 1\nlimits: {video_max_mb: 0.001}\n" + job_yaml().split("\n", 1)[1]


PREFLIGHT_CASES: dict[str, tuple[str, str]] = {
    # name: (manifest text, a fragment the one-line error must contain)
    "unknown field": (job_yaml() + "    speed: 2\n", "job 'j1' field 'speed': unknown field"),
    "bad id": (job_yaml().replace("id: j1", "id: 'no spaces'"), "field 'id'"),
    "both video sources": (
        job_yaml() + "    video_id: 391504857968062\n",
        "field 'video': give exactly one",
    ),
    "missing file": (job_yaml(video="media/nope.mp4"), "field 'video': "),
    "empty file": (job_yaml(video="media/empty.mp4"), "file is empty"),
    "not a regular file": (job_yaml(video="media"), "not a regular file"),
    "not media": (job_yaml(video="media/text.mp4"), "field 'video'"),
    "truncated": (job_yaml(video="media/cut.mp4"), "field 'video'"),
    "wrong container": (job_yaml(video="media/clip.mkv"), "container matroska not allowed"),
    "audio as video": (job_yaml(video="media/intro_es.mp3"), "is audio, expected video"),
    # a long video with an audio dub is a long job (cut into segments); with a TTS voice,
    # whose timing is not known in advance, it cannot be cut to match
    "video too long": (
        job_yaml(video="media/long.mp4", voice="tts: {text: hi, speaker: '1'}"),
        "over the limit of 30 s; to run a longer video, give its dub as an audio file",
    ),
    "video too wide": (job_yaml(video="media/wide.mp4"), "over the limit of 1920 px"),
    "audio too long": (
        job_yaml(voice="audio: media/long.wav"),
        "is longer than the video (2.0 s): add `extend: loop`",
    ),
    "video too large": (_oversized(Path()), "over the limit of 0.001 MB"),
    "audio too large": (
        "version: 1\nlimits: {audio_max_mb: 0.001}\n" + job_yaml().split("\n", 1)[1],
        "field 'audio': intro_es.mp3: 0.0 MB is over the limit of 0.001 MB",
    ),
    "tts too long": (
        job_yaml(voice=f"tts: {{text: '{'x' * 201}', speaker: '1'}}"),
        "201 characters",
    ),
    "tts empty": (job_yaml(voice="tts: {text: '  ', speaker: '1'}"), "is empty"),
}


@pytest.fixture(scope="module")
def bad_media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bad-media")
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("not a video")
    make_truncated(folder / "cut.mp4")
    make_video(folder / "clip.mkv")
    make_video(folder / "long.mp4", seconds=31, fps=1)
    make_video(folder / "wide.mp4", width=2000, height=100, fps=1)
    make_audio(folder / "long.wav", seconds=31)
    return folder


@pytest.mark.parametrize("case", sorted(PREFLIGHT_CASES))
def test_preflight_failures_exit_2_and_send_nothing(
    case: str,
    tmp_path: Path,
    bad_media: Path,
    sim_env: object,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text, fragment = PREFLIGHT_CASES[case]
    manifest = project(tmp_path, text)
    shutil.copytree(bad_media, tmp_path / "media", dirs_exist_ok=True)
    assert main(["run", str(manifest), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any(fragment in line for line in err), err
    # the run's start and end lines (dated) aside, one-line errors only: no traceback
    assert all(line.startswith("error: ") for line in err if not LOG_LINE.match(line)), err
    assert sim_env.ledger.requests == []  # type: ignore[attr-defined]
    assert not (tmp_path / "out").exists()


def test_every_problem_is_reported_at_once(
    tmp_path: Path, sim_env: object, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project(
        tmp_path,
        """
version: 1
jobs:
  - {id: a, video: media/missing.mp4, audio: media/intro_es.mp3}
  - {id: b, video: media/intro.mp4, tts: {text: "", speaker: "1"}}
  - {id: c, video: media/intro.mp4, audio: media/missing.wav}
""",
    )
    assert main(["validate", str(manifest)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3
    assert {line.split("'")[1] for line in err} == {"a", "b", "c"}


def test_validate_accepts_the_example_and_sends_nothing(
    sim_env: object, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(REPO / "pipeline" / "examples" / "example.yaml")]) == 0
    out = capsys.readouterr().out
    assert "7 jobs" in out
    assert "about 336 credits" in out  # what the simulator's price model charges the demo
    # the long job's plan: 70 s cut into three segments, each priced by its own seconds
    assert "talk-es: 70.0 s -> 3 segments: 0-" in out
    assert sim_env.ledger.requests == []  # type: ignore[attr-defined]


def test_missing_api_key_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PIXVERSE_API_KEY", raising=False)
    manifest = project(tmp_path, tts_manifest(1))
    assert main(["run", str(manifest)]) == 2
    assert "PIXVERSE_API_KEY" in capsys.readouterr().err


def test_a_second_run_on_a_locked_state_exits_3_and_sends_nothing(
    tmp_path: Path, sim_env: object, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project(tmp_path, tts_manifest(2))
    out = tmp_path / "out"
    holder = StateStore.open(out / STATE_NAME)  # an active run
    try:
        assert main(["run", str(manifest), "--out", str(out)]) == 3
    finally:
        holder.close()
    assert "another run" in capsys.readouterr().err
    assert sim_env.ledger.requests == []  # type: ignore[attr-defined]


def test_run_status_speakers_balance_and_exit_codes(
    tmp_path: Path, sim_env: object, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project(tmp_path, tts_manifest(2))
    out = tmp_path / "out"
    assert main(["run", str(manifest), "--out", str(out), "--poll-interval", "0.02"]) == 0
    assert "2 jobs: 2 done, 0 failed, 0 unfinished" in capsys.readouterr().out
    sent = len(sim_env.ledger.requests)  # type: ignore[attr-defined]
    assert main(["status", "--out", str(out)]) == 0
    status = capsys.readouterr().out
    assert "job-0" in status
    assert "done" in status
    assert len(sim_env.ledger.requests) == sent  # type: ignore[attr-defined]  # status is offline
    assert main(["speakers"]) == 0
    speakers = capsys.readouterr().out
    assert "Harper" in speakers
    assert "Auto" in speakers
    assert main(["balance"]) == 0
    assert "credits" in capsys.readouterr().out


def test_api_key_never_appears_in_logs_state_or_reports(
    tmp_path: Path,
    sim_env: object,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PIXVERSE_API_KEY", SECRET)
    config = sim_env.config  # type: ignore[attr-defined]
    config.transient_errors = 1
    config.drop_generate_replies = 1
    config.truncate_downloads = 1
    manifest = project(
        tmp_path,
        tts_manifest(2) + "  - {id: bad, video: media/intro.mp4, tts: {text: forbidden}}\n",
    )
    out = tmp_path / "out"
    args = ["--poll-interval", "0.02", "--request-timeout", "2"]
    code = main(["-v", "run", str(manifest), "--out", str(out), *args])
    assert code == 1  # the "forbidden" job failed, the rest are done
    monkeypatch.setenv("PIXVERSE_API_KEY", SECRET + "-revoked")
    assert main(["-v", "balance"]) == 4
    captured = capsys.readouterr()
    assert "400017" in captured.out + captured.err  # the run did log its failures
    for text in (captured.out, captured.err):
        assert SECRET not in text
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_run_against_the_sim_command_in_another_process(tmp_path: Path) -> None:
    """As a user would: `pixverse-batch sim` in one process, `pixverse-batch run` in another."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "sim",
            "--port",
            str(port),
            "--api-key",
            "k-1",
            "--time-scale",
            "0.005",
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None
        assert "listening on" in sim.stdout.readline()
        manifest = project(tmp_path)
        run_env = {
            **env,
            "PIXVERSE_API_KEY": "k-1",
            "PIXVERSE_BASE_URL": f"http://127.0.0.1:{port}",
        }
        done = _cli(
            "run",
            str(manifest),
            "--out",
            str(tmp_path / "out"),
            "--poll-interval",
            "0.05",
            env=run_env,
        )
        assert done.returncode == 0, done.stderr
        assert "6 jobs: 6 done" in done.stdout
        assert len(list((tmp_path / "out").glob("*.mp4"))) == 6
        wrong = _cli("balance", env={**run_env, "PIXVERSE_API_KEY": "wrong"})
        assert wrong.returncode == 4
    finally:
        sim.send_signal(signal.SIGINT)
        sim.wait(10)
        if sim.stdout is not None:
            sim.stdout.close()
    assert sim.returncode == 0


def _generating(state: Path) -> int:
    if not state.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT count(*) FROM jobs WHERE state='generating'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return 0
    return int(row[0])


def _run_env(sim: Simulator) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PIXVERSE_API_KEY": "sim-key",
        "PIXVERSE_BASE_URL": sim.url,
    }


def _run_args(manifest: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(manifest), "--out", str(out), "--poll-interval", "0.05", *extra]


def _wait_generating(state: Path, count: int) -> None:
    deadline = time.monotonic() + 30
    while _generating(state) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _generating(state) >= count


def test_kill_9_mid_run_then_rerun_pays_for_nothing_twice(tmp_path: Path) -> None:
    config = fast_sim(generation_seconds=200.0)  # 1 s per generation
    with sim_in_thread(config) as sim:
        manifest = project(tmp_path, tts_manifest(8))
        out = tmp_path / "out"
        env = _run_env(sim)
        args = _run_args(manifest, out, "--concurrency", "3")
        victim = subprocess.Popen(
            [sys.executable, "-m", "pipeline", *args], env=env, stderr=subprocess.DEVNULL
        )
        _wait_generating(out / STATE_NAME, 3)
        victim.kill()  # SIGKILL: no cleanup of any kind
        victim.wait(10)
        assert 3 <= len(sim.ledger.generations) < 8
        assert not (out / "report.json").exists()  # killed: no report, nothing stale either
        again = _cli(*args, env=env)
        assert again.returncode == 0, again.stderr
        assert len(sim.ledger.generations) == 8
        assert sim.ledger.duplicate_bodies() == []
        assert len(list(out.glob("*.mp4"))) == 8
    # the resumed run's report: its own id (from its start line), every job whole, each with
    # the one trace id it was submitted with, and both runs' spend as the total
    report = json.loads((out / "report.json").read_text())
    started = re.search(r"INFO run (\S+) started: ", again.stderr)
    assert started is not None
    assert report["run_id"] == started.group(1)
    assert report["exit_code"] == 0
    assert report["credits_total"] == sim.ledger.credits_net
    assert 0 < report["credits_this_run"] < report["credits_total"]  # the killed run paid too
    traces = {g.video_id: g.trace_id for g in sim.ledger.generations.values()}
    for job in report["jobs"]:
        assert job["state"] == "done"
        assert job["trace_ids"] == [traces[job["video_id"]]]
        assert job["resolution"] == "160x90"


def test_sigint_leaves_a_resumable_run_with_exit_75(tmp_path: Path) -> None:
    config = fast_sim(generation_seconds=400.0)  # 2 s per generation
    with sim_in_thread(config) as sim:
        manifest = project(tmp_path, tts_manifest(4))
        out = tmp_path / "out"
        env = _run_env(sim)
        # slow start sends one submission at a time: the signal may catch one unanswered,
        # which the next run re-sends only after its deadline (the request timeout + 10 %)
        run_args = _run_args(manifest, out, "--request-timeout", "2")
        args = [sys.executable, "-m", "pipeline", *run_args]
        proc = subprocess.Popen(
            args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        _wait_generating(out / STATE_NAME, 1)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=30)
        assert proc.returncode == 75
        assert "unfinished" in stdout
        report = (out / "report.json").read_text()
        assert '"interrupted": true' in report
        assert json.loads(report)["exit_code"] == 75
        again = _cli(*run_args, env=env)
        assert again.returncode == 0
        assert len(sim.ledger.generations) == 4
        assert sim.ledger.duplicate_bodies() == []


def test_demo_runs_the_example_against_the_bundled_simulator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--out", str(out)]) == 0
    assert "7 jobs: 7 done" in capsys.readouterr().out
    assert len(list(out.glob("*.mp4"))) == 7
    assert (out / "report.json").exists()


def test_run_options_state_base_url_key_attempts_and_concurrency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PIXVERSE_API_KEY", raising=False)
    monkeypatch.setenv("PIXVERSE_BASE_URL", "http://127.0.0.1:9")  # overridden by --base-url
    config = fast_sim(fail_probability=1.0)
    with sim_in_thread(config) as sim:
        manifest = project(tmp_path, tts_manifest(2))
        state = tmp_path / "elsewhere" / "state.sqlite"
        code = main(
            [
                "run", str(manifest), "--out", str(tmp_path / "out"), "--state", str(state),
                "--base-url", sim.url, "--api-key", "sim-key", "--max-attempts", "2",
                "--concurrency", "1", "--poll-interval", "0.02",
            ]
        )  # fmt: skip
        assert code == 1  # every generation fails (status 8): both jobs failed after 2 tries
        assert len(sim.ledger.generations) == 4
        assert sim.ledger.peak_concurrent == 1
    assert state.exists()
    assert not (tmp_path / "out" / STATE_NAME).exists()
    capsys.readouterr()
    assert main(["status", "--state", str(state)]) == 1  # as run: some jobs failed
    status = capsys.readouterr().out
    assert status.count("failed") >= 2
    assert "attempts=2" in status


def test_an_output_folder_that_is_a_file_is_a_usage_error(
    tmp_path: Path, sim_env: object, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project(tmp_path, tts_manifest(1))
    (tmp_path / "taken").write_text("a file")
    assert main(["run", str(manifest), "--out", str(tmp_path / "taken")]) == 2
    assert "output folder" in capsys.readouterr().err
    assert sim_env.ledger.requests == []  # type: ignore[attr-defined]


def test_redo_of_an_unknown_job_is_a_usage_error(
    tmp_path: Path, sim_env: object, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project(tmp_path, tts_manifest(1))
    assert main(["run", str(manifest), "--redo", "nope"]) == 2
    assert "--redo: no job with id 'nope'" in capsys.readouterr().err


def test_the_lock_is_checked_before_any_media_is_probed(
    tmp_path: Path, sim_env: object, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project(tmp_path, job_yaml(video="media/missing.mp4"))
    out = tmp_path / "out"
    holder = StateStore.open(out / STATE_NAME)
    try:
        assert main(["run", str(manifest), "--out", str(out)]) == 3  # not 2: it never got there
    finally:
        holder.close()
    assert "another run" in capsys.readouterr().err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_before_the_run_starts_exits_75_without_a_traceback(
    tmp_path: Path, signum: int
) -> None:
    """Stopped while the account checks wait on a silent server: a clean, resumable exit."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections, never answers
    try:
        port = silent.getsockname()[1]
        manifest = project(tmp_path, tts_manifest(1))
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PIXVERSE_API_KEY": "k",
            "PIXVERSE_BASE_URL": f"http://127.0.0.1:{port}",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", *_run_args(manifest, tmp_path / "out")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        silent.settimeout(60)
        connection, _ = silent.accept()  # the run is past preflight, inside its first request
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)
        connection.close()
    finally:
        silent.close()
    assert proc.returncode == 75
    assert "Traceback" not in stderr, stderr
    assert "run the same command again" in stderr
    # stopped before its jobs ran, the run still leaves its report
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    started = re.search(r"INFO run (\S+) started: ", stderr)
    assert started is not None
    assert report["run_id"] == started.group(1)
    assert report["exit_code"] == 75
    assert report["problem"] == "interrupted"
    assert [job["state"] for job in report["jobs"]] == ["unfinished:pending"]
    assert report["jobs"][0]["error"] == "not finished: interrupted"


def test_output_dir_from_the_manifest_and_out_overrides_it(
    tmp_path: Path, sim_env: object, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project(
        tmp_path, tts_manifest(1).replace("version: 1", "version: 1\noutput_dir: dubs")
    )
    assert main(["-q", "run", str(manifest), "--poll-interval", "0.02"]) == 0
    assert (tmp_path / "dubs" / "job-0.mp4").exists()  # relative to the manifest's folder
    assert (tmp_path / "dubs" / "report.json").exists()
    assert (
        main(
            [
                "-q",
                "run",
                str(manifest),
                "--out",
                str(tmp_path / "other"),
                "--poll-interval",
                "0.02",
            ]
        )
        == 0
    )
    assert (tmp_path / "other" / "job-0.mp4").exists()
    assert main(["status", str(manifest)]) == 0  # finds dubs/ through the manifest
    assert "job-0" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_non_finite_or_non_positive_seconds_are_refused(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project(tmp_path, tts_manifest(1))
    for flag in ("--poll-interval", "--max-wait"):
        with pytest.raises(SystemExit) as caught:
            main(["run", str(manifest), flag, value])
        assert caught.value.code == 2
    assert "must be a number above 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("base_url", "fragment"),
    [
        ("127.0.0.1:8787", "give http(s)://host"),
        ("ftp://example.com", "give http(s)://host"),
        ("http://127.0.0.1:8787/openapi/v2", "leave out /openapi/v2"),
    ],
)
def test_a_malformed_base_url_is_a_usage_error(
    base_url: str, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project(tmp_path, tts_manifest(1))
    code = main(["run", str(manifest), "--base-url", base_url, "--api-key", "k"])
    assert code == 2
    assert fragment in capsys.readouterr().err


def test_a_base_url_that_is_not_the_api_is_a_usage_error_not_an_outage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project(tmp_path, tts_manifest(1))
    with sim_in_thread(fast_sim()) as sim:
        # a real server, but the API is not at this path: every call is an HTML 404
        code = main(["run", str(manifest), "--base-url", sim.url + "/v9", "--api-key", "sim-key"])
        assert sim.ledger.generations == {}
    assert code == 2
    assert "is the base URL right?" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags",
    [["--limit", "0"], ["--time-scale", "-1"], ["--fail-probability", "2"], ["--credits", "0"]],
)
def test_the_simulator_refuses_meaningless_knobs(flags: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["sim", *flags])
    assert caught.value.code == 2
