"""What the client hands the application: delivered messages, and the stream they arrive on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import trio

from appliance.client.errors import ClientClosed
from appliance.protocol.frames import WireMessage

__all__ = ["Message", "MessageStream", "Sent"]


@dataclass(frozen=True, slots=True)
class Message:
    """One message of conversation `conv`, as delivered to the application.

    `kind` is "text", "system" (a membership event: `body` names it, `mentions` lists the users
    it concerns, `sender` is who made the change), "bot" or "recall" (`ref` is the hidden seq).
    `recalled_by` is the seq of the recall that hid this message (then its body is empty).
    """

    conv: int
    seq: int
    sender: int
    ts: int
    kind: str
    body: str
    cmid: str = ""
    mentions: tuple[int, ...] = ()
    ref: int = 0
    recalled_by: int = 0

    @classmethod
    def from_wire(cls, conv: int, wire: WireMessage) -> Message:
        return cls(conv, wire.seq, wire.sender, wire.ts, wire.kind, wire.body, wire.cmid,
                   tuple(wire.mentions), wire.ref, wire.recalled_by)


class Sent(NamedTuple):
    """The server's acknowledgement of a send: the message's seq and server timestamp (ms)."""

    seq: int
    ts: int


class MessageStream:
    """The messages the client delivers, each conversation's in seq order, each exactly once.

    Iterate it (`async for message in client.messages`) or call `receive()`. Bounded: while the
    application does not take messages, the client stops delivering (and pulls what it missed
    once it may deliver again), so memory does not grow.
    """

    def __init__(
        self, channel: trio.MemoryReceiveChannel[Message],
        stopped: Callable[[], BaseException],
    ) -> None:
        self._channel = channel
        self._stopped = stopped

    async def receive(self) -> Message:
        """The next message. Raises `ServerUnreachable` or `LoginFailed` once the client has
        stopped for that reason and every message before it was received, `ClientClosed` after
        the application closed the client."""
        try:
            return await self._channel.receive()
        except trio.EndOfChannel:
            raise self._stopped() from None

    def __aiter__(self) -> MessageStream:
        return self

    async def __anext__(self) -> Message:
        """Ends quietly when the application closed the client; raises as `receive` when the
        client stopped by itself."""
        try:
            return await self._channel.receive()
        except trio.EndOfChannel:
            error = self._stopped()
            if isinstance(error, ClientClosed):
                raise StopAsyncIteration from None
            raise error from None
