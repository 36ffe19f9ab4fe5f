"""The PixVerse API client: one aiohttp session, the envelope, the error boundary, retries.

This module is the single place where foreign exceptions (aiohttp, OS, JSON) and error
envelopes become `pipeline.errors`. Trace ids follow `shared/pixverse-api.md`: a fresh uuid4 for
every upload, poll, list and balance call. A submission is one attempt with the caller's trace
id (`generate`): when to re-send it, and with which id, is the exactly-once protocol of
`pipeline.submit`, which writes the id to disk before the request leaves.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import anyio

from pipeline.errors import (
    ApiError,
    AuthError,
    CreditsError,
    EndpointError,
    JobError,
    NotSentError,
    PipelineError,
    ServerBusyError,
    SlotLimitError,
    StaleMediaError,
    TransportError,
)
from pipeline.gate import OverloadGate, Pass, paced
from pipeline.retry import RetryPolicy, Sleep, retrier
from pipeline.secrets import Redactor

log = logging.getLogger("pipeline.client")

API_PREFIX = "/openapi/v2"
DEFAULT_BASE_URL = "https://app-api.pixverse.ai"

_BUSY_CODES = frozenset({500069, 500100, 99999})
_AUTH_CODES = frozenset({400012, 500020})
_MEDIA_TYPES = {
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
}


# The TTS speaker list: the documented path first, then the newer one a client kit uses (its
# page_size must be one of 10, 20, 50, 100). Each with the query it needs besides page_num.
SPEAKER_PATHS: dict[str, dict[str, Any]] = {
    "/video/lip_sync/tts_list": {"page_size": 30},
    "/video/tts_speaker": {"page_size": 100, "speaker_type": "all"},
}


@dataclass(frozen=True)
class ClientConfig:
    base_url: str
    api_key: str = field(repr=False)  # never printed: not in repr, logs or errors
    request_timeout: float = 30.0  # whole request, small JSON calls
    transfer_timeout: float = 600.0  # whole upload or download
    connect_timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def key_fingerprint(self) -> str:
        """Names the key in the state file and reports without revealing it (a salted,
        truncated sha256: enough to tell keys apart, useless to recover one)."""
        return key_fingerprint(self.api_key)


@functools.lru_cache(maxsize=16)  # asked for several times per job (issue 6: CPU per job)
def key_fingerprint(api_key: str) -> str:
    digest = hashlib.sha256(b"pixverse-batch key fingerprint\0" + api_key.encode())
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class Submission:
    video_id: int
    credits: int | None


@dataclass(frozen=True)
class Upload:
    media_id: int
    media_type: str  # "video" or "audio", as the server classified it ("" if it did not say)
    sha256: str  # hex digest of exactly the bytes sent


class _HashingReader(io.BufferedReader):
    """An upload's file, read by aiohttp in chunks (from a worker thread), hashing what it
    reads; a seek back to the start (a re-sent body) starts the hash again."""

    def __init__(self, path: Path) -> None:
        super().__init__(io.FileIO(path, "rb"))
        self._digest = hashlib.sha256()

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self._digest.update(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        position = super().seek(offset, whence)
        if position == 0:
            self._digest = hashlib.sha256()
        return position

    def hexdigest(self) -> str:
        """Of every byte of the file as this reading went (the rest read now, if any)."""
        if not self.closed:  # aiohttp before 3.10 closes the file once it is sent
            while self.read(1 << 20):
                pass
        return self._digest.hexdigest()


@dataclass(frozen=True)
class VideoStatus:
    video_id: int
    status: int  # 1 done, 5 generating, 6 deleted, 7 moderated, 8 failed; others not terminal
    url: str | None
    size: int | None
    created_at: float | None = None  # `create_time`, when it reads as an ISO-8601 UTC time


@dataclass(frozen=True)
class Speaker:
    speaker_id: str
    name: str
    # whatever else the list says about the speaker (the contract names only the two above;
    # `pixverse-batch speakers` prints these too)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Balance:
    account_id: int
    credit_monthly: int
    credit_package: int

    @property
    def spendable(self) -> int:
        return self.credit_monthly + self.credit_package


@dataclass(frozen=True)
class Exchange:
    """One request and the reply it got, for a `recorder` (`pixverse-batch doctor --record`).

    Built from what aiohttp actually sent, minus the `API-KEY` header: it never holds the key.
    """

    method: str
    path: str  # with the /openapi/v2 prefix
    query: dict[str, str]
    request_headers: dict[str, str]
    status: int
    headers: dict[str, str]
    body: bytes


Recorder = Callable[[Exchange], None]
# Dropped from recordings: the key is the secret; a cookie may be a session.
_UNRECORDED_HEADERS = frozenset({"api-key", "cookie", "set-cookie"})


def new_trace_id() -> str:
    return str(uuid.uuid4())


def _field(payload: Mapping[str, Any], name: str, lower: str) -> Any:
    return payload[name] if name in payload else payload.get(lower)


def classify_envelope(
    http_status: int, payload: Any, headers: Mapping[str, str] | None = None
) -> Any:
    """Return `Resp` of a successful envelope, or raise the error it stands for.

    Reads `ErrCode/ErrMsg/Resp` or the lower-case `err_code/err_msg/resp` some 500s use, whatever
    the HTTP status (errors may come with 200, 400 or 500).
    """
    if not isinstance(payload, Mapping):
        raise TransportError("reply is not a JSON object", http_status=http_status)
    code = lenient_int(_field(payload, "ErrCode", "err_code"))
    message = str(_field(payload, "ErrMsg", "err_msg") or "")
    retry_after = parse_retry_after(headers or {})
    if http_status == 401:
        raise AuthError("API key rejected", http_status=401, err_code=code, err_msg=message)
    if code is None and http_status == 429:
        # a rate limiter's own JSON: treated like 500069, Retry-After honoured (pixverse-api.md)
        raise ServerBusyError("rate limited (HTTP 429)", http_status=429, retry_after=retry_after)
    if code is None:
        # JSON, but not PixVerse's envelope: a proxy or gateway in front answered (a 504
        # "Endpoint request timed out"). Whether the API saw the
        # request is unknown, so it is a transport error: a submission keeps its trace id.
        raise TransportError(
            f"reply is not a PixVerse envelope: {str(dict(payload))[:120]}",
            http_status=http_status,
            retry_after=retry_after,
        )
    kwargs: dict[str, Any] = {"http_status": http_status, "err_code": code, "err_msg": message}
    if code == 0 and 200 <= http_status < 300:
        resp = _field(payload, "Resp", "resp")
        if not isinstance(resp, Mapping):
            raise TransportError("successful reply without a Resp object", http_status=http_status)
        return resp
    if code in _AUTH_CODES:
        raise AuthError(f"account problem: {message}", **kwargs)
    if code == 500090:
        raise CreditsError(f"insufficient credits: {message}", **kwargs)
    if code == 500044:
        raise SlotLimitError(f"concurrent-generation limit reached: {message}", **kwargs)
    if code in _BUSY_CODES or http_status == 429 or code == 0:
        raise ServerBusyError(f"server busy: {message}", retry_after=retry_after, **kwargs)
    if 400000 <= code < 500000 or code in {500008, 500054, 500063, 500064}:
        raise JobError(message or "request rejected", **kwargs)
    if http_status >= 500:
        raise ServerBusyError(f"server error: {message}", retry_after=retry_after, **kwargs)
    raise JobError(message or f"rejected with ErrCode {code}", **kwargs)


def lenient_int(value: Any) -> int | None:
    """An integer, or a string of ASCII digits, as a number; anything else None.

    The contract says to read `ErrCode` and `status` leniently: several clients guard against
    strings, though nobody has shown one. `true` is not a number, whatever Python thinks.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():
            return int(text)
    return None


