"""Manifest parsing: structure, ids, exclusive fields, every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ManifestError
from pipeline.manifest import Limits, load_manifest


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(write(tmp_path, text))
    return caught.value.problems


def test_full_example_parses_with_fan_out_defaults_and_relative_paths(tmp_path: Path) -> None:
    m = load_manifest(
        write(
            tmp_path,
            """
version: 1
output_dir: out/dubs
defaults: {tts_speaker: "Auto"}
jobs:
  - id: intro-es
    video: media/intro.mp4
    audio: media/intro_es.mp3
  - id: intro-fr
    video: media/intro.mp4
    tts: {text: "Bonjour", speaker: "3"}
  - id: remix-de
    video_id: 391504857968062
    audio: media/remix_de.wav
  - id: promo
    video: media/promo.mov
    dubs:
      es: {audio: media/promo_es.wav}
      ja: {tts: {text: "こんにちは"}}
""",
        )
    )
    base = tmp_path.resolve()
    assert [j.id for j in m.jobs] == ["intro-es", "intro-fr", "remix-de", "promo-es", "promo-ja"]
    assert m.output_dir == base / "out/dubs"
    assert m.jobs[0].video == base / "media/intro.mp4"
    assert m.jobs[1].tts is not None
    assert m.jobs[1].tts.speaker == "3"
    assert m.jobs[2].video_id == 391504857968062
    assert m.jobs[2].video is None
    assert m.jobs[4].tts is not None
    assert m.jobs[4].tts.speaker == "Auto"
    assert m.jobs[3].audio == base / "media/promo_es.wav"
    assert m.limits == Limits()


def test_duplicate_keys_are_rejected(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        "version: 1\njobs:\n  - video: a.mp4\n    audio: a.mp3\n    audio: b.mp3\n",
    )
    assert len(found) == 1
    assert "duplicate key 'audio'" in found[0]


def test_unknown_fields_everywhere_are_reported_together(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        """
version: 1
colour: red
defaults: {speaker: x}
jobs:
  - id: a
    video: a.mp4
    audio: a.mp3
    prompt: hi
  - id: b
    video: a.mp4
    tts: {text: hi, speaker: "1", voice: x}
""",
    )
    joined = "\n".join(found)
    assert "field 'colour': unknown field" in joined
    assert "field 'defaults.speaker'" in joined
    assert "job 'a' field 'prompt': unknown field" in joined
    assert "job 'b' field 'tts.voice'" in joined
    assert len(found) == 4


def test_exclusive_video_and_voice_sources(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        """
version: 1
jobs:
  - id: both-video
    video: a.mp4
    video_id: 123456789012345
    audio: a.mp3
  - id: no-voice
    video: a.mp4
  - id: both-voice
    video: a.mp4
    audio: a.mp3
    tts: {text: hi, speaker: "1"}
""",
    )
    assert any("job 'both-video' field 'video': give exactly one" in p for p in found)
    assert any("job 'no-voice' field 'audio': give exactly one" in p for p in found)
    assert any("job 'both-voice' field 'audio': give exactly one" in p for p in found)


def test_id_rules_and_case_insensitive_uniqueness(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        """
version: 1
jobs:
  - {id: "-bad", video: a.mp4, audio: a.mp3}
  - {id: Intro, video: a.mp4, audio: a.mp3}
  - {id: intro, video: b.mp4, audio: b.mp3}
""",
    )
    assert any("field 'id': '-bad' must match" in p for p in found)
    assert any("job 'Intro' field 'id': used by 2 jobs" in p for p in found)


def test_derived_ids_are_deterministic_and_collisions_ask_for_ids(tmp_path: Path) -> None:
    text = """
version: 1
jobs:
  - {video: media/intro.mp4, audio: media/es.mp3}
  - {video: media/intro.mp4, tts: {text: "hola", speaker: "1"}}
  - {video_id: 391504857968062, audio: es.wav}
