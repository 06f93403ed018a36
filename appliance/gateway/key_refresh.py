"""The running server's key refresh, and what a request waits for while it fetches a key.

Every `interval_s` (at most 5 s) the server asks its `KeyManager` to pick up tenants and epochs
added by other processes and to unwrap again the DEKs halfway to expiry. `herald keys rotate`
in another process re-seals conversations and members under its new epoch at once, so a read
can meet a record under an epoch this server has not installed yet. The keyring then calls
`KeyRefresh` (its missing-epoch listener) before the read raises `KeyNotInstalled`: the refresh
runs at once instead of at its next tick, and the request that met the record waits for it
(`settled`) and is answered, instead of failing with `key_unavailable` for a key the server is
about to hold. A tenant whose escrow refuses its keys is asked about once per epoch, and its
requests fail at once from then on.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from appliance.keys.manager import KeyManager

__all__ = ["KEY_REFRESH_MAX_INTERVAL_S", "KEY_WAIT_S", "KeyRefresh", "run_key_refresh"]

log = logging.getLogger("herald")

KEY_REFRESH_MAX_INTERVAL_S = 5.0
# How long a request waits for a key being fetched: an unwrap is one escrow round trip per
# epoch (milliseconds); a refresh stuck on an unreachable escrow must not hold requests long.
KEY_WAIT_S = 3.0


class KeyRefresh:
    """Wakes the key refresh when a record names an epoch this server has not installed, and
    lets requests wait until a refresh has dealt with that epoch.

    `__call__` is a keyring missing-epoch listener, called from whatever thread reads; it only
    adds to a set (atomic under the GIL) and hands the wake-up to the Trio thread."""

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._asked: set[tuple[int, int]] = set()  # never asked about again
        self._pending: set[tuple[int, int]] = set()  # asked; no refresh has finished since
        self.wanted = trio.Event()
        self._finished = trio.Event()

    def __call__(self, tenant: int, epoch: int) -> None:
        key = (tenant, epoch)
        if key in self._asked:
            return
        self._asked.add(key)
        self._pending.add(key)
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._wake)

    def _wake(self) -> None:
        self.wanted.set()

    def is_pending(self, tenant: int, epoch: int) -> bool:
        """Whether a refresh is on its way for this epoch: a request may wait for it."""
        return (tenant, epoch) in self._pending

    async def settled(self, tenant: int, epoch: int, timeout_s: float = KEY_WAIT_S) -> bool:
        """Wait until a refresh that started after the epoch was asked for has finished
        (True: worth trying again), or `timeout_s` has passed or nothing was asked (False)."""
        if (tenant, epoch) not in self._asked:
            return False
        with trio.move_on_after(timeout_s):
            while (tenant, epoch) in self._pending:
                await self._finished.wait()
            return True
        return False

    def starting(self) -> set[tuple[int, int]]:
        """A refresh starts: the epochs asked for so far, which it will have dealt with."""
        self.wanted = trio.Event()
        return set(self._pending)

    def finished(self, covered: set[tuple[int, int]]) -> None:
        """The refresh that started with `covered` is done (installed or refused them)."""
        self._pending -= covered
        self._finished.set()
        self._finished = trio.Event()


async def run_key_refresh(
    manager: KeyManager, interval_s: float, early: KeyRefresh | None = None
) -> None:
    """Refresh the keys (KeyManager.refresh) every `interval_s`, or as soon as `early` wants
    it; the escrow calls block, so they run in a thread. Logs each tenant's change of state."""
    last: dict[int, str] = {s.tenant: s.state for s in manager.status()}
    while True:
        covered: set[tuple[int, int]] = set()
        if early is None:
            await trio.sleep(interval_s)
        else:
            with trio.move_on_after(interval_s):
                await early.wanted.wait()
            if early.wanted.is_set():
                log.info("keys: a record names a key epoch this server has not installed "
                         "(added by another process?): refreshing the keys now")
            covered = early.starting()
        try:
            statuses = await trio.to_thread.run_sync(manager.refresh)
        finally:
            if early is not None:
                early.finished(covered)
        for status in statuses:
            if last.get(status.tenant) != status.state:
                log.info("tenant=%s keys=%s %s", status.tenant, status.state, status.detail)
                last[status.tenant] = status.state
