"""The README documents every command, option and exit code the CLI has."""

from __future__ import annotations

import argparse
import re

import pytest

from pipeline.cli import build_parser
from pipeline.runner import ExitCode
from tests.harness import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


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


def test_every_exit_code_is_in_the_readme() -> None:
    table = README.split("## Exit codes", 1)[1]
    for code in ExitCode:
        assert f"| {int(code)} |" in table, code


def test_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "pixverse-batch run dubs.yaml" in capsys.readouterr().out
