"""What the morning reads: report.json and report.csv field by field, and failed.yaml, after a
run with failures, a run stopped by preflight or a signal, and a run killed and resumed."""

from __future__ import annotations

import csv
import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.cli import main
from pipeline.failed import FAILED_NAME
from pipeline.manifest import load_manifest
from pipeline.report import COLUMNS
from pipeline.simulator import serve
from tests.harness import STATE_NAME, fast_sim, project, run_once, sha256, sim_in_thread

MIXED = """
version: 1
defaults: {tts_speaker: "1"}
jobs:
  - id: good
    video: media/intro.mp4
    audio: media/intro_es.mp3
  - id: banned
    video: media/intro.mp4
    tts: {text: "a forbidden line"}
  - id: moderated
    video: media/intro.mp4
    audio: media/bad.wav
  - video: media/promo.mov
    dubs:
      es: {audio: media/promo_es.wav}
      ja: {tts: {text: "forbidden words"}}
  - id: clip
    video_id: 391504857968062
    dubs:
      de: {audio: media/remix_de.wav}
      fr: {tts: {text: "forbidden again", speaker: "3"}}
"""
FAILING = {"banned", "moderated", "promo-ja", "clip-fr"}


def mixed_project(tmp_path: Path) -> Path:
    manifest = project(tmp_path, MIXED)
    shutil.copy(tmp_path / "media" / "intro_de.wav", tmp_path / "media" / "bad.wav")
    return manifest


