"""`--notify-url`: the run's summary POSTed as JSON when the run ends (a Slack-style webhook).

The body is report.json without its per-job rows, plus `text` (the line a chat shows) and the
failed jobs' ids and errors. A notification is a courtesy: it is tried a few times with a short
backoff, every failure is logged, and it never changes the run's exit code. The API key never
reaches it (the body passes the redactor), and the URL is logged by host only, since a
webhook's path is often its secret.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import anyio

from pipeline.retry import Sleep
from pipeline.secrets import Redactor

log = logging.getLogger("pipeline.notify")

ATTEMPTS = 3
FIRST_WAIT = 1.0  # seconds before the second try; doubled before the third
TIMEOUT = 10.0  # seconds each try may take
MAX_FAILED_LISTED = 20


def payload(report: Mapping[str, Any], meaning: str) -> dict[str, Any]:
    """The notification body for `report` (report.json's document); `meaning` says what the
    exit code means, in words."""
    body = {k: v for k, v in report.items() if k != "jobs"}
    jobs = report.get("jobs") or []
    failed = [
        {"id": job.get("id"), "error": job.get("error")}
        for job in jobs
        if job.get("state") in ("failed", "suspect")  # a suspect result wants a look too
    ]
    body["failed_jobs"] = failed[:MAX_FAILED_LISTED]
    counts = report.get("summary") or {}
    text = (
        f"pixverse-batch run {report.get('run_id')}: exit {report.get('exit_code')} ({meaning});"
        f" {counts.get('done', 0)}/{counts.get('jobs', 0)} done, {counts.get('failed', 0)} failed,"
        f" {counts.get('unfinished', 0)} unfinished; {report.get('credits_this_run', 0)} credits"
        " this run"
    )
    if counts.get("suspect"):
        text += f"; {counts['suspect']} suspect results"
    if report.get("problem"):
        text += f"; {report['problem']}"
    for key in report.get("keys") or []:  # several keys: one retired is news even at exit 0
        if isinstance(key, Mapping) and key.get("retired"):
            text += f"; key {key.get('key_fp')} retired: {key['retired']}"
    body["text"] = text
    return body


async def notify(
    url: str,
    body: Mapping[str, Any],
    redact: Redactor,
    *,
    attempts: int = ATTEMPTS,
    first_wait: float | None = None,
    timeout: float = TIMEOUT,
    sleep: Sleep = anyio.sleep,
) -> bool:
    """POST `body` to `url`; True once a 2xx came back. Never raises for a failed delivery.
    `first_wait` defaults to FIRST_WAIT, read at call time."""
    first_wait = FIRST_WAIT if first_wait is None else first_wait
    data = redact(json.dumps(body, ensure_ascii=False)).encode()
    host = urlsplit(url).hostname or "?"
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    for attempt in range(1, attempts + 1):
        try:
            async with (
                aiohttp.ClientSession(timeout=client_timeout) as session,
                session.post(
                    url, data=data, headers={"Content-Type": "application/json"}
                ) as response,
            ):
                await response.read()
                if 200 <= response.status < 300:
                    log.info("notified %s (HTTP %d)", host, response.status)
                    return True
                problem = f"HTTP {response.status}"
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            problem = (str(exc) or type(exc).__name__).replace(url, host)
        log.warning(
            "notification to %s failed (try %d of %d): %s", host, attempt, attempts, problem
        )
        if attempt < attempts:
            await sleep(first_wait * 2 ** (attempt - 1))
    return False
