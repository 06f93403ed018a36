"""`herald serve`: open the store, start the server, stop in order on SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import sys
from contextlib import ExitStack
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import trio

from appliance.admin.server import AdminServer
from appliance.admin.socket_file import (
    ADMIN_SOCKET,
    AdminSocketError,
    bind_admin_socket,
    remove_admin_socket,
)
from appliance.admin.status import server_status
from appliance.cert_expiry import WatchedCertificate, pin_in_use
from appliance.cli.demo import ensure_demo
from appliance.cli.demo_keys import prepare_demo_keys
from appliance.cli.unlock import open_engine
from appliance.config import Config, ConfigError
from appliance.gateway.backoff import LoginBackoff
from appliance.gateway.cert_watch import (
    check_now,
    expired_gateway_refusal,
    utc_now,
    watch_certificates,
    watched_certificates,
)
from appliance.gateway.file_limit import raise_open_file_limit
from appliance.gateway.key_refresh import KEY_REFRESH_MAX_INTERVAL_S, KeyRefresh, run_key_refresh
from appliance.gateway.listen_sockets import ListenError, open_listen_sockets
from appliance.gateway.login_gate import LoginGate
from appliance.gateway.message_reseal import MessageResealer
from appliance.gateway.metrics import metrics_refusal, metrics_url, serve_metrics
from appliance.gateway.server import Server
from appliance.gateway.tls import plaintext_refusal, server_context
from appliance.gateway.writer import wall_clock_ms
from appliance.keys.errors import KeyManagementError
from appliance.keys.manager import KeyManager, TenantKeyStatus
from appliance.lock_file import HeldLock, LockHeld, hold_exclusively
from engine import Engine, HeraldError

__all__ = ["DATA_DIR_LOCK", "admin_api", "describe_store", "herald_command", "serve"]

log = logging.getLogger("herald")

DATA_DIR_LOCK = "herald.lock"  # in the data directory, held while `herald serve` runs
# The addresses that listen on every interface, and the one of this machine the chat hint
# names instead (a client cannot dial 0.0.0.0 from elsewhere, and TLS names never match it).
WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def describe_store(engine: Engine) -> str:
    stats = engine.stats()
    return (
        f"{stats['tenants']} tenants, {stats['users']} users, {stats['convs']} conversations, "
        f"{stats['messages']} messages, {stats['map_used_bytes'] / 2**20:.1f} MiB used"
    )


def configure_logging(level: str = "info") -> None:
    """Log to standard error at `level` (one of config.LOG_LEVELS: `[log] level`,
    `--log-level`)."""
    logging.basicConfig(
        stream=sys.stderr, format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    logging.getLogger().setLevel(level.upper())  # also when logging was configured before


def serve(config: Config, *, demo: bool = False) -> int:
    """Run until SIGINT or SIGTERM; returns the process exit code."""
    configure_logging(config.log.level)
    try:  # before opening anything: a refusal here must leave no trace
        refusal = plaintext_refusal(config) or metrics_refusal(config.metrics)
        if refusal is not None:
            raise ConfigError(refusal)
        if config.tls.enabled:
            server_context(config.tls)
        refusal = expired_gateway_refusal(config, utc_now())
        if refusal is not None:
            raise ConfigError(refusal)
    except ConfigError as exc:
        print(f"herald: {exc}", file=sys.stderr)
        return 2
    with ExitStack() as held:
        # Before any passphrase is asked, any key unwrapped or the store opened: a second
        # server on this store, or a port in use, is refused at once, in a line.
        try:
            lock = _hold_data_dir(config, demo)
            if lock is not None:
                held.callback(lock.release)
            sockets = open_listen_sockets(config.listen_host, config.listen_port)
            for sock in sockets:
                held.callback(sock.close)  # Server.run closes them; this for the early returns
            metrics = config.metrics
            metrics_sockets = open_listen_sockets(
                metrics.host, metrics.port, "--metrics-listen") if metrics.enabled else []
            for sock in metrics_sockets:
                held.callback(sock.close)
            if lock is not None:  # the admin socket lives in the data directory it locks
                admin_path = config.data_dir / ADMIN_SOCKET
                admin_sockets = [bind_admin_socket(admin_path)]
                held.callback(remove_admin_socket, admin_path)
                held.callback(admin_sockets[0].close)
            else:
                admin_sockets = []
        except (StartRefused, ListenError, AdminSocketError) as exc:
            print(f"herald: {exc}", file=sys.stderr)
            return 1
        _raise_open_file_limit(config)
        return _open_and_serve(config, demo, sockets, metrics_sockets, admin_sockets)


def _raise_open_file_limit(config: Config) -> None:
    limit = raise_open_file_limit(config.gateway.max_connections)
    log.info("open_file_limit=%d was=%d hard=%d", limit.now, limit.was, limit.hard)
    if limit.warning is not None:
        log.warning("%s", limit.warning)


class StartRefused(Exception):
    """`herald serve` may not start; the message says why and what to do."""


def _hold_data_dir(config: Config, demo: bool) -> HeldLock | None:
    """The exclusive lock on the data directory (DATA_DIR/herald.lock) while this server runs:
    a second server on the same store would serve beside this one, and the messages sent
    through one would never reach the clients of the other. None when there is no data
    directory (then there is no store to serve either). Raises `StartRefused`.

    The account and key commands (`herald tenant|user|group|keys ...`) take no lock: until the
    admin API replaces them, they write beside a running server (LMDB serialises the writers,
    and the server picks up what they change). Even a shared lock would shut them out, since
    flock's shared and exclusive locks exclude each other."""
    if not config.data_dir.is_dir():
        if not demo:
            return None  # nothing to hold, nor to serve: open_engine says to run `herald init`
        try:
            config.data_dir.mkdir(parents=True)  # the demo makes its data directory
        except OSError as exc:
            raise StartRefused(f"cannot make the data directory {config.data_dir}: "
                               f"{exc.strerror}; choose another --data-dir") from None
    try:
        return hold_exclusively(config.data_dir / DATA_DIR_LOCK)
    except LockHeld as exc:
        holder = f"herald serve (pid {exc.pid})" if exc.pid else "another herald serve"
        raise StartRefused(f"the data directory {config.data_dir} is in use by {holder}; stop "
                           f"it first") from None
    except OSError as exc:
        raise StartRefused(f"cannot lock {exc.filename or config.data_dir}: {exc.strerror}; "
                           f"the data directory must be writable by the user running herald "
                           f"serve") from None


