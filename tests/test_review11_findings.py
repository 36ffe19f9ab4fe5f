"""Review 11 findings: the download-completeness check (fix9: `_Decoder` reads every gzip
member, `_check_video` asks `isobmff.check_whole`). Each xfail test fails today because of the
defect it names; the other tests pin layouts the check gets right, so a fix keeps them.

Real media (PyAV remuxes of tests/media_factory.py videos with FFmpeg's own `movflags`), the
real client over loopback (a raw socket server: a close-delimited body cut where we say)."""

from __future__ import annotations

import struct
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from pipeline.client import ClientConfig, PixverseClient
from pipeline.download import Fetched, Link, fetch_to_file
from pipeline.errors import TransportError
from tests.harness import FAST_RETRY
from tests.media_factory import make_video, remux
from tests.test_review9_findings import _close_delimited_cdn

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[1]


def _remux(options: dict[str, str], *, container: str = "mp4", seconds: float = 4) -> bytes:
    """A `make_video` result remuxed by FFmpeg's mov/mp4 muxer with `options` (movflags)."""
    with tempfile.TemporaryDirectory() as folder:
        src = make_video(Path(folder) / "src.mp4", seconds=seconds)
        return remux(src, Path(folder) / f"out.{container}", options, container).read_bytes()


def _top_level(data: bytes) -> list[tuple[bytes, int]]:
    """(type, start) of each top-level box (FFmpeg writes 32-bit sizes in these files)."""
    boxes, at = [], 0
    while at < len(data):
        size, kind = struct.unpack_from(">I4s", data, at)
        boxes.append((kind, at))
        at += size
    return boxes


async def _fetch(url: str, dest: Path) -> Fetched:
    config = ClientConfig(base_url=url, api_key="k", retry=FAST_RETRY)
    async with PixverseClient(config) as client:
        return await fetch_to_file(client, Link(f"{url}/result.mp4", None), dest)


# Sound: real FFmpeg layouts land whole --------------------------------------------------


@pytest.mark.parametrize(
    ("container", "movflags"),
    [
        ("mp4", "frag_keyframe+empty_moov"),
        ("mp4", "frag_keyframe+empty_moov+default_base_moof"),
        ("mp4", "dash"),
        ("mp4", "cmaf"),
        ("mp4", "frag_keyframe+empty_moov+skip_trailer"),
        ("mp4", "+use_metadata_tags"),
        ("mov", ""),
        ("mov", "+faststart"),
    ],
)
async def test_real_ffmpeg_layouts_land_whole(
    tmp_path: Path, container: str, movflags: str
) -> None:
    """Fragmented (moov, then moof+mdat pairs, sidx, mfra), tagged, and QuickTime (wide
    before mdat) files: every top-level layout FFmpeg writes tiles the file and lands."""
    video = _remux({"movflags": movflags} if movflags else {}, container=container, seconds=2)
    async with _close_delimited_cdn(video, len(video)) as url:
        fetched = await _fetch(url, tmp_path / "a.mp4")
    assert (tmp_path / "a.mp4").read_bytes() == video
    assert fetched.check.info.container == container


# R11-1: a fragmented mp4 cut between a moof and its mdat ---------------------------------

FRAGMENTED = _remux({"movflags": "frag_keyframe+empty_moov", "frag_duration": "500000"})


