"""CSV manifests: a spreadsheet's rows read as jobs, and jobs written back as rows.

A CSV manifest is UTF-8 (with or without the BOM Excel writes; UTF-16 or UTF-32 "Unicode
text" is refused in one line, `_wide_text`), comma- or semicolon-separated
(told from the header row, outside quotes), with a header row naming its columns:

    id, video | video_id, audio | tts_text [, tts_speaker] [, output] [, extend]

Column names are matched ignoring case and surrounding spaces. One row is one job; an empty
cell is a value not given, a row of empty cells is skipped. Rows are numbered as a spreadsheet
numbers them: the header is row 1. `read_csv` turns the rows into the same job mappings a
YAML manifest has (`tts_text` + `tts_speaker` -> `tts: {text, speaker}`), so that
`pipeline.manifest` checks them with the same rules and makes the same frozen jobs: ids,
fingerprints and resume are the YAML ones. What only a CSV can get wrong (no header, an
unknown or doubled column, a stray cell, a byte that is not UTF-8) is found here, one line a
problem naming the row and the column. This module knows nothing of `Manifest`: the jobs
go out as plain data, which keeps the import graph one way.
"""

from __future__ import annotations

import csv
import difflib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ManifestError

COLUMNS = ("id", "video", "video_id", "audio", "tts_text", "tts_speaker", "output", "extend")
# how the manifest parser's field names read in a CSV's problems
FIELD_COLUMNS = {"tts": "tts_text", "tts.text": "tts_text", "tts.speaker": "tts_speaker"}
_HEADER_HELP = "id, video or video_id, audio or tts_text (optional: tts_speaker, output, extend)"
BOM = "\ufeff"


@dataclass(frozen=True)
class Sheet:
    """The rows of a CSV manifest as job mappings, each with its place (`row <n>`), and the
    problems of the sheet itself."""

    jobs: list[dict[str, Any]]
    places: list[str]
    problems: list[str] = field(default_factory=list)
    columns: Mapping[str, str] = field(default_factory=lambda: FIELD_COLUMNS)


def read_csv(path: Path) -> Sheet:
    """Read `path` as a CSV manifest. Raises ManifestError when it cannot be read at all (no
    file, no header row, no job row); the other problems come back in `Sheet.problems`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ManifestError([f"{path}: cannot read manifest: {exc.strerror or exc}"]) from exc
    wide = _wide_text(raw)
    if wide is not None:  # every cell would be garbage: one line for the whole file
        raise ManifestError([f"{path}: row 1: the sheet is {wide}, {_ENCODING}"])
    # undecodable bytes survive as lone surrogates, so each is found in its row and column
    text = raw.decode("utf-8", errors="surrogateescape").removeprefix(BOM)
    records = list(csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text)))
    if not records or not any(cell.strip() for cell in records[0]):
        raise ManifestError(
            [f"{path}: row 1: no header row; the first row names the columns: {_HEADER_HELP}"]
        )
    problems: list[str] = []
    columns = _header(records[0], problems, path)
    jobs: list[dict[str, Any]] = []
    places: list[str] = []
    for number, cells in enumerate(records[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue  # a blank line, or a row of empty cells
        place = f"row {number}"
        job = _row(place, cells, records[0], columns, problems)
        if job is not None:
            jobs.append(job)
            places.append(place)
    if not jobs and not problems:
        raise ManifestError([f"{path}: no job rows under the header (row 1)"])
    return Sheet(jobs, places, problems)


def _wide_text(raw: bytes) -> str | None:
    """What a sheet saved as "Unicode text" (UTF-16 or UTF-32, as spreadsheets do) is, by
    its byte order mark or its NUL bytes (never in UTF-8 text); None for anything else."""
    for mark, name in (
        (b"\xff\xfe\x00\x00", "UTF-32"),
        (b"\x00\x00\xfe\xff", "UTF-32"),
        (b"\xff\xfe", "UTF-16"),
        (b"\xfe\xff", "UTF-16"),
    ):
        if raw.startswith(mark):
            return name
    return "UTF-16 or another text with NUL bytes" if b"\x00" in raw else None


def _delimiter(text: str) -> str:
    """`;` when the header row has more semicolons than commas outside quotes (what
    spreadsheets write where the comma is the decimal mark), else `,`."""
    counts = {",": 0, ";": 0}
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif char in "\r\n" and not quoted:
            break
        elif char in counts and not quoted:
            counts[char] += 1
    return ";" if counts[";"] > counts[","] else ","


def _header(cells: Sequence[str], problems: list[str], path: Path) -> list[str | None]:
    """Each header cell's column name (None: a column not read), checked."""
    names = [cell.strip().lower() for cell in cells]
    known = [name for name in names if name in COLUMNS]
    if not known:
        raise ManifestError(
            [
                f"{path}: row 1: no header row (found {', '.join(repr(c) for c in cells[:3])});"
                f" the first row names the columns: {_HEADER_HELP}"
            ]
        )
    columns: list[str | None] = []
    for cell, name in zip(cells, names, strict=True):
        if _undecodable(cell):
            problems.append(f"row 1 column {_shown(cell)}: {_ENCODING}")
            columns.append(None)
        elif name in columns:
            problems.append(f"row 1 column {name!r}: given twice")
            columns.append(None)
        elif name in COLUMNS:
            columns.append(name)
        elif not name:
            columns.append(None)  # an unnamed column: its cells must stay empty (`_row`)
        else:
            near = difflib.get_close_matches(name, COLUMNS, n=1, cutoff=0.6)
            hint = f"; did you mean `{near[0]}`?" if near else ""
            problems.append(
                f"row 1 column {cell.strip()!r}: unknown column{hint}"
                f" (columns: {', '.join(COLUMNS)})"
            )
            columns.append(None)
    given = set(columns)
    for need in (("id",), ("video", "video_id"), ("audio", "tts_text")):
        if not given & set(need):
            problems.append(
                f"row 1: no {' or '.join(f'`{n}`' for n in need)} column; the header needs"
                f" {_HEADER_HELP}"
            )
    return columns


