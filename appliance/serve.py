"""`herald serve`: open the store, start the server, stop in order on SIGINT or SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from typing import Any

import trio

from appliance.config import Config, ConfigError
from appliance.demo import ensure_demo
from appliance.demo_keys import prepare_demo_keys
from appliance.keys.errors import KeyManagementError
from appliance.keys.manager import KeyManager, TenantKeyStatus
from appliance.keys.unlock import open_engine
from appliance.message_reseal import MessageResealer
from appliance.server import Server
from appliance.tls import plaintext_refusal, server_context
from appliance.writer import wall_clock_ms
from engine import Engine, HeraldError

__all__ = ["describe_store", "serve"]

log = logging.getLogger("herald")

KEY_REFRESH_MAX_INTERVAL_S = 5.0


def describe_store(engine: Engine) -> str:
    stats = engine.stats()
    return (
        f"{stats['tenants']} tenants, {stats['users']} users, {stats['convs']} conversations, "
        f"{stats['messages']} messages, {stats['map_used_bytes'] / 2**20:.1f} MiB used"
    )


def configure_logging() -> None:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )


def serve(config: Config, *, demo: bool = False) -> int:
    """Run until SIGINT or SIGTERM; returns the process exit code."""
    configure_logging()
    try:  # before opening anything: a refusal here must leave no trace
        refusal = plaintext_refusal(config)
        if refusal is not None:
            raise ConfigError(refusal)
        if config.tls.enabled:
            server_context(config.tls)
    except ConfigError as exc:
        print(f"herald: {exc}", file=sys.stderr)
        return 2
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
            trio.run(_run, config, engine, manager, demo)
        except ConfigError as exc:
            print(f"herald: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"herald: cannot listen on {config.listen_host}:{config.listen_port}: "
                  f"{exc.strerror}. Is another Herald running? Use --listen HOST:PORT.",
                  file=sys.stderr)
            return 1
    finally:
        keyed.close()
    print("Herald stopped.", flush=True)
    return 0


def describe_keys(statuses: list[TenantKeyStatus]) -> str:
    if not statuses:
        return "Keys: no tenants yet."
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status.state] = counts.get(status.state, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    return f"Keys: tenants {summary} (herald keys status shows each)."


class EarlyRefresh:
    """Wakes the key refresh at once when a record names an epoch this server has not
    installed: `herald keys rotate` in another process re-seals conversations and members
    under its new epoch at once, and without this the server could not read them until its
    next refresh (up to 5 s of refused sends). A keyring missing listener: called from any
    thread, once per (tenant, epoch) at most, so that a tenant whose keys the escrow refuses
    does not make the server ask it again and again."""

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._asked: set[tuple[bytes, int]] = set()
        self.wanted = trio.Event()

    def __call__(self, tenant: bytes, epoch: int) -> None:
        if (tenant, epoch) in self._asked:
            return
        self._asked.add((tenant, epoch))
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._wake)

    def _wake(self) -> None:
        self.wanted.set()


async def _refresh_keys(
    manager: KeyManager, interval_s: float, early: EarlyRefresh | None = None
) -> None:
    """Pick up tenants and epochs added by other processes, and ask the escrow again before
    DEKs expire (KeyManager.refresh), every `interval_s` or as soon as `early` asks; the
    escrow calls block, so they run in a thread."""
    last: dict[int, str] = {s.tenant: s.state for s in manager.status()}
    while True:
        if early is None:
            await trio.sleep(interval_s)
        else:
            with trio.move_on_after(interval_s):
                await early.wanted.wait()
            if early.wanted.is_set():
                early.wanted = trio.Event()
                log.info("keys: a record names a key epoch this server has not installed "
                         "(added by another process?): refreshing the keys now")
        statuses = await trio.to_thread.run_sync(manager.refresh)
        for status in statuses:
            if last.get(status.tenant) != status.state:
                log.info("tenant=%s keys=%s %s", status.tenant, status.state, status.detail)
                last[status.tenant] = status.state


async def _run(config: Config, engine: Engine, manager: KeyManager, demo: bool) -> None:
    server = Server(config, engine)
    interval_s = min(KEY_REFRESH_MAX_INTERVAL_S, config.escrow.cache_lifetime_s / 4)
    early = EarlyRefresh()
    if engine.keyring is not None:
        engine.keyring.add_missing_listener(early)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as keys:
            keys.start_soon(_refresh_keys, manager, interval_s, early)
            if config.keys.reseal_messages:
                resealer = MessageResealer(
                    engine, batch_blocks=config.keys.reseal_batch_blocks,
                    pause_s=config.keys.reseal_pause_s, check_interval_s=interval_s)
                keys.start_soon(resealer.run)
            await _serve_until_signal(config, server, signals, demo)
            keys.cancel_scope.cancel()


async def _serve_until_signal(
    config: Config, server: Server, signals: Any, demo: bool
) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)
        url = config.url_for_port(port)
        print(f"Herald is listening at {url}", flush=True)
        trust = " --ca CA_FILE" if config.tls.enabled else ""
        who = "--tenant demo --login alice" if demo else "--tenant TENANT --login LOGIN"
        print(f"Chat from another terminal: .venv/bin/herald chat --url {url}{trust} {who}",
              flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        async for signum in signals:
            log.info("signal=%s: stopping", signal.Signals(signum).name)
            server.request_stop()
            break
