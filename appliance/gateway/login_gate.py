"""The order and pace of password checks, so that guessing in parallel gains nothing.

A login, or a `password` request's check of the current password, is an *attempt* on an
account (the tenant name and login as typed) from a client address. `LoginGate.attempt`:

- runs the attempts on one account from one address one at a time, in arrival order. Each,
  when its turn comes, waits the backoff's delay for the failures recorded before it, is
  checked, and on a failure waits `failure_delay_s` more before it is answered and the next
  one starts: N guesses sent together take exactly as long as N sent one after another;
- does the same across every address for an account the backoff has locked (failures from
  several addresses), so that many addresses guessing together gain nothing either;
- hands the Argon2id workers (`hash_slots` at a time: each check is CPU and 19 MiB) to the
  waiting addresses in turn, so that a flood from one address queues behind itself, not in
  front of everybody else.

Attempts at different accounts from one address are not made to wait for each other (an
office behind one NAT address logs in together); each waits its own delay, which includes the
address's failures past its free ones (appliance/gateway/backoff.py).

Locks are taken in one order, the account-from-address lock before the account-wide one, so
that two attempts never wait for each other.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import trio

from appliance.gateway.backoff import Account, Delay, LoginBackoff

__all__ = ["Attempt", "HashingPool", "LoginGate"]

HASH_SLOTS = 2  # Argon2id checks at once, for the whole server
T = TypeVar("T")
SyncRunner = Callable[..., Awaitable[Any]]  # trio.to_thread.run_sync, or inline in tests


class HashingPool:
    """`slots` workers for password hashing, handed to waiting addresses round-robin."""

    def __init__(self, slots: int, run_sync: SyncRunner) -> None:
        self._free = slots
        self._run_sync = run_sync
        # address -> its waiters, first come first; the order of the keys is the round.
        self._waiting: dict[str, deque[trio.Event]] = {}

    async def run(self, address: str, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` in a worker once `address` has its turn; raises what `work` raises."""
        await self._acquire(address)
        try:
            result: T = await self._run_sync(work, *args)
            return result
        finally:
            self._release()

    async def _acquire(self, address: str) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1  # no checkpoint: `run` reaches one inside its try at once
            return
        turn = trio.Event()
        queue = self._waiting.setdefault(address, deque())
        queue.append(turn)
        try:
            await turn.wait()
        except BaseException:
            if turn.is_set():  # handed a worker just as it was cancelled: pass it on
                self._release()
            else:
                queue.remove(turn)
                if not queue:
                    del self._waiting[address]
            raise

    def _release(self) -> None:
        if not self._waiting:
            self._free += 1
            return
        address = next(iter(self._waiting))
        queue = self._waiting.pop(address)
        turn = queue.popleft()
        if queue:
            self._waiting[address] = queue  # to the back of the round
        turn.set()


class _Locks:
    """Fair (FIFO) locks by key, made on first use and dropped when nobody needs them."""

    def __init__(self) -> None:
        self._locks: dict[object, tuple[trio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: object) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        lock = lock or trio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class Attempt:
    """One attempt's turn: check the password with `check`, then say how it went."""

    def __init__(self, gate: LoginGate, account: Account, address: str, delay: Delay) -> None:
        self._gate = gate
        self._account = account
        self._address = address
        self.delay = delay  # what it waited before its check, and why
        self.refused = False

    async def check(self, work: Callable[..., T], *args: Any) -> T:
        """Run the password check `work(*args)` in a hashing worker; raises what it raises."""
        return await self._gate.pool.run(self._address, work, *args)

    def failed(self) -> bool:
        """The password was wrong (or the login unknown): count it, and answer it late.
        Returns whether this failure locked the account for every address: true once per
        lockout (the caller records it), not for the failures while it stays locked."""
        backoff = self._gate.backoff
        was_locked = backoff.locked(self._account)
        backoff.failed(self._account, self._address)
        self.refused = True
        return not was_locked and backoff.locked(self._account)

    def succeeded(self) -> None:
        self._gate.backoff.succeeded(self._account, self._address)


class LoginGate:
    def __init__(
        self, backoff: LoginBackoff, *, failure_delay_s: float, hash_slots: int = HASH_SLOTS,
        run_sync: SyncRunner = trio.to_thread.run_sync,
    ) -> None:
        self.backoff = backoff
        self.pool = HashingPool(hash_slots, run_sync)
        self._failure_delay_s = failure_delay_s
        self._locks = _Locks()

    @asynccontextmanager
    async def attempt(self, account: Account, address: str) -> AsyncIterator[Attempt]:
        """Wait for this attempt's turn and its delay, then yield it; the caller checks the
        password through it and calls `failed` or `succeeded`. After a failure the turn ends
        `failure_delay_s` later, whatever the caller raises."""
        async with AsyncExitStack() as turn:
            await turn.enter_async_context(self._locks.hold(("pair", account, address)))
            if self.backoff.locked(account):
                await turn.enter_async_context(self._locks.hold(("account", account)))
            attempt = Attempt(self, account, address, self.backoff.delay(account, address))
            await trio.sleep(attempt.delay.seconds)
            try:
                yield attempt
            finally:
                if attempt.refused:
                    await trio.sleep(self._failure_delay_s)

    async def hash(self, address: str, work: Callable[..., T], *args: Any) -> T:
        """Other password hashing (a new password's hash) in the same pool, in turn."""
        return await self.pool.run(address, work, *args)

    @property
    def queued_keys(self) -> int:
        """How many account and address keys have an attempt holding or waiting (bounded
        by the connections waiting to log in)."""
        return len(self._locks)
