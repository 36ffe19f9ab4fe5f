"""`init` (a manifest from files named by a pattern) and `convert` (CSV <-> YAML/JSON)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.manifest import Job, load_manifest
from pipeline.runner import ExitCode
from pipeline.simulator import serve
from tests.harness import SAMPLES, fast_sim, project, run_once, sim_in_thread

LANGS = ("de", "es", "fr", "it")
VIDEO, AUDIO = "media/{name}.mp4", "dubs/{name}_{lang}.wav"


def folder_of_dubs(root: Path) -> Path:
    """3 videos x 4 languages, a dub without a video, a video without dubs (real media:
    copies of the sample files)."""
    (root / "media").mkdir()
    (root / "dubs").mkdir()
    for name in ("intro", "outro", "promo", "teaser"):
        shutil.copy(SAMPLES / "intro.mp4", root / "media" / f"{name}.mp4")
    for name in ("intro", "outro", "promo"):
        for lang in LANGS:
            shutil.copy(SAMPLES / "intro_de.wav", root / "dubs" / f"{name}_{lang}.wav")
    shutil.copy(SAMPLES / "intro_de.wav", root / "dubs" / "trailer_es.wav")
    (root / "dubs" / "notes.txt").write_text("not a dub")
    return root


def same(job: Job) -> Job:
    """A job as it runs: its place in the file and how its paths are spelt left out."""
    video, audio = (p.resolve() if p is not None else None for p in (job.video, job.audio))
    return replace(job, where="", dub=None, video=video, audio=audio)


def test_init_pairs_every_video_with_its_dubs_and_names_what_it_could_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(folder_of_dubs(tmp_path))
    assert main(["init", "--video", VIDEO, "--audio", AUDIO]) == 0
    captured = capsys.readouterr()
    (tmp_path / "dubs.yaml").write_text(captured.out, encoding="utf-8")
    err = captured.err.splitlines()
    assert "matched intro: media/intro.mp4 + 4 dubs (de, es, fr, it)" in err
    assert "not paired: dubs/trailer_es.wav: no video named 'trailer' (media/trailer.mp4)" in err
    assert "not paired: media/teaser.mp4: no dub matches dubs/teaser_{lang}.wav" in err
    assert err[-1] == "12 jobs, 2 files not paired"
    document = yaml.safe_load(captured.out)
    assert [entry["video"] for entry in document["jobs"]] == [
        "media/intro.mp4",
        "media/outro.mp4",
        "media/promo.mp4",
    ]
    assert document["jobs"][0]["dubs"]["fr"] == {"audio": "dubs/intro_fr.wav"}  # fan-out
    manifest = load_manifest(tmp_path / "dubs.yaml")
    assert [j.id for j in manifest.jobs] == [
        f"{n}-{lang}" for n in ("intro", "outro", "promo") for lang in LANGS
    ]
    assert main(["validate", str(tmp_path / "dubs.yaml")]) == 0
    assert "dubs.yaml: 12 jobs, 15 media files: OK" in capsys.readouterr().out


def test_init_writes_a_file_in_the_format_its_name_says_and_never_over_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(folder_of_dubs(tmp_path))
    (tmp_path / "plans").mkdir()
    target = tmp_path / "plans" / "dubs.csv"
    args = ["init", "--video", VIDEO, "--audio", AUDIO, "-o", str(target)]
    assert main([*args, "--output-pattern", "{lang}/{name}.mp4"]) == 0
    jobs = load_manifest(target).jobs
    assert len(jobs) == 12
    assert jobs[0].video is not None
    assert jobs[0].video.resolve() == tmp_path / "media" / "intro.mp4"  # from the file's folder
    assert target.read_text(encoding="utf-8-sig").splitlines()[1] == (
        "intro-de,../media/intro.mp4,../dubs/intro_de.wav,de/intro.mp4"
    )
    capsys.readouterr()
    assert main(args) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {target}: exists; not replaced (remove it, or choose another)"
    )


def test_init_reads_the_longest_video_name_and_refuses_what_it_cannot_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "v").mkdir()
    for name in ("intro", "intro_long"):
        shutil.copy(SAMPLES / "intro.mp4", tmp_path / "v" / f"{name}.mp4")
    for name in ("intro_es", "intro_long_es", "intro_long_pt-BR"):
        shutil.copy(SAMPLES / "intro_de.wav", tmp_path / "v" / f"{name}.wav")
    assert main(["init", "--video", "v/{name}.mp4", "--audio", "v/{name}_{lang}.wav"]) == 0
    document = yaml.safe_load(capsys.readouterr().out)
    assert document["jobs"] == [
        {"video": "v/intro.mp4", "dubs": {"es": {"audio": "v/intro_es.wav"}}},
        {
            "video": "v/intro_long.mp4",
            "dubs": {
                "es": {"audio": "v/intro_long_es.wav"},
                "pt-BR": {"audio": "v/intro_long_pt-BR.wav"},
            },
        },
    ]
    assert main(["init", "--video", "v/{stem}.mp4", "--audio", "v/{name}_{lang}.wav"]) == 2
    assert "--video 'v/{stem}.mp4': give exactly the fields {name}" in capsys.readouterr().err
    assert main(["init", "--video", "v/{name}.mov", "--audio", "v/{name}_{lang}.wav"]) == 2
    assert "error: init: no video and dub could be paired" in capsys.readouterr().err


def test_init_pairs_dubs_of_every_audio_format_and_says_what_another_format_kept_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`.*` (or any `*`) is a wildcard, matched as it is globbed, finding only the formats
    the API takes; a pattern of one format names the dubs of another it left out, and a
    second dub of one video and language is said, not written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    shutil.copy(SAMPLES / "intro.mp4", tmp_path / "m" / "intro.mp4")
    shutil.copy(SAMPLES / "intro_es.mp3", tmp_path / "m" / "intro_es.mp3")
    shutil.copy(SAMPLES / "intro_de.wav", tmp_path / "m" / "intro_de.wav")
    (tmp_path / "m" / "intro_fr.txt").write_text("a translator's notes")
    assert main(["init", "--video", "m/{name}.*", "--audio", "m/{name}_{lang}.*"]) == 0
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out)["jobs"] == [
        {
            "video": "m/intro.mp4",
            "dubs": {"de": {"audio": "m/intro_de.wav"}, "es": {"audio": "m/intro_es.mp3"}},
        }
    ]
    assert captured.err.splitlines()[-1] == "2 jobs, 0 files not paired"
    assert main(["init", "--video", "m/{name}.mp4", "--audio", "m/{name}_{lang}.wav"]) == 0
    assert (
        "not paired: m/intro_es.mp3: not .wav (m/{name}_{lang}.wav); --audio"
        " 'm/{name}_{lang}.*' pairs dubs of every audio format"
    ) in capsys.readouterr().err.splitlines()
    shutil.copy(SAMPLES / "intro_de.wav", tmp_path / "m" / "intro_es.wav")
    assert main(["init", "--video", "m/{name}.mp4", "--audio", "m/{name}_{lang}.*"]) == 0
    captured = capsys.readouterr()
    assert "not paired: m/intro_es.wav: intro-es has a dub already (m/intro_es.mp3)" in (
        captured.err.splitlines()
    )
    assert yaml.safe_load(captured.out)["jobs"][0]["dubs"]["es"] == {"audio": "m/intro_es.mp3"}


def test_convert_csv_and_yaml_both_ways_keeping_ids_speakers_and_outputs(tmp_path: Path) -> None:
    source = project(
        tmp_path,
        """
