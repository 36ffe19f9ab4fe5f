"""The command line: parse options, call one library function, map errors to exit codes.

Examples:
  pixverse-batch validate pipeline/examples/example.yaml
  pixverse-batch init --video 'media/{name}.mp4' --audio 'dubs/{name}_{lang}.wav' > dubs.yaml
  pixverse-batch convert jobs.csv dubs.yaml      # CSV <-> YAML (or JSON), by the extensions
  PIXVERSE_API_KEY=... pixverse-batch run dubs.yaml --out out/dubs
  pixverse-batch status --out out/dubs
  pixverse-batch report out/dubs      # out/dubs/report.html again, from the state file
  pixverse-batch sim --port 8787      # then: --base-url http://127.0.0.1:8787 --api-key sim-key
  pixverse-batch demo                 # the example manifest against the bundled simulator
  PIXVERSE_API_KEY=... pixverse-batch doctor    # once per key: what run relies on, checked
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
from rich.console import Console

from pipeline import __version__
from pipeline.client import (
    DEFAULT_BASE_URL,
    ClientConfig,
    PixverseClient,
    Speaker,
    key_fingerprint,
)
from pipeline.documents import output_dir_of
from pipeline.errors import ApiError, DiskError, ManifestError, PipelineError, StateError
from pipeline.examples import EXAMPLE_MANIFEST
from pipeline.jobstate import JobState
from pipeline.keys import api_keys, keys_to_hide
from pipeline.logs import LOG_FORMATS, logging_to_stderr
from pipeline.longform.run import parent_of, status_rows
from pipeline.manifest import Manifest, load_manifest
from pipeline.outputs import SEGMENT_MARK
from pipeline.preflight import Checked, load_all, preflight, select
from pipeline.preview import forecast, remaining_credits, render
from pipeline.progress import LiveProgress
from pipeline.report import ReportRow, build_rows, summary_counts, summary_line
from pipeline.runner import ExitCode, RunOptions, exit_code_for
from pipeline.secrets import Redactor
from pipeline.session import STATE_NAME, RunSession
from pipeline.speakers import SpeakerBook, resolve_with
from pipeline.speakers import lines as speaker_lines
from pipeline.state import JobRecord, LongRecord, StateStore
from pipeline.submit import describe_wait, iso, set_aside_pending, unanswered_send

log = logging.getLogger("pipeline.cli")

# stdout was closed early (`status | head -1`): what a shell reports for a writer killed by
# SIGPIPE (128 + 13), as `git log | head` gives; quietly, without a traceback
EXIT_BROKEN_PIPE = 141

EPILOG = """\
examples:
  pixverse-batch validate dubs.yaml                  # checks everything, sends nothing
  pixverse-batch init --video 'media/{name}.mp4' --audio 'dubs/{name}_{lang}.wav' > dubs.yaml
  PIXVERSE_API_KEY=... pixverse-batch run dubs.yaml --out out/dubs
  pixverse-batch status --out out/dubs               # from the state file, offline
  pixverse-batch report out/dubs                     # report.html again, offline
  pixverse-batch demo                                # the example against the simulator
  PIXVERSE_API_KEY=... pixverse-batch doctor         # once per key: what run relies on

