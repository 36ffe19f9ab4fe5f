"""The gateway's reply cache: the first reply per (API key, trace id), replayed on any endpoint.

pixverse-api.md, "Trace-id semantics" [decided]: for 24 hours, a request that re-uses a trace id
gets the reply of the first request that carried it, whatever the endpoint. That is what makes
re-sending a generate with the same trace id safe, and what keeps a poll that re-uses a trace id
stuck on its first answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.simulator.envelope import Reply


@dataclass(frozen=True)
class _Entry:
    reply: Reply
    stored_at: float


class ReplyCache:
    SWEEP_EVERY = 4096  # stores between sweeps of expired entries (bounds a long `sim` run)

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._stores = 0

    def get(self, api_key: str, trace_id: str, ttl: float) -> Reply | None:
        """The cached reply, if one was stored less than `ttl` real seconds ago."""
        entry = self._entries.get((api_key, trace_id))
        if entry is None:
            return None
        if self._clock() - entry.stored_at >= ttl:
            del self._entries[(api_key, trace_id)]
            return None
        return entry.reply

    def put(self, api_key: str, trace_id: str, reply: Reply, ttl: float) -> None:
        """Keep the first reply only: a later put for the same key never replaces it."""
        now = self._clock()
        self._stores += 1
        if self._stores % self.SWEEP_EVERY == 0:
            self._entries = {k: e for k, e in self._entries.items() if now - e.stored_at < ttl}
        self._entries.setdefault((api_key, trace_id), _Entry(reply, now))

    def __len__(self) -> int:
        return len(self._entries)
