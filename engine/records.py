"""Stored records: msgspec Structs, encoded as compact msgpack arrays.

Every value goes through a `RecordSealer` on its way to and from LMDB. The sealer is the seam
for encryption at rest: it is handed the record's table and LMDB key so that a sealed record is
bound to its place (a record copied elsewhere fails to open). `PlainSealer` tags each value
with a one-byte format marker (0x00); `engine.crypto.AeadSealer` seals (0x01).
"""

from __future__ import annotations

import enum
import struct
from typing import Protocol

import msgspec

from engine.errors import CorruptData, KeyUnavailable

__all__ = [
    "FORMAT_VERSION",
    "SEALED_FORMAT_VERSION",
    "ActorKind",
    "AdminRecord",
    "AdminRole",
    "AdminSessionRecord",
    "AuditAction",
    "AuditActor",
    "AuditEntry",
    "AuditOutcome",
    "ConversationKind",
    "ConversationRecord",
    "EpochRecord",
    "EpochState",
    "MemberLogEntry",
    "MemberRecord",
    "Message",
    "MessageKind",
    "PlainSealer",
    "RecordSealer",
    "Role",
    "SessionEnd",
    "SessionRecord",
    "TenantRecord",
    "UserRecord",
    "pack_cursor",
    "pack_head",
    "unpack_cursor",
    "unpack_head",
    "unpack_head_block",
]

# Bumped whenever the on-disk layout changes; `HotStore.open` refuses a store it cannot read.
# A store's version is fixed when it is created: one number for plain records, another for
# sealed ones (and the `key_epochs` table), so a release that reads only plain stores refuses a
# sealed one instead of writing plain records into it. 1 and 2 stored one message per record;
# 3 and 4 store message blocks (engine/blocks.py) but counted user and conversation ids across
# tenants; 5 and 6 count them per tenant.
FORMAT_VERSION = 5
SEALED_FORMAT_VERSION = 6


class Role(enum.StrEnum):
    """Membership roles, in decreasing power."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


class ConversationKind(enum.StrEnum):
    DIRECT = "direct"
    GROUP = "group"


class MessageKind(enum.StrEnum):
    TEXT = "text"
    SYSTEM = "system"  # body names the event (e.g. "member_added"), mentions the users it is about
    BOT = "bot"
    RECALL = "recall"  # ref names the seq it hides


class TenantRecord(msgspec.Struct, array_like=True, frozen=True):
    name: str
    created_ms: int
    disabled: bool = False


class UserRecord(msgspec.Struct, array_like=True, frozen=True):
    login: str
    display_name: str
    password_hash: str
    created_ms: int
    disabled: bool = False


class ConversationRecord(msgspec.Struct, array_like=True, frozen=True):
    kind: ConversationKind
    title: str
    creator: int
    created_ms: int
    member_version: int
    member_count: int
    open: bool = False  # a group anyone in the tenant may join without being added

    @property
    def seen_by_everyone(self) -> bool:
        """Whether users of the tenant who are not members may see that it exists: only an
        open group, which they may join. Any other conversation is refused to a non-member
        exactly as one that does not exist."""
        return self.kind is ConversationKind.GROUP and self.open


class MemberRecord(msgspec.Struct, array_like=True, frozen=True):
    role: Role
    joined_ms: int
    added_by: int


class MemberLogEntry(msgspec.Struct, array_like=True, frozen=True):
    """One change of a member list; `role` is None when the user was removed."""

    user: int
    role: Role | None


class Message(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One message of a conversation's timeline, as stored and as read.

    The seq is stored inside the record too (8 bytes) so that a page decodes straight into
    `Message` values with no second object per message. Not tracked by the cyclic garbage
    collector (`gc=False`): its fields are ints, strings and a tuple of ints, so it can never
    be part of a cycle, and the engine's message cache holds up to 100,000 of them, which every
    full collection would otherwise walk (measured: 2-12% of append throughput at batch 100).
    """

    seq: int
    sender: int
    ts: int
    client_msg_id: str
    kind: MessageKind
    body: str
    mentions: tuple[int, ...] = ()
    ref: int = 0
    # The seq of the recall that hid it: its body and mentions are then blanked in the store.
    recalled_by: int = 0


class EpochState(enum.StrEnum):
    ACTIVE = "active"  # the tenant's current epoch: new records are sealed under it
    RETIRED = "retired"  # replaced by a newer epoch; its records still open
    SHREDDED = "shredded"  # its wrapped DEK is deleted: its records can never open again
    REVOKED = "revoked"  # its escrow key is destroyed: its records can never open again


