"""TTS speakers by id or by name, resolved against the account's own list.

A manifest's `tts.speaker` (a CSV's `tts_speaker`, `defaults.tts_speaker`) is a speaker id or
a speaker's name, matched ignoring case. The mapping comes only from the API's list
(`PixverseClient.speakers`), read once per run before anything is reconciled: never a table in
the code, never a position in the list (the documented ids are not positions).

Each value, in this order:

1. an id of the list (ignoring case and surrounding spaces) becomes that id as the list spells
   it, so `auto` and `Auto` are the same inputs. A state file of an earlier version
   fingerprinted the id as written: those records are recognised (`Checked.aliases`, the
   fingerprint as written -> the job) and rewritten by reconcile, paying nothing again;
2. else the name of exactly one speaker (ignoring case and surrounding spaces) becomes that
   speaker's id, spelled as the list spells it;
3. else, for paid work only: a name an earlier list gave one speaker (`speaker_names` in the
   state file, kept when a list renames or drops it) becomes that id if a paid record has
   the job's inputs with it, so a renamed speaker never sets a paid result aside;
4. else the job fails alone, paid work going on: no such speaker (the nearest name is
   suggested), or a name several speakers share (give the id). A job whose own record is
   paid for is held instead (`Checked.invalid`): reported failed, its record and file left
   exactly as they are, never archived or paid again for a name that finds nobody.

Jobs are fingerprinted and submitted with the resolved id (`resolve_jobs`), so `Isabella` and
`3` are the same inputs: switching one for the other pays nothing. The last list a run read is
kept in the state file (`StateStore.save_speakers`), so that offline forecasts (`validate`
with a state file, `run --dry-run`) and a run whose list request fails resolve names the same
way. With no list at all, values are taken as written, and a run leaves alone the TTS jobs
whose records that would not match (`pipeline.runner`).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.client import Speaker
from pipeline.jobstate import PAID_STATES, JobState
from pipeline.manifest import Job, Tts, Wording
from pipeline.plan import fingerprint
from pipeline.preflight import Checked, MediaFile
from pipeline.reconcile import permanent_failure
from pipeline.state import JobRecord, StateStore

log = logging.getLogger("pipeline.speakers")


@dataclass(frozen=True)
class SpeakerBook:
    """An account's speakers, for looking values up (`resolve`)."""

    speakers: tuple[Speaker, ...]
    former: tuple[tuple[str, str], ...] = ()  # (name, id): what earlier lists called a speaker

    @classmethod
    def of(
        cls,
        speakers: Sequence[Speaker] | Sequence[tuple[str, str]],
        former: Sequence[tuple[str, str]] = (),
    ) -> SpeakerBook:
        listed = tuple(s if isinstance(s, Speaker) else Speaker(s[0], s[1]) for s in speakers)
        return cls(listed, tuple(former))

    @classmethod
    def kept(cls, store: StateStore, base_url: str | None = None) -> SpeakerBook | None:
        """The list a run last read for `base_url` (None: the last one read), with the names
        earlier lists gave; None when no list was kept."""
        saved = store.speakers(base_url)
        return cls.of(saved, store.speaker_names(base_url)) if saved else None

    def formerly(self, value: str) -> str | None:
        """The id an earlier list gave the name `value` to (one speaker's), else None."""
        folded = value.strip().casefold()
        ids = {sid for name, sid in self.former if name.casefold() == folded}
        return ids.pop() if len(ids) == 1 else None

    def resolve(self, value: str) -> tuple[str | None, str]:
        """(the id to send, "") or (None, why not)."""
        folded = value.strip().casefold()
        for speaker in self.speakers:
            if speaker.speaker_id.strip().casefold() == folded:
                return speaker.speaker_id, ""
        same = (s.speaker_id for s in self.speakers if s.name.strip().casefold() == folded)
        named = list(dict.fromkeys(same))
        if len(named) == 1:
            return named[0], ""
        if named:
            ids = ", ".join(named)
            return None, f"{value!r} is the name of {len(named)} speakers ({ids}): give the id"
        names = [s.name for s in self.speakers if s.name]
        near = difflib.get_close_matches(value, names, n=1, cutoff=0.6)
        hint = f"; did you mean `{near[0]}`?" if near else ""
        return None, f"unknown speaker {value!r} (see `pixverse-batch speakers`){hint}"


def resolve_jobs(
    jobs: Sequence[Job], book: SpeakerBook, wording: Wording | None = None
) -> tuple[list[Job], dict[str, str]]:
    """`jobs` with each TTS speaker resolved to its id, and the one-line problem of each job
    whose speaker resolves to none (those keep their speaker as written)."""
    words = wording or Wording()
    resolved: list[Job] = []
    problems: dict[str, str] = {}
    field = f"{words.noun} '{words.name('tts.speaker')}'"
    for job in jobs:
        if job.tts is None:
            resolved.append(job)
            continue
        speaker, why = book.resolve(job.tts.speaker)
        if speaker is None:
            problems[job.id] = f"job '{job.id}' {field}: {why}"
            resolved.append(job)
        elif speaker == job.tts.speaker:
            resolved.append(job)
        else:
            resolved.append(replace(job, tts=Tts(text=job.tts.text, speaker=speaker)))
    return resolved, problems


def lines(speakers: Sequence[Speaker]) -> list[str]:
    """`pixverse-batch speakers`: id, name, then every other field the list gave."""
    return [
        " ".join([f"{s.speaker_id:>6}  {s.name}", *(f"{k}={v}" for k, v in s.extra.items())])
        for s in speakers
    ]


