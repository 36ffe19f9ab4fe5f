"""A programmable reverse proxy in front of the simulator: the misbehaving gateway or load
balancer that sits between a client and PixVerse in real life (a 504 after the request was
accepted, an odd reply on one poll). Each request goes to `hook(call, forward)`."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

Forward = Callable[[], Awaitable[web.Response]]


@dataclass
class Call:
    path: str
    number: int  # 1 for the first request to this path (polls: the first to any video)
    trace_id: str
    body: bytes = field(default=b"", repr=False)  # the request body as the client sent it


@dataclass
class Proxy:
    url: str
    seen: list[Call] = field(default_factory=list)


Hook = Callable[[Call, Forward], Awaitable[web.Response]]


def envelope(code: int, message: str = "", status: int = 200, resp: object = None) -> web.Response:
    return web.json_response({"ErrCode": code, "ErrMsg": message, "Resp": resp}, status=status)


async def passthrough(call: Call, forward: Forward) -> web.Response:
    return await forward()


@asynccontextmanager
async def gateway_proxy(upstream: str, hook: Hook = passthrough) -> AsyncIterator[Proxy]:
    counts: Counter[str] = Counter()
    session = aiohttp.ClientSession(auto_decompress=False)
    proxy = Proxy(url="")

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        key = "/video/result" if "/video/result/" in request.path else request.path
        counts[key] += 1
        call = Call(key, counts[key], request.headers.get("Ai-trace-id", ""), body)
        proxy.seen.append(call)

        async def forward() -> web.Response:
            headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
            async with session.request(
                request.method, upstream + request.path_qs, headers=headers, data=body
            ) as reply:
                data = await reply.read()
                keep = {k: v for k, v in reply.headers.items() if k.lower() == "retry-after"}
                return web.Response(
                    status=reply.status, body=data, headers=keep, content_type=reply.content_type
                )

        return await hook(call, forward)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    proxy.url = f"http://{host}:{port}"
    try:
        yield proxy
    finally:
        await runner.cleanup()
        await session.close()


def status_of(response: web.Response) -> int | None:
    """The `Resp.status` of a forwarded status reply, if it has one."""
    try:
        payload = json.loads(response.body)  # type: ignore[arg-type]
        return int(payload["Resp"]["status"])
    except (TypeError, ValueError, KeyError):
        return None
