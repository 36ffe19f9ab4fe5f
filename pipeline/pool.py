"""Several API keys in one run: each key's account, and the pool that hands out their slots.

Contract:

* An `Account` is one API key's share of a run: its client, its exactly-once `Submitter` (and
  so its own trace-id replay verdict), its own `SlotLimiter` (slow start, learned ceiling, up to
  `--concurrency`: the concurrency is per key), its media ids (cached under `media_scope`) and
  this run's tally (generations accepted, net credits). One key is one account: a run with one
  key behaves as it did before accounts existed.
* New work is bound to a key before its media are uploaded (`choose`): the usable key with the
  most unclaimed slots (its limiter's level, minus slots held, minus jobs already bound to it
  and waiting), so uploads go ahead under the key the job will most likely be sent with, and a
  freed slot rarely waits for an upload.
* `acquire` waits for a slot of the bound key. With several keys it stops waiting when that key
  is retired, or when another key has a slot that no job bound to it will take: the binding
  moves there at once (so two waiting jobs never both move for one free slot) and the caller
  uploads under the new key. A free slot of any key is taken; a busy key's jobs do not wait
  while another key idles.
* Once a trace id has left under a key (`key_fp` in the state file), the job belongs to it:
  re-sent, polled and downloaded only with that key (`owner`). A record whose key is not among
  those configured is left alone (`foreign`).
* `retire`: no new submissions with that key for the rest of the run; its waiting jobs choose
  again. What happens to its in-flight jobs is the runner's decision (500090: they finish; a
  refused key: left for a later run).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anyio

from pipeline.client import PixverseClient
from pipeline.errors import FatalError
from pipeline.jobstate import JobState
from pipeline.limiter import Permit, SlotLimiter
from pipeline.state import JobRecord
from pipeline.submit import Submitter, foreign_key

log = logging.getLogger("pipeline.pool")


def media_scope(base_url: str, key_fp: str) -> str:
    """Media ids belong to one account: cached per base URL and key fingerprint."""
    return f"{base_url} key:{key_fp}"


@dataclass(eq=False)
class Account:
    client: PixverseClient
    submitter: Submitter
    limiter: SlotLimiter
    bound: int = 0  # jobs bound to this key that wait for a slot (uploading or queued)
    retired: FatalError | None = None  # why no new work goes to this key in this run
    can_send: bool = True  # False when its replay probe could not run before the run
    generations: int = 0  # generations it accepted in this run
    credits: int = 0  # net credits of this run (refunds taken off)
    saved_ceiling: int | None = None  # the learned ceiling last written to the state file

    @property
    def key_fp(self) -> str:
        return self.client.config.key_fingerprint

    @property
    def media_scope(self) -> str:
        return media_scope(self.client.config.base_url, self.key_fp)

    @property
    def sending_allowed(self) -> bool:
        """False once this key's trace-id replay could not be checked (before or during)."""
        return self.can_send and self.submitter.probe_failed is None

    @property
    def usable(self) -> bool:
        """New work may go to this key."""
        return self.retired is None and self.sending_allowed

    def unclaimed(self) -> int:
        """Slots free now that no job bound to this key will take (negative: a queue)."""
        return self.limiter.limit - self.limiter.held - self.bound

    def tally(self) -> dict[str, object]:
        """This key in the report: fingerprint, what it spent, how its slots went."""
        return {
            "key_fp": self.key_fp,
            "generations": self.generations,
            "credits": self.credits,
            "retired": str(self.retired) if self.retired is not None else None,
            "peak_slots": self.limiter.peak,
            "slot_rejections": self.limiter.rejections,
            "slot_ceiling": self.limiter.ceiling,
        }


@dataclass(eq=False)
class Binding:
    """The key a job goes to. `waiting`: counted in that account's `bound` (chosen, no slot)."""

    account: Account | None = None
    waiting: bool = False


