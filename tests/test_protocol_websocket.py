"""The sans-IO WebSocket server, driven by a real wsproto client over a fake wire.

Every decoding case is fed whole, byte by byte, and followed by trailing bytes (the `how`
fixture). No mocks: the peer is wsproto's own client-side state machine.
"""

from __future__ import annotations

import ast
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

import appliance.protocol
from appliance.protocol import websocket
from appliance.protocol.websocket import (
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

OPCODE_CONT, OPCODE_TEXT, OPCODE_BINARY, OPCODE_CLOSE, OPCODE_PING = 0x0, 0x1, 0x2, 0x8, 0x9
MASK_KEY = b"\x37\xfa\x21\x3d"


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, masked: bool = True,
                 length: int | None = None) -> bytes:
    """A frame as a client would send it, for the cases wsproto's client refuses to produce."""
    n = len(payload) if length is None else length
    first, mask_bit = (0x80 if fin else 0) | opcode, 0x80 if masked else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not masked:
        return head + payload
    return head + MASK_KEY + bytes(b ^ MASK_KEY[i % 4] for i, b in enumerate(payload))


# What "trailing" mode appends to every input: a complete, valid client ping.
TRAILER = client_frame(OPCODE_PING, b"trailer")


@pytest.fixture(params=["whole", "bytewise", "trailing"])
def how(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def tail(how: str) -> list[WebSocketEvent]:
    """The events TRAILER adds when the input before it left the connection readable."""
    return [PingReceived(b"trailer")] if how == "trailing" else []


def drain(server: WebSocketServer) -> tuple[list[WebSocketEvent], RemoteProtocolError | None]:
    got: list[WebSocketEvent] = []
    try:
        got.extend(server.events())
    except RemoteProtocolError as exc:
        return got, exc
    return got, None


def feed(server: WebSocketServer, data: bytes, how: str,
         ) -> tuple[list[WebSocketEvent], RemoteProtocolError | None]:
    """Feed `data` the way `how` says, draining events after every chunk, up to an error."""
    if how == "trailing":
        data += TRAILER
    chunks = [data[i : i + 1] for i in range(len(data))] if how == "bytewise" else [data]
    events: list[WebSocketEvent] = []
    for chunk in chunks:
        server.receive_data(chunk)
        got, error = drain(server)
        events += got
        if error is not None:
            return events, error
    return events, None


def state_of(server: WebSocketServer) -> WebSocketState:
    """Read through a call, so that mypy does not keep a narrowed `server.state` across calls."""
    return server.state


def to_client(client: WSConnection, data: bytes) -> list[Event]:
    client.receive_data(data)
    return list(client.events())


def opened(**limits: int) -> tuple[WebSocketServer, WSConnection]:
    """A server and a wsproto client that have completed the opening handshake."""
    server = WebSocketServer(allowed_path="/ws", **limits)
    client = WSConnection(ConnectionType.CLIENT)
    server.receive_data(client.send(Request(host="herald.test", target="/ws")))
    assert [type(e) for e in server.events()] == [HandshakeRequested]
    assert [type(e) for e in to_client(client, server.accept())] == [AcceptConnection]
    return server, client


# --- Opening handshake ------------------------------------------------------------------------


def test_handshake_is_accepted_without_extensions_even_when_deflate_is_offered(how: str) -> None:
    server, client = WebSocketServer(allowed_path="/ws"), WSConnection(ConnectionType.CLIENT)
    request = client.send(Request(
        host="herald.test", target="/ws?device=laptop", subprotocols=["herald.v1", "other"],
        extensions=[PerMessageDeflate()], extra_headers=[(b"Origin", b"https://chat.corp")]))
    assert b"permessage-deflate" in request

    events, error = feed(server, request, how)

    assert error is None
    [handshake] = events
    assert isinstance(handshake, HandshakeRequested)
    assert (handshake.path, handshake.host) == ("/ws?device=laptop", "herald.test")
    assert handshake.subprotocols == ("herald.v1", "other")
    assert handshake.origin == "https://chat.corp"
    assert (b"origin", b"https://chat.corp") in handshake.headers
    assert state_of(server) is WebSocketState.REQUEST_RECEIVED
    response = server.accept(subprotocol="herald.v1")
    assert response.startswith(b"HTTP/1.1 101 ")
    assert b"extensions" not in response.lower()
    [accepted] = to_client(client, response)
    assert isinstance(accepted, AcceptConnection)
    assert accepted.extensions == [] and accepted.subprotocol == "herald.v1"
    assert state_of(server) is WebSocketState.OPEN
    # Bytes the client sent before our 101 (the trailer) are parsed once accepted.
    assert drain(server) == (tail(how), None)


def test_handshake_to_another_path_is_refused_with_404(how: str) -> None:
    server, client = WebSocketServer(allowed_path="/ws"), WSConnection(ConnectionType.CLIENT)
    events, error = feed(server, client.send(Request(host="herald.test", target="/admin")), how)

    assert events == [] and error is not None and error.http_status == 404
    response = server.reject(error.http_status, str(error))
    rejection, *body = to_client(client, response)
    assert isinstance(rejection, RejectConnection) and rejection.status_code == 404
    assert b"".join(e.data for e in body if isinstance(e, RejectData)) == b"no WebSocket at /admin"
    assert state_of(server) is WebSocketState.CLOSED


@pytest.mark.parametrize("request_bytes", [
    b"GET /ws HTTP/1.1\r\nHost: herald.test\r\n\r\n",
    b"POST /ws HTTP/1.1\r\nHost: herald.test\r\nContent-Length: 0\r\n\r\n",
    b"HELLO THERE\r\n\r\n",
    b"\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: \xff\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Content-Length: 3\r\n\r\nabc",
], ids=["plain-get", "post", "not-http", "empty-head", "non-ascii-host", "with-body"])
def test_request_that_is_not_a_websocket_upgrade_is_refused_with_400(
        request_bytes: bytes, how: str) -> None:
    server = WebSocketServer()
    events, error = feed(server, request_bytes, how)

    assert events == [] and error is not None and error.http_status == 400
    assert server.reject(400, str(error)).startswith(b"HTTP/1.1 400 ")


def test_request_head_ending_in_bare_newlines_is_read_like_h11_reads_it() -> None:
    server = WebSocketServer()
    server.receive_data(b"GET /ws HTTP/1.1\nHost: h\nConnection: Upgrade\nUpgrade: websocket\n"
                        b"Sec-WebSocket-Key: a2V5\nSec-WebSocket-Version: 13\n\n" + TRAILER)
    [handshake] = list(server.events())
    assert isinstance(handshake, HandshakeRequested) and handshake.path == "/ws"
    assert server.accept().startswith(b"HTTP/1.1 101 ")
    assert list(server.events()) == [PingReceived(b"trailer")]


def test_wrong_websocket_version_is_refused_with_426_naming_version_13() -> None:
    server = WebSocketServer()
    server.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket"
                        b"\r\nSec-WebSocket-Key: a2V5\r\nSec-WebSocket-Version: 8\r\n\r\n")
    _, error = drain(server)
    assert error is not None and error.http_status == 426
    assert b"sec-websocket-version: 13\r\n" in server.reject(426, str(error))


