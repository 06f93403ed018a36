"""The escrow service's wire protocol, shared by the server and the client.

Over one TLS connection, the service's greeting, then any number of request/reply exchanges;
each message is a frame: a 4-byte big-endian length, then that many bytes of msgpack.

    greeting: {"ok": true, "data": b"herald-escrow-v1"}

The greeting is read before anything is sent. It is there because with TLS 1.3 a client learns
that the service rejected its certificate only from an alert after the handshake: reading first
makes that alert arrive as the answer, rather than race with (and be lost to) a first request.

    request: {"op": "create_key"|"wrap"|"unwrap"|"revoke"|"status", "key_id": str,
              "data": bytes, "aad": bytes}            (data and aad default to empty)
    reply:   {"ok": true, "data": bytes}  or  {"ok": false, "error": CODE, "message": str}

Error codes are stable: "bad_request" (the request is malformed: fix the client), "too_large"
(the frame is over MAX_FRAME_BYTES; the connection is closed after the reply), "refused" (a
revoked or unknown key, failed authentication: do not retry), "unavailable" (the service cannot
do it now, e.g. its disk fails: retry later).
"""

from __future__ import annotations

import socket
import ssl
import struct
from typing import Literal

import msgspec

__all__ = [
    "GREETING",
    "MAX_FRAME_BYTES",
    "OPS",
    "FrameTooLarge",
    "Reply",
    "Request",
    "decode_reply",
    "decode_request",
    "encode",
    "read_frame",
    "write_frame",
]

MAX_FRAME_BYTES = 64 * 1024
GREETING = b"herald-escrow-v1"
OPS = ("create_key", "wrap", "unwrap", "revoke", "status")
Op = Literal["create_key", "wrap", "unwrap", "revoke", "status"]
_LENGTH = struct.Struct(">I")


class Request(msgspec.Struct, forbid_unknown_fields=True):
    op: Op
    key_id: str
    data: bytes = b""
    aad: bytes = b""


class Reply(msgspec.Struct, omit_defaults=True):
    ok: bool
    data: bytes = b""
    error: str = ""
    message: str = ""


class FrameTooLarge(Exception):
    """A frame announced more than MAX_FRAME_BYTES: the stream cannot be resynchronised."""


_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(Request)
_reply_decoder = msgspec.msgpack.Decoder(Reply)


def encode(message: Request | Reply) -> bytes:
    return _encoder.encode(message)


def decode_request(payload: bytes) -> Request:
    """Raises msgspec.DecodeError for anything but a valid request."""
    try:
        return _request_decoder.decode(payload)
    except UnicodeDecodeError as exc:  # msgspec lets this through for a map key's bytes
        raise msgspec.DecodeError(f"invalid UTF-8 in a string: {exc.reason}") from None


def decode_reply(payload: bytes) -> Reply:
    """Raises msgspec.DecodeError for anything but a valid reply."""
    try:
        return _reply_decoder.decode(payload)
    except UnicodeDecodeError as exc:
        raise msgspec.DecodeError(f"invalid UTF-8 in a string: {exc.reason}") from None


def _read_exactly(sock: socket.socket | ssl.SSLSocket, count: int) -> bytes | None:
    chunks, remaining = [], count
    while remaining:
        chunk = sock.recv(remaining)
        if not chunk:
            if remaining == count:
                return None
            raise ConnectionError("the peer closed the connection inside a frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket | ssl.SSLSocket) -> bytes | None:
    """The next frame's payload, or None at a clean end of stream.

    Raises FrameTooLarge, ConnectionError for a stream cut inside a frame, OSError and
    TimeoutError from the socket.
    """
    header = _read_exactly(sock, _LENGTH.size)
    if header is None:
        return None
    (length,) = _LENGTH.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise FrameTooLarge(f"a frame of {length} bytes is over the limit of {MAX_FRAME_BYTES}")
    payload = _read_exactly(sock, length)
    if payload is None:
        raise ConnectionError("the peer closed the connection inside a frame")
    return payload


def write_frame(sock: socket.socket | ssl.SSLSocket, payload: bytes) -> None:
    """Send one frame. Raises OSError."""
    sock.sendall(_LENGTH.pack(len(payload)) + payload)
