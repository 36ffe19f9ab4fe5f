"""The layers every request passes before a handler: recording, faults, auth, trace id, cache.

For an API request, in this order:

1. the request is recorded in the ledger, and due generations are settled;
2. an injected fault (see `faults`) may answer at once: never cached;
3. a missing or unknown `API-KEY` gets HTTP 401 / 400012: not cached (there is no account
   to cache it for);
4. a missing `Ai-trace-id` gets 400011: not cached (there is no trace id to key it by);
5. a generate request may be marked to have its reply dropped (`drop_generate_replies`
   counts every generate that got this far, replays and refusals included);
6. a reply cached for (API key, trace id) is replayed, whatever the endpoint;
7. otherwise the handler runs and its reply, success or refusal, is cached, which includes
   the reply of a generate whose connection is then dropped.

So the cache stores every enveloped reply the gateway produced for an authenticated request
with a trace id, and nothing the injected transport faults produced.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from pipeline.simulator.envelope import (
    INVALID_ACCOUNT,
    PARAM_EMPTY,
    ApiError,
    Reply,
    envelope,
)
from pipeline.simulator.faults import take_drop, take_fault
from pipeline.simulator.ledger import RequestRecord
from pipeline.simulator.state import STATE

API_KEY_HEADER = "API-KEY"
TRACE_HEADER = "Ai-trace-id"  # aiohttp's header lookup is case-insensitive

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RecordedHandler = Callable[[web.Request, RequestRecord], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Call:
    """An authenticated API call: who made it, under which trace id."""

    api_key: str
    trace_id: str


ApiHandler = Callable[[web.Request, Call], Awaitable[Reply]]


def recorded(handler: RecordedHandler) -> Handler:
    """Record every request in the ledger (at arrival) and settle due generations first."""

    async def recording(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        state.backend.settle()
        record = RequestRecord(
            method=request.method,
            path=request.path,
            trace_id=request.headers.get(TRACE_HEADER),
            http_status=None,
            err_code=None,
            at=state.clock(),
        )
        state.ledger.requests.append(record)
        try:
            response = await handler(request, record)
        except web.HTTPException as exc:
            record.http_status = exc.status
            raise
        except Exception:
            record.http_status = 500
            raise
        if record.fault != "drop":
            record.http_status = response.status
        return response

    return recording


def api(handler: ApiHandler, *, droppable: bool = False) -> Handler:
    """Wrap an API handler in the gateway; `droppable` marks the generate endpoint."""

    async def gateway(request: web.Request, record: RequestRecord) -> web.StreamResponse:
        state = request.app[STATE]
        config = state.config
        fault = take_fault(config)
        if fault is not None:
            record.fault, reply = fault
            return _send(record, reply)
        api_key = request.headers.get(API_KEY_HEADER)
        if api_key is None or api_key not in config.api_keys:
            return _send(record, envelope(INVALID_ACCOUNT, "invalid API-KEY"))
        record.account_id = state.backend.account(api_key).account_id
        trace_id = (record.trace_id or "").strip()
        if not trace_id:
            return _send(record, envelope(PARAM_EMPTY, f"{TRACE_HEADER} header is required"))
        drop = droppable and take_drop(config)
        ttl = config.real_seconds(config.reply_cache_seconds)
        cached = state.replies.get(api_key, trace_id, ttl) if config.reply_cache else None
        if cached is not None:
            record.replayed = True
            reply = cached
        else:
            try:
                reply = await handler(request, Call(api_key, trace_id))
            except ApiError as exc:
                reply = envelope(
                    exc.err_code,
                    exc.err_msg,
                    lowercase_on_500=config.lowercase_envelope_on_500,
                )
            if config.reply_cache:
                state.replies.put(api_key, trace_id, reply, ttl)
        if drop:
            return _drop(request, record, reply)
        return _send(record, reply)

    return recorded(gateway)


def _send(record: RequestRecord, reply: Reply) -> web.Response:
    record.err_code = reply.err_code
    return reply.to_response()


def _drop(request: web.Request, record: RequestRecord, reply: Reply) -> web.Response:
    """Close the connection instead of replying: the client cannot tell what happened.

    aiohttp then fails to write the returned response to the closed transport, which it
    treats as a client disconnect.
    """
    record.fault = "drop"
    if request.transport is not None:
        request.transport.close()
    return reply.to_response()
