"""Herald's storage engine and IM core.

Synchronous and deterministic: no Trio, no sockets, no threads of its own, and no clock or
randomness it is not handed. It must never import `trio`, `appliance` or `admin_console`;
tests/test_layers.py enforces that. Everything a caller needs is re-exported here.
"""

from engine.core import ConversationSummary, Engine
from engine.crypto import Keyring
from engine.epochs import KeyEpoch
from engine.errors import (
    CapacityExceeded,
    Conflict,
    CorruptData,
    EngineClosed,
    Forbidden,
    HeraldError,
    Invalid,
    KeyUnavailable,
    NotFound,
    NotMember,
    Unauthenticated,
)
from engine.limits import Limits
from engine.membership import MemberList
from engine.ops import (
    AddKeyEpoch,
    AddMembers,
    Append,
    Appended,
    ConversationOpened,
    CreateGroup,
    CreateTenant,
    CreateUser,
    CursorMoved,
    Join,
    KeyEpochAdded,
    KeyEpochShredded,
    Leave,
    MarkDelivered,
    MarkRead,
    MembershipChanged,
    OpenDirect,
    Operation,
    RemoveMember,
    Result,
    SetRole,
    ShredKeyEpoch,
    TenantCreated,
    UserCreated,
)
from engine.passwords import hash_password, verify_password
from engine.records import ConversationKind, EpochState, Message, MessageKind, Role
from engine.sync import ConversationSync, SyncResult
from engine.timeline import Page

__all__ = [
    "AddKeyEpoch",
    "AddMembers",
    "Append",
    "Appended",
    "CapacityExceeded",
    "Conflict",
    "ConversationKind",
    "ConversationOpened",
    "ConversationSummary",
    "ConversationSync",
    "CorruptData",
    "CreateGroup",
    "CreateTenant",
    "CreateUser",
    "CursorMoved",
    "Engine",
    "EngineClosed",
    "EpochState",
    "Forbidden",
    "HeraldError",
    "Invalid",
    "Join",
    "KeyEpoch",
    "KeyEpochAdded",
    "KeyEpochShredded",
    "KeyUnavailable",
    "Keyring",
    "Leave",
    "Limits",
    "MarkDelivered",
    "MarkRead",
    "MemberList",
    "MembershipChanged",
    "Message",
    "MessageKind",
    "NotFound",
    "NotMember",
    "OpenDirect",
    "Operation",
    "Page",
    "RemoveMember",
    "Result",
    "Role",
    "SetRole",
    "ShredKeyEpoch",
    "SyncResult",
    "TenantCreated",
    "Unauthenticated",
    "UserCreated",
    "hash_password",
    "verify_password",
]
