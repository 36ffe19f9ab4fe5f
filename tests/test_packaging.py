"""`pip install .` (and pipx) gives a working `pixverse-batch demo`: the example manifest and
its media are package data, not files of a checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pipeline
from pipeline.cli import build_parser
from pipeline.manifest import load_manifest
from tests.harness import REPO


def test_the_demo_manifest_and_its_media_live_in_the_package() -> None:
    demo = build_parser().parse_args(["demo"])
    package = Path(pipeline.__file__).resolve().parent
    assert demo.manifest.is_relative_to(package)
    for job in load_manifest(demo.manifest).jobs:
        for path in job.media_paths():
            assert path.is_relative_to(package), path
            assert path.is_file(), path


def test_the_wheel_ships_the_example_and_its_media(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("pixverse_batch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    manifest = load_manifest(REPO / "pipeline" / "examples" / "example.yaml")
    wanted = {"pipeline/examples/example.yaml", "pipeline/simulator/assets/base.mp4"}
    wanted |= {"pipeline/assets/report.css", "pipeline/assets/report.js"}  # report.html's
    wanted |= {
        path.relative_to(REPO).as_posix() for job in manifest.jobs for path in job.media_paths()
    }
    assert wanted <= names, sorted(wanted - names)
