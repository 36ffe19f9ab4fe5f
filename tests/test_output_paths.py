"""Output paths (issue 8): `output` per job, `output_pattern` per manifest, checked when read;
nested folders made; a changed path moves a done result, never pays or downloads again."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.failed import FAILED_NAME
from pipeline.manifest import load_manifest
from pipeline.preflight import load_all, preflight
from pipeline.preview import forecast
from pipeline.runner import ExitCode
from pipeline.simulator import serve
from pipeline.state import StateStore
from tests.harness import (
    STATE_NAME,
    fast_sim,
    project,
    run_once,
    sha256,
    sim_in_thread,
    tts_manifest,
)
from tests.media_factory import make_audio, make_video
from tests.pagecheck import Page
from tests.test_manifest import problems_of as problems
from tests.test_manifest import write
from tests.windows import crashpoint_cmd, env_for, pipeline_cmd, run_args

PATTERNED = """
version: 1
output_pattern: "{lang}/{name}.mp4"
defaults: {tts_speaker: "1"}
jobs:
  - video: media/intro.mp4
    dubs:
      es: {audio: media/intro_es.mp3}
      de: {audio: media/intro_de.wav}
  - id: promo
    video: media/promo.mov
    dubs:
      es: {audio: media/promo_es.wav}
      ja: {tts: {text: "こんにちは"}, output: "ja/promo-{stem}.mp4"}
  - id: remix
    video_id: 391504857968062
    audio: media/remix_de.wav
    output: "remix/{id}.mp4"
"""


def records(out: Path) -> dict[str, str | None]:
    store = StateStore.read_only(out / STATE_NAME)
    try:
        return {r.id: r.output for r in store.jobs()}
    finally:
        store.close()


def test_patterns_and_outputs_fill_their_fields(tmp_path: Path) -> None:
    jobs = {j.id: j.output for j in load_manifest(write(tmp_path, PATTERNED)).jobs}
    assert jobs == {
        "intro-es": "es/intro.mp4",
        "intro-de": "de/intro.mp4",
        "promo-es": "es/promo.mp4",
        "promo-ja": "ja/promo-promo.mp4",  # the dub's own `output` wins over the pattern
        "remix": "remix/remix.mp4",  # and the job's own
    }
    plain = load_manifest(
        write(tmp_path, "version: 1\njobs: [{id: a, video: x.mp4, audio: y.wav}]\n")
    )
    assert plain.jobs[0].output is None  # `<id>.mp4`, as ever


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("../a.mp4", "'../a.mp4' leaves the output folder (..): give a path inside it"),
        ("es/../../a.mp4", "leaves the output folder"),
        ("/srv/dubs/a.mp4", "'/srv/dubs/a.mp4' is absolute: give a path inside the output"),
        ("C:/dubs/a.mp4", "is absolute"),
        ("superseded/a.mp4", "superseded/ is the pipeline's own folder"),
        ("es/superseded/a.mp4", "superseded/ is the pipeline's own folder"),
        ("segments/a.mp4", "segments/ is the pipeline's own folder"),
        (".hidden/a.mp4", "'.hidden' starts with a dot"),
        ("a.mov", "must name an .mp4 file"),
        ("{colour}.mp4", "unknown field {colour} (allowed: {id}, {name}, {lang}, {stem})"),
        ("{lang}.mp4", "this job has no {lang} (only jobs under `dubs` do)"),
        ("{id.mp4", "write a literal brace as {{ or }}"),
    ],
)
def test_an_output_that_leaves_the_folder_or_breaks_a_rule_is_refused(
    tmp_path: Path, output: str, expected: str
) -> None:
    job = f"{{id: a, video: x.mp4, audio: y.wav, output: {json.dumps(output)}}}"
    found = problems(tmp_path, f"version: 1\njobs: [{job}]\n")
    assert len(found) == 1
    assert found[0].startswith("job 'a' field 'output': "), found
    assert expected in found[0]


def test_a_bad_pattern_is_said_once_and_a_pattern_field_a_job_lacks_names_the_job(
    tmp_path: Path,
) -> None:
    jobs = "".join(f"  - {{id: j{i}, video: x.mp4, audio: y{i}.wav}}\n" for i in range(5))
    found = problems(tmp_path, f"version: 1\noutput_pattern: ../{{id}}.mp4\njobs:\n{jobs}")
    assert found == [
        "manifest field 'output_pattern': '../id.mp4' leaves the output folder (..): give a"
        " path inside it"
    ]
    found = problems(tmp_path, f"version: 1\noutput_pattern: '{{lang}}/{{id}}.mp4'\njobs:\n{jobs}")
    assert len(found) == 5
    assert found[0].startswith("job 'j0' field 'output_pattern': '{lang}/{id}.mp4': this job")


def test_two_jobs_on_one_output_are_refused_naming_both(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
version: 1
jobs:
  - {id: a, video: x.mp4, audio: a.wav, output: es/intro.mp4}
  - {id: b, video: x.mp4, audio: b.wav, output: ES/Intro.mp4}
  - {id: c, video: x.mp4, audio: c.wav, output: d.mp4}
  - {id: d, video: x.mp4, audio: d.wav}
  - {id: e, video: x.mp4, audio: e.wav, output: f.mp4/e.mp4}
  - {id: f, video: x.mp4, audio: f.wav, output: f.mp4}
""",
    )
    assert found == [
        "job 'b' field 'output': ES/Intro.mp4 is also the result of job 'a': two jobs cannot"
        " share one output; give one of them another `output`",
        "job 'd' field 'output': d.mp4 is also the result of job 'c': two jobs cannot share"
        " one output; give one of them another `output`",
        "job 'f' field 'output': f.mp4 is a folder of job 'e''s output f.mp4/e.mp4: one of"
        " them needs another path",
    ]


