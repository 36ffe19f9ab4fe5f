"""Review 6 (issue 8: CSV/JSON manifests, init and convert, output paths, speakers by name):
each finding shown failing on main, marked xfail(strict) until it is fixed. Real parts only:
the CLI or the runner, the real client over loopback against the bundled simulator."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.runner import ExitCode
from pipeline.simulator import serve
from pipeline.state import StateStore
from tests.harness import SAMPLES, STATE_NAME, fast_sim, project, run_once, sha256, sim_in_thread
from tests.media_factory import make_audio, make_video

ONE_TTS = """
version: 1
jobs:
  - {{id: a, video: media/intro.mp4, tts: {{text: "one", speaker: "{speaker}"}}}}
"""


def _records(out: Path) -> dict[str, tuple[str, str | None, int | None]]:
    store = StateStore.read_only(out / STATE_NAME)
    try:
        return {r.id: (r.state.value, r.output, r.bytes) for r in store.jobs(archived=True)}
    finally:
        store.close()


@pytest.mark.anyio
async def test_a1_a_speaker_id_in_another_case_pays_nothing(tmp_path: Path) -> None:
    """Scenario: a job with `speaker: "Auto"` (the documented id) is done; the manifest (or
    a CSV of the same jobs, or a converted one) then says `auto`, as the docs' examples do.
    The API matches speaker ids without case and `speakers.py` recognises `auto` as the id
    `Auto`, yet keeps it as written, so the fingerprint differs: the job restarts and the same
    generation is paid for a second time. Breaks: paying twice for one job."""
    manifest = project(tmp_path, ONE_TTS.format(speaker="Auto"))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        assert (await run_once(sim, manifest, out)).exit_code is ExitCode.OK
        assert len(sim.ledger.generations) == 1
        manifest.write_text(ONE_TTS.format(speaker="auto"), encoding="utf-8")
        again = await run_once(sim, manifest, out)
    assert again.exit_code is ExitCode.OK
    assert len(sim.ledger.generations) == 1, "the same speaker, the same text: paid again"
    assert again.credits_this_run == 0


@pytest.mark.anyio
async def test_a2_a_renamed_speaker_keeps_the_done_result_in_place(tmp_path: Path) -> None:
    """Scenario: job `a` (speaker `Isabella`, id 3 in the list) is done at out/a.mp4. Later
    the account's list calls speaker 3 `Isabella (UK)`, and a new TTS job is added, so the run
    reads the list again. `Isabella` now resolves to nothing; the job keeps its name as
    written, so its fingerprint no longer matches its paid record: the record is archived,
    a.mp4 goes to superseded/, and `a` is reported failed (exit 1) although its paid result,
    made with speaker 3, still exists. The record's own inputs (speaker 3) or the kept list
    could have told. Breaks: a paid result taken from its place and its job failed."""
    text = ONE_TTS.format(speaker="Isabella")
    manifest = project(tmp_path, text)
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        assert (await run_once(sim, manifest, out)).exit_code is ExitCode.OK
        made = sha256(out / "a.mp4")
        manifest.write_text(
            text + '  - {id: b, video: media/intro.mp4, tts: {text: "two", speaker: "7"}}\n',
            encoding="utf-8",
        )
        sim.config.speakers = (
            {"speaker_id": "7", "name": "Harper"},
            {"speaker_id": "3", "name": "Isabella (UK)"},
        )
        second = await run_once(sim, manifest, out)
    rows = {r.id: r for r in second.rows}
    assert rows["b"].state == "done"
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mp4"))
    assert (out / "a.mp4").exists(), f"a's paid result was moved away: {files}"
    assert sha256(out / "a.mp4") == made
    assert rows["a"].state == "done", rows["a"].error


def test_a3_a_manifest_converted_into_another_folder_runs_without_paying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: `run manifest.yaml` (no output_dir: results in ./out), then
    `convert manifest.yaml sheets/jobs.csv` and `run sheets/jobs.csv`. README and
    authoring.py promise that a converted manifest runs on the same state file without
    paying again; the CSV's results go to sheets/out/, which holds no state file, so every
    job is generated and paid a second time. (`convert` refuses an explicit output_dir
    other than out/ next to the CSV, but not the implicit one.) Breaks: paying twice. A fix
    may refuse the conversion instead (exit 2): then nothing is paid either."""
    manifest = project(
        tmp_path,
        "version: 1\njobs:\n"
        "  - {id: a, video: media/intro.mp4, audio: media/intro_es.mp3}\n"
        "  - {id: b, video: media/intro.mp4, tts: {text: hello, speaker: '3'}}\n",
    )
    (tmp_path / "sheets").mkdir()
    sheet = tmp_path / "sheets" / "jobs.csv"
    with sim_in_thread(fast_sim()) as sim:
        monkeypatch.setenv("PIXVERSE_API_KEY", "sim-key")
        monkeypatch.setenv("PIXVERSE_BASE_URL", sim.url)
        assert main(["run", str(manifest), "--poll-interval", "0.02"]) == 0
        paid = len(sim.ledger.generations)
        assert paid == 2
        if main(["convert", str(manifest), str(sheet)]) == 0:
            assert main(["run", str(sheet), "--poll-interval", "0.02"]) == 0
    assert len(sim.ledger.generations) == paid, "the converted manifest paid again"


