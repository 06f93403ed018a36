"""Server side of RFC 6455, sans-IO: bytes in, events out, bytes to write returned.

One `WebSocketServer` per TCP connection. wsproto does the real work (the HTTP upgrade through
h11, frame parsing, unmasking, fragmentation, UTF-8); this module adds what Herald needs: bounded
buffers, JSON text messages only, one exception for whatever the peer does wrong, and
module-level encoders so that fanout encodes a frame once for all its recipients.

States change only through `_TRANSITIONS`. A `RemoteProtocolError` leaves the state where it
found it, so that `reject()` or `close()` can still produce the answer, but ends all input:
later bytes are discarded and `events()` raises the same error again.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, TypeAlias

import wsproto.utilities
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection as _WsprotoFrames
from wsproto.connection import ConnectionState as _WsprotoState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

__all__ = [
    "MAX_HANDSHAKE_BYTES", "MAX_MESSAGE_BYTES", "CloseCode", "CloseReceived", "ConnectionEnded",
    "HandshakeRequested", "LocalProtocolError", "PingReceived", "PongReceived",
    "RemoteProtocolError", "TextReceived", "WebSocketEvent", "WebSocketServer", "WebSocketState",
    "encode_close_frame", "encode_ping_frame", "encode_text_frame",
]

MAX_MESSAGE_BYTES = 64 * 1024
MAX_HANDSHAKE_BYTES = 16 * 1024
_TLS_HANDSHAKE_RECORD = b"\x16"  # the first byte of a TLS ClientHello; never of a request line


class CloseCode(enum.IntEnum):
    """The close codes Herald uses (RFC 6455 section 7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003  # a binary message: Herald speaks JSON text frames only
    NO_STATUS = 1005  # what a close frame without a body reads as; never on the wire
    INVALID_PAYLOAD = 1007  # text that is not UTF-8
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


class RemoteProtocolError(Exception):
    """The peer broke the protocol; the connection is over.

    If `http_status` is set, the failure came before the upgrade: answer with
    `reject(exc.http_status, str(exc))`. Otherwise answer with `close(exc.close_code)`.
    (`close_code` is always set; handshake failures carry 1002, unused.)
    """

    def __init__(self, message: str, close_code: int, http_status: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.http_status = http_status


class LocalProtocolError(Exception):
    """This side asked for something its state does not allow: a bug in the caller."""


def _refusal(message: str, http_status: int) -> RemoteProtocolError:
    return RemoteProtocolError(message, CloseCode.PROTOCOL_ERROR, http_status)


# Events. Each says what answers it; nothing is ever sent on the caller's behalf.


@dataclass(frozen=True, slots=True)
class HandshakeRequested:
    """A well-formed upgrade request: answer with `accept()` or `reject()`.

    `path` is the request target, query string included. `headers` have lower-case names,
    except Host, Sec-WebSocket-Protocol and Sec-WebSocket-Extensions (which wsproto consumes).
    """

    path: str
    host: str
    headers: tuple[tuple[bytes, bytes], ...]
    subprotocols: tuple[str, ...]
    origin: str | None


@dataclass(frozen=True, slots=True)
class TextReceived:
    text: str  # a whole message: reassembled, valid UTF-8, within max_message_bytes


@dataclass(frozen=True, slots=True)
class PingReceived:
    payload: bytes  # answer with pong(payload)


@dataclass(frozen=True, slots=True)
class PongReceived:
    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    code: int  # 1005 if the frame had no body; answer with close(), which may echo it
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionEnded:
    """EOF: the peer closed the TCP connection; close the socket."""


WebSocketEvent: TypeAlias = (HandshakeRequested | TextReceived | PingReceived | PongReceived
                              | CloseReceived | ConnectionEnded)


class WebSocketState(enum.Enum):
    AWAITING_REQUEST = "awaiting request"  # reading the HTTP upgrade request
    REQUEST_RECEIVED = "request received"  # HandshakeRequested emitted: accept() or reject()
    OPEN = "open"
    LOCAL_CLOSING = "local closing"  # our close sent; peer data dropped (limits hold) till its own
    REMOTE_CLOSING = "remote closing"  # the peer's close arrived; close() answers it
    CLOSED = "closed"  # closes exchanged, request rejected, or EOF: close the socket


_Trigger = Literal["request", "accept", "reject", "close_sent", "close_received", "eof"]
_S = WebSocketState
# Rule 1: the state changes only through this table. A pair missing from it is the caller's
# mistake (LocalProtocolError); remote triggers fire only in states that read input.
_TRANSITIONS: dict[tuple[WebSocketState, _Trigger], WebSocketState] = {
    (_S.AWAITING_REQUEST, "request"): _S.REQUEST_RECEIVED,
    (_S.AWAITING_REQUEST, "reject"): _S.CLOSED,
    (_S.REQUEST_RECEIVED, "reject"): _S.CLOSED,
    (_S.REQUEST_RECEIVED, "accept"): _S.OPEN,
    (_S.OPEN, "close_sent"): _S.LOCAL_CLOSING,
    (_S.OPEN, "close_received"): _S.REMOTE_CLOSING,
    (_S.LOCAL_CLOSING, "close_received"): _S.CLOSED,
    (_S.REMOTE_CLOSING, "close_sent"): _S.CLOSED,
    **{(state, "eof"): _S.CLOSED for state in _S},
}

# --- Server frames: never masked, so one encoding serves every recipient. -------------------

_FIN_TEXT, _FIN_CLOSE, _FIN_PING, _FIN_PONG = 0x81, 0x88, 0x89, 0x8A
_TEXT_HEADERS = tuple(bytes((_FIN_TEXT, n)) for n in range(126))
_pack_header16 = struct.Struct("!BBH").pack
_pack_header64 = struct.Struct("!BBQ").pack
_MAX_CONTROL_PAYLOAD = 125
# Codes a wsproto peer accepts: 1004, 1006, 1015 are reserved, and it refuses 1014 and the
# unassigned codes below 3000.
_SENDABLE_CLOSE_CODES = frozenset((*range(1000, 1004), *range(1007, 1014), *range(3000, 5000)))


def encode_text_frame(payload: bytes) -> bytes:
    """Return one unmasked, final text frame carrying `payload`; raises nothing.

    Fanout's hot path: encode once, write the same bytes to every recipient. `payload` must
    be UTF-8 already (the JSON encoder's output); it is not checked.
    """
    n = len(payload)
    if n < 126:
        return _TEXT_HEADERS[n] + payload
    if n < 65536:
        return _pack_header16(_FIN_TEXT, 126, n) + payload
    return _pack_header64(_FIN_TEXT, 127, n) + payload


def _encode_control_frame(first_byte: int, payload: bytes) -> bytes:
    if len(payload) > _MAX_CONTROL_PAYLOAD:
        raise ValueError(f"control frame payload of {len(payload)} bytes; at most 125 allowed")
    return bytes((first_byte, len(payload))) + payload


def encode_ping_frame(payload: bytes = b"") -> bytes:
    """Return an unmasked ping frame. Raises ValueError if `payload` exceeds 125 bytes."""
    return _encode_control_frame(_FIN_PING, payload)


def encode_close_frame(code: int = CloseCode.NORMAL, reason: str = "") -> bytes:
    """Return an unmasked close frame; `reason` is cut on a character boundary to 123 bytes.

    Code 1005 gives a close frame without a body, so echoing a peer's code is always safe.
    Raises ValueError for a code that may not be sent (1004, 1006, 1014, 1015, unassigned codes
    below 3000, anything outside 1000-4999) or for 1005 with a reason.
    """
    if code == CloseCode.NO_STATUS:
        if reason:
            raise ValueError("a close frame without a status code cannot carry a reason")
        return _encode_control_frame(_FIN_CLOSE, b"")
    if code not in _SENDABLE_CLOSE_CODES:
        raise ValueError(f"close code {code} may not be sent")
    cut = reason.encode()[: _MAX_CONTROL_PAYLOAD - 2].decode(errors="ignore").encode()
    return _encode_control_frame(_FIN_CLOSE, code.to_bytes(2, "big") + cut)


@contextmanager
def _translated_wsproto_errors() -> Iterator[None]:
    """The one place where wsproto's (and, through it, h11's) exceptions become ours."""
    try:
        yield
    except wsproto.utilities.RemoteProtocolError as exc:
        hint = exc.event_hint
        status = hint.status_code if isinstance(hint, RejectConnection) else 400
        raise _refusal(str(exc), status) from exc
    except UnicodeError as exc:  # wsproto decodes Host (IDNA) and some headers (ASCII) unguarded
        raise _refusal(f"undecodable header: {exc}", 400) from exc
    except wsproto.utilities.LocalProtocolError as exc:
        raise LocalProtocolError(str(exc)) from exc


_HEAD_END = re.compile(b"\n\r?\n")  # h11's own end-of-head rule: both agree where it ends
_MAX_HEADER_BYTES = 14  # 2 + 8 (64-bit length) + 4 (mask)
_unpack_len16 = struct.Struct("!H").unpack_from
_unpack_len64 = struct.Struct("!Q").unpack_from


class _SizeGate:
    """Reads frame headers just ahead of wsproto, to refuse oversized messages early.

    wsproto has no size limit: it hands out a data frame's payload piecemeal as it arrives,
    and its events do not say how long the frame is. The gate sees each announced length, so
    a frame claiming 2**40 bytes is refused before one payload byte is buffered, and so is the
    fragment that would take its message over the limit. It also stops after the peer's close
    frame. Validation stays wsproto's: the gate finds frame boundaries, holding at most one
    incomplete header (< 14 bytes).
    """

    __slots__ = ("_close_seen", "_head", "_in_message", "_limit", "_message_bytes",
                 "_payload_left")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._head = b""  # the start of a header split across receive_data() calls
        self._payload_left = 0  # payload bytes of the current frame not yet seen
        self._message_bytes = 0  # announced payload bytes of the current message so far
        self._in_message = False  # a fragmented message awaits continuations
        self._close_seen = False

    def scan(self, data: bytes) -> tuple[int, RemoteProtocolError | None]:
        """Return how many leading bytes of `data` may go to the parser, and the error that
        refuses the rest, if any (fewer bytes and no error: the peer's close came first)."""
        pos, end = 0, len(data)
        while True:
            if self._payload_left:
                if pos == end:
                    return end, None
                step = min(self._payload_left, end - pos)
                self._payload_left -= step
                pos += step
                continue
            if self._close_seen:
                return pos, None
            if pos == end:
                return end, None
            start = pos - len(self._head)  # negative if the header began in an earlier chunk
            buf = self._head + data[pos : pos + _MAX_HEADER_BYTES]
            short = buf[1] & 0x7F if len(buf) > 1 else 0
            size = 2 + (2 if short == 126 else 8 if short == 127 else 0) + (
                4 if len(buf) > 1 and buf[1] & 0x80 else 0)
            if len(buf) < size:
                self._head = buf  # all that is left of `data`: shorter than a header
                return end, None
            pos += size - len(self._head)
            self._head = b""
            opcode = buf[0] & 0x0F
            length = (short if short < 126 else _unpack_len16(buf, 2)[0] if short == 126
                      else _unpack_len64(buf, 2)[0])
            self._payload_left = length
            if opcode == 0x8:
                self._close_seen = True
            elif not opcode & 0x8:  # a data frame; a stray continuation is wsproto's to refuse
                continues = opcode == 0x0 and self._in_message
                self._message_bytes = self._message_bytes + length if continues else length
                self._in_message = not buf[0] & 0x80
                if self._message_bytes > self._limit:
                    return max(start, 0), RemoteProtocolError(
                        f"message of {self._message_bytes} bytes or more; the limit is "
                        f"{self._limit}", CloseCode.MESSAGE_TOO_BIG)


class WebSocketServer:
    """The server end of one WebSocket connection, with no I/O of its own.

    Feed it what the socket reads (`receive_data`), act on `events()`, and write what `accept`,
    `reject`, `pong` and `close` return. It holds at most its limits' worth of bytes plus what
    was fed since `events()` was last drained.
    """

    def __init__(self, *, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 max_handshake_bytes: int = MAX_HANDSHAKE_BYTES,
                 allowed_path: str | None = None) -> None:
        """`max_handshake_bytes` bounds the request head, and separately what the client sends
        before `accept()`. `allowed_path` (e.g. "/ws"), if given, is the only path served.

        Raises ValueError for a limit below 1 or an `allowed_path` not starting with "/".
        """
        if max_message_bytes < 1 or max_handshake_bytes < 1:
            raise ValueError("limits must be at least 1 byte")
        if allowed_path is not None and not allowed_path.startswith("/"):
            raise ValueError(f"allowed_path must start with '/', not {allowed_path!r}")
        self._max_handshake_bytes = max_handshake_bytes
        self._allowed_path = allowed_path
        # The handshake (h11 and its buffers) is dropped once accepted: an idle connection
        # then keeps only wsproto's frame parser (docs/benchmarks.md, idle memory).
        self._handshake: WSConnection | None = WSConnection(ConnectionType.SERVER)
        self._frames: _WsprotoFrames | None = None
        self._gate = _SizeGate(max_message_bytes)
        self._state = WebSocketState.AWAITING_REQUEST
        self._events: list[WebSocketEvent] = []  # an empty list is 56 bytes, a deque 760
        self._error: RemoteProtocolError | None = None
        self._eof = False
        self._handshake_buffer = bytearray()  # the request head, then bytes sent before accept()
        # Reassembly as UTF-8, not a list of str: a str costs ~50 bytes, so a peer sending
        # 1-byte fragments would otherwise cost us 50 times its message.
        self._fragments = bytearray()

    @property
    def state(self) -> WebSocketState:
        return self._state

    def _move(self, trigger: _Trigger) -> None:
        try:
            self._state = _TRANSITIONS[self._state, trigger]
        except KeyError:
            raise LocalProtocolError(f"cannot {trigger} in state {self._state.name}") from None

    def _may_send(self, what: str) -> bool:
        if self._state in (WebSocketState.AWAITING_REQUEST, WebSocketState.REQUEST_RECEIVED):
            raise LocalProtocolError(f"cannot {what} before accept()")
        return self._state in (WebSocketState.OPEN, WebSocketState.REMOTE_CLOSING)

    def _fail(self, error: RemoteProtocolError) -> None:
        self._error = error
        self._handshake_buffer, self._fragments = bytearray(), bytearray()

    def receive_data(self, data: bytes | None) -> None:
        """Feed what the socket read; `None` is EOF, `b""` is nothing.

        The peer's mistakes are not raised here but by `events()`, in stream order.
        Raises LocalProtocolError if called again after EOF.
        """
        if self._eof:
            raise LocalProtocolError("receive_data() after EOF")
        if data is None:
            self._eof = True
            if self._error is None:
                self._events.append(ConnectionEnded())
            self._move("eof")
        elif self._error is not None or not data:
            pass
        elif self._state is WebSocketState.AWAITING_REQUEST:
            self._receive_request(data)
        elif self._state is WebSocketState.REQUEST_RECEIVED:
            self._receive_early(data)
        elif self._state in (WebSocketState.OPEN, WebSocketState.LOCAL_CLOSING):
            self._receive_frames(data)
        # REMOTE_CLOSING, CLOSED: the peer's close was its last word; what follows is dropped.

    def events(self) -> Iterator[WebSocketEvent]:
        """Yield the events produced by the data fed so far, oldest first.

        Raises RemoteProtocolError, after the events that came before the fault, if the peer
        broke the protocol; every later call raises it again.
        """
        queue = self._events
        taken = 0
        try:
            while taken < len(queue):  # the consumer's calls (accept()) may append meanwhile
                taken += 1
                yield queue[taken - 1]
        finally:
            del queue[:taken]
        if self._error is not None:
            raise self._error.with_traceback(None)

    def _handshaking(self) -> WSConnection:
        if self._handshake is None:
            raise LocalProtocolError("the handshake is over")
        return self._handshake

    def _receive_request(self, data: bytes) -> None:
        buffer = self._handshake_buffer
        if not buffer and data[:1] == _TLS_HANDSHAKE_RECORD:
            # A wss:// client at a ws:// listener: its ClientHello has no blank line to wait
            # for, so say so at once (the client's TLS then fails on the answer, not a timeout).
            self._fail(_refusal("a TLS handshake at a plain ws:// listener: connect with "
                                "ws://, or give the server a certificate for wss://", 400))
            return
        search_from = max(len(buffer) - 2, 0)  # the blank line may straddle two chunks
        buffer += data
        match = _HEAD_END.search(buffer, search_from)
        if (match.end() if match else len(buffer)) > self._max_handshake_bytes:
            self._fail(_refusal(f"request over {self._max_handshake_bytes} bytes", 431))
            return
        if match is None:
            return
        head, self._handshake_buffer = bytes(buffer[: match.end()]), bytearray()
        try:
            with _translated_wsproto_errors():
                self._handshaking().receive_data(head)
                requests = [event for event in self._handshaking().events()
                            if isinstance(event, Request)]
            self._events.append(self._check_request(requests))
        except RemoteProtocolError as exc:
            self._fail(exc)
            return
        self._move("request")
        self._receive_early(bytes(buffer[match.end() :]))

    def _receive_early(self, data: bytes) -> None:
        # The client did not wait for our 101. Keep its frames for accept(), within bounds.
        self._handshake_buffer += data
        if len(self._handshake_buffer) > self._max_handshake_bytes:
            self._fail(_refusal("too much data before the handshake completed", 400))

    def _check_request(self, requests: list[Request]) -> HandshakeRequested:
        if len(requests) != 1:  # h11 makes one Request of a complete head, or raises
            raise _refusal("incomplete upgrade request", 400)
        request, headers = requests[0], tuple(requests[0].extra_headers)
        for name, value in headers:
            if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
                raise _refusal("an upgrade request has no body", 400)
        path = request.target.partition("?")[0]
        if self._allowed_path is not None and path != self._allowed_path:
            raise _refusal(f"no WebSocket at {path}", 404)
        origin = next((v.decode("latin-1") for n, v in headers if n == b"origin"), None)
        return HandshakeRequested(path=request.target, host=request.host, headers=headers,
                                  subprotocols=tuple(request.subprotocols), origin=origin)

    def _receive_frames(self, data: bytes) -> None:
        allowed, refusal = self._gate.scan(data)
        if allowed:
            assert self._frames is not None  # OPEN or LOCAL_CLOSING: accepted
            self._frames.receive_data(data if allowed == len(data) else data[:allowed])
            self._translate_frames()
        if refusal is not None and self._error is None:
            self._fail(refusal)

    def _translate_frames(self) -> None:
        closing = self._state is WebSocketState.LOCAL_CLOSING  # data after our close is dropped
        assert self._frames is not None
        for event in self._frames.events():
            if isinstance(event, TextMessage):
                if closing:
                    pass
                elif event.message_finished and not self._fragments:
                    self._events.append(TextReceived(event.data))
                else:
                    self._fragments += event.data.encode()
                    if event.message_finished:
                        self._events.append(TextReceived(self._fragments.decode()))
                        self._fragments = bytearray()
            elif isinstance(event, BytesMessage):
                if not closing:
                    self._fail(RemoteProtocolError("binary message; Herald takes JSON text",
                                                   CloseCode.UNSUPPORTED_DATA))
                    return
            elif isinstance(event, Ping | Pong):
                if not closing:
                    kind = PingReceived if isinstance(event, Ping) else PongReceived
                    self._events.append(kind(bytes(event.payload)))
            elif isinstance(event, CloseConnection):
                # wsproto reports a malformed frame as a close event that leaves it OPEN
                # (ParseFailed.code); only the peer's real close moves it to REMOTE_CLOSING.
                if self._frames.state is _WsprotoState.OPEN:
                    self._fail(RemoteProtocolError(event.reason or "bad frame", int(event.code)))
                    return
                self._fragments = bytearray()
                self._events.append(CloseReceived(int(event.code), event.reason or ""))
                self._move("close_received")

    def accept(self, subprotocol: str | None = None) -> bytes:
        """Return the 101 response, never with extensions (permessage-deflate would defeat
        encode-once); then parse any frames the client sent early.

        Raises LocalProtocolError unless in REQUEST_RECEIVED, or if `subprotocol` was not
        offered; RemoteProtocolError if the client has already broken the protocol.
        """
        if self._error is not None:
            raise self._error.with_traceback(None)
        if self._state is not WebSocketState.REQUEST_RECEIVED:
            raise LocalProtocolError(f"cannot accept in state {self._state.name}")
        handshake = self._handshaking()
        with _translated_wsproto_errors():
            response = handshake.send(AcceptConnection(subprotocol=subprotocol))
        self._frames, self._handshake = handshake.connection, None
        self._move("accept")
        early, self._handshake_buffer = bytes(self._handshake_buffer), bytearray()
        if early:
            self._receive_frames(early)
        return response

    def reject(self, status: int, body: str) -> bytes:
        """Return an HTTP response refusing the upgrade (text/plain `body`); then close the
        socket. Also the answer to a RemoteProtocolError that carries an `http_status`.

        Raises ValueError unless 400 <= status <= 599; LocalProtocolError after accept().
        """
        if not 400 <= status <= 599:
            raise ValueError(f"a rejection needs an HTTP error status, not {status}")
        if self._state not in (WebSocketState.AWAITING_REQUEST, WebSocketState.REQUEST_RECEIVED):
            raise LocalProtocolError(f"cannot reject in state {self._state.name}")
        content = body.encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"),
                   (b"content-length", b"%d" % len(content)), (b"connection", b"close")]
        if status == 426:  # Upgrade Required: name the version we speak
            headers.append((b"sec-websocket-version", b"13"))
        with _translated_wsproto_errors():
            response = self._handshaking().send(RejectConnection(status, headers, has_body=True))
            response += self._handshaking().send(RejectData(content, body_finished=True))
        self._move("reject")
        self._handshake_buffer = bytearray()
        return response

    def pong(self, payload: bytes) -> bytes:
        """Return a pong frame; b"" once our close is sent (nothing may follow it).

        Raises ValueError if `payload` exceeds 125 bytes; LocalProtocolError before accept().
        """
        if not self._may_send("pong"):
            return b""
        return _encode_control_frame(_FIN_PONG, payload)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> bytes:
        """Return our close frame, opening the closing handshake or answering the peer's; b""
        if ours was already sent or the connection is CLOSED. See `encode_close_frame`.

        Raises ValueError for a code that may not be sent; LocalProtocolError before accept()
        (use `reject()`).
        """
        if not self._may_send("close"):
            return b""
        frame = encode_close_frame(code, reason)
        self._move("close_sent")
        self._fragments = bytearray()
        return frame