def read_report(
    out: Path,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[dict[str, str]]]:
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    with (out / "report.csv").open(encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        rows = list(reader)
    return report, {job["id"]: job for job in report["jobs"]}, rows


@pytest.mark.anyio
async def test_a_run_with_failures_is_reported_field_by_field(tmp_path: Path) -> None:
    manifest = mixed_project(tmp_path)
    out = tmp_path / "out"
    sim_config = fast_sim(moderated_filenames=frozenset({"bad.wav"}))
    async with serve(sim_config) as sim:
        outcome = await run_once(sim, manifest, out)
    ledger = sim.ledger
    assert outcome.exit_code == 1
    report, jobs, rows = read_report(out)

    # the run
    assert report["run_id"] == outcome.run_id
    assert report["version"] == "0.1.0"
    assert report["exit_code"] == 1
    assert report["problem"] is None
    started = datetime.fromisoformat(report["started_at"])
    finished = datetime.fromisoformat(report["finished_at"])
    assert started.utcoffset() is not None
    assert started <= finished
    assert report["credits_this_run"] == ledger.credits_net == outcome.credits_this_run
    assert report["credits_total"] == ledger.credits_net
    assert report["summary"] == {
        "jobs": 7,
        "done": 3,
        "failed": 4,
        "suspect": 0,
        "unfinished": 0,
        "credits": ledger.credits_net,
        "credits_estimated_jobs": 3,
        "ambiguous_submissions": 0,
    }
    assert report["failed_manifest"] == str(out / FAILED_NAME)

    # a done job
    good = jobs["good"]
    generation = next(g for g in ledger.generations.values() if g.video_id == good["video_id"])
    assert good["state"] == "done"
    assert good["run_id"] == outcome.run_id
    assert good["inputs"] == [
        {
            "field": "video",
            "path": "media/intro.mp4",
            "sha256": sha256(tmp_path / "media/intro.mp4"),
        },
        {
            "field": "audio",
            "path": "media/intro_es.mp3",
            "sha256": sha256(tmp_path / "media/intro_es.mp3"),
        },
    ]
    uploads = {u.media_id: u.filename for u in ledger.uploads}
    assert uploads[good["media_ids"]["video"]] == "intro.mp4"
    assert uploads[good["media_ids"]["audio"]] == "intro_es.mp3"
    assert good["trace_ids"] == [generation.trace_id]
    assert good["output"] == str(out / "good.mp4")
    assert good["bytes"] == (out / "good.mp4").stat().st_size
    assert good["duration"] == pytest.approx(2.0, abs=0.2)
    assert good["resolution"] == "160x90"
    assert good["credits"] == generation.credits
    assert good["credits_estimated"] is True
    assert good["attempts"] == 1
    assert set(good["stage_seconds"]) == {"pending", "submitting", "generating", "downloading"}
    assert all(seconds >= 0 for seconds in good["stage_seconds"].values())
    assert good["error"] is None
    assert good["error_class"] is None
    assert good["err_code"] is None
    assert good["err_msg"] is None

    # failed jobs: what made the error, and the trace id of the refused submission
    for job_id in FAILING:
        job = jobs[job_id]
        assert job["state"] == "failed", job_id
        assert job["error_class"] == "JobError", job_id
        assert job["output"] is None
        assert job["credits"] == 0
        assert len(job["trace_ids"]) == 1
        refused = [r for r in ledger.requests if r.trace_id == job["trace_ids"][0]]
        assert [r.err_code for r in refused] == [job["err_code"]]
    assert jobs["banned"]["err_code"] == 400017
    assert "content rules" in jobs["banned"]["err_msg"]
    assert jobs["banned"]["error"] == f"400017: {jobs['banned']['err_msg']}"
    assert jobs["banned"]["inputs"][1] == {
        "field": "tts",
        "speaker": "1",
        "text": "a forbidden line",
    }
    assert jobs["moderated"]["err_code"] == 500054
    assert jobs["clip-de"]["inputs"][0] == {"field": "video_id", "video_id": 391504857968062}

    # report.csv: the same rows, flattened
    assert [r["id"] for r in rows] == [job.id for job in load_manifest(manifest).jobs]
    by_id = {r["id"]: r for r in rows}
    assert by_id["good"]["run_id"] == outcome.run_id
    assert by_id["good"]["inputs"] == (
        f"video=media/intro.mp4@{sha256(tmp_path / 'media/intro.mp4')}"
        f" audio=media/intro_es.mp3@{sha256(tmp_path / 'media/intro_es.mp3')}"
    )
    assert by_id["good"]["trace_ids"] == generation.trace_id
    assert by_id["good"]["resolution"] == "160x90"
    assert by_id["good"]["media_ids"] == (
        f"video={good['media_ids']['video']} audio={good['media_ids']['audio']}"
    )
    assert by_id["banned"]["err_code"] == "400017"
    assert by_id["banned"]["error_class"] == "JobError"
    assert by_id["moderated"]["credits_estimated"] == "false"


@pytest.mark.anyio
async def test_failed_yaml_validates_and_runs_as_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = mixed_project(tmp_path)
    out = tmp_path / "out"
    sim_config = fast_sim(moderated_filenames=frozenset({"bad.wav"}))
    async with serve(sim_config) as sim:
        await run_once(sim, manifest, out)
        failed = out / FAILED_NAME
        document = yaml.safe_load(failed.read_text(encoding="utf-8"))
        assert document["version"] == 1
        assert document["output_dir"] == "retry"
        assert document["resume_from"] == ".pixverse-batch.sqlite"  # what its run paid for
        # paths relative to the output folder; fan-out written back as fan-out
        intro, speaker = "../media/intro.mp4", {"speaker": "1"}
        assert document["jobs"] == [
            {"id": "banned", "video": intro, "tts": {"text": "a forbidden line", **speaker}},
            {"id": "moderated", "video": intro, "audio": "../media/bad.wav"},
            {
                "video": "../media/promo.mov",
                "dubs": {"ja": {"tts": {"text": "forbidden words", **speaker}}},
            },
            {
                "id": "clip",
                "video_id": 391504857968062,
                "dubs": {"fr": {"tts": {"text": "forbidden again", "speaker": "3"}}},
            },
        ]
        assert main(["validate", str(failed)]) == 0
        assert "4 jobs" in capsys.readouterr().out
        assert {job.id for job in load_manifest(failed).jobs} == FAILING
        # fixed on the account's side: the same file runs, and its jobs are done
        sim.config.tts_banned_words = frozenset()
        sim.config.moderated_filenames = frozenset()
        again = await run_once(sim, failed, out / "retry")
    assert again.exit_code == 0
    assert {row.id for row in again.rows if row.state == "done"} == FAILING
    assert not (out / "retry" / FAILED_NAME).exists()


@pytest.mark.anyio
async def test_a_run_without_failures_removes_an_old_failed_yaml(tmp_path: Path) -> None:
    manifest = mixed_project(tmp_path)
    out = tmp_path / "out"
    async with serve(fast_sim(moderated_filenames=frozenset({"bad.wav"}))) as sim:
        first = await run_once(sim, manifest, out)
        assert (out / FAILED_NAME).exists()
        sim.config.tts_banned_words = frozenset()
        sim.config.moderated_filenames = frozenset()
        # moderation and content rules fail for good: the next run retries them when asked
        second = await run_once(sim, manifest, out, retry_failed=True)
    assert second.exit_code == 0
    assert not (out / FAILED_NAME).exists()
    report, jobs, _ = read_report(out)
    assert report["run_id"] == second.run_id != first.run_id
    assert report["failed_manifest"] is None
    # this run paid only for the four that failed before; the total counts both runs
    assert report["credits_this_run"] == sum(jobs[j]["credits"] for j in FAILING)
    assert report["credits_total"] == sum(job["credits"] for job in jobs.values())


def test_a_run_stopped_by_preflight_replaces_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The next morning must not read the previous night's report as tonight's."""
    manifest = project(
        tmp_path,
        """
version: 1
jobs:
  - {id: a, video: media/intro.mp4, audio: media/intro_es.mp3}
  - {id: b, video: media/intro.mp4, tts: {text: "forbidden", speaker: "1"}}
  - {id: c, video: media/promo.mov, audio: media/promo_es.wav}
""",
    )
    out = tmp_path / "out"
    with sim_in_thread(fast_sim()) as sim:
        monkeypatch.setenv("PIXVERSE_API_KEY", "sim-key")
        monkeypatch.setenv("PIXVERSE_BASE_URL", sim.url)
        assert main(["run", str(manifest), "--out", str(out), "--poll-interval", "0.02"]) == 1
        assert (out / FAILED_NAME).exists()
        before, _, _ = read_report(out)
        sent = len(sim.ledger.requests)
        (tmp_path / "media" / "promo_es.wav").unlink()  # c's audio, gone before tonight
        capsys.readouterr()
        assert main(["run", str(manifest), "--out", str(out)]) == 2
        assert len(sim.ledger.requests) == sent  # nothing sent
    err = capsys.readouterr().err
    problem = f"job 'c' field 'audio': {tmp_path / 'media' / 'promo_es.wav'}: file not found"
    assert f"error: {problem}" in err
    report, jobs, rows = read_report(out)
    assert report["run_id"] != before["run_id"]
    assert report["exit_code"] == 2
    assert report["problem"] == problem
    assert report["problems"] == [problem]
    assert report["problem_class"] == "ManifestError"
    assert report["credits_this_run"] == 0
    assert report["credits_total"] == before["credits_total"]
    assert report["failed_manifest"] is None
    assert not (out / FAILED_NAME).exists()  # last night's would read as tonight's
    # each job: its state from the state file, and the one-line problem where it has one
    assert jobs["a"]["state"] == "done"
    assert jobs["a"]["error"] is None
    assert jobs["b"]["state"] == "failed"
    assert jobs["c"]["state"] == "done"
    assert jobs["c"]["error"] == problem
    assert jobs["c"]["error_class"] == "ManifestError"
    assert jobs["c"]["inputs"][1] == {
        "field": "audio",
        "path": "media/promo_es.wav",
        "sha256": None,
    }
    assert {r["run_id"] for r in rows} == {report["run_id"]}


def test_a_manifest_that_does_not_load_still_replaces_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text('{"run_id": "last night"}')
    (out / FAILED_NAME).write_text("version: 1\n")
    manifest = tmp_path / "nightly.yaml"
    manifest.write_text("version: 1\njobs: [{id: a, video: x.mp4, audio: y.wav, speed: 2}]\n")
    monkeypatch.setenv("PIXVERSE_API_KEY", "k")
    assert main(["run", str(manifest), "--out", str(out)]) == 2
    report, jobs, rows = read_report(out)
    assert report["run_id"] != "last night"
    assert report["exit_code"] == 2
    # the files are checked in the same pass (README: every problem at once)
    assert report["problems"] == [
        "job 'a' field 'speed': unknown field"
        " (allowed: audio, dubs, extend, id, output, tts, video, video_id)",
        f"job 'a' field 'video': {tmp_path / 'x.mp4'}: file not found",
        f"job 'a' field 'audio': {tmp_path / 'y.wav'}: file not found",
    ]
    assert jobs == {}
    assert rows == []
    assert not (out / FAILED_NAME).exists()
    # the manifest's own output_dir is found even so, and a folder that is not there is not made
    manifest.write_text("version: 1\noutput_dir: elsewhere\njobs: [{speed: 2}]\n")
    assert main(["run", str(manifest)]) == 2
    assert not (tmp_path / "elsewhere").exists()
    (tmp_path / "elsewhere").mkdir()
    assert main(["run", str(manifest)]) == 2
    assert json.loads((tmp_path / "elsewhere" / "report.json").read_text())["exit_code"] == 2


def test_an_unknown_speaker_fails_that_job_alone_and_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = project(
        tmp_path,
        """
version: 1
jobs:
  - {id: a, video: media/intro.mp4, audio: media/intro_es.mp3}
  - {id: b, video: media/intro.mp4, tts: {text: "hello", speaker: "no-such-voice"}}
""",
    )
    out = tmp_path / "out"
    with sim_in_thread(fast_sim()) as sim:
        monkeypatch.setenv("PIXVERSE_API_KEY", "sim-key")
        monkeypatch.setenv("PIXVERSE_BASE_URL", sim.url)
        assert main(["run", str(manifest), "--out", str(out), "--poll-interval", "0.02"]) == 1
    _, jobs, _ = read_report(out)
    assert jobs["a"]["state"] == "done"
    assert jobs["b"]["state"] == "failed"
    assert jobs["b"]["error"] == (
        "job 'b' field 'tts.speaker': unknown speaker 'no-such-voice'"
        " (see `pixverse-batch speakers`)"
    )
    assert jobs["b"]["error_class"] == "ManifestError"
    failed = yaml.safe_load((out / FAILED_NAME).read_text())
    assert [job["id"] for job in failed["jobs"]] == ["b"]


def test_state_file_of_the_stopped_run_is_read_under_its_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused because another run holds the state file: exit 3, and that run's report (here,
    none yet) is left alone."""
    from pipeline.state import StateStore

    manifest = project(
        tmp_path, "version: 1\njobs: [{id: a, video: media/intro.mp4, audio: media/nope.wav}]\n"
    )
    out = tmp_path / "out"
    holder = StateStore.open(out / STATE_NAME)
    monkeypatch.setenv("PIXVERSE_API_KEY", "k")
    try:
        assert main(["run", str(manifest), "--out", str(out)]) == 3
    finally:
        holder.close()
    assert not (out / "report.json").exists()
