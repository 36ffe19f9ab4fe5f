"""Issue 8's first "done when": a 500-row CSV of mixed audio and TTS jobs validates and runs to
completion against the bundled simulator (tiny shared media, so it takes seconds)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.runner import ExitCode
from pipeline.simulator import serve
from tests.harness import fast_sim, run_once
from tests.media_factory import make_audio, make_video

ROWS = 500
AUDIO_ROWS = 100  # the rest are TTS rows: their results cost the simulator least
SPEAKERS = ("Isabella", "3", "harper", "Auto")  # by name and by id, in any case


def spreadsheet(folder: Path) -> Path:
    """Two tiny videos, 50 tiny dubs (each pair its own inputs), 400 TTS lines; written as a
    spreadsheet would (semicolons, a BOM, a quoted cell, an output column half filled)."""
    media = folder / "media"
    media.mkdir()
    videos = [
        make_video(
            media / f"clip{n}.mp4", seconds=1, width=32 + 16 * n, height=18, fps=2, audio=False
        )
        for n in range(2)
    ]
    dubs = [
        make_audio(media / f"dub{n:02}.wav", seconds=0.5 + n / 1000) for n in range(AUDIO_ROWS // 2)
    ]
    path = folder / "jobs.csv"
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        sheet = csv.writer(handle, delimiter=";")
        sheet.writerow(["id", "video", "audio", "tts_text", "tts_speaker", "output"])
        for n in range(ROWS):
            video = videos[n % 2].relative_to(folder).as_posix()
            output = f"{'audio' if n < AUDIO_ROWS else 'tts'}/{n:03}.mp4" if n % 2 else ""
            if n < AUDIO_ROWS:
                dub = dubs[n // 2].relative_to(folder).as_posix()
                sheet.writerow([f"row-{n:03}", video, dub, "", "", output])
            else:
                text = f"Line {n}; take one"
                sheet.writerow([f"row-{n:03}", video, "", text, SPEAKERS[n % 4], output])
    return path


@pytest.mark.anyio
async def test_a_500_row_csv_of_audio_and_tts_jobs_validates_and_runs_to_completion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sheet = spreadsheet(tmp_path)
    assert main(["validate", str(sheet)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith(f"{sheet}: {ROWS} jobs, 52 media files: OK")
    assert sum(1 for line in listed if line.startswith("  row-")) == ROWS
    out = tmp_path / "out"
    config = fast_sim(concurrency_limit=40, credit_monthly=100_000)
    async with serve(config) as sim:
        outcome = await run_once(sim, sheet, out, concurrency=40, upload_ahead=20)
    assert outcome.exit_code is ExitCode.OK
    assert len(outcome.rows) == ROWS
    assert {row.state for row in outcome.rows} == {"done"}
    assert len(sim.ledger.generations) == ROWS  # each job paid once
    assert sim.ledger.duplicate_bodies() == []
    sent = [g.body.get("lip_sync_tts_speaker_id") for g in sim.ledger.generations.values()]
    assert sorted({s for s in sent if s is not None}) == ["3", "7", "Auto"]  # names sent as ids
    assert (out / "audio" / "001.mp4").is_file()
    assert (out / "tts" / "499.mp4").is_file()
    assert (out / "row-000.mp4").is_file()
    assert len([p for p in out.rglob("*.mp4") if ".thumbs" not in p.parts]) == ROWS
