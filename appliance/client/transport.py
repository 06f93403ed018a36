"""Reaching the server: the URL, the TCP (and TLS) stream, and the WebSocket opening handshake.

The client owns its stream rather than using `open_websocket_url`, for two reasons found in
trio-websocket 0.12: after a closing handshake the server began, `open_websocket_url` waits for
the server's TCP close and never closes its own socket (a ResourceWarning); and a server that
closes the TCP connection during the opening handshake leaves the handshake waiting until its
timeout (the reader aborts, but never wakes the waiter). `handshake` watches for that end.
"""

from __future__ import annotations

import ssl
import urllib.parse
from dataclasses import dataclass

import trio
from trio_websocket import WebSocketConnection, wrap_client_stream

from appliance.client.errors import ConnectionLost

__all__ = ["Target", "handshake", "open_stream"]

MESSAGE_QUEUE_SIZE = 64  # frames trio-websocket reads ahead of the client's reader


@dataclass(frozen=True, slots=True)
class Target:
    """Where a ws:// or wss:// URL points."""

    host: str
    port: int
    resource: str
    host_header: str
    secure: bool

    @classmethod
    def parse(cls, url: str) -> Target:
        """Raises `ValueError` for anything but a ws:// or wss:// URL with a host."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"{url!r} is not a WebSocket URL (ws://HOST:PORT/ws or wss://...)")
        secure = parts.scheme == "wss"
        port = parts.port or (443 if secure else 80)
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        host_header = shown if port == (443 if secure else 80) else f"{shown}:{port}"
        return cls(host, port, resource, host_header, secure)


async def open_stream(target: Target, ssl_context: ssl.SSLContext | None) -> trio.abc.Stream:
    """A TCP stream to `target`, with TLS (handshake done) for wss://. Without `ssl_context`,
    the system's default verification applies. Raises `OSError` when the connection fails,
    `trio.BrokenResourceError` when the TLS handshake does (e.g. an unverifiable certificate).
    """
    tcp = await trio.open_tcp_stream(target.host, target.port)
    if not target.secure:
        return tcp
    context = ssl_context or ssl.create_default_context()
    tls = trio.SSLStream(tcp, context, server_hostname=target.host, https_compatible=True)
    try:
        await tls.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return tls


class _EndWatch(trio.abc.Stream):
    """`stream`, calling `on_end` when a read finds it ended (EOF, reset or closed)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self.on_end: trio.CancelScope | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._ended()
            raise
        if not data:
            self._ended()
        return data

    def _ended(self) -> None:
        if self.on_end is not None:
            self.on_end.cancel()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def handshake(
    nursery: trio.Nursery, stream: trio.abc.Stream, target: Target, *, max_message_bytes: int
) -> WebSocketConnection:
    """The WebSocket opening handshake over `stream`; the connection's reader task runs in
    `nursery`. Raises `trio_websocket.HandshakeError` (e.g. `ConnectionRejected`) when the
    server refuses, `ConnectionLost` when it closes the connection first. Bound it with a
    cancel scope: a server may never answer."""
    watched = _EndWatch(stream)
    with trio.CancelScope() as ended:
        watched.on_end = ended
        ws = await wrap_client_stream(
            nursery, watched, target.host_header, target.resource,  # type: ignore[arg-type]
            message_queue_size=MESSAGE_QUEUE_SIZE, max_message_size=max_message_bytes,
        )
        watched.on_end = None
        return ws
    raise ConnectionLost("the server closed the connection during the WebSocket handshake")
