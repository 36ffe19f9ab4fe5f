"""A full disk, for real: the output folder (state file included) on a tiny tmpfs.

Needs the right to mount (root, as on the dev machines and CI); skipped otherwise. The run
must stop, pay nothing twice, and a re-run once there is room must finish everything.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.simulator import Simulator
from tests.harness import fast_sim, project, sim_in_thread, tts_manifest
from tests.killrun import check_outputs
from tests.windows import env_for, pipeline_cmd, run_args

JOBS = 30  # 30 results of 12.5 kB and the state file's write-ahead log do not fit in 1 MB


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An empty 1 MB tmpfs at tmp_path/out; grow it with `grow(out)`."""
    out = tmp_path / "out"
    out.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(out)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield out
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False)


def grow(out: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=16m", str(out)], check=True)


def run(
    sim: Simulator, manifest: Path, out: Path, concurrency: int = 5
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        pipeline_cmd(*run_args(manifest, out, concurrency=concurrency)),
        env=env_for(sim),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_full_disk_stops_the_run_and_a_rerun_with_room_pays_nothing_twice(
    tmp_path: Path, small_disk: Path
) -> None:
    manifest = project(tmp_path, tts_manifest(JOBS))
    with sim_in_thread(fast_sim(concurrency_limit=5)) as sim:
        full = run(sim, manifest, small_disk)
        assert full.returncode != 0
        assert "disk is full" in full.stderr or "No space left" in full.stderr
        stopped = check_outputs(sim, small_disk)
        assert stopped.done < JOBS
        assert stopped.duplicates == {}
        grow(small_disk)
        again = run(sim, manifest, small_disk)
        sim.settle()
        after = check_outputs(sim, small_disk)
    assert again.returncode == 0, again.stderr
    assert after.done == JOBS
    assert after.generations == JOBS
    assert after.duplicates == {}
    assert after.bad_outputs == []


def test_a_full_disk_ends_with_one_error_line_and_exit_74(tmp_path: Path, small_disk: Path) -> None:
    manifest = project(tmp_path, tts_manifest(JOBS))
    with sim_in_thread(fast_sim(concurrency_limit=5)) as sim:
        # one job at a time: no download's .part is deleted (freeing room) as the run stops,
        # so the report finds the disk full every time
        full = run(sim, manifest, small_disk, concurrency=1)
    assert "Traceback" not in full.stderr, full.stderr[-2000:]
    assert full.returncode == 74  # a disk error (exit-code table)