@pytest.mark.anyio
async def test_results_land_in_nested_folders_and_a_changed_path_moves_them_unpaid(
    tmp_path: Path,
) -> None:
    manifest = project(tmp_path, PATTERNED)
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        first = await run_once(sim, manifest, out)
        assert first.exit_code is ExitCode.OK
        paid = len(sim.ledger.generations)
        assert paid == 5
        made = {
            p.relative_to(out).as_posix(): sha256(p)
            for p in out.rglob("*.mp4")
            if ".thumbs" not in p.parts
        }
        assert set(made) == {
            "es/intro.mp4",
            "de/intro.mp4",
            "es/promo.mp4",
            "ja/promo-promo.mp4",
            "remix/remix.mp4",
        }
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        outputs = {job["id"]: job["output"] for job in report["jobs"]}
        assert outputs["intro-es"] == str(out / "es" / "intro.mp4")
        page = Page.parse((out / "report.html").read_text(encoding="utf-8"))
        targets = page.local_targets(out)
        assert out / "es" / "promo.mp4" in targets
        assert all(t.is_file() for t in targets)

        # the pattern changes: every done result moves to its new path; nothing is paid,
        # nothing downloaded again, and the folders left empty go
        text = PATTERNED.replace("{lang}/{name}.mp4", "by-name/{name}-{lang}.mp4")
        text = text.replace('"ja/promo-{stem}.mp4"', '"{lang}/{id}.mp4"')
        manifest.write_text(text, encoding="utf-8")
        store = StateStore.read_only(out / STATE_NAME)
        try:  # what `run --dry-run` says
            steps = forecast(preflight(load_all(manifest)), store.jobs(archived=True), out)
        finally:
            store.close()
        assert {s.job_id: (s.action, s.detail) for s in steps}["intro-es"] == (
            "skip",
            f"done; its file moves to {out / 'by-name' / 'intro-es.mp4'}",
        )
        transfers = len(sim.ledger.transfers)
        second = await run_once(sim, manifest, out)
        assert second.exit_code is ExitCode.OK
        assert len(sim.ledger.generations) == paid
        assert len(sim.ledger.transfers) == transfers
        assert second.credits_this_run == 0
        moved = {
            "by-name/intro-es.mp4": made["es/intro.mp4"],
            "by-name/intro-de.mp4": made["de/intro.mp4"],
            "by-name/promo-es.mp4": made["es/promo.mp4"],
            "ja/promo-ja.mp4": made["ja/promo-promo.mp4"],
            "remix/remix.mp4": made["remix/remix.mp4"],
        }
        assert {
            p.relative_to(out).as_posix(): sha256(p)
            for p in out.rglob("*.mp4")
            if ".thumbs" not in p.parts
        } == moved
        assert not (out / "es").exists()
        assert not (out / "de").exists()
        assert records(out)["intro-es"] == str(out / "by-name" / "intro-es.mp4")

        # two jobs swap their outputs: each file follows its own job
        swapped = text.replace(
            'output: "remix/{id}.mp4"', 'output: "by-name/intro-es.mp4"'
        ).replace(
            "es: {audio: media/intro_es.mp3}",
            "es: {audio: media/intro_es.mp3, output: remix/remix.mp4}",
        )
        manifest.write_text(swapped, encoding="utf-8")
        third = await run_once(sim, manifest, out)
        assert third.exit_code is ExitCode.OK
        assert len(sim.ledger.generations) == paid
        assert len(sim.ledger.transfers) == transfers
    assert sha256(out / "remix" / "remix.mp4") == made["es/intro.mp4"]
    assert sha256(out / "by-name" / "intro-es.mp4") == made["remix/remix.mp4"]
    assert not (out / "superseded").exists()  # nothing was in the way of anything
    assert records(out)["remix"] == str(out / "by-name" / "intro-es.mp4")


