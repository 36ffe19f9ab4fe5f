"""Keep going: `--keep-going` runs every valid job and reports the invalid ones; failures that
would recur are not retried night after night unless asked; suspect results are kept and
flagged, never regenerated on their own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.failed import FAILED_NAME
from pipeline.runner import ExitCode
from pipeline.simulator import serve
from pipeline.state import StateStore
from tests.harness import STATE_NAME, fast_sim, project, run_once, sim_in_thread

GENERATE = "/openapi/v2/video/lip_sync/generate"

BROKEN = """
version: 1
defaults: {tts_speaker: "1"}
jobs:
  - id: fine
    video: media/intro.mp4
    audio: media/intro_es.mp3
  - id: missing
    video: media/intro.mp4
    audio: media/nowhere.wav
  - id: too-long
    video: media/intro.mp4
    tts: {text: "%s"}
""" % ("x" * 201)


def test_without_keep_going_one_bad_job_stops_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = project(tmp_path, BROKEN)
    with sim_in_thread(fast_sim()) as sim:
        monkeypatch.setenv("PIXVERSE_BASE_URL", sim.url)
        monkeypatch.setenv("PIXVERSE_API_KEY", "sim-key")
        assert main(["-q", "run", str(manifest), "--out", str(tmp_path / "out")]) == 2
        assert sim.ledger.requests == []


def test_keep_going_runs_the_valid_jobs_and_reports_the_invalid_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = project(tmp_path, BROKEN)
    out = tmp_path / "out"
    with sim_in_thread(fast_sim()) as sim:
        monkeypatch.setenv("PIXVERSE_BASE_URL", sim.url)
        monkeypatch.setenv("PIXVERSE_API_KEY", "sim-key")
        assert main(["-q", "run", str(manifest), "--out", str(out)]) == 2
        stopped = capsys.readouterr().err.splitlines()
        code = main(
            [
                "-q",
                "run",
                str(manifest),
                "--out",
                str(out),
                "--keep-going",
                "--poll-interval",
                "0.02",
            ]
        )
        assert len(sim.ledger.generations) == 1
    assert code == ExitCode.JOBS_FAILED
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    jobs = {job["id"]: job for job in report["jobs"]}
    assert jobs["fine"]["state"] == "done"
    for job_id in ("missing", "too-long"):
        assert jobs[job_id]["state"] == "failed"
        assert jobs[job_id]["error_class"] == "ManifestError"
        # the same one-line message as the run stopped by preflight printed
        assert f"error: {jobs[job_id]['error']}" in stopped
    failed = yaml.safe_load((out / FAILED_NAME).read_text(encoding="utf-8"))
    assert [job["id"] for job in failed["jobs"]] == ["missing", "too-long"]
    assert report["summary"]["failed"] == 2
    assert report["problem"] == "--keep-going: 2 invalid jobs not run (see problems)"
    assert [f"error: {p}" for p in report["problems"]] == stopped


@pytest.mark.anyio
async def test_keep_going_leaves_an_invalid_jobs_paid_record_alone(tmp_path: Path) -> None:
    """A file gone missing for a night must not set the job's paid result aside."""
    manifest = project(tmp_path, BROKEN.split("  - id: missing")[0])
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        await run_once(sim, manifest, out)
        moved = tmp_path / "media" / "intro_es.mp3"
        moved.rename(tmp_path / "elsewhere.mp3")
        manifest.write_text(
            manifest.read_text(encoding="utf-8")
            + "  - {id: other, video: media/intro.mp4, tts: {text: hi}}\n",
            encoding="utf-8",
        )
        outcome = await run_once(sim, manifest, out, keep_going=True)
        assert outcome.exit_code is ExitCode.JOBS_FAILED
        store = StateStore.read_only(out / STATE_NAME)
        try:  # not set aside as a result no job wants: the job is still there, only invalid
            assert [(r.id, r.state.value) for r in store.jobs(archived=True)] == [
                ("fine", "done"),
                ("other", "done"),
            ]
        finally:
            store.close()
        (tmp_path / "elsewhere.mp3").rename(moved)
        again = await run_once(sim, manifest, out)
    assert again.exit_code is ExitCode.OK
    assert len(sim.ledger.generations) == 2  # `fine` once, `other` once
    store = StateStore.read_only(out / STATE_NAME)
    try:
        assert [r.id for r in store.jobs(archived=True)] == ["fine", "other"]
    finally:
        store.close()


FOR_GOOD = """
version: 1
defaults: {tts_speaker: "1"}
jobs:
  - id: moderated
    video: media/intro.mp4
    audio: media/bad.wav
  - id: banned
    video: media/intro.mp4
    tts: {text: "a forbidden line"}
  - id: unlucky
    video: media/intro.mp4
    tts: {text: "status eight"}
"""


def _for_good_project(tmp_path: Path) -> Path:
    manifest = project(tmp_path, FOR_GOOD)
    wav = (tmp_path / "media" / "intro_de.wav").read_bytes()
    (tmp_path / "media" / "bad.wav").write_bytes(wav[:-2000])
    return manifest