exit codes: 0 all done | 1 some jobs failed, the rest done | 2 bad manifest or usage |
3 state file locked or unreadable | 4 account problem (key, permission, credits; for
doctor: something run relies on does not hold) |
74 a result, report or the state file could not be written (disk full, read-only) |
75 interrupted or unfinished: run the same command again to resume |
141 stdout closed early (status | head)
status exits like run: 0 all done, 1 some failed, 75 some unfinished
report exits 0 (page written), 2 (no such folder, nothing to report), 3, 74
-q, -v and --log-format may come before or after the command
environment: PIXVERSE_API_KEY (required for run/speakers/balance/doctor), PIXVERSE_BASE_URL,
PIXVERSE_API_KEYS (several keys, comma-separated: one account each, --concurrency per key)
nightly runs (cron, systemd, what each exit code asks of you): docs/nightly.md
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; every option that has a default says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, False, [], argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def _add_common_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """-q, -v and --log-format, accepted before the command and after it. The subcommand's
    copies default to SUPPRESS, so they never overwrite what was given before the command."""

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default(False),
        help="only warnings and errors",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="debug lines, with every API request (method, path, trace id, ErrCode, time)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=default("text"),
        help="log lines as text (the default; ISO 8601 times) or json (one object a line,"
        " for journald)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixverse-batch",
        description="Lip-sync videos in bulk through the PixVerse API, resumably.",
        epilog=EPILOG,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_common_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        child = sub.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter)
        _add_common_options(child, top=False)
        return child

    run = command("run", "run a manifest (resumes a previous run of the same output)")
    run.add_argument("manifest", type=Path, help="the manifest (YAML)")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print what the run would do with each job and what it would cost; sends"
        " nothing and changes nothing",
    )
    _add_run_options(run)
    _add_api_options(run)

    validate = command(
        "validate",
        "check a manifest and its media; sends nothing. With a state file, estimates what is"
        " left to pay for",
    )
    validate.add_argument("manifest", type=Path, help="the manifest (YAML)")
    validate.add_argument(
        "--out", type=Path, help="the output folder whose state file says what is done"
    )
    validate.add_argument(
        "--state", type=Path, help="the state file (default: OUT/" + STATE_NAME + ")"
    )
    validate.add_argument(
        "--online",
        action="store_true",
        help="also ask the account (read-only: the speaker list and the balance): speakers by"
        " name resolved, unknown ones refused, the balance set against the estimate",
    )
    _add_json_option(validate)
    _add_api_options(validate)

    init = command(
        "init",
        "write a manifest pairing every video with every dub of the same {name} (ids"
        " {name}-{lang}); says on stderr what it could not pair",
    )
    init.add_argument("--video", required=True, metavar="PATTERN", help="e.g. 'media/{name}.mp4'")
    init.add_argument(
        "--audio", required=True, metavar="PATTERN", help="e.g. 'dubs/{name}_{lang}.wav'"
    )
    init.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="write it to FILE (.yaml, .json or .csv; never over a file) instead of stdout",
    )
    init.add_argument(
        "--output-pattern",
        metavar="PATTERN",
        help="the manifest's output_pattern, e.g. '{lang}/{name}.mp4'",
    )
    convert = command(
        "convert", "write a manifest again as CSV, YAML or JSON (by the names' extensions)"
    )
    convert.add_argument("source", type=Path, help="the manifest to read")
    convert.add_argument("target", type=Path, help="the file to write (never over a file)")

    status = command("status", "job states from the state file; sends nothing")
    status.add_argument("manifest", type=Path, nargs="?", help="find the output folder from it")
    status.add_argument("--out", type=Path, help="the output folder")
    status.add_argument(
        "--state", type=Path, help="the state file (default: OUT/" + STATE_NAME + ")"
    )
    _add_json_option(status)

    report = command(
        "report",
        "write OUT/report.html again from the state file (offline, no key): a card per job,"
        " thumbnails, play and compare",
    )
    report.add_argument("out", type=Path, help="the output folder")
    report.add_argument(
        "--state", type=Path, help="the state file (default: OUT/" + STATE_NAME + ")"
    )
    report.add_argument(
        "--manifest",
        type=Path,
        help="the manifest whose jobs to show (default: the one the last report names)",
    )

    for name, text in (
        ("speakers", "list the TTS speakers of the account"),
        ("balance", "show the account's credits"),
    ):
        child = command(name, text)
        _add_api_options(child)
        _add_json_option(child)

    doctor = command(
        "doctor", "check what run relies on (key, speakers, trace-id replay); no generation"
    )
    _add_api_options(doctor)
    _add_json_option(doctor)
    doctor.add_argument(
        "--record", type=Path, metavar="DIR", help="save every request and reply as JSON in DIR"
    )

    sim = command("sim", "serve the bundled PixVerse simulator")
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sim.add_argument("--port", type=int, default=8787, help="port to listen on")
    sim.add_argument("--api-key", default="sim-key", help="the key the simulator accepts")
    sim.add_argument(
        "--limit", type=_positive_int, default=5, help="concurrent generations per key"
    )
    sim.add_argument(
        "--generation-seconds",
        type=_positive_float,
        default=20.0,
        help="sim seconds a generation takes",
    )
    sim.add_argument(
        "--time-scale", type=_positive_float, default=0.05, help="real seconds per sim second"
    )
    sim.add_argument(
        "--fail-probability", type=_probability, default=0.0, help="share ending in status 8"
    )
    sim.add_argument(
        "--credits", type=_positive_int, default=10_000, help="credits each key starts with"
    )
    sim.add_argument(
        "--no-replay",
        action="store_true",
        help="do not replay the first reply for a re-used trace id (a gateway without dedup)",
    )
    sim.add_argument(
        "--generate-reply-seconds",
        type=_non_negative_float,
        default=0.0,
        help="sim seconds a generate request takes after its generation started; a re-send"
        " of its trace id meanwhile is treated as new (default 0)",
    )

    demo = command("demo", "run the example manifest against an in-process simulator")
    demo.add_argument(
        "--manifest",
        type=Path,
        default=EXAMPLE_MANIFEST,
        help="the manifest (default: the example shipped with the package)",
    )
    _add_run_options(demo, poll_interval=0.2, out="out/demo")  # demo generations take 0.4 s
    return parser


