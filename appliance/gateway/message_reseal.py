"""The background re-encrypt: with `[keys] reseal_messages = true`, `herald serve` re-seals
every message block that is not under its tenant's current key epoch, so that an older epoch
can be shredded without losing its messages (docs/security.md, "The background re-encrypt").

It finds the work by itself: every `check_interval_s` it compares each tenant's current epoch
(the server's key refresh installs the epochs that `herald keys rotate` adds in another
process) with the epoch the tenant's blocks were all under when it last looked. Then it
re-seals `batch_blocks` blocks per write transaction, pausing `pause_s` between two: each
transaction holds LMDB's write lock, which the writer's chat appends wait for, so batches stay
small (bench/reseal_batch.py measures one). Nothing is remembered across restarts: blocks
already under the current epoch are skipped, so a restarted server just carries on.

A tenant whose blocks cannot be opened (a DEK not available: escrow unreachable, keys revoked;
the engine steps over blocks under a shredded epoch) is logged once with what to do, tried
again later with a growing delay, and never holds up the other tenants. Logs carry tenant
ids, epochs and counts, never keys.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from engine import Engine, HeraldError, KeyUnavailable, ResealProgress

__all__ = ["FIRST_RETRY_S", "MAX_RETRY_S", "PROGRESS_LOG_INTERVAL_S", "MessageResealer"]

log = logging.getLogger("herald.reseal")

MESSAGES_TABLE = "messages"
FIRST_RETRY_S = 60.0  # a tenant that could not be re-sealed is tried again after this...
MAX_RETRY_S = 3600.0  # ...doubling up to this
PROGRESS_LOG_INTERVAL_S = 10.0

RunSync = Callable[..., Awaitable[Any]]


class MessageResealer:
    """Owned by `herald serve`'s key nursery: `run` until cancelled.

    `run_sync` runs a blocking engine call (a worker thread in the server); it is handed in
    so that the task's logic does not depend on where the engine runs."""

    def __init__(
        self, engine: Engine, *, batch_blocks: int, pause_s: float, check_interval_s: float,
        run_sync: RunSync = trio.to_thread.run_sync,
    ) -> None:
        keyring = engine.keyring
        if keyring is None:
            raise ValueError("the background re-encrypt needs a sealed store")
        self._engine = engine
        self._keyring = keyring
        self._batch_blocks = batch_blocks
        self._pause_s = pause_s
        self._check_interval_s = check_interval_s
        self._run_sync = run_sync
        # tenant -> the epoch all its blocks were under when last counted: nothing to do
        # until its current epoch moves on.
        self._settled: dict[int, int] = {}
        # tenant -> (when to try again, the delay after that), while it cannot be re-sealed.
        self._retry: dict[int, tuple[float, float]] = {}

    async def run(self) -> None:
        log.info("background re-seal of messages on: %s blocks a batch, %s s between batches",
                 self._batch_blocks, self._pause_s)
        while True:
            for tenant, _ in await self._run_sync(self._engine.tenants):
                await self._visit(tenant)
            await trio.sleep(self._check_interval_s)

    async def _visit(self, tenant: int) -> None:
        current = self._keyring.current(tenant)
        if current is None or self._settled.get(tenant) == current:
            return
        retry_at, delay = self._retry.get(tenant, (-math.inf, 0.0))
        if trio.current_time() < retry_at:
            return
        try:
            settled = await self._reseal(tenant)
        except HeraldError as exc:
            if not delay:
                self._say_what_to_do(tenant, exc)
            settled = False
        if settled:
            if self._retry.pop(tenant, None) is not None:
                log.info("tenant=%s message blocks can be re-sealed again", tenant)
            return
        delay = min(delay * 2, MAX_RETRY_S) if delay else FIRST_RETRY_S
        self._retry[tenant] = (trio.current_time() + delay, delay)

    async def _reseal(self, tenant: int) -> bool:
        """Passes over the tenant's blocks until a count finds none left under older epochs
        (blocks appended under the old epoch before the server picked up the new one, or a
        rotation during a pass, take another pass). False when a pass moved nothing."""
        while True:
            current = self._keyring.current(tenant)
            pending, total = await self._run_sync(
                self._engine.reseal_pending, tenant, MESSAGES_TABLE)
            if not pending:
                if current is not None:
                    self._settled[tenant] = current
                return True
            log.info("tenant=%s re-sealing %s of %s message blocks under epoch %s",
                     tenant, pending, total, current)
            resealed = await self._pass(tenant, pending)
            log.info("tenant=%s re-sealed %s message blocks under epoch %s",
                     tenant, resealed, current)
            if not resealed:  # counted, yet none to move: no busy loop over them
                log.warning("tenant=%s %s message blocks are not under the current epoch, yet "
                            "a pass found none to re-seal; trying again later", tenant, pending)
                return False

    async def _pass(self, tenant: int, pending: int) -> int:
        after, resealed = b"", 0
        next_report = trio.current_time() + PROGRESS_LOG_INTERVAL_S
        while True:
            batch: ResealProgress = await self._run_sync(
                self._engine.reseal_records, tenant, MESSAGES_TABLE,
                after, self._batch_blocks)
            resealed += batch.resealed
            after = batch.next_key
            if not after:
                return resealed
            if trio.current_time() >= next_report:
                log.info("tenant=%s re-sealed %s of %s message blocks so far",
                         tenant, resealed, pending)
                next_report = trio.current_time() + PROGRESS_LOG_INTERVAL_S
            await trio.sleep(self._pause_s)

    @staticmethod
    def _say_what_to_do(tenant: int, exc: HeraldError) -> None:
        if isinstance(exc, KeyUnavailable):
            log.warning(
                "tenant=%s message blocks under older epochs cannot be re-sealed: %s. Their "
                "data key must be available: `herald keys status` shows the tenant's keys "
                "(the escrow must be reachable, the keys not revoked). Trying "
                "again later (first in %s s); other tenants carry on.",
                tenant, exc.message, FIRST_RETRY_S)
        else:
            log.warning("tenant=%s message blocks cannot be re-sealed (%s): %s. Trying again "
                        "later (first in %s s); other tenants carry on.",
                        tenant, exc.code, exc.message, FIRST_RETRY_S)