@pytest.mark.anyio
async def test_permanent_failures_are_not_retried_unless_asked(tmp_path: Path) -> None:
    """Before: every run sent 500054 and 400017 jobs again, night after night."""
    manifest = _for_good_project(tmp_path)
    out = tmp_path / "out"
    config = fast_sim(moderated_filenames=frozenset({"bad.wav"}), fail_probability=1.0)
    async with serve(config) as sim:
        first = await run_once(sim, manifest, out, max_attempts=1)
        assert {r.id: r.err_code for r in first.rows} == {
            "moderated": 500054,
            "banned": 400017,
            "unlucky": None,
        }
        sim.config.fail_probability = 0.0
        sent = len(sim.ledger.requests_to(GENERATE))
        second = await run_once(sim, manifest, out)
        # only the status-8 failure is sent again
        assert len(sim.ledger.requests_to(GENERATE)) == sent + 1
        assert {r.id: r.state for r in second.rows} == {
            "moderated": "failed",
            "banned": "failed",
            "unlucky": "done",
        }
        assert second.exit_code is ExitCode.JOBS_FAILED
        # fixed on the account's side: --redo for one, --retry-failed for the rest
        sim.config.moderated_filenames = frozenset()
        sim.config.tts_banned_words = frozenset()
        third = await run_once(sim, manifest, out, redo=frozenset({"banned"}))
        assert {r.id: r.state for r in third.rows}["banned"] == "done"
        assert {r.id: r.state for r in third.rows}["moderated"] == "failed"
        fourth = await run_once(sim, manifest, out, retry_failed=True)
    assert fourth.exit_code is ExitCode.OK


@pytest.mark.anyio
async def test_a_permanent_failure_is_retried_when_its_inputs_change(tmp_path: Path) -> None:
    manifest = _for_good_project(tmp_path)
    out = tmp_path / "out"
    async with serve(fast_sim(moderated_filenames=frozenset({"bad.wav"}))) as sim:
        await run_once(sim, manifest, out)
        manifest.write_text(
            manifest.read_text(encoding="utf-8").replace("a forbidden line", "a kind line"),
            encoding="utf-8",
        )
        again = await run_once(sim, manifest, out)
    assert {r.id: r.state for r in again.rows} == {
        "moderated": "failed",
        "banned": "done",
        "unlucky": "done",
    }


@pytest.mark.anyio
async def test_an_unknown_speaker_fails_for_good(tmp_path: Path) -> None:
    manifest = project(
        tmp_path,
        "version: 1\njobs:\n  - {id: a, video: media/intro.mp4, tts: {text: hi, speaker: '999'}}\n",
    )
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        first = await run_once(sim, manifest, out)
        assert first.rows[0].error_class == "ManifestError"
        speakers = len(sim.ledger.requests_to("/openapi/v2/video/lip_sync/tts_list"))
        second = await run_once(sim, manifest, out)
        # nothing pending: the speakers are not even asked for again
        assert len(sim.ledger.requests_to("/openapi/v2/video/lip_sync/tts_list")) == speakers
    assert second.rows[0].state == "failed"
    assert sim.ledger.generations == {}


SPOKEN = """
version: 1
jobs:
  - id: dubbed
    video: media/intro.mp4
    audio: media/intro_es.mp3
  - id: spoken
    video: media/intro.mp4
    tts: {text: "hello there", speaker: "1"}
"""


@pytest.mark.anyio
@pytest.mark.parametrize("flaw", ["short_results", "garbled_results"])
async def test_a_suspect_result_is_kept_flagged_and_not_regenerated(
    tmp_path: Path, flaw: str
) -> None:
    manifest = project(tmp_path, SPOKEN.split("  - id: spoken")[0])
    out = tmp_path / "out"
    async with serve(fast_sim(**{flaw: 1})) as sim:
        first = await run_once(sim, manifest, out)
        assert first.rows[0].state == "suspect"
        assert first.exit_code is ExitCode.JOBS_FAILED
        assert first.rows[0].error is not None
        reason = "shorter than its 2.0 s of audio" if flaw == "short_results" else "decode"
        assert reason in first.rows[0].error
        kept = (out / "dubbed.mp4").read_bytes()
        second = await run_once(sim, manifest, out)
        assert second.rows[0].state == "suspect"
        assert len(sim.ledger.generations) == 1
        assert (out / "dubbed.mp4").read_bytes() == kept
        third = await run_once(sim, manifest, out, redo=frozenset({"dubbed"}))
    assert third.rows[0].state == "done"
    assert third.exit_code is ExitCode.OK
    assert len(sim.ledger.generations) == 2
    assert (out / "superseded").is_dir()  # the suspect one, kept: it was paid for
    assert kept in [p.read_bytes() for p in (out / "superseded").iterdir()]


@pytest.mark.anyio
async def test_tts_results_are_checked_for_a_frame_not_a_length(tmp_path: Path) -> None:
    manifest = project(tmp_path, SPOKEN)
    async with serve(fast_sim(short_results=2)) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out", concurrency=1)
    states = {r.id: r.state for r in outcome.rows}
    assert states == {"dubbed": "suspect", "spoken": "done"}


def test_status_exits_1_on_a_suspect_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project(tmp_path, SPOKEN.split("  - id: spoken")[0])
    out = tmp_path / "out"
    with sim_in_thread(fast_sim(short_results=1)) as sim:
        args = ["-q", "run", str(manifest), "--out", str(out), "--poll-interval", "0.02"]
        assert main([*args, "--base-url", sim.url, "--api-key", "sim-key"]) == 1
    capsys.readouterr()
    assert main(["status", "--out", str(out), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["summary"]["suspect"] == 1
    assert "shorter than" in document["jobs"][0]["suspect"]