@dataclass(eq=False)
class AccountPool:
    accounts: list[Account]
    _changed: anyio.Event = field(default_factory=anyio.Event)

    def __post_init__(self) -> None:
        if not self.accounts:
            raise ValueError("a run needs at least one API key")

    @property
    def several(self) -> bool:
        return len(self.accounts) > 1

    def find(self, key_fp: str | None) -> Account | None:
        return next((a for a in self.accounts if a.key_fp == key_fp), None)

    def foreign(self, record: JobRecord) -> bool:
        """Submitted (or maybe submitted) with a key that is not configured: left alone."""
        return record.state is not JobState.PENDING and all(
            foreign_key(record, a.key_fp) for a in self.accounts
        )

    def owner(self, record: JobRecord) -> Account | None:
        """The key a record already belongs to, or None when any key may take it (no key yet,
        or a trace id that never left under a key that is not configured)."""
        return self.find(record.key_fp)

    def usable(self) -> list[Account]:
        return [a for a in self.accounts if a.usable]

    # binding new work ---------------------------------------------------------------------

    def choose(self, binding: Binding) -> Account | None:
        """Keep a usable binding, else bind to the usable key with the most unclaimed slots
        (fewest held on a tie, then the order given). None: no key may take new work now."""
        if binding.account is not None and binding.account.usable:
            if not binding.waiting:
                binding.waiting = True
                binding.account.bound += 1
            return binding.account
        self.unbind(binding)
        usable = self.usable()
        if not usable:
            binding.account = None
            return None
        account = max(usable, key=lambda a: (a.unclaimed(), -a.limiter.held))
        binding.account, binding.waiting = account, True
        account.bound += 1
        return account

    def unbind(self, binding: Binding) -> None:
        """The job no longer waits for a slot of its key (it got one, or it stops)."""
        if binding.waiting and binding.account is not None:
            binding.account.bound -= 1
            binding.waiting = False
            self.notify()

    async def acquire(self, binding: Binding) -> Permit | None:
        """A slot of the bound key (the binding stops waiting), or None when the job should
        go on with another key: the binding has moved (upload there, then ask again), or its
        key was retired (`choose` again)."""
        account = binding.account
        assert account is not None
        assert binding.waiting
        if not self.several:
            only = await account.limiter.acquire()
            self.unbind(binding)
            return only
        permit: Permit | None = None
        moved = False
        async with anyio.create_task_group() as tg:

            async def take() -> None:
                nonlocal permit
                permit = await account.limiter.acquire()
                tg.cancel_scope.cancel()

            async def leave() -> None:
                nonlocal moved
                while not (moved := self._move(binding)):
                    await self._changed.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(take)
            tg.start_soon(leave)
        if permit is not None:
            # the slot is taken (a move decided in the same step is undone: the slot wins)
            self.unbind(binding)
            binding.account = account
        return permit

    def _move(self, binding: Binding) -> bool:
        """Whether the job bound to a full or retired key should leave it; if so, rebind it
        now to a key with a slot nobody bound will take (or to none: `choose` again)."""
        account = binding.account
        assert account is not None
        if not account.usable:
            self.unbind(binding)
            binding.account = None
            return True
        if account.unclaimed() >= 0:
            return False  # this key will have a slot for it
        spare = [a for a in self.usable() if a is not account and a.unclaimed() > 0]
        if not spare:
            return False
        target = max(spare, key=lambda a: a.unclaimed())
        self.unbind(binding)
        binding.account, binding.waiting = target, True
        target.bound += 1
        return True

    # what the accounts say ----------------------------------------------------------------

    def notify(self) -> None:
        """Slots, levels or bindings changed: waiting jobs look again whether to move."""
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def retire(self, account: Account, why: FatalError) -> bool:
        """No new submissions with `account` in this run. True when every key is retired."""
        if account.retired is None:
            account.retired = why
            if self.several:
                log.warning("key %s retired for this run: %s", account.key_fp, why)
        self.notify()
        return all(a.retired is not None for a in self.accounts)

    def tallies(self) -> list[dict[str, object]]:
        return [a.tally() for a in self.accounts]

    # the slots of every key together (progress, reports) ----------------------------------

    @property
    def running(self) -> int:
        return sum(a.limiter.running for a in self.accounts)

    @property
    def peak(self) -> int:
        return sum(a.limiter.peak for a in self.accounts)

    @property
    def rejections(self) -> int:
        return sum(a.limiter.rejections for a in self.accounts)

    @property
    def limit(self) -> int:
        return sum(a.limiter.limit for a in self.accounts)

    @property
    def slot_limit(self) -> int:
        """The learned ceiling, or --concurrency until the account refused one more, summed."""
        return sum(a.limiter.ceiling or a.limiter.maximum for a in self.accounts)

    @property
    def ceiling(self) -> int | None:
        """One key's learned ceiling (several keys: in each key's tally)."""
        return self.accounts[0].limiter.ceiling if not self.several else None
