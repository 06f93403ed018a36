"""The audit log of the appliance: append-only, sealed, hash-chained entries in the `audit`
table, one per admin action or security event, written in the transaction of the change it
records (docs/storage.md "Audit log", docs/security.md "The appliance's audit log").

An entry's key is its seq, big-endian, gapless from 1. Its value is an `AuditEntry` sealed
under the name key's audit subkey (plain in a store without a name key, as tenant records
are). Each entry holds the BLAKE2b-256 of its own canonical encoding and its predecessor's
hash; `meta` keeps the head (last seq and its hash), sealed the same way, so that entries cut
off the end are found too. No engine operation deletes or rewrites an entry.

What goes in an entry is decided here, not by the caller: for an `Audited` op the action,
target and details come from the op and its result (a table below), and a `RecordAudit`'s
texts are checked so that nothing shaped like a secret gets in.
"""

from __future__ import annotations

import enum
import hashlib
import re
import struct
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from engine.errors import CorruptData, Invalid
from engine.hotstore import HotStore
from engine.ops import (
    AddKeyEpoch,
    AddMembers,
    AdminCreated,
    AdminSessionsEnded,
    AuditedOperation,
    AuditRecorded,
    ChangePassword,
    ConversationOpened,
    CreateAdmin,
    CreateGroup,
    CreateSession,
    CreateTenant,
    CreateUser,
    KeyEpochAdded,
    KeyEpochShredded,
    KeyEpochsRevoked,
    MembershipChanged,
    PasswordChanged,
    RecordAudit,
    RemoveMember,
    Result,
    RevokeKeyEpochs,
    RevokeSession,
    RevokeUserSessions,
    SessionsRevoked,
    SetAdminPassword,
    SetPassword,
    SetRole,
    SetUserDisabled,
    ShredKeyEpoch,
    TenantCreated,
    UserCreated,
)
from engine.records import (
    ActorKind,
    AuditAction,
    AuditActor,
    AuditEntry,
    AuditOutcome,
    RecordSealer,
)

__all__ = [
    "AUDIT_HASH_BYTES",
    "MAX_AUDIT_DETAILS",
    "MAX_AUDIT_PAGE_ENTRIES",
    "MAX_AUDIT_SCAN_ENTRIES",
    "MAX_AUDIT_TEXT_CHARS",
    "AuditLog",
    "AuditPage",
    "AuditProblem",
    "AuditVerdict",
]

AUDIT_HASH_BYTES = 32
MAX_AUDIT_TEXT_CHARS = 200
MAX_AUDIT_DETAILS = 16
MAX_AUDIT_PAGE_ENTRIES = 1000
# One search reads at most this many entries (a filter may match few of them): the caller
# goes on from `AuditPage.scanned_to`, so that no read holds a snapshot for long.
MAX_AUDIT_SCAN_ENTRIES = 10_000

_TABLE = b"audit"
_HEAD_TABLE = b"meta"
_HEAD_KEY = b"audit_head"
_SEQ = struct.Struct(">Q")
_NO_HASH = bytes(AUDIT_HASH_BYTES)
_HASH_PERSON = b"herald-audit-v1"  # BLAKE2b personalisation, at most 16 bytes

# Event actions, the only ones `RecordAudit` may use: the others say that an op was applied.
EVENT_ACTIONS = frozenset({
    AuditAction.LOGIN_FAILED, AuditAction.LOGIN_LOCKED_OUT, AuditAction.PERMISSION_DENIED,
    AuditAction.ADMIN_LOGIN, AuditAction.ADMIN_LOGIN_FAILED, AuditAction.ADMIN_LOGOUT,
})

_DETAIL_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
# A detail named like any of these is refused: it would be there to hold a secret or content.
_SECRET_WORDS = ("password", "passwd", "passphrase", "secret", "token", "key", "credential",
                 "hash", "dek", "body", "message")
