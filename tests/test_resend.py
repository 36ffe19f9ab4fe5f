"""When a paid submission is re-sent, with which trace id, and with which key (issue 5).

Each test sets up the moment a run died or a reply went missing, against the real simulator,
then resumes with the real runner: the ledger says what was paid for.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import anyio
import pytest
from aiohttp import web

from pipeline.cli import main
from pipeline.client import key_fingerprint
from pipeline.jobstate import JobState
from pipeline.manifest import load_manifest
from pipeline.plan import fingerprint
from pipeline.preflight import preflight
from pipeline.runner import ExitCode
from pipeline.simulator import Simulator, serve
from pipeline.simulator.envelope import OVERLOADED, envelope
from pipeline.simulator.state import STATE
from pipeline.state import JobRecord, StateStore
from pipeline.submit import BootTime, boot_time, resend_wait
from tests.gateway_proxy import Call, Forward, gateway_proxy
from tests.gateway_proxy import envelope as proxy_envelope
from tests.harness import STATE_NAME, fast_sim, project, run_once
from tests.test_review_findings import finish_running, generations_for, tts_jobs

pytestmark = pytest.mark.anyio

GENERATE = "/openapi/v2/video/lip_sync/generate"
KNOWN_VIDEO = 391504857968062  # the simulator's "generated earlier" video: no upload needed
TWO_JOBS = f"""version: 1
jobs:
  - {{id: a, video_id: {KNOWN_VIDEO}, tts: {{text: "line a", speaker: "1"}}}}
  - {{id: b, video_id: {KNOWN_VIDEO}, tts: {{text: "line b", speaker: "1"}}}}
"""
BODY_A = {
    "source_video_id": KNOWN_VIDEO,
    "lip_sync_tts_speaker_id": "1",
    "lip_sync_tts_content": "line a",
}


def crashed_while_sending(
    manifest: Path, out: Path, trace_id: str, *, sent_at: float, resend_after: float, key: str
) -> None:
    """The state a run leaves when it died after job `a`'s send left, before the reply."""
    checked = preflight(load_manifest(manifest))
    store = StateStore.open(out / STATE_NAME)
    try:
        for job in checked.manifest.jobs:
            store.add_job(job.id, fingerprint(job, checked.media))
        store.transition("a", JobState.SUBMITTING, "intent", trace_id=trace_id)
        store.update(
            "a", "sent", sent_at=sent_at, resend_after=resend_after, key_fp=key_fingerprint(key)
        )
    finally:
        store.close()


async def send_directly(sim: Simulator, trace_id: str, key: str = "sim-key") -> dict[str, object]:
    """The dead run's generate request, still in flight at the server."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            sim.url + GENERATE,
            json=BODY_A,
            headers={"API-KEY": key, "Ai-trace-id": trace_id},
        ) as response,
    ):
        reply: dict[str, object] = await response.json()
        return reply


async def test_a_resend_waits_until_the_first_send_can_no_longer_be_in_processing(
    tmp_path: Path,
) -> None:
    """Issue 5, section 1: the first send is still being processed (its reply takes 1 s) when
    the run resumes. Re-sending at once is a new request to a gateway that caches a reply only
    when the request finishes: a second paid generation. The resumed run must wait for the
    send's deadline, and meanwhile let other jobs use the slots."""
    manifest = project(tmp_path, TWO_JOBS)
    out = tmp_path / "out"
    config = fast_sim(concurrency_limit=2, generate_reply_seconds=1.0 / 0.005)  # 1 s real
    async with serve(config) as sim, anyio.create_task_group() as tg:
        tg.start_soon(send_directly, sim, "trace-a")
        with anyio.fail_after(5):
            while not sim.ledger.generations:  # noqa: ASYNC110 (the first send has started)
                await anyio.sleep(0.01)
        now = time.time()
        crashed_while_sending(
            manifest, out, "trace-a", sent_at=now, resend_after=now + 1.5, key="sim-key"
        )
        outcome = await run_once(sim, manifest, out, concurrency=2)
    assert outcome.exit_code is ExitCode.OK
    assert len(sim.ledger.generations) == 2  # a once (the first send), b once
    resends = [r for r in sim.ledger.requests_to(GENERATE) if r.trace_id == "trace-a"]
    assert len(resends) == 2
    assert resends[1].replayed  # the re-send came after the first finished: its replay
    assert resends[1].at >= resends[0].at + 1.0
    b = next(r for r in sim.ledger.requests_to(GENERATE) if r.trace_id != "trace-a")
    assert b.at < resends[1].at  # b did not wait behind a's deadline
    rows = {r.id: r for r in outcome.rows}
    assert rows["a"].ambiguous_submissions == 1