def _add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def _add_run_options(
    parser: argparse.ArgumentParser, poll_interval: float = 5.0, out: str | None = None
) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(out) if out else None,
        help="output folder (overrides output_dir; default: output_dir, else out/ next to the"
        " manifest)"
        if out is None
        else "output folder",
    )
    parser.add_argument("--state", type=Path, help="state file (default: OUT/" + STATE_NAME + ")")
    parser.add_argument("--concurrency", type=_positive_int, default=5, help="generation slots")
    parser.add_argument(
        "--poll-interval", type=_positive_float, default=poll_interval, help="seconds"
    )
    parser.add_argument(
        "--max-attempts",
        type=_positive_int,
        default=3,
        help="tries per job when a generation ends in status 8",
    )
    parser.add_argument(
        "--max-wait",
        type=_positive_float,
        default=1800.0,
        help="seconds a generation may stay at status 5 before it is left for the next run",
    )
    parser.add_argument(
        "--redo",
        action="append",
        default=[],
        metavar="ID",
        help="start this job (or segment ID~N of a long job) over even if it was paid for"
        " (repeatable)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="ID",
        help="run only these jobs (repeatable, or a comma-separated list); the others' records"
        " are left as they are",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="run every valid job and report the invalid ones, instead of running nothing",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="also retry failures that would recur as they are (moderation, content rules,"
        " 400xxx rejections, unknown speakers); status 8 and transient ones are always retried",
    )
    parser.add_argument(
        "--max-credits",
        type=_non_negative_int,
        metavar="N",
        help="never submit a job that would take this run's spend (estimated, or as replies"
        " report it) past N; the rest stays pending and the run exits 75",
    )
    parser.add_argument(
        "--keep-segments",
        action="store_true",
        help="keep a long job's cut inputs and segment results (OUT/segments/ID/) after they"
        " are stitched into OUT/ID.mp4",
    )
    parser.add_argument(
        "--notify-url",
        metavar="URL",
        help="POST the run's summary as JSON here when it ends (a Slack-style webhook; the"
        " exit code never depends on it)",
    )


def _add_api_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-url",
        default=None,
        help=f"API base URL (default: $PIXVERSE_BASE_URL, else {DEFAULT_BASE_URL})",
    )
    parser.add_argument(
        "--request-timeout",
        type=_positive_float,
        default=30.0,
        help="seconds a small API call may take; a submission whose reply did not come is"
        " re-sent only after this (plus 10 %%), when it can no longer race the first send",
    )
    parser.add_argument(
        "--api-key", default=None, help="API key (default: $PIXVERSE_API_KEY; prefer the variable)"
    )
    parser.add_argument(
        "--keys-file",
        type=Path,
        metavar="FILE",
        help="several API keys, one per line (# comments and blank lines skipped), each its own"
        " account: new jobs go to a key with a free slot, a submitted job stays with its key,"
        " a key out of credits or refused is retired for the run; --concurrency is per key"
        " (default: $PIXVERSE_API_KEYS, comma-separated, else $PIXVERSE_API_KEY)",
    )


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be at least 0")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("must be a number of at least 0")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError("must be a number above 0")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the keys as used (stripped), from wherever they may come
    args.redact = Redactor(
        keys_to_hide(getattr(args, "api_key", None), getattr(args, "keys_file", None), os.environ)
    )
    # a person at a terminal gets a live bar, with log lines printed above it; logs stay
    # plain lines when stderr is a file or a pipe (cron, systemd)
    tty = sys.stderr.isatty() and not args.quiet and args.log_format == "text"
    args.console = Console(stderr=True) if tty else None
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logs = logging_to_stderr(level, args.redact, log_format=args.log_format, console=args.console)
    with logs as context, _sigterm_interrupts():
        args.context = context
        try:
            code = _dispatch(args)
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
            return code
        except BrokenPipeError:
            _drop_stdout()
            return EXIT_BROKEN_PIPE
        except KeyboardInterrupt:
            # outside a run's own signal handling (preflight, account checks): nothing half-done
            print("interrupted; run the same command again to resume", file=sys.stderr)
            return ExitCode.UNFINISHED