def test_oversized_handshake_is_refused_with_431_as_soon_as_the_limit_is_passed(how: str) -> None:
    server, client = WebSocketServer(max_handshake_bytes=1000), WSConnection(ConnectionType.CLIENT)
    request = client.send(Request(host="h", target="/", extra_headers=[(b"x-pad", b"p" * 2000)]))

    events, error = feed(server, request, how)

    assert events == [] and error is not None and error.http_status == 431
    assert drain(server)[1] is error  # sticky; later input is discarded
    server.receive_data(b"more")
    assert server.reject(431, str(error)).startswith(b"HTTP/1.1 431 ")


def test_endless_request_head_is_refused_at_the_first_byte_over_the_limit() -> None:
    server = WebSocketServer(max_handshake_bytes=100)
    server.receive_data(b"G" * 100)
    assert drain(server) == ([], None)
    server.receive_data(b"G")
    _, error = drain(server)
    assert error is not None and error.http_status == 431


def test_a_tls_client_at_a_plain_listener_is_refused_at_its_first_byte() -> None:
    # A wss:// client sends a TLS record (type 0x16) where a request line belongs: refused at
    # once, so that it hears so instead of waiting for a blank line that never comes.
    server = WebSocketServer()
    server.receive_data(b"\x16")
    _, error = drain(server)
    assert error is not None and error.http_status == 400
    assert "TLS" in str(error) and "ws://" in str(error)


