"""The Trio server: listeners, connections, the writer, keepalive, and orderly shutdown.

Shutdown runs in the order the design asks: stop accepting, commit (and ack) every write in
flight, close every connection with 1001, and only then let the caller close the engine.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from appliance.config import Config, ConfigError
from appliance.gateway.backoff import LoginBackoff
from appliance.gateway.connection import CLOSE_GOING_AWAY, CLOSE_POLICY, Connection
from appliance.gateway.hub import Hub
from appliance.gateway.key_refresh import KeyRefresh
from appliance.gateway.metrics import ServerMetrics
from appliance.gateway.outbox import Flusher
from appliance.gateway.router import Router
from appliance.gateway.sessions import SessionGuard
from appliance.gateway.tls import TlsChannel, plaintext_refusal, server_context
from appliance.gateway.tokens import retire_legacy_secret
from appliance.gateway.wire import LOGIN_TIMED_OUT, SHUTTING_DOWN
from appliance.gateway.writer import Committed, SendFanout, Writer, wall_clock_ms
from engine import Engine

if TYPE_CHECKING:
    from appliance.keys.manager import TenantKeyStatus

__all__ = ["Server", "Services", "ThrottledWarning"]

log = logging.getLogger("herald.server")

SHUTDOWN_GRACE_S = 5.0
# Accepts that keep failing (EMFILE: out of descriptors) are retried every ACCEPT_RETRY_S.
# They, and connections refused at max_connections, are warned of once per
# ACCEPT_WARNING_INTERVAL_S, with the count of those not warned of.
ACCEPT_RETRY_S = 0.1
ACCEPT_WARNING_INTERVAL_S = 10.0


class ThrottledWarning:
    """A warning that may repeat many times a second, logged at most once per `interval_s`
    (by `clock_s`), saying how many times it came in between. Out of descriptors, the accept
    loop fails ten times a second; at max_connections, every connection of a reconnect storm
    is refused: one line each would bury the log. Near a limit, failures and successes
    alternate as connections come and go, so a success does not reset the interval."""

    def __init__(self, interval_s: float, clock_s: Callable[[], float]) -> None:
        self._interval_s = interval_s
        self._clock_s = clock_s
        self._quiet_until_s = float("-inf")
        self._unreported = 0

    def warn(self, message: str) -> None:
        now = self._clock_s()
        if now < self._quiet_until_s:
            self._unreported += 1
            return
        if self._unreported:
            log.warning("%s (%d more since the last warning)", message, self._unreported)
        else:
            log.warning("%s", message)
        self._unreported = 0
        self._quiet_until_s = now + self._interval_s


@dataclass
class Services:
    """What every connection shares. Built once per server; there is no module-level state."""

    config: Config
    engine: Engine
    writer: Writer
    hub: Hub
    flusher: Flusher
    router: Router
    clock_ms: Callable[[], int]
    sessions: SessionGuard
    backoff: LoginBackoff
    metrics: ServerMetrics
    # Set by `herald serve` on a sealed store: requests wait on it for a key being fetched.
    key_refresh: KeyRefresh | None = None


class Server:
    def __init__(
        self, config: Config, engine: Engine, *, clock_ms: Callable[[], int] = wall_clock_ms,
        key_status: Callable[[], Iterable[TenantKeyStatus]] = tuple,
    ) -> None:
        """Raises `ConfigError` for an unusable certificate or key, or plain ws:// on a
        network address without `tls.allow_plaintext_on_network`. `key_status` (the key
        manager's) is what the metrics say of the tenants' keys."""
        refusal = plaintext_refusal(config)
        if refusal is not None:
            raise ConfigError(refusal)
        self._tls_context = server_context(config.tls) if config.tls.enabled else None
        flusher = Flusher()
        hub = Hub(engine, flusher)

        def on_committed(batch: Sequence[Committed]) -> SendFanout | None:
            self.metrics.count_committed(batch)
            send_fanout = hub.on_committed(batch)
            self.services.sessions.on_committed(batch)
            return send_fanout

        writer = Writer(engine, on_committed=on_committed, clock_ms=clock_ms)
        self.metrics = ServerMetrics(hub=hub, writer=writer, store=engine,
                                     connections=lambda: len(self._connections),
                                     key_status=key_status)
        retire_legacy_secret(config.data_dir)
        gateway = config.gateway
        backoff = LoginBackoff(
            base_s=gateway.login_failure_delay_s,
            max_s=min(gateway.login_backoff_max_s, gateway.login_timeout_s / 2),
            clock_s=lambda: clock_ms() / 1000,
        )
        self.services = Services(
            config, engine, writer, hub, flusher, None, clock_ms, None, backoff,  # type: ignore[arg-type]
            self.metrics,
        )
        self.services.router = Router(self.services)
        self.services.sessions = SessionGuard(self.services)
        self._connections: set[Connection] = set()
        self._stop = trio.Event()
        self._accept_failed = ThrottledWarning(ACCEPT_WARNING_INTERVAL_S, trio.current_time)
        self._refused_at_limit = ThrottledWarning(ACCEPT_WARNING_INTERVAL_S, trio.current_time)
        self.port = 0

    @property
    def connections(self) -> set[Connection]:
        return self._connections

    def request_stop(self) -> None:
        """Begin an orderly shutdown; `run` returns when it is complete."""
        self._stop.set()

    async def run(
        self, *, sockets: Sequence[socket.socket] = (),
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until `request_stop`, on `sockets` (bound and listening; `herald serve` binds
        them before it opens anything: appliance/gateway/listen_sockets.py), which it then owns, or
        with none on listeners it opens for the configured address. Reports the bound port
        through `task_status`."""
        config = self.services.config
        if sockets:
            listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                         for sock in sockets]
        else:
            listeners = await trio.open_tcp_listeners(config.listen_port, host=config.listen_host)
        self.port = listeners[0].socket.getsockname()[1]
        try:
            await self._serve(listeners, task_status)
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    async def _serve(
        self, listeners: list[trio.SocketListener], task_status: trio.TaskStatus[int]
    ) -> None:
        writer_done = trio.Event()
        async with trio.open_nursery() as outer:

            async def run_writer() -> None:
                try:
                    await self.services.writer.run()
                finally:
                    writer_done.set()

            outer.start_soon(run_writer)
            async with trio.open_nursery() as connections:
                accepting = trio.CancelScope()

                async def accept_all() -> None:
                    with accepting:
                        async with trio.open_nursery() as acceptors:
                            for listener in listeners:
                                acceptors.start_soon(self._accept, listener, connections)

                connections.start_soon(accept_all)
                connections.start_soon(self._keepalive)
                connections.start_soon(self.services.sessions.run)
                task_status.started(self.port)
                await self._stop.wait()
                log.info("shutting down: no new connections")
                accepting.cancel()
                for listener in listeners:
                    await trio.aclose_forcefully(listener)
                self.services.writer.close()
                await writer_done.wait()
                log.info("shutting down: writes committed; closing %d connections",
                         len(self._connections))
                for conn in list(self._connections):
                    conn.close(CLOSE_GOING_AWAY, SHUTTING_DOWN)
                with trio.move_on_after(SHUTDOWN_GRACE_S):
                    while self._connections:
                        await trio.sleep(0.01)
                connections.cancel_scope.cancel()

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        limit = self.services.config.gateway.max_connections
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and friends: back off rather than spin
                self._accept_failed.warn(f"accept failed: {exc}")
                await trio.sleep(ACCEPT_RETRY_S)
                continue
            if len(self._connections) >= limit:
                self._refused_at_limit.warn(
                    f"connection refused: {limit} connections is the limit")
                await stream.aclose()
                continue
            nursery.start_soon(self._serve_connection, stream)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        try:
            host, port = stream.socket.getpeername()[:2]
            address = f"{host}:{port}"
        except OSError:
            address = "?"
        tls = TlsChannel(self._tls_context) if self._tls_context is not None else None
        conn = Connection(self.services, stream, address, tls)
        self._connections.add(conn)
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)

    async def _keepalive(self) -> None:
        """One task for all connections: ping the quiet, close the dead and the anonymous."""
        gateway = self.services.config.gateway
        interval = gateway.ping_interval_s
        while True:
            await trio.sleep(min(interval, gateway.login_timeout_s) / 2)
            now = trio.current_time()
            for conn in list(self._connections):
                quiet = now - conn.last_seen
                if not conn.authenticated and now - conn.opened_at > gateway.login_timeout_s:
                    conn.close(CLOSE_POLICY, LOGIN_TIMED_OUT)
                elif quiet > 2 * interval:
                    conn.abort()
                elif quiet >= interval:
                    conn.ping()
            self.services.flusher.flush_all()
