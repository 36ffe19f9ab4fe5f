"""Several keys on the command line: `--keys-file`, `PIXVERSE_API_KEYS`, and what `run`,
`status`, `balance` and `doctor` say per key fingerprint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.client import key_fingerprint
from pipeline.simulator import Simulator
from tests.harness import fast_sim, project, sim_in_thread, tts_manifest

ONE = "sk-live-FIRST-0123456789abcdef"
TWO = "sk-live-SECOND-fedcba9876543210"


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    with sim_in_thread(fast_sim(api_keys=frozenset({ONE, TWO}))) as simulator:
        monkeypatch.delenv("PIXVERSE_API_KEY", raising=False)
        monkeypatch.delenv("PIXVERSE_API_KEYS", raising=False)
        monkeypatch.setenv("PIXVERSE_BASE_URL", simulator.url)
        yield simulator


def test_a_keys_file_runs_on_both_keys_and_status_and_balance_show_each(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# the two accounts\n{ONE}\n\n  {TWO}  \n", encoding="utf-8")
    manifest = project(tmp_path, tts_manifest(6))
    out = tmp_path / "out"
    run = ["run", str(manifest), "--out", str(out), "--poll-interval", "0.02"]
    assert main([*run, "--keys-file", str(keys), "--concurrency", "1"]) == 0
    printed = capsys.readouterr()
    assert "6 jobs: 6 done" in printed.out
    fps = [key_fingerprint(ONE), key_fingerprint(TWO)]
    assert "keys:" in printed.out
    assert all(fp in printed.out for fp in fps)
    assert all(fp in printed.err for fp in fps)  # the run's first line names both
    assert main(["status", "--out", str(out)]) == 0
    status = capsys.readouterr().out
    assert all(f"key {fp}:" in status for fp in fps)
    assert main(["balance", "--keys-file", str(keys)]) == 0
    balance = capsys.readouterr().out
    assert all(f"key {fp}:" in balance for fp in fps)
    assert "2 keys:" in balance
    everything = printed.out + printed.err + status + balance
    assert ONE not in everything
    assert TWO not in everything
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert ONE.encode() not in data
            assert TWO.encode() not in data


def test_pixverse_api_keys_is_read_comma_separated(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PIXVERSE_API_KEYS", f"{ONE}, {TWO}")
    assert main(["balance", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [k["key_fp"] for k in document["keys"]] == [key_fingerprint(ONE), key_fingerprint(TWO)]
    assert document["spendable"] == sum(k["spendable"] for k in document["keys"])


@pytest.mark.parametrize(
    ("text", "extra", "expected"),
    [
        (f"{ONE}\n{TWO}\n{ONE}\n", [], "line 3: the same key as --keys-file"),
        ("# only a comment\n\n", [], "no key in it"),
        (f"{ONE}\n", ["--api-key", TWO], "give --api-key or --keys-file, not both"),
    ],
)
def test_bad_keys_are_a_one_line_usage_error_and_nothing_is_sent(
    tmp_path: Path,
    sim: Simulator,
    capsys: pytest.CaptureFixture[str],
    text: str,
    extra: list[str],
    expected: str,
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(text, encoding="utf-8")
    assert main(["balance", "--keys-file", str(keys), *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert expected in err
    assert ONE not in err
    assert TWO not in err
    assert sim.ledger.requests == []


def test_a_missing_keys_file_is_a_usage_error(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["balance", "--keys-file", str(tmp_path / "nope.txt")]) == 2
    assert "--keys-file" in capsys.readouterr().err
    assert sim.ledger.requests == []


def test_doctor_checks_every_key(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PIXVERSE_API_KEYS", f"{ONE},{TWO}")
    assert main(["doctor", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["healthy"] is True
    assert set(document["keys"]) == {key_fingerprint(ONE), key_fingerprint(TWO)}
    sim.config.api_keys = frozenset({ONE})  # the second key is refused now
    assert main(["doctor"]) == 4
    text = capsys.readouterr().out
    assert f"key {key_fingerprint(TWO)}:" in text
    assert TWO not in text
