"""A client's limits and timers, its reconnect policy, and the counters of what it did."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ClientOptions", "ClientStats", "Reconnect"]


@dataclass(frozen=True, slots=True)
class Reconnect:
    """When to try again. The n-th consecutive attempt waits `first_delay_s * multiplier**(n-1)`,
    at most `max_delay_s`, times a random factor in [0.5, 1) so that clients dropped together
    do not all return together. After `max_attempts` consecutive failed attempts the client
    stops (None: it never does). An attempt fails when it does not reach a logged-in session.
    `initial_attempts` bounds the attempts before the first session instead (None: as
    `max_attempts`): an interactive client gives 1, to say at once that the server cannot be
    reached rather than retry a wrong URL.
    """

    first_delay_s: float = 0.5
    max_delay_s: float = 30.0
    multiplier: float = 2.0
    max_attempts: int | None = 10
    initial_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.first_delay_s < 0 or self.max_delay_s < self.first_delay_s:
            raise ValueError("delays must satisfy 0 <= first_delay_s <= max_delay_s")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        for name in ("max_attempts", "initial_attempts"):
            attempts = getattr(self, name)
            if attempts is not None and attempts < 1:
                raise ValueError(f"{name} must be at least 1 (or None)")

    def attempts_allowed(self, ever_logged_in: bool) -> int | None:
        """How many consecutive failed attempts stop the client (None: none do)."""
        if ever_logged_in or self.initial_attempts is None:
            return self.max_attempts
        return self.initial_attempts

    def delay_s(self, attempt: int, jitter: float) -> float:
        """The wait before attempt `attempt` (1-based), for a `jitter` drawn from [0, 1)."""
        base = min(self.max_delay_s, self.first_delay_s * self.multiplier ** (attempt - 1))
        return base * (0.5 + jitter / 2)


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Limits and timers of a client; the defaults suit an interactive application.
    Raises `ValueError` for a limit below 1 or a negative time."""

    device: str = ""  # a name for this device, shown to administrators
    reconnect: Reconnect = field(default_factory=Reconnect)
    message_buffer: int = 1000  # delivered messages the application has not taken yet
    max_pending_pushes: int = 10_000  # pushes not yet sequenced; past it: drop them, then sync
    sync_limit: int = 50  # messages per conversation in a sync reply
    page_limit: int = 100  # messages per history page when pulling a gap
    backlog: int = 50  # latest messages delivered of a conversation first heard of
    gap_wait_s: float = 0.05  # how long a gap may fill by itself before it is pulled
    connect_timeout_s: float = 10.0  # TCP, TLS and WebSocket handshakes together
    close_timeout_s: float = 2.0  # for the WebSocket closing handshake
    heartbeat_s: float | None = 30.0  # ping after this long without a frame; drop if no pong
    max_message_bytes: int = 4 * 2**20  # largest frame accepted from the server

    def __post_init__(self) -> None:
        for name in ("message_buffer", "max_pending_pushes", "sync_limit", "page_limit",
                     "max_message_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.backlog < 0 or self.gap_wait_s < 0:
            raise ValueError("backlog and gap_wait_s cannot be negative")
        if self.connect_timeout_s <= 0 or self.close_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.heartbeat_s is not None and self.heartbeat_s <= 0:
            raise ValueError("heartbeat_s must be positive (or None)")


@dataclass(slots=True)
class ClientStats:
    """Counters of what the client did, for logs, dashboards and tests."""

    sessions: int = 0  # connections that reached a logged-in session
    failed_connects: int = 0  # attempts that did not
    logins: int = 0
    resumes: int = 0
    resumes_refused: int = 0
    syncs: int = 0
    pulls: int = 0  # history pages read to fill a gap
    duplicates: int = 0  # pushes or acks of messages delivered already
    overflows: int = 0  # pushes dropped because the sequencer was behind (a sync follows)
    delivered: int = 0
    send_retries: int = 0
