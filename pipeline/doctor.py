"""`pixverse-batch doctor`: what this key's gateway really does, checked once, for free.

The contract leaves several things [decided] that `run` relies on: the key is accepted, the
speakers can be listed, the gateway replays the first reply for a re-used trace id (the only
safe retry of a paid submission), and the error envelope is readable. Doctor checks each one
against the real account and says `ok`, `warn` or `FAIL`, plus the balance and the clock offset
from the server's `Date` header. It never submits a generation: it reads the balance, lists the
speakers, uploads two tiny WAVs (the replay probe; uploads are free) and asks for the status of
a video id that cannot exist (the envelope of a free error).

Every exchange is kept on a `Tape`; `save_recordings` writes them as JSON files (without the
API key) so a user can share what their account really answers.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.client import API_PREFIX, ClientConfig, Exchange, PixverseClient, classify_envelope
from pipeline.errors import ApiError, AuthError, JobError, TransientError, TransportError
from pipeline.replay import probe_replay

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"
CLOCK_TOLERANCE = 5.0  # seconds; `Date` has 1 s resolution and the reply takes a while
# 18 digits, the widest id PixVerse issues; all nines is far beyond any id seen so far.
UNKNOWN_VIDEO_ID = 999_999_999_999_999_999
NO_REPLAY_ADVICE = (
    "run will not re-send a submission whose reply was lost; it parks it as unconfirmed"
    " (exit 75) until you check the PixVerse console and use --redo ID"
)


@dataclass(frozen=True)
class Check:
    name: str  # key, balance, speakers, replay, envelope, clock
    verdict: str  # ok, warn, FAIL, or skip (not checked: the key was refused)
    detail: str  # one human line
    required: bool  # `run` relies on it: FAIL or skip makes doctor exit 4
    advice: str = ""  # what to do, or what `run` will do about it
    data: Mapping[str, Any] = field(default_factory=dict)  # machine-readable, for --json


@dataclass(frozen=True)
class Diagnosis:
    checks: tuple[Check, ...]

    @property
    def healthy(self) -> bool:
        """Everything `run` relies on holds (warnings allowed)."""
        return all(c.verdict in (OK, WARN) for c in self.checks if c.required)

    def lines(self) -> list[str]:
        out = []
        for c in self.checks:
            out.append(f"{c.verdict:<5} {c.name:<9} {c.detail}")
            if c.advice:
                out.append(f"{'':<15} {c.advice}")
        if self.healthy:
            out.append("doctor: everything run relies on holds")
        else:
            failed = [c.name for c in self.checks if c.required and c.verdict in (FAIL, SKIP)]
            out.append(f"doctor: run cannot rely on: {', '.join(failed)}")
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "checks": {
                c.name: {
                    "verdict": c.verdict,
                    "detail": c.detail,
                    "required": c.required,
                    **({"advice": c.advice} if c.advice else {}),
                    **c.data,
                }
                for c in self.checks
            },
        }


@dataclass(frozen=True)
class Recorded:
    exchange: Exchange
    at: float  # local wall clock (epoch seconds) when the reply was read


class Tape:
    """The client's recorder: every exchange, stamped with the local clock."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.entries: list[Recorded] = []

    def __call__(self, exchange: Exchange) -> None:
        self.entries.append(Recorded(exchange, self._clock()))


async def run_doctor(
    config: ClientConfig, *, clock: Callable[[], float] = time.time
) -> tuple[Diagnosis, list[Recorded]]:
    """Run every check with one client; return the diagnosis and every exchange made."""
    tape = Tape(clock)
    async with PixverseClient(config, recorder=tape) as client:
        diagnosis = await diagnose(client, tape)
    return diagnosis, tape.entries


async def diagnose(client: PixverseClient, tape: Tape) -> Diagnosis:
    """The checks, in order; an ApiError becomes a verdict, never an exception."""
    balance = await _balance(client)
    if balance.verdict == FAIL:  # the key was refused: every other call would be too
        key = Check("key", FAIL, balance.detail, required=True)
        skipped = [
            Check(name, SKIP, "not checked: the key was refused", required=True)
            for name in ("speakers", "replay", "envelope")
        ]
        return Diagnosis((key, *skipped))
    speakers = await _speakers(client)
    if balance.verdict == OK or speakers.verdict != FAIL:
        key = Check("key", OK, "accepted", required=True)
    else:
        key = Check("key", FAIL, f"not confirmed: {speakers.detail}", required=True)
    checks = [key, balance, speakers, await _replay(client), await _envelope(client)]
    checks.append(_clock(tape.entries))
    return Diagnosis(tuple(checks))


async def _balance(client: PixverseClient) -> Check:
    try:
        balance = await client.balance()
    except AuthError as exc:
        return Check("balance", FAIL, f"the key was refused: {exc}", required=False)
    except ApiError as exc:
        return Check("balance", WARN, f"could not read the balance: {exc}", required=False)
    data = {"account_id": balance.account_id, "spendable": balance.spendable}
    detail = (
        f"{balance.spendable} spendable credits ({balance.credit_monthly} monthly +"
        f" {balance.credit_package} package), account {balance.account_id}"
    )
    verdict = OK if balance.spendable > 0 else WARN
    return Check("balance", verdict, detail, required=False, data=data)


async def _speakers(client: PixverseClient) -> Check:
    try:
        speakers = await client.speakers()
    except ApiError as exc:
        return Check("speakers", FAIL, f"could not list the speakers: {exc}", required=True)
    # which list answered: the documented lip_sync/tts_list, or the newer tts_speaker
    path = client.speaker_path
    detail = f"{len(speakers)} speakers" + (f" from {API_PREFIX}{path}" if path else "")
    if not speakers:
        detail += ": the list is empty, so every TTS job would be refused"
    data = {"count": len(speakers), "path": path}
    return Check("speakers", OK if speakers else WARN, detail, required=True, data=data)


