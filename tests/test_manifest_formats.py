"""Manifests as CSV and JSON, did-you-mean, and every problem (schema and files) in one pass."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.errors import ManifestError
from pipeline.manifest import Manifest, load_manifest
from pipeline.preflight import load_all
from tests.harness import EXAMPLE, project


def problems(path: Path) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_all(path)
    return caught.value.problems


def sheet(tmp_path: Path, text: str | bytes, name: str = "jobs.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def same_jobs(a: Manifest, b: Manifest) -> bool:
    """The same jobs, whatever their places in the files (`where`)."""
    return [replace(j, where="", dub=None) for j in a.jobs] == [
        replace(j, where="", dub=None) for j in b.jobs
    ]


# -- CSV ---------------------------------------------------------------------------------------


def test_a_csv_manifest_makes_the_jobs_its_yaml_makes(tmp_path: Path) -> None:
    yaml_path = project(tmp_path)
    rows = (
        "id;video;video_id;audio;tts_text;tts_speaker\n"
        "intro-es;media/intro.mp4;;media/intro_es.mp3;;\n"
        "intro-de;media/intro.mp4;;media/intro_de.wav;;\n"
        'intro-fr;media/intro.mp4;;;"Bonjour à tous";3\n'
        "remix-de;;391504857968062;media/remix_de.wav;;\n"
        " ; ; ; ; ; \n"  # a row of empty cells is skipped
        "promo-es;media/promo.mov;;media/promo_es.wav;;\n"
        "promo-ja;media/promo.mov;;;こんにちは;Auto\n"
    )
    # Excel's "CSV UTF-8": a BOM, semicolons where the comma is the decimal mark
    csv_path = sheet(tmp_path, ("\ufeff" + rows).encode())
    from_csv, from_yaml = load_all(csv_path), load_all(yaml_path)
    assert [j.id for j in from_csv.jobs] == [j.id for j in from_yaml.jobs]
    assert same_jobs(from_csv, from_yaml)
    assert [j.where for j in from_csv.jobs][:2] == ["row 2", "row 3"]
    assert from_csv.jobs[-1].where == "row 8"  # spreadsheet rows: header 1, the blank row counts


def test_csv_columns_are_matched_ignoring_case_and_quotes_keep_commas(tmp_path: Path) -> None:
    path = sheet(
        tmp_path,
        ' ID , Video ,TTS_Text,tts_speaker\nhello,a.mp4,"Hello, world",1\n',
    )
    job = load_manifest(path).jobs[0]
    assert job.id == "hello"
    assert job.tts is not None
    assert (job.tts.text, job.tts.speaker) == ("Hello, world", "1")


MALFORMED = {
    "no header row": (
        "intro-es,media/intro.mp4,media/intro_es.mp3\n",
        "row 1: no header row (found 'intro-es', 'media/intro.mp4', 'media/intro_es.mp3')",
    ),
    "unknown column": (
        "id,vidoe,audio\na,media/intro.mp4,media/intro_es.mp3\n",
        "row 1 column 'vidoe': unknown column; did you mean `video`?",
    ),
    "a required column missing": (
        "id,video\na,media/intro.mp4\n",
        "row 1: no `audio` or `tts_text` column",
    ),
    "a column twice": (
        "id,video,audio,audio\na,media/intro.mp4,media/intro_es.mp3,x.mp3\n",
        "row 1 column 'audio': given twice",
    ),
    "audio and tts_text": (
        "id,video,audio,tts_text,tts_speaker\na,media/intro.mp4,media/intro_es.mp3,hi,1\n",
        "row 2 column 'audio': give exactly one of `audio` (a local file) or `tts_text`",
    ),
    "an empty id": (
        "id,video,audio\na,media/intro.mp4,media/intro_es.mp3\n,media/intro.mp4,media/x.wav\n",
        "row 3 column 'id': empty; every row needs an id",
    ),
    "no video in a row": (
        "id,video,video_id,audio\na,,,media/intro_es.mp3\n",
        "row 2 column 'video': give exactly one of `video` (a local file) or `video_id`",
    ),
    "an empty TTS speaker": (
        "id,video,tts_text,tts_speaker\na,media/intro.mp4,hola,\n",
        "row 2 column 'tts_speaker': missing: give it in this row",
    ),
    "a speaker without a script": (
        "id,video,audio,tts_speaker\na,media/intro.mp4,media/intro_es.mp3,3\n",
        "row 2 column 'tts_speaker': only for a TTS row",
    ),
    "a bad encoding": (
        "id,video,audio\na,media/intro.mp4,media/caf\xe9.wav\n".encode("latin-1"),
        "row 2 column 'audio': not UTF-8; save the sheet as \"CSV UTF-8\"",
    ),
    "UTF-16 with its BOM (a spreadsheet's Unicode text)": (
        "id\tvideo\taudio\na\tmedia/intro.mp4\tmedia/intro_es.mp3\n".encode("utf-16"),
        'row 1: the sheet is UTF-16, not UTF-8; save the sheet as "CSV UTF-8"',
    ),
    "UTF-16 without a BOM": (
        "id,video,audio\na,media/intro.mp4,media/intro_es.mp3\n".encode("utf-16-le"),
        "row 1: the sheet is UTF-16 or another text with NUL bytes, not UTF-8",
    ),
    "duplicate ids": (
        "id,video,audio\nA,media/intro.mp4,media/intro_es.mp3\na,media/intro.mp4,media/x.wav\n",
        "job 'A' column 'id': used by 2 jobs (row 2, row 3)",
    ),
    "a stray delimiter": (
        "id,video,audio\na,media/intro.mp4,media/intro_es.mp3,oops\n",
        "row 2: 4 cells, but the header has 3 columns (a stray delimiter? cell 4 is 'oops')",
    ),
    "a bad video id": (
        "id,video_id,audio\na,12ab,media/intro_es.mp3\n",
        "row 2 column 'video_id': must be a positive integer video id, got '12ab'",
    ),
    "a bad id": (
        "id,video,audio\n-a,media/intro.mp4,media/intro_es.mp3\n",
        "row 2 column 'id': '-a' must match",
    ),
    "an output outside the folder": (
        "id,video,audio,output\na,media/intro.mp4,media/intro_es.mp3,../a.mp4\n",
        "row 2 column 'output': '../a.mp4' leaves the output folder",
    ),
    "a bad extend": (
        "id,video,audio,extend\na,media/intro.mp4,media/intro_es.mp3,stretch\n",
        "row 2 column 'extend': must be one of loop, freeze, got 'stretch'",
    ),
    "a cell under no column": (
        "id,,video,audio\na,x,media/intro.mp4,media/intro_es.mp3\n",
        "row 2 column #2: 'x' is under no column name",
    ),
    "only a header": ("id,video,audio\n", "no job rows under the header (row 1)"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_csv_names_the_row_and_the_column(tmp_path: Path, case: str) -> None:
    project(tmp_path)  # the media exist: the problem is the sheet's alone
    text, expected = MALFORMED[case]
    found = problems(sheet(tmp_path, text))
    assert any(expected in line for line in found), found
    assert all("\n" not in line for line in found)


def test_a_csv_with_many_problems_reports_them_all_in_one_pass(tmp_path: Path) -> None:
    project(tmp_path)
    found = problems(
        sheet(
            tmp_path,
            "id,video,audio,tts_text,tts_speaker\n"
            "a,media/intro.mp4,media/intro_es.mp3,hi,1\n"  # both voices
            "b,media/missing.mp4,media/intro_de.wav,,\n"  # a missing file
            ",media/intro.mp4,media/gone.wav,,\n",  # no id, and a missing file
        )
    )
    assert found[:2] == [
        "row 4 column 'id': empty; every row needs an id",
        "row 2 column 'audio': give exactly one of `audio` (a local file) or `tts_text`",
    ]
    assert any(p.startswith("job 'b' (row 3) column 'video': ") for p in found), found
    assert any("column 'audio': " in p and "gone.wav: file not found" in p for p in found)


# -- JSON --------------------------------------------------------------------------------------


def test_a_json_manifest_is_the_yaml_schema_written_as_json(tmp_path: Path) -> None:
    import json

    import yaml

    yaml_path = project(tmp_path)
    json_path = tmp_path / "manifest.json"
    json_path.write_text(json.dumps(yaml.safe_load(EXAMPLE)), encoding="utf-8")
    assert same_jobs(load_all(json_path), load_all(yaml_path))
    json_path.write_text('{"version": 1, "version": 1, "jobs": []}', encoding="utf-8")
    assert problems(json_path) == [f"{json_path}: invalid JSON: duplicate key 'version'"]
    json_path.write_text('{"version": 1,', encoding="utf-8")
    assert problems(json_path)[0].startswith(f"{json_path}: invalid JSON: ")


# -- every problem at once ----------------------------------------------------------------------


def test_schema_and_file_problems_come_in_one_pass(tmp_path: Path) -> None:
    """A job with a misspelt field still gets its other files checked; another job's missing
    file is reported beside the schema problems (it used to wait for them to be fixed)."""
    path = project(
        tmp_path,
        """
