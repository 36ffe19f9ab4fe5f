"""The PixVerse API client: one aiohttp session, the envelope, the error boundary, retries.

This module is the single place where foreign exceptions (aiohttp, OS, JSON) and error
envelopes become `pipeline.errors`. Trace ids follow `shared/pixverse-api.md`: a fresh uuid4 for
every upload, poll, list and balance call; for a submission, the caller's `SubmissionTrace`
decides, so the id is on disk before the request leaves and is re-sent after an ambiguous
failure, rotated after a definitive one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import aiohttp
import anyio

from pipeline.errors import (
    AuthError,
    CreditsError,
    EndpointError,
    JobError,
    PipelineError,
    ServerBusyError,
    SlotLimitError,
    StaleMediaError,
    TransportError,
)
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


@dataclass(frozen=True)
class ClientConfig:
    base_url: str
    api_key: str = field(repr=False)  # never printed: not in repr, logs or errors
    request_timeout: float = 30.0  # whole request, small JSON calls
    transfer_timeout: float = 600.0  # whole upload or download
    connect_timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class Submission:
    video_id: int
    credits: int | None


@dataclass(frozen=True)
class Upload:
    media_id: int
    media_type: str  # "video" or "audio", as the server classified it ("" if it did not say)
    sha256: str  # hex digest of exactly the bytes sent


@dataclass(frozen=True)
class VideoStatus:
    video_id: int
    status: int  # 1 done, 5 generating, 6 deleted, 7 moderated, 8 failed; others not terminal
    url: str | None
    size: int | None


@dataclass(frozen=True)
class Speaker:
    speaker_id: str
    name: str


@dataclass(frozen=True)
class Balance:
    account_id: int
    credit_monthly: int
    credit_package: int

    @property
    def spendable(self) -> int:
        return self.credit_monthly + self.credit_package


class SubmissionTrace(Protocol):
    """Where a submission's trace id lives; the runner backs it with the state file."""

    def current(self) -> str: ...

    def rotate(self) -> str:
        """After a "busy" reply: save and return a new trace id, or keep the current one when
        an earlier send of it may have been processed (a busy answer can come from a proxy)."""
        ...

    def ambiguous(self) -> None:
        """Record that an attempt's outcome is unknown (no reply): the id will be re-sent."""
        ...


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
    code = _field(payload, "ErrCode", "err_code")
    message = str(_field(payload, "ErrMsg", "err_msg") or "")
    retry_after = _retry_after(headers or {})
    if http_status == 401:
        raise AuthError("API key rejected", http_status=401, err_code=code, err_msg=message)
    if not isinstance(code, int) or isinstance(code, bool):
        # JSON, but not PixVerse's envelope: a proxy or gateway in front answered (a 504
        # "Endpoint request timed out", a 429 from a rate limiter). Whether the API saw the
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


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date: rare for APIs; the jittered backoff applies instead


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
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        detail = str(exc) or type(exc).__name__
        raise TransportError(f"{what}: {detail}") from exc


