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

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.content_length = len(BODY)  # promises the whole body, sends half
        await response.prepare(request)
        await response.write(BODY[: len(BODY) // 2])
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_get("/whole.mp4", whole)
    app.router.add_get("/cut.mp4", cut)
    return app


async def test_complete_download_is_renamed_into_place(tmp_path: Path) -> None:
    async with serve_app(_cdn()) as url:
        config = ClientConfig(base_url=url, api_key="k", retry=FAST_RETRY)
        async with PixverseClient(config) as client:
            fetched = await fetch_to_file(
                client, Link(f"{url}/whole.mp4", len(BODY)), tmp_path / "a.mp4"
            )
    assert fetched.size == len(BODY)
    assert (tmp_path / "a.mp4").read_bytes() == BODY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]  # no temporary left


async def test_a_body_short_of_its_content_length_leaves_nothing(tmp_path: Path) -> None:
    async with serve_app(_cdn()) as url:
        config = ClientConfig(base_url=url, api_key="k", retry=FAST_RETRY)
        async with PixverseClient(config) as client:
            with pytest.raises(TransportError):
                await fetch_to_file(client, Link(f"{url}/cut.mp4", None), tmp_path / "b.mp4")
    assert list(tmp_path.iterdir()) == []  # neither the output nor its .part


async def test_the_status_size_is_not_a_byte_count(tmp_path: Path) -> None:
    """`size` is "video size", unit undocumented: a body that disagrees with it, but matches
    its Content-Length, is the file."""
    async with serve_app(_cdn()) as url:
        config = ClientConfig(base_url=url, api_key="k", retry=FAST_RETRY)
        async with PixverseClient(config) as client:
            for name, size in (("c.mp4", len(BODY) + 1), ("d.mp4", len(BODY) // 1024)):
                fetched = await fetch_to_file(
                    client, Link(f"{url}/whole.mp4", size), tmp_path / name
                )
                assert fetched.size == len(BODY)
                assert (tmp_path / name).read_bytes() == BODY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.mp4", "d.mp4"]
