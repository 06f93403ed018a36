"""Shared fixtures: a real LMDB store in a temporary directory, and a fixed clock."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine import (
    CapacityExceeded,
    ClientMsgIdReused,
    Conflict,
    CorruptData,
    CreateGroup,
    CreateTenant,
    CreateUser,
    Engine,
    EngineClosed,
    Forbidden,
    HeraldError,
    InternalError,
    Invalid,
    KeyNotInstalled,
    KeyUnavailable,
    NotFound,
    NotMember,
    Operation,
    Unauthenticated,
    WeakPassword,
    WrongPassword,
    hash_password,
)

# One Argon2id hash for every test user: hashing is deliberately slow.
PASSWORD = "correct horse battery"
_HASH = hash_password(PASSWORD, rng=lambda n: b"fixed-test-salt!"[:n])
NOW_MS = 1_780_000_000_000


@pytest.fixture
def password_hash() -> str:
    return _HASH


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = Engine(tmp_path / "store", map_size=256 * 2**20)
    yield eng
    eng.close()


# -- engine test helpers ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Org:
    """A tenant with four users, created in this order (so alice < bob < carol < dave)."""

    tenant: int
    alice: int
    bob: int
    carol: int
    dave: int


def create_org(engine: Engine, name: str, now_ms: int = NOW_MS, first_made: int = 0) -> Org:
    """Create tenant `name` with the users alice, bob, carol and dave (password PASSWORD).
    With `first_made`, that many other users (`other-1`...) and as many groups of theirs are
    made first: the org's ids then start past them (ids count per tenant)."""
    tenant = engine.apply(CreateTenant(name=name), now_ms).tenant
    for n in range(1, first_made + 1):
        other = CreateUser(tenant=tenant, login=f"other-{n}", display_name="Other",
                           password_hash=_HASH)
        creator = engine.apply(other, now_ms).user  # type: ignore[union-attr]
        engine.apply(CreateGroup(tenant=tenant, creator=creator, title="other"), now_ms)
    users = [
        engine.apply(
            CreateUser(tenant=tenant, login=login, display_name=login.title(), password_hash=_HASH),
            now_ms,
        ).user
        for login in ("alice", "bob", "carol", "dave")
    ]
    return Org(tenant, *users)


@pytest.fixture
def org(engine: Engine) -> Org:
    return create_org(engine, "acme")


# The published wire codes, spelled out: a refusal test fails if a code ever changes meaning.
WIRE_CODES: dict[type[HeraldError], str] = {
    NotFound: "not_found",
    NotMember: "not_member",
    Forbidden: "forbidden",
    Conflict: "conflict",
    Invalid: "invalid",
    Unauthenticated: "unauthenticated",
    CapacityExceeded: "capacity_exceeded",
    CorruptData: "corrupt_data",
    KeyUnavailable: "key_unavailable",
    KeyNotInstalled: "key_unavailable",  # a kind of KeyUnavailable: the same code on the wire
    EngineClosed: "engine_closed",
    WrongPassword: "wrong_password",
    WeakPassword: "weak_password",
    InternalError: "internal",
    ClientMsgIdReused: "client_msg_id_reused",
}


def assert_refusal(error: object, expected: type[HeraldError]) -> None:
    """`error` is exactly an `expected` refusal and carries its published wire code."""
    assert type(error) is expected, f"expected {expected.__name__}, got {error!r}"
    assert error.code == WIRE_CODES[expected]


def refused(engine: Engine, op: Operation, now_ms: int = NOW_MS) -> HeraldError:
    """Apply `op` on its own and return its refusal; fails the test if it was accepted."""
    (result,) = engine.apply_batch([op], now_ms)
    assert isinstance(result, HeraldError), f"{op!r} was accepted: {result!r}"
    return result


def snapshot(engine: Engine, tenant: int) -> dict[str, Any]:
    """Everything the public read API shows of `tenant`, plus the store's entry counts.

    Two equal snapshots mean nothing observable changed in between.
    """
    # A login writes a session and an audit entry, a failed one an audit entry: those tables
    # change with every login, as they should (the audit log spans tenants).
    unstable = {"map_used_bytes", "sessions", "user_sessions", "audit"}
    counts = {name: n for name, n in engine.stats().items() if name not in unstable}
    users = engine.users(tenant)
    state: dict[str, Any] = {"tenant": engine.tenant(tenant), "users": users, "counts": counts}
    for user, _ in users:
        summaries = engine.conversations(tenant, user)
        state[f"user {user}"] = (summaries, engine.sync(tenant, user, max_messages=10_000))
        for summary in summaries:
            conv = summary.conv
            page = engine.page_after(tenant, user, conv, 0, engine.limits.max_page_messages)
            state[f"conv {conv}"] = (engine.members(tenant, user, conv), page)
    return state