version: 1
jobs:
  - id: typo
    vidoe: media/intro.mp4
    audio: media/missing_es.wav
  - id: colour
    video: media/intro.mp4
    audio: media/intro_es.mp3
    colour: red
  - id: gone
    video: media/nowhere.mp4
    audio: media/intro_de.wav
""",
    )
    found = problems(path)
    assert "job 'typo' field 'vidoe': unknown field; did you mean `video`?" in found[0]
    assert "job 'colour' field 'colour': unknown field (allowed:" in "\n".join(found)
    assert any(
        p.startswith("job 'typo' field 'audio': ") and p.endswith("missing_es.wav: file not found")
        for p in found
    ), found
    assert any(
        p.startswith("job 'gone' field 'video': ") and p.endswith("nowhere.mp4: file not found")
        for p in found
    ), found


def test_validate_prints_schema_and_file_problems_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = project(
        tmp_path,
        "version: 1\ndefualts: {tts_speaker: '1'}\njobs:\n"
        "  - {id: a, video: media/intro.mp4, audio: media/missing.wav}\n",
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "error: manifest field 'defualts': unknown field; did you mean `defaults`? (allowed:"
        " defaults, jobs, limits, output_dir, output_pattern, resume_from, version)"
    )
    assert err[1].startswith("error: job 'a' field 'audio': ")
    assert err[1].endswith("missing.wav: file not found")
    assert len(err) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  - {id: a, video: a.mp4, audio: a.mp3, outptu: x.mp4}\n", "did you mean `output`?"),
        ("  - {id: a, video: a.mp4, tts: {txet: hi, speaker: '1'}}\n", "did you mean `text`?"),
        ("  - {id: a, video: a.mp4, dubs: {es: {adio: a.mp3}}}\n", "did you mean `audio`?"),
        ("  - {id: a, video: a.mp4, audio: a.mp3, zzz: 1}\n", "unknown field (allowed: audio,"),
    ],
)
def test_an_unknown_field_suggests_the_nearest_known_one(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\njobs:\n" + text, encoding="utf-8")
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert any(expected in p for p in caught.value.problems), caught.value.problems
