"""Several API keys in one run (issue 6, "Several accounts"): each key its own account on one
simulator over loopback (`SimConfig.key_limits`, `key_credits`)."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from pipeline.client import key_fingerprint
from pipeline.notify import payload
from pipeline.runner import ExitCode, RunOutcome
from pipeline.simulator import Simulator, serve
from pipeline.simulator.state import STATE
from tests.harness import STATE_NAME, fast_sim, project, run_once, tts_manifest

pytestmark = pytest.mark.anyio

GENERATE = "/openapi/v2/video/lip_sync/generate"
STATUS = "/openapi/v2/video/result"
KEYS = ("key-alpha-0001", "key-bravo-0002", "key-charlie-03")


def account_of(sim: Simulator, key: str) -> int:
    return sim.app[STATE].backend.account(key).account_id


def generations_by_key(sim: Simulator, keys: tuple[str, ...]) -> dict[str, int]:
    ids = {account_of(sim, key): key for key in keys}
    counts = dict.fromkeys(keys, 0)
    for generation in sim.ledger.generations.values():
        counts[ids[generation.account_id]] += 1
    return counts


def polled_with_its_own_key(sim: Simulator) -> bool:
    """Every status call asked with the account that created the video."""
    owners = {g.video_id: g.account_id for g in sim.ledger.generations.values()}
    polls = [r for r in sim.ledger.requests_to(STATUS) if r.account_id is not None]
    return bool(polls) and all(owners[int(r.path.rsplit("/", 1)[1])] == r.account_id for r in polls)


def tally(outcome: RunOutcome, key: str) -> dict[str, object]:
    return next(k for k in outcome.keys if k["key_fp"] == key_fingerprint(key))


async def test_jobs_spread_over_the_keys_each_within_its_own_limit(tmp_path: Path) -> None:
    manifest = project(tmp_path, tts_manifest(12))
    out = tmp_path / "out"
    limits = {KEYS[0]: 1, KEYS[1]: 2, KEYS[2]: 3}
    config = fast_sim(api_keys=frozenset(KEYS), key_limits=limits, concurrency_limit=99)
    async with serve(config) as sim:
        outcome = await run_once(sim, manifest, out, api_keys=KEYS, concurrency=3)
    assert outcome.exit_code is ExitCode.OK, outcome.problem
    counts = generations_by_key(sim, KEYS)
    assert sum(counts.values()) == 12
    assert all(n >= 1 for n in counts.values()), counts  # every key did some of the work
    assert sim.ledger.duplicate_bodies() == []
    for key, limit in limits.items():  # --concurrency 3 per key, each key's own limit learned
        assert sim.ledger.peak_by_account[account_of(sim, key)] <= limit
    # the report: per key fingerprint, what it generated and spent; per job, its key
    for key in KEYS:
        assert tally(outcome, key)["generations"] == counts[key]
        assert tally(outcome, key)["retired"] is None
    assert sum(int(str(tally(outcome, k)["credits"])) for k in KEYS) == outcome.credits_this_run
    document = json.loads(outcome.report_path.read_text(encoding="utf-8"))
    assert [k["key_fp"] for k in document["keys"]] == [key_fingerprint(k) for k in KEYS]
    assert {row["key_fp"] for row in document["jobs"]} == {key_fingerprint(k) for k in KEYS}
    assert "keys:" in outcome.summary
    # media ids belong to the account that uploaded them: each key uploaded its own copy
    uploaders = {u.account_id for u in sim.ledger.uploads if u.filename.startswith("intro")}
    assert uploaders == {account_of(sim, key) for key in KEYS}
    # no key in the state file, the report or the csv
    for path in (out / STATE_NAME, out / "report.json", out / "report.csv"):
        text = path.read_bytes()
        assert not any(key.encode() in text for key in KEYS), path


async def test_a_key_out_of_credits_is_retired_and_the_others_finish(tmp_path: Path) -> None:
    """500090 on one key retires it: it is asked once, its job goes to the other key with a
    new trace id, and the run ends as usual (exit 0), the retirement in the report and
    the summary."""
    manifest = project(tmp_path, tts_manifest(6))
    poor, rich = "key-poor-00001", "key-rich-00002"
    config = fast_sim(api_keys=frozenset({poor, rich}), key_credits={poor: 6})  # one job's worth
    async with serve(config) as sim:
        outcome = await run_once(
            sim, manifest, tmp_path / "out", api_keys=(poor, rich), concurrency=1
        )
    assert outcome.exit_code is ExitCode.OK, outcome.problem
    assert {r.state for r in outcome.rows} == {"done"}
    poor_sends = [
        r for r in sim.ledger.requests_to(GENERATE) if r.account_id == account_of(sim, poor)
    ]
    assert [r.err_code for r in poor_sends] == [0, 500090]  # retired at its first refusal
    assert generations_by_key(sim, (poor, rich)) == {poor: 1, rich: 5}
    assert sim.ledger.duplicate_bodies() == []
    assert "500090" in str(tally(outcome, poor)["retired"]) or "insufficient" in str(
        tally(outcome, poor)["retired"]
    )
    assert tally(outcome, rich)["retired"] is None
    assert "1 of 2 retired" in outcome.summary
    document = json.loads(outcome.report_path.read_text(encoding="utf-8"))
    assert document["exit_code"] == 0
    assert document["keys"][0]["retired"]
    text = payload(document, "every job done")["text"]  # what --notify-url posts
    assert f"key {key_fingerprint(poor)} retired" in text


async def test_every_key_out_of_credits_ends_with_exit_4(tmp_path: Path) -> None:
    manifest = project(tmp_path, tts_manifest(4))
    keys = ("key-poor-00001", "key-poor-00002")
    config = fast_sim(api_keys=frozenset(keys), key_credits=dict.fromkeys(keys, 6))
    async with serve(config) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out", api_keys=keys, concurrency=1)
    assert outcome.exit_code is ExitCode.ACCOUNT
    assert generations_by_key(sim, keys) == dict.fromkeys(keys, 1)
    assert sorted(r.state for r in outcome.rows) == ["done"] * 2 + ["unfinished:pending"] * 2


async def test_a_refused_key_is_retired_its_jobs_left_and_later_polled_only_with_it(
    tmp_path: Path,
) -> None:
    """A key refused mid-run (400012) is retired: its generations are left for a later run
    (said in the report), the other key goes on. The next run, with the keys in the other
    order, polls each of them only with the key that created it: no 500008, no second charge."""
    manifest = project(tmp_path, tts_manifest(4))
    out = tmp_path / "out"
    a, b = "key-alpha-0001", "key-bravo-0002"
    config = fast_sim(api_keys=frozenset({a, b}), concurrency_limit=2, generation_seconds=100.0)
    async with serve(config) as sim:

        def b_generates() -> bool:
            return any(g.account_id == account_of(sim, b) for g in sim.ledger.generations.values())

        async def revoke_b_once_it_generates() -> None:
            while not b_generates():  # noqa: ASYNC110 - polls the ledger
                await anyio.sleep(0.005)
            sim.config.api_keys = frozenset({a})

        async with anyio.create_task_group() as tg:
            tg.start_soon(revoke_b_once_it_generates)
            first = await run_once(sim, manifest, out, api_keys=(a, b), concurrency=2)
        assert first.exit_code is ExitCode.UNFINISHED, first.problem
        left = [r for r in first.rows if r.state != "done"]
        assert left
        assert {r.key_fp for r in left} == {key_fingerprint(b)}
        assert {r.state for r in left} == {"unfinished:generating"}
        assert tally(first, b)["retired"]
        assert tally(first, a)["retired"] is None
        # b is back; its generations end now; the keys come in the other order
        sim.config.api_keys = frozenset({a, b})
        state = sim.app[STATE]
        for generation in state.backend.account(b).running:
            generation.ends_at = state.clock()
        second = await run_once(sim, manifest, out, api_keys=(b, a), concurrency=2)
    assert second.exit_code is ExitCode.OK, second.problem
    assert polled_with_its_own_key(sim)
    assert all(r.err_code != 500008 for r in sim.ledger.requests)
    assert len(sim.ledger.generations) == 4
    assert sim.ledger.duplicate_bodies() == []


async def test_a_resumed_generation_is_polled_only_with_the_key_that_created_it(
    tmp_path: Path,
) -> None:
    """Run 1 leaves a generation on each key; run 2 names the keys in the other order (so the
    first key is no longer the one that submitted the first job): every poll goes out with
    the video's own key."""
    manifest = project(tmp_path, tts_manifest(2))
    out = tmp_path / "out"
    a, b = "key-alpha-0001", "key-bravo-0002"
    config = fast_sim(api_keys=frozenset({a, b}), generation_seconds=1e6)
    async with serve(config) as sim:
        first = await run_once(sim, manifest, out, api_keys=(a, b), concurrency=1, max_wait=0.1)
        assert {r.state for r in first.rows} == {"unfinished:generating"}
        assert generations_by_key(sim, (a, b)) == {a: 1, b: 1}
        state = sim.app[STATE]
        for key in (a, b):
            for generation in state.backend.account(key).running:
                generation.ends_at = state.clock()
        second = await run_once(sim, manifest, out, api_keys=(b, a), concurrency=1)
    assert second.exit_code is ExitCode.OK, second.problem
    assert polled_with_its_own_key(sim)
    assert all(r.err_code != 500008 for r in sim.ledger.requests)
    assert len(sim.ledger.generations) == 2
