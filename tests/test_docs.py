"""The README documents every command, option and exit code the CLI has."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import build_parser
from pipeline.runner import ExitCode
from tests.harness import REPO, fast_sim, project, sim_in_thread, tts_manifest

README = (REPO / "README.md").read_text(encoding="utf-8")
NIGHTLY = (REPO / "docs" / "nightly.md").read_text(encoding="utf-8")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_command_is_in_the_readme(command: str) -> None:
    assert re.search(rf"`{command}\b", README), command


def test_every_run_option_is_in_the_readme() -> None:
    run = _subcommands()["run"]
    options = {o for a in run._actions for o in a.option_strings if o.startswith("--")}
    options -= {"--help"}
    missing = sorted(o for o in options if f"`{o}" not in README)
    assert missing == []


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings} - {"-h", "--help"}


def test_every_option_of_every_command_is_in_the_readme() -> None:
    """`--json`, `-q`/`-v`/`--log-format`, `--notify-url`... wherever they are accepted."""
    options = _options(build_parser())
    for parser in _subcommands().values():
        options |= _options(parser)
    missing = sorted(o for o in options if not re.search(rf"`[^`]*{re.escape(o)}\b", README))
    assert missing == []


def test_help_shows_every_default() -> None:
    """Every option with a default says it in --help, and no help text contradicts it."""
    for name, parser in {"": build_parser(), **_subcommands()}.items():
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if action.default in (None, False, [], argparse.SUPPRESS) or not action.help:
                continue
            shown = " ".join(parser._get_formatter()._expand_help(action).split())
            assert "default" in shown, (name, action.option_strings)
            assert shown in text, (name, action.option_strings)
    assert "(8)" not in build_parser().format_help()
    assert "tries per job (8)" not in " ".join(_subcommands()["run"].format_help().split())


def test_the_nightly_guide_is_linked_and_covers_every_exit_code() -> None:
    assert "docs/nightly.md" in README
    table = NIGHTLY.split("## What each exit code means", 1)[1].split("\n## ", 1)[0]
    for code in ExitCode:
        assert f"| {int(code)} |" in table, code
    for topic in ("## cron", "## systemd", "## Overlapping runs", "## Where things land"):
        assert topic in NIGHTLY


def test_the_crontab_line_works_on_the_first_night(tmp_path: Path) -> None:
    """The documented cron command, run by sh in a folder where neither the log folder nor
    the output folder exists yet (the README's old line failed there: `>> out/nightly.log`)."""
    line = next(line for line in NIGHTLY.splitlines() if re.match(r"^\d+ \d+ \* \* \* ", line))
    assert line in README  # the README's short version is the same line
    command = line.split(" ", 5)[5]
    project(tmp_path, tts_manifest(1)).rename(tmp_path / "nightly.yaml")
    (tmp_path / "pixverse.key").write_text("sim-key\n")
    command = (
        command.replace("/srv/dubs", str(tmp_path))
        .replace("/etc/pixverse.key", str(tmp_path / "pixverse.key"))
        .replace(".venv/bin/pixverse-batch", f"{sys.executable} -m pipeline")
    )
    with sim_in_thread(fast_sim()) as sim:
        env = {**os.environ, "PYTHONPATH": str(REPO), "PIXVERSE_BASE_URL": sim.url}
        env.pop("PIXVERSE_API_KEY", None)
        done = subprocess.run(
            ["sh", "-c", command], env=env, capture_output=True, text=True, timeout=60, check=False
        )
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "logs" / "nightly.log").read_text()
    assert re.search(r"INFO run \S+ started: pixverse-batch", log), log
    assert log.rstrip().endswith(" exit 0"), log
    assert (tmp_path / "out" / "nightly" / "job-0.mp4").exists()


def test_every_exit_code_is_in_the_readme() -> None:
    table = README.split("## Exit codes", 1)[1]
    for code in ExitCode:
        assert f"| {int(code)} |" in table, code


def test_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "pixverse-batch run dubs.yaml" in capsys.readouterr().out
