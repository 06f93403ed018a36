"""Test clients for a real server on 127.0.0.1: a JSON client over trio-websocket, and a raw
WebSocket client over a bare Trio socket for bytes a WebSocket library refuses to send (binary
garbage, bad UTF-8, unmasked frames) and for peers that misbehave (never read, never pong).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from conftest import PASSWORD
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA


# -- JSON over trio-websocket ------------------------------------------------------------------


@asynccontextmanager
async def open_ws(
    port: int, path: str = "/ws", *, local_address: str | None = None,
) -> AsyncIterator[WebSocketConnection]:
    """A trio-websocket client whose TCP stream this helper owns and always closes.

    `open_websocket_url` leaks its socket when the server closes first: after the closing
    handshake the client waits for the server's TCP close, as RFC 6455 says, and then never
    closes its own end (a ResourceWarning, an error here). `local_address` (e.g. 127.0.0.2,
    any of 127/8 on Linux) makes the client come from another address.
    """
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=local_address)
    async with stream, trio.open_nursery() as nursery:
        ws = await wrap_client_stream(nursery, stream, "127.0.0.1", path)
        try:
            yield ws
        finally:
            await ws.aclose()


async def send_json(ws: WebSocketConnection, frame: dict[str, Any]) -> None:
    await ws.send_message(json.dumps(frame))


async def receive_json(ws: WebSocketConnection) -> dict[str, Any]:
    message = await ws.get_message()
    assert isinstance(message, str), f"the server sent a binary message: {message!r}"
    frame = json.loads(message)
    assert isinstance(frame, dict), frame
    return frame


async def request(ws: WebSocketConnection, frame: dict[str, Any]) -> dict[str, Any]:
    """Send `frame` and return the next frame (for a client no push can reach)."""
    await send_json(ws, frame)
    return await receive_json(ws)


async def only_conversation(ws: WebSocketConnection, request_id: int = 2) -> int:
    """The id of the one conversation the logged-in user of `ws` is in (`convs`)."""
    convs = await request(ws, {"op": "convs", "id": request_id})
    (conv,) = [c["conv"] for c in convs["data"]["convs"]]
    return int(conv)


async def login(
    ws: WebSocketConnection, tenant: str, login_name: str, password: str = PASSWORD,
    request_id: int = 1,
) -> dict[str, Any]:
    """Log in and return the reply's data; fails the test unless the login succeeded."""
    reply = await request(ws, {"op": "login", "id": request_id, "tenant": tenant,
                               "login": login_name, "password": password})
    assert reply["type"] == "reply" and reply["id"] == request_id, reply
    data: dict[str, Any] = reply["data"]
    return data


async def resume(ws: WebSocketConnection, token: str, request_id: int = 1) -> dict[str, Any]:
    return await request(ws, {"op": "resume", "id": request_id, "token": token})


async def expect_bye(ws: WebSocketConnection, code: str) -> None:
    """The next frame is a `bye` with `code`, then the connection closes with 1008."""
    bye = await receive_json(ws)
    assert bye["type"] == "bye" and bye["code"] == code and bye["message"], bye
    with pytest.raises(ConnectionClosed) as closed:
        await ws.get_message()
    assert closed.value.reason.code == 1008


async def expect_alive(ws: WebSocketConnection, request_id: int = 99) -> None:
    assert await request(ws, {"op": "ping", "id": request_id}) == {
        "type": "reply", "id": request_id, "data": {}}


# -- a raw WebSocket client --------------------------------------------------------------------

UPGRADE_REQUEST = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True) -> bytes:
    """One client-to-server frame, masked as RFC 6455 requires unless `masked` is False."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        header = bytes((first, mask_bit | n))
    elif n < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawClient:
    """A WebSocket client with no protocol logic: it sends exactly the bytes it is given and
    reports exactly the frames it reads, including pings (it never answers them itself)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    @classmethod
    async def connect(
        cls, port: int, *, path: str = "/ws", receive_buffer_bytes: int | None = None
    ) -> RawClient:
        """Connect and complete the upgrade (asserting 101). `receive_buffer_bytes` shrinks the
        socket's kernel receive buffer, set before connecting so the TCP window follows it."""
        sock = trio.socket.socket()
        if receive_buffer_bytes is not None:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, receive_buffer_bytes)
        await sock.connect(("127.0.0.1", port))
        client = cls(trio.SocketStream(sock))
        await client.stream.send_all(UPGRADE_REQUEST.format(path=path, port=port).encode())
        head = await client._read_head()
        assert head.startswith(b"HTTP/1.1 101 "), head
        return client

    async def _read_head(self) -> bytes:
        while b"\r\n\r\n" not in self._buffer:
            data = await self.stream.receive_some(65536)
            assert data, f"EOF during the handshake after {bytes(self._buffer)!r}"
            self._buffer += data
        end = self._buffer.index(b"\r\n\r\n") + 4
        head = bytes(self._buffer[:end])
        del self._buffer[:end]
        return head

    async def send_frame(self, opcode: int, payload: bytes, **options: bool) -> None:
        await self.stream.send_all(client_frame(opcode, payload, **options))

    async def send_json(self, frame: dict[str, Any]) -> None:
        await self.send_frame(OP_TEXT, json.dumps(frame).encode())

    async def receive_frame(self) -> tuple[int, bytes] | None:
        """The next frame as (opcode, payload); None when the server ended the TCP connection
        (EOF or reset)."""
        while True:
            frame = self._parse()
            if frame is not None:
                return frame
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:  # connection reset
                return None
            if not data:
                return None
            self._buffer += data

    def _parse(self) -> tuple[int, bytes] | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        assert not buf[1] & 0x80, "the server masked a frame"
        length, offset = buf[1] & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return None
            (length,) = struct.unpack_from("!H", buf, 2)
            offset = 4
        elif length == 127:
            if len(buf) < 10:
                return None
            (length,) = struct.unpack_from("!Q", buf, 2)
            offset = 10
        if len(buf) < offset + length:
            return None
        opcode, payload = buf[0] & 0x0F, bytes(buf[offset : offset + length])
        del buf[: offset + length]
        return opcode, payload

    async def receive_json(self) -> dict[str, Any]:
        """The next text frame, decoded; fails the test on anything else."""
        frame = await self.receive_frame()
        assert frame is not None and frame[0] == OP_TEXT, frame
        decoded: dict[str, Any] = json.loads(frame[1])
        return decoded

    async def aclose(self) -> None:
        await self.stream.aclose()


def close_code(payload: bytes) -> int:
    """The status code of a close frame's payload (1005 when it has none)."""
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


async def http_exchange(port: int, request_bytes: bytes) -> bytes:
    """Send raw bytes to the server and return everything it answers until it closes (for a
    TLS port: whatever it answers to bytes that are not a handshake)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request_bytes)
        response = bytearray()
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            response += data
        return bytes(response)
