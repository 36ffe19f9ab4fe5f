"""One error tree for the whole pipeline, branched by what the caller does next.

    PipelineError                      root; never raised itself
    ├── ManifestError                  bad manifest or usage: exit 2, nothing sent
    ├── StateError                     state file unreadable, or another run holds it: exit 3
    │   └── LockedError
    ├── DiskError                      a local file could not be written (disk full, quota,
    │                                  file too large, read-only): stop the run, exit 74
    └── ApiError                       anything that came back from (or failed to reach) the API
        ├── TransientError             retry with backoff (tenacity, full jitter, Retry-After)
        │   ├── TransportError         no envelope at all: connection, timeout, non-JSON body.
        │   │                          For a submission the outcome is *ambiguous*: re-send
        │   │                          with the same trace id.
        │   │   └── NotSentError       no connection at all: the request never left
        │   ├── ServerBusyError        an envelope said "try later" (500069, 500100, 99999,
        │   │                          HTTP 429/5xx): definitive, so a new trace id next time
        │   └── OverloadedError        not sent: the overload gate tripped (a sustained
        │                              overload); not retried, left for the next run
        ├── SlotLimitError             500044: not a failure; wait for a slot, new trace id
        ├── JobError                   this job fails, the run goes on (400xxx, content, 7/8);
        │   │                          after payment (generating, downloading) it is left
        │   │                          resumable instead, so a paid result is never dropped
        │   ├── StaleMediaError        a cached media_id the server no longer knows: re-upload
        │   └── VideoGoneError         status 6: the result was deleted; the job fails
        └── FatalError                 stop the run (exit 4)
            ├── AuthError              400012 / HTTP 401, 500020: stop at once
            ├── CreditsError           500090: stop submitting, let in-flight jobs finish
            └── EndpointError          no PixVerse API at the base URL (HTML 404): exit 2

`pipeline.client` is the single boundary that turns aiohttp/OS exceptions and error envelopes
into this tree (`classify_envelope`, `map_transport_errors`); `map_disk_errors` does the same
for writes of local files (outputs, reports), and `pipeline.state` for SQLite's "disk full".
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

# Advice for what a full or unwritable file system answers (errno(3)); every other OSError of
# a local write (EACCES, EIO, ...) stops the run just the same.
_ADVICE = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space",
    errno.EFBIG: "raise the file size limit (ulimit -f) or use another folder",
    errno.EROFS: "make the folder writable",
}


class PipelineError(Exception):
    """Root of every error the pipeline raises on purpose."""


class ManifestError(PipelineError):
    """The manifest (or a command-line value) is invalid; `problems` lists every finding."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(problems[0] if len(problems) == 1 else f"{len(problems)} problems")


class StateError(PipelineError):
    """The state file cannot be opened, read or migrated."""


class LockedError(StateError):
    """Another run holds the state file's lock."""


class DiskError(PipelineError):
    """A file of the run (a result, a report, the state file) could not be written.

    Stops the run: paying for results that cannot be saved is the worst use of credits. What
    was written before is intact, so the same command resumes once the disk is fixed."""


@contextmanager
def map_disk_errors(what: str) -> Iterator[None]:
    """Turn an OSError raised while writing local files into a one-line DiskError."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        advice = _ADVICE.get(exc.errno or 0, "fix the folder")
        raise DiskError(f"{what}: {reason}; {advice}, then run the same command again") from exc


class ApiError(PipelineError):
    """Raised by `pipeline.client`; carries what the server (or the network) said."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        err_code: int | None = None,
        err_msg: str | None = None,
        job_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.err_code = err_code
        self.err_msg = err_msg
        self.job_id = job_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        parts = [super().__str__()]
        if self.err_code is not None:
            parts.append(f"ErrCode {self.err_code}")
        if self.http_status is not None:
            parts.append(f"HTTP {self.http_status}")
        return " | ".join(parts)


class TransientError(ApiError):
    """Worth retrying after a backoff; the job is left resumable if retries run out."""


class TransportError(TransientError):
    """No usable reply: connection failure, timeout, a body that is not a JSON envelope."""


class NotSentError(TransportError):
    """No connection could be made (refused, no route, DNS): the request never left, so for a
    submission nothing can have been processed."""


class ServerBusyError(TransientError):
    """A definitive "try again later" envelope (500069, 500100, 99999, HTTP 429)."""


class OverloadedError(TransientError):
    """Not sent: the client's overload gate has seen the API refuse everything for longer
    than one call bears (`pipeline.gate`). Not retried; the job is left for the next run."""


class SlotLimitError(ApiError):
    """500044: the account's concurrent-generation limit is reached."""


class JobError(ApiError):
    """This job cannot succeed as submitted; it fails with this reason, the run goes on."""


class StaleMediaError(JobError):
    """The server does not know a media_id we cached; re-upload once, then retry."""


class VideoGoneError(JobError):
    """The API reports the generated video deleted (status 6): nothing left to download."""


class FatalError(ApiError):
    """The account cannot go on: the run stops (exit 4)."""


class AuthError(FatalError):
    """Bad or disabled key (HTTP 401, 400012) or no permission (500020)."""


class EndpointError(FatalError):
    """The base URL answers, but not as the PixVerse API: a configuration mistake, not an
    outage, so it is not retried and not reported as resumable."""


class CreditsError(FatalError):
    """500090: not enough credits. Stop submitting; in-flight generations still finish."""