class EpochRecord(msgspec.Struct, array_like=True, frozen=True):
    """One key epoch of a tenant (`key_epochs`, tenant|epoch). The engine cannot unwrap
    `wrapped_dek` (master key and escrow stay with the appliance); empty once shredded."""

    wrapped_dek: bytes
    key_id: str  # the tenant's escrow key that wraps it
    state: EpochState
    created_ms: int
    seals: int = 0  # records sealed under it so far (docs/security.md "Nonces")
    shredded_ms: int = 0


class RecordSealer(Protocol):
    """Turns an encoded record of `table` into the bytes stored under `key`, and back.

    `open` raises `CorruptData` for bytes it did not produce (or that were moved to another key
    or table), and `KeyUnavailable` when it cannot get the key to open them. `store_format` is
    the format version of the stores it reads and writes. `seal` seals under the tenant's
    current key, or under `epoch` when given (a record rewritten in place keeps its epoch); a
    sealer without epochs ignores it.
    """

    store_format: int

    def seal(
        self, table: bytes, key: bytes, plaintext: bytes, epoch: int | None = None
    ) -> bytes: ...

    def open(self, table: bytes, key: bytes, stored: bytes) -> bytes: ...


_PLAIN_MARK = b"\x00"


class PlainSealer:
    """No encryption: a one-byte marker, then the encoded record."""

    store_format = FORMAT_VERSION

    def seal(
        self, table: bytes, key: bytes, plaintext: bytes, epoch: int | None = None
    ) -> bytes:
        return _PLAIN_MARK + plaintext

    def open(self, table: bytes, key: bytes, stored: bytes) -> bytes:
        if stored[:1] != _PLAIN_MARK:
            if stored[:1] == b"\x01":
                raise KeyUnavailable(
                    f"a record in table {table.decode()} is sealed (encrypted at rest) but this "
                    f"engine has no keyring: open the store with Engine(path, keyring=...)"
                )
            raise CorruptData("record is not in the plain format this store was opened with")
        return stored[1:]


# Heads and cursors are hot, tiny and hold no user content: fixed-width integers, not msgpack.
# head seq, server timestamp (ms) of that message, first seq of the conversation's last block
_HEAD = struct.Struct(">QQQ")
_HEAD_SEQ_TS = struct.Struct(">QQ")
_CURSOR = struct.Struct(">QQ")  # delivered seq, read seq


def pack_head(seq: int, ts_ms: int, block_first: int = 0) -> bytes:
    """A conversation's head; `block_first` is 0 before its first message."""
    return _HEAD.pack(seq, ts_ms, block_first)


def unpack_head(value: bytes) -> tuple[int, int]:
    """(head seq, its timestamp)."""
    seq, ts = _HEAD_SEQ_TS.unpack_from(value)
    return int(seq), int(ts)


def unpack_head_block(value: bytes) -> tuple[int, int, int]:
    """(head seq, its timestamp, first seq of the last message block)."""
    seq, ts, block_first = _HEAD.unpack(value)
    return int(seq), int(ts), int(block_first)


def pack_cursor(delivered: int, read: int) -> bytes:
    return _CURSOR.pack(delivered, read)


def unpack_cursor(value: bytes) -> tuple[int, int]:
    delivered, read = _CURSOR.unpack(value)
    return int(delivered), int(read)


# -- sessions (engine/sessions.py) -------------------------------------------------------------


class SessionEnd(enum.StrEnum):
    """Why a session ended; the server's `bye` frame carries the same code."""

    LOGGED_OUT = "logged_out"
    REVOKED = "session_revoked"
    PASSWORD_CHANGED = "password_changed"
    ACCOUNT_DISABLED = "account_disabled"
    EXPIRED = "session_expired"


class SessionRecord(msgspec.Struct, array_like=True, frozen=True):
    """One login session, stored under the SHA-256 of its token (never the token itself).

    `ended` is empty while the session is live; once revoked the record stays (as a tombstone
    saying why) until it expires and is pruned, so that connections still using it are told
    the reason.
    """

    tenant: int
    user: int
    device: str
    created_ms: int
    expires_ms: int
    ended: str = ""  # a SessionEnd value once revoked


# -- administrators of the appliance (engine/admins.py) ----------------------------------------


