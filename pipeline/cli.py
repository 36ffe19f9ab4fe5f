"""The command line: parse options, call one library function, map errors to exit codes.

Examples:
  pixverse-batch validate manifests/example.yaml
  PIXVERSE_API_KEY=... pixverse-batch run manifests/example.yaml --out out/dubs
  pixverse-batch status --out out/dubs
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
from rich.logging import RichHandler

from pipeline import __version__
from pipeline.client import DEFAULT_BASE_URL, ClientConfig, PixverseClient
from pipeline.download import check_writable
from pipeline.errors import ApiError, DiskError, ManifestError, StateError
from pipeline.jobstate import JobState
from pipeline.manifest import Manifest, load_manifest
from pipeline.plan import estimate_credits
from pipeline.preflight import Checked, preflight
from pipeline.progress import LiveProgress
from pipeline.report import build_rows, summary_line
from pipeline.runner import ExitCode, RunOptions, exit_code_for, run_batch
from pipeline.secrets import Redactor
from pipeline.state import StateStore
from pipeline.submit import describe_wait, iso

log = logging.getLogger("pipeline.cli")

STATE_NAME = ".pixverse-batch.sqlite"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_MANIFEST = PACKAGE_ROOT / "manifests" / "example.yaml"

EPILOG = """\
examples:
  pixverse-batch validate dubs.yaml                  # checks everything, sends nothing
  PIXVERSE_API_KEY=... pixverse-batch run dubs.yaml --out out/dubs
  pixverse-batch status --out out/dubs               # from the state file, offline
  pixverse-batch demo                                # the example against the simulator
  PIXVERSE_API_KEY=... pixverse-batch doctor         # once per key: what run relies on

