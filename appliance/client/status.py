"""What the client tells the application about its connection, as it happens.

`open_client(..., on_status=...)` calls the function with one of these whenever the connection
changes in a way a person should hear of: the application shows them ("disconnected,
reconnecting", "reconnected") instead of leaving requests to hang in silence. The callback runs
in the client's own tasks: it must not block (printing a line is fine).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "ConnectionStatus",
    "Disconnected",
    "ReconnectFailed",
    "Reconnected",
    "StatusListener",
    "WaitingForKeys",
]


@dataclass(frozen=True, slots=True)
class Disconnected:
    """A logged-in connection ended (not by the application); the client is reconnecting.
    Requests wait for the next connection meanwhile."""

    reason: str


@dataclass(frozen=True, slots=True)
class ReconnectFailed:
    """An attempt to reconnect failed; the next one is in `retry_in_s` seconds."""

    reason: str
    retry_in_s: float


@dataclass(frozen=True, slots=True)
class Reconnected:
    """Logged in again after a `Disconnected` (or `WaitingForKeys`); requests go through."""


@dataclass(frozen=True, slots=True)
class WaitingForKeys:
    """The server is up but cannot use the organisation's data keys yet (`key_unavailable`:
    its key escrow is unreachable, e.g. after a restart); the client tries again in
    `retry_in_s` seconds, and keeps trying (these attempts never count toward
    `Reconnect.max_attempts`: the server is there). `message` is the server's."""

    message: str
    retry_in_s: float


ConnectionStatus = Disconnected | ReconnectFailed | Reconnected | WaitingForKeys
StatusListener = Callable[[ConnectionStatus], None]
