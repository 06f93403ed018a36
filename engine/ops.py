"""Write operations and their results: the vocabulary of `Engine.apply_batch`.

An operation is plain data. The writer thread of the appliance gathers whatever operations are
pending, hands them to `apply_batch` as one list, and gets back one result (or one refusal) per
operation, in order, after a single durable commit.
"""

from __future__ import annotations

import msgspec

from engine.records import (
    AdminRole,
    AuditAction,
    AuditActor,
    AuditOutcome,
    MessageKind,
    Role,
    SessionEnd,
)

__all__ = [
    "AddKeyEpoch",
    "AddMembers",
    "AdminCreated",
    "AdminSessionsEnded",
    "Append",
    "Appended",
    "AuditRecorded",
    "Audited",
    "AuditedOperation",
    "ChangePassword",
    "ConversationOpened",
    "CreateAdmin",
    "CreateAdminSession",
    "CreateGroup",
    "CreateSession",
    "CreateTenant",
    "CreateUser",
    "CursorMoved",
    "Join",
    "KeyEpochAdded",
    "KeyEpochShredded",
    "KeyEpochsRevoked",
    "Leave",
    "MarkDelivered",
    "MarkRead",
    "MembershipChanged",
    "OpenDirect",
    "Operation",
    "PasswordChanged",
    "PruneSessions",
    "RecordAudit",
    "RemoveMember",
    "Result",
    "RevokeKeyEpochs",
    "RevokeSession",
    "RevokeUserSessions",
    "SessionCreated",
    "SessionsPruned",
    "SessionsRevoked",
    "SetAdminPassword",
    "SetPassword",
    "SetRole",
    "SetUserDisabled",
    "ShredKeyEpoch",
    "TenantCreated",
    "UserCreated",
]


class _Op(msgspec.Struct, frozen=True, kw_only=True):
    pass


class CreateTenant(_Op, frozen=True, kw_only=True):
    name: str


class CreateUser(_Op, frozen=True, kw_only=True):
    tenant: int
    login: str
    display_name: str
    password_hash: str  # from engine.passwords.hash_password, computed outside the writer


class CreateGroup(_Op, frozen=True, kw_only=True):
    tenant: int
    creator: int
    title: str
    members: tuple[int, ...] = ()  # besides the creator, who becomes the owner
    open: bool = False


class OpenDirect(_Op, frozen=True, kw_only=True):
    """Open the direct conversation of two users; the existing one if they already have it."""

    tenant: int
    user: int
    peer: int


class AddMembers(_Op, frozen=True, kw_only=True):
    tenant: int
    actor: int
    conv: int
    users: tuple[int, ...]
    role: Role = Role.MEMBER


class RemoveMember(_Op, frozen=True, kw_only=True):
    tenant: int
    actor: int
    conv: int
    user: int


class Leave(_Op, frozen=True, kw_only=True):
    tenant: int
    user: int
    conv: int


class Join(_Op, frozen=True, kw_only=True):
    """Join an open group without being added."""

    tenant: int
    user: int
    conv: int


class SetRole(_Op, frozen=True, kw_only=True):
    tenant: int
    actor: int
    conv: int
    user: int
    role: Role


class Append(_Op, frozen=True, kw_only=True):
    tenant: int
    conv: int
    sender: int
    client_msg_id: str
    body: str
    kind: MessageKind = MessageKind.TEXT
    mentions: tuple[int, ...] = ()
    ref: int = 0  # the seq a recall hides


class MarkRead(_Op, frozen=True, kw_only=True):
    tenant: int
    user: int
    conv: int
    seq: int


class MarkDelivered(_Op, frozen=True, kw_only=True):
    tenant: int
    user: int
    conv: int
    seq: int


# -- sessions and the user's lifecycle (engine/sessions.py) ------------------------------------


class CreateSession(_Op, frozen=True, kw_only=True):
    """Store a new session under `token_hash` (the SHA-256 of a 256-bit random token)."""

    tenant: int
    user: int
    token_hash: bytes
    device: str
    expires_ms: int
    # The password hash the login was checked against, if any: the session is refused if the
    # password changed since (a login racing a password change must not outlive it).
    password_hash: str = ""


class RevokeSession(_Op, frozen=True, kw_only=True):
    token_hash: bytes
    reason: SessionEnd = SessionEnd.REVOKED


