"""TTS speakers by name (issue 8): resolved to ids from the account's own list at run time,
the same inputs whichever is written, a name that finds no speaker failing its job alone;
`speakers` prints every field; `validate --online` checks speakers and balance, read-only."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.client import Speaker
from pipeline.manifest import load_manifest
from pipeline.plan import fingerprint
from pipeline.preflight import preflight
from pipeline.runner import ExitCode
from pipeline.simulator import serve
from pipeline.speakers import SpeakerBook
from pipeline.state import MIGRATIONS, StateStore
from tests.harness import STATE_NAME, fast_sim, project, run_once, sim_in_thread

BOOK = SpeakerBook.of(
    [
        ("7", "Harper"),
        ("3", "Isabella"),
        ("Auto", "Auto"),
        ("21", "Emma"),
        ("22", "emma "),
        ("9", "3"),
    ]
)
# an account whose list is not the documented one: ids nobody could guess, a shared name,
# and fields the contract does not name
ACCOUNT = (
    {"speaker_id": "sp-41", "name": "Isabella", "accent": "en-GB", "gender": "female"},
    {"speaker_id": "sp-42", "name": "Noah", "accent": "en-US", "gender": "male"},
    {"speaker_id": "sp-43", "name": "Emma", "accent": "en-AU"},
    {"speaker_id": "sp-44", "name": "Emma", "accent": "en-IE"},
)
GENERATE = "/openapi/v2/video/lip_sync/generate"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Isabella", ("3", "")),
        ("  isabella ", ("3", "")),  # a name ignoring case and spaces
        ("3", ("3", "")),  # an id stays as written
        ("auto", ("Auto", "")),  # an id in another case: as the list spells it
        (" auto ", ("Auto", "")),
        ("harper", ("7", "")),
    ],
)
def test_a_name_resolves_to_its_id_and_an_id_to_the_lists_spelling(
    value: str, expected: tuple[str, str]
) -> None:
    assert BOOK.resolve(value) == expected


def test_an_id_wins_over_a_name_and_unknown_or_shared_names_say_why() -> None:
    # speaker "9" is named "3": the id 3 still means Isabella
    assert BOOK.resolve("3") == ("3", "")
    assert BOOK.resolve("Emma") == (None, "'Emma' is the name of 2 speakers (21, 22): give the id")
    assert BOOK.resolve("Isabela") == (
        None,
        "unknown speaker 'Isabela' (see `pixverse-batch speakers`); did you mean `Isabella`?",
    )
    assert BOOK.resolve("Zeus")[1] == "unknown speaker 'Zeus' (see `pixverse-batch speakers`)"


TTS = """
version: 1
defaults: {{tts_speaker: "{default}"}}
jobs:
  - {{id: fr, video: media/intro.mp4, tts: {{text: "Bonjour", speaker: "{fr}"}}}}
  - {{id: en, video: media/intro.mp4, tts: {{text: "Hello"}}}}
  - {{id: es, video: media/intro.mp4, audio: media/intro_es.mp3}}
"""


def speaker_ids(sim_ledger: object) -> dict[str, str]:
    generations = sim_ledger.generations.values()  # type: ignore[attr-defined]
    return {
        g.body["lip_sync_tts_content"]: g.body["lip_sync_tts_speaker_id"]
        for g in generations
        if "lip_sync_tts_content" in g.body
    }


@pytest.mark.anyio
async def test_names_are_sent_as_ids_and_switching_to_the_id_pays_nothing(tmp_path: Path) -> None:
    manifest = project(tmp_path, TTS.format(default="harper", fr="Isabella"))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        first = await run_once(sim, manifest, out)
        assert first.exit_code is ExitCode.OK
        assert speaker_ids(sim.ledger) == {"Bonjour": "3", "Hello": "7"}
        paid = len(sim.ledger.generations)
        # the same voices by id, then by name in another case: the same inputs, nothing paid
        for default, fr in (("7", "3"), ("HARPER", "isabella")):
            manifest.write_text(TTS.format(default=default, fr=fr), encoding="utf-8")
            again = await run_once(sim, manifest, out)
            assert again.exit_code is ExitCode.OK
            assert again.credits_this_run == 0
            assert len(sim.ledger.generations) == paid
            assert {r.state for r in again.rows} == {"done"}
        # another voice is other inputs: paid for once
        manifest.write_text(TTS.format(default="7", fr="Emily"), encoding="utf-8")
        changed = await run_once(sim, manifest, out)
    assert changed.exit_code is ExitCode.OK
    assert len(sim.ledger.generations) == paid + 1
    assert speaker_ids(sim.ledger)["Bonjour"] == "1"  # Emily is "1" in the documented list


@pytest.mark.anyio
async def test_the_mapping_is_the_accounts_and_a_bad_name_fails_its_job_alone(
    tmp_path: Path,
) -> None:
    """Names resolve by the list the API gives (an account whose Isabella is `sp-41`), never
    by a table of the documented ids; unknown and shared names fail their jobs, paid or free
    work beside them goes on."""
    manifest = project(
        tmp_path,
        """