"""
    first = [j.id for j in load_manifest(write(tmp_path, text)).jobs]
    second = [j.id for j in load_manifest(write(tmp_path, text)).jobs]
    assert first == second
    assert first[0] == "intro-es"
    assert first[1].startswith("intro-tts-")
    assert first[2] == "v391504857968062-es"
    found = problems_of(
        tmp_path,
        "version: 1\njobs:\n"
        "  - {video: x/a.mp4, audio: b.mp3}\n"
        "  - {video: y/a.mp4, audio: b.wav}\n",
    )
    assert len(found) == 1
    assert "give these jobs explicit, different `id`s" in found[0]


def test_tts_speaker_is_required_without_a_default(tmp_path: Path) -> None:
    found = problems_of(tmp_path, "version: 1\njobs:\n  - {video: a.mp4, tts: {text: hi}}\n")
    assert found == ["jobs[0] field 'tts.speaker': missing: set it here or in defaults.tts_speaker"]


def test_version_types_and_limits(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        """
version: 2
limits: {video_max_seconds: 60, audio_max_mb: -1, frames: 3}
jobs:
  - {id: a, video_id: "abc", audio: a.mp3}
  - {id: b, video: 17, audio: a.mp3}
""",
    )
    joined = "\n".join(found)
    assert "field 'version': must be 1" in joined
    assert "field 'limits.audio_max_mb': must be a positive number" in joined
    assert "field 'limits.frames': unknown limit" in joined
    assert "job 'a' field 'video_id': must be a positive integer" in joined
    assert "job 'b' field 'video': must be a file path string" in joined
    limits = load_manifest(
        write(
            tmp_path,
            "version: 1\nlimits: {video_max_seconds: 60}\njobs: [{video: a.mp4, audio: b.mp3}]\n",
        )
    ).limits
    assert limits.video_max_seconds == 60
    assert limits.audio_max_seconds == 30


def test_invalid_yaml_and_empty_jobs(tmp_path: Path) -> None:
    assert "invalid YAML" in problems_of(tmp_path, "version: 1\njobs: [\n")[0]
    assert problems_of(tmp_path, "version: 1\njobs: []\n") == [
        "manifest field 'jobs': must be a non-empty list of jobs"
    ]


def test_complex_keys_and_trailing_newlines_in_ids_are_refused(tmp_path: Path) -> None:
    found = problems_of(tmp_path, "version: 1\njobs:\n  - ? [a, b]\n    : 1\n")
    assert "keys must be plain words" in found[0]
    found = problems_of(
        tmp_path, 'version: 1\njobs:\n  - {id: "intro\\n", video: a.mp4, audio: a.mp3}\n'
    )
    assert any("field 'id'" in p for p in found)


def test_yaml_1_1_surprises_are_refused_with_the_fix(tmp_path: Path) -> None:
    # Norway's "no" would become the boolean false, and id 010 the number 8
    found = problems_of(
        tmp_path, "version: 1\njobs:\n  - video: a.mp4\n    dubs:\n      no: {audio: n.mp3}\n"
    )
    assert "key 'no' reads as False: write it in quotes" in found[0]
    found = problems_of(tmp_path, "version: 1\njobs:\n  - {id: 010, video: a.mp4, audio: a.mp3}\n")
    assert found == ["jobs[0] field 'id': 8 is not text: write it in quotes"]
    found = problems_of(
        tmp_path, "version: 1\njobs:\n  - video: a.mp4\n    dubs:\n      1: {audio: n.mp3}\n"
    )
    assert "language 1 is not text" in found[0]
    ok = load_manifest(
        write(
            tmp_path,
            'version: 1\njobs:\n  - {id: "010", video: a.mp4, dubs: {"no": {audio: n.mp3}}}\n',
        )
    )
    assert [j.id for j in ok.jobs] == ["010-no"]


def test_a_fan_out_id_over_64_characters_is_refused_not_cut(tmp_path: Path) -> None:
    long_id = "a" * 62
    found = problems_of(
        tmp_path,
        f"version: 1\njobs:\n  - id: {long_id}\n    video: a.mp4\n    dubs:\n"
        "      es: {audio: es.mp3}\n",
    )
    assert len(found) == 1
    assert f"job id '{long_id}-es' must match" in found[0]
