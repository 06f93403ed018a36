"""LoginBackoff on a clock the test controls: growth, cap, decay, reset, which failures delay
which address, the account-wide lock, and bounded memory."""

from __future__ import annotations

import pytest

from appliance.gateway.backoff import ACCOUNT_LOCK_ADDRESSES, ADDRESS_FREE_FAILURES, LoginBackoff


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, **options: float) -> LoginBackoff:
    return LoginBackoff(base_s=1.0, max_s=30.0, clock_s=clock, half_life_s=600.0, **options)  # type: ignore[arg-type]


ACCOUNT = ("acme", "alice")


def test_each_failure_doubles_the_delay_up_to_the_cap() -> None:
    backoff = make(Clock())
    delays = []
    for _ in range(8):
        delays.append(backoff.delay_s(ACCOUNT, "192.0.2.1"))
        backoff.failed(ACCOUNT, "192.0.2.1")
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_failures_decay_with_time_and_success_clears_the_account_from_that_address() -> None:
    clock = Clock()
    backoff = make(clock)
    for _ in range(3):
        backoff.failed(ACCOUNT, "192.0.2.1")
    assert backoff.delay_s(ACCOUNT, "192.0.2.1") == 4.0
    clock.now += 600  # one half-life: 3 failures weigh 1.5
    assert backoff.delay_s(ACCOUNT, "192.0.2.1") == pytest.approx(2 ** 0.5)
    backoff.succeeded(ACCOUNT, "192.0.2.1")
    assert backoff.delay_s(ACCOUNT, "192.0.2.1") == 0.0


def test_failures_from_one_address_do_not_delay_the_account_from_another() -> None:
    backoff = make(Clock())
    for _ in range(7):
        backoff.failed(ACCOUNT, "192.0.2.1")
    assert backoff.delay_s(ACCOUNT, "192.0.2.1") == 30.0
    assert backoff.delay_s(ACCOUNT, "198.51.100.2") == 0.0
    assert not backoff.locked(ACCOUNT)
    # The real user's success elsewhere buys the guesser nothing.
    backoff.succeeded(ACCOUNT, "198.51.100.2")
    assert backoff.delay_s(ACCOUNT, "192.0.2.1") == 30.0


def test_failures_from_several_addresses_lock_the_account_for_every_address() -> None:
    clock = Clock()
    backoff = make(clock)
    for n in range(ACCOUNT_LOCK_ADDRESSES - 1):
        backoff.failed(ACCOUNT, f"192.0.2.{n}")
        backoff.failed(ACCOUNT, f"192.0.2.{n}")
    assert backoff.delay_s(ACCOUNT, "198.51.100.2") == 0.0
    backoff.failed(ACCOUNT, "192.0.2.99")
    assert backoff.locked(ACCOUNT)
    failures = 2 * (ACCOUNT_LOCK_ADDRESSES - 1) + 1
    assert backoff.delay_s(ACCOUNT, "198.51.100.2") == 2.0 ** (failures - 1)
    assert backoff.delay_s(("acme", "bob"), "198.51.100.2") == 0.0  # that account only
    # An address counts towards the lock for one half-life after its last failure.
    clock.now += 601
    assert not backoff.locked(ACCOUNT)
    assert backoff.delay_s(ACCOUNT, "198.51.100.2") == 0.0
    for n in range(ACCOUNT_LOCK_ADDRESSES):
        backoff.failed(ACCOUNT, f"203.0.113.{n}")
    assert backoff.locked(ACCOUNT)
    backoff.succeeded(ACCOUNT, "198.51.100.2")  # the real user got in: the lock is lifted
    assert not backoff.locked(ACCOUNT)
    assert backoff.delay_s(ACCOUNT, "198.51.100.2") == 0.0
    assert backoff.delay_s(ACCOUNT, "203.0.113.0") == 1.0  # each guesser keeps its own


def test_an_address_is_slowed_only_past_its_free_failures_across_accounts() -> None:
    backoff = make(Clock())
    for n in range(ADDRESS_FREE_FAILURES):
        backoff.failed(("acme", f"user{n}"), "198.51.100.7")
    assert backoff.delay_s(("acme", "fresh"), "198.51.100.7") == 0.0
    backoff.failed(("acme", "another"), "198.51.100.7")
    assert backoff.delay_s(("acme", "fresh"), "198.51.100.7") == 1.0
    assert backoff.delay_s(("acme", "fresh"), "198.51.100.8") == 0.0


def test_memory_stays_bounded_dropping_the_least_recent_failures() -> None:
    clock = Clock()
    backoff = make(clock, max_entries=100)
    for n in range(1000):
        clock.now += 0.001
        backoff.failed(("acme", f"user{n}"), f"203.0.113.{n % 250}")
    assert len(backoff) <= 100
    assert backoff.delay_s(("acme", "user999"), "203.0.113.249") == 1.0  # the latest is kept
    assert backoff.delay_s(("acme", "user0"), "203.0.113.0") == 0.0  # the oldest went first
