"""A TCP relay between clients and a real server, for tests that need the network to misbehave.

`open_tap(upstream_port)` listens on 127.0.0.1 and relays every connection to the server. While
it relays, a test can drop chosen server-to-client WebSocket frames (`drop`), swallow whatever
the server sends from now on (`swallow`: the server believes it was sent, the client never sees
it), cut every connection (`cut`), or refuse new connections (`upstream_port = None`: a server
that has gone away). It is a complete relay over real sockets, not a stand-in for the server.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

OP_TEXT = 0x1
READ_BYTES = 65536


class _Link:
    def __init__(self, client: trio.SocketStream, server: trio.SocketStream) -> None:
        self.client = client
        self.server = server
        self.scope = trio.CancelScope()
        self.swallow = False


class WireTap:
    def __init__(self, upstream_port: int | None) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.accepted = 0
        self.drop: Callable[[dict[str, Any]], bool] | None = None
        self.dropped: list[dict[str, Any]] = []
        self._links: set[_Link] = set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def swallow(self) -> None:
        """From now on, discard everything the server sends on the current connections."""
        for link in self._links:
            link.swallow = True

    def cut(self) -> None:
        """Close every current connection at once, both ways (no WebSocket close)."""
        for link in self._links:
            link.scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._relay, listeners)
            task_status.started(self.port)

    async def _relay(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        port = self.upstream_port
        if port is None:
            await client.aclose()
            return
        try:
            server = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            await client.aclose()
            return
        link = _Link(client, server)
        self._links.add(link)
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._upstream, link, nursery.cancel_scope)
                    nursery.start_soon(self._downstream, link, nursery.cancel_scope)
        finally:
            self._links.discard(link)
            await trio.aclose_forcefully(client)
            await trio.aclose_forcefully(server)

    async def _upstream(self, link: _Link, done: trio.CancelScope) -> None:
        try:
            while data := await link.client.receive_some(READ_BYTES):
                await link.server.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()

    async def _downstream(self, link: _Link, done: trio.CancelScope) -> None:
        buffer = bytearray()
        in_handshake = True
        try:
            while data := await link.server.receive_some(READ_BYTES):
                if link.swallow:
                    continue
                buffer += data
                if in_handshake:
                    end = buffer.find(b"\r\n\r\n")
                    if end < 0:
                        continue
                    await link.client.send_all(bytes(buffer[: end + 4]))
                    del buffer[: end + 4]
                    in_handshake = False
                out = bytearray()
                while (frame := _take_frame(buffer)) is not None:
                    raw, opcode, payload = frame
                    if opcode == OP_TEXT and self.drop is not None:
                        decoded = json.loads(payload)
                        if self.drop(decoded):
                            self.dropped.append(decoded)
                            continue
                    out += raw
                if out:
                    await link.client.send_all(bytes(out))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()


def _take_frame(buffer: bytearray) -> tuple[bytes, int, bytes] | None:
    """Remove one whole server frame from `buffer`: (its bytes, opcode, payload)."""
    if len(buffer) < 2:
        return None
    length, offset = buffer[1] & 0x7F, 2
    if length == 126:
        if len(buffer) < 4:
            return None
        (length,) = struct.unpack_from("!H", buffer, 2)
        offset = 4
    elif length == 127:
        if len(buffer) < 10:
            return None
        (length,) = struct.unpack_from("!Q", buffer, 2)
        offset = 10
    if len(buffer) < offset + length:
        return None
    raw = bytes(buffer[: offset + length])
    del buffer[: offset + length]
    return raw, raw[0] & 0x0F, raw[offset:]


@asynccontextmanager
async def open_tap(upstream_port: int | None) -> AsyncIterator[WireTap]:
    tap = WireTap(upstream_port)
    async with trio.open_nursery() as nursery:
        await nursery.start(tap.run)
        yield tap
        nursery.cancel_scope.cancel()
