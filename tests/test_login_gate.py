"""LoginGate on Trio's virtual clock: parallel guesses are checked exactly when sequential ones
would be, one address cannot slow another's logins, failures from many addresses lock the
account for all, and the hashing workers go round the waiting addresses in turn.

A check takes CHECK_S of virtual time (an inline runner sleeps it), so every assertion is an
exact virtual time, never a measured one."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from appliance.gateway.backoff import LoginBackoff
from appliance.gateway.login_gate import LoginGate

BASE_S, MAX_S, FAILURE_DELAY_S, CHECK_S = 1.0, 8.0, 1.0, 0.1
ALICE = ("acme", "alice")
RIGHT = "the right password"


class WrongGuess(Exception):
    pass


class Site:
    """A gate over a backoff on the virtual clock, and the log of the checks it let through."""

    def __init__(self) -> None:
        self.backoff = LoginBackoff(base_s=BASE_S, max_s=MAX_S, clock_s=trio.current_time,
                                    half_life_s=float("inf"))  # no decay: exact delays
        self.gate = LoginGate(self.backoff, failure_delay_s=FAILURE_DELAY_S,
                              run_sync=self._inline)
        self.t0 = trio.current_time()
        self.checks: list[tuple[float, tuple[str, str], str]] = []  # (end, account, address)

    async def _inline(self, work: Any, *args: Any) -> Any:
        await trio.sleep(CHECK_S)
        return work(*args)

    def _verify(self, account: tuple[str, str], address: str, password: str) -> None:
        self.checks.append((trio.current_time() - self.t0, account, address))
        if password != RIGHT:
            raise WrongGuess

    async def login(self, account: tuple[str, str], address: str, password: str,
                    after_s: float = 0.0) -> float:
        """One login as the router runs it; returns when it was answered (relative)."""
        await trio.sleep(after_s)
        async with self.gate.attempt(account, address) as attempt:
            try:
                await attempt.check(self._verify, account, address, password)
            except WrongGuess:
                attempt.failed()
            else:
                attempt.succeeded()
        return trio.current_time() - self.t0

    def ends(self, account: tuple[str, str] = ALICE) -> list[float]:
        return [end for end, key, _ in self.checks if key == account]


def delay(failures: int) -> float:
    return 0.0 if failures == 0 else min(MAX_S, BASE_S * 2 ** (failures - 1))


def sequential_ends(failures_before: list[int]) -> list[float]:
    """When a client that waits for each answer before the next guess has each checked: the
    delay for the failures so far, the check, then (all are wrong) the failure delay."""
    ends, now = [], 0.0
    for failures in failures_before:
        now += delay(failures) + CHECK_S
        ends.append(now)
        now += FAILURE_DELAY_S
    return ends


async def test_parallel_wrong_guesses_are_checked_exactly_when_sequential_ones_are(
    autojump_clock: trio.abc.Clock,
) -> None:
    sequential, parallel = Site(), Site()
    for _ in range(8):
        await sequential.login(ALICE, "192.0.2.1", "guess")
    parallel.t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        for n in range(8):
            nursery.start_soon(parallel.login, ALICE, "192.0.2.1", f"guess {n}")
    expected = sequential_ends(list(range(8)))
    assert sequential.ends() == pytest.approx(expected)
    assert parallel.ends() == pytest.approx(expected)
    assert parallel.gate.queued_keys == 0  # nothing kept once nobody waits


async def test_the_right_password_inside_a_parallel_burst_logs_in_no_sooner_than_in_sequence(
    autojump_clock: trio.abc.Clock,
) -> None:
    site = Site()
    answered: dict[int, float] = {}

    async def one(n: int) -> None:
        password = RIGHT if n == 5 else f"guess {n}"
        answered[n] = await site.login(ALICE, "192.0.2.1", password, after_s=n * 0.001)

    async with trio.open_nursery() as nursery:
        for n in range(9):
            nursery.start_soon(one, n)
    # Five wrong guesses before it, each with its delay: the sixth check comes when it would
    # for a client guessing one at a time, and the success starts the next ones afresh.
    expected = sequential_ends([0, 1, 2, 3, 4, 5])
    assert site.ends()[:6] == pytest.approx(expected)
    assert answered[5] == pytest.approx(expected[5])
    assert site.ends()[6] == pytest.approx(expected[5] + CHECK_S)


async def test_failures_from_one_address_do_not_delay_the_account_from_another(
    autojump_clock: trio.abc.Clock,
) -> None:
    site = Site()
    for _ in range(7):
        site.backoff.failed(ALICE, "192.0.2.1")
    assert await site.login(ALICE, "198.51.100.2", RIGHT) == pytest.approx(CHECK_S)
    # The guesser still waits its full delay, and the real user's success changes nothing
    # for it.
    start = trio.current_time() - site.t0
    assert await site.login(ALICE, "192.0.2.1", "guess") == pytest.approx(
        start + delay(7) + CHECK_S + FAILURE_DELAY_S)


async def test_failures_from_two_addresses_do_not_lock_the_account_and_from_three_do(
    autojump_clock: trio.abc.Clock,
) -> None:
    site = Site()
    site.backoff.failed(ALICE, "192.0.2.1")
    site.backoff.failed(ALICE, "192.0.2.2")
    assert await site.login(("acme", "alice"), "203.0.113.9", "guess") == pytest.approx(
        CHECK_S + FAILURE_DELAY_S)  # a third address's own failure: now three
    start = trio.current_time() - site.t0
    assert site.backoff.locked(ALICE)
    # Locked: even the real user on a fresh address waits the account's delay.
    assert await site.login(ALICE, "198.51.100.50", RIGHT) == pytest.approx(
        start + delay(3) + CHECK_S)
    assert not site.backoff.locked(ALICE)  # a success lifts the lock


async def test_many_addresses_guessing_a_locked_account_together_gain_nothing(
    autojump_clock: trio.abc.Clock,
) -> None:
    site = Site()
    for n in range(3):
        site.backoff.failed(ALICE, f"192.0.2.{n}")
    async with trio.open_nursery() as nursery:
        for n in range(6):
            nursery.start_soon(site.login, ALICE, f"203.0.113.{n}", f"guess {n}", n * 0.001)
    assert site.ends() == pytest.approx(sequential_ends([3, 4, 5, 6, 7, 8]))


async def test_a_flood_from_one_address_does_not_queue_in_front_of_another(
    autojump_clock: trio.abc.Clock,
) -> None:
    site = Site()
    async with trio.open_nursery() as nursery:
        for n in range(20):  # 20 accounts from one address, all right: no backoff at all
            nursery.start_soon(site.login, ("acme", f"user{n}"), "192.0.2.1", RIGHT)
        nursery.start_soon(site.login, ("acme", "bob"), "198.51.100.2", RIGHT, 0.05)
    # Two workers: the first two of the flood end at 0.1; then the round goes to the flood's
    # next and to bob, whose check ends at 0.2 (not behind the 18 others, at 1.1).
    assert site.ends(("acme", "bob")) == pytest.approx([2 * CHECK_S])
    # Alone, one address has both workers: an office behind one NAT address is not slowed.
    assert max(end for end, _, _ in site.checks) == pytest.approx(11 * CHECK_S)


async def test_an_attempt_cancelled_while_it_waits_leaves_no_lock_and_no_worker_behind(
    autojump_clock: trio.abc.Clock,
) -> None:
    site = Site()
    async with trio.open_nursery() as nursery:
        for n in range(4):  # wrong guesses queued behind each other, and in the pool
            nursery.start_soon(site.login, ALICE, "192.0.2.1", f"guess {n}")
        for n in range(4):
            nursery.start_soon(site.login, ("acme", f"user{n}"), "192.0.2.7", RIGHT)
        await trio.sleep(CHECK_S / 2)
        nursery.cancel_scope.cancel()  # the login deadline closes every connection
    assert site.gate.queued_keys == 0
    site.t0 = trio.current_time()
    async with trio.open_nursery() as nursery:  # both workers are free again
        nursery.start_soon(site.login, ("acme", "carol"), "192.0.2.8", RIGHT)
        nursery.start_soon(site.login, ("acme", "dave"), "192.0.2.9", RIGHT)
    assert [end for end, _, _ in site.checks[-2:]] == pytest.approx([CHECK_S, CHECK_S])
