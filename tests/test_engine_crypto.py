"""Records at rest: sealed with AES-256-GCM-SIV under per-tenant, per-epoch data keys.

Real LMDB stores in tmp dirs; records are moved and damaged with raw LMDB write transactions,
as someone with the disk in hand would.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb
import msgspec
import pytest
from conftest import NOW_MS, PASSWORD, Org, assert_refusal, create_org, refused, snapshot

from engine import (
    AddKeyEpoch,
    AddMembers,
    Append,
    Appended,
    ChangePassword,
    ClientMsgIdReused,
    Conflict,
    CorruptData,
    CreateGroup,
    CreateSession,
    CreateTenant,
    CreateUser,
    Engine,
    EpochState,
    HeraldError,
    Invalid,
    KeyEpochAdded,
    KeyEpochShredded,
    KeyEpochsRevoked,
    KeyNotInstalled,
    Keyring,
    KeyUnavailable,
    Leave,
    Message,
    MessageKind,
    NotFound,
    PasswordChanged,
    RevokeKeyEpochs,
    ShredKeyEpoch,
    Unauthenticated,
    hash_password,
)
from engine.blocks import pack_block
from engine.crypto import MAX_SEALS_PER_EPOCH, AeadSealer
from engine.keys import pack_ids
from engine.records import EpochRecord
from engine.reseal import RESEALED_TABLES

MAP_SIZE_BYTES = 256 * 2**20


class FakeClock:
    """Monotonic seconds that move only when told to (or by `step` on every reading)."""

    def __init__(self, start: float = 1_000.0, step: float = 0.0) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@dataclass
class Sealed:
    """A sealed engine, its keyring, and the DEKs installed in it, per (tenant, epoch)."""

    path: Path
    engine: Engine
    keyring: Keyring
    clock: FakeClock
    deks: dict[tuple[int, int], bytes]

    def reopen(self, keyring: Keyring | None = None) -> Engine:
        self.engine.close()
        self.keyring = keyring or self.keyring
        self.engine = Engine(self.path, map_size=MAP_SIZE_BYTES, keyring=self.keyring)
        return self.engine

    def add_epoch(self, tenant: int, *, install: bool = True) -> int:
        """What the appliance does: a fresh DEK, installed, then its (here: fake) wrap stored."""
        epoch = len([k for k in self.deks if k[0] == tenant]) + 1
        dek = os.urandom(32)
        self.deks[tenant, epoch] = dek
        if install:
            self.keyring.install(tenant, epoch, dek)
        added = self.engine.apply(
            AddKeyEpoch(tenant=tenant, wrapped_dek=b"wrapped:" + dek[:8], key_id=f"ek-{tenant}"),
            NOW_MS,
        )
        assert added == KeyEpochAdded(tenant, epoch)
        return epoch


NAME_KEY = bytes(range(100, 132))  # what the appliance would derive from its master key


@pytest.fixture
def sealed(tmp_path: Path) -> Iterator[Sealed]:
    clock = FakeClock()
    keyring = Keyring(clock=clock, name_key=NAME_KEY)
    path = tmp_path / "sealed"
    box = Sealed(path, Engine(path, map_size=MAP_SIZE_BYTES, keyring=keyring), keyring, clock, {})
    yield box
    box.engine.close()


def sealed_org(box: Sealed, name: str, hash_: str) -> Org:
    """Tenant `name` with a first key epoch, and alice, bob, carol and dave."""
    engine = box.engine
    tenant = engine.apply(CreateTenant(name=name), NOW_MS).tenant
    box.add_epoch(tenant)
    users = [
        engine.apply(CreateUser(tenant=tenant, login=login, display_name=login.title(),
                                password_hash=hash_), NOW_MS).user
        for login in ("alice", "bob", "carol", "dave")
    ]
    return Org(tenant, *users)


def group(engine: Engine, org: Org, title: str = "team") -> int:
    op = CreateGroup(tenant=org.tenant, creator=org.alice, title=title, members=(org.bob,))
    return engine.apply(op, NOW_MS).conv


def say(org: Org, conv: int, cmid: str, body: str = "hello") -> Append:
    return Append(tenant=org.tenant, conv=conv, sender=org.alice, client_msg_id=cmid, body=body)


def reseal_metadata(engine: Engine, tenant: int) -> None:
    """What `herald keys rotate` does after a new epoch: every non-message record under it."""
    for table in RESEALED_TABLES:
        after = b""
        while True:
            after = engine.reseal_records(tenant, table, after).next_key
            if not after:
                break


def raw_put(path: Path, table: bytes, key: bytes, value: bytes) -> None:
    env = lmdb.open(str(path), max_dbs=32, map_size=MAP_SIZE_BYTES)
    try:
        with env.begin(write=True) as txn:
            txn.put(key, value, db=env.open_db(table, txn=txn))
    finally:
        env.close()


def raw_get(path: Path, table: bytes, key: bytes) -> bytes:
    env = lmdb.open(str(path), max_dbs=32, map_size=MAP_SIZE_BYTES, readonly=True)
    try:
        with env.begin() as txn:
            value = txn.get(key, db=env.open_db(table, txn=txn))
    finally:
        env.close()
    assert value is not None, (table, key)
    return bytes(value)


# -- nothing readable on disk -----------------------------------------------------------------


def fill_recognisably(engine: Engine, org: Org, hash_: str) -> list[bytes]:
    """1,000 messages (bodies and client_msg_ids), a group title and display names, each a
    string found nowhere else; a retry of the last message is still recognised."""
    conv = engine.apply(CreateGroup(tenant=org.tenant, creator=org.alice,
                                    title="Nightingale-Secret-Title", members=(org.bob,)),
                        NOW_MS).conv
    engine.apply(CreateUser(tenant=org.tenant, login="login-marker-okapi",
                            display_name="Zebra-Display-Name", password_hash=hash_), NOW_MS)
    bodies = [f"plaintext-marker-{i:04d}-quokka" for i in range(1000)]
    cmids = [f"cmid-marker-{i:04d}-wombat" for i in range(1000)]
    for start in range(0, 1000, 100):
        results = engine.apply_batch(
            [say(org, conv, cmids[i], bodies[i]) for i in range(start, start + 100)], NOW_MS
        )
        assert all(isinstance(r, Appended) for r in results)
    retry = engine.apply(say(org, conv, cmids[-1], bodies[-1]), NOW_MS)
    assert isinstance(retry, Appended) and retry.duplicate
    return [x.encode() for x in bodies + cmids] + [
        b"Nightingale-Secret-Title", b"Zebra-Display-Name", b"$argon2id$", b"login-marker-okapi"]


def test_a_sealed_store_holds_no_plaintext_while_a_plain_one_does(
    tmp_path: Path, sealed: Sealed, password_hash: str
) -> None:
    plain_path = tmp_path / "plain"
    plain = Engine(plain_path, map_size=MAP_SIZE_BYTES)
    plain_needles = fill_recognisably(plain, create_org(plain, "acme"), password_hash)
    plain.close()
    needles = fill_recognisably(
        sealed.engine, sealed_org(sealed, "acme", password_hash), password_hash
    )
    sealed.engine.close()

    plain_bytes = (plain_path / "data.mdb").read_bytes()
    sealed_bytes = (sealed.path / "data.mdb").read_bytes()
    assert all(n in plain_bytes for n in plain_needles)  # so the search below can fail
    found = [n for n in needles if n in sealed_bytes]
    assert found == []
    assert needles == plain_needles


def test_logins_are_found_through_their_blinded_index_and_only_with_the_name_key(
    sealed: Sealed, password_hash: str
) -> None:
    org = sealed_org(sealed, "acme", password_hash)
    assert sealed.engine.find_user(org.tenant, "bob") == org.bob
    assert sealed.engine.authenticate(org.tenant, "alice", PASSWORD) == org.alice
    with pytest.raises(NotFound):
        sealed.engine.find_user(org.tenant, "mallory")
    deks = [(t, e, d) for (t, e), d in sealed.deks.items()]

    def keyring(name_key: bytes | None) -> Keyring:
        ring = Keyring(name_key=name_key)
        for tenant, epoch, dek in deks:
            ring.install(tenant, epoch, dek)
        return ring

    sealed.engine.close()
    with pytest.raises(KeyUnavailable) as missing:
        Engine(sealed.path, map_size=MAP_SIZE_BYTES, keyring=keyring(None))
    with pytest.raises(KeyUnavailable) as wrong:
        Engine(sealed.path, map_size=MAP_SIZE_BYTES, keyring=keyring(bytes(32)))
    assert "name key" in missing.value.message and "name key" in wrong.value.message
    eng = sealed.reopen(keyring(NAME_KEY))
    assert eng.find_user(org.tenant, "carol") == org.carol


def test_a_sealed_store_created_without_a_name_key_keeps_it_so(tmp_path: Path) -> None:
    Engine(tmp_path / "s", map_size=MAP_SIZE_BYTES, keyring=Keyring()).close()

    with pytest.raises(CorruptData) as refusal:
        Engine(tmp_path / "s", map_size=MAP_SIZE_BYTES, keyring=Keyring(name_key=NAME_KEY))
    assert "without a name key" in refusal.value.message
    Engine(tmp_path / "s", map_size=MAP_SIZE_BYTES, keyring=Keyring()).close()


# -- records bound to their place -------------------------------------------------------------


@dataclass
class TwoTenants:
    box: Sealed
    acme: Org
    globex: Org
    acme_conv: int
    acme_other_conv: int
    globex_conv: int


@pytest.fixture
def two(sealed: Sealed, password_hash: str) -> TwoTenants:
    acme, globex = (sealed_org(sealed, name, password_hash) for name in ("acme", "globex"))
    eng = sealed.engine
    convs = [group(eng, acme), group(eng, acme, "other"), group(eng, globex)]
    for org, conv in ((acme, convs[0]), (acme, convs[1]), (globex, convs[2])):
        eng.apply_batch([say(org, conv, f"c{i}", f"body {i}") for i in range(5)], NOW_MS)
    sealed.engine.close()
    return TwoTenants(sealed, acme, globex, *convs)


def moved(two: TwoTenants, table: bytes, source: bytes, target: bytes) -> Engine:
    raw_put(two.box.path, table, target, raw_get(two.box.path, table, source))
    return two.box.reopen()


# Each conversation of `two` holds its six messages (the group's creation, then five) in one
# message block, keyed by its first seq (engine/blocks.py).


def test_a_message_copied_to_another_conversation_fails_to_open(two: TwoTenants) -> None:
    t = two.acme.tenant
    source, target = pack_ids(t, two.acme_conv, 1), pack_ids(t, two.acme_other_conv, 1)
    eng = moved(two, b"messages", source, target)

    with pytest.raises(CorruptData) as refusal:
        eng.messages(t, two.acme_other_conv, 3, 3)
    assert_refusal(refusal.value, CorruptData)
    assert "failed authentication" in refusal.value.message
    assert [m.seq for m in eng.messages(t, two.acme_conv, 1, 6)] == [1, 2, 3, 4, 5, 6]


def test_a_message_copied_to_another_seq_fails_to_open(two: TwoTenants) -> None:
    t, c = two.acme.tenant, two.acme_conv
    eng = moved(two, b"messages", pack_ids(t, c, 1), pack_ids(t, c, 4))

    with pytest.raises(CorruptData):
        eng.page_after(t, two.acme.alice, c, 0, 10)
    assert eng.messages(t, c, 2, 2)[0].body == "body 0"  # the block of seq 1 is intact


def test_a_message_copied_to_another_tenant_fails_to_open(two: TwoTenants) -> None:
    a, g = two.acme.tenant, two.globex.tenant
    eng = moved(two, b"messages", pack_ids(a, two.acme_conv, 1), pack_ids(g, two.globex_conv, 1))

    with pytest.raises(CorruptData):
        eng.messages(g, two.globex_conv, 2, 2)


def test_a_record_copied_to_another_table_under_the_same_key_fails_to_open(
    two: TwoTenants,
) -> None:
    # members is keyed tenant|conv|user, messages tenant|conv|seq: the same 24 bytes when the
    # seq equals the user id, so only the table tells the two records apart.
    t, c, alice = two.acme.tenant, two.acme_conv, two.acme.alice
    key = pack_ids(t, c, alice)
    raw_put(two.box.path, b"messages", key, raw_get(two.box.path, b"members", key))
    eng = two.box.reopen()

    with pytest.raises(CorruptData):
        eng.messages(t, c, alice, alice)


def test_a_user_record_copied_onto_another_user_fails_to_open(two: TwoTenants) -> None:
    t = two.acme.tenant
    eng = moved(two, b"users", pack_ids(t, two.acme.alice), pack_ids(t, two.acme.bob))

    with pytest.raises(CorruptData):
        eng.user(t, two.acme.bob)
    assert eng.user(t, two.acme.alice).display_name == "Alice"


@pytest.mark.parametrize("where", ["nonce", "ciphertext", "tag"])
def test_a_flipped_bit_fails_to_open(two: TwoTenants, where: str) -> None:
    t, c = two.acme.tenant, two.acme_conv
    key = pack_ids(t, c, 1)  # the block holding seq 3
    stored = bytearray(raw_get(two.box.path, b"messages", key))
    position = {"nonce": 5, "ciphertext": 17, "tag": len(stored) - 1}[where]
    stored[position] ^= 0x10
    raw_put(two.box.path, b"messages", key, bytes(stored))
    eng = two.box.reopen()

    with pytest.raises(CorruptData):
        eng.messages(t, c, 3, 3)


def test_a_plain_record_in_a_sealed_store_is_refused(two: TwoTenants) -> None:
    t, c = two.acme.tenant, two.acme_conv
    forged = Message(seq=3, sender=two.acme.alice, ts=NOW_MS, client_msg_id="x",
                     kind=MessageKind.TEXT, body="downgraded")
    raw_put(two.box.path, b"messages", pack_ids(t, c, 3), b"\x00" + msgspec.msgpack.encode(forged))
    eng = two.box.reopen()

    with pytest.raises(CorruptData) as refusal:
        eng.messages(t, c, 3, 3)
    assert "plain record" in refusal.value.message


def test_the_stored_layout_is_marker_epoch_nonce_ciphertext(two: TwoTenants) -> None:
    t, c = two.acme.tenant, two.acme_conv
    block = raw_get(two.box.path, b"messages", pack_ids(t, c, 1))
    user = raw_get(two.box.path, b"users", pack_ids(t, two.acme.alice))
    eng = two.box.reopen()
    records = [msgspec.msgpack.encode(m) for m in eng.messages(t, c, 1, 6)]
    user_bytes = len(msgspec.msgpack.encode(eng.user(t, two.acme.alice)))

    # Message blocks: AES-256-GCM under the bulk subkey; everything else AES-256-GCM-SIV.
    assert (block[0], user[0]) == (0x02, 0x01)
    assert struct.unpack(">I", block[1:5]) == struct.unpack(">I", user[1:5]) == (1,)
    assert len(block) == 1 + 4 + 12 + len(pack_block(records)) + 16
    assert len(user) == 1 + 4 + 12 + user_bytes + 16


# -- a store is sealed or plain for life ------------------------------------------------------


def test_a_plain_engine_refuses_a_sealed_store_and_a_sealed_one_a_plain_store(
    tmp_path: Path,
) -> None:
    Engine(tmp_path / "s", map_size=MAP_SIZE_BYTES, keyring=Keyring()).close()
    Engine(tmp_path / "p", map_size=MAP_SIZE_BYTES).close()

    with pytest.raises(CorruptData) as sealed_refusal:
        Engine(tmp_path / "s", map_size=MAP_SIZE_BYTES)
    with pytest.raises(CorruptData) as plain_refusal:
        Engine(tmp_path / "p", map_size=MAP_SIZE_BYTES, keyring=Keyring())

    assert "sealed" in sealed_refusal.value.message
    assert "keyring" in sealed_refusal.value.message
    assert "plain" in plain_refusal.value.message


def test_key_epochs_are_refused_in_a_plain_store(engine: Engine, org: Org) -> None:
    (result,) = engine.apply_batch(
        [AddKeyEpoch(tenant=org.tenant, wrapped_dek=b"w", key_id="ek")], NOW_MS
    )
    assert_refusal(result, Invalid)
    assert engine.keyring is None
    assert engine.key_epochs(org.tenant) == []


# -- epochs: rotation and shredding -----------------------------------------------------------


def test_after_rotation_both_epochs_read_and_shredding_the_old_one_loses_only_its_records(
    sealed: Sealed, password_hash: str
) -> None:
    org = sealed_org(sealed, "acme", password_hash)
    eng = sealed.engine
    conv = group(eng, org)
    eng.apply_batch([say(org, conv, f"a{i}", f"old {i}") for i in range(5)], NOW_MS)
    old_head = eng.conversation(org.tenant, org.alice, conv).head
    assert sealed.add_epoch(org.tenant) == 2
    eng.apply_batch([say(org, conv, f"b{i}", f"new {i}") for i in range(5)], NOW_MS)

    bodies = [m.body for m in eng.messages(org.tenant, conv, 1, 100)]
    assert bodies[-10:] == [f"old {i}" for i in range(5)] + [f"new {i}" for i in range(5)]
    epochs = eng.key_epochs(org.tenant)
    assert [(e.epoch, e.state) for e in epochs] == [(1, EpochState.RETIRED), (2, EpochState.ACTIVE)]
    eng.close()
    # A block never mixes epochs: the first message after the rotation starts a new one.
    for first_seq, epoch in ((1, 1), (old_head + 1, 2)):
        stored = raw_get(sealed.path, b"messages", pack_ids(org.tenant, conv, first_seq))
        assert struct.unpack(">I", stored[1:5]) == (epoch,)
    eng = sealed.reopen()

    reseal_metadata(eng, org.tenant)  # accounts and groups must outlive the shred
    assert eng.apply(ShredKeyEpoch(tenant=org.tenant, epoch=1), NOW_MS) == KeyEpochShredded(
        org.tenant, 1
    )

    with pytest.raises(KeyUnavailable) as refusal:
        eng.messages(org.tenant, conv, old_head, old_head)
    assert "shredded" in refusal.value.message
    new = eng.messages(org.tenant, conv, old_head + 1, old_head + 5)
    assert [m.body for m in new] == [f"new {i}" for i in range(5)]
    shredded = eng.key_epochs(org.tenant)[0]
    assert (shredded.state, shredded.wrapped_dek, shredded.shredded_ms) == (
        EpochState.SHREDDED, b"", NOW_MS
    )
    # Irreversible: the DEK cannot be installed again, not even into a fresh keyring that had
    # it before the store was opened.
    with pytest.raises(Invalid):
        sealed.keyring.install(org.tenant, 1, sealed.deks[org.tenant, 1])
    fresh = Keyring(name_key=NAME_KEY)
    for (tenant, epoch), dek in sealed.deks.items():
        fresh.install(tenant, epoch, dek)
    eng = sealed.reopen(fresh)
    with pytest.raises(KeyUnavailable):
        eng.messages(org.tenant, conv, old_head, old_head)
    assert eng.messages(org.tenant, conv, old_head + 5, old_head + 5)[0].body == "new 4"


def test_the_current_epoch_cannot_be_shredded_and_a_shred_happens_once(
    sealed: Sealed, password_hash: str
) -> None:
    org = sealed_org(sealed, "acme", password_hash)
    eng = sealed.engine
    current = refused_op(eng, ShredKeyEpoch(tenant=org.tenant, epoch=1))
    assert_refusal(current, Conflict)
    assert "current epoch" in current.message
    assert_refusal(refused_op(eng, ShredKeyEpoch(tenant=org.tenant, epoch=7)), NotFound)
    sealed.add_epoch(org.tenant)
    reseal_metadata(eng, org.tenant)
    eng.apply(ShredKeyEpoch(tenant=org.tenant, epoch=1), NOW_MS)
    assert_refusal(refused_op(eng, ShredKeyEpoch(tenant=org.tenant, epoch=1)), Conflict)


def test_revoked_epochs_refuse_their_records_for_good_and_a_new_epoch_writes_again(
    sealed: Sealed, password_hash: str
) -> None:
    acme, globex = sealed_org(sealed, "acme", password_hash), sealed_org(sealed, "globex",
                                                                          password_hash)
    eng = sealed.engine
    conv, globex_conv = group(eng, acme), group(eng, globex)
    eng.apply_batch([say(acme, conv, f"a{i}", f"old {i}") for i in range(3)], NOW_MS)
    assert sealed.add_epoch(acme.tenant) == 2
    eng.apply(say(acme, conv, "b0", "under epoch 2"), NOW_MS)

    assert eng.apply(RevokeKeyEpochs(tenant=acme.tenant), NOW_MS) == KeyEpochsRevoked(
        acme.tenant, (1, 2))
    assert [(e.epoch, e.state) for e in eng.key_epochs(acme.tenant)] == [
        (1, EpochState.REVOKED), (2, EpochState.REVOKED)]
    for epoch_seq in (1, 4):
        with pytest.raises(KeyUnavailable) as refusal:
            eng.messages(acme.tenant, conv, epoch_seq, epoch_seq)
        assert type(refusal.value) is KeyUnavailable  # not one the appliance could fetch
        assert "revoked" in refusal.value.message
    write = refused_op(eng, say(acme, conv, "c0", "after the revocation"))
    assert_refusal(write, KeyUnavailable)
    assert "revoked" in write.message
    # Other tenants carry on; the escrow would refuse the keys anyway, and so does the keyring.
    eng.apply(say(globex, globex_conv, "g0"), NOW_MS)
    with pytest.raises(Invalid):
        sealed.keyring.install(acme.tenant, 2, sealed.deks[acme.tenant, 2])
    assert eng.apply(RevokeKeyEpochs(tenant=acme.tenant), NOW_MS) == KeyEpochsRevoked(
        acme.tenant, ())
    assert_refusal(refused(eng, RevokeKeyEpochs(tenant=999)), NotFound)

    # Every engine on the store learns it at open, even one whose keyring still held the DEKs.
    fresh = Keyring(name_key=NAME_KEY)
    for (tenant, epoch), dek in sealed.deks.items():
        fresh.install(tenant, epoch, dek)
    eng = sealed.reopen(fresh)
    with pytest.raises(KeyUnavailable, match="revoked"):
        eng.messages(acme.tenant, conv, 1, 1)
    assert fresh.installed(acme.tenant) == []

    # A new epoch seals new records again; what was sealed before (messages, and the
    # tenant's users and groups too) stays gone.
    sealed.keyring = fresh
    assert sealed.add_epoch(acme.tenant) == 3
    eng.apply(say(acme, conv, "d0", "under epoch 3"), NOW_MS)
    latest = eng.page_before(acme.tenant, acme.alice, conv, None, 1)  # opens no member record
    assert [m.body for m in latest.messages] == ["under epoch 3"]
    for read in (lambda: eng.messages(acme.tenant, conv, 1, 1),
                 lambda: eng.user(acme.tenant, acme.alice)):
        with pytest.raises(KeyUnavailable, match="revoked"):
            read()


def test_add_key_epoch_checks_its_arguments(sealed: Sealed, password_hash: str) -> None:
    org = sealed_org(sealed, "acme", password_hash)
    eng = sealed.engine
    for op, expected in [
        (AddKeyEpoch(tenant=999, wrapped_dek=b"w", key_id="ek"), NotFound),
        (AddKeyEpoch(tenant=org.tenant, wrapped_dek=b"", key_id="ek"), Invalid),
        (AddKeyEpoch(tenant=org.tenant, wrapped_dek=b"w" * 5000, key_id="ek"), Invalid),
        (AddKeyEpoch(tenant=org.tenant, wrapped_dek=b"w", key_id=""), Invalid),
    ]:
        assert_refusal(refused_op(eng, op), expected)
    assert len(eng.key_epochs(org.tenant)) == 1


def refused_op(engine: Engine, op: object) -> HeraldError:
    (result,) = engine.apply_batch([op], NOW_MS)  # type: ignore[list-item]
    assert isinstance(result, HeraldError), result
    return result


# -- missing and expired keys -----------------------------------------------------------------


def test_without_its_key_a_tenant_can_neither_read_nor_write_and_others_carry_on(
    sealed: Sealed, password_hash: str
) -> None:
    acme, globex = (sealed_org(sealed, name, password_hash) for name in ("acme", "globex"))
    eng = sealed.engine
    acme_conv, globex_conv = group(eng, acme), group(eng, globex)
    eng.apply(say(acme, acme_conv, "before"), NOW_MS)
    acme_before = snapshot(eng, acme.tenant)
    counts_before = eng.stats()

    sealed.keyring.forget(acme.tenant)
    results = eng.apply_batch([
        say(globex, globex_conv, "g1"),
        say(acme, acme_conv, "refused"),
        CreateUser(tenant=acme.tenant, login="eve", display_name="Eve",
                   password_hash=password_hash),
        say(globex, globex_conv, "g2"),
    ], NOW_MS)

    assert isinstance(results[0], Appended) and isinstance(results[3], Appended)
    assert_refusal(results[1], KeyNotInstalled)
    assert_refusal(results[2], KeyNotInstalled)
    assert "not installed" in results[1].message  # type: ignore[union-attr]
    for read in (lambda: eng.messages(acme.tenant, acme_conv, 1, 5),
                 lambda: eng.page_before(acme.tenant, acme.alice, acme_conv, None, 10),
                 lambda: eng.user(acme.tenant, acme.alice),
                 lambda: eng.authenticate(acme.tenant, "alice", PASSWORD)):
        with pytest.raises(KeyUnavailable):
            read()
    assert eng.stats()["messages"] == counts_before["messages"] + 2
    assert eng.stats()["users"] == counts_before["users"]
    sealed.keyring.install(acme.tenant, 1, sealed.deks[acme.tenant, 1])
    after = snapshot(eng, acme.tenant)
    assert {k: v for k, v in after.items() if k != "counts"} == {
        k: v for k, v in acme_before.items() if k != "counts"
    }
    assert eng.authenticate(acme.tenant, "alice", PASSWORD) == acme.alice


def test_an_expired_key_refuses_reads_and_writes_until_installed_again(
    sealed: Sealed, password_hash: str
) -> None:
    org = sealed_org(sealed, "acme", password_hash)
    eng = sealed.engine
    conv = group(eng, org)
    sealed.keyring.install(org.tenant, 1, sealed.deks[org.tenant, 1],
                           expires_at=sealed.clock.now + 60)
    eng.apply(say(org, conv, "t1", "in time"), NOW_MS)
    sealed.clock.now += 60

    assert_refusal(refused_op(eng, say(org, conv, "t2", "too late")), KeyUnavailable)
    with pytest.raises(KeyUnavailable) as refusal:
        eng.messages(org.tenant, conv, 1, 5)
    assert "expired" in refusal.value.message
    assert sealed.keyring.installed(org.tenant) == []

    sealed.keyring.install(org.tenant, 1, sealed.deks[org.tenant, 1])
    assert [m.body for m in eng.messages(org.tenant, conv, 1, 5)][-1] == "in time"


HALF_WAY_OPS = ["create_group", "add_members", "append", "recall", "leave"]


@pytest.mark.parametrize("kind", HALF_WAY_OPS)
def test_a_key_expiring_half_way_through_an_op_leaves_no_trace(
    sealed: Sealed, password_hash: str, kind: str
) -> None:
    """Whichever seal or open of an op finds the key expired, the op is refused whole: every
    key lookup below is one (fake) second later than the one before, and the key's lifetime
    grows by a second per attempt until the op goes through."""
    org = sealed_org(sealed, "acme", password_hash)
    eng = sealed.engine
    conv = group(eng, org)
    eng.apply(say(org, conv, "first"), NOW_MS)
    t = org.tenant
    op = {
        "create_group": CreateGroup(tenant=t, creator=org.alice, title="t",
                                    members=(org.bob, org.carol, org.dave)),
        "add_members": AddMembers(tenant=t, actor=org.alice, conv=conv,
                                  users=(org.carol, org.dave)),
        "append": say(org, conv, "second"),
        "recall": Append(tenant=t, conv=conv, sender=org.alice, client_msg_id="r",
                         kind=MessageKind.RECALL, body="", ref=2),
        "leave": Leave(tenant=t, user=org.alice, conv=conv),  # the owner: bob inherits
    }[kind]
    dek = sealed.deks[t, 1]
    sealed.clock.step = 1.0
    refusals = 0
    for budget in range(1, 60):
        before = snapshot(eng, t)
        sealed.keyring.install(t, 1, dek, expires_at=sealed.clock.now + budget)
        (result,) = eng.apply_batch([op], NOW_MS)
        sealed.keyring.install(t, 1, dek)
        if not isinstance(result, HeraldError):
            break
        refusals += 1
        assert_refusal(result, KeyUnavailable)
        assert snapshot(eng, t) == before
    assert refusals >= 1
    assert not isinstance(result, HeraldError)


# -- reopening, and the limit of seals per epoch ----------------------------------------------


def test_a_reopened_store_with_its_keys_reinstalled_reads_everything_back(
    sealed: Sealed, password_hash: str
) -> None:
    org = sealed_org(sealed, "acme", password_hash)
    eng = sealed.engine
    conv = group(eng, org)
    eng.apply_batch([say(org, conv, f"a{i}") for i in range(3)], NOW_MS)
    sealed.add_epoch(org.tenant)
    eng.apply_batch([say(org, conv, f"b{i}") for i in range(3)], NOW_MS)
    before = snapshot(eng, org.tenant)

    fresh = Keyring(name_key=NAME_KEY)
    for (tenant, epoch), dek in sealed.deks.items():
        fresh.install(tenant, epoch, dek)
    eng = sealed.reopen(fresh)

    assert snapshot(eng, org.tenant) == before
    assert fresh.current(org.tenant) == 2  # from the store: the appliance need not set it
    assert isinstance(eng.apply(say(org, conv, "after"), NOW_MS), Appended)


def test_seals_are_counted_per_epoch_and_refused_past_the_limit(
    sealed: Sealed, password_hash: str
) -> None:
    org = sealed_org(sealed, "acme", password_hash)
    eng = sealed.engine
    conv = group(eng, org)
    seals = eng.key_epochs(org.tenant)[0].seals
    eng.apply_batch([say(org, conv, f"a{i}") for i in range(10)], NOW_MS)
    # Each append seals its message and nothing else.
    assert eng.key_epochs(org.tenant)[0].seals == seals + 10

    # Bring the counter to two short of the limit, as if it had sealed that many.
    key = pack_ids(org.tenant, 1)
    sealed.engine.close()
    record = msgspec.msgpack.decode(raw_get(sealed.path, b"key_epochs", key)[1:], type=EpochRecord)
    nearly = msgspec.structs.replace(record, seals=MAX_SEALS_PER_EPOCH - 2)
    raw_put(sealed.path, b"key_epochs", key, b"\x00" + msgspec.msgpack.encode(nearly))
    eng = sealed.reopen()

    results = eng.apply_batch([say(org, conv, f"b{i}") for i in range(3)], NOW_MS)
    assert [type(r) for r in results] == [Appended, Appended, KeyUnavailable]
    assert "add a new key epoch" in results[2].message  # type: ignore[union-attr]
    sealed.add_epoch(org.tenant)
    assert isinstance(eng.apply(say(org, conv, "b2"), NOW_MS), Appended)


def test_add_members_in_a_rotated_tenant_reads_old_records_and_writes_new_ones(
    sealed: Sealed, password_hash: str
) -> None:
    org = sealed_org(sealed, "acme", password_hash)
    eng = sealed.engine
    conv = group(eng, org)
    sealed.add_epoch(org.tenant)
    changed = eng.apply(AddMembers(tenant=org.tenant, actor=org.alice, conv=conv,
                                   users=(org.carol,)), NOW_MS)
    assert changed.member_version == 2  # type: ignore[union-attr]
    listing = eng.members(org.tenant, org.carol, conv)
    assert sorted(u for u, _ in listing.changed) == [org.alice, org.bob, org.carol]


def test_a_keyring_refuses_keys_of_the_wrong_size_and_epochs_out_of_range(tmp_path: Path) -> None:
    ring = Keyring()
    for bad in (lambda: ring.install(1, 1, bytes(16)), lambda: ring.install(1, 0, bytes(32)),
                lambda: ring.install(1, 2**32, bytes(32)), lambda: ring.set_current(1, 0),
                lambda: Keyring(name_key=bytes(31))):
        with pytest.raises(Invalid):
            bad()
    with pytest.raises(Invalid):
        Engine(tmp_path / "s", keyring=ring, sealer=ring)  # type: ignore[arg-type]
    ring.install(1, 1, bytes(32), expires_at=5.0)
    ring.install(1, 2, bytes(32))
    assert ring.installed(1) == [2]  # the real monotonic clock is far past 5 s
    ring.forget(1, 2)
    assert ring.installed(1) == []


def test_refusals_about_keys_never_carry_key_material(sealed: Sealed, password_hash: str) -> None:
    org = sealed_org(sealed, "acme", password_hash)
    eng = sealed.engine
    conv = group(eng, org)
    dek = sealed.deks[org.tenant, 1]
    messages: list[str] = []
    for attempt in (lambda: sealed.keyring.install(org.tenant, 1, dek[:31]),
                    lambda: Keyring(name_key=NAME_KEY[:31])):
        with pytest.raises(Invalid) as invalid:
            attempt()
        messages.append(invalid.value.message)
    sealed.keyring.install(org.tenant, 1, dek, expires_at=sealed.clock.now)
    messages.append(refused_op(eng, say(org, conv, "x")).message)
    sealed.keyring.forget(org.tenant)
    with pytest.raises(KeyUnavailable) as missing:
        eng.messages(org.tenant, conv, 1, 1)
    messages.append(missing.value.message)

    for message in messages:
        for secret in (dek, NAME_KEY):
            assert secret.hex() not in message and repr(secret) not in message
            assert secret[:8].hex() not in message


def test_a_forked_child_never_seals_with_its_parents_next_nonce() -> None:
    # Nonces come from a pool of os.urandom bytes: a child that kept the parent's pool would
    # repeat the nonces the parent uses next, fatal under AES-GCM.
    keyring = Keyring()
    keyring.install(1, 1, os.urandom(32))
    keyring.set_current(1, 1)
    sealer = AeadSealer(keyring, bulk_tables=(b"messages",))
    key = pack_ids(1, 2, 3)
    sealer.seal(b"messages", key, b"first")  # the pool is filled
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        os.write(write_end, sealer.seal(b"messages", key, b"child")[5:17])
        os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    child_nonce = os.read(read_end, 12)
    os.close(read_end)
    parent_nonce = sealer.seal(b"messages", key, b"parent")[5:17]

    assert len(child_nonce) == 12
    assert child_nonce != parent_nonce


def test_a_record_under_an_epoch_never_installed_tells_the_missing_listeners(
    sealed: Sealed, password_hash: str
) -> None:
    org = sealed_org(sealed, "acme", password_hash)
    conv = group(sealed.engine, org)
    told: list[tuple[int, int]] = []
    sealed.keyring.add_missing_listener(lambda tenant, epoch: told.append((tenant, epoch)))
    sealed.keyring.forget(org.tenant, 1)  # as if another process had added the epoch

    with pytest.raises(KeyNotInstalled) as missing:
        sealed.engine.messages(org.tenant, conv, 1, 1)
    assert (missing.value.tenant, missing.value.epoch) == (org.tenant, 1)
    assert missing.value.code == "key_unavailable"  # on the wire, what it always was
    assert told == [(org.tenant, 1)]
    sealed.keyring.install(org.tenant, 1, sealed.deks[org.tenant, 1])
    assert sealed.engine.messages(org.tenant, conv, 1, 1)
    assert len(told) == 1  # an installed key tells nobody


def test_tenant_names_are_sealed_and_blinded_yet_found_by_name(
    tmp_path: Path, sealed: Sealed, password_hash: str
) -> None:
    # The appliance lists tenants before any DEK is unwrapped: their records are sealed under
    # a key derived from the name key, and the name index holds an HMAC of each name.
    name = "tenant-marker-capybara"
    plain = Engine(tmp_path / "plain", map_size=MAP_SIZE_BYTES)
    plain.apply(CreateTenant(name=name), NOW_MS)
    plain.close()
    org = sealed_org(sealed, name, password_hash)
    eng = sealed.engine
    assert eng.find_tenant(name) == org.tenant
    assert eng.tenant(org.tenant).name == name
    assert [(t, r.name) for t, r in eng.tenants()] == [(org.tenant, name)]
    assert_refusal(refused(eng, CreateTenant(name=name)), Conflict)
    eng.close()

    assert name.encode() in (tmp_path / "plain" / "data.mdb").read_bytes()  # the search works
    assert name.encode() not in (sealed.path / "data.mdb").read_bytes()
    eng = sealed.reopen()
    assert eng.find_tenant(name) == org.tenant


def test_a_users_own_password_change_works_in_a_sealed_store_and_a_refused_one_writes_nothing(
    sealed: Sealed, password_hash: str,
) -> None:
    # The user record is sealed, so the change runs in a nested transaction: a refusal after
    # its checks must leave the store as it was.
    engine, org = sealed.engine, sealed_org(sealed, "acme", password_hash)

    def session() -> bytes:
        digest = hashlib.sha256(os.urandom(32)).digest()
        engine.apply(CreateSession(tenant=org.tenant, user=org.alice, token_hash=digest,
                                   device="phone", expires_ms=NOW_MS + 60_000), NOW_MS)
        return digest

    asking, taken = session(), session()
    new_hash = hash_password("a sealed new password")

    def change(new_token: bytes) -> ChangePassword:
        return ChangePassword(token_hash=asking, checked_hash=password_hash,
                              password_hash=new_hash, new_token_hash=new_token,
                              expires_ms=NOW_MS + 60_000)

    before = snapshot(engine, org.tenant)
    assert_refusal(refused(engine, change(taken)), Conflict)
    assert snapshot(engine, org.tenant) == before
    successor = hashlib.sha256(b"successor").digest()
    result = engine.apply(change(successor), NOW_MS)
    assert isinstance(result, PasswordChanged)
    assert set(result.revoked.token_hashes) == {asking, taken}
    assert engine.session(successor, NOW_MS).device == "phone"
    assert engine.authenticate(org.tenant, "alice", "a sealed new password") == org.alice
    with pytest.raises(Unauthenticated):
        engine.authenticate(org.tenant, "alice", PASSWORD)


# -- retries: the dedupe entry's content digest --------------------------------------------------


def _dedupe_values(path: Path) -> list[bytes]:
    env = lmdb.open(str(path), max_dbs=32, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return [bytes(v) for _, v in txn.cursor(db=env.open_db(b"dedupe", txn=txn))]
    finally:
        env.close()


@pytest.mark.parametrize("name_key", [NAME_KEY, None], ids=["name_key", "no_name_key"])
def test_a_sealed_store_tells_a_retry_from_a_reused_client_msg_id(
    tmp_path: Path, password_hash: str, name_key: bytes | None
) -> None:
    keyring = Keyring(name_key=name_key)
    engine = Engine(tmp_path / "s", map_size=MAP_SIZE_BYTES, keyring=keyring)
    box = Sealed(tmp_path / "s", engine, keyring, FakeClock(), {})
    try:
        org = sealed_org(box, "acme", password_hash)
        conv = group(box.engine, org)
        first = box.engine.apply(say(org, conv, "c-1", "original"), NOW_MS)

        retry = box.engine.apply(say(org, conv, "c-1", "original"), NOW_MS + 1)
        reused = refused(box.engine, say(org, conv, "c-1", "other"), NOW_MS + 1)

        assert retry == Appended(conv, first.seq, NOW_MS, duplicate=True)  # type: ignore[union-attr]
        assert_refusal(reused, ClientMsgIdReused)
    finally:
        box.engine.close()


def test_the_content_digest_of_a_dedupe_entry_is_keyed_in_a_sealed_store(
    tmp_path: Path, password_hash: str
) -> None:
    # A plain hash of a short body can be guessed back from the disk: the digest is keyed
    # (from the name key), and covers the sender and client_msg_id, so that no two entries'
    # digests match even for the same body.
    digests: dict[str, list[bytes]] = {}
    for name, name_key in (("one", NAME_KEY), ("other", bytes(32)), ("plain", None)):
        path = tmp_path / name
        keyring = None if name == "plain" else Keyring(name_key=name_key)
        engine = Engine(path, map_size=MAP_SIZE_BYTES, keyring=keyring)
        box = Sealed(path, engine, keyring or Keyring(), FakeClock(), {})
        org = sealed_org(box, "acme", password_hash) if keyring else create_org(engine, "acme")
        conv = group(engine, org)
        for cmid in ("c-1", "c-2"):
            engine.apply(say(org, conv, cmid, "ok"), NOW_MS)
        engine.close()
        digests[name] = [value[24:] for value in _dedupe_values(path)]

    everything = [d for found in digests.values() for d in found]
    assert all(len(d) == 16 for d in everything)
    assert len(set(everything)) == len(everything) == 6


def test_a_recall_reseals_the_block_under_its_own_epoch_so_that_a_shred_still_takes_it(
    sealed: Sealed, password_hash: str
) -> None:
    # A block never mixes epochs, and shredding an epoch destroys exactly the messages written
    # under it: re-sealing a recalled message's block under the current epoch would save its
    # neighbours from a shred meant to delete them.
    eng = sealed.engine
    org = sealed_org(sealed, "acme", password_hash)
    conv = group(eng, org)  # seq 1
    eng.apply(say(org, conv, "c-1", "the old secret"), NOW_MS)  # seq 2
    eng.apply(say(org, conv, "c-2", "an old neighbour"), NOW_MS)  # seq 3
    sealed.add_epoch(org.tenant)

    hide = Append(tenant=org.tenant, conv=conv, sender=org.alice, client_msg_id="r",
                  body="", kind=MessageKind.RECALL, ref=2)
    assert eng.apply(hide, NOW_MS + 1) == Appended(conv, 4, NOW_MS + 1)

    page = eng.page_after(org.tenant, org.bob, conv, 0, 10).messages
    assert [(m.body, m.recalled_by) for m in page[1:3]] == [("", 4), ("an old neighbour", 0)]
    reseal_metadata(eng, org.tenant)
    eng.apply(ShredKeyEpoch(tenant=org.tenant, epoch=1), NOW_MS + 2)
    with pytest.raises(KeyUnavailable):
        eng.page_after(org.tenant, org.bob, conv, 0, 3)
    assert [m.seq for m in eng.page_after(org.tenant, org.bob, conv, 3, 10).messages] == [4]
