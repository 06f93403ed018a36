"""Herald's Trio client library: what tests, benchmarks, bots and `herald chat` connect with.

`open_client(url, tenant, login, password)` yields a logged-in `HeraldClient` that reconnects
by itself and delivers every message once, in order per conversation (see `client.py`).

It speaks only the wire protocol (`appliance.protocol.frames`): it must never import the engine
or the server's modules, so that it can run in a process of its own (a test pins this). Any
client may import it (`appliance.chat`, tests, benchmarks, bots); the server never does.
"""

from __future__ import annotations

from appliance.client.client import HeraldClient, open_client
from appliance.client.errors import (
    CertificateRejected,
    ClientClosed,
    ClientError,
    ConnectionLost,
    LoginFailed,
    ProtocolViolation,
    ServerUnreachable,
)
from appliance.client.messages import Message, MessageStream, Sent
from appliance.client.options import ClientOptions, ClientStats, Reconnect
from appliance.client.status import (
    ConnectionStatus,
    Disconnected,
    Reconnected,
    ReconnectFailed,
    WaitingForKeys,
)
from appliance.client.transport import client_ssl_context

__all__ = [
    "CertificateRejected",
    "ClientClosed",
    "ClientError",
    "ClientOptions",
    "ClientStats",
    "ConnectionLost",
    "ConnectionStatus",
    "Disconnected",
    "HeraldClient",
    "LoginFailed",
    "Message",
    "MessageStream",
    "ProtocolViolation",
    "Reconnect",
    "ReconnectFailed",
    "Reconnected",
    "Sent",
    "ServerUnreachable",
    "WaitingForKeys",
    "client_ssl_context",
    "open_client",
]