version: 1
jobs:
  - {id: a, video: media/intro.mp4, tts: {text: "one", speaker: "Isabella"}}
  - {id: b, video: media/intro.mp4, tts: {text: "two", speaker: "Emma"}}
  - {id: c, video: media/intro.mp4, tts: {text: "three", speaker: "Harper"}}
  - {id: d, video: media/intro.mp4, audio: media/intro_es.mp3}
""",
    )
    async with serve(fast_sim(speakers=ACCOUNT)) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out")
    rows = {r.id: r for r in outcome.rows}
    assert outcome.exit_code is ExitCode.JOBS_FAILED
    assert rows["a"].state == "done"
    assert speaker_ids(sim.ledger) == {"one": "sp-41"}
    assert rows["d"].state == "done"
    assert rows["b"].error == (
        "job 'b' field 'tts.speaker': 'Emma' is the name of 2 speakers (sp-43, sp-44): give the id"
    )
    assert rows["c"].error == (
        "job 'c' field 'tts.speaker': unknown speaker 'Harper' (see `pixverse-batch speakers`)"
    )
    assert {rows["b"].state, rows["c"].state} == {"failed"}
    assert len(sim.ledger.generations) == 2


@pytest.mark.anyio
async def test_an_unreadable_list_keeps_paid_work_and_holds_only_new_tts_jobs(
    tmp_path: Path,
) -> None:
    manifest = project(tmp_path, TTS.format(default="Harper", fr="Isabella"))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        assert (await run_once(sim, manifest, out)).exit_code is ExitCode.OK
        paid = len(sim.ledger.generations)
        # a new TTS job by name, and the account's list cannot be read (its paths not served)
        text = TTS.format(default="Harper", fr="Isabella")
        text += '  - {id: de, video: media/intro.mp4, tts: {text: "Hallo", speaker: "Sophia"}}\n'
        manifest.write_text(text, encoding="utf-8")
        sim.config.speaker_paths = frozenset()
        second = await run_once(sim, manifest, out)
        rows = {r.id: r for r in second.rows}
        # the list the first run saw (in the state file) still resolves the done ones
        assert {rows[i].state for i in ("fr", "en", "es")} == {"done"}
        assert rows["de"].state == "unfinished:pending"
        assert second.exit_code is ExitCode.UNFINISHED
        assert second.problem is not None
        assert "cannot list the TTS speakers" in second.problem
        assert len(sim.ledger.generations) == paid
        # without that list either: a done job named by name is left as it is, not redone
        with sqlite3.connect(out / STATE_NAME) as conn:
            conn.execute("DELETE FROM speakers")
        third = await run_once(sim, manifest, out)
        assert {r.id: r.state for r in third.rows}["fr"] == "done"
        assert len(sim.ledger.generations) == paid
        store = StateStore.read_only(out / STATE_NAME)
        try:
            assert [r.id for r in store.jobs(archived=True) if "@" in r.id] == []
        finally:
            store.close()
        sim.config.speaker_paths = frozenset({"tts_list", "tts_speaker"})
        last = await run_once(sim, manifest, out)
    assert last.exit_code is ExitCode.OK
    assert len(sim.ledger.generations) == paid + 1
    assert speaker_ids(sim.ledger)["Hallo"] == "9"


@pytest.mark.anyio
async def test_an_id_an_earlier_version_fingerprinted_as_written_is_not_paid_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before an id took the list's spelling, `auto` was fingerprinted as written. Such a
    record is the job's: the forecast skips it, the run rewrites it to the list's spelling
    (`Auto`) and pays nothing, in either spelling."""
    text = (
        "version: 1\njobs:\n  - {{id: a, video: media/intro.mp4, tts: {{text: x, speaker: {}}}}}\n"
    )
    manifest = project(tmp_path, text.format("auto"))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        assert (await run_once(sim, manifest, out)).exit_code is ExitCode.OK
        checked = preflight(load_manifest(manifest))
        as_written = fingerprint(checked.manifest.jobs[0], checked.media)
        store = StateStore.read_only(out / STATE_NAME)
        try:
            canonical = store.job("a").fingerprint
        finally:
            store.close()
        assert canonical != as_written
        with sqlite3.connect(out / STATE_NAME) as conn:  # as an earlier version left it
            conn.execute("UPDATE jobs SET fingerprint = ? WHERE id = 'a'", (as_written,))
        assert main(["run", str(manifest), "--dry-run"]) == 0
        forecast = capsys.readouterr().out
        again = await run_once(sim, manifest, out)
        manifest.write_text(text.format("AUTO"), encoding="utf-8")
        third = await run_once(sim, manifest, out)
    assert forecast.splitlines()[0].split() == ["a", "skip", "done"], forecast
    assert again.exit_code is ExitCode.OK
    assert third.exit_code is ExitCode.OK
    assert again.credits_this_run == third.credits_this_run == 0
    assert len(sim.ledger.generations) == 1
    assert speaker_ids(sim.ledger) == {"x": "Auto"}
    store = StateStore.read_only(out / STATE_NAME)
    try:
        assert store.job("a").fingerprint == canonical
        assert store.job("a").state.value == "done"
    finally:
        store.close()


