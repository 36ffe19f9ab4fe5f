"""pipeline.media: what probe() reports for real files, and how it refuses broken ones."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import av.logging
import pytest

from pipeline.media import MediaInfo, MediaProbeError, probe, sha256_file
from tests.media_factory import make_audio, make_truncated, make_video

SAMPLES = Path(__file__).resolve().parent.parent / "pipeline" / "examples" / "media"


def test_mp4_video_with_its_audio_track(tmp_path: Path) -> None:
    path = make_video(tmp_path / "clip.mp4", seconds=1.0, width=64, height=36)

    info = probe(path)

    assert info.duration == pytest.approx(1.0, abs=0.05)
    assert replace(info, duration=1.0) == MediaInfo(
        kind="video",
        container="mp4",
        duration=1.0,
        width=64,
        height=36,
        size=path.stat().st_size,
        has_audio=True,
    )


def test_mov_is_told_from_mp4_by_its_brand(tmp_path: Path) -> None:
    info = probe(make_video(tmp_path / "clip.mov", seconds=2.0, fps=2))

    assert (info.kind, info.container) == ("video", "mov")
    assert info.duration == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize(
    ("written", "named", "expected"),
    [("mov", "disguised.mp4", "mov"), ("mp4", "disguised.mov", "mp4")],
)
def test_video_container_comes_from_the_bytes_not_the_name(
    tmp_path: Path, written: str, named: str, expected: str
) -> None:
    assert probe(make_video(tmp_path / named, container=written)).container == expected


@pytest.mark.parametrize(("real", "named"), [("voice.wav", "voice.mp3"), ("voice.mp3", "x.wav")])
def test_audio_container_comes_from_the_bytes_not_the_name(
    tmp_path: Path, real: str, named: str
) -> None:
    path = make_audio(tmp_path / real).rename(tmp_path / named)

    assert probe(path).container == Path(real).suffix[1:]


@pytest.mark.parametrize(
    ("name", "container"), [("v.mp3", "mp3"), ("v.wav", "wav"), ("v.m4a", "m4a")]
)
def test_audio_files(tmp_path: Path, name: str, container: str) -> None:
    path = make_audio(tmp_path / name, seconds=1.5, sample_rate=16_000)

    info = probe(path)

    assert (info.kind, info.container) == ("audio", container)
    assert info.duration == pytest.approx(1.5, abs=0.05)
    assert (info.width, info.height) == (None, None)
    assert info.size == path.stat().st_size
    assert info.has_audio


def test_mp3_cover_art_does_not_make_it_a_video(tmp_path: Path) -> None:
    path = make_audio(tmp_path / "song.mp3", cover_art=True)
    with av.open(str(path)) as container:  # the premise: FFmpeg does see a video stream
        assert len(container.streams.video) == 1

    info = probe(path)

    assert (info.kind, info.width, info.height) == ("audio", None, None)


def test_video_without_an_audio_track(tmp_path: Path) -> None:
    info = probe(make_video(tmp_path / "silent.mp4", audio=False))

    assert info.kind == "video"
    assert not info.has_audio


def test_long_video_duration(tmp_path: Path) -> None:
    info = probe(make_video(tmp_path / "long.mp4", seconds=31, fps=1))

    assert info.duration == pytest.approx(31.0, abs=0.1)


def test_wide_video_dimensions(tmp_path: Path) -> None:
    info = probe(make_video(tmp_path / "wide.mov", width=2000, height=100, fps=1))

    assert (info.width, info.height, info.container) == (2000, 100, "mov")


@pytest.mark.parametrize(("name", "container"), [("v.webm", "webm"), ("v.mkv", "matroska")])
def test_webm_is_told_from_matroska(tmp_path: Path, name: str, container: str) -> None:
    info = probe(make_video(tmp_path / name))

    assert (info.kind, info.container, info.has_audio) == ("video", container, True)
    assert info.duration == pytest.approx(1.0, abs=0.1)


def test_duration_of_a_headerless_stream_comes_from_its_packets(tmp_path: Path) -> None:
    path = make_video(tmp_path / "raw.h264", seconds=2.0, fps=5)
    with av.open(str(path)) as container:  # the premise: no header states a duration
        assert container.duration is None
        assert container.streams.video[0].duration is None

    info = probe(path)

    assert (info.kind, info.container) == ("video", "h264")
    assert info.duration == pytest.approx(2.0, abs=0.01)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("id,video\n1,intro.mp4\n"), "not a readable media file: "),
        (lambda p: p.write_bytes(b""), "file is empty"),
        (make_truncated, "not a readable media file: moov atom not found"),
        (lambda p: None, "cannot read file: No such file or directory"),
        (lambda p: p.mkdir(), "not a readable media file: "),
    ],
    ids=["text", "empty", "truncated", "missing", "folder"],
)
def test_unusable_files_raise_a_one_line_error(
    tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    path = tmp_path / "clip.mp4"
    make(path)

    with pytest.raises(MediaProbeError, match=f"^{message}") as caught:
        probe(path)

    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_subtitles_alone_are_not_media(tmp_path: Path) -> None:
    path = tmp_path / "captions.mp4"
    path.write_text("1\n00:00:01,000 --> 00:00:02,000\nHola\n\n")

    with pytest.raises(MediaProbeError, match=r"^no video or audio stream$"):
        probe(path)


def test_the_same_failure_is_explained_every_time(tmp_path: Path) -> None:
    # FFmpeg logging skips repeated lines by default; the reason must not vanish on file two.
    first = make_truncated(tmp_path / "a.mp4")
    second = make_truncated(tmp_path / "b.mp4")

    for path in (first, second, first):
        with pytest.raises(MediaProbeError, match="moov atom not found"):
            probe(path)


@pytest.fixture
def log_level() -> Iterator[None]:
    before = av.logging.get_level()
    yield
    av.logging.set_level(before)


@pytest.mark.usefixtures("log_level")
@pytest.mark.parametrize("level", [None, av.logging.WARNING, av.logging.VERBOSE])
def test_probe_is_silent_and_leaves_ffmpeg_logging_as_it_was(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], level: int | None
) -> None:
    av.logging.set_level(level)
    good = make_video(tmp_path / "good.mp4")
    bad = make_truncated(tmp_path / "bad.mp4")
    capfd.readouterr()

    probe(good)
    with pytest.raises(MediaProbeError):
        probe(bad)

    assert capfd.readouterr() == ("", "")
    assert av.logging.get_level() == level
    assert av.logging.get_skip_repeated()


@pytest.mark.parametrize(
    ("name", "kind", "container", "seconds", "size", "has_audio"),
    [
        ("intro.mp4", "video", "mp4", 2.0, (160, 90), True),
        ("promo.mov", "video", "mov", 2.0, (160, 90), False),
        ("intro_es.mp3", "audio", "mp3", 2.0, (None, None), True),
        ("intro_de.wav", "audio", "wav", 1.5, (None, None), True),
        ("promo_es.wav", "audio", "wav", 2.0, (None, None), True),
        ("remix_de.wav", "audio", "wav", 1.0, (None, None), True),
    ],
)
def test_committed_demo_samples(
    name: str,
    kind: str,
    container: str,
    seconds: float,
    size: tuple[int | None, int | None],
    has_audio: bool,
) -> None:
    path = SAMPLES / name

    info = probe(path)

    assert (info.kind, info.container, (info.width, info.height)) == (kind, container, size)
    assert info.duration == pytest.approx(seconds, abs=0.05)
    assert info.has_audio is has_audio
    assert info.size == path.stat().st_size <= 60 * 1024


def test_sha256_streams_in_chunks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5 + b"tail"
    path = tmp_path / "blob.bin"
    path.write_bytes(data)

    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(path, chunk_size=7) == expected
    assert sha256_file(path) == expected


def test_sha256_of_media_and_of_nothing(tmp_path: Path) -> None:
    clip = make_video(tmp_path / "clip.mp4")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")

    assert sha256_file(clip) == hashlib.sha256(clip.read_bytes()).hexdigest()
    assert sha256_file(empty) == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