class AdminRole(enum.StrEnum):
    """What an administrator may do (the admin API's role table, appliance/admin/roles.py,
    says it op by op). Never rename one: they are stored."""

    OPERATOR = "operator"  # views and manages accounts and groups
    SECURITY_OFFICER = "security_officer"  # alone handles keys and reads the audit log


class AdminRecord(msgspec.Struct, array_like=True, frozen=True):
    """An administrator of the appliance: of no tenant, in its own table, sealed like tenant
    records (under the name key: it is read before any tenant's DEK is unwrapped)."""

    login: str
    display_name: str
    password_hash: str  # Argon2id, from engine.passwords.hash_password
    role: str  # an AdminRole value
    created_ms: int
    disabled: bool = False


class AdminSessionRecord(msgspec.Struct, array_like=True, frozen=True):
    """An administrator's session, under the SHA-256 of its token in `admin_sessions`: a table
    of its own, so that a user's token is never found where an admin's is looked up, nor the
    reverse."""

    admin: int
    created_ms: int
    expires_ms: int
    ended: str = ""  # a SessionEnd value once ended


# -- the audit log (engine/audit.py) -----------------------------------------------------------


class ActorKind(enum.StrEnum):
    """Who did what an audit entry records."""

    ADMIN = "admin"  # an administrator of the appliance (the admin API, or an offline command)
    USER = "user"  # a user of a tenant, e.g. logging in or changing their own password
    SYSTEM = "system"  # the appliance itself: a background job, a policy (lockouts)


class AuditActor(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    """The actor of an audit entry: its kind, and as much of who it is as the caller knows.
    `tenant` 0 is none (an administrator of the appliance, the system); `id` 0 is none (an
    administrator named only by `name`, or a failed login of an unknown account)."""

    kind: ActorKind
    tenant: int = 0
    id: int = 0
    name: str = ""


class AuditAction(enum.StrEnum):
    """What an audit entry records: stable strings, searched for and shown as they are. Never
    rename one; add new ones."""

    # Recorded by the engine for an op wrapped in `Audited` (engine/audit.py says each one's
    # target and details).
    TENANT_CREATE = "tenant.create"
    USER_CREATE = "user.create"
    USER_SET_PASSWORD = "user.set_password"
    USER_CHANGE_PASSWORD = "user.change_password"
    USER_DISABLE = "user.disable"
    USER_ENABLE = "user.enable"
    USER_REVOKE_SESSIONS = "user.revoke_sessions"
    SESSION_CREATE = "session.create"  # a login
    SESSION_REVOKE = "session.revoke"
    GROUP_CREATE = "group.create"
    GROUP_ADD_MEMBERS = "group.add_members"
    GROUP_REMOVE_MEMBER = "group.remove_member"
    GROUP_SET_ROLE = "group.set_role"
    KEYS_ROTATE = "keys.rotate"  # a new key epoch
    KEYS_SHRED = "keys.shred"
    KEYS_REVOKE = "keys.revoke"
    ADMIN_CREATE = "admin.create"
    ADMIN_SET_PASSWORD = "admin.set_password"
    # Events that change nothing else, recorded with `RecordAudit`.
    LOGIN_FAILED = "login.failed"
    LOGIN_LOCKED_OUT = "login.locked_out"
    PERMISSION_DENIED = "permission.denied"
    ADMIN_LOGIN = "admin.login"
    ADMIN_LOGIN_FAILED = "admin.login_failed"
    ADMIN_LOGOUT = "admin.logout"


class AuditOutcome(enum.StrEnum):
    OK = "ok"
    REFUSED = "refused"


class AuditEntry(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    """One entry of the audit log (`audit`, seq). `hash` is the BLAKE2b-256 of the entry
    encoded with an empty `hash`, and `prev_hash` the previous entry's `hash` (32 zero bytes
    for seq 1): the chain engine/audit.py verifies. Its strings are ids, names and stable codes,
    never a secret or a message body (docs/security.md "The appliance's audit log")."""

    seq: int
    time_ms: int
    actor: AuditActor
    action: AuditAction
    tenant: int  # the tenant the entry is about; 0: none (the appliance)
    target: str  # what it acted on, as kind:id ("user:7", "conv:3", "epoch:2"), or a login
    outcome: AuditOutcome
    reason: str  # why it was refused (a stable phrase or code), empty when it was not
    details: dict[str, str | int]  # sorted by key, so that its encoding is canonical
    prev_hash: bytes
    hash: bytes = b""
