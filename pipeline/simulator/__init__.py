"""A PixVerse lip-sync API simulator: a real aiohttp server, with fault knobs and a ledger.

    async with serve(SimConfig(time_scale=0.01)) as sim:
        ...  # point the client at sim.url with API key "sim-key", then assert on sim.ledger

It implements every endpoint of /work/shared/pixverse-api.md, including the [decided]
behaviours (reply cache per trace id, signed expiring links, 500008 for unknown ids).
"""

from pipeline.simulator.app import create_app
from pipeline.simulator.config import SimConfig
from pipeline.simulator.ledger import (
    GenerationRecord,
    Ledger,
    RequestRecord,
    TransferRecord,
    UploadRecord,
    canonical_body,
)
from pipeline.simulator.server import Simulator, main_blocking, serve

__all__ = [
    "GenerationRecord",
    "Ledger",
    "RequestRecord",
    "SimConfig",
    "Simulator",
    "TransferRecord",
    "UploadRecord",
    "canonical_body",
    "create_app",
    "main_blocking",
    "serve",
]
