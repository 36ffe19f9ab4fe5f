"""The PixVerse reply envelope, the simulator's ErrCodes, and which HTTP status each one gets.

Every JSON reply is `{"ErrCode": int, "ErrMsg": str, "Resp": object | null}`. PixVerse does not
document which HTTP status goes with which ErrCode, so this mapping is the simulator's decision
(pixverse-api.md, "Transport"):

- 0 (success) ........................................ HTTP 200
- 400012 (invalid account) ........................... HTTP 401
- 400011, 400013, 400017 (bad request) ............... HTTP 400
- 500008, 500020, 500044, 500090 (business refusals) . HTTP 200
- 500069, 500100, 99999 (server trouble) ............. HTTP 500, with the lower-case keys
  `err_code` / `err_msg` / `resp` when `SimConfig.lowercase_envelope_on_500` is on, as the image
  upload page of the docs shows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

SUCCESS = 0
PARAM_EMPTY = 400011
INVALID_ACCOUNT = 400012
PARAM_TYPE = 400013
PARAM_INVALID = 400017
NOT_FOUND = 500008
NO_PERMISSION = 500020
INPUT_MODERATED = 500054
CONCURRENCY_LIMIT = 500044
OVERLOADED = 500069
INSUFFICIENT_BALANCE = 500090
DATABASE_ERROR = 500100
UNKNOWN = 99999

_HTTP_STATUS: dict[int, int] = {
    SUCCESS: 200,
    INVALID_ACCOUNT: 401,
    PARAM_EMPTY: 400,
    PARAM_TYPE: 400,
    PARAM_INVALID: 400,
    NOT_FOUND: 200,
    NO_PERMISSION: 200,
    INPUT_MODERATED: 200,
    CONCURRENCY_LIMIT: 200,
    INSUFFICIENT_BALANCE: 200,
    OVERLOADED: 500,
    DATABASE_ERROR: 500,
    UNKNOWN: 500,
}


def http_status_for(err_code: int) -> int:
    """The HTTP status the simulated gateway sends with `err_code`."""
    return _HTTP_STATUS.get(err_code, 500)


class ApiError(Exception):
    """A refusal a handler raises; the gateway turns it into an enveloped reply."""

    def __init__(self, err_code: int, err_msg: str) -> None:
        super().__init__(f"{err_code}: {err_msg}")
        self.err_code = err_code
        self.err_msg = err_msg


@dataclass(frozen=True)
class Reply:
    """A finished reply as bytes, so the reply cache can replay it byte for byte."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    err_code: int | None = None  # None when the body is not an envelope (an HTML page)

    def to_response(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=self.body,
            content_type=self.content_type,
            headers=self.headers,
        )


def envelope(
    err_code: int,
    err_msg: str,
    resp: Any = None,
    *,
    lowercase_on_500: bool = True,
    status: int | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """Build the enveloped reply for `err_code`, at its mapped HTTP status unless `status`."""
    http_status = http_status_for(err_code) if status is None else status
    keys = ("ErrCode", "ErrMsg", "Resp")
    if http_status == 500 and lowercase_on_500:
        keys = ("err_code", "err_msg", "resp")
    payload = dict(zip(keys, (err_code, err_msg, resp), strict=True))
    return Reply(
        status=http_status,
        body=json.dumps(payload).encode(),
        headers=dict(headers or {}),
        err_code=err_code,
    )


def success(resp: Any) -> Reply:
    return envelope(SUCCESS, "success", resp)
