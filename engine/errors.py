"""The engine's error tree: one class per situation, each with a stable wire code.

Every later layer (gateway, admin API, console) maps these codes to the client unchanged, so a
code, once published, never changes meaning. Add a class; never reuse a code.
"""

from __future__ import annotations

__all__ = [
    "CapacityExceeded",
    "ClientMsgIdReused",
    "Conflict",
    "CorruptData",
    "EngineClosed",
    "Forbidden",
    "HeraldError",
    "InternalError",
    "Invalid",
    "KeyNotInstalled",
    "KeyUnavailable",
    "NotFound",
    "NotMember",
    "Unauthenticated",
    "WeakPassword",
    "WrongPassword",
]


class HeraldError(Exception):
    """Base of every refusal the engine makes. `code` is the stable wire code."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __eq__(self, other: object) -> bool:
        # Batch results are compared in tests; two refusals are equal when they say the same.
        return type(self) is type(other) and self.message == other.message

    def __hash__(self) -> int:
        return hash((type(self), self.message))


class NotFound(HeraldError):
    """The tenant, user or conversation does not exist (in the caller's tenant), or the
    caller may not see it: a conversation it is not in, other than an open group, is refused
    exactly as one that does not exist, so that a refusal reveals nothing of it."""

    code = "not_found"


class NotMember(HeraldError):
    """The user is not a member of the conversation it tried to use, and may see that it
    exists: an open group, which anyone of the tenant may join (else `NotFound`), or, for
    the target of a change, any conversation the actor is in."""

    code = "not_member"


class Forbidden(HeraldError):
    """The user is a member but its role does not allow the operation."""

    code = "forbidden"


class Conflict(HeraldError):
    """The operation clashes with what exists (a taken name, a reused client_msg_id)."""

    code = "conflict"


class ClientMsgIdReused(Conflict):
    """A send reuses a client_msg_id of the sender's for other content (body, kind, ref or
    mentions) than the message first sent with it: not a retry, and nothing is stored. A
    retry sends the same content, and gets the first message's seq back."""

    code = "client_msg_id_reused"


class Invalid(HeraldError):
    """The arguments are malformed or out of range."""

    code = "invalid"


class Unauthenticated(HeraldError):
    """Wrong login or password, or a disabled account. Deliberately says no more than that.

    `reason` says which, for the server's log only: it never reaches the client, whose answer
    is the same for every reason."""

    code = "unauthenticated"

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class WrongPassword(HeraldError):
    """The current password given to confirm a change of one's own password is wrong. Not
    `Unauthenticated`: the session that asked stays valid, and a client must not log out."""

    code = "wrong_password"


class WeakPassword(Invalid):
    """A new password does not meet the password policy (engine.passwords): too short, or
    too long to hash."""

    code = "weak_password"


class CapacityExceeded(HeraldError):
    """The store is full (LMDB map size) or a configured limit was reached."""

    code = "capacity_exceeded"


class InternalError(HeraldError):
    """The store failed in a way that names no situation of the caller's (an LMDB error that
    is neither a full store nor damage, e.g. a key over LMDB's size limit): a bug or a
    misconfiguration. Nothing was done. The appliance logs it with its traceback and answers
    the one request it failed; a client can only report it."""

    code = "internal"


class CorruptData(HeraldError):
    """A stored record failed to decode or to authenticate."""

    code = "corrupt_data"


class KeyUnavailable(HeraldError):
    """The data key needed to open a record is not available (escrow down or revoked)."""

    code = "key_unavailable"


class KeyNotInstalled(KeyUnavailable):
    """The record names a key epoch whose DEK this engine's keyring does not hold: never
    installed (another process may just have added the epoch), or dropped (its escrow key
    revoked). The same wire code; `tenant` and `epoch` say which key, so that the appliance
    can tell a key it is fetching from one that is gone."""

    def __init__(self, message: str, tenant: int, epoch: int) -> None:
        super().__init__(message)
        self.tenant = tenant
        self.epoch = epoch


class EngineClosed(HeraldError):
    """The engine was closed; no further calls are accepted."""

    code = "engine_closed"