class RevokeUserSessions(_Op, frozen=True, kw_only=True):
    """End every live session of one user (all devices)."""

    tenant: int
    user: int
    reason: SessionEnd = SessionEnd.REVOKED


class SetPassword(_Op, frozen=True, kw_only=True):
    """Replace a user's password hash and end all of its sessions, in one transaction."""

    tenant: int
    user: int
    password_hash: str  # from engine.passwords.hash_password, computed outside the writer


class ChangePassword(_Op, frozen=True, kw_only=True):
    """A user's change of their own password, asked by one session, in one transaction:
    refused unless that session is live and the stored hash is still `checked_hash`; then the
    new hash is stored, EVERY session of the user ends (the asking one too: its token may be
    what was stolen), and one new session starts under `new_token_hash` for the device that
    asked, so that it stays signed in."""

    token_hash: bytes  # the asking session's; its tenant and user are the ones changed
    checked_hash: str  # the stored hash the current password was verified against
    password_hash: str  # the new one, from engine.passwords.hash_password
    new_token_hash: bytes
    expires_ms: int  # of the new session


class SetUserDisabled(_Op, frozen=True, kw_only=True):
    """Disable (ending all of its sessions in the same transaction) or re-enable a user."""

    tenant: int
    user: int
    disabled: bool


class PruneSessions(_Op, frozen=True, kw_only=True):
    """Delete up to `max_count` sessions that expired before the batch's `now_ms`: users',
    then administrators' (`admin_sessions`)."""

    max_count: int = 10_000
class AddKeyEpoch(_Op, frozen=True, kw_only=True):
    """Store a new data-key epoch of a tenant and make it current (the previous one retires).

    `wrapped_dek` is opaque to the engine: the appliance wrapped it (master key, then escrow)
    and installs the unwrapped DEK in the engine's keyring itself.
    """

    tenant: int
    wrapped_dek: bytes
    key_id: str  # the escrow key that wraps it
    epoch: int = 0  # when not 0, the epoch the wrap was bound to: refused unless it is next


class ShredKeyEpoch(_Op, frozen=True, kw_only=True):
    """Delete a retired epoch's wrapped DEK for good: the records sealed under it can never be
    opened again (crypto-shredding)."""

    tenant: int
    epoch: int


class RevokeKeyEpochs(_Op, frozen=True, kw_only=True):
    """Record that the escrow destroyed the tenant's escrow keys (the appliance revoked them
    first): every epoch not shredded becomes `revoked`, so that every engine on the store,
    including a running server's, refuses its records at once instead of when its DEKs
    expire. Nothing to do for a tenant revoked already."""

    tenant: int


# -- administrators of the appliance (engine/admins.py) ----------------------------------------


class CreateAdmin(_Op, frozen=True, kw_only=True):
    login: str
    display_name: str
    password_hash: str  # from engine.passwords.hash_password, computed outside the writer
    role: AdminRole


class SetAdminPassword(_Op, frozen=True, kw_only=True):
    """Replace an administrator's password hash and end all of its sessions, in one
    transaction."""

    admin: int
    password_hash: str


class CreateAdminSession(_Op, frozen=True, kw_only=True):
    """Store an administrator's session under `token_hash` (in `admin_sessions`, never in the
    users' `sessions`). Refused if the admin is disabled, or its password is no longer
    `password_hash` (the one the login was checked against), as `CreateSession` is."""

    admin: int
    token_hash: bytes
    expires_ms: int
    password_hash: str = ""


# -- the audit log (engine/audit.py) -----------------------------------------------------------

# The ops an `Audited` may wrap: admin and security actions. engine/audit.py maps each to its
# action, target and details.
AuditedOperation = (
    CreateTenant
    | CreateUser
    | CreateGroup
    | AddMembers
    | RemoveMember
    | SetRole
    | CreateSession
    | RevokeSession
    | RevokeUserSessions
    | SetPassword
    | ChangePassword
    | SetUserDisabled
    | AddKeyEpoch
    | ShredKeyEpoch
    | RevokeKeyEpochs
    | CreateAdmin
    | SetAdminPassword
)