RENAMED = ({"speaker_id": "7", "name": "Harper"}, {"speaker_id": "3", "name": "Isabella (UK)"})
ONE_BY_NAME = (
    "version: 1\njobs:\n  - {id: a, video: media/intro.mp4, tts: {text: x, speaker: Isabella}}\n"
)


def _lists_asked(sim_ledger: object) -> int:
    requests = sim_ledger.requests  # type: ignore[attr-defined]
    return sum(1 for r in requests if r.path.endswith(("/tts_list", "/tts_speaker")))


@pytest.mark.anyio
@pytest.mark.parametrize("older_file", [False, True])
async def test_a_renamed_speaker_keeps_its_paid_results_and_new_work_fails_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], older_file: bool
) -> None:
    """The list renames speaker 3 (`Isabella` -> `Isabella (UK)`): the name resolved before
    keeps finding 3 for the paid job (this run and the next, which asks for no list), while a
    new job by that name fails alone. `older_file`: a state file made before names were kept
    (0014_speaker_names seeds them from the kept list)."""
    manifest = project(tmp_path, ONE_BY_NAME)
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        assert (await run_once(sim, manifest, out)).exit_code is ExitCode.OK
        if older_file:
            with sqlite3.connect(out / STATE_NAME) as conn:
                conn.execute("DROP TABLE speaker_names")
                # and what the migrations after it added (the file as it was before them)
                conn.execute("ALTER TABLE jobs DROP COLUMN result_seconds")
                conn.execute("ALTER TABLE jobs DROP COLUMN result_resolution")
                older = str(next(i for i, (n, _) in enumerate(MIGRATIONS) if n.endswith("names")))
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (older,))
        sim.config.speakers = RENAMED
        extra = "  - {id: c, video: media/intro.mp4, tts: {text: new, speaker: Isabella}}\n"
        manifest.write_text(ONE_BY_NAME + extra, encoding="utf-8")
        second = await run_once(sim, manifest, out)
        manifest.write_text(ONE_BY_NAME, encoding="utf-8")
        asked = _lists_asked(sim.ledger)
        assert main(["run", str(manifest), "--dry-run"]) == 0
        forecast = capsys.readouterr().out
        third = await run_once(sim, manifest, out)
    rows = {r.id: r for r in second.rows}
    assert rows["a"].state == "done"
    assert rows["c"].state == "failed"
    assert rows["c"].error is not None
    assert "unknown speaker 'Isabella'" in rows["c"].error
    assert second.exit_code is ExitCode.JOBS_FAILED
    assert third.exit_code is ExitCode.OK
    assert [r.state for r in third.rows] == ["done"]
    assert forecast.splitlines()[0].split() == ["a", "skip", "done"], forecast
    assert asked == 2  # the first run's and the second's (a new job)
    assert _lists_asked(sim.ledger) == asked  # all paid for: the third run asked nothing
    assert len(sim.ledger.generations) == 1
    assert sorted(p.name for p in out.rglob("*.mp4")) == ["a.mp4"]


