"""Running the simulator: `serve()` for tests and embedding, `main_blocking()` for the CLI."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from aiohttp import web

from pipeline.simulator.app import create_app
from pipeline.simulator.config import SimConfig
from pipeline.simulator.ledger import Ledger
from pipeline.simulator.state import STATE

# Seconds a shutdown waits for requests still in flight (e.g. a long download).
SHUTDOWN_GRACE = 2.0


@dataclass
class Simulator:
    """A running simulator: where it listens, its live knobs, and its ledger."""

    url: str  # base URL, e.g. "http://127.0.0.1:54321"; endpoints live under /openapi/v2
    config: SimConfig
    ledger: Ledger
    app: web.Application

    def settle(self) -> None:
        """Make due generations terminal now (requests do this too), e.g. before reading the
        ledger's refunds."""
        self.app[STATE].backend.settle()


@asynccontextmanager
async def serve(
    config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[Simulator]:
    """Run the simulator on `host`:`port` (0: a free port) for the duration of the block."""
    config = SimConfig() if config is None else config
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        if ":" in bound_host:
            bound_host = f"[{bound_host}]"
        yield Simulator(
            url=f"http://{bound_host}:{bound_port}",
            config=config,
            ledger=app[STATE].ledger,
            app=app,
        )
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


def main_blocking(host: str, port: int, config: SimConfig) -> None:
    """Serve until Ctrl-C or SIGTERM, printing the base URL and the valid API key(s)."""
    anyio.run(_serve_until_signal, host, port, config, backend="asyncio")


async def _serve_until_signal(host: str, port: int, config: SimConfig) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with serve(config, host, port) as simulator:
            print(f"PixVerse simulator listening on {simulator.url}", flush=True)
            for key in sorted(config.api_keys):
                print(f"API key: {key}", flush=True)
            print("Ctrl-C to stop.", flush=True)
            async for _ in signals:
                break