def parse_retry_after(
    headers: Mapping[str, str], now: Callable[[], float] = time.time
) -> float | None:
    """Seconds to wait from a `Retry-After` header, or None without a readable one.

    RFC 9110 (10.2.3) allows delay-seconds or an HTTP-date; rate limiters in front of APIs
    send both. A date counts from `now` (the wall clock: the date is the server's), one in
    the past means no wait. Either way the retry policy clamps it (`max_retry_after`)."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError):
            return None  # neither form: the jittered backoff applies
        if when.tzinfo is None:  # RFC 9110: an HTTP-date is always GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


@contextmanager
def map_transport_errors(what: str) -> Iterator[None]:
    """Translate everything aiohttp/asyncio/OS can raise during a call into TransportError."""
    try:
        yield
    except PipelineError:  # already translated (an ApiError, or a DiskError of the caller's)
        raise
    except TimeoutError as exc:  # aiohttp's total timeout raises a bare TimeoutError (#7122)
        raise TransportError(f"{what}: timed out") from exc
    except aiohttp.ClientResponseError as exc:
        raise TransportError(f"{what}: {exc.message}", http_status=exc.status) from exc
    except aiohttp.ClientConnectorError as exc:  # no connection, so no request left
        raise NotSentError(f"{what}: cannot connect: {exc.os_error or exc}") from exc
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        detail = str(exc) or type(exc).__name__
        raise TransportError(f"{what}: {detail}") from exc


class PixverseClient:
    """Use as `async with PixverseClient(config) as client:`."""

    def __init__(
        self,
        config: ClientConfig,
        sleep: Sleep | None = None,
        recorder: Recorder | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`sleep` and `clock`: the retries' and the overload gate's (a test injects both)."""
        self.config = config
        self.redact = Redactor([config.api_key])  # replies quoting the key are cleaned on entry
        self._sleep = sleep
        self._recorder = recorder  # told of every API exchange that got a reply
        # one backoff for every request of this key and base URL (`pipeline.gate`)
        self.gate = OverloadGate(config.retry, sleep or anyio.sleep, clock)
        self._answered = False  # whether any request has had a reply (see `_unreachable`)
        self._session: aiohttp.ClientSession | None = None
        # which SPEAKER_PATHS entry answered; None until `speakers()` has asked
        self.speaker_path: str | None = None

    async def __aenter__(self) -> Self:
        # No default headers: the key goes only to API calls, never to a download host.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=self.config.request_timeout, connect=self.config.connect_timeout
            ),
            raise_for_status=False,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("PixverseClient used outside `async with`")
        return self._session

    def _retrier(self) -> Any:
        return (
            retrier(self.config.retry, gated=True)
            if self._sleep is None
            else retrier(self.config.retry, self._sleep, gated=True)
        )

    async def admit(self) -> Pass:
        """Wait at this client's overload gate; for a caller that must know when its request
        leaves (a paid submission writes its deadline after this), then passes the `Pass` on
        (`generate(admitted=...)`) or abandons it (`gate.abandon`)."""
        return await self.gate.admit()

    def retrying(self) -> Any:
        """A tenacity retrier with this client's policy and sleep, for a caller that retries a
        sequence of calls as one unit (the replay probe: two uploads under one trace id)."""
        return self._retrier()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        trace_id: str,
        timeout: float | None = None,
        admitted: Pass | None = None,
        **kwargs: Any,
    ) -> Any:
        """One attempt through the overload gate (`admitted`: the caller waited there
        already): the gate is told how it went."""
        entry = admitted if admitted is not None else await self.gate.admit()
        try:
            resp = await self._attempt(method, path, trace_id=trace_id, timeout=timeout, **kwargs)
        except TransportError:
            self.gate.unanswered(entry)
            raise
        except ApiError as exc:
            if paced(exc):
                self.gate.refused(entry, exc.retry_after)
            else:
                self.gate.answered(entry)
            raise
        else:
            self.gate.answered(entry)
            return resp
        finally:
            self.gate.abandon(entry)  # cancelled or never sent: a no-op once told

    async def _attempt(
        self,
        method: str,
        path: str,
        *,
        trace_id: str,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """One attempt: send, read the whole body, classify. No retries here. Each attempt is a
        debug line (`-v`): method, path, trace id, HTTP status, ErrCode, milliseconds."""
        url = self.config.base_url.rstrip("/") + API_PREFIX + path
        headers = {"API-KEY": self.config.api_key, "Ai-trace-id": trace_id}
        what = f"{method} {API_PREFIX}{path}"
        client_timeout = aiohttp.ClientTimeout(
            total=timeout or self.config.request_timeout, connect=self.config.connect_timeout
        )
        started = time.monotonic()
        try:
            with map_transport_errors(what):
                async with self.session.request(
                    method, url, headers=headers, timeout=client_timeout, **kwargs
                ) as response:
                    body = await response.read()
                    status, headers = response.status, dict(response.headers)
                    self._answered = True
                    if self._recorder is not None:  # the exchange is built only for it
                        self._record(response, body)
        except TransportError as exc:
            log.debug("%s trace=%s: no reply (%s) after %s", what, trace_id, exc, _ms(started))
            hinted = self._unreachable(exc)
            if hinted is exc:
                raise
            raise hinted from exc
        try:
            payload = json.loads(body)
        except ValueError as exc:
            log.debug("%s trace=%s -> HTTP %d, not JSON, %s", what, trace_id, status, _ms(started))
            if status == 401:  # a gateway's own refusal page: still a bad key
                raise AuthError("API key rejected", http_status=401) from exc
            if status == 429:  # a rate limiter's own page: like 500069 (pixverse-api.md)
                raise ServerBusyError(
                    f"{what}: HTTP 429, rate limited",
                    http_status=429,
                    retry_after=parse_retry_after(headers),
                ) from exc
            if status == 404:
                raise EndpointError(
                    f"{what}: HTTP 404 and no PixVerse reply: is the base URL right?",
                    http_status=404,
                ) from exc
            raise TransportError(f"{what}: reply is not JSON", http_status=status) from exc
        code = (
            lenient_int(_field(payload, "ErrCode", "err_code"))
            if isinstance(payload, dict)
            else None
        )
        log.debug(
            "%s trace=%s -> HTTP %d ErrCode %s, %s", what, trace_id, status, code, _ms(started)
        )
        # before anything quotes (and truncates) the reply: a proxy may echo the key back
        return classify_envelope(status, _redacted(payload, self.redact), headers)

    def _unreachable(self, exc: TransportError) -> TransportError:
        """A connection refused or a name not found before anything ever answered this client
        is most likely a wrong base URL (or no network): the error says where to look."""
        if self._answered or not isinstance(exc.__cause__, aiohttp.ClientConnectorError):
            return exc
        # the same class: a refused connection sent nothing, whatever the hint says
        return type(exc)(
            f"{exc.args[0]}; nothing answers at {self.config.base_url}: check"
            " PIXVERSE_BASE_URL or --base-url (and the network)"
        )

    def _record(self, response: aiohttp.ClientResponse, body: bytes) -> Exchange:
        self._answered = True
        sent = response.request_info
        exchange = Exchange(
            method=sent.method,
            path=sent.url.path,
            query=dict(sent.url.query),
            request_headers=_recordable(sent.headers),
            status=response.status,
            headers=_recordable(response.headers),
            body=body,
        )
        if self._recorder is not None:
            self._recorder(exchange)
        return exchange

    async def request_raw(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None
    ) -> Exchange:
        """One attempt with a fresh trace id and the reply NOT classified, for diagnostics that
        need the raw envelope (its casing, its HTTP status). Transport failures still raise
        TransportError."""
        url = self.config.base_url.rstrip("/") + API_PREFIX + path
        headers = {"API-KEY": self.config.api_key, "Ai-trace-id": new_trace_id()}
        with map_transport_errors(f"{method} {API_PREFIX}{path}"):
            async with self.session.request(
                method, url, headers=headers, params=params
            ) as response:
                return self._record(response, await response.read())

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """An idempotent call: a fresh trace id for every attempt, transient errors retried."""
        async for attempt in self._retrier():
            with attempt:
                return await self._request(method, path, trace_id=new_trace_id(), **kwargs)
        raise AssertionError("unreachable: tenacity re-raises")  # pragma: no cover

    async def upload(self, path: Path, container: str | None = None) -> Upload:
        """Upload a local file. `container` is what probing the bytes found ("wav", "mp4", ...):
        it names the upload (`take1.flac` holding WAV is sent as `take1.wav`, audio/wav), since
        the server judges a file by its name. The returned sha256 is of the bytes sent, so the
        caller can tell whether the file changed since it was checked."""
        filename, content_type = _upload_name(path, container)
        async for attempt in self._retrier():
            with attempt:
                # streamed from the file (a 50 MB input is never in memory whole), hashed as it
                # is read: the digest is of the bytes this attempt sent
                with _HashingReader(path) as file:
                    form = aiohttp.FormData()
                    form.add_field("file", file, filename=filename, content_type=content_type)
                    resp = await self._request(
                        "POST",
                        "/media/upload",
                        trace_id=new_trace_id(),
                        data=form,
                        timeout=self.config.transfer_timeout,
                    )
                    digest = await anyio.to_thread.run_sync(file.hexdigest)
                return Upload(_int(resp, "media_id"), str(resp.get("media_type", "")), digest)
        raise AssertionError("unreachable")  # pragma: no cover

    async def upload_bytes(
        self, data: bytes, filename: str, content_type: str, *, trace_id: str
    ) -> tuple[int, str]:
        """Upload in-memory media under the caller's trace id, ONE attempt (no retries): the
        caller owns the trace id, e.g. the replay probe re-uses one on purpose."""
        form = aiohttp.FormData()
        form.add_field("file", data, filename=filename, content_type=content_type)
        resp = await self._request(
            "POST",
            "/media/upload",
            trace_id=trace_id,
            data=form,
            timeout=self.config.transfer_timeout,
        )
        return _int(resp, "media_id"), str(resp.get("media_type", ""))

    async def generate(
        self, body: Mapping[str, Any], trace_id: str, admitted: Pass | None = None
    ) -> Submission:
        """One send of a lip-sync generation with `trace_id`; no retries here (a re-send of a
        paid request is `pipeline.submit`'s decision). `admitted`: the caller's pass through
        the overload gate (see `admit`). Raises TransportError when the outcome is unknown,
        SlotLimitError, ServerBusyError, StaleMediaError, JobError, FatalError."""
        try:
            resp = await self._request(
                "POST",
                "/video/lip_sync/generate",
                trace_id=trace_id,
                admitted=admitted,
                json=dict(body),
            )
        except JobError as exc:
            if _is_stale_media(exc, body):
                raise StaleMediaError(
                    str(exc.err_msg),
                    http_status=exc.http_status,
                    err_code=exc.err_code,
                    err_msg=exc.err_msg,
                ) from exc
            raise
        credits = resp.get("credits")
        return Submission(
            video_id=_int(resp, "video_id"),
            credits=credits if isinstance(credits, int) and not isinstance(credits, bool) else None,
        )

    async def status(self, video_id: int) -> VideoStatus:
        """The video's status; one that is missing or not a number reads -1 (not terminal)."""
        resp = await self._call("GET", f"/video/result/{video_id}")
        status = lenient_int(resp.get("status"))
        size = lenient_int(resp.get("size"))
        url = resp.get("url")
        return VideoStatus(
            video_id=video_id,
            status=-1 if status is None else status,
            url=url if isinstance(url, str) and url else None,
            size=size if size and size > 0 else None,
            created_at=_timestamp(resp.get("create_time")),
        )

    async def speakers(self) -> list[Speaker]:
        """Every TTS speaker, paged until `total`. Asks the documented `lip_sync/tts_list` path
        first and, when it is not served (a 404 that is no PixVerse envelope), the newer
        `tts_speaker` path; the path that answered is kept in `speaker_path` for the client's
        life."""
        paths = (self.speaker_path,) if self.speaker_path else tuple(SPEAKER_PATHS)
        for path in paths:
            speakers = await self._speakers_from(path)
            if speakers is not None:
                self.speaker_path = path
                return speakers
        raise EndpointError(
            f"GET {API_PREFIX}{paths[-1]}: HTTP 404 and no PixVerse reply: is the base URL right?",
            http_status=404,
        )

    async def _speakers_from(self, path: str) -> list[Speaker] | None:
        """All pages from `path`, or None when the path is not served."""
        speakers: dict[str, Speaker] = {}
        page = 1
        while True:
            resp = await self._speaker_page(path, {**SPEAKER_PATHS[path], "page_num": page})
            if resp is None:
                if page == 1:
                    return None
                raise TransportError(f"GET {API_PREFIX}{path}: page {page} answered HTTP 404")
            data = resp.get("data") or []
            if not isinstance(data, list) or not all(
                isinstance(s, Mapping) and "speaker_id" in s for s in data
            ):
                raise TransportError(f"malformed speaker list in the {path} reply")
            known = len(speakers)
            for s in data:
                extra = {k: v for k, v in s.items() if k not in ("speaker_id", "name")}
                speaker = Speaker(str(s["speaker_id"]), str(s.get("name", "")), extra)
                speakers.setdefault(speaker.speaker_id, speaker)
            total = lenient_int(resp.get("total"))
            # a page with nothing new ends it too: a server that ignores page_num would
            # otherwise be asked forever
            if total is None or len(speakers) >= total or len(speakers) == known:
                return list(speakers.values())
            page += 1

    async def _speaker_page(self, path: str, params: Mapping[str, Any]) -> Any:
        """One page (`Resp`), or None on a 404 that is no PixVerse envelope (path not served)."""
        async for attempt in self._retrier():
            with attempt:
                try:
                    return await self._request(
                        "GET", path, trace_id=new_trace_id(), params=dict(params)
                    )
                except (EndpointError, TransportError) as exc:
                    if exc.http_status == 404:
                        return None
                    raise
        raise AssertionError("unreachable: tenacity re-raises")  # pragma: no cover

    async def balance(self) -> Balance:
        resp = await self._call("GET", "/account/balance")
        return Balance(
            account_id=_int(resp, "account_id"),
            credit_monthly=_int(resp, "credit_monthly"),
            credit_package=_int(resp, "credit_package"),
        )

    @asynccontextmanager
    async def open_download(self, url: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a signed result link (absolute URL, no API key sent to the CDN).

        The body is left as sent (no automatic decompression), so its length can be checked
        against Content-Length; identity is asked for, but a CDN may gzip anyway, and then
        `Content-Encoding` says so and the caller decodes."""
        timeout = aiohttp.ClientTimeout(
            total=self.config.transfer_timeout, connect=self.config.connect_timeout
        )
        with map_transport_errors("download"):
            async with self.session.get(
                url,
                timeout=timeout,
                headers={"Accept-Encoding": "identity"},
                auto_decompress=False,  # per request since aiohttp 3.9 (aiohttp#7055)
            ) as response:
                yield response


def _ms(started: float) -> str:
    return f"{(time.monotonic() - started) * 1000:.0f} ms"


def _upload_name(path: Path, container: str | None) -> tuple[str, str]:
    """(file name, content type) for an upload: the probed container wins over the suffix."""
    kind = container if container in _MEDIA_TYPES else path.suffix.lower().lstrip(".")
    if kind not in _MEDIA_TYPES:
        return path.name, "application/octet-stream"
    return f"{path.stem}.{kind}", _MEDIA_TYPES[kind]


def _redacted(payload: Any, redact: Redactor) -> Any:
    """`payload` with every string in it (keys too) passed through `redact`."""
    if isinstance(payload, str):
        return redact(payload)
    if isinstance(payload, list):
        return [_redacted(item, redact) for item in payload]
    if isinstance(payload, dict):
        return {_redacted(k, redact): _redacted(v, redact) for k, v in payload.items()}
    return payload


def _recordable(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _UNRECORDED_HEADERS}


# Ids the client uploaded: a refused one can be uploaded again. A refused `source_video_id` is
# the user's PixVerse video, which no upload can bring back: that job fails.
_UPLOADED_ID_FIELDS = ("video_media_id", "audio_media_id")
_REFUSED_ID_FIELDS = (*_UPLOADED_ID_FIELDS, "source_video_id")


def refused_id_field(message: str | None) -> str | None:
    """The generate field whose id the server says it cannot find, or None.

    The lip-sync guide's wording is "couldn't find a matching video_media_id. Please re-upload
    your video and try again." (the same for `audio_media_id` and `source_video_id`), with a
    typographic or plain apostrophe; older replies said "no matching ...". So: a field name
    together with "matching" or "re-upload", ignoring case, never one exact phrase.
    """
    text = (message or "").lower()
    if "matching" not in text and "re-upload" not in text:
        return None
    return next((name for name in _REFUSED_ID_FIELDS if name in text), None)


def _is_stale_media(exc: JobError, body: Mapping[str, Any]) -> bool:
    """A refusal that a fresh upload of this body's media can cure."""
    field_name = refused_id_field(exc.err_msg)
    if field_name is not None:
        return field_name in _UPLOADED_ID_FIELDS and field_name in body
    # "requested data not found" names nothing: an uploaded id is the likely culprit
    return exc.err_code == 500008 and any(name in body for name in _UPLOADED_ID_FIELDS)


def _timestamp(value: Any) -> float | None:
    """An ISO-8601 time as PixVerse writes it ("2026-11-25T03:10:00Z"); None if it is not one.
    A time without a zone is taken as UTC."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _int(resp: Any, key: str) -> int:
    value = resp.get(key) if isinstance(resp, Mapping) else None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TransportError(f"reply has no integer {key!r}")
    return value
