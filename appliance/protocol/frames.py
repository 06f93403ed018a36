"""Herald's JSON frames: every request a client may send, every frame the server sends.

Client frames are a tagged union on `"op"`; each carries an `id` that the server's reply echoes.
Server frames are a tagged union on `"type"`: `reply`, `error`, `msg` (a pushed message),
`read` (a read mark made on another of the user's devices), `bye` (the server is closing).
Unknown fields are ignored, so that an older server accepts a newer client's frames. The wire
format, with an example of every frame, is documented in docs/protocol.md.

Pure data and codecs: no I/O.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from appliance.protocol.codes import ErrorCode

__all__ = [
    "OPEN_OPS",
    "OPEN_REQUESTS",
    "AddRequest",
    "Bye",
    "ChangeData",
    "ClientFrame",
    "ConvData",
    "ConvSummary",
    "ConvsData",
    "ConvsRequest",
    "CreateGroupRequest",
    "ErrorFrame",
    "FrameError",
    "HistoryData",
    "HistoryRequest",
    "JoinRequest",
    "KickRequest",
    "LeaveRequest",
    "LoginData",
    "LoginRequest",
    "LogoutRequest",
    "LookupData",
    "LookupRequest",
    "MembersData",
    "MembersRequest",
    "MsgPush",
    "OkData",
    "OpenDirectRequest",
    "PasswordData",
    "PasswordRequest",
    "PingRequest",
    "ReadData",
    "ReadPush",
    "ReadRequest",
    "Reply",
    "ResumeRequest",
    "SendData",
    "SendRequest",
    "ServerFrame",
    "SyncConv",
    "SyncData",
    "SyncRequest",
    "UserData",
    "UsersData",
    "UsersRequest",
    "WireMessage",
    "decode_client_frame",
    "decode_server_frame",
    "encode_frame",
]

MAX_REQUEST_ID = 2**53  # JSON numbers beyond this lose precision in JavaScript clients


class _Request(msgspec.Struct, tag_field="op", frozen=True, kw_only=True):
    id: int


class LoginRequest(_Request, tag="login"):
    tenant: str
    login: str
    password: str
    device: str = ""


class ResumeRequest(_Request, tag="resume"):
    token: str


class LogoutRequest(_Request, tag="logout"):
    everywhere: bool = False  # end every session of the user, not only this one


class PasswordRequest(_Request, tag="password"):
    """Change the signed-in user's own password. Every other session of the user ends; this
    connection stays signed in under the new token of the reply."""

    current: str
    new: str


class PingRequest(_Request, tag="ping"):
    pass


class SendRequest(_Request, tag="send"):
    conv: int
    cmid: str
    body: str
    mentions: list[int] = []
    kind: Literal["text", "recall"] = "text"
    ref: int = 0


class SyncRequest(_Request, tag="sync"):
    """`cursors` maps conversation -> last seq the client holds; absent: the server's cursors."""

    cursors: dict[int, int] | None = None
    limit: int = 50
    everything: bool = False


class HistoryRequest(_Request, tag="history"):
    """Messages before `before` (older history) or after `after` (filling a gap); the latest
    page when neither is given."""

    conv: int
    before: int | None = None
    after: int | None = None
    limit: int = 50


class ReadRequest(_Request, tag="read"):
    conv: int
    seq: int


class MembersRequest(_Request, tag="members"):
    conv: int
    since: int = 0


class ConvsRequest(_Request, tag="convs"):
    pass


class LookupRequest(_Request, tag="lookup"):
    """Find users of the caller's tenant by login: one (`login`, answered with its `UserData`
    or `not_found`), or many at once (`logins`, answered with `LookupData`). Give one of the
    two."""

    login: str | None = None
    logins: list[str] | None = None


class UsersRequest(_Request, tag="users"):
    """Names of users of the caller's tenant by id (to show who sent what); ids that name no
    user of the tenant are left out of the reply."""

    users: list[int]


class CreateGroupRequest(_Request, tag="create_group"):
    """`members` by id and `logins` by login: both are added."""

    title: str
    members: list[int] = []
    logins: list[str] = []
    open: bool = False


class OpenDirectRequest(_Request, tag="open_direct"):
    peer: int


class AddRequest(_Request, tag="add"):
    """`users` by id and `logins` by login: both are added."""

    conv: int
    users: list[int] = []
    logins: list[str] = []
    role: Literal["member", "admin"] = "member"


class KickRequest(_Request, tag="kick"):
    conv: int
    user: int


class LeaveRequest(_Request, tag="leave"):
    conv: int


class JoinRequest(_Request, tag="join"):
    conv: int


ClientFrame = (
    LoginRequest
    | ResumeRequest
    | LogoutRequest
    | PasswordRequest
    | PingRequest
    | SendRequest
    | SyncRequest
    | HistoryRequest
    | ReadRequest
    | MembersRequest
    | ConvsRequest
    | LookupRequest
    | UsersRequest
    | CreateGroupRequest
    | OpenDirectRequest
    | AddRequest
    | KickRequest
    | LeaveRequest
    | JoinRequest
)

CLIENT_OPS = frozenset(t.__struct_config__.tag for t in ClientFrame.__args__)  # type: ignore[attr-defined]
# The requests a connection may make before it logs in; any other op, even one that is not
# an op at all, is answered `unauthenticated` there.
OPEN_REQUESTS = (LoginRequest, ResumeRequest, PingRequest)
OPEN_OPS = frozenset(t.__struct_config__.tag for t in OPEN_REQUESTS)


# -- server frames ---------------------------------------------------------------------------


class WireMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    """A message on the wire; `mentions`, `ref` and `recalled_by` are omitted when empty.
    `recalled_by` is the seq of the recall that hid it (its body and mentions are gone)."""

    seq: int
    sender: int
    ts: int
    kind: str
    body: str
    cmid: str = ""
    mentions: list[int] = []
    ref: int = 0
    recalled_by: int = 0


class LoginData(msgspec.Struct, frozen=True):
    token: str
    tenant: int
    user: int
    display_name: str
    expires_ms: int


class PasswordData(msgspec.Struct, frozen=True):
    """The new session of the connection that changed its password (the old token is dead)."""

    token: str
    expires_ms: int


class SendData(msgspec.Struct, frozen=True):
    conv: int
    seq: int
    ts: int
    duplicate: bool


class SyncConv(msgspec.Struct, frozen=True):
    conv: int
    head: int
    last_ts: int
    read: int
    unread: int
    msgs: list[WireMessage]
    more: bool


class SyncData(msgspec.Struct, frozen=True):
    convs: list[SyncConv]
    removed: list[int]


class HistoryData(msgspec.Struct, frozen=True):
    conv: int
    head: int
    msgs: list[WireMessage]
    more: bool


class ReadData(msgspec.Struct, frozen=True):
    conv: int
    delivered: int
    read: int


class MembersData(msgspec.Struct, frozen=True):
    conv: int
    version: int
    full: bool
    members: list[tuple[int, str]]  # (user, role)
    removed: list[int]


class ConvSummary(msgspec.Struct, frozen=True):
    conv: int
    kind: str
    title: str
    role: str
    head: int
    last_ts: int
    read: int
    unread: int
    member_version: int
    member_count: int
    open: bool


class ConvsData(msgspec.Struct, frozen=True):
    convs: list[ConvSummary]


class ConvData(msgspec.Struct, frozen=True):
    conv: int
    created: bool


class ChangeData(msgspec.Struct, frozen=True):
    conv: int
    version: int
    seq: int


class UserData(msgspec.Struct, frozen=True):
    user: int
    login: str
    display_name: str


class UsersData(msgspec.Struct, frozen=True):
    users: list[UserData]


class LookupData(msgspec.Struct, frozen=True):
    """The answer to a `lookup` of many logins: the users found, and the logins that name no
    user of the tenant, each in the order asked."""

    users: list[UserData]
    unknown: list[str]


class OkData(msgspec.Struct, frozen=True):
    pass


class Reply(msgspec.Struct, tag_field="type", tag="reply", frozen=True):
    id: int
    data: Any


class ErrorFrame(msgspec.Struct, tag_field="type", tag="error", frozen=True, omit_defaults=True):
    """A refusal. `id` is null when the frame it answers had no readable id. The server sends
    an `ErrorCode` as `code`; the field is a `str` so that a client reads codes it does not
    know yet (a newer server's)."""

    id: int | None
    code: str
    message: str
    retry_after: float | None = None


class MsgPush(msgspec.Struct, tag_field="type", tag="msg", frozen=True):
    conv: int
    msg: WireMessage


class ReadPush(msgspec.Struct, tag_field="type", tag="read", frozen=True):
    conv: int
    read: int


class Bye(msgspec.Struct, tag_field="type", tag="bye", frozen=True):
    """Sent just before the server closes a connection, saying why: a `ByeCode` (a `str` on
    the client's side, as `ErrorFrame.code`)."""

    code: str
    message: str


ServerFrame = Reply | ErrorFrame | MsgPush | ReadPush | Bye


class FrameError(Exception):
    """A client frame could not be decoded. `code` is `bad_frame` or `unknown_op`; `id` is the
    request id when one could be read, so the error frame can still be matched; `op` is the
    frame's `op` when it is a string (known or not), else None."""

    def __init__(
        self, code: ErrorCode, message: str, request_id: int | None, op: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.op = op


_client_decoder = msgspec.json.Decoder(ClientFrame)
_server_decoder = msgspec.json.Decoder(ServerFrame)
_encoder = msgspec.json.Encoder()


def decode_client_frame(data: bytes | str) -> ClientFrame:
    """Decode one client text frame.

    Raises `FrameError` (never anything else) for invalid JSON, an unknown op, a missing or
    mistyped field, or a request id outside 0..2**53.
    """
    try:
        frame = _client_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise _explain(data, exc) from None
    if not 0 <= frame.id <= MAX_REQUEST_ID:
        raise FrameError(ErrorCode.BAD_FRAME,
                         f"id must be an integer from 0 to {MAX_REQUEST_ID}", None,
                         type(frame).__struct_config__.tag)  # type: ignore[arg-type]
    return frame


def _explain(data: bytes | str, exc: msgspec.DecodeError) -> FrameError:
    try:
        loose = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return FrameError(ErrorCode.BAD_FRAME, f"not valid JSON: {exc}", None)
    if not isinstance(loose, dict):
        return FrameError(ErrorCode.BAD_FRAME, "a frame must be a JSON object with 'op' and 'id'",
                          None)
    raw_id = loose.get("id")
    request_id = raw_id if type(raw_id) is int and 0 <= raw_id <= MAX_REQUEST_ID else None
    op = loose.get("op")
    if isinstance(op, str) and op not in CLIENT_OPS:
        return FrameError(ErrorCode.UNKNOWN_OP, f"unknown op {op[:40]!r}", request_id, op)
    return FrameError(ErrorCode.BAD_FRAME, f"malformed {op!r} frame: {exc}", request_id,
                      op if isinstance(op, str) else None)


def decode_server_frame(data: bytes | str) -> ServerFrame:
    """Decode one server frame (for clients). Raises `msgspec.DecodeError` on bad input."""
    return _server_decoder.decode(data)


def encode_frame(frame: ServerFrame | ClientFrame) -> bytes:
    """The JSON bytes of a frame, either direction."""
    return _encoder.encode(frame)