def test_early_bytes_over_the_handshake_limit_make_accept_raise() -> None:
    server, client = WebSocketServer(max_handshake_bytes=300), WSConnection(ConnectionType.CLIENT)
    server.receive_data(client.send(Request(host="h", target="/")) + TRAILER * 24)  # 312 early
    # The shell answers HandshakeRequested before the generator gets to raise the error.
    assert isinstance(next(server.events()), HandshakeRequested)
    with pytest.raises(RemoteProtocolError) as caught:
        server.accept()
    assert caught.value.http_status == 400
    assert server.reject(400, "").startswith(b"HTTP/1.1 400 ")


def test_eof_during_the_handshake_ends_the_connection() -> None:
    server = WebSocketServer()
    server.receive_data(b"GET / HTTP/1.1\r\n")
    server.receive_data(None)
    assert drain(server) == ([ConnectionEnded()], None)
    assert state_of(server) is WebSocketState.CLOSED


def test_misuse_raises_local_protocol_error() -> None:
    server = WebSocketServer()
    calls: list[Callable[[], bytes]] = [server.accept, server.close, lambda: server.pong(b"")]
    for call in calls:
        with pytest.raises(LocalProtocolError):
            call()
    client = WSConnection(ConnectionType.CLIENT)
    server.receive_data(client.send(Request(host="h", target="/", subprotocols=["a"])))
    list(server.events())
    with pytest.raises(LocalProtocolError):
        server.accept(subprotocol="not-offered")
    server.accept(subprotocol="a")
    with pytest.raises(LocalProtocolError):
        server.reject(400, "too late")
    with pytest.raises(ValueError):
        server.pong(b"x" * 126)
    server.receive_data(None)
    with pytest.raises(LocalProtocolError):
        server.receive_data(b"after eof")


def test_constructor_refuses_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        WebSocketServer(max_message_bytes=0)
    with pytest.raises(ValueError):
        WebSocketServer(allowed_path="ws")


# --- Messages, pings and closes -----------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "hello", "你好, Herald 👋", "x" * 126, "é" * 40_000])
def test_text_round_trips_in_both_directions(text: str, how: str) -> None:
    server, client = opened(max_message_bytes=100_000)
    events, error = feed(server, client.send(Message(data=text)), how)
    assert (events, error) == ([TextReceived(text), *tail(how)], None)

    [message] = to_client(client, encode_text_frame(text.encode()))
    assert isinstance(message, TextMessage) and message.data == text and message.message_finished


def test_fragmented_message_is_reassembled_around_an_interleaved_ping(how: str) -> None:
    server, _ = opened()
    euro = "€".encode()  # a character split between two fragments
    wire = (client_frame(OPCODE_TEXT, b"price: " + euro[:1], fin=False)
            + client_frame(OPCODE_PING, b"hb")
            + client_frame(OPCODE_CONT, euro[1:], fin=False)
            + client_frame(OPCODE_CONT, b"", fin=False)
            + client_frame(OPCODE_CONT, b" 5"))

    events, error = feed(server, wire, how)

    assert (events, error) == ([PingReceived(b"hb"), TextReceived("price: € 5"), *tail(how)], None)


def test_ping_is_answered_with_pong_and_pong_is_reported(how: str) -> None:
    server, client = opened()
    events, error = feed(server, client.send(Ping(payload=b"are you there")), how)
    assert (events, error) == ([PingReceived(b"are you there"), *tail(how)], None)
    [pong] = to_client(client, server.pong(b"are you there"))
    assert isinstance(pong, Pong) and pong.payload == b"are you there"

    [ping] = to_client(client, encode_ping_frame(b"heartbeat"))
    assert isinstance(ping, Ping)
    events, error = feed(server, client.send(ping.response()), how)
    assert (events, error) == ([PongReceived(b"heartbeat"), *tail(how)], None)


def test_client_initiated_close_is_answered_and_later_bytes_are_discarded(how: str) -> None:
    server, client = opened()
    events, error = feed(server, client.send(CloseConnection(code=1000, reason="bye")), how)

    assert (events, error) == ([CloseReceived(1000, "bye")], None)  # the trailer is discarded
    assert state_of(server) is WebSocketState.REMOTE_CLOSING
    [reply] = to_client(client, server.close(1000))
    assert isinstance(reply, CloseConnection) and reply.code == 1000
    assert state_of(server) is WebSocketState.CLOSED
    server.receive_data(client_frame(OPCODE_BINARY, b"junk after close"))
    assert drain(server) == ([], None)
    assert server.close() == b""