def _open_and_serve(config: Config, demo: bool, sockets: list[socket.socket],
                    metrics_sockets: list[socket.socket],
                    admin_sockets: list[socket.socket]) -> int:
    # Before the keys are unwrapped: an expired escrow certificate explains what follows.
    # Pinned: the files are loaded once, now, so the daily checks judge what is in use.
    watched = pin_in_use(watched_certificates(config))
    check_now(watched, utc_now())
    try:
        if demo:
            config, notice = prepare_demo_keys(config)
            if notice:
                print(notice, flush=True)
        keyed = open_engine(config)
    except KeyManagementError as exc:
        print(f"herald: {exc.message} ({exc.code})", file=sys.stderr)
        return 1
    except (HeraldError, OSError) as exc:
        print(f"herald: cannot open the store in {config.data_dir}: {exc}", file=sys.stderr)
        return 1
    engine, manager = keyed.engine, keyed.manager
    try:
        if manager is None:
            print(f"herald: the store in {config.store_dir} was created without encryption, "
                  f"and Herald serves only sealed stores: start with a new data directory "
                  f"('herald init --data-dir DIR', or 'make run' after moving {config.data_dir}"
                  f" away)", file=sys.stderr)
            return 1
        print(f"Herald store at {config.store_dir.resolve()}: {describe_store(engine)}", flush=True)
        print(describe_keys(manager.status()), flush=True)
        if demo:
            created = ensure_demo(engine, manager, config.data_dir, wall_clock_ms())
            if created:
                print(created, flush=True)
        try:
            trio.run(_run, config, engine, manager, demo, watched, sockets, metrics_sockets,
                     admin_sockets)
        except ConfigError as exc:
            print(f"herald: {exc}", file=sys.stderr)
            return 2
    finally:
        keyed.close()
    print("Herald stopped.", flush=True)
    return 0