def _after_a_middle_moof() -> int:
    """Where the mdat of the middle fragment begins: its moof has arrived whole, not one
    byte of the media that moof's `trun` points into."""
    boxes = _top_level(FRAGMENTED)
    moofs = [i for i, (kind, _) in enumerate(boxes) if kind == b"moof"]
    following = boxes[moofs[len(moofs) // 2] + 1]
    assert following[0] == b"mdat"
    return following[1]


async def test_a_fragmented_result_cut_between_a_moof_and_its_mdat_is_refused(
    tmp_path: Path,
) -> None:
    """Defect: `isobmff.check_whole` checks that the top-level boxes tile the file, that a
    moov and an mdat are among them, and that the moov's sample tables end within it. A
    fragmented mp4 (`frag_keyframe+empty_moov`: what FFmpeg must write to a pipe or a
    streaming upload; DASH and CMAF too) has empty sample tables in its moov: each `moof`'s
    `trun` says where its samples are, in the `mdat` after it. A close-delimited body cut
    just after a whole `moof` tiles the file, has both boxes (earlier fragments' mdats),
    probes as an mp4 video (FFmpeg: 3.0 s of 4.4 s) and decodes: it lands at the job's path
    and the job is DONE with part of its video (sin: a truncated result accepted; a paid
    whole result never fetched again without --redo). The same check the moov gets would
    catch it: the last moof's `trun` data (`tfhd` base offset or the moof's start, plus the
    `trun` data offset and sample sizes) reaches past the file's end. Expected: a failed try
    (TransportError), retried; the whole file still lands (checked first here)."""
    dest = tmp_path / "a.mp4"
    async with _close_delimited_cdn(FRAGMENTED, len(FRAGMENTED)) as url:
        whole = await _fetch(url, dest)  # fragmented files are results
    dest.unlink()
    cut = _after_a_middle_moof()
    async with _close_delimited_cdn(FRAGMENTED, cut) as url:
        try:
            fetched = await _fetch(url, dest)
        except TransportError:
            fetched = None  # refused: a failed try, retried for a fresh link
    assert fetched is None, (
        f"cut at byte {cut} of {len(FRAGMENTED)} landed:"
        f" {fetched.check.info.duration} s of {whole.check.info.duration} s"
    )
    assert list(tmp_path.iterdir()) == []


# R11-2: a hostile stsz count ----------------------------------------------------------------


def _huge_stsz(count: int) -> bytes:
    """A whole, probing result whose video `stsz` says every sample is 1 byte and there are
    `count` of them (a constant sample size: no table follows, so the file stays 26 kB)."""
    with tempfile.TemporaryDirectory() as folder:
        data = bytearray(make_video(Path(folder) / "r.mp4", seconds=2).read_bytes())
    at = data.index(b"stsz")  # the video's track comes first
    struct.pack_into(">II", data, at + 8, 1, count)  # after version and flags
    return bytes(data)


# A child interpreter with its address space capped (so a runaway allocation fails fast
# instead of taking the machine): it fetches the file over loopback with Content-Length and
# prints what came of it, and its peak memory.
_CHILD = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    cap = 3 << 30
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import anyio
    from pipeline.client import ClientConfig, PixverseClient
    from pipeline.download import Link, fetch_to_file
    from pipeline.errors import TransportError
    from tests.harness import FAST_RETRY
    from tests.raw_http import serve_raw

    body = Path(sys.argv[1]).read_bytes()
    head = b"HTTP/1.1 200 OK\\r\\nContent-Type: video/mp4\\r\\nConnection: close\\r\\n"
    head += b"Content-Length: %d\\r\\n\\r\\n" % len(body)

    async def main() -> str:
        async with serve_raw(head + body) as url:
            config = ClientConfig(base_url=url, api_key="k", retry=FAST_RETRY)
            async with PixverseClient(config) as client:
                link = Link(f"{url}/result.mp4", None)
                try:
                    await fetch_to_file(client, link, Path(sys.argv[2]))
                except Exception as exc:
                    return type(exc).__name__
                return "landed"

    outcome = anyio.run(main)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(outcome, peak_mb)
    """
)


def _fetch_in_capped_child(tmp_path: Path, video: bytes) -> tuple[str, int]:
    source = tmp_path / "hostile.mp4"
    source.write_bytes(video)
    (tmp_path / "out").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(source), str(tmp_path / "out" / "a.mp4")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    outcome, peak = done.stdout.split()
    return outcome, int(peak)


def test_an_stsz_with_four_billion_samples_is_a_failed_try_not_a_memory_error(
    tmp_path: Path,
) -> None:
    """Defect: `isobmff._sizes` turns a constant-size `stsz` into a list of `count` ints, and
    `count` is whatever the file says (up to 2**32 - 1): 34 GB of pointers for a 26 kB file
    that FFmpeg probes without complaint (the sizes are constant: it never expands them).
    Here the child's address space is capped at 3 GB, so it fails at once with MemoryError;
    uncapped, on a machine that overcommits, it fills memory until the kernel kills the run
    (sin: a crash of the run, every job's download with it). MemoryError is no
    TransientError: `download_result` does not retry it, the runner logs it as "unexpected"
    and leaves the job. Expected: the check works from the count without expanding it (a
    chunk's reach is offset + samples x constant), so this file either lands (every chunk it
    points at ends within it) or is a failed try (TransportError)."""
    outcome, _ = _fetch_in_capped_child(tmp_path, _huge_stsz(0xFFFFFFFF))
    assert outcome in {"landed", "TransportError"}, outcome


def test_checking_a_small_result_takes_little_memory_whatever_its_stsz_count(
    tmp_path: Path,
) -> None:
    """The same defect below the cap: 0x0C000000 samples is a 1.6 GB list (measured without
    the cap: 0x10000000 took 2 GB resident and 1.5 s of CPU for a 26 kB file), per download,
    on a machine shared by the run's other work. The check reads only the moov (its own
    docstring: kilobytes); its memory must not follow a count the file merely states."""
    outcome, peak_mb = _fetch_in_capped_child(tmp_path, _huge_stsz(0x0C000000))
    assert outcome in {"landed", "TransportError"}, outcome
    assert peak_mb < 512, f"peak {peak_mb} MB to check a {26} kB file"
