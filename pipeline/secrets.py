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
    """

    def __init__(self, keys: Iterable[str | None]) -> None:
        self._pieces = frozenset(
            key[i : i + FRAGMENT]
            for key in {k.strip() for k in keys if k}
            if len(key) >= FRAGMENT
            for i in range(len(key) - FRAGMENT + 1)
        )

    def __call__(self, text: str) -> str:
        if not self._pieces or len(text) < FRAGMENT:
            return text
        hidden = [False] * len(text)
        for i in range(len(text) - FRAGMENT + 1):
            if text[i : i + FRAGMENT] in self._pieces:
                hidden[i : i + FRAGMENT] = [True] * FRAGMENT
        if not any(hidden):
            return text
        out: list[str] = []
        for i, char in enumerate(text):
            if not hidden[i]:
                out.append(char)
            elif i == 0 or not hidden[i - 1]:
                out.append(MASK)
        return "".join(out)


NO_KEYS = Redactor(())
