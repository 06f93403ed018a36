"""apply_batch (group commit), and the store's life: closing, reopening, format, capacity."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest
from conftest import NOW_MS, PASSWORD, Org, assert_refusal, create_org, snapshot

from engine import (
    Append,
    Appended,
    CapacityExceeded,
    Conflict,
    ConversationOpened,
    CorruptData,
    CreateGroup,
    CreateTenant,
    CreateUser,
    Engine,
    EngineClosed,
    InternalError,
    Invalid,
    Limits,
    MarkRead,
    NotFound,
    OpenDirect,
    TenantCreated,
    UserCreated,
)
from engine.hotstore import translate_lmdb_error
from engine.records import FORMAT_VERSION


def hello(org: Org, conv: int, sender: int, cmid: str, body: str = "hello") -> Append:
    return Append(tenant=org.tenant, conv=conv, sender=sender, client_msg_id=cmid, body=body)


@pytest.fixture
def direct(engine: Engine, org: Org) -> int:
    """alice and bob's direct conversation, at head 1."""
    return engine.apply(OpenDirect(tenant=org.tenant, user=org.alice, peer=org.bob), NOW_MS).conv


def set_format_version(path: str, version: int) -> None:
    """Overwrite the store's format-version record, as another Herald release would have."""
    env = lmdb.open(path, max_dbs=2)
    try:
        meta = env.open_db(b"meta", create=False)
        with env.begin(write=True) as txn:
            txn.put(b"format_version", struct.pack(">Q", version), db=meta)
    finally:
        env.close()


def stored_format_version(path: str) -> int:
    env = lmdb.open(path, max_dbs=2, readonly=True)
    try:
        meta = env.open_db(b"meta", create=False)
        with env.begin() as txn:
            return int(struct.unpack(">Q", txn.get(b"format_version", db=meta))[0])
    finally:
        env.close()


# -- one transaction, one result per op ------------------------------------------------------


def test_results_come_back_one_per_op_in_order(engine: Engine, password_hash: str) -> None:
    ops = [
        CreateTenant(name="acme"),
        CreateTenant(name="acme"),
        CreateTenant(name="globex"),
        CreateUser(tenant=2, login="zed", display_name="Zed", password_hash=password_hash),
    ]

    results = engine.apply_batch(ops, NOW_MS)

    assert results[0] == TenantCreated(1)
    assert_refusal(results[1], Conflict)
    assert results[2:] == [TenantCreated(2), UserCreated(1)]


def test_later_ops_see_what_earlier_ops_of_the_batch_wrote(
    engine: Engine, password_hash: str
) -> None:
    ops = [
        CreateTenant(name="acme"),
        CreateUser(tenant=1, login="alice", display_name="A", password_hash=password_hash),
        CreateUser(tenant=1, login="bob", display_name="B", password_hash=password_hash),
        OpenDirect(tenant=1, user=1, peer=2),
        Append(tenant=1, conv=1, sender=2, client_msg_id="m", body="hi"),
        MarkRead(tenant=1, user=1, conv=1, seq=2),
    ]

    results = engine.apply_batch(ops, NOW_MS)

    assert results[3:5] == [ConversationOpened(1, created=True), Appended(1, 2, NOW_MS)]
    assert engine.conversation(1, 1, 1).unread == 0


def test_a_refused_op_changes_nothing_and_fails_no_other_op(
    engine: Engine, org: Org, direct: int
) -> None:
    ops = [
        hello(org, direct, org.alice, "a"),
        hello(org, direct, org.carol, "c"),  # carol is not in alice and bob's conversation
        hello(org, direct, org.bob, "b"),
    ]

    results = engine.apply_batch(ops, NOW_MS)

    assert results[0] == Appended(direct, 2, NOW_MS)
    assert_refusal(results[1], NotFound)  # carol may not even see it
    assert results[2] == Appended(direct, 3, NOW_MS)  # the refused op took no seq
    page = engine.page_after(org.tenant, org.alice, direct, 0, 10)
    assert [(m.seq, m.sender) for m in page.messages[1:]] == [(2, org.alice), (3, org.bob)]
    assert engine.stats()["dedupe"] == 2


