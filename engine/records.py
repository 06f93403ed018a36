"""Stored records: msgspec Structs, encoded as compact msgpack arrays.

Every value goes through a `RecordSealer` on its way to and from LMDB. The sealer is the seam
for encryption at rest: it is handed the record's LMDB key so that a sealed record can be bound
to its place (a record copied elsewhere must fail to open). Until a sealing sealer is
configured, `PlainSealer` tags each value with a one-byte format marker, so that stores written
now can be told apart from sealed ones later.
"""

from __future__ import annotations

import enum
import struct
from typing import Protocol

import msgspec

from engine.errors import CorruptData

__all__ = [
    "FORMAT_VERSION",
    "ConversationKind",
    "ConversationRecord",
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
]

# Bumped whenever the on-disk layout changes; `HotStore.open` refuses a store it cannot read.
FORMAT_VERSION = 1


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


class MemberRecord(msgspec.Struct, array_like=True, frozen=True):
    role: Role
    joined_ms: int
    added_by: int


class MemberLogEntry(msgspec.Struct, array_like=True, frozen=True):
    """One change of a member list; `role` is None when the user was removed."""

    user: int
    role: Role | None


class Message(msgspec.Struct, array_like=True, frozen=True):
    """One message of a conversation's timeline, as stored and as read.

    The seq is stored inside the record too (8 bytes) so that a page decodes straight into
    `Message` values with no second object per message.
    """

    seq: int
    sender: int
    ts: int
    client_msg_id: str
    kind: MessageKind
    body: str
    mentions: tuple[int, ...] = ()
    ref: int = 0


class RecordSealer(Protocol):
    """Turns an encoded record into the bytes stored under `key`, and back.

    `open` raises `CorruptData` for bytes it did not produce (or that were moved to another key),
    and `KeyUnavailable` when it cannot get the key to open them.
    """

    def seal(self, key: bytes, plaintext: bytes) -> bytes: ...

    def open(self, key: bytes, stored: bytes) -> bytes: ...


_PLAIN_MARK = b"\x00"


class PlainSealer:
    """No encryption: a one-byte marker, then the encoded record."""

    def seal(self, key: bytes, plaintext: bytes) -> bytes:
        return _PLAIN_MARK + plaintext

    def open(self, key: bytes, stored: bytes) -> bytes:
        if stored[:1] != _PLAIN_MARK:
            raise CorruptData("record is not in the plain format this store was opened with")
        return stored[1:]


# Heads and cursors are hot, tiny and hold no user content: fixed-width integers, not msgpack.
_HEAD = struct.Struct(">QQ")  # head seq, server timestamp (ms) of that message
_CURSOR = struct.Struct(">QQ")  # delivered seq, read seq


def pack_head(seq: int, ts_ms: int) -> bytes:
    return _HEAD.pack(seq, ts_ms)


def unpack_head(value: bytes) -> tuple[int, int]:
    seq, ts = _HEAD.unpack(value)
    return int(seq), int(ts)


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
