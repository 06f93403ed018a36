"""The admin API's frames: JSON objects, one per line, over the Unix socket `admin.sock`.

Every request is `{"id": N, "op": "...", ...}`; every answer echoes its id, as
`{"id": N, "data": {...}}` or `{"id": N, "error": {"code": "...", "message": "..."}}`. Every op
but `login` carries the session `token` that `login` returned (a per-request token, so a
one-shot `herald admin ...` command and a long-lived console speak the same way). docs/admin-
protocol.md lists every frame with an example.

Why lines and not WebSocket frames: the socket is local, so there is no HTTP upgrade to ride,
no proxy to cross and no browser to serve, and a line of JSON is what `socat` and a script can
speak. msgspec's JSON never writes a raw newline (one inside a string is escaped), so a newline
ends exactly one frame. `FrameLines` bounds a line at `MAX_ADMIN_FRAME_BYTES`.

Pure data and codecs: no I/O. Imports nothing of ours.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "MAX_ADMIN_FRAME_BYTES",
    "AdminError",
    "AdminFrameError",
    "AdminLoginData",
    "AdminLoginRequest",
    "AdminRefusal",
    "AdminReply",
    "AdminRequest",
    "AdminStatusData",
    "AdminStatusRequest",
    "AdminTenant",
    "AdminTenantsData",
    "AdminTenantsRequest",
    "AdminUser",
    "AdminUsersData",
    "AdminUsersRequest",
    "FrameLines",
    "decode_admin_reply",
    "decode_admin_request",
    "encode_admin_frame",
]

MAX_ADMIN_FRAME_BYTES = 1 << 20
# Refusals carry the codes of appliance/protocol/codes.py, as the gateway's do: `bad_frame`
# for a line that is no frame, `unauthenticated` for any bad token (the same as the gateway's),
# `forbidden` for an op the admin's role may not do, and the engine's own (not_found, ...).


class AdminFrameError(Exception):
    """A frame that is not JSON, not an object of a known op, or longer than the limit."""

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


# -- requests --------------------------------------------------------------------------------


class _AdminRequest(msgspec.Struct, tag_field="op", frozen=True, kw_only=True):
    id: int


class AdminLoginRequest(_AdminRequest, tag="login", frozen=True, kw_only=True):
    login: str
    password: str


class AdminStatusRequest(_AdminRequest, tag="status", frozen=True, kw_only=True):
    token: str


class AdminTenantsRequest(_AdminRequest, tag="tenants", frozen=True, kw_only=True):
    token: str


class AdminUsersRequest(_AdminRequest, tag="users", frozen=True, kw_only=True):
    token: str
    tenant: str  # the tenant's name


AdminRequest = AdminLoginRequest | AdminStatusRequest | AdminTenantsRequest | AdminUsersRequest


# -- answers ---------------------------------------------------------------------------------


class AdminLoginData(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    expires_ms: int
    admin: int
    role: str  # "operator" or "security_officer"


class AdminStatusData(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    store_format: int
    protocol: int
    uptime_s: float
    connections: int
    online_users: int
    tenants: int
    store_used_bytes: int
    store_map_bytes: int


class AdminTenant(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    name: str
    created_ms: int


class AdminTenantsData(msgspec.Struct, frozen=True, kw_only=True):
    tenants: list[AdminTenant]


class AdminUser(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    login: str
    display_name: str
    disabled: bool


class AdminUsersData(msgspec.Struct, frozen=True, kw_only=True):
    tenant: int
    users: list[AdminUser]


class AdminError(msgspec.Struct, frozen=True):
    code: str
    message: str


class AdminReply(msgspec.Struct, frozen=True):
    id: int | None
    data: Any


class AdminRefusal(msgspec.Struct, frozen=True):
    id: int | None
    error: AdminError


# -- codecs ----------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(AdminRequest)


def encode_admin_frame(frame: msgspec.Struct) -> bytes:
    """One frame as one line (its newline included)."""
    return _encoder.encode(frame) + b"\n"


def decode_admin_request(line: bytes) -> AdminRequest:
    """Raises `AdminFrameError`, with the request's id when one can be read."""
    try:
        return _request_decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise AdminFrameError(f"not an admin request: {exc}", _request_id(line)) from None


def _request_id(line: bytes) -> int | None:
    try:
        found = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return None
    value = found.get("id") if isinstance(found, dict) else None
    return value if type(value) is int else None


def decode_admin_reply(line: bytes, data_type: type[Any]) -> AdminReply | AdminRefusal:
    """An answer, its `data` decoded as `data_type`. Raises `AdminFrameError`."""
    try:
        raw = msgspec.json.decode(line)
        if isinstance(raw, dict) and "error" in raw:
            return msgspec.convert(raw, AdminRefusal)
        reply = msgspec.convert(raw, AdminReply)
        return AdminReply(reply.id, msgspec.convert(reply.data, data_type))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise AdminFrameError(f"not an admin answer: {exc}") from None


class FrameLines:
    """Bytes in, whole lines out: the admin socket's framing, bounded."""

    def __init__(self, max_frame_bytes: int = MAX_ADMIN_FRAME_BYTES) -> None:
        self._max = max_frame_bytes
        self._buffer = bytearray()

    def receive_data(self, data: bytes) -> list[bytes]:
        """The lines `data` completes (without their newlines). Raises `AdminFrameError` once
        a line grows past the limit without ending."""
        self._buffer += data
        lines = []
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[:end + 1]
            if len(line) > self._max:
                raise AdminFrameError(f"a frame is at most {self._max} bytes")
            lines.append(line)
        if len(self._buffer) > self._max:
            raise AdminFrameError(f"a frame is at most {self._max} bytes")
        return lines