# Defence in depth for the caller's free texts: what a password hash, a session token (43
# characters of base64url: one without a capital letter comes up once in 10**9), a token hash
# or a key in hex looks like. A login (lowercase) or a reason never does.
_SECRET_SHAPES = re.compile(
    r"\$argon2|[0-9a-fA-F]{32,}"
    r"|(?=[A-Za-z0-9_+/=-]{40})[A-Za-z0-9_+/=-]*[A-Z]"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class AuditProblem(enum.StrEnum):
    """What `verify` found wrong at the first bad entry."""

    ALTERED = "altered"  # it fails to open or decode, or its content does not match its hash
    MISSING = "missing"  # its seq is absent: removed (a gap), or cut off the end
    REORDERED = "reordered"  # the entry stored under it says another seq: moved or swapped
    CHAIN_BROKEN = "chain_broken"  # it does not name its predecessor's hash: one was replaced
    HEAD = "head"  # the head record is missing, damaged, or names an entry that does not match


class AuditVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """The result of verifying the audit log: `count` entries checked good (all of them when
    `ok`); otherwise `bad_seq` is the first bad one and `problem` and `why` say what is wrong."""

    count: int
    bad_seq: int = 0
    problem: AuditProblem | None = None
    why: str = ""
    # When ok, the hash of the last entry (zeros for none): note it down elsewhere with the
    # count, since a whole log rolled back to an older copy shows only against a recorded head.
    head_hash: bytes = bytes(AUDIT_HASH_BYTES)

    @property
    def ok(self) -> bool:
        return self.problem is None


class AuditPage(msgspec.Struct, frozen=True, kw_only=True):
    """Entries that matched a search, ascending by seq. `scanned_to` is the last seq read;
    search again with `after_seq=scanned_to` while `more`."""

    entries: list[AuditEntry]
    scanned_to: int
    more: bool


_MAX_ID = 2**63 - 1
_MIN_DETAIL_INT = -(2**63)


def _check_text(what: str, value: object) -> None:
    if not isinstance(value, str):
        raise Invalid(f"an audit {what} must be a string")
    if len(value) > MAX_AUDIT_TEXT_CHARS:
        raise Invalid(f"an audit {what} must be at most {MAX_AUDIT_TEXT_CHARS} characters")
    if _CONTROL.search(value):
        raise Invalid(f"an audit {what} cannot hold control characters")
    if _SECRET_SHAPES.search(value):
        raise Invalid(
            f"an audit {what} looks like a password hash, a token or a key: the audit log "
            f"never holds one"
        )


def _check_id(what: str, value: object) -> None:
    if type(value) is not int or not 0 <= value <= _MAX_ID:
        raise Invalid(f"an audit {what} must be an id from 0 to 2**63-1")


def _check_choice(what: str, value: object, choices: type[enum.StrEnum]) -> None:
    # Checked here, not when read back: a value the decoder refuses would make the entry, and
    # the whole log after it, unreadable.
    if not isinstance(value, str) or value not in choices.__members__.values():
        raise Invalid(f"an audit {what} must be one of {', '.join(choices)}")


def check_actor(actor: AuditActor) -> None:
    """Raises `Invalid` for an actor of an unknown kind, ids out of range, or a name that
    could hold a secret."""
    if not isinstance(actor, AuditActor):
        raise Invalid("an audit actor must be an AuditActor")
    _check_choice("actor kind", actor.kind, ActorKind)
    _check_id("actor's tenant", actor.tenant)
    _check_id("actor's id", actor.id)
    _check_text("actor name", actor.name)


def _check_details(details: object) -> None:
    if not isinstance(details, dict):
        raise Invalid("audit details must be a dict of names to strings or integers")
    if len(details) > MAX_AUDIT_DETAILS:
        raise Invalid(f"an audit entry holds at most {MAX_AUDIT_DETAILS} details")
    for name, value in details.items():
        if not isinstance(name, str) or not _DETAIL_NAME.fullmatch(name):
            raise Invalid("an audit detail's name must be 1 to 32 of a-z, 0-9 and '_'")
        if any(word in name for word in _SECRET_WORDS):
            raise Invalid(f"an audit detail cannot be named {name!r}: the audit log never "
                          f"holds a secret or a message body")
        if type(value) is int:
            if not _MIN_DETAIL_INT <= value <= _MAX_ID:
                raise Invalid(f"audit detail {name!r} must fit in 64 bits")
        else:
            _check_text(f"detail {name!r}", value)


# -- what an audited op records: (action, tenant, target, details) from the op and its result --

_Described = tuple[AuditAction, int, str, dict[str, str | int]]


def _ended(revoked: SessionsRevoked) -> dict[str, str | int]:
    return {"sessions_ended": len(revoked.token_hashes)}


def _tenant_created(op: CreateTenant, result: TenantCreated) -> _Described:
    return AuditAction.TENANT_CREATE, result.tenant, f"tenant:{result.tenant}", {"name": op.name}


def _user_created(op: CreateUser, result: UserCreated) -> _Described:
    return AuditAction.USER_CREATE, op.tenant, f"user:{result.user}", {"login": op.login}


def _group_created(op: CreateGroup, result: ConversationOpened) -> _Described:
    # Not the title: it is the users' content, as their messages are.
    return (AuditAction.GROUP_CREATE, op.tenant, f"conv:{result.conv}",
            {"creator": op.creator, "members": len(set(op.members) - {op.creator}) + 1})


def _members_added(op: AddMembers, result: MembershipChanged) -> _Described:
    return (AuditAction.GROUP_ADD_MEMBERS, op.tenant, f"conv:{op.conv}",
            {"added": len(result.users), "role": op.role.value, "by": op.actor})


def _member_removed(op: RemoveMember, result: MembershipChanged) -> _Described:
    return (AuditAction.GROUP_REMOVE_MEMBER, op.tenant, f"conv:{op.conv}",
            {"user": op.user, "by": op.actor})


def _role_set(op: SetRole, result: MembershipChanged) -> _Described:
    return (AuditAction.GROUP_SET_ROLE, op.tenant, f"conv:{op.conv}",
            {"user": op.user, "role": op.role.value, "by": op.actor})


def _session_created(op: CreateSession, result: Result) -> _Described:
    return (AuditAction.SESSION_CREATE, op.tenant, f"user:{op.user}",
            {"device": op.device, "expires_ms": op.expires_ms})


def _session_revoked(op: RevokeSession, result: SessionsRevoked) -> _Described:
    return (AuditAction.SESSION_REVOKE, result.tenant, f"user:{result.user}",
            {"reason": op.reason.value, **_ended(result)})


def _user_sessions_revoked(op: RevokeUserSessions, result: SessionsRevoked) -> _Described:
    return (AuditAction.USER_REVOKE_SESSIONS, op.tenant, f"user:{op.user}",
            {"reason": op.reason.value, **_ended(result)})


def _password_set(op: SetPassword, result: SessionsRevoked) -> _Described:
    return AuditAction.USER_SET_PASSWORD, op.tenant, f"user:{op.user}", _ended(result)


def _password_changed(op: ChangePassword, result: PasswordChanged) -> _Described:
    revoked = result.revoked
    return (AuditAction.USER_CHANGE_PASSWORD, revoked.tenant, f"user:{revoked.user}",
            _ended(revoked))


def _disabled_set(op: SetUserDisabled, result: SessionsRevoked) -> _Described:
    action = AuditAction.USER_DISABLE if op.disabled else AuditAction.USER_ENABLE
    return action, op.tenant, f"user:{op.user}", _ended(result)


def _epoch_added(op: AddKeyEpoch, result: KeyEpochAdded) -> _Described:
    # key_id names the escrow key that wraps the DEK: a label, not key material.
    return (AuditAction.KEYS_ROTATE, op.tenant, f"epoch:{result.epoch}",
            {"escrow_label": op.key_id})


def _epoch_shredded(op: ShredKeyEpoch, result: KeyEpochShredded) -> _Described:
    return AuditAction.KEYS_SHRED, op.tenant, f"epoch:{op.epoch}", {}


def _epochs_revoked(op: RevokeKeyEpochs, result: KeyEpochsRevoked) -> _Described:
    return (AuditAction.KEYS_REVOKE, op.tenant, f"tenant:{op.tenant}",
            {"epochs": ",".join(map(str, result.epochs))})


def _admin_created(op: CreateAdmin, result: AdminCreated) -> _Described:
    # Administrators belong to no tenant: the entry's tenant is 0.
    return (AuditAction.ADMIN_CREATE, 0, f"admin:{result.admin}",
            {"login": op.login, "role": op.role.value})


def _admin_password_set(op: SetAdminPassword, result: AdminSessionsEnded) -> _Described:
    return (AuditAction.ADMIN_SET_PASSWORD, 0, f"admin:{op.admin}",
            {"sessions_ended": len(result.token_hashes)})


_DESCRIBE: dict[type, Callable[[Any, Any], _Described]] = {
    CreateTenant: _tenant_created,
    CreateUser: _user_created,
    CreateGroup: _group_created,
    AddMembers: _members_added,
    RemoveMember: _member_removed,
    SetRole: _role_set,
    CreateSession: _session_created,
    RevokeSession: _session_revoked,
    RevokeUserSessions: _user_sessions_revoked,
    SetPassword: _password_set,
    ChangePassword: _password_changed,
    SetUserDisabled: _disabled_set,
    AddKeyEpoch: _epoch_added,
    ShredKeyEpoch: _epoch_shredded,
    RevokeKeyEpochs: _epochs_revoked,
    CreateAdmin: _admin_created,
    SetAdminPassword: _admin_password_set,
}


def describer(op: AuditedOperation) -> Callable[[Any, Any], _Described]:
    """How `op`'s entry is made from it and its result; `Invalid` for an op that is not an
    admin or security action (`engine.ops.AuditedOperation`)."""
    describe = _DESCRIBE.get(type(op))
    if describe is None:
        raise Invalid(f"{type(op).__name__} is not an audited operation")
    return describe


class _Head(msgspec.Struct, array_like=True, frozen=True):
    seq: int
    hash: bytes


class AuditLog:
    """The `audit` table. Appends run inside the caller's write transaction; reads inside its
    snapshot. It never deletes or rewrites an entry."""

    def __init__(self, store: HotStore, sealer: RecordSealer) -> None:
        """`sealer` seals entries and the head: `engine.crypto.NameKeySealer(..., audit=True)`
        in a sealed store with a name key, a `PlainSealer` otherwise."""
        self._db = store.dbs.audit
        self._meta = store.dbs.meta
        self._sealer = sealer
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode_entry = msgspec.msgpack.Decoder(AuditEntry).decode
        self._decode_head = msgspec.msgpack.Decoder(_Head).decode

    # -- appending ----------------------------------------------------------------------------

    def head(self, txn: Any) -> tuple[int, bytes]:
        """(last seq, its hash); (0, zeros) for an empty log. Read before the op it audits
        writes anything: `CorruptData` when the head is damaged, or missing while entries exist,
        or names an entry that is missing or followed by others (the log was tampered with: an
        audited op is then refused rather than recorded in a log that hides the damage)."""
        stored = txn.get(_HEAD_KEY, db=self._meta)
        if stored is None:
            with txn.cursor(db=self._db) as cur:
                if cur.first():
                    raise CorruptData("the audit log has entries but no head record: it was "
                                      "tampered with (verify it); nothing can be appended")
            return 0, _NO_HASH
        head = self._open_head(stored)
        # Two gets, not a verify: enough that an append never overwrites an entry nor papers
        # over entries cut off the end. `verify` checks the rest.
        if txn.get(_SEQ.pack(head.seq), db=self._db) is None:
            raise CorruptData(f"the audit log's head names entry {head.seq}, which is missing: "
                              f"it was tampered with (verify it); nothing can be appended")
        if txn.get(_SEQ.pack(head.seq + 1), db=self._db) is not None:
            raise CorruptData(f"the audit log's head names entry {head.seq}, yet entries "
                              f"follow it: it was tampered with (verify it); nothing can be "
                              f"appended")
        return head.seq, head.hash

    def _open_head(self, stored: bytes) -> _Head:
        try:
            return self._decode_head(self._sealer.open(_HEAD_TABLE, _HEAD_KEY, stored))
        except msgspec.DecodeError as exc:
            raise CorruptData(f"the audit log's head record is damaged: {exc}") from exc

    def append(
        self, txn: Any, head: tuple[int, bytes], now_ms: int, actor: AuditActor,
        described: _Described, outcome: AuditOutcome = AuditOutcome.OK, reason: str = "",
    ) -> int:
        """Append one entry after `head` (from `head(txn)`, in this transaction); returns its
        seq. Raises nothing of its own: every check comes before it."""
        action, tenant, target, details = described
        seq = head[0] + 1
        entry = AuditEntry(
            seq=seq, time_ms=now_ms, actor=actor, action=action, tenant=tenant, target=target,
            outcome=outcome, reason=reason, details=dict(sorted(details.items())),
            prev_hash=head[1],
        )
        entry = msgspec.structs.replace(entry, hash=self._hash(entry))
        key = _SEQ.pack(seq)
        txn.put(key, self._sealer.seal(_TABLE, key, self._encode(entry)), db=self._db)
        txn.put(_HEAD_KEY, self._sealer.seal(_HEAD_TABLE, _HEAD_KEY,
                                             self._encode(_Head(seq, entry.hash))), db=self._meta)
        return seq

    def _hash(self, entry: AuditEntry) -> bytes:
        """BLAKE2b-256 of the entry's canonical encoding (msgpack, details sorted by key,
        `hash` empty)."""
        unhashed = msgspec.structs.replace(entry, hash=b"")
        return hashlib.blake2b(self._encode(unhashed), digest_size=AUDIT_HASH_BYTES,
                               person=_HASH_PERSON).digest()

    def record(self, txn: Any, op: RecordAudit, now_ms: int) -> AuditRecorded:
        """The `RecordAudit` op: checks its texts (`Invalid`), then appends it."""
        _check_choice("action", op.action, AuditAction)
        if op.action not in EVENT_ACTIONS:
            raise Invalid(f"RecordAudit records events ({', '.join(sorted(EVENT_ACTIONS))}); "
                          f"{op.action} is recorded by its op, wrapped in Audited")
        _check_id("entry's tenant", op.tenant)
        _check_choice("outcome", op.outcome, AuditOutcome)
        check_actor(op.actor)
        _check_text("target", op.target)
        _check_text("reason", op.reason)
        _check_details(op.details)
        head = self.head(txn)
        seq = self.append(txn, head, now_ms, op.actor,
                          (op.action, op.tenant, op.target, op.details), op.outcome, op.reason)
        return AuditRecorded(seq)

    # -- reading ------------------------------------------------------------------------------

    def _entries(self, txn: Any, after_seq: int) -> Iterable[tuple[int, bytes]]:
        with txn.cursor(db=self._db) as cur:
            if not cur.set_range(_SEQ.pack(after_seq + 1)):
                return
            for key, stored in cur.iternext():
                yield _SEQ.unpack(key)[0], stored

    def _open(self, seq: int, stored: bytes) -> AuditEntry:
        try:
            return self._decode_entry(self._sealer.open(_TABLE, _SEQ.pack(seq), stored))
        except msgspec.DecodeError as exc:
            raise CorruptData(f"audit entry {seq} is damaged: {exc}") from exc

    def search(
        self, txn: Any, after_seq: int, limit: int, match: Callable[[AuditEntry], bool],
    ) -> AuditPage:
        """Up to `limit` entries after `after_seq` for which `match` holds, reading at most
        `MAX_AUDIT_SCAN_ENTRIES`. `CorruptData` for an entry that fails to open."""
        found: list[AuditEntry] = []
        scanned_to = after_seq
        scanned = 0
        more = False
        for seq, stored in self._entries(txn, after_seq):
            if len(found) == limit or scanned == MAX_AUDIT_SCAN_ENTRIES:
                more = True
                break
            entry = self._open(seq, stored)
            scanned, scanned_to = scanned + 1, seq
            if match(entry):
                found.append(entry)
        return AuditPage(entries=found, scanned_to=scanned_to, more=more)

    def verify(self, txn: Any) -> AuditVerdict:
        """Check every entry, in seq order, and the head: see `AuditProblem`."""
        expected, prev_hash = 1, _NO_HASH
        for seq, stored in self._entries(txn, 0):
            good = expected - 1
            if seq != expected:
                return AuditVerdict(count=good, bad_seq=expected, problem=AuditProblem.MISSING,
                                    why=f"entry {expected} is missing (the next is {seq})")
            try:
                entry = self._open(seq, stored)
            except CorruptData as exc:
                return AuditVerdict(count=good, bad_seq=seq, problem=AuditProblem.ALTERED,
                                    why=f"entry {seq} does not open: {exc}")
            if entry.hash != self._hash(entry):
                return AuditVerdict(count=good, bad_seq=seq, problem=AuditProblem.ALTERED,
                                    why=f"entry {seq} does not match its hash: it was edited")
            if entry.seq != seq:
                return AuditVerdict(
                    count=good, bad_seq=seq, problem=AuditProblem.REORDERED,
                    why=f"the entry stored as {seq} is entry {entry.seq}: moved or swapped")
            if entry.prev_hash != prev_hash:
                return AuditVerdict(
                    count=good, bad_seq=seq, problem=AuditProblem.CHAIN_BROKEN,
                    why=f"entry {seq} does not follow entry {seq - 1}: one of them was "
                        f"replaced")
            expected, prev_hash = seq + 1, entry.hash
        count = expected - 1
        stored_head = txn.get(_HEAD_KEY, db=self._meta)
        if stored_head is None:
            if count == 0:
                return AuditVerdict(count=0)
            return AuditVerdict(count=count, bad_seq=count, problem=AuditProblem.HEAD,
                                why="the head record is missing")
        try:
            head = self._open_head(stored_head)
        except CorruptData as exc:
            return AuditVerdict(count=count, bad_seq=count, problem=AuditProblem.HEAD,
                                why=f"the head record does not open: {exc}")
        if head.seq > count:
            return AuditVerdict(
                count=count, bad_seq=count + 1, problem=AuditProblem.MISSING,
                why=f"entries {count + 1} to {head.seq} are missing: cut off the end")
        if head.seq < count:
            return AuditVerdict(
                count=head.seq, bad_seq=head.seq + 1, problem=AuditProblem.HEAD,
                why=f"entries {head.seq + 1} to {count} follow the head: added behind its back")
        if head.hash != prev_hash:
            return AuditVerdict(
                count=count - 1, bad_seq=count, problem=AuditProblem.HEAD,
                why=f"entry {count} is not the one the head names: it was replaced")
        return AuditVerdict(count=count, head_hash=prev_hash)
