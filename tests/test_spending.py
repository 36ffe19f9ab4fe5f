"""Before spending: `run --dry-run` forecasts each job and sends nothing, `validate` estimates
what is left, `--max-credits` caps a run's spend, and every resubmission says why and what it
costs."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from pathlib import Path

import pytest

from pipeline.budget import Budget
from pipeline.cli import main
from pipeline.runner import ExitCode
from pipeline.simulator import serve
from tests.harness import STATE_NAME, fast_sim, project, run_once, sim_in_thread, tts_manifest

GENERATE = "/openapi/v2/video/lip_sync/generate"
UPLOAD = "/openapi/v2/media/upload"

PLANNED = """
version: 1
defaults: {tts_speaker: "1"}
jobs:
  - id: same
    video: media/intro.mp4
    audio: media/intro_es.mp3
  - id: changed
    video: media/intro.mp4
    audio: media/intro_de.wav
  - id: lost-file
    video: media/promo.mov
    audio: media/promo_es.wav
  - id: moderated
    video: media/intro.mp4
    audio: media/bad.wav
"""


def _dump(state: Path) -> list[tuple[object, ...]]:
    """Every row of the state file's tables, to tell whether anything changed."""
    conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        rows: list[tuple[object, ...]] = []
        for table in ("jobs", "events", "media", "gateway_checks", "meta"):
            rows += [(table, *r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY 1")]
        return rows
    finally:
        conn.close()


def _planned_project(tmp_path: Path) -> tuple[Path, Path]:
    manifest = project(tmp_path, PLANNED)
    # a file of its own: the simulator moderates by file name, uploads are cached by content
    wav = (tmp_path / "media" / "intro_de.wav").read_bytes()
    (tmp_path / "media" / "bad.wav").write_bytes(wav[:-2000])
    return manifest, tmp_path / "out"


def test_dry_run_forecasts_each_job_sends_nothing_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, out = _planned_project(tmp_path)
    config = fast_sim(moderated_filenames=frozenset({"bad.wav"}))
    with sim_in_thread(config) as sim:
        monkeypatch.setenv("PIXVERSE_API_KEY", "sim-key")
        monkeypatch.setenv("PIXVERSE_BASE_URL", sim.url)
        assert main(["-q", "run", str(manifest), "--out", str(out), "--poll-interval", "0.02"]) == 1
        # the morning after: one input changed, one result went missing, a job was added
        text = manifest.read_text(encoding="utf-8").replace("intro_de.wav", "remix_de.wav")
        text += "  - {id: added, video: media/intro.mp4, tts: {text: 'hello'}}\n"
        manifest.write_text(text, encoding="utf-8")
        (out / "lost-file.mp4").unlink()
        before, files = _dump(out / STATE_NAME), sorted(p.name for p in out.rglob("*"))
        sent = len(sim.ledger.requests)
        capsys.readouterr()

        code = main(["run", str(manifest), "--out", str(out), "--dry-run"])

        printed = capsys.readouterr().out
        assert code == 0
        assert len(sim.ledger.requests) == sent  # not a single request, read-only or not
        assert _dump(out / STATE_NAME) == before
        assert sorted(p.name for p in out.rglob("*")) == files
        lines = {line.split()[0]: line for line in printed.splitlines() if line.strip()}
        assert lines["same"].split()[1] == "skip"
        assert lines["changed"].split()[1] == "resubmit"
        assert "audio (remix_de.wav) changed" in lines["changed"]
        assert "about 4 credits" in lines["changed"]
        assert lines["lost-file"].split()[1] == "download"
        assert lines["moderated"].split()[1] == "held"
        assert "500054" in lines["moderated"]
        assert "--retry-failed" in lines["moderated"]
        assert lines["added"].split()[1] == "submit"
        assert "about 4 credits" in lines["added"]
        assert "about 8 credits to submit" in printed
        assert (
            main(["run", str(manifest), "--out", str(out), "--dry-run", "--max-credits", "4"]) == 0
        )
        capped = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
        assert capped["changed"].split()[1] == "resubmit"
        assert capped["added"].split()[1] == "over-cap"
        assert "would pass --max-credits 4" in capped["added"]
        assert len(sim.ledger.requests) == sent
        assert _dump(out / STATE_NAME) == before

        # the forecast holds: the run pays for exactly the two it named
        generates = len(sim.ledger.requests_to(GENERATE))
        code = main(["-q", "run", str(manifest), "--out", str(out), "--poll-interval", "0.02"])
        assert code == 1  # `moderated` still failed
        assert len(sim.ledger.requests_to(GENERATE)) == generates + 2


def test_dry_run_names_parked_and_other_key_jobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = project(tmp_path, tts_manifest(3))
    out = tmp_path / "out"
    with sim_in_thread(fast_sim()) as sim:
        monkeypatch.setenv("PIXVERSE_BASE_URL", sim.url)
        monkeypatch.setenv("PIXVERSE_API_KEY", "sim-key")
        assert main(["-q", "run", str(manifest), "--out", str(out), "--poll-interval", "0.02"]) == 0
    conn = sqlite3.connect(out / STATE_NAME)
    with conn:
        conn.execute("UPDATE jobs SET state = 'unconfirmed' WHERE id = 'job-0'")
        conn.execute(
            "UPDATE jobs SET state = 'generating', key_fp = 'feedfeedfeed' WHERE id = 'job-1'"
        )
    conn.close()
    capsys.readouterr()
    assert main(["run", str(manifest), "--out", str(out), "--dry-run"]) == 0
    lines = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()}
    assert lines["job-0"] == "parked"
    assert lines["job-1"] == "other-key"
    assert lines["job-2"] == "skip"


def test_validate_estimates_what_is_left_to_pay_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: `validate` priced the whole manifest (52 credits when 16 were left)."""
    manifest = project(tmp_path, tts_manifest(3))
    out = tmp_path / "out"
    with sim_in_thread(fast_sim()) as sim:
        assert (
            main(
                [
                    "-q",
                    "run",
                    str(manifest),
                    "--out",
                    str(out),
                    "--poll-interval",
                    "0.02",
                    "--base-url",
                    sim.url,
                    "--api-key",
                    "sim-key",
                    "--only",
                    "job-0",
                ]
            )
            == 0  # of the jobs it was asked to run
        )
    capsys.readouterr()
    assert main(["validate", str(manifest), "--out", str(out), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["credits_estimate"] == 12  # the whole manifest, as before
    assert document["credits_left_per_job"] == {"job-0": 0, "job-1": 4, "job-2": 4}
    assert document["credits_left"] == 8
    assert main(["validate", str(manifest), "--out", str(out)]) == 0
    assert "about 8 credits left to pay for (2 of 3 jobs)" in capsys.readouterr().out


@pytest.mark.anyio
async def test_max_credits_never_submits_past_the_cap(tmp_path: Path) -> None:
    manifest = project(tmp_path, tts_manifest(6))  # 4 credits each
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        outcome = await run_once(sim, manifest, out, max_credits=10)
        assert len(sim.ledger.generations) == 2  # a third would have made 12
        assert outcome.exit_code is ExitCode.UNFINISHED
        assert outcome.problem is not None
        assert "--max-credits 10" in outcome.problem
        assert outcome.credits_this_run == 8
        states = sorted(row.state for row in outcome.rows)
        assert states == ["done"] * 2 + ["unfinished:pending"] * 4
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        assert "--max-credits 10" in report["problem"]
        # the next night's cap is the next night's: it goes on where this one stopped
        again = await run_once(sim, manifest, out, max_credits=16)
    assert again.exit_code is ExitCode.OK
    assert len(sim.ledger.generations) == 6


@pytest.mark.anyio
async def test_max_credits_counts_what_replies_report_not_the_estimate(tmp_path: Path) -> None:
    """The account charges twice the published price and says so: after the first reply the
    cap counts 8 a job, not the 4 the price model says."""
    manifest = project(tmp_path, tts_manifest(6))
    async with serve(fast_sim(send_credits=True, price_multiplier=2)) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out", max_credits=20, concurrency=1)
    # 8 + 8 + (16 + 4 <= 20) 8 = 24; then 24 + 4 > 20. On estimates alone all 5 would go.
    assert len(sim.ledger.generations) == 3
    assert outcome.credits_this_run == 24
    assert outcome.exit_code is ExitCode.UNFINISHED


@pytest.mark.anyio
async def test_every_resubmission_logs_its_reason_and_cost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest, out = _planned_project(tmp_path)
    async with serve(fast_sim()) as sim:
        await run_once(sim, manifest, out)
        manifest.write_text(
            manifest.read_text(encoding="utf-8").replace("intro_de.wav", "remix_de.wav"),
            encoding="utf-8",
        )
        caplog.set_level(logging.INFO)
        await run_once(sim, manifest, out, redo=frozenset({"same"}))
        sim.config.fail_probability = 1.0
        await run_once(sim, manifest, out, redo=frozenset({"lost-file"}), max_attempts=2)
    messages = [r.getMessage() for r in caplog.records]
    assert "changed: submitting again (audio (remix_de.wav) changed): about 4 credits" in messages
    assert "same: submitting again (--redo): about 8 credits" in messages
    assert any(
        m.startswith("lost-file: submitting again (attempt 2") and m.endswith("about 8 credits")
        for m in messages
    )


def test_budget_holds_estimates_until_told() -> None:
    spent = [0]
    budget = Budget(10, lambda: spent[0])
    assert budget.ask("a", 4)
    assert budget.ask("b", 4)
    assert not budget.ask("c", 4)  # 4 + 4 held, 4 more passes 10
    assert budget.ask("a", 4)  # asking again replaces its own hold
    spent[0] = 3  # a's reply said 3
    budget.settle("a")
    assert budget.committed == 7
    assert budget.ask("c", 3)
    assert budget.refused == ["c"]
    assert "--max-credits 10" in str(budget.why_refused())
    assert Budget(None, lambda: 10**9).ask("x", 10**9)


def test_unknown_only_ids_are_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = project(tmp_path, tts_manifest(2))
    monkeypatch.setenv("PIXVERSE_API_KEY", "sim-key")
    monkeypatch.setenv("PIXVERSE_BASE_URL", "http://127.0.0.1:9")  # nothing may be sent
    code = main(["run", str(manifest), "--only", "job-0,nope", "--only", "other"])
    assert code == 2
    err = capsys.readouterr().err
    assert "error: --only: no job with id 'nope'" in err
    assert "error: --only: no job with id 'other'" in err


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.anyio
async def test_only_runs_a_subset_and_leaves_the_others_alone(tmp_path: Path) -> None:
    manifest = project(tmp_path, tts_manifest(4))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        await run_once(sim, manifest, out, only=("job-3",))
        first = _sha(out / "job-3.mp4")
        # job-3's inputs change; a run of the others must not touch its paid record
        manifest.write_text(
            manifest.read_text(encoding="utf-8").replace("line 3", "line three"), encoding="utf-8"
        )
        outcome = await run_once(sim, manifest, out, only=("job-0", "job-1"))
    assert len(sim.ledger.generations) == 3
    assert {r.id: r.state for r in outcome.rows} == {
        "job-0": "done",
        "job-1": "done",
        "job-2": "unfinished:pending",
        "job-3": "done",
    }
    assert outcome.exit_code is ExitCode.OK  # of the jobs it was asked to run
    assert _sha(out / "job-3.mp4") == first
    assert not (out / "superseded").exists()