def _drop_stdout() -> None:
    """After EPIPE: point stdout at /dev/null, so the interpreter's final flush of what is
    still buffered does not print a second error (Python docs, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # not a real file (a test's capture): nothing to flush
        pass


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (systemd, kill) stops the command like Ctrl-C does, in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _dispatch(args: argparse.Namespace) -> int:
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": _cmd_run,
        "validate": _cmd_validate,
        "init": _cmd_init,
        "convert": _cmd_convert,
        "status": _cmd_status,
        "report": _cmd_report,
        "speakers": _cmd_speakers,
        "balance": _cmd_balance,
        "doctor": _cmd_doctor,
        "sim": _cmd_sim,
        "demo": _cmd_demo,
    }
    try:
        return handlers[args.command](args)
    except ManifestError as exc:
        for problem in exc.problems:
            _error(args, problem)
        return ExitCode.USAGE
    except (StateError, DiskError, ApiError) as exc:
        _error(args, str(exc))
        return exit_code_for(exc)


def _error(args: argparse.Namespace, text: str) -> None:
    print(f"error: {args.redact(text)}", file=sys.stderr)


def _client_config(args: argparse.Namespace) -> ClientConfig:
    """The first key's (speakers ask with it)."""
    return _client_configs(args)[0]


def _client_configs(args: argparse.Namespace) -> list[ClientConfig]:
    """One per API key (`pipeline.keys` says where they come from)."""
    keys = api_keys(args.api_key, args.keys_file, os.environ)
    base = args.base_url or os.environ.get("PIXVERSE_BASE_URL") or DEFAULT_BASE_URL
    return [
        ClientConfig(
            base_url=_checked_base_url(base), api_key=key, request_timeout=args.request_timeout
        )
        for key in keys
    ]


def _key_fps(args: argparse.Namespace) -> list[str]:
    """The fingerprints of the keys given (none when no key is: nothing is said to be
    another key's)."""
    try:
        return [key_fingerprint(k) for k in api_keys(args.api_key, args.keys_file, os.environ)]
    except ManifestError:
        return []


def _checked_base_url(base: str) -> str:
    """A typo here would make every nightly run look like a network outage (exit 75)."""
    url = urlsplit(base.strip())
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ManifestError([f"base URL {base!r}: give http(s)://host, e.g. {DEFAULT_BASE_URL}"])
    if url.path.rstrip("/").endswith("/openapi/v2"):
        raise ManifestError([f"base URL {base!r}: leave out /openapi/v2, it is added per call"])
    return base.strip()


def _load(manifest: Path) -> Checked:
    return preflight(load_all(manifest))


def _output_dir(manifest: Manifest, out: Path | None) -> Path:
    if out is not None:
        return out
    if manifest.output_dir is not None:
        return manifest.output_dir
    return manifest.path.resolve().parent / "out"


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False))


def _cmd_validate(args: argparse.Namespace) -> int:
    """Every job with its inputs, credits and output path (`pipeline.validation`); with
    `--online`, speakers and balance from the account, read-only."""
    from pipeline.validation import Validation, ask_account

    try:
        checked = _load(args.manifest)
        output_dir = _output_dir(checked.manifest, args.out)
        state_path = args.state or output_dir / STATE_NAME
        state = _read_state(state_path)
        online = anyio.run(ask_account, _client_configs(args)) if args.online else None
        # the account's speakers (unknown ones refused), else those the last run saw
        checked = _speakers_of(checked, online.speakers if online else None, state)
    except ManifestError as exc:
        if args.json:  # the problems on stdout too, for a script; the error lines as ever
            _print_json({"manifest": str(args.manifest), "ok": False, "problems": exc.problems})
        raise
    left = None
    if state is not None:
        left = remaining_credits(forecast(checked, state[0], output_dir, long=state[1]))
    result = Validation(checked, output_dir, left, online)
    if args.json:
        document = result.document(args.manifest)
        if left is not None:
            document |= {
                "state_file": str(state_path),
                "credits_left": sum(left.values()),
                "credits_left_per_job": left,
            }
        _print_json(document)
        return ExitCode.OK
    print("\n".join(result.lines(args.manifest)))
    if left is not None:
        print(
            f"with {state_path}: about {sum(left.values())} credits left to pay for"
            f" ({sum(1 for v in left.values() if v)} of {len(left)} jobs)"
        )
    return ExitCode.OK


def _speakers_of(
    checked: Checked,
    listed: list[Speaker] | None,
    state: tuple[list[JobRecord], list[LongRecord], SpeakerBook | None] | None,
) -> Checked:
    records, _, kept = state or ([], [], None)
    if listed is not None:
        former = kept.former if kept is not None else ()
        checked, unknown = resolve_with(checked, SpeakerBook.of(listed, former), records)
        if unknown:
            raise ManifestError(list(unknown.values()))
    elif kept is not None:
        checked = resolve_with(checked, kept, records)[0]
    return checked


def _read_state(
    state_path: Path,
) -> tuple[list[JobRecord], list[LongRecord], SpeakerBook | None] | None:
    """The records, long jobs and kept speaker list of a state file, read-only (None: there
    is none)."""
    if not state_path.exists():
        return None
    store = StateStore.read_only(state_path)
    try:
        return store.jobs(archived=True), store.long_jobs(), SpeakerBook.kept(store)
    finally:
        store.close()


