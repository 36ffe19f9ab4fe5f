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
3. else the job fails alone, paid work going on: no such speaker (the nearest name is
   suggested), or a name several speakers share (give the id).

Jobs are fingerprinted and submitted with the resolved id (`resolve_jobs`), so `Isabella` and
`3` are the same inputs: switching one for the other pays nothing. The last list a run read is
kept in the state file (`StateStore.save_speakers`), so that offline forecasts (`validate`
with a state file, `run --dry-run`) and a run whose list request fails resolve names the same
way. With no list at all, values are taken as written, and a run leaves alone the TTS jobs
whose records that would not match (`pipeline.runner`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.client import Speaker
from pipeline.jobstate import JobState
from pipeline.manifest import Job, Tts, Wording
from pipeline.plan import fingerprint
from pipeline.preflight import Checked, MediaFile
from pipeline.reconcile import permanent_failure
from pipeline.state import StateStore


@dataclass(frozen=True)
class SpeakerBook:
    """An account's speakers, for looking values up (`resolve`)."""

    speakers: tuple[Speaker, ...]

    @classmethod
    def of(cls, speakers: Sequence[Speaker] | Sequence[tuple[str, str]]) -> SpeakerBook:
        return cls(tuple(s if isinstance(s, Speaker) else Speaker(s[0], s[1]) for s in speakers))

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
    saved: Sequence[tuple[str, str]],
    redo: frozenset[str],
    retry_failed: bool = False,
) -> bool:
    """Whether a run must read the speaker list: some TTS job may be sent (no record with its
    fingerprint by the `saved` list, or with an id as an earlier version wrote it; pending;
    failed and retried; `--redo`). A run whose TTS jobs are all paid for, or held as failed
    for good, asks nothing for them."""
    book = SpeakerBook.of(saved) if saved else None
    for written in checked.manifest.jobs:
        if written.tts is None:
            continue
        job = (
            resolve_jobs([written], book)[0][0] if book is not None else written
        )  # unknown: as written
        known = {fingerprint(job, checked.media)} | set(respelled([written], [job], checked.media))
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
    """A run's jobs with their speakers resolved (`resolve_jobs`), before reconcile, and the
    problems of those that resolve to no speaker. `listed`: the list as read now (saved in
    the state file), None when it could not be read: then the list saved by an earlier run,
    and without one the values as written, each TTS job whose record that would not match
    left alone for this run (its record untouched: a name's paid result is neither set aside
    nor paid again; the next run that can read the list goes on with it)."""
    manifest = checked.manifest
    if not any(job.tts is not None for job in manifest.jobs):
        return checked, {}
    if listed is not None:
        store.save_speakers(base_url, [(s.speaker_id, s.name) for s in listed])
        book = SpeakerBook.of(listed)
    elif saved := store.speakers(base_url) or store.speakers():
        book = SpeakerBook.of(saved)
    else:
        mismatched = {
            job.id
            for job in manifest.jobs
            if job.tts is not None
            and (record := store.find(job.id)) is not None
            and record.fingerprint != fingerprint(job, checked.media)
        }
        if not mismatched:
            return checked, {}
        kept = tuple(job for job in manifest.jobs if job.id not in mismatched)
        return replace(
            checked,
            manifest=replace(manifest, jobs=kept),
            untouched=checked.untouched | mismatched,
            whole=checked.full,
        ), {}
    return resolve_with(checked, book)


def resolve_with(
    checked: Checked, speakers: SpeakerBook | Sequence[Speaker] | Sequence[tuple[str, str]]
) -> tuple[Checked, dict[str, str]]:
    """`checked` with its jobs' speakers resolved by `speakers` (`resolve_jobs`), and the
    problems of those that name no speaker of it."""
    book = speakers if isinstance(speakers, SpeakerBook) else SpeakerBook.of(speakers)
    manifest = checked.manifest
    jobs, problems = resolve_jobs(manifest.jobs, book, manifest.wording)
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