version: 1
output_dir: sheets/out  # where a CSV in sheets/ has its results: the same state file
output_pattern: "{lang}/{name}.mp4"
defaults: {tts_speaker: "Isabella"}
jobs:
  - id: promo
    video: media/promo.mov
    dubs:
      es: {audio: media/promo_es.wav}
      ja: {tts: {text: "こんにちは, 皆さん"}}
  - {id: remix-de, video_id: 391504857968062, audio: media/remix_de.wav, output: r/de.mp4}
""",
    )
    (tmp_path / "sheets").mkdir()
    sheet = tmp_path / "sheets" / "jobs.csv"
    assert main(["convert", str(source), str(sheet)]) == 0
    again = tmp_path / "again.json"
    assert main(["convert", str(sheet), str(again)]) == 0
    first, second, third = load_manifest(source), load_manifest(sheet), load_manifest(again)
    for other in (second, third):
        assert [same(j) for j in other.jobs] == [same(j) for j in first.jobs]
    assert second.jobs[1].tts is not None
    assert second.jobs[1].tts.speaker == "Isabella"  # the default, written into the row
    assert third.jobs[1].output == "ja/promo.mp4"
    assert first.output_dir == third.output_dir == tmp_path / "sheets" / "out"
    assert second.output_dir is None  # a CSV's own: out/ next to it, sheets/out
    assert main(["convert", str(sheet), str(again)]) == 2  # never over a file


def test_convert_refuses_what_a_csv_cannot_say(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = project(
        tmp_path,
        "version: 1\noutput_dir: nightly\nlimits: {video_max_seconds: 60}\n"
        "jobs: [{id: a, video: media/intro.mp4, audio: media/intro_es.mp3}]\n",
    )
    assert main(["convert", str(source), str(tmp_path / "a.csv")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: manifest field 'output_dir': a CSV manifest has none")
    assert err[1] == (
        "error: manifest field 'limits': a CSV manifest has none; keep YAML for other limits"
    )
    assert not (tmp_path / "a.csv").exists()
    job = "{id: a, video: media/intro.mp4, audio: media/intro_es.mp3}"
    # output_dir out/, where the CSV's results go too: nothing is lost
    source.write_text(f"version: 1\noutput_dir: out\njobs: [{job}]\n")
    assert main(["convert", str(source), str(tmp_path / "a.csv")]) == 0


def test_converting_into_another_folder_keeps_the_results_or_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest without `output_dir` has its results in out/ next to it. Written into
    another folder, YAML or JSON names that folder (and runs without paying again); a CSV,
    which cannot, is refused with what to do instead."""
    source = project(
        tmp_path, "version: 1\njobs: [{id: a, video: media/intro.mp4, audio: media/intro_es.mp3}]\n"
    )
    (tmp_path / "sheets").mkdir()
    sheet = tmp_path / "sheets" / "jobs.csv"
    assert main(["convert", str(source), str(sheet)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: manifest.yaml: its results and state file are in {tmp_path / 'out'}; a CSV in"
        f" {tmp_path / 'sheets'} has its results in {tmp_path / 'sheets' / 'out'} and would"
        " pay for them again: write the CSV next to manifest.yaml, or convert to YAML or JSON"
        " (they keep the results' folder)"
    ]
    assert not sheet.exists()
    with sim_in_thread(fast_sim()) as sim:
        monkeypatch.setenv("PIXVERSE_API_KEY", "sim-key")
        monkeypatch.setenv("PIXVERSE_BASE_URL", sim.url)
        assert main(["run", str(source), "--poll-interval", "0.02"]) == 0
        for name in ("jobs.yaml", "jobs.json"):
            converted = tmp_path / "sheets" / name
            assert main(["convert", str(source), str(converted)]) == 0
            assert load_manifest(converted).output_dir == tmp_path / "out"
            assert main(["run", str(converted), "--poll-interval", "0.02"]) == 0
    assert len(sim.ledger.generations) == 1
    assert not (tmp_path / "sheets" / "out").exists()


@pytest.mark.anyio
async def test_a_converted_manifest_runs_on_the_same_state_without_paying(tmp_path: Path) -> None:
    source = project(tmp_path)
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        assert (await run_once(sim, source, out)).exit_code is ExitCode.OK
        paid = len(sim.ledger.generations)
        assert main(["convert", str(source), str(tmp_path / "jobs.csv")]) == 0
        again = await run_once(sim, tmp_path / "jobs.csv", out)
    assert again.exit_code is ExitCode.OK
    assert len(sim.ledger.generations) == paid
    assert {r.state for r in again.rows} == {"done"}
