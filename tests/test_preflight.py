"""Preflight specifics the CLI tests do not show: one probe per distinct file."""

from __future__ import annotations

from pathlib import Path

import pytest

import pipeline.preflight
from pipeline.manifest import load_manifest
from pipeline.media import MediaInfo
from pipeline.preflight import preflight
from tests.harness import EXAMPLE, project


def test_each_distinct_file_is_probed_and_hashed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probed: list[Path] = []
    hashed: list[Path] = []
    real_probe, real_hash = pipeline.preflight.probe, pipeline.preflight.sha256_file

    def counting_probe(path: Path) -> MediaInfo:
        probed.append(path)
        return real_probe(path)

    def counting_hash(path: Path) -> str:
        hashed.append(path)
        return real_hash(path)

    monkeypatch.setattr(pipeline.preflight, "probe", counting_probe)
    monkeypatch.setattr(pipeline.preflight, "sha256_file", counting_hash)
    checked = preflight(load_manifest(project(tmp_path, EXAMPLE)))
    assert len(checked.manifest.jobs) == 6
    assert sorted(p.name for p in probed) == sorted(
        ["intro.mp4", "intro_es.mp3", "intro_de.wav", "remix_de.wav", "promo.mov", "promo_es.wav"]
    )
    assert sorted(hashed) == sorted(probed)
    assert len(checked.media) == 6
    intro = checked.media[tmp_path.resolve() / "media" / "intro.mp4"]
    assert intro.info.kind == "video"
    assert len(intro.sha256) == 64


def test_container_is_judged_by_content_not_name(tmp_path: Path) -> None:
    manifest = project(
        tmp_path,
        "version: 1\njobs:\n  - {id: x, video: media/fake.mp4, audio: media/intro_es.mp3}\n",
    )
    (tmp_path / "media" / "fake.mp4").write_bytes(
        (tmp_path / "media" / "intro_es.mp3").read_bytes()
    )
    with pytest.raises(pipeline.preflight.ManifestError) as caught:
        preflight(load_manifest(manifest))
    assert "is audio, expected video" in caught.value.problems[0]