def needs_list(
    checked: Checked,
    store: StateStore,
    book: SpeakerBook | None,
    redo: frozenset[str],
    retry_failed: bool = False,
) -> bool:
    """Whether a run must read the speaker list: some TTS job may be sent (no record with its
    fingerprint by the kept list `book`, or with an id as an earlier version wrote it;
    pending; failed and retried; `--redo`). A run whose TTS jobs are all paid for, or held
    as failed for good, asks nothing for them."""
    resolved = checked
    if book is not None:  # an unknown one: as written
        resolved = resolve_with(checked, book, store.jobs(archived=True))[0]
    for job in resolved.manifest.jobs:
        if job.tts is None:
            continue
        known = {fingerprint(job, checked.media)}
        known |= {fp for fp, job_id in resolved.aliases.items() if job_id == job.id}
        record = store.find(job.id)
        if (
            job.id in redo
            or record is None
            or record.fingerprint not in known
            or record.state is JobState.PENDING
            or (
                record.state is JobState.FAILED
                and (retry_failed or permanent_failure(record) is None)
            )
        ):
            return True
    return False


def resolve_checked(
    checked: Checked, store: StateStore, listed: Sequence[Speaker] | None, base_url: str
) -> tuple[Checked, dict[str, str]]:
    """A run's jobs with their speakers resolved (`resolve_with`, paid records consulted),
    before reconcile, and the problems of those that resolve to no speaker; of these, the
    jobs whose record is paid for are held (`_hold`). `listed`: the list as read now (saved
    in the state file), None when it could not be read: then the list saved by an earlier
    run, and without one the values as written, each TTS job whose record that would not
    match left alone for this run (its record untouched: a name's paid result is neither set
    aside nor paid again; the next run that can read the list goes on with it)."""
    manifest = checked.manifest
    if not any(job.tts is not None for job in manifest.jobs):
        return checked, {}
    if listed is not None:
        store.save_speakers(base_url, [(s.speaker_id, s.name) for s in listed])
        book: SpeakerBook | None = SpeakerBook.of(listed, store.speaker_names(base_url))
    else:
        book = SpeakerBook.kept(store, base_url) or SpeakerBook.kept(store)
    if book is None:
        mismatched = {
            job.id
            for job in manifest.jobs
            if job.tts is not None
            and (record := store.find(job.id)) is not None
            and record.fingerprint != fingerprint(job, checked.media)
        }
        return _leave(checked, mismatched), {}
    resolved, problems = resolve_with(checked, book, store.jobs(archived=True))
    paid = {i for i in problems if (r := store.find(i)) is not None and r.state in PAID_STATES}
    return _hold(resolved, {i: problems[i] for i in paid}), {
        i: p for i, p in problems.items() if i not in paid
    }


def _hold(checked: Checked, problems: Mapping[str, str]) -> Checked:
    """`checked` without the jobs of `problems` (a speaker no list finds, a paid record of
    their own): reported failed with their problem, their records left as they are."""
    for job_id, problem in problems.items():
        log.error("%s: not run, its paid result kept as it is: %s", job_id, problem)
    left = _leave(checked, set(problems))
    return replace(left, invalid=checked.invalid | {i: [p] for i, p in problems.items()})


def _leave(checked: Checked, ids: set[str]) -> Checked:
    """`checked` without the jobs `ids`, their records untouched by this run."""
    if not ids:
        return checked
    manifest = checked.manifest
    kept = tuple(job for job in manifest.jobs if job.id not in ids)
    return replace(
        checked,
        manifest=replace(manifest, jobs=kept),
        untouched=checked.untouched | ids,
        whole=checked.full,
    )


def resolve_with(
    checked: Checked,
    speakers: SpeakerBook | Sequence[Speaker] | Sequence[tuple[str, str]],
    records: Sequence[JobRecord] = (),
) -> tuple[Checked, dict[str, str]]:
    """`checked` with its jobs' speakers resolved by `speakers` (`resolve_jobs`), and the
    problems of those that name no speaker of it. A name no speaker of the list has now but
    one of an earlier list had (`SpeakerBook.former`) resolves to that speaker's id when one
    of the paid `records` has the job's inputs with it (rule 3 of the module docstring)."""
    book = speakers if isinstance(speakers, SpeakerBook) else SpeakerBook.of(speakers)
    manifest = checked.manifest
    jobs, problems = resolve_jobs(manifest.jobs, book, manifest.wording)
    paid = {r.fingerprint for r in records if r.state in PAID_STATES}
    for index, job in enumerate(jobs):
        if job.id not in problems or job.tts is None or not paid:
            continue
        former = book.formerly(job.tts.speaker)
        if former is None:
            continue
        was = replace(job, tts=Tts(text=job.tts.text, speaker=former))
        if fingerprint(was, checked.media) in paid:
            log.info(
                "%s: speaker %r is not in the list now; its paid result (speaker %s) is kept",
                job.id,
                job.tts.speaker,
                former,
            )
            jobs[index] = was
            del problems[job.id]
    aliases = dict(checked.aliases) | respelled(manifest.jobs, jobs, checked.media)
    return replace(checked, manifest=replace(manifest, jobs=tuple(jobs)), aliases=aliases), problems


def respelled(
    written: Sequence[Job], resolved: Sequence[Job], media: Mapping[Path, MediaFile]
) -> dict[str, str]:
    """The fingerprint of each job whose speaker id was written in another spelling than the
    list's (`auto` for `Auto`), as written (what an earlier version saved) -> the job's id."""
    return {
        fingerprint(old, media): new.id
        for old, new in zip(written, resolved, strict=True)
        if old.tts is not None
        and new.tts is not None
        and old.tts.speaker != new.tts.speaker
        and old.tts.speaker.strip().casefold() == new.tts.speaker.strip().casefold()
    }
