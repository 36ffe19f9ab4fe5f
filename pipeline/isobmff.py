"""Is an mp4/mov file whole? Its box structure checked against its length.

A body cut short with no `Content-Length` to count against (close-delimited) reads as complete,
and the half of a faststart mp4 (moov first) still probes with its full duration and decodes
its first frame. But the file's own boxes say how long it is: the top-level boxes (ISO/IEC
14496-12 4.2: a 32-bit size, 1 for a 64-bit size after the type, 0 for "to the end of the
file") must add up to the file's length exactly, with a `moov` and an `mdat` among them; and
every chunk of samples the `moov`'s sample tables point at (`stco`/`co64` offsets, `stsc`
samples per chunk, `stsz`/`stz2` sizes) must end within the file, which also catches a cut
`mdat` that declared size 0. Only the `moov` is read (kilobytes), never the media.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_HEAD = struct.Struct(">I4s")
_LARGE = struct.Struct(">Q")
_STBL_PATH = (b"mdia", b"minf", b"stbl")


class IncompleteError(ValueError):
    """The file is not whole; the message is one line for a person (``the mdat box at byte
    48 declares 90210 bytes, 4000 past the file's end``)."""


def check_whole(path: Path) -> None:
    """Raise IncompleteError unless the ISO media file at `path` is as long as its boxes say
    and its samples lie within it."""
    with path.open("rb") as file:
        length = os.fstat(file.fileno()).st_size
        boxes = _top_level(file, length)
        kinds = {kind for kind, _, _ in boxes}
        for needed in (b"moov", b"mdat"):  # ftyp too, in an mp4; a QuickTime file may lack it
            if needed not in kinds:
                raise IncompleteError(f"it has no {needed.decode()} box")
        start, end = next((s, e) for kind, s, e in boxes if kind == b"moov")
        file.seek(start)
        moov = file.read(end - start)
    for reach in _sample_reaches(moov):
        if reach > length:
            raise IncompleteError(
                f"its samples reach byte {reach}, {reach - length} past the file's end"
            )


def _top_level(file: BinaryIO, length: int) -> list[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of each top-level box; they must tile the file."""
    boxes = []
    at = 0
    while at < length:
        file.seek(at)
        head = file.read(16)
        kind, header, size = _header(head, at, length - at)
        if at + size > length:
            raise IncompleteError(
                f"the {_name(kind)} box at byte {at} declares {size} bytes,"
                f" {at + size - length} past the file's end"
            )
        boxes.append((kind, at + header, at + size))
        at += size
    return boxes


def _header(head: bytes, at: int, room: int) -> tuple[bytes, int, int]:
    """(type, header length, box size) of the box whose first bytes are `head`; `room` is what
    is left of its parent (a size of 0 takes all of it)."""
    if len(head) < _HEAD.size or room < _HEAD.size:
        raise IncompleteError(f"a box header is cut at byte {at}")
    size, kind = _HEAD.unpack_from(head)
    header = _HEAD.size
    if size == 1:
        if len(head) < _HEAD.size + _LARGE.size:
            raise IncompleteError(f"a box header is cut at byte {at}")
        (size,) = _LARGE.unpack_from(head, _HEAD.size)
        header += _LARGE.size
    elif size == 0:
        size = room
    if size < header:
        raise IncompleteError(f"the {_name(kind)} box at byte {at} declares {size} bytes")
    return kind, header, size


def _children(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the boxes in `data[start:end]`."""
    at = start
    while at < end:
        kind, header, size = _header(data[at : at + 16], at, end - at)
        if at + size > end:
            raise IncompleteError(f"the {_name(kind)} box in the moov overruns its parent")
        yield kind, at + header, at + size
        at += size


def _sample_reaches(moov: bytes) -> Iterator[int]:
    """Where each chunk of samples ends (offset plus its samples' sizes), track by track."""
    for kind, start, end in _children(moov, 0, len(moov)):
        if kind != b"trak":
            continue
        spans = [(start, end)]
        for step in _STBL_PATH:
            spans = [(s, e) for k, s, e in _children(moov, *spans[0]) if k == step][:1]
            if not spans:
                break
        else:
            tables = {k: moov[s:e] for k, s, e in _children(moov, *spans[0])}
            yield from _chunk_reaches(tables)


def _chunk_reaches(tables: dict[bytes, bytes]) -> Iterator[int]:
    offsets = _offsets(tables)
    sizes = _sizes(tables)
    runs = _runs(tables.get(b"stsc", b""))
    sample = run = per_chunk = 0
    for number, offset in enumerate(offsets, start=1):
        while run < len(runs) and runs[run][0] <= number:  # runs come in chunk order
            per_chunk = runs[run][1]
            run += 1
        yield offset + sum(sizes[sample : sample + per_chunk])
        sample += per_chunk


def _offsets(tables: dict[bytes, bytes]) -> list[int]:
    if b"co64" in tables:
        return _entries(tables[b"co64"], 8, "Q")
    return _entries(tables.get(b"stco", b""), 8, "I")


def _sizes(tables: dict[bytes, bytes]) -> list[int]:
    if b"stsz" in tables and len(tables[b"stsz"]) >= 12:
        table = tables[b"stsz"]
        constant, count = struct.unpack_from(">II", table, 4)
        return [constant] * count if constant else _entries(table, 12, "I")
    if b"stz2" in tables and len(tables[b"stz2"]) >= 12:
        table = tables[b"stz2"]
        bits, count = table[7], struct.unpack_from(">I", table, 8)[0]
        if bits == 4:
            nibbles = [n for byte in table[12:] for n in (byte >> 4, byte & 0x0F)]
            return nibbles[:count]
        if bits in (8, 16):
            return _entries(table, 12, "B" if bits == 8 else "H")
    return []  # no sizes: each chunk is checked by its offset alone


def _runs(table: bytes) -> list[tuple[int, int]]:
    """`stsc`: (first chunk, samples per chunk) of each run of chunks."""
    fields = _entries(table, 8, "III")
    return list(zip(fields[0::3], fields[1::3], strict=True))


def _entries(table: bytes, skip: int, layout: str) -> list[int]:
    """A full box's table: version and flags, a count at `skip - 4`, then `layout` entries
    (as many as the count says and the bytes hold)."""
    if len(table) < skip:
        return []
    (count,) = struct.unpack_from(">I", table, skip - 4)
    width = struct.calcsize(">" + layout)
    count = min(count, (len(table) - skip) // width)
    return list(struct.unpack_from(f">{count * layout}", table, skip))


def _name(kind: bytes) -> str:
    return kind.decode("latin-1").encode("unicode_escape").decode("ascii")