async def test_a_busy_reply_pinned_to_a_trace_id_is_rotated_after_the_deadline(
    tmp_path: Path,
) -> None:
    """Issue 5, 2.2: the gateway cached "busy" (500069) as the first reply to a trace id that
    had been sent without reply. Keeping that id replays 500069 for a day: 0 generations, exit
    75 on every run. A busy reply to a send made after the deadline is the gateway's: after a
    few in a row lasting `busy_pinned_after` within a run (a proxy's passing "busy" does not
    last; see test_review_findings R2) the id is replaced. The first run here keeps the id
    (its busy replies come quicker than that); the second replaces it."""
    manifest = project(tmp_path, TWO_JOBS)
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        # what the gateway stored for the lost send: its own 500069
        ttl = sim.config.real_seconds(sim.config.reply_cache_seconds)
        sim.app[STATE].replies.put("sim-key", "pinned", envelope(OVERLOADED, "overloaded"), ttl)
        now = time.time()
        crashed_while_sending(
            manifest, out, "pinned", sent_at=now - 60, resend_after=now - 27, key="sim-key"
        )
        first = await run_once(sim, manifest, out, busy_pinned_after=30.0)
        assert first.exit_code is ExitCode.UNFINISHED  # 4 quick busy replies: kept, for now
        outcome = await run_once(sim, manifest, out, busy_pinned_after=0.0)
    assert outcome.exit_code is ExitCode.OK
    assert len(sim.ledger.generations) == 2
    pinned = [r for r in sim.ledger.requests_to(GENERATE) if r.trace_id == "pinned"]
    assert len(pinned) == 4 + 3  # all four tries of run 1, three of run 2, then a new id
    assert all(r.err_code == OVERLOADED for r in pinned)


