"""report.html: the run as a page to look at, one card per job, from report.json's document.

The page is one file that works from `file://` with no network: its CSS and JS
(`pipeline/assets/`) are inlined, and every link is relative to the output folder (results,
sources, thumbnails under `.thumbs/`). The top says what the run did and lists the problems
first (failed, suspect, unfinished), each with its reason and what to do; then a card per job
with a thumbnail of its source and its result, its facts, its error, its segments (long jobs)
and controls to play the result or compare it with the source side by side.

`build_page` makes the thumbnails it lacks (`pipeline.thumbs`: once per file) and returns the
text; the caller writes it atomically and redacts it (`report.write_report`). A page shows at
most `MAX_PICTURES` distinct videos as pictures (the first cards'; later cards say so and keep
their play and open links): a thumbnail costs a decode and a JPEG, about 2 ms, and a 10,000-job
night would spend longer on pictures than on its own work (issue 6). A missing or broken file
shows on its card; it never fails the page. Figures the document may carry from other features
(`segments` on a job, per-key figures under `accounts`) are shown when present.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pipeline.reconcile import permanent_reason
from pipeline.thumbs import THUMBS, Thumb, prune, thumbnail

GROUPS = ("failed", "suspect", "unfinished", "done")  # problems first
_KEY_TABLES = ("accounts", "keys", "per_key")  # where per-key figures may sit
_PROBLEMS_OPEN = 20  # a longer list of problems starts folded
MAX_PICTURES = 300  # distinct videos a page shows as thumbnails (see the module docstring)


def build_page(document: Mapping[str, Any], out: Path, meaning: str | None = None) -> str:
    """The page of `document` (report.json's content) written into `out`; `meaning` says
    what the exit code means. Makes missing thumbnails under `out/.thumbs/`, drops stale ones."""
    return "".join(page_parts(document, out, meaning))


def page_parts(document: Mapping[str, Any], out: Path, meaning: str | None = None) -> Iterator[str]:
    """`build_page` a part at a time (the head, each card, the end): a 10,000-job page is
    written without being held whole. No text of the document spans two parts."""
    base = _manifest_dir(document)
    jobs = [job for job in document.get("jobs") or [] if isinstance(job, Mapping)]
    ran = Path(str(document["output_dir"])) if document.get("output_dir") else None
    pictures = _Pictures(out)
    title = f"pixverse-batch run {document.get('run_id') or ''}".strip()
    yield "".join(
        [
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
            f"<title>{_e(title)}</title>\n<style>\n{_asset('report.css')}</style>\n</head>\n",
            "<body>\n",
            _top(document, jobs, meaning),
            _controls(jobs),
            '<main id="cards">\n',
        ]
    )
    for job in jobs:
        yield _card(job, out, base, pictures, ran)
    prune(out / THUMBS, pictures.used)
    yield (
        "</main>\n"
        f"<footer>page written {_e(_now())} from the state file, by pixverse-batch"
        f" {_e(document.get('version') or '')}</footer>\n"
        f"<script>\n{_asset('report.js')}</script>\n</body>\n</html>\n"
    )


def group(state: str) -> str:
    """done, failed, suspect or unfinished (`unfinished:generating` and the like)."""
    return "unfinished" if state.startswith("unfinished") or state not in GROUPS else state


def advice(job: Mapping[str, Any]) -> str:
    """What to do about a job that is not done, in one line."""
    job_id, state = str(job.get("id")), str(job.get("state") or "")
    if state == "failed":
        why = permanent_reason(job.get("err_code"), job.get("error_class"), job.get("error"))
        if why is not None:
            return (
                f"fails the same way if sent again ({why}): change its inputs, or run with"
                f" --retry-failed, or --redo {job_id}"
            )
        return "the next run retries it: run the same command again"
    if state == "suspect":
        return f"watch it; if it is wrong, --redo {job_id} pays for a new one"
    if state == "unfinished:unconfirmed":
        return (
            "its submission may have been charged: look for it in the account, then"
            f" --redo {job_id} only if it is not there"
        )
    return "run the same command again: it resumes where it stopped"


def _top(
    document: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]], meaning: str | None
) -> str:
    code = document.get("exit_code")
    words = f" ({meaning})" if meaning else ""
    status = "ok" if code == 0 else "bad"
    counts = Counter(str(job.get("state")) for job in jobs)
    per_state = "".join(
        f"<span>{_e(state)}: {n}</span>" for state, n in sorted(counts.items(), key=_by_group)
    )
    approx = "~" if any(job.get("credits_estimated") for job in jobs) else ""
    ceiling = document.get("slot_ceiling")
    facts = [
        ("started", document.get("started_at")),
        ("ended", document.get("finished_at")),
        ("exit code", f'<span class="exit {status}">{_e(code)}{_e(words)}</span>'),
        ("problem", document.get("problem")),
        ("jobs", f'<span class="counts">{len(jobs)} jobs: {per_state}</span>'),
        ("credits this run", f"{approx}{document.get('credits_this_run', 0)}"),
        ("credits in total", f"{approx}{document.get('credits_total', 0)} (all runs)"),
        (
            "slot ceiling",
            ceiling if ceiling is not None else "none learned (no 500044 in this run)",
        ),
        ("manifest", document.get("manifest")),
    ]
    rows = "".join(
        f"<dt>{name}</dt><dd>{value if name in ('exit code', 'jobs') else _e(value)}</dd>"
        for name, value in facts
        if value is not None
    )
    return (
        f'<header class="run">\n<h1>Run {_e(document.get("run_id") or "(unknown)")}</h1>\n'
        f'<dl class="facts">{rows}</dl>\n{_key_figures(document)}{_problems(jobs)}</header>\n'
    )


def _problems(jobs: Sequence[Mapping[str, Any]]) -> str:
    bad = sorted(
        (job for job in jobs if group(str(job.get("state"))) != "done"),
        key=lambda job: (GROUPS.index(group(str(job.get("state")))), str(job.get("id"))),
    )
    if not bad:
        return '<h2 id="problems">Problems</h2>\n<p>none: every job is done.</p>\n'
    items = "".join(
        f'<li><a href="#{_e(_anchor(job))}">{_e(job.get("id"))}</a> <b>{_e(job.get("state"))}</b>:'
        f" {_e(job.get('error') or 'no reason recorded')}"
        f' <span class="todo">→ {_e(advice(job))}</span></li>\n'
        for job in bad
    )
    # open unless so long that it would push every card off the first screen
    state = " open" if len(bad) <= _PROBLEMS_OPEN else ""
    return (
        f'<details id="problems"{state}><summary><h2>Problems ({len(bad)})</h2></summary>\n'
        f'<ul class="problems">\n{items}</ul>\n</details>\n'
    )


def _key_figures(document: Mapping[str, Any]) -> str:
    """Per-key figures, whatever their fields: a list of objects or an object of objects."""
    value = next((document[k] for k in _KEY_TABLES if document.get(k)), None)
    if isinstance(value, Mapping):
        value = [
            {"key": k, **v} if isinstance(v, Mapping) else {"key": k, "value": v}
            for k, v in value.items()
        ]
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        return ""
    columns = list(dict.fromkeys(name for row in value for name in row))
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(row.get(c, ''))}</td>" for c in columns) + "</tr>"
        for row in value
    )
    return f'<h2>Keys</h2>\n<table class="keys"><tr>{head}</tr>{body}</table>\n'


def _controls(jobs: Sequence[Mapping[str, Any]]) -> str:
    counts = Counter(group(str(job.get("state"))) for job in jobs)
    buttons = f'<button data-filter="all" aria-pressed="true">all ({len(jobs)})</button>'
    buttons += "".join(
        f'<button data-filter="{g}" aria-pressed="false">{g} ({counts[g]})</button>' for g in GROUPS
    )
    return (
        f'<nav class="controls">{buttons}\n'
        '<input id="search" type="search" placeholder="search by id" aria-label="search by id">\n'
        '<label>sort <select id="sort"><option value="id">id</option>'
        '<option value="state">state</option><option value="cost">cost</option></select></label>\n'
        '<span id="shown"></span>\n'
        '<span class="hint">click or space: play · c: compare with the source · arrows: move</span>'
        "\n</nav>\n"
    )


class _Pictures:
    """The page's thumbnails and links: each video looked at once however many cards show
    it, and no more than `MAX_PICTURES` of them made or shown."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.used: list[Path] = []  # the thumbnails shown (`prune` keeps these)
        self._root = os.path.abspath(out)
        self._thumbs: dict[Path, Thumb | None] = {}  # None: over the page's count
        self._shown = 0
        self._links: dict[Path, str] = {}
        self._files: dict[Path, str | None] = {}  # None: not a file
        self._sources: dict[str, Path] = {}

    def thumb(self, video: Path) -> Thumb | None:
        if video not in self._thumbs:
            made = None
            if self._shown < MAX_PICTURES:
                made = thumbnail(video, self.out / THUMBS)
                self._shown += 1
                if made.path is not None:
                    self.used.append(made.path)
            self._thumbs[video] = made
        return self._thumbs[video]

    def source(self, job: Mapping[str, Any], base: Path | None) -> tuple[Path | None, str | None]:
        """`_source`, one Path per file however many cards show it (then found by identity)."""
        found, note = _source(job, base)
        if found is None:
            return None, note
        return self._sources.setdefault(str(found), found), None

    def link(self, path: Path) -> str:
        known = self._links.get(path)
        if known is None:
            known = self._links[path] = _link(path, self._root)
        return known

    def file_link(self, path: Path | None) -> str | None:
        """The link to `path` if it is a file, else None."""
        if path is None:
            return None
        if path not in self._files:
            self._files[path] = self.link(path) if path.is_file() else None
        return self._files[path]


def _card(
    job: Mapping[str, Any], out: Path, base: Path | None, pics: _Pictures, ran: Path | None
) -> str:
    state = str(job.get("state") or "")
    kind = group(state)
    source, source_note = pics.source(job, base)
    result = _result(job, out, ran)
    pictures = [
        _picture("source", source, source_note, pics),
        _picture("result", result, None if result else _no_result(kind), pics),
    ]
    data = {
        "id": job.get("id"),
        "state": kind,
        "credits": job.get("credits") or 0,
        "result": pics.file_link(result),
        "source": pics.file_link(source),
    }
    attributes = "".join(
        f' data-{name}="{_e(value)}"' for name, value in data.items() if value is not None
    )
    actions = ""
    if data["result"]:
        actions = (
            '<div class="actions"><button class="play-button" type="button">play</button>'
            + (
                '<button class="compare-button" type="button">compare</button>'
                if data["source"]
                else ""
            )
            + f'<a href="{_e(data["result"])}">open the file</a></div>'
        )
    error = job.get("error")
    return (
        f'<article class="card {kind}" id="{_e(_anchor(job))}" tabindex="0"{attributes}>\n'
        f'<div class="top"><h3>{_e(job.get("id"))}</h3>'
        f'<span class="badge">{_e(state)}</span></div>\n'
        f'<div class="pics">{"".join(pictures)}</div>\n<div class="player"></div>\n{actions}\n'
        f"{_meta(job)}"
        + (f'<p class="error">{_e(error)}</p>\n' if error else "")
        + _segments(job)
        + "</article>\n"
    )


def _picture(label: str, video: Path | None, note: str | None, pics: _Pictures) -> str:
    thumb = pics.thumb(video) if video is not None else None
    if video is None:
        inner = f'<div class="nopic">{_e(note or "none")}</div>'
    elif thumb is None:
        inner = f'<div class="nopic">no picture: this page shows {MAX_PICTURES} videos</div>'
    elif thumb.path is not None:
        inner = (
            f'<img loading="lazy" src="{_e(pics.link(thumb.path))}"'
            f' alt="{label}: middle frame of {_e(video.name)}">'
        )
    else:
        inner = f'<div class="nopic bad">{_e(video.name)}: {_e(thumb.problem)}</div>'
    return f"<figure>{inner}<figcaption>{label}</figcaption></figure>"


def _meta(job: Mapping[str, Any]) -> str:
    credits = job.get("credits") or 0
    approx = "~" if job.get("credits_estimated") else ""
    duration = job.get("duration")
    facts = [
        ("credits", f"{approx}{credits}"),
        ("attempts", job.get("attempts")),
        ("duration", f"{duration:.1f} s" if isinstance(duration, int | float) else None),
        ("resolution", job.get("resolution")),
        ("language", job.get("language")),
        ("video id", job.get("video_id")),
        ("voice", _voice(job)),
    ]
    rows = "".join(f"<dt>{k}</dt><dd>{_e(v)}</dd>" for k, v in facts if v not in (None, ""))
    return f'<dl class="meta">{rows}</dl>\n'


def _segments(job: Mapping[str, Any]) -> str:
    segments = job.get("segments")
    if not isinstance(segments, list) or not segments:
        return ""
    names = ("index", "start", "end", "video_id", "credits", "state")
    head = "".join(f"<th>{n.replace('_', ' ')}</th>" for n in names)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_e(s.get(n, ''))}</td>" for n in names) + "</tr>"
        for s in segments
        if isinstance(s, Mapping)
    )
    return f'<table class="segments"><tr>{head}</tr>{rows}</table>\n'