def herald_command() -> str:
    """The command that starts this herald, for the hints it prints: the `herald` script that
    was run, as an absolute path (it works from any folder, on PATH or not), else this Python
    with `-m appliance.cli`."""
    script = Path(sys.argv[0])
    if script.name == "herald" and script.is_file():
        return shlex.quote(str(script.resolve()))
    return f"{shlex.quote(sys.executable)} -m appliance.cli"


def describe_keys(statuses: list[TenantKeyStatus]) -> str:
    if not statuses:
        return "Keys: no tenants yet."
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status.state] = counts.get(status.state, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    return f"Keys: tenants {summary} (herald keys status shows each)."


async def _run(config: Config, engine: Engine, manager: KeyManager, demo: bool,
               watched: list[WatchedCertificate], sockets: list[socket.socket],
               metrics_sockets: list[socket.socket], admin_sockets: list[socket.socket]) -> None:
    server = Server(config, engine, key_status=manager.status)
    interval_s = min(KEY_REFRESH_MAX_INTERVAL_S, config.escrow.cache_lifetime_s / 4)
    early = KeyRefresh()
    if engine.keyring is not None:
        engine.keyring.add_missing_listener(early)
        server.services.key_refresh = early
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as keys:
            keys.start_soon(run_key_refresh, manager, interval_s, early)
            keys.start_soon(watch_certificates, watched)
            if metrics_sockets:  # in this nursery: cancelled with it once the server stopped
                listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                             for sock in metrics_sockets]
                await keys.start(serve_metrics, server.metrics.registry, listeners)
                port = metrics_sockets[0].getsockname()[1]
                print(f"Metrics for Prometheus at {metrics_url(config.metrics, port)}",
                      flush=True)
            if config.keys.reseal_messages:
                resealer = MessageResealer(
                    engine, batch_blocks=config.keys.reseal_batch_blocks,
                    pause_s=config.keys.reseal_pause_s, check_interval_s=interval_s)
                keys.start_soon(resealer.run)
            await _serve_until_signal(config, server, sockets, signals, demo,
                                      admin_api(config, server, engine), admin_sockets)
            keys.cancel_scope.cancel()


def admin_api(config: Config, server: Server, engine: Engine) -> AdminServer:
    """The admin API of `server`: its writer, its figures, and a login gate of its own with the
    gateway's backoff settings (administrators' failures count apart from users')."""
    gateway = config.gateway
    backoff = LoginBackoff(base_s=gateway.login_failure_delay_s,
                           max_s=min(gateway.login_backoff_max_s, gateway.login_timeout_s / 2),
                           clock_s=lambda: wall_clock_ms() / 1000)
    return AdminServer(
        store=engine, writes=server.services.writer,
        login_gate=LoginGate(backoff, failure_delay_s=gateway.login_failure_delay_s),
        status=server_status(server.metrics, engine), clock_ms=wall_clock_ms,
        own_uid=os.getuid(), failure_delay_s=gateway.login_failure_delay_s)


async def _serve_until_signal(
    config: Config, server: Server, sockets: list[socket.socket], signals: Any, demo: bool,
    admin: AdminServer, admin_sockets: list[socket.socket],
) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(server.run, sockets=sockets))
        admin_scope = trio.CancelScope()
        if admin_sockets:
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(admin_sockets[0]))

            async def run_admin(task_status: trio.TaskStatus[None]) -> None:
                with admin_scope:
                    await admin.serve(listener, task_status=task_status)

            await nursery.start(run_admin)
            print(f"Admin API at {config.data_dir / ADMIN_SOCKET} (herald admin ...)",
                  flush=True)
        url = config.url_for_port(port)
        print(f"Herald is listening at {url}", flush=True)
        trust = " --ca CA_FILE" if config.tls.enabled else ""
        who = "--tenant demo --login alice" if demo else "--tenant TENANT --login LOGIN"
        if config.listen_host in WILDCARD_HOSTS:  # listens everywhere; a client dials one
            url = replace(config, listen_host=WILDCARD_HOSTS[config.listen_host]).url_for_port(
                port)
        print(f"Chat from another terminal: {herald_command()} chat --url {url}{trust} {who}",
              flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        async for signum in signals:
            log.info("signal=%s: stopping", signal.Signals(signum).name)
            admin_scope.cancel()  # before the gateway's writer closes: no admin write is lost
            server.request_stop()
            break
