"""Where a command's API keys come from, checked once: one key, or several (one account each).

In this order, the first that is given wins:

1. `--api-key KEY` (one key; prefer the environment, a command line is visible to `ps`);
2. `--keys-file FILE`: one key per line; blank lines and lines starting with `#` are skipped;
3. `PIXVERSE_API_KEYS`: several keys, comma-separated;
4. `PIXVERSE_API_KEY`: one key.

Keys are stripped as they are used. A key given twice is a mistake (it would be one account
counted as two: twice the slots it has), so it is refused, naming where each copy came from, but
never the key. Problems are `ManifestError`s: one line each, exit 2, nothing sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

from pipeline.client import key_fingerprint
from pipeline.errors import ManifestError

KEYS_VARIABLE = "PIXVERSE_API_KEYS"
KEY_VARIABLE = "PIXVERSE_API_KEY"


def api_keys(api_key: str | None, keys_file: Path | None, environ: Mapping[str, str]) -> list[str]:
    """The keys to use, in order (the first is the one `speakers` asks with); raises
    ManifestError when none is given or one is given twice."""
    if api_key is not None and keys_file is not None:
        raise ManifestError(["give --api-key or --keys-file, not both"])
    if api_key is not None:
        sources = [("--api-key", api_key)]
    elif keys_file is not None:
        sources = _file_keys(keys_file)
        if not sources:
            raise ManifestError([f"--keys-file {keys_file}: no key in it (one key per line)"])
    elif environ.get(KEYS_VARIABLE, "").strip():
        sources = [
            (f"{KEYS_VARIABLE} item {n}", part)
            for n, part in enumerate(environ[KEYS_VARIABLE].split(","), 1)
            if part.strip()
        ]
    else:
        sources = [(KEY_VARIABLE, environ.get(KEY_VARIABLE, ""))]
    keys = [(where, key.strip()) for where, key in sources]
    if not any(key for _, key in keys):
        raise ManifestError(
            [f"{KEY_VARIABLE} is not set (or pass --api-key, --keys-file or {KEYS_VARIABLE})"]
        )
    seen: dict[str, str] = {}
    for where, key in keys:
        if key in seen:
            raise ManifestError(
                [f"{where}: the same key as {seen[key]} (key {key_fingerprint(key)})"]
            )
        seen[key] = where
    return [key for _, key in keys]


def keys_to_hide(
    api_key: str | None, keys_file: Path | None, environ: Mapping[str, str]
) -> list[str]:
    """Every key a command might use, for the redactor, whatever is wrong with them: read
    before anything is logged, and never raising (`api_keys` reports the problems)."""
    found = [api_key, environ.get(KEY_VARIABLE)]
    found += environ.get(KEYS_VARIABLE, "").split(",")
    if keys_file is not None:
        with contextlib.suppress(ManifestError):
            found += [key for _, key in _file_keys(keys_file)]
    return [key.strip() for key in found if key and key.strip()]


def _file_keys(path: Path) -> list[tuple[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ManifestError([f"--keys-file {path}: cannot read it: {reason}"]) from exc
    return [
        (f"--keys-file {path} line {n}", line.strip())
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.strip().startswith("#")
    ]
