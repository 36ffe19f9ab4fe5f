"""Keeping API keys out of everything that leaves the process.

A `Redactor` knows the keys in use and replaces them with ``***`` in a text. It is applied where
text leaves: log lines and error lines on the console, the report files, the state file; and
where replies enter (`pipeline.client`), before anything quotes or truncates them.

Not only the whole key is hidden: a message cut short (a reply quoted to 120 characters) can end
in half a key, so every run of at least `FRAGMENT` characters of a key is hidden too.
"""

from __future__ import annotations

from collections.abc import Iterable

FRAGMENT = 8  # a run of this many characters of a key is treated as the key
MASK = "***"


class Redactor:
    """`redact(text)` hides every key given (and any FRAGMENT-long piece of one).

    Keys are compared as used: surrounding whitespace is dropped. A key shorter than
    FRAGMENT is left alone: it cannot be told from ordinary words, and PixVerse keys are long.

    Found with `str.find`, not a walk over every character: a report of 10,000 jobs is tens of
    megabytes. Every FRAGMENT-long piece of a key holds one of the key's `_ANCHOR`-long blocks
    that start at a multiple of `_ANCHOR`, so only where such a block occurs can a piece
    start, at most FRAGMENT - _ANCHOR characters before it.
    """

    def __init__(self, keys: Iterable[str | None]) -> None:
        usable = {k.strip() for k in keys if k} - {""}
        usable = {key for key in usable if len(key) >= FRAGMENT}
        self._pieces = frozenset(
            key[i : i + FRAGMENT] for key in usable for i in range(len(key) - FRAGMENT + 1)
        )
        self._anchors = frozenset(
            key[i : i + _ANCHOR]
            for key in usable
            for i in range(0, len(key) - _ANCHOR + 1, _ANCHOR)
        )

    def __call__(self, text: str) -> str:
        if not self._pieces or len(text) < FRAGMENT:
            return text
        spans = sorted(self._spans(text))
        if not spans:
            return text
        out: list[str] = []
        done = 0  # text[:done] is in `out`
        start, end = spans[0]
        for lo, hi in [*spans[1:], (len(text) + 1, len(text) + 1)]:
            if lo <= end:  # touching or overlapping: one mask
                end = max(end, hi)
                continue
            out += [text[done:start], MASK]
            done, (start, end) = end, (lo, hi)
        out.append(text[done:])
        return "".join(out)

    def _spans(self, text: str) -> set[tuple[int, int]]:
        """(start, end) of every occurrence of a piece."""
        spans = set()
        last = len(text) - FRAGMENT
        for anchor in self._anchors:
            at = text.find(anchor)
            while at >= 0:
                for start in range(max(0, at - FRAGMENT + _ANCHOR), min(at, last) + 1):
                    if text[start : start + FRAGMENT] in self._pieces:
                        spans.add((start, start + FRAGMENT))
                at = text.find(anchor, at + 1)
        return spans


_ANCHOR = FRAGMENT // 2


NO_KEYS = Redactor(())