def _voice(job: Mapping[str, Any]) -> str | None:
    for item in job.get("inputs") or []:
        if item.get("field") == "audio":
            return str(item.get("path"))
        if item.get("field") == "tts":
            return f"TTS speaker {item.get('speaker')}: {item.get('text')}"
    return None


def _source(job: Mapping[str, Any], base: Path | None) -> tuple[Path | None, str | None]:
    for item in job.get("inputs") or []:
        if item.get("field") == "video" and item.get("path"):
            if base is None:
                return None, "source: manifest folder unknown"
            return base / str(item["path"]), None
        if item.get("field") == "video_id":
            return None, f"a PixVerse video ({item.get('video_id')}): no local file"
    return None, "source unknown"


def _result(job: Mapping[str, Any], out: Path, ran: Path | None) -> Path | None:
    """A result lives in the output folder (`outputs.job_path`: `<id>.mp4`, or its `output`
    such as `es/intro.mp4`); a relative `output` was relative to the run's working folder,
    which the `report` command may not share: it is taken from the run's `output_dir` (`ran`)
    on."""
    output = job.get("output")
    if not output:
        return None
    path = Path(str(output))
    if path.is_absolute():
        return path
    if ran is not None and not ran.is_absolute() and path.is_relative_to(ran):
        return out / path.relative_to(ran)
    return out / path.name


