"""What a run would do, told without doing it: `run --dry-run`, and `validate`'s estimate of
what is left to pay for.

`forecast` reads the state file's records (never writes them: a dry run leaves the file as it
was) and decides for each job what `reconcile` and the runner would: the same `plan_records`
and `decide`, so the forecast cannot drift from the run. It sends nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.jobstate import JobState
from pipeline.longform.cut import cut_files
from pipeline.longform.run import legacy_upgrades, long_row, parent_of, resolve_plan, same_plan
from pipeline.longform.segments import LongPlan
from pipeline.manifest import Job
from pipeline.outputs import job_path, segments_dir
from pipeline.plan import (
    changed_inputs,
    estimate_credits,
    fingerprint,
    input_facts,
)
from pipeline.preflight import Checked
from pipeline.reconcile import decide, intact, movable, plan_records
from pipeline.state import JobRecord, LongRecord
from pipeline.submit import foreign_key, unanswered_send


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
    Jobs over `max_credits` are counted in manifest order. A long job is expanded into its
    segments as the run would (`_expand`), they go through `plan_records` with the rest (a
    renamed long job's segments are taken over), and its step sums theirs."""
    jobs = checked.manifest.jobs
    expanded, plans, skipped = _expand(checked, long, output_dir, redo)
    segments = [j for parent in expanded.values() for j in parent]
    run_jobs = [j for j in jobs if j.id not in expanded] + segments
    fps = {job.id: fingerprint(job, checked.media) for job in run_jobs}
    # as the run leaves them: records of jobs not run, segments of a job stitched already
    leave = set(checked.untouched) | skipped
    upgraded = legacy_upgrades(records, plans)
    upgraded |= {  # a speaker id as an earlier version wrote it, as reconcile rewrites it
        r.id: fps[job_id]
        for r in records
        if (job_id := checked.aliases.get(r.fingerprint)) is not None and job_id in fps
    }
    before = {
        r.id: replace(r, fingerprint=upgraded.get(r.id, r.fingerprint))
        for r in records
        if r.id not in checked.untouched and parent_of(r.id) not in leave
    }
    redo = redo | {s.id for job_id in redo for s in expanded.get(job_id, [])}
    plan = plan_records(before, run_jobs, fps, redo)
    taken = {new: before[old] for old, new in plan.renames.items() if new in fps}
    keys = key_fps if key_fps is not None else frozenset({key_fp}) if key_fp else None
    options = _Options(redo - plan.fresh.keys(), retry_failed, keys)
    told: dict[str, Step] = {}
    # results of jobs not run: nothing moves onto them (`reconcile._settle`)
    staying = {r.output for r in records if r.id in checked.untouched and r.output and intact(r)}
    for job in run_jobs:
        cost = estimate_credits(job, checked.media)
        facts = input_facts(job, checked.media)
        old = before.get(job.id)
        if job.id in plan.fresh and old is None:
            step = Step(job.id, "submit", "new job", cost)
        elif job.id in plan.fresh and old is not None:
            why = (
                "--redo" if job.id in redo else changed_inputs(job, old.inputs, facts) + " changed"
            )
            if unanswered_send(old):  # set aside, and re-sent first as it was (`_aside_step`)
                then = _aside_step(old, keys)
                kept = then.detail if then is not None else "set aside"
                extra = then.credits if then is not None else 0
                step = Step(job.id, "resubmit", f"{why}: its send is {kept}", cost + extra)
            else:
                step = Step(job.id, "resubmit", f"{why}: its paid result is kept aside", cost)
        else:
            record = taken.get(job.id) or before[job.id]
            # a taken-over result is still at its old name, a result whose `output` changed
            # at its old path: either moves when the run starts
            home = job_path(output_dir, job.id, job.output)
            moves = record.output != str(home) and movable(record, output_dir)
            where = Path(record.output) if (job.id in taken or moves) and record.output else None
            in_place = intact(record, where or home)
            step = _step(job, record, fps[job.id], cost, facts, in_place, options)
            if moves and job.id not in taken and step.action == "skip":
                if str(home) in staying:
                    what = f"its file stays at {record.output}: {home} holds a result not run"
                else:
                    what = f"its file moves to {home}"
                step = Step(job.id, "skip", f"{step.detail}; {what}")
            if job.id in taken:
                step = Step(
                    job.id, step.action, f"{step.detail}; {plan.details[record.id]}", step.credits
                )
        told[job.id] = step
    # first, as the run does: the records set aside that may still hold a paid video
    aside = {r.id: a for r in records if r.archived and (a := _aside_step(r, keys)) is not None}
    planned = list(aside.items())
    for job in jobs:
        if job.id in expanded:
            step = _long_step(job.id, [told[s.id] for s in expanded[job.id]])
        elif job.id in skipped:
            step = Step(job.id, "skip", "done: its segments are stitched")
        else:
            step = told[job.id]
        planned.append((job.id, step))
    steps: dict[str, Step] = {}
    spent = 0
    for job_id, step in planned:
        if step.action in _PAYING and max_credits is not None:
            if spent + step.credits > max_credits:
                detail = f"{step.action} held back: it would pass --max-credits {max_credits}"
                step = Step(job_id, "over-cap", detail)
            else:
                spent += step.credits
        steps[job_id] = step
    for job_id, problems in checked.invalid.items():
        steps[job_id] = Step(job_id, "invalid", "; ".join(problems))
    return [steps[i] for i in [*aside, *(job.id for job in checked.full.jobs)] if i in steps]


