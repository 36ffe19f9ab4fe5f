"""What a run would do, told without doing it: `run --dry-run`, and `validate`'s estimate of
what is left to pay for.

`forecast` reads the state file's records (never writes them: a dry run leaves the file as it
was) and decides for each job what `reconcile` and the runner would: the same `plan_records`
and `decide`, so the forecast cannot drift from the run. It sends nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.jobstate import JobState
from pipeline.longform.run import resolve_plan
from pipeline.manifest import Job
from pipeline.outputs import SEGMENT_MARK, result_path
from pipeline.plan import (
    CREDITS_PER_AUDIO_SECOND,
    changed_inputs,
    estimate_credits,
    fingerprint,
    input_facts,
)
from pipeline.preflight import Checked
from pipeline.reconcile import decide, intact, plan_records
from pipeline.state import JobRecord, LongRecord
from pipeline.submit import foreign_key


@dataclass(frozen=True)
class Step:
    """One job's forecast: `action` is one of skip, download, poll, confirm (an unanswered
    submission re-sent with its trace id: free if the first arrived), submit, resubmit,
    parked, held (a failure that would recur), other-key, invalid, over-cap; `credits` what
    it may cost this run (0 for what is paid already)."""

    job_id: str
    action: str
    detail: str
    credits: int = 0


_PAYING = frozenset({"submit", "resubmit", "confirm"})


@dataclass(frozen=True)
class _Options:
    redo: frozenset[str]
    retry_failed: bool
    key_fps: frozenset[str] | None


def forecast(
    checked: Checked,
    records: Sequence[JobRecord],
    output_dir: Path,
    *,
    redo: frozenset[str] = frozenset(),
    retry_failed: bool = False,
    key_fp: str | None = None,
    max_credits: int | None = None,
    key_fps: frozenset[str] | None = None,
    long: Sequence[LongRecord] = (),
) -> list[Step]:
    """Each job of `checked` (invalid ones too) in manifest order, with what a run given the
    same options would do with it. `key_fp` None: the key is unknown, so no record is said to
    belong to another key; `key_fps`: several keys, a record of none of them is another's.
    Jobs over `max_credits` are counted in manifest order. A long job is told from its
    segments' records and its row in `long` (the state file's)."""
    jobs = checked.manifest.jobs
    fps = {job.id: fingerprint(job, checked.media) for job in jobs}
    before = {r.id: r for r in records if r.id not in checked.untouched}
    plan = plan_records(before, jobs, fps, redo)
    taken = {new: before[old] for old, new in plan.renames.items() if new in fps}
    keys = key_fps if key_fps is not None else frozenset({key_fp}) if key_fp else None
    options = _Options(redo - plan.fresh.keys(), retry_failed, keys)
    steps: dict[str, Step] = {}
    spent = 0
    for job in jobs:
        cost = estimate_credits(job, checked.media)
        facts = input_facts(job, checked.media)
        old = before.get(job.id)
        if job.id in checked.long:
            step = _long_step(checked, job, before, long, output_dir, redo)
        elif job.id in plan.fresh and old is None:
            step = Step(job.id, "submit", "new job", cost)
        elif job.id in plan.fresh and old is not None:
            why = (
                "--redo" if job.id in redo else changed_inputs(job, old.inputs, facts) + " changed"
            )
            step = Step(job.id, "resubmit", f"{why}: its paid result is kept aside", cost)
        else:
            record = taken.get(job.id) or before[job.id]
            # a taken-over result is still at its old name: it moves when the run starts
            where = Path(record.output) if job.id in taken and record.output else None
            in_place = intact(record, where or result_path(output_dir, job.id))
            step = _step(job, record, fps[job.id], cost, facts, in_place, options)
            if job.id in taken:
                step = Step(
                    job.id, step.action, f"{step.detail}; {plan.details[record.id]}", step.credits
                )
        if step.action in _PAYING and max_credits is not None:
            if spent + step.credits > max_credits:
                detail = f"{step.action} held back: it would pass --max-credits {max_credits}"
                step = Step(job.id, "over-cap", detail)
            else:
                spent += step.credits
        steps[job.id] = step
    for job_id, problems in checked.invalid.items():
        steps[job_id] = Step(job_id, "invalid", "; ".join(problems))
    return [steps[job.id] for job in checked.full.jobs if job.id in steps]


def _step(
    job: Job,
    record: JobRecord,
    fp: str,
    cost: int,
    facts: Mapping[str, str],
    in_place: bool,
    options: _Options,
) -> Step:
    if (
        record.state is not JobState.PENDING
        and options.key_fps is not None
        and all(foreign_key(record, fp) for fp in options.key_fps)
    ):
        detail = f"{record.state.value}, submitted with key {record.key_fp}: left for that key"
        return Step(job.id, "other-key", detail)
    decision = decide(
        job.id,
        record,
        fp,
        intact=in_place,
        redo=options.redo,
        retry_failed=options.retry_failed,
        changed=changed_inputs(job, record.inputs, facts),
    )
    if decision.action == "restart":
        return Step(job.id, "resubmit", decision.detail, cost)
    if decision.action == "download":
        return Step(job.id, "download", decision.detail)
    if decision.action in ("skip", "parked", "held"):
        return Step(job.id, decision.action, decision.detail)
    state = record.state
    if state is JobState.GENERATING:
        return Step(job.id, "poll", f"video {record.video_id} generating: poll it")
    if state is JobState.DOWNLOADING:
        return Step(job.id, "download", f"video {record.video_id} done: download it")
    if state is JobState.SUBMITTING:
        what = "re-send its unanswered submission with the same trace id (free if it arrived)"
        return Step(job.id, "confirm", what, cost)
    why = f"attempt {record.attempts + 1}" if record.attempts else "not submitted yet"
    return Step(job.id, "submit", why, cost)


def _long_step(
    checked: Checked,
    job: Job,
    records: Mapping[str, JobRecord],
    long: Sequence[LongRecord],
    output_dir: Path,
    redo: frozenset[str],
) -> Step:
    """A long job's forecast: what its unpaid segments cost (paid ones are taken as they
    are), or nothing once it is stitched."""
    planned = checked.long[job.id]
    job_id = planned.job_id
    assert job.video is not None
    assert job.audio is not None
    video_sha = checked.media[job.video].sha256
    saved = next((r.plan for r in long if r.basis == planned.basis), None)
    plan = resolve_plan(planned, saved, video_sha, job.audio)
    row = next((r for r in long if r.id == job_id), None)
    output = row.output if row is not None and row.stitched and row.basis == plan.basis else None
    if job_id not in redo and output is not None and Path(output).is_file():
        return Step(job_id, "skip", "done: its segments are stitched")
    cost, paid, done = 0, 0, 0
    unpaid = (JobState.PENDING, JobState.FAILED)
    for index, (start, end) in enumerate(plan.ranges(), 1):
        record = records.get(f"{job_id}{SEGMENT_MARK}{index}")
        if (
            record is None
            or job_id in redo
            or record.fingerprint
            not in (plan.segment_fingerprint(index), plan.legacy_fingerprint(index))
            or record.state in unpaid
        ):
            cost += CREDITS_PER_AUDIO_SECOND * math.ceil(end - start)
        else:
            paid += 1
            done += record.state is JobState.DONE
    count = len(plan.cuts)
    if cost:
        return Step(
            job_id, "submit", f"long job: {count - paid} of {count} segments to submit", cost
        )
    if done == count:
        return Step(job_id, "stitch", f"long job: {count} segments done, to stitch")
    return Step(job_id, "poll", f"long job: {count} segments paid for, {done} done")


def remaining_credits(steps: Sequence[Step]) -> dict[str, int]:
    """What is left to pay for, per job (0 for done or paid work): `validate`'s estimate."""
    return {s.job_id: s.credits if s.action in _PAYING else 0 for s in steps}


def render(steps: Sequence[Step]) -> list[str]:
    """The forecast as lines for a person, with a total."""
    lines = [
        f"{s.job_id:<24} {s.action:<10} {s.detail}"
        + (f" (about {s.credits} credits)" if s.action in _PAYING else "")
        for s in steps
    ]
    total = sum(remaining_credits(steps).values())
    counts = Counter(s.action for s in steps)
    lines.append(
        f"{len(steps)} jobs: "
        + ", ".join(f"{n} {a}" for a, n in sorted(counts.items()))
        + f"; about {total} credits to submit; nothing was sent and nothing was changed"
    )
    return lines