@pytest.mark.anyio
async def test_failed_yaml_keeps_each_jobs_output(tmp_path: Path) -> None:
    manifest = project(
        tmp_path,
        """
version: 1
output_pattern: "{lang}/{name}.mp4"
jobs:
  - id: promo
    video: media/promo.mov
    dubs:
      es: {audio: media/promo_es.wav}
      de: {audio: media/remix_de.wav}
  - {id: solo, video: media/intro.mp4, audio: media/remix_de.wav, output: solo/x.mp4}
""",
    )
    out = tmp_path / "out"
    async with serve(fast_sim(moderated_filenames=frozenset({"remix_de.wav"}))) as sim:
        outcome = await run_once(sim, manifest, out)
    assert outcome.exit_code is ExitCode.JOBS_FAILED
    document = yaml.safe_load((out / FAILED_NAME).read_text(encoding="utf-8"))
    assert document["jobs"] == [
        {
            "id": "promo",
            "video": "../media/promo.mov",
            "dubs": {"de": {"audio": "../media/remix_de.wav", "output": "de/promo.mp4"}},
        },
        {
            "id": "solo",
            "video": "../media/intro.mp4",
            "audio": "../media/remix_de.wav",
            "output": "solo/x.mp4",
        },
    ]
    assert {j.output for j in load_manifest(out / FAILED_NAME).jobs} == {
        "de/promo.mp4",
        "solo/x.mp4",
    }


