"""The slot limiter end to end: the runner against the simulator's `concurrency_limit`."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from pipeline.cli import main
from pipeline.client import ClientConfig, PixverseClient, new_trace_id
from pipeline.errors import SlotLimitError
from pipeline.runner import ExitCode
from pipeline.simulator import Simulator, serve
from pipeline.state import StateStore
from tests.harness import FAST_RETRY, SAMPLES, STATE_NAME, fast_sim, project, run_once, tts_manifest

pytestmark = pytest.mark.anyio

GENERATE = "/openapi/v2/video/lip_sync/generate"


def refusals(sim: Simulator) -> int:
    return sum(1 for r in sim.ledger.requests_to(GENERATE) if r.err_code == 500044)


async def fill_the_account(sim: Simulator, count: int) -> None:
    """Another client under the same key starts `count` generations: every slot is taken."""
    config = ClientConfig(base_url=sim.url, api_key="sim-key", retry=FAST_RETRY)
    async with PixverseClient(config) as other:
        media = (await other.upload(SAMPLES / "intro.mp4")).media_id
        for i in range(count):
            body = {
                "video_media_id": media,
                "lip_sync_tts_speaker_id": "1",
                "lip_sync_tts_content": f"the other client, take {i}",
            }
            await other.generate(body, new_trace_id())
        with pytest.raises(SlotLimitError):  # full indeed
            await other.generate(body | {"lip_sync_tts_content": "one more"}, new_trace_id())


async def test_another_client_holding_every_slot_gets_a_probe_not_a_flood(
    tmp_path: Path,
) -> None:
    """Issue 6: after a 500044 every waiting job woke and one re-sent at once, so a run sent
    hundreds of generate requests a second while another client held the slots."""
    manifest = project(tmp_path, tts_manifest(6))
    # the other client's generations hold the account for about 1 s (200 sim s at 0.005)
    async with serve(fast_sim(concurrency_limit=3, generation_seconds=200.0)) as sim:
        await fill_the_account(sim, 3)
        before = refusals(sim)  # the other client's own check
        sim.config.generation_seconds = 10.0  # the run's own: 50 ms each
        outcome = await run_once(sim, manifest, tmp_path / "out", concurrency=3, poll_interval=0.1)
    assert outcome.exit_code is ExitCode.OK
    # ~1 s of a full account with probes backing off to the 0.1 s poll interval: about ten;
    # before the fix, one re-send per wake-up: hundreds
    ours = refusals(sim) - before
    assert 1 <= ours <= 20
    assert outcome.slot_rejections == ours
    # nothing of ours was running when refused: someone else's load, not the account's limit
    assert outcome.peak_slots == 3
    assert sim.ledger.duplicate_bodies() == []


async def test_a_limit_below_concurrency_costs_one_refusal_not_a_third(tmp_path: Path) -> None:
    """Issue 6: server limit 2, `--concurrency 6`: 32 % of submissions were refused. Slow
    start finds the limit with one refusal and keeps to it."""
    manifest = project(tmp_path, tts_manifest(13))
    async with serve(fast_sim(concurrency_limit=2)) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out", concurrency=6)
    assert outcome.exit_code is ExitCode.OK
    assert len(sim.ledger.generations) == 13
    assert refusals(sim) == 1  # the first submission above the limit, and only it
    assert sim.ledger.peak_concurrent == 2
    report = (tmp_path / "out" / "report.json").read_text()
    assert '"slot_ceiling": 2' in report


async def test_the_run_opens_with_one_submission_then_one_more_per_acceptance(
    tmp_path: Path,
) -> None:
    manifest = project(tmp_path, tts_manifest(5))
    # every generate reply leaves 10 sim s (50 ms) after its generation started
    config = fast_sim(concurrency_limit=5, generation_seconds=200.0, generate_reply_seconds=10.0)
    async with serve(config) as sim:
        outcome = await run_once(sim, manifest, tmp_path / "out", concurrency=5)
    assert outcome.exit_code is ExitCode.OK
    starts = sorted(g.created_at for g in sim.ledger.generations.values())
    sends = sorted(r.at for r in sim.ledger.requests_to(GENERATE))
    assert len(sends) == len(starts) == 5
    # each submission arrived only after the reply to the one before it had left (a causal
    # bound, not a timing guess: the reply cannot leave earlier)
    reply_delay = config.real_seconds(config.generate_reply_seconds)
    assert all(
        later >= started + reply_delay for later, started in zip(sends[1:], starts, strict=False)
    )
    assert sim.ledger.peak_concurrent == 5  # and the slots filled up to --concurrency


def test_status_shows_the_learned_ceiling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = project(tmp_path, tts_manifest(4))
    out = tmp_path / "out"

    async def go() -> None:
        async with serve(fast_sim(concurrency_limit=2)) as sim:
            await run_once(sim, manifest, out, concurrency=4)

    anyio.run(go)
    store = StateStore.read_only(out / STATE_NAME)
    try:
        ((_, key_fp, ceiling, concurrency, _),) = store.slot_ceilings()
    finally:
        store.close()
    assert (ceiling, concurrency) == (2, 4)
    assert main(["status", "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "slot ceiling 2 (--concurrency 4) for http://127.0.0.1:" in shown
    assert f"key {key_fp}" in shown