def _only(args: argparse.Namespace) -> list[str]:
    """`--only` ids, repeatable or comma-separated, in order, each once."""
    ids = [part.strip() for value in args.only for part in value.split(",")]
    return list(dict.fromkeys(i for i in ids if i))


def _check_ids(args: argparse.Namespace, manifest: Manifest) -> None:
    """`--redo` and `--only` name jobs of the manifest (`--redo` also a segment `ID~N` of
    one: checked against its plan by `_check_segments`), or nothing runs (exit 2)."""
    problems = select(manifest, _only(args))
    ids = {job.id for job in manifest.jobs}
    unknown = sorted(job_id for job_id in set(args.redo) - ids if _segment_of(job_id)[0] not in ids)
    problems += [f"--redo: no job with id {job_id!r}" for job_id in unknown]
    if problems:
        raise ManifestError(problems)


def _segment_of(job_id: str) -> tuple[str | None, int]:
    """(parent id, index) of a segment id `ID~N`, or (None, 0)."""
    parent, mark, index = job_id.partition(SEGMENT_MARK)
    return (parent, int(index)) if mark and index.isdigit() and int(index) > 0 else (None, 0)


def _check_segments(args: argparse.Namespace, checked: Checked) -> None:
    """`--redo ID~N` names a segment of long job ID's plan (exit 2 otherwise)."""
    problems = []
    for job_id in sorted(args.redo):
        parent, index = _segment_of(job_id)
        if parent is None or any(job.id == job_id for job in checked.full.jobs):
            continue
        plan = checked.long.get(parent)
        if plan is None:
            problems.append(f"--redo: {job_id!r}: job {parent!r} is not a long job")
        elif index > len(plan.cuts):
            count = len(plan.cuts)
            problems.append(f"--redo: {job_id!r}: job {parent!r} has {count} segments")
    if problems:
        raise ManifestError(problems)


def _cmd_dry_run(args: argparse.Namespace) -> int:
    """`run --dry-run`: the forecast, from the state file read as it is; nothing is sent."""
    manifest = load_all(args.manifest)
    _check_ids(args, manifest)
    checked = preflight(manifest, only=_only(args), keep_going=args.keep_going)
    _check_segments(args, checked)
    output_dir = _output_dir(manifest, args.out)
    state = _read_state(args.state or output_dir / STATE_NAME)
    records, long, _ = state or ([], [], None)
    checked = _speakers_of(checked, None, state)
    fps = _key_fps(args)
    steps = forecast(
        checked,
        records,
        output_dir,
        redo=frozenset(args.redo),
        retry_failed=args.retry_failed,
        key_fps=frozenset(fps) if fps else None,
        max_credits=args.max_credits,
        long=long,
    )
    print("\n".join(render(steps)))
    return ExitCode.OK


