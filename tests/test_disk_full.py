"""A disk that fills up (or refuses big files) mid-run: a one-line error, exit 74, no new
submissions, nothing temporary left behind, and the next run resumes.

The disk is real (tests/fs_faults.py): a tiny tmpfs where this process may mount one, else a
child process whose files may not grow past a limit (EFBIG). Runs happen in a child process
(the limit is per process), against the simulator in a thread of this one.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import pytest

from pipeline.jobstate import JobState
from pipeline.state import StateStore
from tests.fs_faults import file_size_limit_works, mount_tmpfs, python, umount
from tests.harness import REPO, fast_sim, project, sim_in_thread

# The simulator's result carries the uploaded picture stream: a noisy input makes a big one,
# far above the size limit, while the state file stays far below it.
NOISE_FRAMES = 10  # about 1.2 MB at 320x240
FILE_SIZE_LIMIT = 512 * 1024


def make_noise_video(path: Path) -> Path:
    """An mp4 of random pixels (incompressible): a big result for a small test."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=5)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.qmin = stream.codec_context.qmax = 1
        for _ in range(NOISE_FRAMES):
            frame = av.VideoFrame(320, 240, "rgb24")
            frame.planes[0].update(os.urandom(frame.planes[0].line_size * 240))
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def noise_manifest(count: int) -> str:
    lines = ["version: 1", "defaults: {tts_speaker: '1'}", "jobs:"]
    lines += [
        f"  - {{id: job-{i}, video: media/noise.mp4, tts: {{text: 'line {i}'}}}}"
        for i in range(count)
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Disk:
    """`folder` is where writes fail once a little has been written; commands run through
    `command` see the same limit."""

    mechanism: str
    folder: Path
    file_size_limit: int | None = None

    def command(self, *args: str) -> list[str]:
        return python(*args, file_size_limit=self.file_size_limit)

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture(params=["tmpfs", "fsize"])
def small_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Disk]:
    """Room for a probe file and a report, not for a result video."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if request.param == "tmpfs":
        if not mount_tmpfs(folder, "size=64k"):
            pytest.skip("mounting a tmpfs is not permitted here (the fsize variant runs)")
        try:
            yield Disk("tmpfs", folder)
        finally:
            umount(folder)
    else:
        if not file_size_limit_works(folder):
            pytest.skip("RLIMIT_FSIZE is not honoured here (the tmpfs variant runs)")
        yield Disk("fsize", folder, file_size_limit=FILE_SIZE_LIMIT)


def test_a_full_disk_stops_the_run_with_exit_74_and_leaves_no_temporary(
    tmp_path: Path, small_disk: Disk
) -> None:
    manifest = project(tmp_path, noise_manifest(6))
    make_noise_video(tmp_path / "media" / "noise.mp4")
    out = small_disk.folder / "out"
    # the state file is elsewhere (a full state disk is the next test); with a file-size
    # limit it is bound by it too, and stays below it for these few jobs
    state = tmp_path / "state.sqlite"
    with sim_in_thread(fast_sim()) as sim:
        env = {"PIXVERSE_API_KEY": "sim-key", "PIXVERSE_BASE_URL": sim.url}
        args = ["run", str(manifest), "--out", str(out), "--state", str(state)]
        fast = ["--concurrency", "1", "--poll-interval", "0.02"]
        done = small_disk.run("-m", "pipeline", *args, *fast, env=env)
        generations = len(sim.ledger.generations)
    assert done.returncode == 74, done.stderr  # ExitCode.DISK (EX_IOERR)
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    assert "No space left on device" in errors[0] or "File too large" in errors[0]
    assert "run the same command again" in errors[0]
    # the run stopped at the first result it could not save: at most the job that was
    # already submitting when the download failed was paid for as well
    assert 1 <= generations <= 2, generations
    # report.html's thumbnails (`.thumbs/`) are no temporaries; none of their own is left either
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith(".") and p.is_file())
    leftovers += [p.name for p in out.glob(".thumbs/.*")]
    assert leftovers == [], leftovers  # no .part, no .report.json.tmp
    store = StateStore.read_only(state)
    try:
        states = {r.id: r.state for r in store.jobs()}
    finally:
        store.close()
    assert JobState.DOWNLOADING in states.values()  # paid, kept, resumable
    assert JobState.FAILED not in states.values()


_REPORT = """
from pathlib import Path
from pipeline.report import ReportRow, write_report
row = ReportRow("j" * 40, "done", 1, "x.mp4", 1, 1, False, 1, 0, "e" * 2000)
filler = Path({folder!r}) / "filler"
with open(filler, "wb", buffering=0) as handle:  # fill a tmpfs, or stop at the size limit
    try:
        while True:
            handle.write(b"f" * 4096)
    except OSError:
        pass
filler.unlink() if {drop_filler} else None
try:
    write_report(Path({folder!r}), [row] * 400, {{}})  # 800 kB: over any limit here
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_a_report_that_does_not_fit_leaves_no_temporary(small_disk: Disk) -> None:
    # a tmpfs stays full of filler; under a size limit the filler file is only capped, so it
    # goes, and the report (above the limit) fails on its own
    drop = small_disk.mechanism == "fsize"
    code = _REPORT.format(folder=str(small_disk.folder), drop_filler=drop)
    done = small_disk.run("-c", textwrap.dedent(code))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("DiskError cannot write "), done.stdout
    names = sorted(p.name for p in small_disk.folder.iterdir() if p.name != "filler")
    assert names == [], names


_STATE = """
from pathlib import Path
from pipeline.state import StateStore
store = StateStore.open(Path({folder!r}) / "state.sqlite")
store.add_job("j1", "fp")
try:
    for i in range(10_000):
        store.update("j1", "x" * 4000, error=str(i))
    print("no error")
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_a_state_file_that_cannot_grow_is_a_disk_error(tmp_path: Path) -> None:
    """SQLite's "database or disk is full" (or the "disk I/O error" EFBIG becomes) is a disk
    problem with its own exit code, not an unreadable state file (exit 3). (1 MB of disk: a
    new state file's migrations alone leave about 240 KB of WAL.)"""
    folder = tmp_path / "disk"
    folder.mkdir()
    if mount_tmpfs(folder, "size=1m"):
        try:
            disk = Disk("tmpfs", folder)
            done = disk.run("-c", textwrap.dedent(_STATE.format(folder=str(folder))))
        finally:
            umount(folder)
    elif file_size_limit_works(folder):
        disk = Disk("fsize", folder, file_size_limit=1024 * 1024)
        done = disk.run("-c", textwrap.dedent(_STATE.format(folder=str(folder))))
    else:
        pytest.skip("neither a tmpfs mount nor RLIMIT_FSIZE is available here")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("DiskError cannot write the state file"), done.stdout