_ENCODING = 'not UTF-8; save the sheet as "CSV UTF-8" (or re-encode it as UTF-8)'


def _row(
    place: str,
    cells: Sequence[str],
    header: Sequence[str],
    columns: Sequence[str | None],
    problems: list[str],
) -> dict[str, Any] | None:
    """One row as a job mapping (cells stripped; `tts_text` kept as typed), or None when the
    row is beyond repair here (a cell that is not UTF-8)."""
    values: dict[str, str] = {}
    broken = False
    for index, cell in enumerate(cells):
        if index >= len(columns):
            if cell.strip():
                problems.append(
                    f"{place}: {len(cells)} cells, but the header has {len(columns)} columns"
                    f" (a stray delimiter? cell {index + 1} is {_shown(cell.strip())!r})"
                )
            continue
        name = columns[index]
        if _undecodable(cell):
            where = name or f"#{index + 1}"
            problems.append(f"{place} column {where!r}: {_ENCODING}: {_shown(cell)}")
            broken = True
        elif name is None and cell.strip() and not header[index].strip():
            problems.append(
                f"{place} column #{index + 1}: {_shown(cell.strip())!r} is under no column name"
            )
        elif name is not None and cell.strip():  # cells of a column refused in row 1: unread
            values[name] = cell if name == "tts_text" else cell.strip()
    if broken:
        return None
    if "id" not in values and "id" in columns:
        problems.append(f"{place} column 'id': empty; every row needs an id")
    job: dict[str, Any] = {k: v for k, v in values.items() if not k.startswith("tts_")}
    if "tts_text" in values:
        tts = {"text": values["tts_text"]}
        if "tts_speaker" in values:
            tts["speaker"] = values["tts_speaker"]
        job["tts"] = tts
    elif "tts_speaker" in values:
        problems.append(
            f"{place} column 'tts_speaker': only for a TTS row; give the script in `tts_text`,"
            " or leave tts_speaker empty for an audio row"
        )
    return job


def _undecodable(cell: str) -> bool:
    return any("\udc80" <= char <= "\udcff" for char in cell)


def _shown(cell: str) -> str:
    """A cell with its undecodable bytes as `\\xe9`, for a problem line."""
    return cell.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")


def write_csv(rows: Sequence[Mapping[str, str]]) -> str:
    """`rows` (column -> cell) as a CSV manifest: the columns used, in `COLUMNS` order, a
    header row, commas, quotes where needed, and a BOM so that Excel reads it as UTF-8."""
    used = [name for name in COLUMNS if any(row.get(name) for row in rows)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(used)
    for row in rows:
        writer.writerow([row.get(name, "") for name in used])
    return BOM + buffer.getvalue()
