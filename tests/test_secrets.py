"""The API key never leaves the process: not on the console, not in the reports, not in the
state file, even when a proxy in front of the API quotes it back (whole, or cut in half by a
truncated message), and even when the environment variable has stray whitespace."""

from __future__ import annotations

import logging
import random
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from aiohttp import web

from pipeline.cli import main
from pipeline.runner import ExitCode
from pipeline.secrets import Redactor
from tests.gateway_proxy import Call, Forward, Hook, Proxy, envelope, gateway_proxy
from tests.harness import fast_sim, project, sim_in_thread, tts_manifest

KEY = "pxv-LIVE-7f3a9c2e41b84d07a5e6c1f2b3d4e5f6"
GENERATE = "/openapi/v2/video/lip_sync/generate"


def pieces(secret: str, length: int = 8) -> set[str]:
    return {secret[i : i + length] for i in range(len(secret) - length + 1)}


def leaks(text: str) -> list[str]:
    return sorted(p for p in pieces(KEY) if p in text)


# the Redactor itself ------------------------------------------------------------------------


def test_the_whole_key_and_any_piece_of_eight_are_hidden() -> None:
    redact = Redactor([f"  {KEY}\n"])  # as found in the environment: stripped, as sent
    assert redact(f"bad key {KEY}!") == "bad key ***!"
    assert redact(f"{{'message': 'bad key {KEY[:20]}") == "{'message': 'bad key ***"  # cut
    assert redact(f"...{KEY[5:17]}...") == "...***..."
    assert redact(f"{KEY}{KEY} and {KEY[:8]}") == "*** and ***"
    assert redact("nothing to hide here") == "nothing to hide here"
    assert redact(KEY[:7]) == KEY[:7]  # shorter than a piece: ordinary text


def test_several_keys_and_keys_too_short_to_tell_from_words() -> None:
    other = "sk-second-account-0123456789"
    redact = Redactor([KEY, other, "k", "", None])
    assert redact(f"{other} / {KEY} / k") == "*** / *** / k"
    assert Redactor([])("text") == "text"


def test_the_redactor_hides_exactly_what_a_scan_of_every_position_hides() -> None:
    """The redactor finds pieces through anchors (fast on a 10,000-job report); it must hide
    the very characters a plain scan of every position would, with one mask per run."""
    keys = [KEY, "sk-second-account-0123456789", "abcdefghij"]
    redact = Redactor(keys)
    every = pieces(keys[0]) | pieces(keys[1]) | pieces(keys[2])
    chunks = [*every, *(k[:5] for k in keys), "a", "b", " ", "7f3a", "-0123", "\n"]
    rng = random.Random(6)
    for _ in range(400):
        text = "".join(rng.choice(chunks) for _ in range(rng.randint(0, 12)))
        hidden = [False] * len(text)
        for i in range(len(text) - 7):
            if text[i : i + 8] in every:
                hidden[i : i + 8] = [True] * 8
        expected = "".join(
            "***" if h and (i == 0 or not hidden[i - 1]) else "" if h else c
            for i, (c, h) in enumerate(zip(text, hidden, strict=True))
        )
        assert redact(text) == expected, text


# end to end: a proxy that quotes the key --------------------------------------------------


@contextmanager
def proxy_in_thread(upstream: str, hook: Hook) -> Iterator[Proxy]:
    """tests/gateway_proxy.py on its own event loop, for tests that call the sync CLI."""
    ready: list[Proxy] = []
    started, stop = threading.Event(), threading.Event()

    async def serve_proxy() -> None:
        async with gateway_proxy(upstream, hook) as proxy:
            ready.append(proxy)
            started.set()
            await anyio.to_thread.run_sync(stop.wait)

    thread = threading.Thread(target=anyio.run, args=(serve_proxy,), daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("proxy did not start")
    try:
        yield ready[0]
    finally:
        stop.set()
        thread.join(10)


async def quoting_proxy(call: Call, forward: Forward) -> web.Response:
    """Generate #1: an envelope whose ErrMsg quotes the key (the job fails with it).
    Generate #2: a gateway's JSON that is not an envelope, long enough that the client's
    quote of it (120 characters) ends inside the key. The first poll: an account error
    quoting the key, which stops the run (the report and the error line carry it)."""
    if call.path == GENERATE and call.number == 1:
        return envelope(400017, f"invalid parameter: API-KEY {KEY} may not call this")
    if call.path == GENERATE and call.number == 2:
        padding = "x" * 87  # "{'message': '" + 87 characters: the quote is cut 20 into the key
        return web.json_response({"message": padding + KEY}, status=502)
    if call.path == "/video/result" and call.number == 1:
        return envelope(400012, f"key {KEY} is disabled")
    return await forward()


def test_a_key_quoted_by_a_proxy_reaches_no_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project(tmp_path, tts_manifest(3))
    out = tmp_path / "out"
    with (
        sim_in_thread(fast_sim(api_keys=frozenset({KEY}))) as sim,
        proxy_in_thread(sim.url, quoting_proxy) as proxy,
    ):
        monkeypatch.setenv("PIXVERSE_API_KEY", f"  {KEY}\n")  # as a careless .env file has it
        monkeypatch.setenv("PIXVERSE_BASE_URL", proxy.url)
        args = ["run", str(manifest), "--out", str(out), "--concurrency", "1"]
        code = main([*args, "--poll-interval", "0.02", "--request-timeout", "1"])
    captured = capsys.readouterr()
    assert code == ExitCode.ACCOUNT, captured.err
    # the replies did reach every exit: the failure, the retry and the stop are all told ...
    assert "400017" in captured.err
    assert "not a PixVerse envelope" in captured.err
    assert "error: account problem: key *** is disabled" in captured.err
    report = (out / "report.csv").read_text(encoding="utf-8")
    assert "***" in report
    # ... and no piece of the key is in any of them
    assert leaks(captured.out) == []
    assert leaks(captured.err) == []
    files = [p for p in out.iterdir() if p.is_file()]
    assert {"report.json", "report.csv", ".pixverse-batch.sqlite"} <= {p.name for p in files}
    for path in files:  # the sqlite file (and its -wal, if any) byte for byte
        data = path.read_bytes().decode("latin-1")
        assert leaks(data) == [], path.name


def test_the_log_filter_cleans_messages_and_tracebacks() -> None:
    """`log.exception` prints the exception's text too: the filter must clean it as well."""
    from pipeline.logs import _RedactKey

    def fail() -> None:
        raise ValueError(f"unexpected reply quoting {KEY}")

    try:
        fail()
    except ValueError:
        record = logging.LogRecord(
            "pipeline.runner", logging.ERROR, __file__, 1, "%s: left unfinished", (KEY,), None
        )
        record.exc_info = sys.exc_info()
    assert _RedactKey(Redactor([KEY])).filter(record)
    text = logging.Formatter("%(levelname)s %(message)s").format(record)
    assert "ValueError: unexpected reply quoting ***" in text
    assert "ERROR ***: left unfinished" in text
    assert leaks(text) == []