@pytest.mark.anyio
async def test_a4_only_one_job_of_a_swap_displaces_nobody(tmp_path: Path) -> None:
    """Scenario: jobs a (output x/a.mp4) and b (output y/b.mp4) are done; the manifest swaps
    their outputs and the user runs `--only a`. reconcile moves a's file to y/b.mp4; b is
    left alone by --only, so its file is no source of the move and no staging happens:
    `place` pushes b's result into y/superseded/b~1.mp4. b's record still says y/b.mp4 (now
    a's video), two records claim one file, the run reports b done, and the next run
    downloads b again while its paid file sits orphaned in superseded/ (had the two files the
    same length, b's record would take a's video as its own). Breaks: a paid result taken
    from its job, the state file wrong about where results are."""
    jobs = (
        "version: 1\njobs:\n"
        "  - {{id: a, video: media/intro.mp4, audio: media/intro_es.mp3, output: {a}}}\n"
        "  - {{id: b, video: media/intro.mp4, audio: media/intro_de.wav, output: {b}}}\n"
    )
    manifest = project(tmp_path, jobs.format(a="x/a.mp4", b="y/b.mp4"))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        assert (await run_once(sim, manifest, out)).exit_code is ExitCode.OK
        b_made = sha256(out / "y" / "b.mp4")
        manifest.write_text(jobs.format(a="y/b.mp4", b="x/a.mp4"), encoding="utf-8")
        assert (await run_once(sim, manifest, out, only=("a",))).exit_code is ExitCode.OK
    state, where, _ = _records(out)["b"]
    assert state == "done"
    assert where is not None
    assert Path(where).is_file()
    assert sha256(Path(where)) == b_made, (
        f"b's record says {os.path.relpath(where, out)}, which holds another job's result;"
        f" files: {sorted(p.relative_to(out).as_posix() for p in out.rglob('*.mp4'))}"
    )
    assert _records(out)["a"][1] != where


def test_a5_a_utf16_csv_is_told_it_is_not_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: the same sheet saved as UTF-16 (BOM FF FE), as spreadsheet programs do for
    "Unicode" text. The header is there, but the message says there is none and quotes
    `'\\udcff\\udcfei\\x00d\\x00'`; the module's own hint (save as "CSV UTF-8") is never
    given. Breaks: the issue's "a bad encoding" error that names row 1 and the fix."""
    shutil.copytree(SAMPLES, tmp_path / "media")
    text = "id,video,audio\na,media/intro.mp4,media/intro_es.mp3\n"
    path = tmp_path / "jobs.csv"
    path.write_bytes(text.encode("utf-16"))  # with its BOM
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "\\udc" not in err, err
    assert "\\x00" not in err, err
    assert "UTF-8" in err, err