@pytest.mark.anyio
async def test_an_unknown_speaker_on_a_paid_job_holds_it_and_sets_nothing_aside(
    tmp_path: Path,
) -> None:
    """A done job's speaker changed to a name no list has (a typo): the job is reported
    failed with the problem, its record and file stay exactly as they were (nothing archived,
    moved or paid); with the name fixed it is done again, for nothing."""
    manifest = project(tmp_path, ONE_BY_NAME)
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        assert (await run_once(sim, manifest, out)).exit_code is ExitCode.OK
        made = (out / "a.mp4").read_bytes()
        manifest.write_text(ONE_BY_NAME.replace("Isabella", "Isabela"), encoding="utf-8")
        held = await run_once(sim, manifest, out)
        store = StateStore.read_only(out / STATE_NAME)
        try:
            records = {r.id: r.state.value for r in store.jobs(archived=True)}
        finally:
            store.close()
        manifest.write_text(ONE_BY_NAME, encoding="utf-8")
        fixed = await run_once(sim, manifest, out)
    assert held.exit_code is ExitCode.JOBS_FAILED
    (row,) = held.rows
    assert row.state == "failed"
    assert row.error == (
        "job 'a' field 'tts.speaker': unknown speaker 'Isabela' (see `pixverse-batch"
        " speakers`); did you mean `Isabella`?"
    )
    assert records == {"a": "done"}
    assert (out / "a.mp4").read_bytes() == made
    assert not (out / "superseded").exists()
    assert fixed.exit_code is ExitCode.OK
    assert [r.state for r in fixed.rows] == ["done"]
    assert len(sim.ledger.generations) == 1


def test_speakers_prints_every_field_the_api_gives(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with sim_in_thread(fast_sim(speakers=ACCOUNT)) as sim:
        monkeypatch.setenv("PIXVERSE_API_KEY", "sim-key")
        monkeypatch.setenv("PIXVERSE_BASE_URL", sim.url)
        assert main(["speakers"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert main(["speakers", "--json"]) == 0
        document = json.loads(capsys.readouterr().out)
    assert lines[0].split() == ["sp-41", "Isabella", "accent=en-GB", "gender=female"]
    assert lines[2].split() == ["sp-43", "Emma", "accent=en-AU"]
    assert document[1] == {
        "speaker_id": "sp-42",
        "name": "Noah",
        "accent": "en-US",
        "gender": "male",
    }
    assert Speaker("1", "x", {"a": 1}) == Speaker("1", "x")  # extras never decide identity


def test_validate_online_checks_speakers_and_balance_with_read_only_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project(tmp_path, TTS.format(default="Harper", fr="isabella"))
    assert main(["validate", str(manifest)]) == 0
    offline = capsys.readouterr().out
    assert "speakers not checked (offline): `validate --online`" in offline
    assert "(speaker isabella)" in offline  # as written: nothing asked
    with sim_in_thread(fast_sim(credit_monthly=10)) as sim:
        monkeypatch.setenv("PIXVERSE_API_KEY", "sim-key")
        monkeypatch.setenv("PIXVERSE_BASE_URL", sim.url)
        assert main(["validate", str(manifest), "--online"]) == 0
        online = capsys.readouterr().out
        assert main(["validate", str(manifest), "--online", "--json"]) == 0
        document = json.loads(capsys.readouterr().out)
        manifest.write_text(TTS.format(default="Harper", fr="Isabela"), encoding="utf-8")
        assert main(["validate", str(manifest), "--online"]) == 2
        refused = capsys.readouterr().err.splitlines()
        methods = {(r.method, r.path) for r in sim.ledger.requests}
    assert "(speaker 3)" in online  # resolved by the account's list
    assert "speakers checked; balance 10 credits, about 16 needed: not enough" in online
    assert document["speakers_checked"] is True
    assert document["balance"] == {"spendable": 10, "needed": 16, "enough": False}
    assert [j["tts"]["speaker"] for j in document["job_list"] if "tts" in j] == ["3", "7"]
    assert refused == [
        "error: job 'fr' field 'tts.speaker': unknown speaker 'Isabela' (see `pixverse-batch"
        " speakers`); did you mean `Isabella`?"
    ]
    assert {method for method, _ in methods} == {"GET"}
    assert {path for _, path in methods} == {
        "/openapi/v2/video/lip_sync/tts_list",
        "/openapi/v2/account/balance",
    }