@pytest.mark.anyio
async def test_a_long_job_is_stitched_at_its_output_and_moved_when_it_changes(
    tmp_path: Path,
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    make_video(media / "talk.mp4", seconds=35, width=64, height=36, fps=5, audio=False)
    make_audio(media / "talk_es.mp3", seconds=35, pauses=((20.0, 20.6),))
    manifest = tmp_path / "m.yaml"
    text = "version: 1\njobs:\n  - {id: talk-es, video: media/talk.mp4, audio: media/talk_es.mp3,"
    manifest.write_text(text + " output: es/talk.mp4}\n", encoding="utf-8")
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        first = await run_once(sim, manifest, out)
        assert first.exit_code is ExitCode.OK
        paid = len(sim.ledger.generations)
        assert paid == 2  # two segments
        stitched = sha256(out / "es" / "talk.mp4")
        assert not (out / "talk-es.mp4").exists()
        manifest.write_text(text + " output: talks/es.mp4}\n", encoding="utf-8")
        second = await run_once(sim, manifest, out)
        assert second.exit_code is ExitCode.OK
        assert len(sim.ledger.generations) == paid
    assert sha256(out / "talks" / "es.mp4") == stitched  # moved, not stitched again
    assert not (out / "es").exists()
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["jobs"][0]["output"] == str(out / "talks" / "es.mp4")


@pytest.mark.parametrize(
    ("change", "nth"),
    [
        ("version: 1\noutput_pattern: 'done/{id}.mp4'\n", 1),  # moved, not yet recorded
        ("version: 1\noutput_pattern: 'done/{id}.mp4'\n", 2),
        ("swap", 1),  # the first of two swapped files at its staging name
        ("swap", 3),  # one at its new path, the other still staged
    ],
)
def test_a_run_killed_while_moving_results_loses_and_pays_nothing(
    tmp_path: Path, change: str, nth: int
) -> None:
    manifest = project(tmp_path, tts_manifest(2))
    out = tmp_path / "out"
    with sim_in_thread(fast_sim()) as sim:
        env = env_for(sim)

        def run(*command: str) -> int:
            done = subprocess.run(
                command, env=env, cwd="/", capture_output=True, timeout=120, check=False
            )
            return done.returncode

        assert run(*pipeline_cmd(*run_args(manifest, out))) == 0
        made = {i: sha256(out / f"job-{i}.mp4") for i in (0, 1)}
        paid, transfers = len(sim.ledger.generations), len(sim.ledger.transfers)
        text = tts_manifest(2)
        if change == "swap":
            text = text.replace("'line 0'}", "'line 0'}, output: job-1.mp4").replace(
                "'line 1'}", "'line 1'}, output: job-0.mp4"
            )
            wanted = {0: out / "job-1.mp4", 1: out / "job-0.mp4"}
        else:
            text = text.replace("version: 1\n", change)
            wanted = {i: out / "done" / f"job-{i}.mp4" for i in (0, 1)}
        manifest.write_text(text, encoding="utf-8")
        assert run(*crashpoint_cmd("take-over", nth, *run_args(manifest, out))) == -9
        assert run(*pipeline_cmd(*run_args(manifest, out))) == 0
        assert (len(sim.ledger.generations), len(sim.ledger.transfers)) == (paid, transfers)
    assert {i: sha256(path) for i, path in wanted.items()} == made
    assert records(out) == {f"job-{i}": str(path) for i, path in wanted.items()}
    assert not (out / "superseded").exists()


CHAIN = """
version: 1
jobs:
  - {{id: a, video: media/intro.mp4, audio: media/intro_es.mp3, output: {a}}}
  - {{id: b, video: media/intro.mp4, audio: media/intro_de.wav, output: {b}}}
  - {{id: c, video: media/intro.mp4, tts: {{text: hola, speaker: "1"}}, output: {c}}}
"""


@pytest.mark.anyio
async def test_no_move_lands_on_the_result_of_a_job_left_out_by_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """a -> b's path and c -> a's path, with b left out (`--only a,c`): a's move would push
    b's result aside, so a stays, and so does c, whose path is a's still; every record names
    its own file, the forecast says so, and the run with b finishes the moves, paying and
    downloading nothing."""
    manifest = project(tmp_path, CHAIN.format(a="x/a.mp4", b="y/b.mp4", c="z/c.mp4"))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        assert (await run_once(sim, manifest, out)).exit_code is ExitCode.OK
        made = {i: sha256(Path(str(path))) for i, path in records(out).items()}
        paid, transfers = len(sim.ledger.generations), len(sim.ledger.transfers)
        manifest.write_text(CHAIN.format(a="y/b.mp4", b="q/b.mp4", c="x/a.mp4"), "utf-8")
        assert main(["run", str(manifest), "--dry-run", "--only", "a,c"]) == 0
        forecast_lines = capsys.readouterr().out.splitlines()
        only = await run_once(sim, manifest, out, only=("a", "c"))
        left = records(out)
        kept = {i: sha256(Path(str(path))) for i, path in left.items()}
        everything = await run_once(sim, manifest, out)
        assert (len(sim.ledger.generations), len(sim.ledger.transfers)) == (paid, transfers)
    assert only.exit_code is ExitCode.OK
    assert left == {
        i: str(out / p) for i, p in (("a", "x/a.mp4"), ("b", "y/b.mp4"), ("c", "z/c.mp4"))
    }
    assert kept == made
    assert forecast_lines[0].startswith("a ")
    assert f"its file stays at {out / 'x' / 'a.mp4'}" in forecast_lines[0]
    assert everything.exit_code is ExitCode.OK
    wanted = {"a": out / "y" / "b.mp4", "b": out / "q" / "b.mp4", "c": out / "x" / "a.mp4"}
    assert records(out) == {i: str(path) for i, path in wanted.items()}
    assert {i: sha256(path) for i, path in wanted.items()} == made
    assert not list(out.rglob("superseded"))


def test_validate_lists_each_jobs_output_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project(tmp_path, PATTERNED)
    assert main(["validate", str(manifest), "--out", str(tmp_path / "o")]) == 0
    lines = capsys.readouterr().out.splitlines()
    line = next(x for x in lines if x.startswith("  promo-ja "))
    assert line.endswith(f"4 credits  -> {tmp_path / 'o' / 'ja' / 'promo-promo.mp4'}"), line
    assert "video media/promo.mov + tts 'こんにちは' (speaker 1)" in line
    assert main(["validate", str(manifest), "--json"]) == 0
    listed = {j["id"]: j for j in json.loads(capsys.readouterr().out)["job_list"]}
    assert listed["intro-de"] == {
        "id": "intro-de",
        "where": "jobs[0].dubs.de",
        "video": "media/intro.mp4",
        "audio": "media/intro_de.wav",
        "credits": listed["intro-de"]["credits"],
        "output": str(tmp_path / "out" / "de" / "intro.mp4"),
        "long": False,
    }
    assert listed["intro-de"]["credits"] > 0
