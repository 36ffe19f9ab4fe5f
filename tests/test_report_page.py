"""report.html: written with every report, rebuilt by `pixverse-batch report OUT` from the state
file; a card per job, every link local and resolving, thumbnails made once, broken and missing
files shown on their cards, and never the key. (The page in a real browser: test_report_browser.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.htmlreport import advice, build_page
from pipeline.report import ReportRow, write_report
from pipeline.secrets import Redactor
from pipeline.thumbs import THUMBS
from tests.pagecheck import KEY, Page, mixed_run
from tests.test_reports import FAILING


def read_page(out: Path) -> tuple[str, Page]:
    text = (out / "report.html").read_text(encoding="utf-8")
    return text, Page.parse(text)


def thumbs(out: Path) -> dict[str, int]:
    """Thumbnail name -> mtime (ns): what a rebuild made or touched shows here."""
    return {p.name: p.stat().st_mtime_ns for p in (out / THUMBS).iterdir()}


def assert_self_contained(text: str, page: Page, out: Path) -> None:
    """Every link resolves to a file; nothing the page loads comes from elsewhere; no key."""
    for target in page.local_targets(out):
        assert target.is_file(), target
    assert "url(" not in page.style
    assert "@import" not in page.style
    assert "://" not in page.script
    assert "fetch(" not in page.script
    assert all(img.get("loading") == "lazy" for img in page.imgs)  # 1,000 cards stay fast
    assert KEY not in text
    assert all(KEY[i : i + 8] not in text for i in range(len(KEY) - 7))


@pytest.mark.anyio
async def test_the_page_of_a_run_with_failures_has_a_card_per_job_and_only_local_links(
    tmp_path: Path,
) -> None:
    out, report = await mixed_run(tmp_path)
    text, page = read_page(out)

    assert [c.id for c in page.cards] == [job["id"] for job in report["jobs"]]
    states = {job["id"]: job["state"] for job in report["jobs"]}
    assert {c.id: c.attrs["data-state"] for c in page.cards} == states
    assert sorted(states.values()) == ["done"] * 3 + ["failed"] * 4
    assert_self_contained(text, page, out)

    # the top: the run, its exit code in words, the spend, the problems first with what to do
    assert report["run_id"] in text
    assert "1 (some jobs failed, the rest done)" in text
    assert f"~{report['credits_this_run']}" in text
    problems = text[text.index('id="problems"') : text.index('<nav class="controls"')]
    for job_id in FAILING:
        assert f'href="#job-{job_id}"' in problems
    assert "--retry-failed, or --redo banned" in problems  # 400017: would fail the same way

    # a done card: both thumbnails, its result linked for the player, its facts
    good = page.card("good")
    assert good.attrs["data-result"] == "good.mp4"
    assert (out / good.attrs["data-source"]).resolve() == tmp_path / "media/intro.mp4"
    assert re.search(r"credits ~\d+ attempts 1 duration 2\.\d s resolution 160x90", good.words)
    assert "language es" in page.card("promo-es").words
    assert len([img for img in page.imgs if "good.mp4" in img.get("alt", "")]) == 1
    # a failed card: the error in words, no result to play, no broken link
    banned = page.card("banned")
    assert "data-result" not in banned.attrs
    assert "400017" in banned.words
    assert "no result (failed)" in banned.words
    # a PixVerse video as the source: said so, nothing to link
    assert "a PixVerse video (391504857968062)" in page.card("clip-de").words


@pytest.mark.anyio
async def test_report_rebuilds_the_page_from_the_state_file_reusing_every_thumbnail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out, report = await mixed_run(tmp_path)
    before = thumbs(out)
    assert len(before) == 5  # one per file: intro.mp4 (four jobs), promo.mov, three results
    (out / "report.html").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a morning shell, not the run's folder

    assert main(["report", str(out)]) == 0
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    text, page = read_page(out)
    assert thumbs(out) == before  # nothing decoded again, nothing rewritten
    assert [c.id for c in page.cards] == [job["id"] for job in report["jobs"]]
    assert report["run_id"] in text
    assert_self_contained(text, page, out)


@pytest.mark.anyio
async def test_a_missing_or_broken_result_shows_on_its_card_and_never_fails_the_page(
    tmp_path: Path,
) -> None:
    out, report = await mixed_run(tmp_path)
    gone, broken, _ = [job["id"] for job in report["jobs"] if job["state"] == "done"]
    (out / f"{gone}.mp4").unlink()
    result = out / f"{broken}.mp4"
    result.write_bytes(result.read_bytes()[:500])  # a copy cut short: no index
    stale = thumbs(out)

    assert main(["report", str(out)]) == 0
    _, page = read_page(out)
    assert f"{gone}.mp4: file missing" in page.card(gone).words
    assert "data-result" not in page.card(gone).attrs  # nothing to play
    assert f"{broken}.mp4: not a readable video" in page.card(broken).words
    assert len(thumbs(out)) == len(stale) - 2  # the two results' thumbnails dropped


def test_a_replaced_result_gets_a_new_thumbnail_and_the_old_one_goes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(Path("pipeline/examples/media/intro.mp4"), out / "a.mp4")
    document = page_document([{"id": "a", "state": "done", "output": str(out / "a.mp4")}])
    build_page(document, out)
    (first,) = thumbs(out)
    build_page(document, out)
    assert list(thumbs(out)) == [first]
    shutil.copy(Path("pipeline/examples/media/promo.mov"), out / "a.mp4")  # a new download
    os.utime(out / "a.mp4", ns=(1, 1))
    build_page(document, out)
    assert list(thumbs(out)) != [first]
    assert len(thumbs(out)) == 1


def test_a_suspect_result_says_why_and_what_to_do(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "talk.mp4").write_bytes(bytes(4000))  # an mp4 that no decoder makes a frame of
    reason = "suspect result: its first video frame does not decode"
    job = {"id": "talk", "state": "suspect", "output": str(out / "talk.mp4"), "error": reason}
    text = build_page(page_document([job]), out)
    page = Page.parse(text)
    problems = text[text.index('id="problems"') : text.index('<nav class="controls"')]
    assert "--redo talk pays for a new one" in problems
    assert reason in problems
    card = page.card("talk")
    assert card.attrs["data-state"] == "suspect"
    assert card.attrs["data-result"] == "talk.mp4"  # paid, kept: still there to watch
    assert "talk.mp4: not a readable video" in card.words


def page_document(jobs: list[dict[str, Any]], **facts: Any) -> dict[str, Any]:
    return {"run_id": "20260114T023000Z-3f9a1c", "exit_code": 1, **facts, "jobs": jobs}


def test_a_long_jobs_segments_and_per_key_figures_are_shown(tmp_path: Path) -> None:
    segments = [
        {"index": 0, "start": 0.0, "end": 58.5, "video_id": 9001, "credits": 40, "state": "done"},
        {"index": 1, "start": 58.5, "end": 121.0, "video_id": None, "credits": 0,
         "state": "failed"},
    ]  # fmt: skip
    accounts = {"a1b2c3d4e5f6": {"credits_this_run": 40, "jobs": 1, "slot_ceiling": 3}}
    document = page_document(
        [{"id": "lecture", "state": "failed", "segments": segments}], accounts=accounts
    )
    page = Page.parse(build_page(document, tmp_path))
    words = page.card("lecture").words
    assert "index start end video id credits state" in words
    assert "0 0.0 58.5 9001 40 done" in words
    assert "1 58.5 121.0 0 failed" in words
    text = build_page(document, tmp_path)
    assert "a1b2c3d4e5f6" in text
    assert "slot_ceiling" in text


def test_the_key_in_a_reports_text_never_reaches_the_page(tmp_path: Path) -> None:
    row = ReportRow("leaky", "failed", None, None, None, 0, False, 1, 0, f"proxy said {KEY}")
    write_report(tmp_path, [row], {"run_id": "r", "exit_code": 1}, redact=Redactor([KEY]))
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "proxy said" in text
    assert KEY not in text
    assert KEY[:8] not in text


def test_what_to_do_follows_the_rule_the_next_run_applies() -> None:
    assert "--retry-failed, or --redo a" in advice(
        {"id": "a", "state": "failed", "err_code": 500054}
    )
    assert "the next run retries it" in advice({"id": "a", "state": "failed", "error": "status 8"})
    assert "--redo a only if" in advice({"id": "a", "state": "unfinished:unconfirmed"})
    assert "run the same command again" in advice({"id": "a", "state": "unfinished:generating"})


def test_the_report_command_exit_codes(tmp_path: Path) -> None:
    assert main(["report", str(tmp_path / "nothing")]) == 2  # no such folder
    assert main(["report", str(tmp_path)]) == 2  # nothing to report
    (tmp_path / ".pixverse-batch.sqlite").write_bytes(b"not a database" * 100)
    assert main(["report", str(tmp_path)]) == 3  # unreadable state file
    (tmp_path / ".pixverse-batch.sqlite").unlink()
    (tmp_path / "report.json").write_text(
        json.dumps(page_document([{"id": "a", "state": "failed"}])), encoding="utf-8"
    )
    (tmp_path / "report.html").mkdir()  # the page cannot be put there
    assert main(["report", str(tmp_path)]) == 74
    (tmp_path / "report.html").rmdir()
    assert main(["report", str(tmp_path)]) == 0
    assert Page.parse((tmp_path / "report.html").read_text(encoding="utf-8")).card("a")


def test_a_run_stopped_by_preflight_writes_its_page_too(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("version: 1\njobs:\n  - {id: gone, video: nope.mp4, audio: nope.wav}\n")
    assert main(["run", str(manifest), "--out", str(tmp_path / "out")]) == 2
    page = Page.parse((tmp_path / "out" / "report.html").read_text(encoding="utf-8"))
    assert "nope.mp4" in page.card("gone").words
