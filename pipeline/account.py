"""The balance check a run makes once, before submitting anything (the speakers are resolved
before that, in `pipeline.speakers`).

It never stops paid work: the balance only warns (the run stops submitting cleanly at 500090).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pipeline.client import PixverseClient
from pipeline.errors import ApiError, FatalError
from pipeline.manifest import Job
from pipeline.plan import estimate_credits
from pipeline.preflight import Checked

log = logging.getLogger("pipeline.account")


async def check_balance(
    checked: Checked, to_submit: list[Job], client: PixverseClient | Sequence[PixverseClient]
) -> None:
    """Say up front whether the credits look enough (an estimate: the price model's snapshot).
    It only warns: the run spends what there is and stops cleanly at 500090. Several keys
    (`client` a sequence): their credits together, each key's in the log."""
    clients = [client] if isinstance(client, PixverseClient) else list(client)
    if not to_submit or not clients:
        return
    need = sum(estimate_credits(j, checked.media) for j in to_submit)
    spendable = 0
    for each in clients:
        try:
            balance = await each.balance()
        except FatalError:
            raise
        except ApiError as exc:  # only a warning depends on it
            log.warning("could not read the balance (%s); going on", exc)
            return
        if len(clients) > 1:
            log.info("key %s: %d credits", each.config.key_fingerprint, balance.spendable)
        spendable += balance.spendable
    if spendable < need:
        log.warning(
            "%d jobs to submit need about %d credits; the account has %d: the run will stop"
            " submitting when they run out (exit 4) and can be resumed after a top-up",
            len(to_submit),
            need,
            spendable,
        )
    else:
        log.info("%d jobs to submit, about %d credits of %d", len(to_submit), need, spendable)
