"""The audit log of the appliance: one entry per audited op, in the op's own transaction;
sealed; hash-chained, so that raw edits of the store are found and the first bad entry named.

Real LMDB stores in tmp dirs; entries are edited, removed and swapped with raw LMDB write
transactions, as someone with the disk in hand would.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hypothesis.strategies as st
import lmdb
import msgspec
import pytest
from conftest import NOW_MS, PASSWORD, assert_refusal
from hypothesis import HealthCheck, given, settings

from engine import (
    ActorKind,
    AddKeyEpoch,
    AddMembers,
    AdminRole,
    Append,
    AuditAction,
    AuditActor,
    Audited,
    AuditedOperation,
    AuditOutcome,
    AuditProblem,
    AuditRecorded,
    ChangePassword,
    Conflict,
    CorruptData,
    CreateAdmin,
    CreateGroup,
    CreateSession,
    CreateTenant,
    CreateUser,
    Engine,
    HeraldError,
    Invalid,
    Keyring,
    KeyUnavailable,
    NotFound,
    Operation,
    RecordAudit,
    RemoveMember,
    RevokeKeyEpochs,
    RevokeSession,
    RevokeUserSessions,
    SetAdminPassword,
    SetPassword,
    SetRole,
    SetUserDisabled,
    ShredKeyEpoch,
    UserCreated,
    hash_password,
)
from engine.records import Role

MAP_SIZE_BYTES = 64 * 2**20
NAME_KEY = bytes(range(7, 39))
ADMIN = AuditActor(kind=ActorKind.ADMIN, name="root-admin")
_SEQ = struct.Struct(">Q")


@dataclass
class Store:
    """An engine on `path`, sealed (with a name key) or plain, that tests close and reopen
    around raw edits (py-lmdb allows one environment per path in a process)."""

    path: Path
    sealed: bool
    engine: Engine = field(init=False)
    keyring: Keyring | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.sealed:
            self.keyring = Keyring(name_key=NAME_KEY)
        self.open()

    def open(self) -> Engine:
        self.engine = Engine(self.path, map_size=MAP_SIZE_BYTES, keyring=self.keyring)
        return self.engine

    def close(self) -> None:
        self.engine.close()

    def add_epoch(self, tenant: int) -> AddKeyEpoch:
        """The next epoch's DEK installed, and the op that stores its (fake) wrap."""
        assert self.keyring is not None
        epoch = len(self.engine.key_epochs(tenant)) + 1
        dek = os.urandom(32)
        self.keyring.install(tenant, epoch, dek)
        return AddKeyEpoch(tenant=tenant, wrapped_dek=b"wrapped:" + dek[:4], key_id=f"ek-{tenant}")

    def raw(
        self, edit: Callable[[lmdb.Transaction, lmdb._Database, lmdb._Database], None],
        *, reopen: bool = True,
    ) -> None:
        """Close the engine, run `edit(txn, audit db, meta db)` in a raw write transaction,
        and reopen it (unless told not to)."""
        self.close()
        env = lmdb.open(str(self.path), max_dbs=32, map_size=MAP_SIZE_BYTES)
        try:
            with env.begin(write=True) as txn:
                edit(txn, env.open_db(b"audit", txn=txn), env.open_db(b"meta", txn=txn))
        finally:
            env.close()
        if reopen:
            self.open()