async def _replay(client: PixverseClient) -> Check:
    try:
        verdict = await probe_replay(client)
    except TransientError as exc:
        detail = f"the probe could not complete: {exc}"
        advice = "nothing is known either way; run doctor again"
        return Check("replay", FAIL, detail, required=True, advice=advice, data={"replays": None})
    except ApiError as exc:
        return Check("replay", FAIL, f"the probe failed: {exc}", required=True)
    if verdict.replays:
        return Check("replay", OK, verdict.detail, required=True, data={"replays": True})
    return Check(
        "replay",
        FAIL,
        verdict.detail,
        required=True,
        advice=NO_REPLAY_ADVICE,
        data={"replays": False},
    )


async def _envelope(client: PixverseClient) -> Check:
    """The error envelope of a free mistake: the status of a video id that cannot exist."""
    path = f"/video/result/{UNKNOWN_VIDEO_ID}"
    try:
        async for attempt in client.retrying():
            with attempt:
                return _judge_envelope(await client.request_raw("GET", path))
    except ApiError as exc:
        return Check("envelope", FAIL, f"no readable envelope: {exc}", required=True)
    raise AssertionError("unreachable: tenacity re-raises")  # pragma: no cover


def _judge_envelope(exchange: Exchange) -> Check:
    """Judge one reply; raise TransientError when it is worth another try."""
    status = exchange.status
    try:
        payload = json.loads(exchange.body)
    except ValueError:
        if status in (401, 404):
            detail = f"HTTP {status} without a JSON reply"
            return Check("envelope", FAIL, detail, required=True)
        raise TransportError("reply is not JSON", http_status=status) from None
    casing = _casing(payload)
    data: dict[str, Any] = {"http_status": status, "casing": casing}
    seen = f"HTTP {status}, keys {casing}"
    try:
        classify_envelope(status, payload, exchange.headers)
    except JobError as exc:
        data["err_code"] = exc.err_code
        if exc.err_code == 500008:
            detail = f"{seen}, ErrCode 500008 for an unknown video id, as expected"
            return Check("envelope", OK, detail, required=True, data=data)
        detail = f"{seen}, ErrCode {exc.err_code} for an unknown video id (expected 500008)"
        return Check("envelope", WARN, detail, required=True, data=data)
    except TransientError:
        raise
    except ApiError as exc:
        data["err_code"] = exc.err_code
        return Check("envelope", FAIL, f"{seen}: {exc}", required=True, data=data)
    detail = f"{seen}: an unknown video id was answered as a success"
    return Check("envelope", WARN, detail, required=True, data=data)


def _casing(payload: Any) -> str:
    if isinstance(payload, Mapping) and "ErrCode" in payload:
        return "ErrCode/ErrMsg/Resp"
    if isinstance(payload, Mapping) and "err_code" in payload:
        return "err_code/err_msg/resp"
    return "neither ErrCode nor err_code"


def _clock(entries: Iterable[Recorded]) -> Check:
    """The local clock against the server's `Date` headers (the median, over every reply)."""
    offsets = []
    for entry in entries:
        date = _header(entry.exchange.headers, "Date")
        try:
            server = parsedate_to_datetime(date).timestamp() if date else None
        except (TypeError, ValueError):
            server = None
        if server is not None:
            # `Date` is truncated to the second: the server's time was half a second later
            offsets.append(server + 0.5 - entry.at)
    if not offsets:
        return Check("clock", WARN, "no reply carried a Date header", required=False)
    offset = statistics.median(offsets)
    side = "ahead of" if offset > 0 else "behind"
    detail = f"the server's clock is {abs(offset):.1f} s {side} this machine's (Date header)"
    if abs(offset) <= CLOCK_TOLERANCE:
        return Check("clock", OK, detail, required=False, data={"offset_seconds": offset})
    advice = "set this machine's clock (NTP): times in logs and reports will not match PixVerse's"
    return Check(
        "clock", WARN, detail, required=False, advice=advice, data={"offset_seconds": offset}
    )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


def recording(entry: Recorded, secret: str) -> dict[str, Any]:
    """One exchange as the JSON object of a recording file; `secret` is redacted anywhere."""
    exchange = entry.exchange
    text = exchange.body.decode("utf-8", errors="replace")
    try:
        body, kind = json.loads(text), "json"
    except ValueError:
        body, kind = text, "text"
    record = {
        "source": f"pixverse-batch {__version__} doctor",
        "recorded_at": datetime.fromtimestamp(entry.at, UTC).isoformat(timespec="seconds"),
        "request": {
            "method": exchange.method,
            "path": exchange.path,
            "query": exchange.query,
            "headers": exchange.request_headers,
        },
        "response": {
            "status": exchange.status,
            "headers": exchange.headers,
            "body_kind": kind,
            "body": body,
        },
    }
    if secret and secret in json.dumps(record):  # e.g. a server echoing the key in a message
        record = json.loads(json.dumps(record).replace(secret, "***"))
    return record


def save_recordings(entries: Iterable[Recorded], folder: Path, secret: str) -> list[Path]:
    """Write one JSON file per exchange into `folder` (created), named by order, method, path."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for number, entry in enumerate(entries, 1):
        path = entry.exchange.path.removeprefix(API_PREFIX)
        slug = re.sub(r"[^A-Za-z0-9]+", "-", path).strip("-")
        target = folder / f"{number:02d}-{entry.exchange.method}-{slug}.json"
        text = json.dumps(recording(entry, secret), indent=2, ensure_ascii=False) + "\n"
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written
