"""One WebSocket connection to the server: request ids, replies matched to them, pushes handed on.

A `Session` wraps an open trio-websocket connection. Its reader task is the only reader; every
frame it reads is a reply or an error for a request (matched by id), or a push (handed to the
client's callbacks without waiting, so replies are never stuck behind a slow application).
When the connection ends, every request still waiting fails with `ConnectionLost`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from appliance.client.errors import ClientError, ConnectionLost
from appliance.protocol.frames import (
    Bye,
    ClientFrame,
    ErrorFrame,
    MsgPush,
    ReadPush,
    Reply,
    decode_server_frame,
    encode_frame,
)

__all__ = ["Session"]

log = logging.getLogger("herald.client")

CLOSE_PROTOCOL_ERROR = 1002


class _Waiter:
    __slots__ = ("done", "on_reply", "outcome")

    def __init__(self, on_reply: Callable[[Any], None] | None) -> None:
        self.done = trio.Event()
        self.on_reply = on_reply
        self.outcome: Reply | ErrorFrame | None = None


class Session:
    """An open connection. `ws` runs its own background task; `stream` is its transport, closed
    by whoever opened it."""

    def __init__(
        self,
        ws: WebSocketConnection,
        stream: trio.abc.Stream,
        ids: Iterator[int],
        *,
        on_push: Callable[[MsgPush], None],
        on_read: Callable[[ReadPush], None],
        close_timeout_s: float,
    ) -> None:
        self._ws = ws
        self._stream = stream
        self._ids = ids
        self._on_push = on_push
        self._on_read = on_read
        self._close_timeout_s = close_timeout_s
        self._pending: dict[int, _Waiter] = {}
        self.finished = trio.Event()  # the reader has stopped
        self.closed = trio.Event()  # `close` is done
        self.last_received = trio.current_time()
        self.bye: Bye | None = None
        self.generation = 0  # set by the client once the session is logged in

    async def request(
        self, frame: ClientFrame, on_reply: Callable[[Any], None] | None = None
    ) -> Any:
        """Send `frame` under a fresh id (its own `id` is ignored) and return the reply's
        undecoded `data`. `on_reply(data)` runs in the reader the moment the reply is read,
        before any later frame is handled.

        Raises `ClientError` when the server answers with an error frame, `ConnectionLost` when
        the connection ends first.
        """
        if self.finished.is_set():
            raise ConnectionLost("the connection is closed")
        request_id = next(self._ids)
        waiter = _Waiter(on_reply)
        self._pending[request_id] = waiter
        try:
            payload = encode_frame(msgspec.structs.replace(frame, id=request_id)).decode()
            try:
                await self._ws.send_message(payload)
            except ConnectionClosed:
                raise ConnectionLost("the connection closed before the request was sent") from None
            await waiter.done.wait()
        finally:
            self._pending.pop(request_id, None)
        outcome = waiter.outcome
        if outcome is None:
            raise ConnectionLost("the connection closed before the reply arrived")
        if isinstance(outcome, ErrorFrame):
            raise ClientError(outcome.code, outcome.message, outcome.retry_after, outcome.id)
        return outcome.data

    async def run(self) -> None:
        """Read frames until the connection ends, then fail whatever still waits. Never raises
        for anything the server does."""
        try:
            while True:
                try:
                    message = await self._ws.get_message()
                except ConnectionClosed as exc:
                    log.info("connection closed: %s", exc.reason)
                    return
                self.last_received = trio.current_time()
                try:
                    frame = decode_server_frame(message)
                except msgspec.DecodeError as exc:
                    log.warning("closing: the server sent a frame this client cannot read: %s", exc)
                    await self.close(CLOSE_PROTOCOL_ERROR, "unreadable frame")
                    return
                self._dispatch(frame)
        finally:
            self.finished.set()
            for waiter in self._pending.values():
                waiter.done.set()

    def _dispatch(self, frame: Reply | ErrorFrame | MsgPush | ReadPush | Bye) -> None:
        if isinstance(frame, MsgPush):
            self._on_push(frame)
        elif isinstance(frame, Reply | ErrorFrame):
            waiter = self._pending.get(frame.id) if frame.id is not None else None
            if waiter is None:
                if isinstance(frame, ErrorFrame):
                    log.warning("the server reported %s: %s", frame.code, frame.message)
                return  # the reply to a request its caller stopped waiting for
            if isinstance(frame, Reply) and waiter.on_reply is not None:
                waiter.on_reply(frame.data)
            waiter.outcome = frame
            waiter.done.set()
        elif isinstance(frame, ReadPush):
            self._on_read(frame)
        else:
            self.bye = frame
            log.info("the server says goodbye: %s (%s)", frame.message, frame.code)

    async def ping(self) -> bool:
        """A WebSocket ping, answered by a pong; False when the connection is closed."""
        try:
            await self._ws.ping()
        except ConnectionClosed:
            return False
        return True

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """A normal close, given `close_timeout_s` for the handshake; then the transport is cut.
        `closed` is set when it is done."""
        try:
            with trio.move_on_after(self._close_timeout_s):
                await self._ws.aclose(code, reason)
            if not self.finished.is_set():
                await self.abort()
        finally:
            self.closed.set()

    async def abort(self) -> None:
        """Cut the transport at once (the peer is unresponsive)."""
        await trio.aclose_forcefully(self._stream)
