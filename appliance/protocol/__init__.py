"""Herald's wire protocol, sans-IO: codecs and per-connection state machines.

This package does no I/O: no sockets, no Trio, no threads, no clock. It takes bytes and
returns events and bytes, every buffer bounded by a constructor argument. It imports nothing
of ours outside `appliance.protocol`, and both sides of the wire import it: the gateway, the
client library and `herald chat`; the admin API and `herald admin` (`admin_frames.py`).
"""

from __future__ import annotations

from appliance.protocol.version import PROTOCOL_VERSION
from appliance.protocol.websocket import (
    MAX_HANDSHAKE_BYTES,
    MAX_MESSAGE_BYTES,
    CloseCode,
    CloseReceived,
    ConnectionEnded,
    HandshakeRequested,
    LocalProtocolError,
    PingReceived,
    PongReceived,
    RemoteProtocolError,
    TextReceived,
    WebSocketEvent,
    WebSocketServer,
    WebSocketState,
    encode_close_frame,
    encode_ping_frame,
    encode_text_frame,
)

__all__ = [
    "MAX_HANDSHAKE_BYTES",
    "MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "CloseCode",
    "CloseReceived",
    "ConnectionEnded",
    "HandshakeRequested",
    "LocalProtocolError",
    "PingReceived",
    "PongReceived",
    "RemoteProtocolError",
    "TextReceived",
    "WebSocketEvent",
    "WebSocketServer",
    "WebSocketState",
    "encode_close_frame",
    "encode_ping_frame",
    "encode_text_frame",
]
