"""Log lines of one command: where they go, how they look, and what they never carry.

* `text` (the default): `2026-01-14T02:30:00+01:00 INFO message`, the local time with its UTC
  offset, so a log appended to night after night is never ambiguous. On a terminal, rich prints
  the same lines above the live progress bar.
* `json`: one object per line for journald or a log shipper, with `time`, `level`, `logger`,
  `message` and, where known, `run_id`, `job_id`, `state`, `video_id`, `attempt`,
  `error_class` and `err_code`.

Job facts are found, not passed: the runner's lines start with the job id (`"%s: ..."`), and
while a run holds its state file a `RunContext` looks the job up there, so the log calls stay
plain `log.info(...)`. The API key is removed from every line, its traceback and its JSON.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

from pipeline.errors import ApiError, PipelineError
from pipeline.secrets import Redactor
from pipeline.state import JobRecord

LOG_FORMATS = ("text", "json")
_FACTS = ("run_id", "job_id", "state", "video_id", "attempt", "error_class", "err_code")


@dataclass
class RunContext:
    """What a run tells its log lines: its id, and how to look a job up (None outside a run)."""

    run_id: str | None = None
    lookup: Callable[[str], JobRecord | None] | None = None


def local_iso(timestamp: float) -> str:
    """ISO 8601 in local time with the UTC offset: `2026-01-14T02:30:00+01:00`."""
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


class _Facts(logging.Filter):
    """Adds the run's and the job's facts to a record, before the key is redacted (the
    redactor may flatten its arguments)."""

    def __init__(self, context: RunContext) -> None:
        super().__init__()
        self._context = context

    def filter(self, record: logging.LogRecord) -> bool:
        facts: dict[str, Any] = {"run_id": self._context.run_id}
        args = record.args if isinstance(record.args, tuple) else ()
        if isinstance(record.msg, str) and record.msg.startswith("%s:") and args:
            facts.update(self._job(args[0]))
        error = next((a for a in args if isinstance(a, PipelineError)), None)
        if error is None and record.exc_info and isinstance(record.exc_info[1], PipelineError):
            error = record.exc_info[1]
        if error is not None:
            facts["error_class"] = type(error).__name__
            if isinstance(error, ApiError) and error.err_code is not None:
                facts["err_code"] = error.err_code
        record.pixverse_facts = {k: v for k, v in facts.items() if v is not None}
        return True

    def _job(self, job_id: object) -> dict[str, Any]:
        lookup = self._context.lookup
        if not isinstance(job_id, str) or lookup is None:
            return {}
        try:
            job = lookup(job_id)
        except sqlite3.Error:  # another thread, or a closed store: the line goes without
            return {}
        if job is None:
            return {}
        facts: dict[str, Any] = {"job_id": job.id, "state": job.state.value}
        facts["video_id"], facts["attempt"] = job.video_id, job.attempts
        if job.error_class:  # what made the job's current error, if the line is about it
            facts["error_class"], facts["err_code"] = job.error_class, job.err_code
        return facts


class _RedactKey(logging.Filter):
    """Belt and braces: no log line (nor its traceback) ever carries the API key, whatever a
    library prints."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self._redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info:
            # formatted here, once, so the handler prints the cleaned text (`exc_text`)
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_text, record.exc_info = self._redact(text), None
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return local_iso(record.created)


class JsonFormatter(logging.Formatter):
    """One JSON object a line; the whole line passes the redactor once more."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": local_iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        facts = getattr(record, "pixverse_facts", {})
        event.update({k: facts[k] for k in _FACTS if k in facts})
        if record.exc_text:  # set, and redacted, by _RedactKey
            event["traceback"] = record.exc_text
        return self._redact(json.dumps(event, ensure_ascii=False))


@contextmanager
def logging_to_stderr(
    level: int,
    redact: Redactor,
    *,
    log_format: str = "text",
    console: Console | None = None,
    context: RunContext | None = None,
) -> Iterator[RunContext]:
    """The package's log lines go to stderr for the length of one command, then the logger is
    left as it was found (the CLI is also called in-process, by tests and embedders)."""
    context = context or RunContext()
    handler: logging.Handler
    if log_format == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter(redact))
    elif console is not None:
        handler = RichHandler(console=console, show_path=False, log_time_format=_rich_time)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(TextFormatter())
    handler.addFilter(_Facts(context))
    handler.addFilter(_RedactKey(redact))
    logger = logging.getLogger("pipeline")
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield context
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _rich_time(moment: datetime) -> Text:
    """The date too, but narrow: a terminal has less room than a log file."""
    return Text(moment.astimezone().strftime("%Y-%m-%d %H:%M:%S"))