def test_server_initiated_close_ignores_peer_data_until_the_peer_closes(how: str) -> None:
    server, client = opened()
    ours = server.close(CloseCode.GOING_AWAY, "restarting")
    assert state_of(server) is WebSocketState.LOCAL_CLOSING
    assert server.close() == b"" and server.pong(b"") == b""
    crossing = client.send(Message(data="sent before our close arrived")) + client.send(
        Ping(payload=b"p")) + client_frame(OPCODE_BINARY, b"ignored too")
    [their_view] = to_client(client, ours)
    assert isinstance(their_view, CloseConnection)
    assert (their_view.code, their_view.reason) == (1001, "restarting")

    events, error = feed(server, crossing + client.send(their_view.response()), how)

    assert (events, error) == ([CloseReceived(1001, "restarting")], None)
    assert state_of(server) is WebSocketState.CLOSED


def test_bodiless_close_reads_as_1005_and_echoing_it_sends_a_bodiless_close() -> None:
    server, _ = opened()
    server.receive_data(client_frame(OPCODE_CLOSE))
    assert drain(server) == ([CloseReceived(1005, "")], None)
    assert server.close(1005) == b"\x88\x00"


def test_eof_after_the_handshake_is_reported_once() -> None:
    server, client = opened()
    server.receive_data(client.send(Message(data="half", message_finished=False)))
    server.receive_data(None)
    assert drain(server) == ([ConnectionEnded()], None)
    assert state_of(server) is WebSocketState.CLOSED and server.close() == b""


# --- Refusals ---------------------------------------------------------------------------------


def test_frame_announcing_2_pow_40_bytes_is_refused_from_its_header_alone(how: str) -> None:
    server, client = opened()
    header = client_frame(OPCODE_TEXT, length=2**40)  # header and mask key, no payload
    events, error = feed(server, client.send(Message(data="before")) + header, how)

    assert events == [TextReceived("before")]
    assert error is not None and error.close_code == CloseCode.MESSAGE_TOO_BIG
    [close] = to_client(client, server.close(error.close_code))
    assert isinstance(close, CloseConnection) and close.code == 1009


def test_oversized_frame_is_refused_at_the_last_byte_of_its_header() -> None:
    server, _ = opened()
    header = client_frame(OPCODE_TEXT, length=2**40)
    for i in range(len(header) - 1):
        server.receive_data(header[i : i + 1])
        assert drain(server) == ([], None)
    server.receive_data(header[-1:])
    _, error = drain(server)
    assert error is not None and error.close_code == CloseCode.MESSAGE_TOO_BIG


def test_fragments_whose_sum_passes_the_limit_are_refused(how: str) -> None:
    server, client = opened(max_message_bytes=100)
    wire = (client.send(Message(data="a" * 100))
            + client_frame(OPCODE_TEXT, b"b" * 60, fin=False)
            + client_frame(OPCODE_PING)
            + client_frame(OPCODE_CONT, b"c" * 41, fin=False))

    events, error = feed(server, wire, how)

    assert events == [TextReceived("a" * 100), PingReceived(b"")]
    assert error is not None and error.close_code == CloseCode.MESSAGE_TOO_BIG


def test_message_in_one_byte_fragments_costs_about_its_size_in_memory() -> None:
    server, _ = opened()
    first = client_frame(OPCODE_TEXT, b"a", fin=False)
    more = (client_frame(OPCODE_CONT, b"a", fin=False) + client_frame(OPCODE_CONT, b"", fin=False)
            ) * 100
    tracemalloc.start()
    try:
        server.receive_data(first)
        baseline = tracemalloc.get_traced_memory()[0]
        for _ in range(100):  # 10,001 bytes of text in 20,001 frames
            server.receive_data(more)
            assert list(server.events()) == []
        retained = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert retained < 2 * 10_001  # a list of 1-char str would hold 8 bytes a fragment
    server.receive_data(client_frame(OPCODE_CONT, b"!"))
    assert list(server.events()) == [TextReceived("a" * 10_001 + "!")]


