"""A lean WebSocket client for the load generator: raw sockets, no trio-websocket.

What a load generator needs of RFC 6455 and no more: a fixed upgrade request, client frames
masked with the all-zero key (a valid mask that leaves the payload unchanged, so sending costs
no XOR; a browser must pick unpredictable keys, a benchmark need not), and a reader that finds
server frame boundaries from their headers. Server frames are never masked, so a header is 2
bytes (payload < 126), 4 (< 65536) or 10.

`BlockingClient` is for the scenarios that drive one or two connections from the bench's own
process (history, catch-up); the many-connection receivers live in `load_worker`.

With --tls, `ClientTls` is the client end of TLS over memory BIOs: the workers keep their
non-blocking sockets and epoll loop, and pass bytes through it on the way in and out.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from typing import Any

__all__ = [
    "OP_CLOSE",
    "OP_PING",
    "OP_TEXT",
    "BlockingClient",
    "ClientTls",
    "HandshakeFailed",
    "client_context",
    "client_frame",
    "handshake_request",
    "iter_frames",
    "pong_frame",
    "send_frame_bytes",
    "split_response_head",
]

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA
_ZERO_MASK = b"\0\0\0\0"
_head16 = struct.Struct("!BBH").pack
_head64 = struct.Struct("!BBQ").pack
_len16 = struct.Struct("!H").unpack_from
_len64 = struct.Struct("!Q").unpack_from


class HandshakeFailed(Exception):
    """The server did not answer the upgrade with 101."""


def handshake_request(host: str, port: int) -> bytes:
    """The upgrade request for /ws (a fixed key: the bench does not check Sec-WebSocket-Accept)."""
    return (
        f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def split_response_head(buf: bytes) -> tuple[bool, bytes] | None:
    """(accepted, bytes after the head) once the HTTP response head is complete, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    return buf.startswith(b"HTTP/1.1 101"), buf[end + 4 :]


def _masked(first: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((first, 0x80 | n)) + _ZERO_MASK + payload
    if n < 65536:
        return _head16(first, 0xFE, n) + _ZERO_MASK + payload
    return _head64(first, 0xFF, n) + _ZERO_MASK + payload


def client_frame(payload: bytes) -> bytes:
    """One final, masked text frame carrying `payload` (UTF-8 JSON)."""
    return _masked(0x81, payload)


def pong_frame(payload: bytes) -> bytes:
    return _masked(0x8A, payload)


def close_frame(code: int = 1000) -> bytes:
    return _masked(0x88, struct.pack("!H", code))


def send_frame_bytes(obj: dict[str, Any]) -> bytes:
    """A request object as a masked text frame."""
    return client_frame(json.dumps(obj, separators=(",", ":")).encode())


def iter_frames(buf: bytes) -> Iterator[tuple[int, int, int]]:
    """(opcode, payload start, payload end) of each complete frame at the start of `buf`.

    Stops at the first incomplete frame; the caller keeps `buf[last end:]`. Fragmented
    messages are not reassembled (Herald's server never fragments).
    """
    pos, n = 0, len(buf)
    while n - pos >= 2:
        length = buf[pos + 1] & 0x7F
        if length < 126:
            start = pos + 2
        elif length == 126:
            if n - pos < 4:
                return
            (length,) = _len16(buf, pos + 2)
            start = pos + 4
        else:
            if n - pos < 10:
                return
            (length,) = _len64(buf, pos + 2)
            start = pos + 10
        end = start + length
        if end > n:
            return
        yield buf[pos] & 0x0F, start, end
        pos = end


class ClientTls:
    """A client TLS session with no I/O: `start()` gives the ClientHello to send, `receive`
    turns bytes read into (plaintext, bytes to send), `seal` turns plaintext into bytes to send
    (held back until the handshake is done). Raises `ssl.SSLError` when TLS fails."""

    def __init__(self, context: ssl.SSLContext, host: str) -> None:
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_hostname=host)
        self.established = False
        self._early = b""

    def start(self) -> bytes:
        with contextlib.suppress(ssl.SSLWantReadError):
            self._tls.do_handshake()
        return self._out.read()

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        self._in.write(data)
        if not self.established:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                return b"", self._out.read()
            self.established = True
            if self._early:
                self._tls.write(self._early)
                self._early = b""
        chunks = []
        while True:
            try:
                chunk = self._tls.read(262144)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), self._out.read()

    def seal(self, data: bytes) -> bytes:
        if not self.established:
            self._early += data
            return b""
        self._tls.write(data)
        return self._out.read()


def client_context(ca_file: str | None) -> ssl.SSLContext:
    """Verifies the server against `ca_file` (the bench's throwaway self-signed certificate)."""
    return ssl.create_default_context(cafile=ca_file)


class BlockingClient:
    """One connection with a blocking socket: send requests, read frames in order.

    Pushes (`"type": "msg"`) that arrive while waiting for a reply are counted in `pushes`
    and otherwise dropped. Raises `HandshakeFailed`, `OSError`, or `TimeoutError`.
    """

    def __init__(self, host: str, port: int, *, timeout_s: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            self.sock = ssl_context.wrap_socket(self.sock, server_hostname=host)
        self.sock.sendall(handshake_request(host, port))
        self._buf = b""
        self._next_id = 1
        self.pushes = 0
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise HandshakeFailed("the server closed the connection during the handshake")
            self._buf += chunk
            head = split_response_head(self._buf)
            if head is not None:
                accepted, self._buf = head
                if not accepted:
                    raise HandshakeFailed(self._buf[:200].decode("latin-1"))
                return

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def send(self, obj: dict[str, Any]) -> None:
        self.sock.sendall(send_frame_bytes(obj))

    def send_raw(self, frames: bytes) -> None:
        self.sock.sendall(frames)

    def read_text(self) -> bytes:
        """The next text frame's payload (answering pings on the way)."""
        while True:
            for opcode, start, end in iter_frames(self._buf):
                payload = self._buf[start:end]
                self._buf = self._buf[end:]
                if opcode == OP_TEXT:
                    return payload
                if opcode == OP_PING:
                    self.sock.sendall(pong_frame(payload))
                elif opcode == OP_CLOSE:
                    raise ConnectionError(f"the server closed the connection: {payload!r}")
                break  # the buffer changed: restart the scan
            else:
                chunk = self.sock.recv(262144)
                if not chunk:
                    raise ConnectionError("the server closed the connection")
                self._buf += chunk

    def read_reply(self) -> dict[str, Any]:
        """The next reply or error frame, decoded; pushes before it are counted and skipped."""
        while True:
            payload = self.read_text()
            if payload[9:10] == b"m":  # {"type":"msg"...
                self.pushes += 1
                continue
            return json.loads(payload)  # type: ignore[no-any-return]

    def request(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Send `obj` (its id filled in) and return its reply; raises RuntimeError on an error."""
        obj = {**obj, "id": self.next_id()}
        self.send(obj)
        reply = self.read_reply()
        if reply.get("type") != "reply" or reply.get("id") != obj["id"]:
            raise RuntimeError(f"{obj['op']} failed: {reply}")
        return reply["data"]  # type: ignore[no-any-return]

    def resume(self, token: str) -> dict[str, Any]:
        return self.request({"op": "resume", "token": token})

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(close_frame())
        self.sock.close()


def now_ns() -> int:
    """The clock stamped into message bodies: CLOCK_MONOTONIC, shared by every process."""
    return time.monotonic_ns()
