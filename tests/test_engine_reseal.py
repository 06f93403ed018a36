"""Re-sealing records under the current epoch, and shreds that destroy only messages (real LMDB)."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest
from conftest import NOW_MS, PASSWORD, Org, assert_refusal, snapshot

from engine import (
    AddKeyEpoch,
    Append,
    Conflict,
    CreateGroup,
    CreateTenant,
    CreateUser,
    Engine,
    HeraldError,
    Invalid,
    Keyring,
    KeyUnavailable,
    ShredKeyEpoch,
)
from engine.keys import pack_id
from engine.reseal import RESEALED_TABLES

MAP_SIZE_BYTES = 256 * 2**20


class Box:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.keyring = Keyring(name_key=bytes(range(32)))
        self.engine = Engine(path, map_size=MAP_SIZE_BYTES, keyring=self.keyring)
        self.deks: dict[tuple[int, int], bytes] = {}

    def add_epoch(self, tenant: int) -> int:
        epoch = len([k for k in self.deks if k[0] == tenant]) + 1
        self.deks[tenant, epoch] = dek = os.urandom(32)
        self.keyring.install(tenant, epoch, dek)
        self.engine.apply(
            AddKeyEpoch(tenant=tenant, wrapped_dek=b"w" + dek[:4], key_id="ek"), NOW_MS
        )
        return epoch


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    b = Box(tmp_path / "store")
    yield b
    b.engine.close()


def org_with_history(box: Box, hash_: str) -> tuple[Org, int]:
    """Tenant acme (epoch 1): four users, a group of three, 6 messages."""
    eng = box.engine
    tenant = eng.apply(CreateTenant(name="acme"), NOW_MS).tenant
    box.add_epoch(tenant)
    users = [
        eng.apply(CreateUser(tenant=tenant, login=login, display_name=login,
                             password_hash=hash_), NOW_MS).user
        for login in ("alice", "bob", "carol", "dave")
    ]
    org = Org(tenant, *users)
    conv = eng.apply(
        CreateGroup(tenant=tenant, creator=org.alice, title="team", members=(org.bob, org.carol)),
        NOW_MS,
    ).conv
    eng.apply_batch([
        Append(tenant=tenant, conv=conv, sender=org.alice, client_msg_id=f"m{i}", body=f"old {i}")
        for i in range(6)
    ], NOW_MS)
    return org, conv


def reseal_all(eng: Engine, tenant: int, tables: tuple[str, ...] = RESEALED_TABLES,
               batch: int = 10_000) -> int:
    done = 0
    for table in tables:
        after = b""
        while True:
            progress = eng.reseal_records(tenant, table, after, batch)
            done += progress.resealed
            after = progress.next_key
            if not after:
                break
    return done


def epochs_on_disk(path: Path, tenant: int) -> dict[str, set[int]]:
    env = lmdb.open(str(path), max_dbs=32, map_size=MAP_SIZE_BYTES, readonly=True)
    out: dict[str, set[int]] = {}
    try:
        with env.begin() as txn:
            for table in (*RESEALED_TABLES, "messages"):
                db = env.open_db(table.encode(), txn=txn)
                with txn.cursor(db=db) as cur:
                    out[table] = {
                        struct.unpack(">I", v[1:5])[0]
                        for k, v in cur if k.startswith(pack_id(tenant))
                    }
    finally:
        env.close()
    return out


def metadata_view(eng: Engine, org: Org, conv: int) -> Any:
    return (
        eng.users(org.tenant),
        [eng.user(org.tenant, u) for u in (org.alice, org.bob, org.carol, org.dave)],
        eng.conversations(org.tenant, org.alice),
        eng.members(org.tenant, org.alice, conv),
    )


def test_after_reseal_a_shred_destroys_only_the_old_messages(
    box: Box, password_hash: str
) -> None:
    org, conv = org_with_history(box, password_hash)
    eng = box.engine
    old_messages = eng.messages(org.tenant, conv, 1, 100)
    assert box.add_epoch(org.tenant) == 2
    eng.apply(Append(tenant=org.tenant, conv=conv, sender=org.bob, client_msg_id="n",
                     body="new"), NOW_MS)
    before = metadata_view(eng, org, conv)

    assert eng.reseal_pending(org.tenant, "users") == (4, 4)
    assert reseal_all(eng, org.tenant) > 4
    assert eng.reseal_pending(org.tenant, "users") == (0, 4)
    assert metadata_view(eng, org, conv) == before  # plaintext unchanged
    assert eng.messages(org.tenant, conv, 1, 100)[: len(old_messages)] == old_messages
    eng.close()
    on_disk = epochs_on_disk(box.path, org.tenant)
    assert all(on_disk[t] == {2} for t in RESEALED_TABLES), on_disk
    assert on_disk["messages"] == {1, 2}  # messages are left alone unless asked
    box.engine = eng = Engine(box.path, map_size=MAP_SIZE_BYTES, keyring=box.keyring)

    eng.apply(ShredKeyEpoch(tenant=org.tenant, epoch=1), NOW_MS)
    assert metadata_view(eng, org, conv) == before
    assert eng.authenticate(org.tenant, "alice", PASSWORD) == org.alice
    with pytest.raises(KeyUnavailable):
        eng.messages(org.tenant, conv, old_messages[0].seq, old_messages[0].seq)
    new_seq = old_messages[-1].seq + 1
    assert [m.body for m in eng.messages(org.tenant, conv, new_seq, new_seq)] == ["new"]
    # The tenant keeps working: a new group, a new message.
    eng.apply(CreateGroup(tenant=org.tenant, creator=org.bob, title="after", members=()), NOW_MS)


def test_a_shred_before_the_reseal_is_refused_and_changes_nothing(
    box: Box, password_hash: str
) -> None:
    org, _conv = org_with_history(box, password_hash)
    eng = box.engine
    box.add_epoch(org.tenant)
    before = snapshot(eng, org.tenant)
    (refusal,) = eng.apply_batch([ShredKeyEpoch(tenant=org.tenant, epoch=1)], NOW_MS)
    assert isinstance(refusal, HeraldError)
    assert_refusal(refusal, Conflict)
    assert "re-seal" in refusal.message and "herald keys reseal" in refusal.message
    assert snapshot(eng, org.tenant) == before
    # Half a reseal is not enough either.
    eng.reseal_records(org.tenant, "users")
    (refusal,) = eng.apply_batch([ShredKeyEpoch(tenant=org.tenant, epoch=1)], NOW_MS)
    assert_refusal(refusal, Conflict)  # type: ignore[arg-type]
    assert "convs" in refusal.message  # type: ignore[union-attr]


def test_reseal_is_resumable_and_idempotent(box: Box, password_hash: str) -> None:
    org, _conv = org_with_history(box, password_hash)
    eng = box.engine
    box.add_epoch(org.tenant)
    first = eng.reseal_records(org.tenant, "users", b"", 3)
    assert (first.resealed, first.scanned) == (3, 3) and first.next_key
    # Stop here (as if the process died) and continue from where it stopped.
    eng.close()
    box.engine = eng = Engine(box.path, map_size=MAP_SIZE_BYTES, keyring=box.keyring)
    assert eng.reseal_pending(org.tenant, "users") == (1, 4)
    rest = eng.reseal_records(org.tenant, "users", first.next_key, 3)
    assert (rest.resealed, rest.next_key) == (1, b"")
    again = eng.reseal_records(org.tenant, "users")
    assert (again.resealed, again.scanned, again.next_key) == (0, 4, b"")
    assert eng.authenticate(org.tenant, "dave", PASSWORD) == org.dave


def test_messages_reseal_on_request(box: Box, password_hash: str) -> None:
    org, conv = org_with_history(box, password_hash)
    eng = box.engine
    old = eng.messages(org.tenant, conv, 1, 100)
    box.add_epoch(org.tenant)
    assert reseal_all(eng, org.tenant, (*RESEALED_TABLES, "messages"), batch=2) > len(old)
    eng.apply(ShredKeyEpoch(tenant=org.tenant, epoch=1), NOW_MS)
    assert eng.messages(org.tenant, conv, 1, 100) == old


def test_a_batch_refused_for_a_missing_key_writes_nothing(
    box: Box, password_hash: str
) -> None:
    org, _conv = org_with_history(box, password_hash)
    eng = box.engine
    box.add_epoch(org.tenant)
    eng.close()
    before = epochs_on_disk(box.path, org.tenant)
    box.keyring.forget(org.tenant, 1)
    box.engine = eng = Engine(box.path, map_size=MAP_SIZE_BYTES, keyring=box.keyring)
    with pytest.raises(KeyUnavailable):
        eng.reseal_records(org.tenant, "users")
    box.keyring.forget(org.tenant, 2)  # the current epoch's key missing: refused up front
    box.keyring.install(org.tenant, 1, box.deks[org.tenant, 1])
    with pytest.raises(KeyUnavailable):
        eng.reseal_records(org.tenant, "convs")
    eng.close()
    assert epochs_on_disk(box.path, org.tenant) == before
    box.engine = Engine(box.path, map_size=MAP_SIZE_BYTES, keyring=box.keyring)


def test_bad_reseal_arguments_are_invalid(box: Box, password_hash: str) -> None:
    org, _ = org_with_history(box, password_hash)
    eng = box.engine
    for table, after, size in (("sessions", b"", 10), ("users", b"", 0),
                               ("users", pack_id(org.tenant + 1), 10)):
        with pytest.raises(Invalid):
            eng.reseal_records(org.tenant, table, after, size)


def test_a_batch_looks_at_a_bounded_number_of_records(
    box: Box, password_hash: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch holds the write lock: over a table nearly all re-sealed it must stop scanning
    # too, not only re-sealing, and say where to go on.
    monkeypatch.setattr("engine.reseal.MIN_SCAN_PER_BATCH", 2)
    org, _conv = org_with_history(box, password_hash)
    eng = box.engine
    box.add_epoch(org.tenant)  # 4 users under epoch 1, none re-sealed yet
    first = eng.reseal_records(org.tenant, "users", b"", 1)
    assert (first.resealed, first.scanned) == (1, 1)
    second = eng.reseal_records(org.tenant, "users", b"", 1)  # from the start again
    assert second.scanned == 2 and second.resealed == 1 and second.next_key
    done = first.resealed + second.resealed + reseal_all(eng, org.tenant, ("users",), batch=1)
    assert done == 4
    assert eng.reseal_pending(org.tenant, "users") == (0, 4)


def test_blocks_under_a_shredded_epoch_are_skipped_not_refused(
    box: Box, password_hash: str
) -> None:
    org, conv = org_with_history(box, password_hash)  # messages 1-7 under epoch 1
    eng = box.engine
    box.add_epoch(org.tenant)
    reseal_all(eng, org.tenant)
    eng.apply(ShredKeyEpoch(tenant=org.tenant, epoch=1), NOW_MS)
    eng.apply(Append(tenant=org.tenant, conv=conv, sender=org.bob, client_msg_id="e2",
                     body="under epoch 2"), NOW_MS)
    box.add_epoch(org.tenant)
    reseal_all(eng, org.tenant)
    assert eng.reseal_pending(org.tenant, "messages") == (1, 2)  # epoch 2's block; 1's is gone

    assert reseal_all(eng, org.tenant, ("messages",), batch=1) == 1
    assert eng.reseal_pending(org.tenant, "messages") == (0, 2)
    eng.apply(ShredKeyEpoch(tenant=org.tenant, epoch=2), NOW_MS)
    assert [m.body for m in eng.messages(org.tenant, conv, 8, 8)] == ["under epoch 2"]
