"""Downloads: the output file appears whole or not at all."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from aiohttp import web

from pipeline.client import ClientConfig, PixverseClient
from pipeline.download import Link, fetch_to_file
from pipeline.errors import TransportError
from tests.harness import FAST_RETRY
from tests.media_factory import make_video
from tests.test_client import serve_app

pytestmark = pytest.mark.anyio


def _real_mp4() -> bytes:
    """A result must probe as an mp4 video before it is renamed into place."""
    with tempfile.TemporaryDirectory() as folder:
        return make_video(Path(folder) / "result.mp4").read_bytes()


BODY = _real_mp4()


def _cdn() -> web.Application:
    async def whole(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="video/mp4")

    async def chunked_short(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # no Content-Length: chunked, so only `size` can tell
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(BODY[:1000])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/whole.mp4", whole)
    app.router.add_get("/short.mp4", chunked_short)
    return app


async def test_complete_download_is_renamed_into_place(tmp_path: Path) -> None:
    async with serve_app(_cdn()) as url:
        config = ClientConfig(base_url=url, api_key="k", retry=FAST_RETRY)
        async with PixverseClient(config) as client:
            size = await fetch_to_file(
                client, Link(f"{url}/whole.mp4", len(BODY)), tmp_path / "a.mp4"
            )
    assert size == len(BODY)
    assert (tmp_path / "a.mp4").read_bytes() == BODY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]  # no temporary left


async def test_short_body_against_reported_size_leaves_nothing(tmp_path: Path) -> None:
    async with serve_app(_cdn()) as url:
        config = ClientConfig(base_url=url, api_key="k", retry=FAST_RETRY)
        async with PixverseClient(config) as client:
            with pytest.raises(TransportError, match="reported size"):
                await fetch_to_file(client, Link(f"{url}/short.mp4", len(BODY)), tmp_path / "b.mp4")
    assert list(tmp_path.iterdir()) == []  # neither the output nor its .part


async def test_a_size_other_than_the_status_reply_said_is_caught(tmp_path: Path) -> None:
    async with serve_app(_cdn()) as url:
        config = ClientConfig(base_url=url, api_key="k", retry=FAST_RETRY)
        async with PixverseClient(config) as client:
            with pytest.raises(TransportError):
                # the status reply says the file is bigger than what the CDN sends in full
                await fetch_to_file(
                    client, Link(f"{url}/whole.mp4", len(BODY) + 1), tmp_path / "c.mp4"
                )
    assert list(tmp_path.iterdir()) == []