exit codes: 0 all done | 1 some jobs failed, the rest done | 2 bad manifest or usage |
3 state file locked or unreadable | 4 account problem (key, permission, credits; for
doctor: something run relies on does not hold) |
74 a result, report or the state file could not be written (disk full, read-only) |
75 interrupted or unfinished: run the same command again to resume
environment: PIXVERSE_API_KEY (required for run/speakers/balance/doctor), PIXVERSE_BASE_URL
"""


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixverse-batch",
        description="Lip-sync videos in bulk through the PixVerse API, resumably.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a manifest (resumes a previous run of the same output)")
    run.add_argument("manifest", type=Path)
    _add_run_options(run)
    _add_api_options(run)

    validate = sub.add_parser("validate", help="check a manifest and its media; sends nothing")
    validate.add_argument("manifest", type=Path)

    status = sub.add_parser("status", help="job states from the state file; sends nothing")
    status.add_argument("manifest", type=Path, nargs="?", help="find the output folder from it")
    status.add_argument("--out", type=Path, help="the output folder")
    status.add_argument(
        "--state", type=Path, help="the state file (default: OUT/" + STATE_NAME + ")"
    )

    _add_api_options(sub.add_parser("speakers", help="list the TTS speakers of the account"))
    _add_api_options(sub.add_parser("balance", help="show the account's credits"))

    doctor = sub.add_parser(
        "doctor", help="check what run relies on (key, speakers, trace-id replay); no generation"
    )
    _add_api_options(doctor)
    doctor.add_argument("--json", action="store_true", help="print one JSON object")
    doctor.add_argument(
        "--record", type=Path, metavar="DIR", help="save every request and reply as JSON in DIR"
    )

    sim = sub.add_parser("sim", help="serve the bundled PixVerse simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8787)
    sim.add_argument("--api-key", default="sim-key", help="the key the simulator accepts")
    sim.add_argument(
        "--limit", type=_positive_int, default=5, help="concurrent generations per key"
    )
    sim.add_argument("--generation-seconds", type=_positive_float, default=20.0)
    sim.add_argument(
        "--time-scale", type=_positive_float, default=0.05, help="real seconds per sim second"
    )
    sim.add_argument(
        "--fail-probability", type=_probability, default=0.0, help="share ending in status 8"
    )
    sim.add_argument("--credits", type=_positive_int, default=10_000)
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

    demo = sub.add_parser("demo", help="run manifests/example.yaml against an in-process simulator")
    demo.add_argument("--manifest", type=Path, default=EXAMPLE_MANIFEST)
    _add_run_options(demo, poll_interval=0.2)  # the demo's generations take 0.4 s
    return parser


def _add_run_options(parser: argparse.ArgumentParser, poll_interval: float = 5.0) -> None:
    parser.add_argument("--out", type=Path, help="output folder (overrides output_dir)")
    parser.add_argument("--state", type=Path, help="state file (default: OUT/" + STATE_NAME + ")")
    parser.add_argument("--concurrency", type=_positive_int, default=5, help="generation slots")
    parser.add_argument(
        "--poll-interval", type=_positive_float, default=poll_interval, help="seconds"
    )
    parser.add_argument("--max-attempts", type=_positive_int, default=3, help="tries per job (8)")
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
        help="start this job over even if it was paid for (repeatable)",
    )


def _add_api_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", default=None, help="API base URL ($PIXVERSE_BASE_URL)")
    parser.add_argument(
        "--request-timeout",
        type=_positive_float,
        default=30.0,
        help="seconds a small API call may take; a submission whose reply did not come is"
        " re-sent only after this (plus 10 %%), when it can no longer race the first send",
    )
    parser.add_argument(
        "--api-key", default=None, help="API key ($PIXVERSE_API_KEY; prefer the variable)"
    )


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
    args.redact = Redactor([os.environ.get("PIXVERSE_API_KEY"), getattr(args, "api_key", None)])
    # a person at a terminal gets a live bar, with log lines printed above it; logs stay
    # plain lines when stderr is a file or a pipe (cron, systemd)
    args.console = Console(stderr=True) if sys.stderr.isatty() and not args.quiet else None
    with _logging_to_stderr(args), _sigterm_interrupts():
        try:
            return _dispatch(args)
        except KeyboardInterrupt:
            # outside a run's own signal handling (preflight, account checks): nothing half-done
            print("interrupted; run the same command again to resume", file=sys.stderr)
            return ExitCode.UNFINISHED


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
        "status": _cmd_status,
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


@contextmanager
def _logging_to_stderr(args: argparse.Namespace) -> Iterator[None]:
    """The package's log lines go to stderr for the length of one command, then the logger is
    left as it was found (the CLI is also called in-process, by tests and embedders)."""
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    handler: logging.Handler
    if args.console is not None:
        handler = RichHandler(console=args.console, show_path=False, log_time_format="%H:%M:%S")
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.addFilter(_RedactKey(args.redact))
    logger = logging.getLogger("pipeline")
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _client_config(args: argparse.Namespace) -> ClientConfig:
    key = args.api_key or os.environ.get("PIXVERSE_API_KEY", "")
    if not key.strip():
        raise ManifestError(["PIXVERSE_API_KEY is not set (or pass --api-key)"])
    base = args.base_url or os.environ.get("PIXVERSE_BASE_URL") or DEFAULT_BASE_URL
    return ClientConfig(
        base_url=_checked_base_url(base),
        api_key=key.strip(),
        request_timeout=args.request_timeout,
    )


def _checked_base_url(base: str) -> str:
    """A typo here would make every nightly run look like a network outage (exit 75)."""
    url = urlsplit(base.strip())
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ManifestError([f"base URL {base!r}: give http(s)://host, e.g. {DEFAULT_BASE_URL}"])
    if url.path.rstrip("/").endswith("/openapi/v2"):
        raise ManifestError([f"base URL {base!r}: leave out /openapi/v2, it is added per call"])
    return base.strip()


def _load(manifest: Path) -> Checked:
    return preflight(load_manifest(manifest))


def _output_dir(manifest: Manifest, out: Path | None) -> Path:
    if out is not None:
        return out
    if manifest.output_dir is not None:
        return manifest.output_dir
    return manifest.path.resolve().parent / "out"


def _cmd_validate(args: argparse.Namespace) -> int:
    checked = _load(args.manifest)
    files = len(checked.media)
    jobs = checked.manifest.jobs
    credits = sum(estimate_credits(job, checked.media) for job in jobs)
    print(
        f"{args.manifest}: {len(jobs)} jobs, {files} media files: OK;"
        f" about {credits} credits at PixVerse's published prices"
    )
    return ExitCode.OK


def _cmd_run(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.manifest)
    # another run on this output folder: say so at once, before probing a single file
    StateStore.ensure_unlocked(args.state or _output_dir(manifest, args.out) / STATE_NAME)
    checked = preflight(manifest)
    unknown = sorted(set(args.redo) - {job.id for job in manifest.jobs})
    if unknown:
        raise ManifestError([f"--redo: no job with id {job_id!r}" for job_id in unknown])
    config = _client_config(args)
    return _run(checked, config, args)


def _run(checked: Checked, config: ClientConfig, args: argparse.Namespace) -> int:
    return anyio.run(_run_async, checked, config, args)


async def _run_async(checked: Checked, config: ClientConfig, args: argparse.Namespace) -> int:
    out = _output_dir(checked.manifest, args.out)
    options = RunOptions(
        output_dir=out,
        concurrency=args.concurrency,
        poll_interval=args.poll_interval,
        max_attempts=args.max_attempts,
        max_wait=args.max_wait,
        redo=frozenset(args.redo),
        handle_signals=True,
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        check_writable(out)  # a result that cannot be saved must not be paid for
    except OSError as exc:
        raise ManifestError(
            [f"output folder {out}: cannot write there: {exc.strerror or exc}"]
        ) from exc
    # exit 3 if locked: nothing sent
    store = StateStore.open(args.state or out / STATE_NAME, redact=Redactor([config.api_key]))
    try:
        progress = LiveProgress(args.console) if args.console is not None else None
        async with PixverseClient(config) as client:
            outcome = await run_batch(checked, store, client, options, progress=progress)
    finally:
        store.close()
    if outcome.problem:
        _error(args, outcome.problem)
    print(f"{outcome.summary}; report: {outcome.report_path}")
    return int(outcome.exit_code)


def _cmd_status(args: argparse.Namespace) -> int:
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
        ceilings = store.slot_ceilings()
    finally:
        store.close()
    if manifest is not None:  # only this manifest's jobs, in its order
        by_id = {r.id: r for r in records}
        records = [by_id[job.id] for job in manifest.jobs if job.id in by_id]
    now = time.time()
    for r in records:
        extra = describe_wait(r, now) or r.error or (r.output if r.output else "")
        video = r.video_id if r.video_id is not None else "-"
        key = f" key={r.key_fp}" if r.key_fp and r.state is not JobState.DONE else ""
        print(f"{r.id:<32} {r.state.value:<12} video={video} attempts={r.attempts}{key} {extra}")
    for base_url, key_fp, ceiling, concurrency, learned_at in ceilings:
        print(
            f"slot ceiling {ceiling} (--concurrency {concurrency}) for {base_url} key {key_fp},"
            f" learned from 500044 at {iso(learned_at)}"
        )
    print(summary_line(build_rows(records)))
    return ExitCode.OK


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

    for speaker in _with_client(args, fetch):
        print(f"{speaker.speaker_id:>6}  {speaker.name}")
    return ExitCode.OK


def _cmd_balance(args: argparse.Namespace) -> int:
    async def fetch(client: PixverseClient) -> Any:
        return await client.balance()

    balance = _with_client(args, fetch)
    print(
        f"account {balance.account_id}: {balance.spendable} credits"
        f" ({balance.credit_monthly} monthly + {balance.credit_package} package)"
    )
    return ExitCode.OK


def _cmd_doctor(args: argparse.Namespace) -> int:
    from pipeline.doctor import run_doctor, save_recordings

    config = _client_config(args)
    if args.record is not None and args.record.exists() and not args.record.is_dir():
        raise ManifestError([f"--record {args.record}: not a folder"])
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

    checked = _load(args.manifest)
    out = args.out or Path("out/demo")
    args.out = out
    sim_config = SimConfig(time_scale=0.02, generation_seconds=20.0, seed=7)

    async def start() -> int:
        async with serve(sim_config) as sim:
            print(f"simulator listening on {sim.url}")
            config = ClientConfig(base_url=sim.url, api_key="sim-key")
            return await _run_async(checked, config, args)

    return anyio.run(start)