def test_two_appends_with_one_client_msg_id_in_a_batch_store_one_message(
    engine: Engine, org: Org, direct: int
) -> None:
    ops = [hello(org, direct, org.alice, "same", "first"),
           hello(org, direct, org.alice, "same", "first")]

    results = engine.apply_batch(ops, NOW_MS)

    assert results == [
        Appended(direct, 2, NOW_MS, duplicate=False),
        Appended(direct, 2, NOW_MS, duplicate=True),
    ]
    assert engine.conversation(org.tenant, org.bob, direct).head == 2
    assert engine.page_after(org.tenant, org.bob, direct, 1, 10).messages[0].body == "first"


def test_an_empty_batch_returns_no_results_and_changes_nothing(engine: Engine, org: Org) -> None:
    before = snapshot(engine, org.tenant)

    assert engine.apply_batch([], NOW_MS) == []
    assert snapshot(engine, org.tenant) == before


def test_apply_returns_the_result_or_raises_the_refusal(
    engine: Engine, org: Org, direct: int
) -> None:
    assert engine.apply(hello(org, direct, org.bob, "m"), NOW_MS) == Appended(direct, 2, NOW_MS)

    with pytest.raises(NotFound) as refusal:
        engine.apply(hello(org, direct, org.carol, "m"), NOW_MS)

    assert refusal.value.code == "not_found"


def test_something_that_is_not_an_operation_is_a_bug_and_commits_nothing(engine: Engine) -> None:
    not_an_op = "CreateTenant(name='x')"

    with pytest.raises(TypeError):
        engine.apply_batch([CreateTenant(name="acme"), not_an_op], NOW_MS)  # type: ignore[list-item]

    assert engine.tenants() == []


def test_a_full_store_refuses_the_whole_batch_and_keeps_working(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "tiny", map_size=2**20)
    try:
        org = create_org(engine, "acme")
        conv = engine.apply(CreateGroup(tenant=org.tenant, creator=org.alice, title="g"), NOW_MS)
        ops = [hello(org, conv.conv, org.alice, f"m{n}", "x" * 16_000) for n in range(100)]
        before = snapshot(engine, org.tenant)

        with pytest.raises(CapacityExceeded) as refusal:
            engine.apply_batch(ops, NOW_MS)

        assert refusal.value.code == "capacity_exceeded"
        assert snapshot(engine, org.tenant) == before
        assert engine.apply(hello(org, conv.conv, org.alice, "small"), NOW_MS).seq == 2
    finally:
        engine.close()


# Keys over LMDB's limit (511 bytes): a client_msg_id limit raised past what a dedupe key
# can hold makes LMDB refuse the key itself (BadValsizeError), a storage error that is no
# capacity: a misconfiguration, or a bug.
OVERSIZED_KEY_LIMITS = Limits(max_client_msg_id_bytes=600)


def test_a_storage_error_that_is_not_capacity_is_internal_and_commits_nothing(
    tmp_path: Path,
) -> None:
    engine = Engine(tmp_path / "store", map_size=2**24, limits=OVERSIZED_KEY_LIMITS)
    try:
        org = create_org(engine, "acme")
        conv = engine.apply(CreateGroup(tenant=org.tenant, creator=org.alice, title="g"), NOW_MS)
        ops = [hello(org, conv.conv, org.alice, "fine"),
               hello(org, conv.conv, org.alice, "x" * 600)]
        before = snapshot(engine, org.tenant)

        with pytest.raises(InternalError) as failure:
            engine.apply_batch(ops, NOW_MS)

        assert_refusal(failure.value, InternalError)
        assert isinstance(failure.value.__cause__, lmdb.BadValsizeError)
        assert snapshot(engine, org.tenant) == before
        assert engine.apply(ops[0], NOW_MS).seq == 2  # the store keeps working
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (lmdb.MapFullError, CapacityExceeded),
        (lmdb.ReadersFullError, CapacityExceeded),
        (lmdb.TxnFullError, CapacityExceeded),
        (lmdb.DiskError, CapacityExceeded),
        (lmdb.CorruptedError, CorruptData),
        (lmdb.PageNotFoundError, CorruptData),
        (lmdb.BadValsizeError, InternalError),
        (lmdb.BadTxnError, InternalError),
        (lmdb.ReadonlyError, InternalError),
        (lmdb.Error, InternalError),
    ],
)
def test_each_lmdb_error_becomes_the_refusal_that_names_its_situation(
    error: type[lmdb.Error], expected: type[Exception]
) -> None:
    translated = translate_lmdb_error(error("mdb_txn_commit", 0))

    assert type(translated) is expected


# -- closing and reopening -------------------------------------------------------------------