@pytest.fixture(params=["plain", "sealed"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    box = Store(tmp_path / "store", request.param == "sealed")
    yield box
    box.close()


@pytest.fixture
def sealed(tmp_path: Path) -> Iterator[Store]:
    box = Store(tmp_path / "sealed", True)
    yield box
    box.close()


def audited(op: AuditedOperation, actor: AuditActor = ADMIN) -> Audited:
    return Audited(op=op, actor=actor)


def entry_count(engine: Engine) -> int:
    return engine.stats()["audit"]


def actions(engine: Engine) -> list[AuditAction]:
    return [entry.action for entry in engine.audit_entries(limit=1000).entries]


def make_tenant(box: Store, name: str, password_hash: str) -> tuple[int, int, int]:
    """A tenant (with a key epoch when sealed) and two users, none of it audited."""
    engine = box.engine
    tenant = engine.apply(CreateTenant(name=name), NOW_MS).tenant  # type: ignore[union-attr]
    if box.sealed:
        engine.apply(box.add_epoch(tenant), NOW_MS)
    users = [
        engine.apply(CreateUser(tenant=tenant, login=login, display_name=login,
                                password_hash=password_hash), NOW_MS).user  # type: ignore[union-attr]
        for login in ("alice", "bob")
    ]
    return tenant, users[0], users[1]


# -- one entry per audited op, in its transaction -------------------------------------------------


def test_every_audited_op_leaves_exactly_one_entry_naming_what_it_did(
    sealed: Store, password_hash: str
) -> None:
    engine = sealed.engine
    tenant, alice, bob = make_tenant(sealed, "acme", password_hash)
    token, other_token, new_token = (hashlib.sha256(n).digest() for n in (b"t1", b"t2", b"t3"))
    steps: list[tuple[Callable[[], AuditedOperation], AuditAction, str]] = [
        (lambda: CreateTenant(name="globex"), AuditAction.TENANT_CREATE, "tenant:2"),
        (lambda: CreateUser(tenant=tenant, login="carol", display_name="Carol",
                            password_hash=password_hash), AuditAction.USER_CREATE, "user:3"),
        (lambda: CreateGroup(tenant=tenant, creator=alice, title="ops", members=(bob,)),
         AuditAction.GROUP_CREATE, "conv:1"),
        (lambda: AddMembers(tenant=tenant, actor=alice, conv=1, users=(3,)),
         AuditAction.GROUP_ADD_MEMBERS, "conv:1"),
        (lambda: SetRole(tenant=tenant, actor=alice, conv=1, user=3, role=Role.ADMIN),
         AuditAction.GROUP_SET_ROLE, "conv:1"),
        (lambda: RemoveMember(tenant=tenant, actor=alice, conv=1, user=3),
         AuditAction.GROUP_REMOVE_MEMBER, "conv:1"),
        (lambda: CreateSession(tenant=tenant, user=alice, token_hash=token, device="laptop",
                               expires_ms=NOW_MS + 10**6), AuditAction.SESSION_CREATE, "user:1"),
        (lambda: CreateSession(tenant=tenant, user=bob, token_hash=other_token, device="phone",
                               expires_ms=NOW_MS + 10**6), AuditAction.SESSION_CREATE, "user:2"),
        (lambda: ChangePassword(token_hash=token, checked_hash=password_hash,
                                password_hash=password_hash, new_token_hash=new_token,
                                expires_ms=NOW_MS + 10**6),
         AuditAction.USER_CHANGE_PASSWORD, "user:1"),
        (lambda: RevokeSession(token_hash=new_token), AuditAction.SESSION_REVOKE, "user:1"),
        (lambda: RevokeUserSessions(tenant=tenant, user=bob),
         AuditAction.USER_REVOKE_SESSIONS, "user:2"),
        (lambda: SetPassword(tenant=tenant, user=bob, password_hash=password_hash),
         AuditAction.USER_SET_PASSWORD, "user:2"),
        (lambda: SetUserDisabled(tenant=tenant, user=bob, disabled=True),
         AuditAction.USER_DISABLE, "user:2"),
        (lambda: SetUserDisabled(tenant=tenant, user=bob, disabled=False),
         AuditAction.USER_ENABLE, "user:2"),
        (lambda: sealed.add_epoch(tenant), AuditAction.KEYS_ROTATE, "epoch:2"),
        (lambda: ShredKeyEpoch(tenant=tenant, epoch=1), AuditAction.KEYS_SHRED, "epoch:1"),
        (lambda: RevokeKeyEpochs(tenant=tenant), AuditAction.KEYS_REVOKE, "tenant:1"),
        (lambda: CreateAdmin(login="root", display_name="Root", password_hash=password_hash,
                             role=AdminRole.SECURITY_OFFICER), AuditAction.ADMIN_CREATE, "admin:1"),
        (lambda: SetAdminPassword(admin=1, password_hash=password_hash),
         AuditAction.ADMIN_SET_PASSWORD, "admin:1"),
    ]
    # Every op an Audited may wrap is exercised.
    assert {type(make()) for make, _, _ in steps} == set(AuditedOperation.__args__)  # type: ignore[attr-defined]
    for seq, (make, action, target) in enumerate(steps, start=1):
        op = make()
        if type(op) is ShredKeyEpoch:  # a shred needs the tenant's records off epoch 1 first
            for table in engine.resealed_tables:
                after = b""
                while (after := engine.reseal_records(tenant, table, after).next_key):
                    pass
        result = engine.apply(audited(op), NOW_MS + seq)
        assert not isinstance(result, HeraldError)
        assert entry_count(engine) == seq, op
        (entry,) = engine.audit_entries(after_seq=seq - 1, limit=1).entries
        assert (entry.seq, entry.action, entry.target, entry.time_ms) == (
            seq, action, target, NOW_MS + seq)
        assert entry.actor == ADMIN and entry.outcome is AuditOutcome.OK
        # Administrators belong to no tenant: their entries name tenant 0.
        expected_tenant = {AuditAction.TENANT_CREATE: 2, AuditAction.ADMIN_CREATE: 0,
                           AuditAction.ADMIN_SET_PASSWORD: 0}.get(action, tenant)
        assert entry.tenant == expected_tenant
    assert engine.verify_audit().count == len(steps)


def test_an_audited_op_returns_its_own_result_and_its_entry_holds_its_details(
    store: Store, password_hash: str
) -> None:
    engine = store.engine
    tenant, alice, _ = make_tenant(store, "acme", password_hash)
    op = CreateUser(tenant=tenant, login="carol", display_name="Carol", password_hash=password_hash)
    assert engine.apply(audited(op), NOW_MS) == UserCreated(3)
    (entry,) = engine.audit_entries().entries
    assert entry.details == {"login": "carol"}
    revoke = audited(RevokeUserSessions(tenant=tenant, user=alice))
    engine.apply(revoke, NOW_MS)
    assert engine.audit_entries(after_seq=1).entries[0].details == {
        "reason": "session_revoked", "sessions_ended": 0}


def test_a_refused_audited_op_leaves_no_entry(store: Store, password_hash: str) -> None:
    engine = store.engine
    tenant, alice, _ = make_tenant(store, "acme", password_hash)
    refusals: list[tuple[AuditedOperation, type[HeraldError]]] = [
        (CreateTenant(name="acme"), Conflict),
        (CreateUser(tenant=tenant, login="alice", display_name="A", password_hash=password_hash),
         Conflict),
        (SetPassword(tenant=tenant, user=99, password_hash=password_hash), NotFound),
        (SetUserDisabled(tenant=9, user=alice, disabled=True), NotFound),
        (RevokeSession(token_hash=bytes(32)), NotFound),
        (ShredKeyEpoch(tenant=tenant, epoch=1), Conflict if store.sealed else Invalid),
    ]
    before = engine.stats()
    for op, refusal in refusals:
        (result,) = engine.apply_batch([audited(op)], NOW_MS)
        assert_refusal(result, refusal)
    assert engine.stats() == before
    assert engine.verify_audit().count == 0
    if store.sealed:
        # Refused half-way, by its seal after its first write: its nested transaction and its
        # entry go together.
        assert store.keyring is not None
        store.keyring.forget(tenant)
        user = CreateUser(tenant=tenant, login="carol", display_name="C",
                          password_hash=password_hash)
        (result,) = engine.apply_batch([audited(user)], NOW_MS)
        assert isinstance(result, KeyUnavailable)
        assert engine.stats() == before


def test_a_batch_with_a_refused_op_in_the_middle_keeps_the_others_entries_gapless(
    store: Store, password_hash: str
) -> None:
    engine = store.engine
    tenant, alice, bob = make_tenant(store, "acme", password_hash)
    results = engine.apply_batch([
        audited(SetUserDisabled(tenant=tenant, user=alice, disabled=True)),
        audited(CreateUser(tenant=tenant, login="bob", display_name="B",
                           password_hash=password_hash)),  # taken: refused
        RecordAudit(actor=AuditActor(kind=ActorKind.USER, tenant=tenant), tenant=tenant,
                    action=AuditAction.LOGIN_FAILED, target="alice", reason="disabled"),
        audited(SetUserDisabled(tenant=tenant, user=99, disabled=True)),  # refused
        audited(SetUserDisabled(tenant=tenant, user=bob, disabled=True)),
    ], NOW_MS)
    assert [type(r).__name__ for r in results] == [
        "SessionsRevoked", "Conflict", "AuditRecorded", "NotFound", "SessionsRevoked"]
    assert results[2] == AuditRecorded(2)
    page = engine.audit_entries()
    assert [(e.seq, e.action, e.target) for e in page.entries] == [
        (1, AuditAction.USER_DISABLE, f"user:{alice}"),
        (2, AuditAction.LOGIN_FAILED, "alice"),
        (3, AuditAction.USER_DISABLE, f"user:{bob}"),
    ]
    assert engine.verify_audit().ok


def test_only_admin_and_security_ops_can_be_audited_and_nothing_is_applied_otherwise(
    store: Store, password_hash: str
) -> None:
    engine = store.engine
    tenant, alice, _ = make_tenant(store, "acme", password_hash)
    before = engine.stats()
    send = Append(tenant=tenant, conv=1, sender=alice, client_msg_id="m1", body="hi")
    (result,) = engine.apply_batch([Audited(op=send, actor=ADMIN)], NOW_MS)  # type: ignore[arg-type]
    assert_refusal(result, Invalid)
    nested = Audited(op=audited(CreateTenant(name="x")), actor=ADMIN)  # type: ignore[arg-type]
    assert_refusal(engine.apply_batch([nested], NOW_MS)[0], Invalid)
    # An actor whose name looks like a token refuses the op itself, before it writes.
    sneaky = AuditActor(kind=ActorKind.ADMIN, name="Zq3" + "x" * 40)
    (result,) = engine.apply_batch([audited(CreateTenant(name="globex"), sneaky)], NOW_MS)
    assert_refusal(result, Invalid)
    for actor in (None, AuditActor(kind="robot", name="x"), AuditActor(kind=ActorKind.USER, id=-1),
                  AuditActor(kind=ActorKind.USER, tenant=2**64)):
        (result,) = engine.apply_batch([audited(CreateTenant(name="globex"), actor)], NOW_MS)  # type: ignore[arg-type]
        assert_refusal(result, Invalid)
    assert engine.stats() == before


def test_record_audit_records_events_and_refuses_an_ops_action(store: Store) -> None:
    engine = store.engine
    actor = AuditActor(kind=ActorKind.ADMIN, name="ops-1")
    denied = RecordAudit(actor=actor, action=AuditAction.PERMISSION_DENIED, target="keys.rotate",
                         reason="forbidden", details={"role": "operator"})
    assert engine.apply(denied, NOW_MS) == AuditRecorded(1)
    login = RecordAudit(actor=actor, action=AuditAction.ADMIN_LOGIN, outcome=AuditOutcome.OK)
    assert engine.apply(login, NOW_MS + 1) == AuditRecorded(2)
    lie = RecordAudit(actor=actor, action=AuditAction.USER_CREATE, outcome=AuditOutcome.OK)
    assert_refusal(engine.apply_batch([lie], NOW_MS)[0], Invalid)
    # A long login is no token: no false alarm on a lowercase name with digits.
    long_login = RecordAudit(actor=actor, action=AuditAction.LOGIN_FAILED,
                             target="firstname-lastname-department-12345678-x", reason="disabled")
    assert engine.apply(long_login, NOW_MS + 2) == AuditRecorded(3)
    (first, second, _) = engine.audit_entries().entries
    assert (first.reason, first.details, first.outcome) == (
        "forbidden", {"role": "operator"}, AuditOutcome.REFUSED)
    assert second.actor == actor and second.outcome is AuditOutcome.OK


# -- no secret, by construction ------------------------------------------------------------------


CANARY_PASSWORD = "Canary-Passw0rd-Ibex-77"


@pytest.mark.parametrize("details, target, reason, name", [
    ({"password": "x"}, "", "", ""),
    ({"new_passphrase": "x"}, "", "", ""),
    ({"api_token": "x"}, "", "", ""),
    ({"key_id": "x"}, "", "", ""),
    ({"body": "x"}, "", "", ""),
    ({"Bad-Name": "x"}, "", "", ""),
    ({"note": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"}, "", "", ""),
    ({"note": "A" * 3 + "b1_" * 15}, "", "", ""),  # 48 characters of base64url: a token
    ({"note": "0123456789abcdef" * 4}, "", "", ""),  # 64 hex digits: a token hash, a key
    ({"note": 1.5}, "", "", ""),
    ({f"n{i}": i for i in range(17)}, "", "", ""),
    ({}, "x" * 201, "", ""),
    ({}, "", "wrong\npassword", ""),
    ({}, "", "", "$argon2id$v=19$..."),
])
def test_record_audit_refuses_anything_shaped_like_a_secret(
    store: Store, details: dict[str, str | int], target: str, reason: str, name: str
) -> None:
    op = RecordAudit(actor=AuditActor(kind=ActorKind.USER, name=name),
                     action=AuditAction.LOGIN_FAILED, target=target, reason=reason,
                     details=details)
    assert_refusal(store.engine.apply_batch([op], NOW_MS)[0], Invalid)
    assert entry_count(store.engine) == 0


def test_entries_of_password_and_session_ops_hold_no_password_hash_or_token(
    store: Store,
) -> None:
    engine = store.engine
    canary_hash = hash_password(CANARY_PASSWORD)
    tenant, alice, _ = make_tenant(store, "acme", canary_hash)
    token = hashlib.sha256(b"canary-token").digest()
    new_token = hashlib.sha256(b"canary-new-token").digest()
    engine.apply_batch([
        audited(CreateUser(tenant=tenant, login="carol", display_name="C",
                           password_hash=canary_hash)),
        audited(SetPassword(tenant=tenant, user=alice, password_hash=canary_hash)),
        audited(CreateSession(tenant=tenant, user=alice, token_hash=token, device="laptop",
                              expires_ms=NOW_MS + 10**6, password_hash=canary_hash)),
        audited(ChangePassword(token_hash=token, checked_hash=canary_hash,
                               password_hash=canary_hash, new_token_hash=new_token,
                               expires_ms=NOW_MS + 10**6)),
        audited(RevokeSession(token_hash=new_token)),
    ], NOW_MS)
    entries = engine.audit_entries().entries
    assert len(entries) == 5
    text = msgspec.json.encode(entries)
    for needle in (CANARY_PASSWORD.encode(), canary_hash.encode(), b"$argon2", token,
                   new_token, token.hex().encode(), new_token.hex().encode(), PASSWORD.encode()):
        assert needle not in text


def test_a_sealed_store_shows_none_of_an_entrys_text_on_disk_while_a_plain_one_does(
    tmp_path: Path, password_hash: str
) -> None:
    canaries = [b"canary-admin-okapi", b"canary-login-quokka", b"canary-reason-tapir",
                b"canary-device-numbat", b"canary-detail-dugong"]
    for sealed in (False, True):
        box = Store(tmp_path / ("sealed" if sealed else "plain"), sealed)
        tenant, alice, _ = make_tenant(box, "acme", password_hash)
        admin = AuditActor(kind=ActorKind.ADMIN, name="canary-admin-okapi")
        box.engine.apply_batch([
            audited(CreateUser(tenant=tenant, login="canary-login-quokka", display_name="Q",
                               password_hash=password_hash), admin),
            audited(CreateSession(tenant=tenant, user=alice, token_hash=bytes(range(32)),
                                  device="canary-device-numbat", expires_ms=NOW_MS + 1), admin),
            RecordAudit(actor=admin, action=AuditAction.PERMISSION_DENIED,
                        reason="canary-reason-tapir", details={"note": "canary-detail-dugong"}),
        ], NOW_MS)
        assert box.engine.verify_audit().count == 3
        box.close()
        env = lmdb.open(str(box.path), max_dbs=32, map_size=MAP_SIZE_BYTES, readonly=True)
        with env.begin() as txn:
            entries = b"".join(v for _, v in txn.cursor(db=env.open_db(b"audit", txn=txn)))
        env.close()
        raw = (box.path / "data.mdb").read_bytes()
        # The device label is in the session record too, which is never sealed (it holds no
        # content: docs/security.md); every other canary only in sealed records.
        on_disk = [c for c in canaries if c in raw and c != b"canary-device-numbat"]
        in_entries = [c for c in canaries if c in entries]
        # The plain store shows that the search would find them.
        assert on_disk == ([] if sealed else canaries[:3] + canaries[4:]), sealed
        assert in_entries == ([] if sealed else canaries), sealed


# -- tampering found, and the first bad entry named ----------------------------------------------


def fill(box: Store, count: int = 6) -> None:
    """`count` more entries, after which the log verifies."""
    before = box.engine.verify_audit().count
    for n in range(count):
        box.engine.apply(RecordAudit(actor=ADMIN, action=AuditAction.ADMIN_LOGIN,
                                     outcome=AuditOutcome.OK, details={"n": n}), NOW_MS + n)
    assert box.engine.verify_audit().count == before + count


def key(seq: int) -> bytes:
    return _SEQ.pack(seq)


def test_an_untouched_log_verifies_with_its_count_and_survives_a_reopen(store: Store) -> None:
    assert store.engine.verify_audit().ok and store.engine.verify_audit().count == 0
    fill(store, 3)
    store.close()
    store.open()
    fill(store, 2)  # the chain goes on from the head after a reopen
    verdict = store.engine.verify_audit()
    assert (verdict.ok, verdict.count, verdict.bad_seq) == (True, 5, 0)
    assert verdict.head_hash == store.engine.audit_entries(after_seq=4).entries[0].hash


def test_a_sealed_log_verifies_offline_with_the_name_key_alone(
    sealed: Store, password_hash: str
) -> None:
    tenant, alice, _ = make_tenant(sealed, "acme", password_hash)
    sealed.engine.apply(audited(SetUserDisabled(tenant=tenant, user=alice, disabled=True)), NOW_MS)
    sealed.close()
    # No DEK installed, no escrow: what an offline `herald audit verify` will have.
    offline = Engine(sealed.path, map_size=MAP_SIZE_BYTES, keyring=Keyring(name_key=NAME_KEY))
    try:
        verdict = offline.verify_audit()
        assert verdict.ok and verdict.count == 1
        assert offline.audit_entries().entries[0].action is AuditAction.USER_DISABLE
    finally:
        offline.close()
    sealed.open()


def test_a_changed_byte_of_an_entry_is_found_at_that_entry(store: Store) -> None:
    fill(store)

    def flip(txn: lmdb.Transaction, audit: lmdb._Database, meta: lmdb._Database) -> None:
        value = bytearray(txn.get(key(3), db=audit))
        value[-3] ^= 0x01
        txn.put(key(3), bytes(value), db=audit)

    store.raw(flip)
    verdict = store.engine.verify_audit()
    assert (verdict.bad_seq, verdict.problem, verdict.count) == (3, AuditProblem.ALTERED, 2)


def test_an_edited_entry_reencoded_with_its_old_hash_is_found_in_a_plain_store(
    tmp_path: Path,
) -> None:
    box = Store(tmp_path / "plain", False)
    fill(box)

    def edit(txn: lmdb.Transaction, audit: lmdb._Database, meta: lmdb._Database) -> None:
        from engine.records import AuditEntry
        entry = msgspec.msgpack.decode(txn.get(key(4), db=audit)[1:], type=AuditEntry)
        forged = msgspec.structs.replace(entry, details={"n": 99})
        txn.put(key(4), b"\x00" + msgspec.msgpack.encode(forged), db=audit)

    box.raw(edit)
    verdict = box.engine.verify_audit()
    assert (verdict.bad_seq, verdict.problem) == (4, AuditProblem.ALTERED)
    box.close()


def test_a_removed_entry_is_found_as_a_gap(store: Store) -> None:
    fill(store)
    store.raw(lambda txn, audit, meta: txn.delete(key(2), db=audit))
    verdict = store.engine.verify_audit()
    assert (verdict.bad_seq, verdict.problem, verdict.count) == (2, AuditProblem.MISSING, 1)


def test_a_removed_first_entry_is_found(store: Store) -> None:
    fill(store)
    store.raw(lambda txn, audit, meta: txn.delete(key(1), db=audit))
    verdict = store.engine.verify_audit()
    assert (verdict.bad_seq, verdict.problem) == (1, AuditProblem.MISSING)


def test_two_swapped_entries_are_found_at_the_first(store: Store) -> None:
    fill(store)

    def swap(txn: lmdb.Transaction, audit: lmdb._Database, meta: lmdb._Database) -> None:
        third, fourth = txn.get(key(3), db=audit), txn.get(key(4), db=audit)
        txn.put(key(3), fourth, db=audit)
        txn.put(key(4), third, db=audit)

    store.raw(swap)
    verdict = store.engine.verify_audit()
    # Sealed, the entry no longer opens under another key; plain, it names its own seq.
    expected = AuditProblem.ALTERED if store.sealed else AuditProblem.REORDERED
    assert (verdict.bad_seq, verdict.problem) == (3, expected)


def test_a_truncated_tail_is_found_against_the_head(store: Store) -> None:
    fill(store)

    def truncate(txn: lmdb.Transaction, audit: lmdb._Database, meta: lmdb._Database) -> None:
        txn.delete(key(5), db=audit)
        txn.delete(key(6), db=audit)

    store.raw(truncate)
    verdict = store.engine.verify_audit()
    assert (verdict.bad_seq, verdict.problem, verdict.count) == (5, AuditProblem.MISSING, 4)
    # And nothing more is appended to a log that does not end where its head says.
    op = RecordAudit(actor=ADMIN, action=AuditAction.ADMIN_LOGIN)
    assert_refusal(store.engine.apply_batch([op], NOW_MS)[0], CorruptData)


def test_a_replaced_entry_and_a_removed_head_are_found(store: Store) -> None:
    fill(store)

    def replace_middle(txn: lmdb.Transaction, audit: lmdb._Database,
                       meta: lmdb._Database) -> None:
        if store.sealed:  # a sealed entry only opens at its own seq: put one of its own back
            txn.delete(key(3), db=audit)
        else:
            from engine.records import AuditEntry
            entry = msgspec.msgpack.decode(txn.get(key(3), db=audit)[1:], type=AuditEntry)
            # Recomputed hash, as someone who read engine/audit.py would: the chain still breaks.
            forged = msgspec.structs.replace(entry, details={"n": 99}, hash=b"")
            forged = msgspec.structs.replace(forged, hash=hashlib.blake2b(
                msgspec.msgpack.encode(forged), digest_size=32, person=b"herald-audit-v1").digest())
            txn.put(key(3), b"\x00" + msgspec.msgpack.encode(forged), db=audit)

    store.raw(replace_middle)
    verdict = store.engine.verify_audit()
    assert verdict.bad_seq == (3 if store.sealed else 4)
    assert verdict.problem is (AuditProblem.MISSING if store.sealed else AuditProblem.CHAIN_BROKEN)

    store.raw(lambda txn, audit, meta: txn.delete(b"audit_head", db=meta))
    op = RecordAudit(actor=ADMIN, action=AuditAction.ADMIN_LOGIN)
    assert_refusal(store.engine.apply_batch([op], NOW_MS)[0], CorruptData)


def test_entries_added_behind_the_heads_back_are_found(store: Store) -> None:
    fill(store, 3)

    def duplicate_last(txn: lmdb.Transaction, audit: lmdb._Database,
                       meta: lmdb._Database) -> None:
        txn.put(key(4), txn.get(key(3), db=audit), db=audit)

    store.raw(duplicate_last)
    verdict = store.engine.verify_audit()
    assert verdict.bad_seq == 4 and not verdict.ok


def test_a_store_made_before_the_audit_log_gets_one_at_open(tmp_path: Path) -> None:
    box = Store(tmp_path / "old", True)
    box.raw(lambda txn, audit, meta: txn.drop(audit, delete=True), reopen=False)
    env = lmdb.open(str(box.path), max_dbs=32, map_size=MAP_SIZE_BYTES, readonly=True)
    with env.begin() as txn:
        names = {bytes(k) for k, _ in txn.cursor()}
    env.close()
    assert b"audit" not in names and b"users" in names
    box.open()
    fill(box, 2)
    box.close()


# -- searching ------------------------------------------------------------------------------------


def test_audit_entries_are_searched_by_action_tenant_actor_and_time(store: Store) -> None:
    engine = store.engine
    alice = AuditActor(kind=ActorKind.USER, tenant=1, id=1, name="alice")
    ops: list[Operation] = [
        RecordAudit(actor=ADMIN, action=AuditAction.ADMIN_LOGIN, outcome=AuditOutcome.OK),
        RecordAudit(actor=alice, action=AuditAction.LOGIN_FAILED, tenant=1, target="alice",
                    reason="wrong password"),
        RecordAudit(actor=alice, action=AuditAction.LOGIN_LOCKED_OUT, tenant=1, target="alice"),
        RecordAudit(actor=ADMIN, action=AuditAction.PERMISSION_DENIED, tenant=2),
    ]
    for n, op in enumerate(ops):
        engine.apply(op, NOW_MS + 1000 * n)

    def seqs(**filters: object) -> list[int]:
        return [e.seq for e in engine.audit_entries(**filters).entries]  # type: ignore[arg-type]

    assert seqs() == [1, 2, 3, 4]
    assert seqs(action=AuditAction.LOGIN_FAILED) == [2]
    assert seqs(tenant=1) == [2, 3]
    assert seqs(actor_kind=ActorKind.ADMIN) == [1, 4]
    assert seqs(actor_tenant=1, actor_id=1) == [2, 3]
    assert seqs(actor_name="root-admin") == [1, 4]
    assert seqs(since_ms=NOW_MS + 1000, until_ms=NOW_MS + 3000) == [2, 3]
    assert seqs(after_seq=2) == [3, 4]
    page = engine.audit_entries(limit=2, actor_kind=ActorKind.USER)
    assert ([e.seq for e in page.entries], page.scanned_to, page.more) == ([2, 3], 3, True)
    rest = engine.audit_entries(after_seq=page.scanned_to, actor_kind=ActorKind.USER)
    assert (rest.entries, rest.scanned_to, rest.more) == ([], 4, False)
    for bad in ({"limit": 0}, {"limit": 1001}, {"after_seq": -1}):
        with pytest.raises(Invalid):
            engine.audit_entries(**bad)  # type: ignore[arg-type]


# -- the chain verifies after any sequence of audited ops ------------------------------------------


_STEP = st.sampled_from(["user", "taken_user", "disable", "enable", "password", "missing_user",
                         "session", "revoke_all", "failed_login", "tenant", "taken_tenant"])


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(_STEP, min_size=1, max_size=6), min_size=1, max_size=8),
       sealed=st.booleans())
def test_the_chain_verifies_after_any_sequence_of_audited_ops(
    tmp_path_factory: pytest.TempPathFactory, password_hash: str, batches: list[list[str]],
    sealed: bool,
) -> None:
    box = Store(tmp_path_factory.mktemp("audit"), sealed)
    try:
        engine = box.engine
        tenant, alice, _ = make_tenant(box, "acme", password_hash)
        made = [0]
        expected: list[AuditAction] = []

        def op_for(step: str) -> tuple[Operation, AuditAction | None]:
            made[0] += 1
            n = made[0]
            user_op = CreateUser(tenant=tenant, login=f"u{n}", display_name="U",
                                 password_hash=password_hash)
            table: dict[str, tuple[Operation, AuditAction | None]] = {
                "user": (audited(user_op), AuditAction.USER_CREATE),
                "taken_user": (audited(CreateUser(tenant=tenant, login="alice", display_name="A",
                                                  password_hash=password_hash)), None),
                "disable": (audited(SetUserDisabled(tenant=tenant, user=alice, disabled=True)),
                            AuditAction.USER_DISABLE),
                "enable": (audited(SetUserDisabled(tenant=tenant, user=alice, disabled=False)),
                           AuditAction.USER_ENABLE),
                "password": (audited(SetPassword(tenant=tenant, user=alice,
                                                 password_hash=password_hash)),
                             AuditAction.USER_SET_PASSWORD),
                "missing_user": (audited(SetPassword(tenant=tenant, user=10**6,
                                                     password_hash=password_hash)), None),
                "session": (audited(CreateSession(
                    tenant=tenant, user=alice, token_hash=hashlib.sha256(b"%d" % n).digest(),
                    device="d", expires_ms=NOW_MS + 10**6)), AuditAction.SESSION_CREATE),
                "revoke_all": (audited(RevokeUserSessions(tenant=tenant, user=alice)),
                               AuditAction.USER_REVOKE_SESSIONS),
                "failed_login": (RecordAudit(actor=ADMIN, action=AuditAction.LOGIN_FAILED,
                                             reason="wrong password"), AuditAction.LOGIN_FAILED),
                "tenant": (audited(CreateTenant(name=f"t{n}")), AuditAction.TENANT_CREATE),
                "taken_tenant": (audited(CreateTenant(name="acme")), None),
            }
            return table[step]

        for batch in batches:
            ops = [op_for(step) for step in batch]
            results = engine.apply_batch([op for op, _ in ops], NOW_MS)
            for (_, action), result in zip(ops, results, strict=True):
                # A disabled user's sessions cannot be made: that refusal leaves nothing either.
                if action is not None and not isinstance(result, HeraldError):
                    expected.append(action)
        verdict = engine.verify_audit()
        assert verdict.ok and verdict.count == len(expected)
        assert actions(engine) == expected
    finally:
        box.close()


_ANY_TEXT = st.one_of(st.text(max_size=60), st.integers(), st.none())
_ANY_INT = st.one_of(st.integers(), st.integers(min_value=-5, max_value=5), st.booleans())


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.one_of(st.sampled_from(list(ActorKind)), st.text(max_size=8)),
       actor_tenant=_ANY_INT, actor_id=_ANY_INT, name=_ANY_TEXT,
       action=st.one_of(st.sampled_from(list(AuditAction)), st.text(max_size=12)),
       tenant=_ANY_INT, target=_ANY_TEXT, reason=_ANY_TEXT,
       outcome=st.one_of(st.sampled_from(list(AuditOutcome)), st.text(max_size=8)),
       details=st.dictionaries(st.one_of(st.text(max_size=10), st.integers()),
                               st.one_of(_ANY_INT, _ANY_TEXT, st.floats()), max_size=4))
def test_any_record_audit_is_recorded_or_refused_as_invalid_and_the_log_stays_readable(
    engine: Engine, kind: object, actor_tenant: object, actor_id: object, name: object,
    action: object, tenant: object, target: object, reason: object, outcome: object,
    details: dict[object, object],
) -> None:
    actor = AuditActor(kind=kind, tenant=actor_tenant, id=actor_id, name=name)  # type: ignore[arg-type]
    op = RecordAudit(actor=actor, action=action, tenant=tenant, target=target,  # type: ignore[arg-type]
                     reason=reason, outcome=outcome, details=details)  # type: ignore[arg-type]
    (result,) = engine.apply_batch([op], NOW_MS)
    assert isinstance(result, AuditRecorded | Invalid), result
    assert engine.verify_audit().ok
    engine.audit_entries(limit=1000)  # every entry stored decodes
