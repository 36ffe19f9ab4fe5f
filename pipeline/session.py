"""One `run` (or `demo`) as the command line lives it: an id and a start line, the batch, then
the report, `failed.yaml` and the notification, on every exit path.

`run_batch` writes the report of a run that got as far as its jobs. A run stopped before that
(a bad manifest, preflight, the output-folder probe, an unreadable state file, a signal during
the account checks) gets its report here, so the morning never reads the previous night's as
tonight's. That report goes only into an output folder that exists already (a first night's
typo creates no folders), reads the state file under its lock, and lists each job of the
manifest with its one-line problem. A run refused because another run holds the state file
writes nothing: the report there is the other run's.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from pipeline import __version__
from pipeline.client import ClientConfig, PixverseClient
from pipeline.download import check_writable
from pipeline.errors import LockedError, ManifestError, PipelineError, StateError
from pipeline.failed import FAILED_NAME
from pipeline.logs import RunContext
from pipeline.longform.run import long_rows
from pipeline.manifest import Manifest
from pipeline.notify import notify, payload
from pipeline.preflight import Checked
from pipeline.progress import ProgressSink
from pipeline.report import (
    MEANINGS,
    credits_total,
    job_rows,
    new_run_id,
    run_facts,
    write_report,
)
from pipeline.runner import ExitCode, RunOptions, RunOutcome, exit_code_for, run_batch
from pipeline.secrets import Redactor
from pipeline.state import StateStore

log = logging.getLogger("pipeline.session")

STATE_NAME = ".pixverse-batch.sqlite"


@dataclass
class RunSession:
    manifest_path: Path
    redact: Redactor
    context: RunContext  # the log lines' view of the run (its id, its jobs)
    started: float = field(default_factory=time.time)
    run_id: str = ""
    output_dir: Path | None = None
    state_path: Path | None = None
    manifest: Manifest | None = None
    report_path: Path | None = None  # once a report of this run is written
    exit_code: int | None = None
    problem: str | None = None

    def __post_init__(self) -> None:
        self.run_id = self.run_id or new_run_id(self.started)
        self.context.run_id = self.run_id

    def locate(self, manifest: Manifest | None, output_dir: Path, state: Path | None) -> None:
        self.manifest, self.output_dir = manifest, output_dir
        self.state_path = state or output_dir / STATE_NAME

    def log_start(self, concurrency: int, base_url: str, key: str) -> None:
        """The run's first line: what a nightly log needs to tell one night from the next.
        `key` is the key's fingerprint (or "not set"), never the key."""
        log.info(
            "run %s started: pixverse-batch %s, manifest %s, output %s, concurrency %d,"
            " base URL %s, key %s",
            self.run_id,
            __version__,
            self.manifest_path,
            self.output_dir,
            concurrency,
            base_url,
            key,
        )

    async def run(
        self,
        checked: Checked,
        config: ClientConfig | list[ClientConfig],
        options: RunOptions,
        progress: ProgressSink | None,
    ) -> RunOutcome:
        """Probe the output folder, lock the state file, run the batch (which reports).
        Several configs: one per API key, each its own account (`pipeline.pool`)."""
        configs = config if isinstance(config, list) else [config]
        out = options.output_dir
        try:
            out.mkdir(parents=True, exist_ok=True)
            check_writable(out)  # a result that cannot be saved must not be paid for
        except OSError as exc:
            raise ManifestError(
                [f"output folder {out}: cannot write there: {exc.strerror or exc}"]
            ) from exc
        assert self.state_path is not None
        # exit 3 if locked: nothing sent
        store = StateStore.open(self.state_path, redact=Redactor([c.api_key for c in configs]))
        self.context.lookup = store.find
        try:
            async with AsyncExitStack() as stack:
                clients = [await stack.enter_async_context(PixverseClient(c)) for c in configs]
                outcome = await run_batch(checked, store, clients, options, progress=progress)
        finally:
            self.context.lookup = None
            store.close()
        self.report_path = outcome.report_path
        self.end(int(outcome.exit_code), outcome.problem)
        return outcome

    def end(self, exit_code: int, problem: str | None) -> None:
        self.exit_code, self.problem = exit_code, problem
        log.info(
            "run %s ended: exit %d (%s)%s",
            self.run_id,
            exit_code,
            MEANINGS.get(exit_code, "?"),
            f": {problem}" if problem else "",
        )

    def stopped(self, exc: BaseException) -> None:
        """The run ends early with `exc` (a PipelineError or KeyboardInterrupt): say so in the
        log and, unless another run holds the state file, in the report."""
        if isinstance(exc, PipelineError):
            code = int(exit_code_for(exc))
            problems = exc.problems if isinstance(exc, ManifestError) else [str(exc)]
        else:
            code, problems = int(ExitCode.UNFINISHED), ["interrupted"]
        problems = [self.redact(p) for p in problems]
        summary = problems[0] if len(problems) == 1 else f"{len(problems)} problems"
        self.end(code, summary)
        if isinstance(exc, LockedError) or self.report_path is not None:
            return
        out = self.output_dir
        if out is None or not out.is_dir():
            return
        try:
            self.report_path = self._stopped_report(out, code, problems, type(exc).__name__)
        except LockedError:
            log.warning("report not written: another run holds the state file now")
        except (PipelineError, OSError) as error:
            log.warning("report not written: %s", error)

    def _stopped_report(self, out: Path, code: int, problems: list[str], kind: str) -> Path:
        assert self.state_path is not None
        store = None
        if self.state_path.exists():
            try:
                store = StateStore.open(self.state_path, redact=self.redact)
            except LockedError:
                raise
            except StateError as exc:
                log.warning("state file unreadable (%s): the report shows no job states", exc)
        try:
            rows = []
            if self.manifest is not None:
                summary = problems[0] if len(problems) == 1 else f"{len(problems)} problems"
                rows = job_rows(
                    self.manifest,
                    store,
                    run_id=self.run_id,
                    now=time.time(),
                    stopped_by=summary,
                    problems=problems,
                    # a job without a record: new, unless the state file could not be read
                    placeholder="unfinished:unknown"
                    if store is None and self.state_path.exists()
                    else "unfinished:pending",
                )
                if store is not None:  # long jobs as the state file tells them
                    refused = {r.id for r in rows if r.error_class == "ManifestError"}
                    rows = long_rows(rows, store, leave=refused)
            # nothing failed in this run: an older failed.yaml would read as tonight's
            (out / FAILED_NAME).unlink(missing_ok=True)
            return write_report(
                out,
                rows,
                {
                    **run_facts(self.run_id, self.manifest_path, out, self.started, time.time()),
                    "exit_code": code,
                    "problem": problems[0] if len(problems) == 1 else f"{len(problems)} problems",
                    "problem_class": kind,
                    "problems": problems,
                    "credits_this_run": 0,
                    "credits_total": credits_total(rows, store),
                    "failed_manifest": None,
                    "interrupted": kind == "KeyboardInterrupt",
                },
                redact=self.redact,
            )
        finally:
            if store is not None:
                store.close()

    def notify(self, url: str | None) -> None:
        """POST the summary to `url` (`--notify-url`); never raises, never changes the exit
        code."""
        if not url or self.exit_code is None:
            return
        try:
            document: dict[str, Any] = (
                json.loads(self.report_path.read_text(encoding="utf-8"))
                if self.report_path is not None
                else {"run_id": self.run_id, "exit_code": self.exit_code, "problem": self.problem}
            )
            body = payload(document, MEANINGS.get(self.exit_code, "?"))
            anyio.run(notify, url, body, self.redact)
        except (OSError, ValueError) as exc:
            log.warning("notification not sent: %s", exc)
