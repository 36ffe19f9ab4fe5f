"""Signed download links, like a CDN's: HMAC over the video id and the expiry.

The expiry is a reading of the simulator's clock in milliseconds, so it is only meaningful to the
process that signed it, which is the only one that checks it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable

DOWNLOAD_PREFIX = "/media/result/"


def download_path(video_id: int) -> str:
    return f"{DOWNLOAD_PREFIX}{video_id}.mp4"


class LinkSigner:
    def __init__(self, clock: Callable[[], float], secret: bytes | None = None) -> None:
        self._clock = clock
        self._secret = secrets.token_bytes(32) if secret is None else secret

    def _signature(self, video_id: int, expires_ms: int) -> str:
        message = f"{video_id}:{expires_ms}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(self, video_id: int, ttl: float) -> dict[str, str]:
        """Query parameters of a link to `video_id` valid for `ttl` real seconds."""
        expires_ms = int((self._clock() + ttl) * 1000)
        return {"exp": str(expires_ms), "sig": self._signature(video_id, expires_ms)}

    def verify(self, video_id: int, expires: str | None, signature: str | None) -> bool:
        """True when the signature matches and the link has not expired."""
        if expires is None or signature is None or not (expires.isascii() and expires.isdigit()):
            return False
        expires_ms = int(expires)
        if not hmac.compare_digest(self._signature(video_id, expires_ms), signature):
            return False
        return self._clock() * 1000 < expires_ms