@pytest.mark.parametrize(("wire", "code"), [
    (client_frame(OPCODE_TEXT, b"caf\xc3"), CloseCode.INVALID_PAYLOAD),
    (client_frame(OPCODE_TEXT, b"ok", fin=False) + client_frame(OPCODE_CONT, b"\xff"),
     CloseCode.INVALID_PAYLOAD),
    (client_frame(OPCODE_CLOSE, b"\x03\xe8\xff"), CloseCode.INVALID_PAYLOAD),
    (client_frame(OPCODE_BINARY, b"\x00\x01"), CloseCode.UNSUPPORTED_DATA),
    (client_frame(OPCODE_BINARY, b""), CloseCode.UNSUPPORTED_DATA),
    (client_frame(OPCODE_TEXT, b"plain", masked=False), CloseCode.PROTOCOL_ERROR),
    (client_frame(OPCODE_CONT, b"stray"), CloseCode.PROTOCOL_ERROR),
    (client_frame(OPCODE_PING, b"", fin=False), CloseCode.PROTOCOL_ERROR),
    (client_frame(0x3, b"reserved opcode"), CloseCode.PROTOCOL_ERROR),
    (client_frame(OPCODE_CLOSE, b"\x03\xed"), CloseCode.PROTOCOL_ERROR),  # 1005 on the wire
], ids=["utf8", "utf8-fragment", "utf8-close-reason", "binary", "empty-binary", "unmasked",
        "stray-continuation", "fragmented-ping", "reserved-opcode", "close-1005"])
def test_protocol_violation_is_refused_with_its_close_code(wire: bytes, code: int, how: str,
                                                            ) -> None:
    server, client = opened()
    events, error = feed(server, client.send(Message(data="first")) + wire, how)

    assert events == [TextReceived("first")]
    assert error is not None and error.close_code == code and error.http_status is None
    server.receive_data(client.send(Message(data="after the error")))
    assert drain(server) == ([], error)
    [close] = to_client(client, server.close(error.close_code, str(error)))
    assert isinstance(close, CloseConnection) and close.code == code


def test_binary_message_is_refused_by_the_real_client_too() -> None:
    server, client = opened()
    server.receive_data(client.send(Message(data=b"\x89PNG")))
    _, error = drain(server)
    assert error is not None and error.close_code == CloseCode.UNSUPPORTED_DATA


# --- Encoders -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 200_000])
def test_encoded_text_frame_uses_the_right_length_form_and_decodes(size: int) -> None:
    _, client = opened()
    frame = encode_text_frame(b"a" * size)
    assert len(frame) - size == (2 if size < 126 else 4 if size < 65_536 else 10)
    events = to_client(client, frame)
    assert "".join(e.data for e in events if isinstance(e, TextMessage)) == "a" * size


@pytest.mark.parametrize(("code", "reason", "expected"), [
    (1000, "", (1000, "")),
    (CloseCode.MESSAGE_TOO_BIG, "too big", (1009, "too big")),
    (4001, "é" * 100, (4001, "é" * 61)),  # cut to 123 bytes on a character boundary
    (1005, "", (1005, "")),
])
def test_encoded_close_frame_decodes(code: int, reason: str, expected: tuple[int, str]) -> None:
    _, client = opened()
    [close] = to_client(client, encode_close_frame(code, reason))
    assert isinstance(close, CloseConnection) and (close.code, close.reason) == expected


@pytest.mark.parametrize("code", [999, 1004, 1006, 1014, 1015, 2000, 5000])
def test_close_codes_that_may_not_be_sent_are_refused(code: int) -> None:
    with pytest.raises(ValueError):
        encode_close_frame(code)


def test_control_frames_refuse_payloads_over_125_bytes() -> None:
    assert encode_ping_frame(b"x" * 125)[1] == 125
    with pytest.raises(ValueError):
        encode_ping_frame(b"x" * 126)
    with pytest.raises(ValueError):
        encode_close_frame(1005, "a reason needs a code")


# --- Properties -------------------------------------------------------------------------------

chunkings = st.lists(st.integers(min_value=1, max_value=64), max_size=20)


def feed_in_chunks(server: WebSocketServer, data: bytes, sizes: list[int]) -> None:
    """Feed in the given chunk sizes (the rest in one go); only events or our error may come."""
    pos = 0
    for size in [*sizes, len(data)]:
        server.receive_data(data[pos : pos + size])
        pos += size
        _, error = drain(server)  # anything but RemoteProtocolError propagates and fails
        if error is not None:
            assert error.close_code in {1002, 1003, 1007, 1009}
            if server.state in (WebSocketState.AWAITING_REQUEST, WebSocketState.REQUEST_RECEIVED):
                assert error.http_status is not None
                server.reject(error.http_status, str(error))
            else:
                server.close(error.close_code, str(error))
            return


