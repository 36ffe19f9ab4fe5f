"""SimState: everything one simulator app holds, reached from handlers as `app[STATE]`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from pipeline.simulator.backend import Backend
from pipeline.simulator.config import SimConfig
from pipeline.simulator.ledger import Ledger
from pipeline.simulator.links import LinkSigner
from pipeline.simulator.media import ResultVideos
from pipeline.simulator.replycache import ReplyCache


@dataclass
class SimState:
    config: SimConfig
    ledger: Ledger
    clock: Callable[[], float]
    backend: Backend
    replies: ReplyCache
    links: LinkSigner
    videos: ResultVideos

    @classmethod
    def build(cls, config: SimConfig, ledger: Ledger, clock: Callable[[], float]) -> SimState:
        return cls(
            config=config,
            ledger=ledger,
            clock=clock,
            backend=Backend(config, ledger, clock),
            replies=ReplyCache(clock),
            links=LinkSigner(clock),
            videos=ResultVideos(),
        )


STATE = web.AppKey("pixverse_simulator_state", SimState)