def test_a6_init_pairs_dubs_of_several_extensions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: dubs in mixed formats, as the bundled example has them (intro_es.mp3,
    intro_de.wav). `--audio 'media/{name}_{lang}.wav'` silently leaves the mp3 out (not even
    listed as unpaired); `--audio 'media/{name}_{lang}.*'` lists both files by glob, then
    matches the `*` as a literal star, pairs nothing, exits 2 and says "no dub matches
    media/intro_{lang}.*", which is false. There is no way to pair one video's mp3 and wav
    dubs in one manifest. Breaks: init's promise to pair every video with every dub, and to
    say what it could not pair. A fix may refuse `*` clearly instead."""
    shutil.copytree(SAMPLES, tmp_path / "media")
    monkeypatch.chdir(tmp_path)
    code = main(["init", "--video", "media/{name}.mp4", "--audio", "media/{name}_{lang}.*"])
    captured = capsys.readouterr()
    if code == 0:
        written = yaml.safe_load(captured.out)
        dubs = {d["audio"] for entry in written["jobs"] for d in entry.get("dubs", {}).values()}
        dubs |= {entry["audio"] for entry in written["jobs"] if "audio" in entry}
        assert {"media/intro_es.mp3", "media/intro_de.wav"} <= dubs, captured.out
    else:
        assert "no dub matches" not in captured.err, captured.err  # files do match it


def test_a7_init_output_pattern_with_lang_works_for_a_video_with_one_dub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: a folder where one video has two dubs and another has one (intro: es, de;
    talk: es). `init ... --output-pattern '{lang}/{name}.mp4'` writes the single-dub pair as a
    plain job (`id: talk-es`), for which `{lang}` is undefined (and `{name}` would be
    `talk-es`), so the check of what init made refuses the whole manifest, exit 2: one
    single-dub video among 500 stops init. Breaks: init + output_pattern as documented."""
    (tmp_path / "media").mkdir()
    for name in ("intro.mp4", "talk.mp4"):
        shutil.copy(SAMPLES / "intro.mp4", tmp_path / "media" / name)
    for name in ("intro_es.wav", "intro_de.wav", "talk_es.wav"):
        shutil.copy(SAMPLES / "intro_de.wav", tmp_path / "media" / name)
    monkeypatch.chdir(tmp_path)
    args = ["init", "--video", "media/{name}.mp4", "--audio", "media/{name}_{lang}.wav"]
    code = main([*args, "--output-pattern", "{lang}/{name}.mp4", "-o", "dubs.yaml"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert main(["validate", "dubs.yaml", "--json"]) == 0
    assert "es/talk.mp4" in capsys.readouterr().out


LONG_AND_SHORT = """
version: 1
jobs:
  - {{id: talk-es, video: media/talk.mp4, audio: media/talk_es.mp3, output: {long}}}
  - {{id: a, video: media/intro.mp4, audio: media/intro_es.mp3, output: {short}}}
"""


@pytest.mark.anyio
async def test_a8_a_long_job_and_a_job_swapping_outputs_keep_both_results(
    tmp_path: Path,
) -> None:
    """Scenario: a stitched long job (talk-es at L/t.mp4) and an ordinary done job (a at
    N/a.mp4) swap their `output`s. `LongJobs.expand` moves the stitched file first, before
    reconcile stages anything, so `place` pushes a's result into N/superseded/a~1.mp4;
    reconcile then finds a's file missing and downloads it again. If the account's owner
    has deleted that video meanwhile (status 6, as the contract allows), job a is failed
    although its paid result is on disk, only in superseded/. architecture.md promises that
    in a swap every moving file waits at its staging name, so no move displaces a result
    about to move. Breaks: losing a paid result (its job failed), a needless download."""
    manifest = project(tmp_path, LONG_AND_SHORT.format(long="L/t.mp4", short="N/a.mp4"))
    make_video(tmp_path / "media" / "talk.mp4", seconds=35, width=64, height=36, fps=5, audio=False)
    make_audio(tmp_path / "media" / "talk_es.mp3", seconds=35, pauses=((20.0, 20.6),))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        assert (await run_once(sim, manifest, out)).exit_code is ExitCode.OK
        a_made = sha256(out / "N" / "a.mp4")
        a_video = _video_id(out, "a")
        sim.config.deleted_video_ids.add(a_video)  # gone on PixVerse; the file is ours
        manifest.write_text(LONG_AND_SHORT.format(long="N/a.mp4", short="L/t.mp4"), "utf-8")
        second = await run_once(sim, manifest, out)
    rows = {r.id: r for r in second.rows}
    assert rows["talk-es"].state == "done"
    assert rows["a"].state == "done", rows["a"].error
    assert sha256(out / "L" / "t.mp4") == a_made
    assert not (out / "N" / "superseded").exists()


def _video_id(out: Path, job_id: str) -> int:
    store = StateStore.read_only(out / STATE_NAME)
    try:
        video_id = store.job(job_id).video_id
    finally:
        store.close()
    assert video_id is not None
    return video_id