frame_specs = st.lists(st.tuples(
    st.booleans(), st.sampled_from([0x0, 0x1, 0x2, 0x3, 0x8, 0x9, 0xA, 0xB]),
    st.booleans(), st.binary(max_size=300), st.integers(0, 7)), max_size=8)


def garbled_frame(spec: tuple[bool, int, bool, bytes, int]) -> bytes:
    fin, opcode, masked, payload, rsv = spec
    frame = bytearray(client_frame(opcode, payload, fin=fin, masked=masked))
    frame[0] |= rsv << 4
    return bytes(frame)


@given(garbage=st.binary(max_size=2000), frames=frame_specs, sizes=chunkings)
def test_any_bytes_after_the_handshake_give_only_events_or_remote_protocol_error(
        garbage: bytes, frames: list[tuple[bool, int, bool, bytes, int]], sizes: list[int],
) -> None:
    server, _ = opened(max_message_bytes=500)
    feed_in_chunks(server, b"".join(map(garbled_frame, frames)) + garbage, sizes)


@given(garbage=st.binary(max_size=600), header_lines=st.lists(st.sampled_from([
    b"Host: h", b"Host: \xc3", b"Connection: Upgrade", b"Upgrade: websocket",
    b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Key: a2V5", b"Sec-WebSocket-Protocol: \xff",
    b"Content-Length: 2", b"Transfer-Encoding: chunked", b"Origin: \x80"]), max_size=8),
    target=st.sampled_from([b"/", b"/ws", b"/ws?x=1", b"*", b"http://h/ws"]), sizes=chunkings)
def test_any_handshake_bytes_give_only_events_or_remote_protocol_error(
        garbage: bytes, header_lines: list[bytes], target: bytes, sizes: list[int]) -> None:
    server = WebSocketServer(max_handshake_bytes=400, allowed_path="/ws")
    head = b"GET " + target + b" HTTP/1.1\r\n" + b"".join(h + b"\r\n" for h in header_lines)
    feed_in_chunks(server, head + b"\r\n" + garbage, sizes)
    if server.state is WebSocketState.REQUEST_RECEIVED:
        try:
            server.accept()
        except RemoteProtocolError:
            return
        feed_in_chunks(server, b"", [])


@given(text=st.text(max_size=3000))
def test_any_text_encoded_once_decodes_in_the_wsproto_client(text: str) -> None:
    _, client = opened()
    frame = encode_text_frame(text.encode())
    assert "".join(e.data for e in to_client(client, frame) if isinstance(e, TextMessage)) == text


@given(pieces=st.lists(st.text(max_size=200), min_size=1, max_size=6), sizes=chunkings)
def test_any_fragmented_text_from_the_client_arrives_whole(
        pieces: list[str], sizes: list[int]) -> None:
    server, client = opened()
    wire = b"".join(client.send(Message(data=p, message_finished=i == len(pieces) - 1))
                    for i, p in enumerate(pieces))
    received: list[WebSocketEvent] = []
    pos = 0
    for size in [*sizes, len(wire)]:
        server.receive_data(wire[pos : pos + size])
        pos += size
        received += server.events()
    assert received == [TextReceived("".join(pieces))]


# --- The package's surface and its import rules -----------------------------------------------


def test_websocket_public_surface_is_pinned_and_reexported() -> None:
    assert set(websocket.__all__) == {
        "MAX_HANDSHAKE_BYTES", "MAX_MESSAGE_BYTES", "CloseCode", "CloseReceived",
        "ConnectionEnded", "HandshakeRequested", "LocalProtocolError", "PingReceived",
        "PongReceived", "RemoteProtocolError", "TextReceived", "WebSocketEvent",
        "WebSocketServer", "WebSocketState", "encode_close_frame", "encode_ping_frame",
        "encode_text_frame"}
    assert set(websocket.__all__) <= set(appliance.protocol.__all__)
    for name in websocket.__all__:
        assert getattr(appliance.protocol, name) is getattr(websocket, name)


def test_websocket_module_imports_no_io_and_nothing_of_ours_outside_protocol() -> None:
    package = Path(appliance.protocol.__file__).parent
    for path in (package / "websocket.py", package / "__init__.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                assert root not in {"trio", "trio_websocket", "socket", "threading", "engine",
                                    "admin_console"}, (path.name, name)
                if root == "appliance":
                    assert name.startswith("appliance.protocol"), (path.name, name)