class PixverseClient:
    """Use as `async with PixverseClient(config) as client:`."""

    def __init__(self, config: ClientConfig, sleep: Sleep | None = None) -> None:
        self.config = config
        self.redact = Redactor([config.api_key])  # replies quoting the key are cleaned on entry
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None

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
            retrier(self.config.retry)
            if self._sleep is None
            else retrier(self.config.retry, self._sleep)
        )

    async def _request(
        self,
        method: str,
        path: str,
        *,
        trace_id: str,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """One attempt: send, read the whole body, classify. No retries here."""
        url = self.config.base_url.rstrip("/") + API_PREFIX + path
        headers = {"API-KEY": self.config.api_key, "Ai-trace-id": trace_id}
        what = f"{method} {API_PREFIX}{path}"
        client_timeout = aiohttp.ClientTimeout(
            total=timeout or self.config.request_timeout, connect=self.config.connect_timeout
        )
        with map_transport_errors(what):
            async with self.session.request(
                method, url, headers=headers, timeout=client_timeout, **kwargs
            ) as response:
                body = await response.read()
                status, headers = response.status, dict(response.headers)
        try:
            payload = json.loads(body)
        except ValueError as exc:
            if status == 401:  # a gateway's own refusal page: still a bad key
                raise AuthError("API key rejected", http_status=401) from exc
            if status == 404:
                raise EndpointError(
                    f"{what}: HTTP 404 and no PixVerse reply: is the base URL right?",
                    http_status=404,
                ) from exc
            raise TransportError(f"{what}: reply is not JSON", http_status=status) from exc
        # before anything quotes (and truncates) the reply: a proxy may echo the key back
        return classify_envelope(status, _redacted(payload, self.redact), headers)

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
        # read once: every attempt sends these bytes, and the digest is theirs
        data = await anyio.Path(path).read_bytes()  # inputs are capped at 50 MB by preflight
        digest = await anyio.to_thread.run_sync(lambda: hashlib.sha256(data).hexdigest())
        async for attempt in self._retrier():
            with attempt:
                form = aiohttp.FormData()
                form.add_field("file", data, filename=filename, content_type=content_type)
                resp = await self._request(
                    "POST",
                    "/media/upload",
                    trace_id=new_trace_id(),
                    data=form,
                    timeout=self.config.transfer_timeout,
                )
                return Upload(_int(resp, "media_id"), str(resp.get("media_type", "")), digest)
        raise AssertionError("unreachable")  # pragma: no cover

    async def generate(self, body: Mapping[str, Any], trace: SubmissionTrace) -> Submission:
        """Submit one lip-sync generation. Raises SlotLimitError, JobError, FatalError, ..."""
        async for attempt in self._retrier():
            with attempt:
                try:
                    resp = await self._request(
                        "POST",
                        "/video/lip_sync/generate",
                        trace_id=trace.current(),
                        json=dict(body),
                    )
                except TransportError:
                    trace.ambiguous()  # it may have been processed: re-send the same trace id
                    raise
                except ServerBusyError:
                    trace.rotate()  # a definitive answer is replayed for its trace id
                    raise
                except JobError as exc:
                    if _is_stale_media(exc):
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
                    credits=credits if isinstance(credits, int) else None,
                )
        raise AssertionError("unreachable")  # pragma: no cover

    async def status(self, video_id: int) -> VideoStatus:
        resp = await self._call("GET", f"/video/result/{video_id}")
        status = resp.get("status")
        size = resp.get("size")
        url = resp.get("url")
        return VideoStatus(
            video_id=video_id,
            status=status if isinstance(status, int) else -1,
            url=url if isinstance(url, str) and url else None,
            size=size if isinstance(size, int) and size > 0 else None,
        )

    async def speakers(self) -> list[Speaker]:
        speakers: list[Speaker] = []
        page = 1
        while True:
            resp = await self._call(
                "GET", "/video/lip_sync/tts_list", params={"page_num": page, "page_size": 30}
            )
            data = resp.get("data") or []
            if not isinstance(data, list) or not all(
                isinstance(s, Mapping) and "speaker_id" in s for s in data
            ):
                raise TransportError("malformed speaker list in the tts_list reply")
            speakers.extend(Speaker(str(s["speaker_id"]), str(s.get("name", ""))) for s in data)
            total = resp.get("total")
            if not data or not isinstance(total, int) or len(speakers) >= total:
                return speakers
            page += 1

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


def _is_stale_media(exc: JobError) -> bool:
    msg = (exc.err_msg or "").lower()
    return exc.err_code == 500008 or ("media_id" in msg and "no matching" in msg)


def _int(resp: Any, key: str) -> int:
    value = resp.get(key) if isinstance(resp, Mapping) else None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TransportError(f"reply has no integer {key!r}")
    return value
