"""The planner: where a long job is cut, on the video's frame grid, and what each cut costs.

A long job has a local video and an audio dub, one of them longer than the API allows
(`Limits.video_max_seconds`/`audio_max_seconds`). The dub decides the result's length: a longer
video is cut to it, a shorter one is refused unless the manifest says `extend: loop|freeze`.

`plan_cuts` (pure) picks cut times no more than the limit apart: in each stretch it prefers the
longest pause (`pipeline.longform.pauses`) in the later half of the allowed window, cutting in
its middle, so that no syllable is split; with no pause there, it cuts at the limit. No segment
is shorter than the minimum (`Limits.segment_min_seconds`): the window ends that much before
the dub does, which moves the last cut earlier when needed. Cuts land on frame boundaries
(`k / fps`), so the video and the audio are cut at the same timestamps.

Exactly-once across resumes: a plan's `basis` is a hash of the parent's input hashes and the
planning parameters; the state file keeps the plan by basis, so a resumed run never re-plans
what it paid for. Each segment's fingerprint is what its generation receives: the video's
content hash with the source times of its frames, and the hash of the dub's decoded samples in
its range (`pipeline.longform.cut.fingerprinted`). So a segment whose range and content are
the same pays nothing again, whatever else changed (the limits, the dub outside its range),
and the bytes of a re-encoded cut (an encoder need not be deterministic) never count. The
fingerprints of earlier versions (the basis with the range, `legacy_fingerprint`) are still
recognised, so their records resume.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from pipeline.longform.pauses import Pause
from pipeline.manifest import Job, Limits, Segment
from pipeline.plan import CREDITS_PER_AUDIO_SECOND

CUTTER = 1  # bump when cutting changes what a segment's generation receives
SEARCH_FROM = 0.5  # pauses are looked for in the later half of each allowed window


@dataclass(frozen=True)
class LongPlan:
    """How one long job is cut: segment i covers frames `cuts[i]` up to `cuts[i+1]` (the last
    up to the dub's end) on a grid of `fps` frames a second."""

    job_id: str
    basis: str  # the parent's inputs and the planning parameters, hashed
    dub_seconds: float
    video_seconds: float
    fps: Fraction
    cuts: tuple[int, ...]  # the first frame of each segment; cuts[0] == 0
    extend: str | None = None
    notes: tuple[str, ...] = ()  # what the plan did to the inputs, said to the user
    fingerprints: tuple[str, ...] = ()  # per segment: what it sends (`cut.fingerprinted`)
    dub: str = ""  # the dub's sha256: the stitched result's sound

    @property
    def frames(self) -> int:
        """Frames of the stitched result: the dub's length, to the nearest frame."""
        return max(self.cuts[-1] + 1, round(self.dub_seconds * self.fps))

    def ranges(self) -> list[tuple[float, float]]:
        starts = [float(k / self.fps) for k in self.cuts]
        return list(zip(starts, [*starts[1:], self.dub_seconds], strict=True))

    def frame_ranges(self) -> list[tuple[int, int]]:
        return list(zip(self.cuts, [*self.cuts[1:], self.frames], strict=True))

    def credits(self) -> int:
        """The price model's estimate: every segment is paid by its own seconds, rounded up."""
        return sum(
            CREDITS_PER_AUDIO_SECOND * math.ceil(end - start) for start, end in self.ranges()
        )

    def line(self) -> str:
        """`talk-es: 70.0 s -> 3 segments: 0-24.3, 24.3-51.8, 51.8-70.0; about 288 credits`"""
        spans = ", ".join(f"{_num(a)}-{_num(b)}" for a, b in self.ranges())
        count = len(self.cuts)
        noun = "segment" if count == 1 else "segments"
        text = f"{self.job_id}: {self.dub_seconds:.1f} s -> {count} {noun}: {spans};"
        text += f" about {self.credits()} credits"
        return text + "".join(f"; {note}" for note in self.notes)

    def segment_jobs(self, parent: Job, files: Sequence[tuple[Path, Path]]) -> list[Job]:
        """The segment jobs, each with its cut (video, audio) files from `files`."""
        jobs = []
        for index, ((start, end), (video, audio)) in enumerate(
            zip(self.ranges(), files, strict=True), 1
        ):
            part = Segment(parent.id, index, start, end, self.segment_fingerprint(index))
            jobs.append(
                Job(f"{parent.id}~{index}", parent.where, video=video, audio=audio, segment=part)
            )
        return jobs

    def segment_fingerprint(self, index: int) -> str:
        """What segment `index` (1-based) is paid under: the content it sends."""
        if len(self.fingerprints) != len(self.cuts):
            raise ValueError(f"{self.job_id}: the plan's segments are not fingerprinted")
        return self.fingerprints[index - 1]

    def legacy_fingerprint(self, index: int) -> str:
        """Segment `index`'s fingerprint as versions before content fingerprints made it (the
        basis with the range): records saved under it are taken as this segment's."""
        first, last = self.frame_ranges()[index - 1]
        end = self.dub_seconds if index == len(self.cuts) else float(last / self.fps)
        parts = {"basis": self.basis, "frames": [first, last], "end": f"{end:.6f}"}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def source_time(self, frame: int) -> float:
        """Where in the video frame `frame` of the result is taken from: `extend: loop` plays
        the video again, `freeze` (and a video cut to the dub) holds its last frame."""
        seconds = float(frame / self.fps)
        last = self.video_seconds - float(1 / self.fps)
        if self.extend == "loop" and self.video_seconds > 0:
            return seconds % self.video_seconds
        return min(seconds, max(0.0, last))

    def same_result(self, other: LongPlan) -> bool:
        """Whether `other` stitches into the same file: the same segments, content and dub."""
        return bool(self.fingerprints) and (
            self.fingerprints,
            self.cuts,
            self.frames,
            self.dub,
        ) == (other.fingerprints, other.cuts, other.frames, other.dub)

    def to_json(self) -> str:
        return json.dumps(
            {
                "dub_seconds": self.dub_seconds,
                "video_seconds": self.video_seconds,
                "fps": str(self.fps),
                "cuts": list(self.cuts),
                "extend": self.extend,
                "notes": list(self.notes),
                "fingerprints": list(self.fingerprints),
                "dub": self.dub,
            }
        )

    @classmethod
    def from_json(cls, job_id: str, basis: str, text: str) -> LongPlan:
        data = json.loads(text)
        return cls(
            job_id,
            basis,
            float(data["dub_seconds"]),
            float(data["video_seconds"]),
            Fraction(data["fps"]),
            tuple(int(k) for k in data["cuts"]),
            data.get("extend"),
            tuple(data.get("notes", ())),
            tuple(data.get("fingerprints", ())),  # none in a plan saved by an earlier version
            str(data.get("dub", "")),
        )


def basis(video_sha: str, audio_sha: str, extend: str | None, limits: Limits) -> str:
    """What a long job's cuts depend on: its inputs' content and the planning parameters."""
    parts = {
        "video": video_sha,
        "audio": audio_sha,
        "extend": extend,
        "limit": limit_of(limits),
        "minimum": limits.segment_min_seconds,
        "cutter": CUTTER,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def plan_cuts(
    total: float, pauses: Sequence[Pause], limit: float, minimum: float, fps: Fraction
) -> list[int]:
    """First frames of the segments of `total` seconds (the first is 0): each segment at most
    `limit` and at least `minimum` seconds, cut in the middle of the longest pause near the
    limit, else at the limit. Raises ValueError when the limits leave no room for a cut."""
    cuts = [0]
    while total - cuts[-1] / fps > limit + 1e-9:
        start = float(cuts[-1] / fps)
        low, high = start + minimum, min(start + limit, total - minimum)
        if high < low:
            raise ValueError(f"limits of {limit:g} s and {minimum:g} s leave no room for a cut")
        cut = _pause_cut(pauses, max(low, start + SEARCH_FROM * limit), high, fps)
        if cut is None:
            cut = math.floor(high * fps + 1e-9)  # no pause: at the limit, on the grid
        if cut <= cuts[-1]:
            raise ValueError(f"{float(1 / fps):.3f} s frames are too long for these limits")
        cuts.append(cut)
    return cuts


def _pause_cut(pauses: Sequence[Pause], low: float, high: float, fps: Fraction) -> int | None:
    """The frame in the middle of the longest pause (the latest of equals) inside [low,
    high], or None when no pause there holds a frame boundary."""
    best: tuple[float, float, int] | None = None
    for pause in pauses:
        a, b = max(pause.start, low), min(pause.end, high)
        if b < a:
            continue
        middle = (a + b) / 2
        inside = [k for k in (round(middle * fps), math.ceil(a * fps)) if a <= k / fps <= b]
        if not inside:
            continue
        candidate = (pause.length, middle, inside[0])
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    return None if best is None else best[2]


def limit_of(limits: Limits) -> float:
    # both inputs of a segment share one range: the tighter limit is every segment's
    return float(min(limits.video_max_seconds, limits.audio_max_seconds))


def _num(seconds: float) -> str:
    return "0" if seconds == 0 else f"{seconds:.1f}"


class PlanError(ValueError):
    """A long job that cannot be planned: `field` is the manifest field to fix."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field


def plan_job(
    job: Job,
    *,
    video_seconds: float,
    dub_seconds: float,
    fps: Fraction,
    pauses: Sequence[Pause],
    video_sha: str,
    audio_sha: str,
    limits: Limits,
) -> LongPlan:
    """Plan `job` (a local video and an audio dub, one over the limit); raises PlanError."""
    frame = float(1 / fps)
    notes: list[str] = []
    if dub_seconds > video_seconds + frame:
        if job.extend is None:
            raise PlanError(
                "audio",
                f"the dub ({dub_seconds:.1f} s) is longer than the video ({video_seconds:.1f} s):"
                " add `extend: loop` (play the video again) or `extend: freeze` (hold its last"
                " frame) to the job",
            )
        how = "looped" if job.extend == "loop" else "held on its last frame"
        notes.append(f"video {video_seconds:.1f} s {how} to the dub's {dub_seconds:.1f} s")
    elif video_seconds > dub_seconds + frame:
        notes.append(f"video {video_seconds:.1f} s cut to the dub's {dub_seconds:.1f} s")
    if dub_seconds < limits.segment_min_seconds:
        raise PlanError(
            "audio",
            f"the dub ({dub_seconds:.1f} s) is shorter than {limits.segment_min_seconds:g} s",
        )
    try:
        cuts = plan_cuts(dub_seconds, pauses, limit_of(limits), limits.segment_min_seconds, fps)
    except ValueError as exc:
        raise PlanError("audio", str(exc)) from exc
    return LongPlan(
        job.id,
        basis(video_sha, audio_sha, job.extend, limits),
        dub_seconds,
        video_seconds,
        fps,
        tuple(cuts),
        job.extend,
        tuple(notes),
        dub=audio_sha,
    )
