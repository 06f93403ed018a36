"""The login policy against a real server and real parallel connections (docs/security.md,
"Login policy"): guesses sent together are checked one at a time, each after the delay a
sequential guesser would wait, for `login` and for `password` alike; one address's failures
do not slow another address; failures from several addresses lock the account for all; a
flood from one address does not hold another back in the hashing pool; a valid resume is
never delayed.

The engine's password checks are wrapped to record when each one ran (the real check still
runs). Timings are asserted only as lower bounds (a wait cannot be shorter than it must be)
or, for "not delayed", against a delay many times larger than the allowance."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from clients import login, open_ws, request, resume
from conftest import PASSWORD
from servers import RunningServer, running_server, seed_org

BASE_S = 0.05  # login_failure_delay_s: the first step of the backoff, and a failure's delay
MAX_S = 0.4
ALICE = ("acme", "alice")


@dataclass
class Check:
    started: float
    ended: float
    who: str  # the login, or "user N" for a check of a signed-in user's current password
    right: bool


class CheckLog:
    """Wraps one of the engine's password checks; records every call as it happens."""

    def __init__(self, running: RunningServer, method: str, monkeypatch: pytest.MonkeyPatch,
                 who: Callable[..., str]) -> None:
        self.checks: list[Check] = []
        self._lock = threading.Lock()
        real = getattr(running.engine, method)

        def recorded(*args: Any) -> Any:
            started = time.monotonic()
            try:
                result = real(*args)
            except Exception:
                self._add(Check(started, time.monotonic(), who(*args), False))
                raise
            self._add(Check(started, time.monotonic(), who(*args), True))
            return result

        monkeypatch.setattr(running.engine, method, recorded)

    def _add(self, check: Check) -> None:
        with self._lock:
            self.checks.append(check)

    def ordered(self, who: str | None = None) -> list[Check]:
        return sorted((c for c in self.checks if who is None or c.who == who),
                      key=lambda c: c.started)


def logins(running: RunningServer, monkeypatch: pytest.MonkeyPatch) -> CheckLog:
    return CheckLog(running, "authenticate", monkeypatch,
                    lambda tenant, login_name, password: login_name)


def sequential_delay(failures: int) -> float:
    """The least a guess waits after `failures` wrong ones (their decay over a test's seconds
    takes a few percent off: hence 0.9)."""
    return 0.0 if failures == 0 else 0.9 * min(MAX_S, BASE_S * 2 ** (failures - 1))


def assert_one_at_a_time_at_the_sequential_pace(checks: list[Check]) -> None:
    failures = 0
    for before, check in itertools.pairwise(checks):
        failures = 0 if before.right else failures + 1
        assert check.started >= before.ended, "two checks of one account ran at once"
        least = (0.0 if before.right else BASE_S) + sequential_delay(failures)
        assert check.started - before.ended >= least, (failures, check.started - before.ended)


@asynccontextmanager
async def acme(tmp_path: Path, **gateway: Any) -> AsyncIterator[RunningServer]:
    gateway.setdefault("login_failure_delay_s", BASE_S)
    gateway.setdefault("login_backoff_max_s", MAX_S)
    async with running_server(tmp_path / "data", **gateway) as running:
        seed_org(running.engine, "acme", ["alice", "bob"] + [f"user{n}" for n in range(24)])
        yield running


async def try_login(port: int, login_name: str, password: str = PASSWORD,
                    source: str | None = None) -> str:
    async with open_ws(port, local_address=source) as ws:
        reply = await request(ws, {"op": "login", "id": 1, "tenant": "acme",
                                   "login": login_name, "password": password})
    return "ok" if reply["type"] == "reply" else str(reply["code"])


async def test_wrong_logins_sent_together_are_checked_one_by_one_at_the_sequential_pace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with trio.fail_after(60):
        async with acme(tmp_path) as running:
            log = logins(running, monkeypatch)
            answers: list[str] = []
            started = time.monotonic()

            async def guess(n: int) -> None:
                answers.append(await try_login(running.port, "alice",
                                               PASSWORD if n == 6 else f"guess {n}"))

            async with trio.open_nursery() as nursery:
                for n in range(11):
                    nursery.start_soon(guess, n)
    assert sorted(answers) == ["ok"] + ["unauthenticated"] * 10
    checks = log.ordered("alice")
    assert len(checks) == 11
    assert_one_at_a_time_at_the_sequential_pace(checks)
    # The right password, however placed in the burst, waited for every guess checked before
    # it, as it would have behind them one at a time.
    position = next(n for n, check in enumerate(checks) if check.right)
    assert checks[position].started - started >= sum(
        BASE_S + sequential_delay(failures) for failures in range(position))