def _aside_step(record: JobRecord, key_fps: frozenset[str] | None) -> Step | None:
    """What the run does first with an archived record (`runner.execute`): polls or fetches
    a paid video still out, re-sends a send set aside unanswered with its own trace id and key
    (free if the first arrived); None: nothing."""
    state = record.state
    unanswered = unanswered_send(record)
    if state not in (JobState.GENERATING, JobState.DOWNLOADING) and not unanswered:
        return None
    if key_fps is not None and all(foreign_key(record, fp) for fp in key_fps):
        return Step(
            record.id, "other-key", f"set aside, sent with key {record.key_fp}: run with that key"
        )
    if state is JobState.GENERATING:
        return Step(record.id, "poll", f"set aside: video {record.video_id} generating: poll it")
    if state is JobState.DOWNLOADING:
        return Step(record.id, "download", f"set aside: video {record.video_id} done: download it")
    if record.sent_body is None:
        what = (
            "set aside unanswered, its body not saved (before 0013): left until its inputs return"
        )
        return Step(record.id, "held", what)
    what = (
        f"set aside unanswered (trace id {record.trace_id}): re-send it with its trace id and"
        " key (free if it arrived), then fetch its video"
    )
    return Step(record.id, "confirm", what, record.sent_estimate or 0)


def _expand(
    checked: Checked, long: Sequence[LongRecord], output_dir: Path, redo: frozenset[str]
) -> tuple[dict[str, list[Job]], list[LongPlan], set[str]]:
    """As `LongJobs.expand` would: the segment jobs of each long job to run, the plans the
    run goes by (of every long job), and the long jobs stitched already (skipped)."""
    expanded: dict[str, list[Job]] = {}
    plans: list[LongPlan] = []
    skipped: set[str] = set()
    for job in checked.manifest.jobs:
        planned = checked.long.get(job.id)
        if planned is None:
            continue
        assert job.video is not None
        assert job.audio is not None
        saved = next((r.plan for r in long if r.basis == planned.basis), None)
        plan = resolve_plan(planned, saved, checked.media[job.video].sha256, job.audio)
        plans.append(plan)
        row = long_row(long, job.id)
        redone = job.id in redo or any(parent_of(i) == job.id for i in redo)
        if (
            not redone
            and row is not None
            and row.stitched
            and row.output is not None
            and same_plan(row, plan)
            and Path(row.output).is_file()
        ):
            skipped.add(job.id)
            continue
        folder = segments_dir(output_dir, job.id)
        expanded[job.id] = plan.segment_jobs(
            job, [cut_files(folder, i) for i in range(1, len(plan.cuts) + 1)]
        )
    return expanded, plans, skipped


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


def _long_step(job_id: str, segments: Sequence[Step]) -> Step:
    """A long job's forecast from its segments': what the unpaid ones cost (paid ones are
    taken as they are), or that all are done and wait to be stitched."""
    count = len(segments)
    paying = [s for s in segments if s.action in _PAYING]
    done = sum(1 for s in segments if s.action == "skip" or s.detail.startswith("output missing"))
    held = [f"segment {i} {s.detail}" for i, s in enumerate(segments, 1) if s.action == "held"]
    note = f"; {held[0]}" if held else ""
    if paying:
        cost = sum(s.credits for s in paying)
        what = f"long job: {len(paying)} of {count} segments to submit{note}"
        return Step(job_id, "submit", what, cost)
    if held:
        return Step(job_id, "held", f"long job: {held[0]}")
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