CALLS: dict[str, Callable[[Engine], object]] = {
    "apply_batch": lambda e: e.apply_batch([CreateTenant(name="x")], NOW_MS),
    "apply": lambda e: e.apply(CreateTenant(name="x"), NOW_MS),
    "prune_dedupe": lambda e: e.prune_dedupe(1, NOW_MS),
    "tenant": lambda e: e.tenant(1),
    "find_tenant": lambda e: e.find_tenant("acme"),
    "tenants": lambda e: e.tenants(),
    "user": lambda e: e.user(1, 1),
    "find_user": lambda e: e.find_user(1, "alice"),
    "users": lambda e: e.users(1),
    "authenticate": lambda e: e.authenticate(1, "alice", PASSWORD),
    "conversations": lambda e: e.conversations(1, 1),
    "conversation": lambda e: e.conversation(1, 1, 1),
    "members": lambda e: e.members(1, 1, 1),
    "member_ids": lambda e: e.member_ids(1, 1),
    "page_after": lambda e: e.page_after(1, 1, 1, 0, 10),
    "page_before": lambda e: e.page_before(1, 1, 1, None, 10),
    "sync": lambda e: e.sync(1, 1),
    "stats": lambda e: e.stats(),
    "store_usage": lambda e: e.store_usage(),
}


@pytest.mark.parametrize("call", list(CALLS.values()), ids=list(CALLS))
def test_a_closed_engine_refuses_every_call(
    engine: Engine, org: Org, direct: int, call: Callable[[Engine], object]
) -> None:
    engine.close()

    with pytest.raises(EngineClosed) as refusal:
        call(engine)

    assert refusal.value.code == "engine_closed"


def test_closing_twice_is_harmless(engine: Engine) -> None:
    engine.close()
    engine.close()

    with pytest.raises(EngineClosed):
        engine.tenants()


def test_reopening_the_store_keeps_everything(engine: Engine, org: Org, direct: int) -> None:
    engine.apply(hello(org, direct, org.alice, "m1"), NOW_MS)
    engine.apply(MarkRead(tenant=org.tenant, user=org.bob, conv=direct, seq=2), NOW_MS)
    before = snapshot(engine, org.tenant)
    engine.close()

    reopened = Engine(engine.path, map_size=2**24)
    try:
        assert snapshot(reopened, org.tenant) == before
        assert reopened.authenticate(org.tenant, "carol", PASSWORD) == org.carol
        # A retry after a restart is still recognised, and ids carry on where they stopped.
        assert reopened.apply(hello(org, direct, org.alice, "m1"), NOW_MS + 1) == Appended(
            direct, 2, NOW_MS, duplicate=True
        )
        assert reopened.apply(CreateTenant(name="globex"), NOW_MS) == TenantCreated(2)
        group = CreateGroup(tenant=org.tenant, creator=org.alice, title="g")
        assert reopened.apply(group, NOW_MS) == ConversationOpened(direct + 1, created=True)
    finally:
        reopened.close()


def test_a_new_store_records_the_current_format_version(engine: Engine) -> None:
    engine.close()

    assert stored_format_version(engine.path) == FORMAT_VERSION == 5


def test_a_store_of_another_format_version_is_refused_as_corrupt(
    engine: Engine, org: Org
) -> None:
    engine.close()
    set_format_version(engine.path, FORMAT_VERSION + 2)

    with pytest.raises(CorruptData) as refusal:
        Engine(engine.path, map_size=2**24)

    assert refusal.value.code == "corrupt_data"
    assert "format version 7" in refusal.value.message
    # The refused open let go of the store: it can be migrated and opened in this process.
    set_format_version(engine.path, FORMAT_VERSION)
    reopened = Engine(engine.path, map_size=2**24)
    try:
        assert reopened.find_user(org.tenant, "alice") == org.alice
    finally:
        reopened.close()


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_a_store_of_an_older_development_format_is_refused_with_what_to_do(
    engine: Engine, version: int
) -> None:
    engine.close()
    set_format_version(engine.path, version)

    with pytest.raises(CorruptData) as refusal:
        Engine(engine.path, map_size=2**24)

    assert f"format version {version}" in refusal.value.message
    assert "move the directory away" in refusal.value.message


def test_a_directory_holding_no_lmdb_store_is_invalid(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "data.mdb").write_bytes(b"not an lmdb file" * 1024)

    with pytest.raises(Invalid) as refusal:
        Engine(store, map_size=2**24)

    assert refusal.value.code == "invalid"
