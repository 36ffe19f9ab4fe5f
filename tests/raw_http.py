"""A loopback HTTP server below aiohttp.web: it answers every request with the same bytes,
exactly as given, and closes the connection, so a test can send what aiohttp.web never would
(a close-delimited body cut short, a chunked body without its last chunk)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc


@asynccontextmanager
async def serve_raw(reply: bytes) -> AsyncIterator[str]:
    """Serve `reply` (status line, headers and body) to each request; yields the base URL."""

    async def handle(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await stream.receive()
            await stream.send(reply)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield f"http://127.0.0.1:{port}"
        tg.cancel_scope.cancel()