def _cmd_run(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _cmd_dry_run(args)
    session = RunSession(args.manifest, args.redact, args.context)

    def body() -> int:
        try:
            manifest = load_all(args.manifest)
        except ManifestError:
            # where the report of a manifest that does not load goes, if that folder exists
            default = args.manifest.resolve().parent / "out"
            session.locate(None, args.out or output_dir_of(args.manifest) or default, args.state)
            _log_start(session, args)
            raise
        session.locate(manifest, _output_dir(manifest, args.out), args.state)
        _log_start(session, args)
        # another run on this output folder: say so at once, before probing a single file
        assert session.state_path is not None
        StateStore.ensure_unlocked(session.state_path)
        _check_ids(args, manifest)
        checked = preflight(manifest, only=_only(args), keep_going=args.keep_going)
        _check_segments(args, checked)
        configs = _client_configs(args)
        return anyio.run(_run_async, session, checked, configs, args)

    return _in_session(session, args, body)


def _in_session(session: RunSession, args: argparse.Namespace, body: Callable[[], int]) -> int:
    """Run `body`; on every way out, the run's end line, its report, and the notification."""
    try:
        code = body()
    except (PipelineError, KeyboardInterrupt) as exc:
        session.stopped(exc)
        session.notify(args.notify_url)
        raise
    session.notify(args.notify_url)
    return code


def _log_start(session: RunSession, args: argparse.Namespace) -> None:
    base = args.base_url or os.environ.get("PIXVERSE_BASE_URL") or DEFAULT_BASE_URL
    session.log_start(args.concurrency, base, ", ".join(_key_fps(args)) or "not set")


def _run_options(args: argparse.Namespace, session: RunSession) -> RunOptions:
    assert session.output_dir is not None
    return RunOptions(
        output_dir=session.output_dir,
        concurrency=args.concurrency,
        poll_interval=args.poll_interval,
        max_attempts=args.max_attempts,
        max_wait=args.max_wait,
        redo=frozenset(args.redo),
        max_credits=args.max_credits,
        retry_failed=args.retry_failed,
        keep_segments=args.keep_segments,
        handle_signals=True,
        run_id=session.run_id,
        started_at=session.started,
    )


async def _run_async(
    session: RunSession,
    checked: Checked,
    config: ClientConfig | list[ClientConfig],
    args: argparse.Namespace,
) -> int:
    progress = LiveProgress(args.console) if args.console is not None else None
    outcome = await session.run(checked, config, _run_options(args, session), progress)
    if outcome.problem:
        _error(args, outcome.problem)
    approx = "~" if any(row.credits_estimated for row in outcome.rows) else ""
    print(
        f"{outcome.summary}; {approx}{outcome.credits_this_run} credits this run;"
        f" report: {outcome.report_path}"
    )
    return int(outcome.exit_code)


def _cmd_init(args: argparse.Namespace) -> int:
    """`pipeline.authoring.pair`, then the manifest on stdout or into `--output`."""
    from pipeline.authoring import checked, init_document, pair, render, write_manifest

    root = Path.cwd()
    found = pair(args.video, args.audio, root)
    for line in found.matched():
        if not args.quiet:
            print(f"matched {line}", file=sys.stderr)
    for line in found.unpaired:
        print(f"not paired: {line}", file=sys.stderr)
    folder = args.output.resolve().parent if args.output is not None else root
    document = init_document(found, root, folder, args.output_pattern)
    header = f"written by pixverse-batch init --video '{args.video}' --audio '{args.audio}'"
    if args.output is None:
        manifest = checked(root / "manifest.yaml", document)
        print(render(manifest, document, header, ".yaml"), end="")
    else:
        manifest = write_manifest(args.output, document, header)
    where = f": {args.output}" if args.output is not None else ""
    print(
        f"{len(manifest.jobs)} jobs, {len(found.unpaired)} files not paired{where}", file=sys.stderr
    )
    return ExitCode.OK


def _cmd_convert(args: argparse.Namespace) -> int:
    from pipeline.authoring import convert

    manifest = convert(args.source, args.target)
    print(f"{args.target}: {len(manifest.jobs)} jobs from {args.source}")
    return ExitCode.OK


def _cmd_status(args: argparse.Namespace) -> int:
    """Job states from the state file; exits like `run` would have: 0 all done, 1 some
    failed, 75 some unfinished (jobs of MANIFEST not started yet count as unfinished, and so
    do records set aside that a run still works on: `set_aside_pending`)."""
    manifest = load_manifest(args.manifest) if args.manifest is not None else None
    if args.state is not None:
        state_path = args.state
    elif args.out is not None:
        state_path = args.out / STATE_NAME
    elif manifest is not None:
        state_path = _output_dir(manifest, None) / STATE_NAME
    else:
        raise ManifestError(["status needs a MANIFEST, --out or --state"])
    store = StateStore.read_only(state_path)
    try:
        records = store.jobs()
        aside = set_aside_pending(store.jobs(archived=True))
        ceilings = store.slot_ceilings()
        long = {row.id: row for row in status_rows(records, store.long_jobs())}
    finally:
        store.close()
    missing: list[str] = []
    if manifest is not None:  # only this manifest's jobs (a long one's segments too), in order
        by_id = {r.id: r for r in records}
        wanted = {job.id for job in manifest.jobs}
        records = [r for r in records if r.id in wanted or parent_of(r.id) in wanted]
        long = {i: row for i, row in long.items() if i in wanted}
        missing = [job.id for job in manifest.jobs if job.id not in by_id and job.id not in long]
        aside = [r for r in aside if re.split(r"[~@]", r.id, maxsplit=1)[0] in wanted]
    # a long job counts once, by its own row; its segments are listed, not counted
    rows = build_rows([r for r in records if parent_of(r.id) is None]) + list(long.values())
    rows += [
        ReportRow(job_id, "unfinished:new", None, None, None, 0, False, 0, 0, None)
        for job_id in missing
    ]
    now = time.time()
    if args.json:
        _print_json(
            {
                "state_file": str(state_path),
                "summary": summary_counts(rows),
                "keys": _per_key(records),
                "jobs": [_status_json(r, now) for r in records]
                + [
                    {"id": r.id, "state": r.state, "output": r.output, "segments": r.segments}
                    for r in long.values()
                ]
                + [{"id": job_id, "state": "new"} for job_id in missing],
                "set_aside": [_status_json(r, now) for r in aside],
            }
        )
    else:
        for r in records:
            extra = describe_wait(r, now) or r.error or (r.output if r.output else "")
            video = r.video_id if r.video_id is not None else "-"
            key = f" key={r.key_fp}" if r.key_fp and r.state is not JobState.DONE else ""
            print(
                f"{r.id:<32} {'suspect' if r.suspect else r.state.value:<12} video={video}"
                f" attempts={r.attempts}{key} {extra}"
            )
        for row in long.values():
            count = len(row.segments or [])
            what = row.error or row.output or f"{count} segments"
            print(f"{row.id:<32} {row.state:<12} long job, {count} segments: {what}")
        for job_id in missing:
            print(f"{job_id:<32} {'new':<12} not started")
        for r in aside:
            what = (
                f"a send set aside unanswered (trace id {r.trace_id}), maybe paid for: the next"
                " run re-sends it as it was"
                if unanswered_send(r)
                else f"set aside, video {r.video_id} paid for: the next run fetches it"
            )
            key = f" key={r.key_fp}" if r.key_fp else ""
            print(f"{r.id:<32} {r.state.value:<12} {what}{key}")
        for base_url, key_fp, ceiling, concurrency, learned_at in ceilings:
            print(
                f"slot ceiling {ceiling} (--concurrency {concurrency}) for {base_url} key"
                f" {key_fp}, learned from 500044 at {iso(learned_at)}"
            )
        keys = _per_key(records)
        if len(keys) > 1:
            for key_fp, facts in keys.items():
                states = ", ".join(f"{n} {state}" for state, n in facts["states"].items())
                print(
                    f"key {key_fp}: {facts['jobs']} jobs ({states}), {facts['generations']}"
                    f" generations, {facts['credits']} credits"
                )
        print(summary_line(rows))
    counts = summary_counts(rows)
    if counts["unfinished"] or aside:  # a run still has work to do
        return ExitCode.UNFINISHED
    return ExitCode.JOBS_FAILED if counts["failed"] or counts["suspect"] else ExitCode.OK


def _per_key(records: list[JobRecord]) -> dict[str, dict[str, Any]]:
    """Per key fingerprint, the jobs last sent with it: how many, in which states, their
    generations and net credits (all runs; a job counts under the key of its last send)."""
    keys: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.key_fp is None:
            continue
        facts = keys.setdefault(r.key_fp, {"jobs": 0, "states": {}, "generations": 0, "credits": 0})
        facts["jobs"] += 1
        state = "suspect" if r.suspect else r.state.value
        facts["states"][state] = facts["states"].get(state, 0) + 1
        facts["generations"] += r.attempts
        facts["credits"] += r.credits
    return keys


def _cmd_report(args: argparse.Namespace) -> int:
    """report.html again, from the state file; 0 once written (whatever the jobs' states)."""
    from pipeline.reportpage import rebuild_page

    path = rebuild_page(args.out, state=args.state, manifest=args.manifest, redact=args.redact)
    print(f"report: {path}")
    return ExitCode.OK


def _status_json(record: JobRecord, now: float) -> dict[str, Any]:
    return {
        "id": record.id,
        "state": record.state.value,
        "video_id": record.video_id,
        "attempts": record.attempts,
        "credits": record.credits,
        "credits_estimated": record.credits_estimated,
        "output": record.output,
        "bytes": record.bytes,
        "error": record.error,
        "error_class": record.error_class,
        "err_code": record.err_code,
        "key_fp": record.key_fp,
        "suspect": record.suspect,
        "waiting": describe_wait(record, now),
    }


def _with_client(
    args: argparse.Namespace, action: Callable[[PixverseClient], Awaitable[Any]]
) -> Any:
    config = _client_config(args)

    async def go() -> Any:
        async with PixverseClient(config) as client:
            return await action(client)

    return anyio.run(go)


def _cmd_speakers(args: argparse.Namespace) -> int:
    async def fetch(client: PixverseClient) -> Any:
        return await client.speakers()

    speakers = _with_client(args, fetch)
    if args.json:
        _print_json([{"speaker_id": s.speaker_id, "name": s.name, **s.extra} for s in speakers])
        return ExitCode.OK
    print("\n".join(speaker_lines(speakers)))
    return ExitCode.OK


def _cmd_balance(args: argparse.Namespace) -> int:
    configs = _client_configs(args)
    if len(configs) > 1:
        return _balances(args, configs)

    async def fetch(client: PixverseClient) -> Any:
        return await client.balance()

    balance = _with_client(args, fetch)
    if args.json:
        _print_json(
            {
                "account_id": balance.account_id,
                "credit_monthly": balance.credit_monthly,
                "credit_package": balance.credit_package,
                "spendable": balance.spendable,
            }
        )
        return ExitCode.OK
    print(
        f"account {balance.account_id}: {balance.spendable} credits"
        f" ({balance.credit_monthly} monthly + {balance.credit_package} package)"
    )
    return ExitCode.OK


def _balances(args: argparse.Namespace, configs: list[ClientConfig]) -> int:
    """`balance` with several keys: each key's credits by its fingerprint, and the sum."""

    async def fetch() -> list[Any]:
        found = []
        for config in configs:
            async with PixverseClient(config) as client:
                found.append((config.key_fingerprint, await client.balance()))
        return found

    balances = anyio.run(fetch)
    total = sum(b.spendable for _, b in balances)
    if args.json:
        keys = [
            {
                "key_fp": key_fp,
                "account_id": b.account_id,
                "credit_monthly": b.credit_monthly,
                "credit_package": b.credit_package,
                "spendable": b.spendable,
            }
            for key_fp, b in balances
        ]
        _print_json({"keys": keys, "spendable": total})
        return ExitCode.OK
    for key_fp, b in balances:
        print(
            f"key {key_fp}: account {b.account_id}: {b.spendable} credits"
            f" ({b.credit_monthly} monthly + {b.credit_package} package)"
        )
    print(f"{len(balances)} keys: {total} credits together")
    return ExitCode.OK


def _cmd_doctor(args: argparse.Namespace) -> int:
    from pipeline.doctor import run_doctor, save_recordings

    configs = _client_configs(args)
    if args.record is not None and args.record.exists() and not args.record.is_dir():
        raise ManifestError([f"--record {args.record}: not a folder"])
    if len(configs) > 1:
        return _doctor_keys(args, configs)
    config = configs[0]
    diagnosis, entries = anyio.run(run_doctor, config)
    if args.record is not None:
        try:
            written = save_recordings(entries, args.record, secret=config.api_key)
        except OSError as exc:
            raise ManifestError([f"--record {args.record}: {exc.strerror or exc}"]) from exc
        # stderr, so that `--json` output stays one JSON object
        print(f"recorded {len(written)} exchanges in {args.record}", file=sys.stderr)
    if args.json:
        print(json.dumps(diagnosis.as_json(), indent=2))
    else:
        print("\n".join(diagnosis.lines()))
    return ExitCode.OK if diagnosis.healthy else ExitCode.ACCOUNT


def _doctor_keys(args: argparse.Namespace, configs: list[ClientConfig]) -> int:
    """`doctor` with several keys: every check once per key, under the key's fingerprint
    (`--record` keeps the first key's exchanges); healthy only if every key is."""
    from pipeline.doctor import run_doctor, save_recordings

    results = [(c, *anyio.run(run_doctor, c)) for c in configs]
    if args.record is not None:
        first, _, entries = results[0]
        try:
            written = save_recordings(entries, args.record, secret=first.api_key)
        except OSError as exc:
            raise ManifestError([f"--record {args.record}: {exc.strerror or exc}"]) from exc
        print(f"recorded {len(written)} exchanges in {args.record}", file=sys.stderr)
    healthy = all(diagnosis.healthy for _, diagnosis, _ in results)
    if args.json:
        keys = {c.key_fingerprint: diagnosis.as_json() for c, diagnosis, _ in results}
        print(json.dumps({"healthy": healthy, "keys": keys}, indent=2))
    else:
        for config, diagnosis, _ in results:
            print(f"key {config.key_fingerprint}:")
            print("\n".join(f"  {line}" for line in diagnosis.lines()))
    return ExitCode.OK if healthy else ExitCode.ACCOUNT


def _cmd_sim(args: argparse.Namespace) -> int:
    from pipeline.simulator import SimConfig, main_blocking

    config = SimConfig(
        api_keys=frozenset({args.api_key}),
        concurrency_limit=args.limit,
        generation_seconds=args.generation_seconds,
        time_scale=args.time_scale,
        fail_probability=args.fail_probability,
        credit_monthly=args.credits,
        reply_cache=not args.no_replay,
        generate_reply_seconds=args.generate_reply_seconds,
    )
    main_blocking(args.host, args.port, config)
    return ExitCode.OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.simulator import SimConfig, serve

    session = RunSession(args.manifest, args.redact, args.context)
    sim_config = SimConfig(time_scale=0.02, generation_seconds=20.0, seed=7)

    def body() -> int:
        manifest = load_all(args.manifest)
        session.locate(manifest, args.out, args.state)
        session.log_start(args.concurrency, "the bundled simulator", key_fingerprint("sim-key"))
        _check_ids(args, manifest)
        checked = preflight(manifest, only=_only(args), keep_going=args.keep_going)
        _check_segments(args, checked)

        async def start() -> int:
            async with serve(sim_config) as sim:
                print(f"simulator listening on {sim.url}")
                config = ClientConfig(base_url=sim.url, api_key="sim-key")
                return await _run_async(session, checked, config, args)

        return anyio.run(start)

    return _in_session(session, args, body)