async def test_wrong_current_passwords_sent_together_are_checked_at_the_sequential_pace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with trio.fail_after(60):
        async with acme(tmp_path) as running, AsyncExitStack() as stack:
            connections = [await stack.enter_async_context(open_ws(running.port))
                           for _ in range(8)]
            token = (await login(connections[0], "acme", "alice"))["token"]
            for ws in connections[1:]:  # a stolen session, opened eight times
                assert (await resume(ws, token))["type"] == "reply"
            log = CheckLog(running, "check_password", monkeypatch,
                           lambda tenant, user, password: f"user {user}")
            answers: list[str] = []

            async def guess(n: int, ws: Any) -> None:
                reply = await request(ws, {"op": "password", "id": 5, "current": f"guess {n}",
                                           "new": "a new password here"})
                answers.append(reply.get("code", "ok"))

            async with trio.open_nursery() as nursery:
                for n, ws in enumerate(connections):
                    nursery.start_soon(guess, n, ws)
    assert answers == ["wrong_password"] * 8
    checks = log.ordered()
    assert len(checks) == 8
    assert_one_at_a_time_at_the_sequential_pace(checks)


async def test_failures_from_one_address_do_not_delay_the_account_from_another(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with acme(tmp_path, login_backoff_max_s=15.0) as running:
            backoff = running.server.services.backoff
            for _ in range(9):  # as nine wrong logins from 127.0.0.1 leave it
                backoff.failed(ALICE, "127.0.0.1")
            assert backoff.delay_s(ALICE, "127.0.0.1") >= 12.0  # the guesser is slowed...
            with trio.fail_after(4):  # ...and the real user elsewhere is not
                assert await try_login(running.port, "alice", source="127.0.0.2") == "ok"
            assert backoff.delay_s(ALICE, "127.0.0.1") >= 12.0  # nor is the guesser freed


async def test_failures_from_several_addresses_lock_the_account_for_every_address(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with acme(tmp_path, login_failure_delay_s=0.1) as running:
            for n in (1, 2, 3):
                assert await try_login(running.port, "alice", "guess",
                                       source=f"127.0.0.{n}") == "unauthenticated"
            started = time.monotonic()
            assert await try_login(running.port, "alice", source="127.0.0.4") == "ok"
            assert time.monotonic() - started >= 0.9 * 0.1 * 2 ** 2  # three failures' delay
            assert running.server.services.backoff.delay_s(ALICE, "127.0.0.5") == 0.0


async def test_a_flood_of_logins_from_one_address_does_not_queue_in_front_of_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with trio.fail_after(60):
        async with acme(tmp_path) as running:
            log = logins(running, monkeypatch)
            bob_sent: list[float] = []

            async def bob() -> None:
                while not log.checks:  # the flood has reached the hashing workers
                    await trio.sleep(0.001)
                bob_sent.append(time.monotonic())
                assert await try_login(running.port, "bob", source="127.0.0.2") == "ok"

            async with trio.open_nursery() as nursery:
                for n in range(24):
                    nursery.start_soon(try_login, running.port, f"user{n}")
                nursery.start_soon(bob)
    (bob_check,) = log.ordered("bob")
    overtaken = [c for c in log.ordered() if c.who != "bob"
                 and bob_sent[0] <= c.started < bob_check.started]
    assert len(overtaken) <= 3, len(overtaken)  # the checks under way, not the whole flood


async def test_a_valid_resume_is_never_delayed_by_password_failures(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with acme(tmp_path, login_backoff_max_s=15.0) as running:
            async with open_ws(running.port) as ws:
                token = (await login(ws, "acme", "alice"))["token"]
            backoff = running.server.services.backoff
            for n in range(20):  # the account locked, and this address slowed, to the cap
                backoff.failed(ALICE, f"127.0.0.{n % 4 + 1}")
                backoff.failed(("acme", f"nobody{n}"), "127.0.0.1")
            assert backoff.delay_s(ALICE, "127.0.0.9") >= 12.0
            for source in ("127.0.0.1", "127.0.0.9"):
                with trio.fail_after(4):
                    async with open_ws(running.port, local_address=source) as ws:
                        assert (await resume(ws, token))["type"] == "reply"
