"""One client connection: WebSocket handshake, reading frames, routing requests, closing.

The connection task owns the read side. Writes go through the connection's outbox, which the
hub also pushes into, so replies, pushes, pings and closes never interleave mid-frame.

Under TLS the connection holds a `TlsChannel` (appliance/gateway/tls.py): what the socket reads is
decrypted before the WebSocket sees it, whatever the channel produces on its own (handshake,
tickets, alerts) goes to the outbox as is, and the outbox seals frames as it writes them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from appliance.gateway.outbox import Outbox
from appliance.gateway.tls import TlsChannel, TlsFailed
from appliance.gateway.wire import frame_refused, not_logged_in, too_deeply_nested
from appliance.protocol.frames import (
    OPEN_OPS,
    Bye,
    FrameError,
    decode_client_frame,
    encode_frame,
)
from appliance.protocol.websocket import (
    CloseReceived,
    ConnectionEnded,
    HandshakeRequested,
    PingReceived,
    PongReceived,
    RemoteProtocolError,
    TextReceived,
    WebSocketServer,
    encode_ping_frame,
    encode_text_frame,
)

if TYPE_CHECKING:
    from appliance.gateway.server import Services

__all__ = ["CLOSE_GOING_AWAY", "CLOSE_NORMAL", "CLOSE_POLICY", "CLOSE_TRY_AGAIN", "Connection"]

log = logging.getLogger("herald.connection")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013
READ_CHUNK_BYTES = 65536
CLOSE_GRACE_S = 5.0
MAX_IN_FLIGHT_WRITES = 64  # per connection; past it the connection stops reading until acks


class Connection:
    def __init__(
        self, services: Services, stream: trio.SocketStream, address: str,
        tls: TlsChannel | None = None,
    ) -> None:
        self.services = services
        self.stream = stream
        self.address = address
        self.tenant = 0
        self.user = 0
        self.device = ""
        self.session = b""  # the SHA-256 of the session token, once logged in
        # True while this connection's own password change is being committed: the session
        # sweeper then leaves it alone (its old token is about to end, and it is about to be
        # rebound to the new one; see SessionGuard.sweep).
        self.changing_session = False
        self._tls = tls
        self.outbox = Outbox(stream.socket.fileno(), services.config.gateway.outbox_cap_bytes,
                             services.flusher, seal=tls.seal if tls is not None else None)
        self.last_seen = trio.current_time()
        self.opened_at = self.last_seen
        self._ws = WebSocketServer(
            max_message_bytes=services.config.gateway.max_frame_bytes, allowed_path="/ws"
        )
        self._read_scope = trio.CancelScope()
        self._open = False  # WebSocket handshake done
        self._closing = False
        self._in_flight = 0
        self._room = trio.Event()
        self._room.set()

    @property
    def authenticated(self) -> bool:
        return self.user != 0

    @property
    def closing(self) -> bool:
        return self._closing

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it closes; never raises for anything the peer does."""
        try:
            async with trio.open_nursery() as nursery:
                self.outbox.drain_in(nursery)  # a drain task only while the kernel is full
                with self._read_scope:
                    await self._read_loop()
                await self._finish_close()
                nursery.cancel_scope.cancel()
        finally:
            self.services.hub.unregister(self)
            self.outbox.close()
            await self.stream.aclose()

    async def _read_loop(self) -> None:
        ws = self._ws
        while True:
            if not self._room.is_set():
                await self._room.wait()
            try:
                data = await self.stream.receive_some(READ_CHUNK_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            self.last_seen = trio.current_time()
            ended = not data
            if self._tls is not None:
                try:
                    data = self._decrypt(data)
                except TlsFailed as exc:
                    log.info("closing address=%s: %s", self.address, exc)
                    self.services.flusher.flush_all()  # the alert, if the channel made one
                    return
                ended = self._tls.ended
                if not data and not ended:  # handshake records, tickets: nothing for us yet
                    self.services.flusher.flush_all()
                    continue
            try:
                ws.receive_data(data)
                if ended:
                    ws.receive_data(None)
                for event in ws.events():
                    if await self._on_event(event):
                        self.services.flusher.flush_all()
                        return
            except RemoteProtocolError as exc:
                self._on_protocol_error(exc)
                return
            self.services.flusher.flush_all()
            if ended or self.outbox.broken:
                return

    def _decrypt(self, data: bytes) -> bytes:
        """Ciphertext from the socket in, plaintext out; raises `TlsFailed`."""
        assert self._tls is not None
        try:
            return self._tls.receive(data)
        finally:
            self.outbox.push_sealed(self._tls.take_output())

    async def _on_event(self, event: object) -> bool:
        """Handle one WebSocket event; True when the connection is done reading."""
        if isinstance(event, TextReceived):
            await self._on_text(event.text)
            return False
        if isinstance(event, HandshakeRequested):
            allowed = self.services.config.gateway.allowed_origins
            if event.origin is not None and event.origin.rstrip("/").lower() not in allowed:
                log.info("refused origin=%r address=%s", event.origin[:200], self.address)
                self._closing = True
                self.outbox.push_final(self._ws.reject(403, "this origin may not connect"))
                return True
            self.outbox.push(self._ws.accept())
            self._open = True
            return False
        if isinstance(event, PingReceived):
            self.outbox.push(self._ws.pong(event.payload))
            return False
        if isinstance(event, PongReceived):
            return False
        if isinstance(event, CloseReceived):
            if not self._closing:
                self._closing = True
                self.outbox.push_final(self._ws.close(event.code))  # echoes the peer's code
            return True
        if isinstance(event, ConnectionEnded):
            return True
        raise AssertionError(f"unexpected WebSocket event {event!r}")

    def _on_protocol_error(self, exc: RemoteProtocolError) -> None:
        if exc.http_status is not None:
            self.outbox.push_final(self._ws.reject(exc.http_status, str(exc)))
        elif not self._closing:
            self.outbox.push_final(self._ws.close(exc.close_code, str(exc)))
        self._closing = True
        self.services.flusher.flush_all()

    async def _on_text(self, text: str) -> None:
        try:
            request = decode_client_frame(text)
        except FrameError as exc:
            if not self.authenticated and exc.op is not None and exc.op not in OPEN_OPS:
                # As a well-formed request of that op would be: say nothing of which ops exist.
                self.send_frame(encode_frame(not_logged_in(exc.request_id)))
            else:
                self.send_frame(encode_frame(frame_refused(exc)))
            return
        except RecursionError:
            # msgspec's decoders overflow on deeply nested JSON ("[[[[..."), and
            # decode_client_frame lets that through: it must not take the server down.
            self.send_frame(encode_frame(too_deeply_nested()))
            return
        await self.services.router.handle(self, request)

    async def _finish_close(self) -> None:
        """Give the close frame (if any) a bounded time to reach the peer."""
        with trio.move_on_after(CLOSE_GRACE_S):
            await self.outbox.wait_empty()
            if self._tls is not None and not self.outbox.broken:
                self.outbox.push_sealed(self._tls.close_notify())
                await self.outbox.wait_empty()

    # -- used by the router, the hub and the server -------------------------------------------

    def send_frame(self, payload: bytes) -> None:
        """Queue one JSON frame for this connection (flushed at the end of the burst)."""
        if not self.outbox.push(encode_text_frame(payload)):
            self.evict_slow()

    def close(self, code: int, bye: Bye | None = None) -> None:
        """Say goodbye (optionally why), send a close frame and stop reading."""
        if self._closing:
            return
        self._closing = True
        if not self._open:
            self._read_scope.cancel()
            return
        if bye is not None:
            self.outbox.push(encode_text_frame(encode_frame(bye)))
        self.outbox.push_final(self._ws.close(code), drop_queued=False)
        self.services.flusher.flush_all()
        # Keep reading (the protocol drops data frames now) until the peer answers our close:
        # closing the socket with its data unread would reset the connection, and the peer
        # could lose our close frame with it.
        self._read_scope.deadline = min(self._read_scope.deadline,
                                        trio.current_time() + CLOSE_GRACE_S)

    def evict_slow(self) -> None:
        """The client does not read fast enough: drop what is queued and close with 1013.
        It catches up by sync when it reconnects."""
        if self._closing:
            return
        self._closing = True
        self.services.hub.unregister(self)
        log.info("evicting slow consumer user=%s address=%s", self.user, self.address)
        if not self._open:
            self._read_scope.cancel()
            return
        self.outbox.push_final(self._ws.close(CLOSE_TRY_AGAIN, "too slow; reconnect and sync"))
        self._read_scope.deadline = min(self._read_scope.deadline,
                                        trio.current_time() + CLOSE_GRACE_S)

    def write_started(self) -> None:
        self._in_flight += 1
        if self._in_flight >= MAX_IN_FLIGHT_WRITES and self._room.is_set():
            self._room = trio.Event()

    def write_finished(self) -> None:
        self._in_flight -= 1
        if self._in_flight < MAX_IN_FLIGHT_WRITES:
            self._room.set()

    def ping(self) -> None:
        if self._open and not self._closing:
            self.outbox.push(encode_ping_frame(b""))

    def abort(self) -> None:
        """The peer is gone (no pong, no data): stop without a closing handshake."""
        self._closing = True
        self.outbox.close()
        self._read_scope.cancel()