def _no_result(kind: str) -> str:
    return {"failed": "no result (failed)", "unfinished": "no result yet"}.get(kind, "no result")


def _manifest_dir(document: Mapping[str, Any]) -> Path | None:
    if document.get("manifest_dir"):
        return Path(str(document["manifest_dir"]))
    if document.get("manifest"):
        return Path(str(document["manifest"])).resolve().parent
    return None


def _link(path: Path, root: str) -> str:
    """A relative URL from the page in `root` (absolute) to `path` (percent-encoded: names
    may hold spaces, #). Made from the names as they are, not with symlinks followed: a
    browser resolves `..` in a URL by its names too (and `resolve` costs a call per folder)."""
    absolute = os.path.abspath(path)
    if absolute.startswith(root + os.sep):  # inside the output folder: results, thumbnails
        relative = absolute[len(root) + 1 :]
    else:
        relative = os.path.relpath(absolute, root)
    return quote(Path(relative).as_posix())


def _anchor(job: Mapping[str, Any]) -> str:
    return f"job-{job.get('id')}"


def _by_group(item: tuple[str, int]) -> tuple[int, str]:
    return GROUPS.index(group(item[0])), item[0]


def _asset(name: str) -> str:
    return (files("pipeline") / "assets" / name).read_text(encoding="utf-8")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _e(value: object) -> str:
    text = "" if value is None else str(value)
    # most values need nothing: one scan says so (a page has some twenty values a card)
    return escape(text, quote=True) if _SPECIAL.search(text) else text


_SPECIAL = re.compile("[&<>\"']")