class Audited(_Op, frozen=True, kw_only=True):
    """Apply `op` and, in the same transaction, append one audit entry saying that `actor`
    did it: if `op` is refused, neither happens. The result is `op`'s own. The entry's action,
    target and details come from `op` and its result (engine/audit.py), never from the
    caller, so that no caller can put a password hash or a token hash in it."""

    op: AuditedOperation
    actor: AuditActor


class RecordAudit(_Op, frozen=True, kw_only=True):
    """Append one audit entry for an event that changes nothing else: a failed login with its
    reason, a lockout, a permission denial, an administrator's login. Only the event actions
    (`AuditAction.LOGIN_FAILED` ...): an op's action would claim a change that was not made.

    Every text is checked as it is appended (engine/audit.py): bounded, no control
    characters, nothing that looks like a password hash or a token, and no detail named like a
    secret (password, token, key...). Refused with `Invalid`."""

    actor: AuditActor
    action: AuditAction
    tenant: int = 0
    target: str = ""
    outcome: AuditOutcome = AuditOutcome.REFUSED
    reason: str = ""
    details: dict[str, str | int] = {}


Operation = (
    CreateTenant
    | CreateUser
    | CreateGroup
    | OpenDirect
    | AddMembers
    | RemoveMember
    | Leave
    | Join
    | SetRole
    | Append
    | MarkRead
    | MarkDelivered
    | CreateSession
    | RevokeSession
    | RevokeUserSessions
    | SetPassword
    | ChangePassword
    | SetUserDisabled
    | PruneSessions
    | AddKeyEpoch
    | ShredKeyEpoch
    | RevokeKeyEpochs
    | CreateAdmin
    | SetAdminPassword
    | CreateAdminSession
    | Audited
    | RecordAudit
)


class TenantCreated(msgspec.Struct, frozen=True):
    tenant: int


class UserCreated(msgspec.Struct, frozen=True):
    user: int


class ConversationOpened(msgspec.Struct, frozen=True):
    conv: int
    created: bool  # False when OpenDirect found the existing conversation


class MembershipChanged(msgspec.Struct, frozen=True):
    conv: int
    member_version: int
    seq: int  # the system message that records the change in the timeline
    users: tuple[int, ...]  # who joined or left; fanout tells them


class Appended(msgspec.Struct, frozen=True):
    conv: int
    seq: int
    ts: int
    duplicate: bool = False  # a retry of an earlier (sender, client_msg_id): nothing was stored


class CursorMoved(msgspec.Struct, frozen=True):
    conv: int
    delivered: int
    read: int


class SessionCreated(msgspec.Struct, frozen=True):
    token_hash: bytes
    expires_ms: int


class SessionsRevoked(msgspec.Struct, frozen=True):
    """The sessions an op ended (none, e.g. for re-enabling a user), and why: the server closes
    every connection still using one of them."""

    tenant: int
    user: int
    token_hashes: tuple[bytes, ...]
    reason: SessionEnd


class PasswordChanged(msgspec.Struct, frozen=True):
    """A `ChangePassword` done: the sessions it ended (the asking one's old token among them)
    and the one it started for the asking device."""

    revoked: SessionsRevoked
    session: SessionCreated


class SessionsPruned(msgspec.Struct, frozen=True):
    count: int
    more: bool  # more expired sessions are left for the next prune
class KeyEpochAdded(msgspec.Struct, frozen=True):
    tenant: int
    epoch: int  # epochs of a tenant count from 1


class KeyEpochShredded(msgspec.Struct, frozen=True):
    tenant: int
    epoch: int


class KeyEpochsRevoked(msgspec.Struct, frozen=True):
    tenant: int
    epochs: tuple[int, ...]  # those this op revoked (none when revoked already)


class AdminCreated(msgspec.Struct, frozen=True):
    admin: int


class AdminSessionsEnded(msgspec.Struct, frozen=True):
    """The sessions of an administrator an op ended (a new password ends them all)."""

    admin: int
    token_hashes: tuple[bytes, ...]


class AuditRecorded(msgspec.Struct, frozen=True):
    seq: int  # of the entry `RecordAudit` appended


Result = (
    TenantCreated | UserCreated | ConversationOpened | MembershipChanged | Appended | CursorMoved
    | SessionCreated | SessionsRevoked | PasswordChanged | SessionsPruned
    | KeyEpochAdded | KeyEpochShredded | KeyEpochsRevoked | AuditRecorded
    | AdminCreated | AdminSessionsEnded
)