async def test_a_submission_is_only_ever_resent_with_the_key_that_sent_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 5, 2.8: the gateway's replay is per key. The same trace id under another key is
    a new paid generation; a video of one account is 500008 to another. A run with another
    key leaves such jobs alone, says whose they are, and the right key finishes them."""
    manifest = project(tmp_path, TWO_JOBS)
    out = tmp_path / "out"
    async with serve(fast_sim(api_keys=frozenset({"key-one", "key-two"}))) as sim:
        reply = await send_directly(sim, "trace-a", key="key-one")  # processed, reply lost
        assert reply["ErrCode"] == 0
        now = time.time()
        crashed_while_sending(
            manifest, out, "trace-a", sent_at=now - 60, resend_after=now - 27, key="key-one"
        )
        other = await run_once(sim, manifest, out, api_key="key-two")
        assert other.exit_code is ExitCode.UNFINISHED
        rows = {r.id: r for r in other.rows}
        assert rows["a"].state == "unfinished:submitting"
        assert rows["a"].error is not None
        assert key_fingerprint("key-one") in rows["a"].error
        assert "key-one" not in rows["a"].error
        assert rows["b"].state == "done"
        sent_with_two = [r for r in sim.ledger.requests_to(GENERATE) if r.trace_id == "trace-a"]
        assert len(sent_with_two) == 1  # only the original send: key two never re-sent it
        mine = await run_once(sim, manifest, out, api_key="key-one")
    assert mine.exit_code is ExitCode.OK
    assert len(sim.ledger.generations) == 2  # a once (replayed to key one), b once
    assert sim.ledger.duplicate_bodies() == []


async def test_a_generating_job_of_another_key_is_not_polled_into_a_500008(
    tmp_path: Path,
) -> None:
    manifest = project(tmp_path, TWO_JOBS)
    out = tmp_path / "out"
    config = fast_sim(api_keys=frozenset({"key-one", "key-two"}), generation_seconds=1e6)
    async with serve(config) as sim:
        first = await run_once(sim, manifest, out, api_key="key-one", max_wait=0.1)
        assert {r.state for r in first.rows} == {"unfinished:generating"}
        polls_before = len(sim.ledger.requests_to("/openapi/v2/video/result"))
        other = await run_once(sim, manifest, out, api_key="key-two", max_wait=0.1)
        assert len(sim.ledger.requests_to("/openapi/v2/video/result")) == polls_before
        assert {r.state for r in other.rows} == {"unfinished:generating"}
        assert all(r.err_code != 500008 for r in sim.ledger.requests)
        state = sim.app[STATE]
        for generation in state.backend.account("key-one").running:
            generation.ends_at = state.clock()  # the two generations finish now
        done = await run_once(sim, manifest, out, api_key="key-one")
    assert done.exit_code is ExitCode.OK
    assert len(sim.ledger.generations) == 2


async def test_a_replayed_submission_counts_its_slot_time_from_the_first_send(
    tmp_path: Path,
) -> None:
    """Issue 5 (found by reading): the 10-minute slot release counted from the time of the
    replayed reply, so a resumed run held a slot the account had freed long ago. It counts from
    the trace id's first send (refined by the server's create_time)."""
    manifest = project(tmp_path, TWO_JOBS)
    out = tmp_path / "out"
    async with serve(fast_sim(generation_seconds=1e6)) as sim:
        reply = await send_directly(sim, "trace-a")  # processed; the run died before the reply
        assert reply["ErrCode"] == 0
        first_send = time.time() - 3.0  # the dead run's send left three seconds ago
        crashed_while_sending(
            manifest,
            out,
            "trace-a",
            sent_at=first_send,
            resend_after=first_send + 2.2,
            key="sim-key",
        )
        await run_once(sim, manifest, out, max_wait=0.1)
    store = StateStore.read_only(out / STATE_NAME)
    try:
        record = store.job("a")
    finally:
        store.close()
    assert record.video_id == reply["Resp"]["video_id"]  # type: ignore[index]
    assert record.submitted_at is not None
    assert abs(record.submitted_at - first_send) < 0.5


def unanswered(
    resend_after: float, resend_after_boot: float | None, boot_id: str | None
) -> JobRecord:
    return JobRecord(
        id="a",
        fingerprint="fp",
        state=JobState.SUBMITTING,
        attempts=0,
        trace_id="t",
        video_id=None,
        credits=0,
        last_credits=0,
        output=None,
        bytes=None,
        error=None,
        ambiguous=1,
        submitted_at=None,
        updated_at=0.0,
        sent_at=resend_after - 33,
        resend_after=resend_after,
        trace_ambiguous=True,
        key_fp=None,
        busy_since=None,
        resend_after_boot=resend_after_boot,
        boot_id=boot_id,
    )


@pytest.mark.parametrize(
    ("record", "wall", "boot", "wait"),
    [
        # the same boot: the later of the two deadlines (a wall clock stepped an hour forward)
        (unanswered(1000.0, 533.0, "b1"), 4600.0, BootTime("b1", 510.0), 23.0),
        # a wall clock stepped back: its deadline is still kept
        (unanswered(1000.0, 533.0, "b1"), 990.0, BootTime("b1", 600.0), 10.0),
        (unanswered(1000.0, 533.0, "b1"), 1001.0, BootTime("b1", 534.0), -1.0),  # both passed
        # another boot: only the wall clock is known
        (unanswered(1000.0, 533.0, "b1"), 990.0, BootTime("b2", 5.0), 10.0),
        (unanswered(1000.0, 533.0, "b1"), 4600.0, BootTime("b2", 5.0), -3600.0),
        # a record from before migration 0010, or a machine without CLOCK_BOOTTIME
        (unanswered(1000.0, None, None), 990.0, BootTime("b1", 5.0), 10.0),
        (unanswered(1000.0, 533.0, "b1"), 4600.0, None, -3600.0),
        (replace(unanswered(1000.0, 533.0, "b1"), resend_after=None), 0.0, None, 0.0),  # replied
    ],
)
def test_the_resend_deadline_must_pass_on_the_wall_clock_and_the_boots_clock(
    record: JobRecord, wall: float, boot: BootTime | None, wait: float
) -> None:
    """Review 4, F4: within the boot that sent, CLOCK_BOOTTIME (never stepped) and the wall
    clock must both have passed the deadline; after a reboot only the wall clock is left."""
    assert resend_wait(record, wall, boot) == wait


def test_this_machine_has_a_boot_clock() -> None:
    """Linux (the project's machines): CLOCK_BOOTTIME and a boot id, stable within a run."""
    first, second = boot_time(), boot_time()
    assert first is not None
    assert second is not None
    assert first.boot_id == second.boot_id
    assert len(first.boot_id) == 36
    assert second.seconds >= first.seconds > 0


# Sends set aside unanswered (review 4, F1) ----------------------------------------------------


async def every_generate_lost(call: Call, forward: Forward) -> web.Response:
    """The gateway processes every generate; a proxy in front loses every reply."""
    if call.path == GENERATE:
        await forward()
        return web.Response(status=502, text="<html>Bad Gateway</html>", content_type="text/html")
    return await forward()


async def left_unanswered(sim: Simulator, manifest: Path, out: Path) -> str:
    """A run behind a proxy that loses every generate reply: job `a`'s send ends ambiguous.
    Returns its trace id."""
    async with gateway_proxy(sim.url, every_generate_lost) as proxy:
        first = await run_once(sim, manifest, out, base_url=proxy.url, request_timeout=0.3)
    assert [r.state for r in first.rows] == ["unfinished:submitting"]
    return next(c.trace_id for c in proxy.seen if c.path == GENERATE)


def archived_records(out: Path) -> list[JobRecord]:
    store = StateStore.open(out / STATE_NAME)
    try:
        return [r for r in store.jobs(archived=True) if r.archived]
    finally:
        store.close()


async def test_a_send_set_aside_whose_first_send_was_refused_ends_without_paying(
    tmp_path: Path,
) -> None:
    """Job `a`'s first send meets a full account (500044) and every reply is lost, so run 1
    ends with its trace id ambiguous; then its script is edited. Run 2 re-sends the set-aside
    id after its deadline: the reply is the replay of the first, definitive: nothing was
    paid. The record ends there; no other trace id is ever sent for the old script."""
    manifest = project(tmp_path, tts_jobs({"a": "old line"}))
    out = tmp_path / "out"
    async with serve(fast_sim(concurrency_limit=1, generation_seconds=1e6)) as sim:
        await send_directly(sim, "someone-else")  # holds the account's only slot
        sim.config.generation_seconds = 20.0  # for the generations to come
        aside = await left_unanswered(sim, manifest, out)
        finish_running(sim)  # the other generation ends: the slot is free again
        manifest.write_text(tts_jobs({"a": "new line"}), encoding="utf-8")
        before = len(sim.ledger.requests_to(GENERATE))
        second = await run_once(sim, manifest, out)
        run_2 = sim.ledger.requests_to(GENERATE)[before:]
        paid_old = generations_for(sim, "old line")
    assert [r.state for r in second.rows] == ["done"]
    assert paid_old == 0
    [archived] = archived_records(out)
    assert (archived.id, archived.state, archived.err_code) == ("a@1", JobState.FAILED, 500044)
    assert "nothing paid" in str(archived.error)
    resent = [r for r in run_2 if r.trace_id == aside]
    assert [(r.replayed, r.err_code) for r in resent] == [(True, 500044)]
    assert {r.trace_id for r in run_2} == {aside, second.rows[0].trace_ids[-1]}
    report = json.loads((out / "report.json").read_text())
    assert report["problems"] == []


async def test_a_send_set_aside_on_a_gateway_that_stopped_replaying_is_parked(
    tmp_path: Path,
) -> None:
    """Run 1 leaves `a`'s send ambiguous on a replaying gateway; its script is edited, and by
    run 2 the gateway no longer replays (the probe says so): a re-send could pay twice, so the
    set-aside send is parked as unconfirmed, never re-sent, and the report says so."""
    manifest = project(tmp_path, tts_jobs({"a": "old line"}))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        aside = await left_unanswered(sim, manifest, out)
        manifest.write_text(tts_jobs({"a": "new line"}), encoding="utf-8")
        sim.config.reply_cache = False
        before = len(sim.ledger.requests_to(GENERATE))
        second = await run_once(sim, manifest, out)
        run_2 = sim.ledger.requests_to(GENERATE)[before:]
        paid_old = generations_for(sim, "old line")
    assert [r.state for r in second.rows] == ["done"]
    assert paid_old == 1  # run 1's, never a second
    assert aside not in {r.trace_id for r in run_2}
    [archived] = archived_records(out)
    assert archived.state is JobState.UNCONFIRMED
    assert "set aside, nothing more is sent" in str(archived.error)
    problems = json.loads((out / "report.json").read_text())["problems"]
    assert [p.split(":")[0] for p in problems] == ["a@1"]
    assert aside in problems[0]


async def test_a_send_set_aside_by_redo_and_still_unanswered_is_reported_then_resolved(
    tmp_path: Path,
) -> None:
    """`--redo a` while `a`'s send is ambiguous: the set-aside send is re-sent in that run
    too, but its replies are still lost, so the report's problems name it (trace id, the
    next run re-sends it). The next run gets the replay: the first video is fetched into
    superseded/, and the redo's own generation is the job's result."""
    manifest = project(tmp_path, tts_jobs({"a": "line a"}))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        aside = await left_unanswered(sim, manifest, out)
        async with gateway_proxy(sim.url, every_generate_lost) as proxy:
            await run_once(
                sim, manifest, out, base_url=proxy.url, request_timeout=0.3, redo=frozenset("a")
            )
        problems = json.loads((out / "report.json").read_text())["problems"]
        third = await run_once(sim, manifest, out)
        paid = sorted(g.video_id for g in sim.ledger.generations.values())
        served = set(sim.ledger.served_downloads)
    assert len(problems) == 1
    assert problems[0].startswith("a@1: a submission set aside unanswered")
    assert aside in problems[0]
    assert "the next run re-sends it" in problems[0]
    assert [r.state for r in third.rows] == ["done"]
    assert len(paid) == 2  # the first send's and the redo's: each once
    [archived] = archived_records(out)
    assert (archived.state, archived.trace_id) == (JobState.DONE, aside)
    assert archived.output == str(out / "superseded" / "a@1.mp4")
    assert {archived.video_id, third.rows[0].video_id} == set(paid) == served
    assert json.loads((out / "report.json").read_text())["problems"] == []


async def test_a_set_aside_send_pinned_to_busy_ends_without_a_new_trace_id(tmp_path: Path) -> None:
    """Run 1's sends of job `a` never reach the gateway, but a proxy's 502 pages leave them
    ambiguous to us; then the script is edited. In run 2 the set-aside id is answered "busy"
    again and again: the gateway's pinned first reply (it stored "busy" for that id). A job
    would take a new trace id now; a record no job wants never does: it ends, nothing having
    been paid, and the only generate requests of run 2 are its id and the new job's."""
    manifest = project(tmp_path, tts_jobs({"a": "old line"}))
    out = tmp_path / "out"
    aside: list[str] = []

    async def lost_on_the_way(call: Call, forward: Forward) -> web.Response:
        if call.path == GENERATE:
            return web.Response(status=502, text="<html>Bad Gateway</html>")
        return await forward()

    async def pinned_busy(call: Call, forward: Forward) -> web.Response:
        if call.path == GENERATE and call.trace_id in aside:
            return proxy_envelope(OVERLOADED, "system overloaded", status=500)
        return await forward()

    async with serve(fast_sim()) as sim:
        async with gateway_proxy(sim.url, lost_on_the_way) as proxy:
            await run_once(sim, manifest, out, base_url=proxy.url, request_timeout=0.3)
        aside.append(next(c.trace_id for c in proxy.seen if c.path == GENERATE))
        manifest.write_text(tts_jobs({"a": "new line"}), encoding="utf-8")
        async with gateway_proxy(sim.url, pinned_busy) as proxy:
            second = await run_once(sim, manifest, out, base_url=proxy.url, busy_pinned_after=0.0)
        run_2 = {c.trace_id for c in proxy.seen if c.path == GENERATE}
        paid_old = generations_for(sim, "old line")
    assert [r.state for r in second.rows] == ["done"]
    assert paid_old == 0
    [archived] = archived_records(out)
    assert (archived.state, archived.trace_id) == (JobState.FAILED, aside[0])
    assert "definitive busy reply" in str(archived.error)
    assert run_2 == {aside[0], second.rows[0].trace_ids[-1]}


async def test_a_send_that_waited_at_the_overload_gate_arrives_before_its_deadline(
    tmp_path: Path,
) -> None:
    """Job `a`'s first send is answered 429 with Retry-After 3 s: its next send waits at the
    client's overload gate. The deadline written before a send must count from when the
    request really leaves: when the request reaches the server, the recorded `resend_after`
    is still ahead (had it been written before the wait, it would be 0.8 s behind, and a
    crash there would let the next run re-send into a send still in processing)."""
    manifest = project(tmp_path, tts_jobs({"a": "line a"}))
    out = tmp_path / "out"
    ahead: list[float] = []

    async def rate_limited_first(call: Call, forward: Forward) -> web.Response:
        if call.path == GENERATE and call.number == 1:
            return web.json_response(
                {"ErrCode": OVERLOADED, "ErrMsg": "too many requests", "Resp": None},
                status=429,
                headers={"Retry-After": "3"},
            )
        if call.path == GENERATE:
            reader = StateStore.read_only(out / STATE_NAME)
            try:
                deadline = reader.job("a").resend_after
            finally:
                reader.close()
            assert deadline is not None
            ahead.append(deadline - time.time())
        return await forward()

    async with serve(fast_sim()) as sim, gateway_proxy(sim.url, rate_limited_first) as proxy:
        outcome = await run_once(sim, manifest, out, base_url=proxy.url)
        paid = generations_for(sim, "line a")
    assert [r.state for r in outcome.rows] == ["done"]
    assert paid == 1
    assert len(ahead) == 1
    assert ahead[0] > 0, f"the send arrived {-ahead[0]:.1f} s after its own deadline"


async def test_status_and_dry_run_show_a_send_set_aside_and_still_unanswered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Job `a`'s send is lost (run 1), its script is edited, and in run 2 the new send lands
    while the set-aside one's replies are lost again: `a` is done, but `a@1` may still hold a
    paid video. `status` names it and exits 75 (a run still has work), and `--dry-run` says
    the next run re-sends it as it was; neither sends anything."""
    manifest = project(tmp_path, tts_jobs({"a": "old line"}))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        aside = await left_unanswered(sim, manifest, out)
        manifest.write_text(tts_jobs({"a": "new line"}), encoding="utf-8")

        async def lose_the_old_one(call: Call, forward: Forward) -> web.Response:
            if call.path == GENERATE and call.trace_id == aside:
                return await every_generate_lost(call, forward)
            return await forward()

        async with gateway_proxy(sim.url, lose_the_old_one) as proxy:
            second = await run_once(sim, manifest, out, base_url=proxy.url, request_timeout=0.3)
        assert [r.state for r in second.rows] == ["done"]
        [archived] = archived_records(out)
        assert (archived.state, archived.trace_id) == (JobState.SUBMITTING, aside)
        capsys.readouterr()
        before = len(sim.ledger.requests)
        status = await anyio.to_thread.run_sync(main, ["status", str(manifest), "--out", str(out)])
        shown = capsys.readouterr().out
        planned = await anyio.to_thread.run_sync(
            main, ["run", str(manifest), "--out", str(out), "--dry-run"]
        )
        forecast = capsys.readouterr().out
        status_json = await anyio.to_thread.run_sync(main, ["status", "--out", str(out), "--json"])
        document = json.loads(capsys.readouterr().out)
        assert len(sim.ledger.requests) == before  # nothing sent
    assert status == status_json == ExitCode.UNFINISHED
    [line] = [x for x in shown.splitlines() if x.startswith("a@1")]
    assert aside in line
    assert "re-sends it" in line
    assert planned == ExitCode.OK
    [step] = [x for x in forecast.splitlines() if x.startswith("a@1")]
    assert "confirm" in step
    assert aside in step
    assert [r["id"] for r in document["set_aside"]] == ["a@1"]


async def test_dry_run_says_an_edited_jobs_unanswered_send_is_set_aside_and_re_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run 1 leaves `a`'s send unanswered; its script is edited. The forecast says that the
    new script is submitted and the old send is set aside and re-sent as it was, each with
    what it may cost (the re-send pays only if the first never arrived)."""
    manifest = project(tmp_path, tts_jobs({"a": "old line"}))
    out = tmp_path / "out"
    async with serve(fast_sim()) as sim:
        aside = await left_unanswered(sim, manifest, out)
    manifest.write_text(tts_jobs({"a": "new line"}), encoding="utf-8")
    capsys.readouterr()
    assert main(["run", str(manifest), "--out", str(out), "--dry-run"]) == ExitCode.OK
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("a ")]
    assert "resubmit" in line
    assert aside in line
    assert "re-send it" in line
    assert "about 8 credits" in line  # 4 for the new script, 4 for the old one's re-send
