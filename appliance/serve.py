"""`herald serve`: open the store, start the server, stop in order on SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys

import trio

from appliance.config import Config
from appliance.demo import ensure_demo
from appliance.server import Server
from appliance.writer import wall_clock_ms
from engine import Engine, HeraldError

__all__ = ["describe_store", "serve"]

log = logging.getLogger("herald")


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
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        engine = Engine(config.store_dir, map_size=config.map_size_bytes, limits=config.limits,
                        message_cache_bytes=config.message_cache_bytes)
    except (HeraldError, OSError) as exc:
        print(f"herald: cannot open the store in {config.data_dir}: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"Herald store at {config.store_dir.resolve()}: {describe_store(engine)}", flush=True)
        if demo:
            created = ensure_demo(engine, config.data_dir, wall_clock_ms())
            if created:
                print(created, flush=True)
        try:
            trio.run(_run, config, engine)
        except OSError as exc:
            print(f"herald: cannot listen on {config.listen_host}:{config.listen_port}: "
                  f"{exc.strerror}. Is another Herald running? Use --listen HOST:PORT.",
                  file=sys.stderr)
            return 1
    finally:
        engine.close()
    print("Herald stopped.", flush=True)
    return 0


async def _run(config: Config, engine: Engine) -> None:
    server = Server(config, engine)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.run)
            url = f"ws://{config.listen_host}:{port}/ws"
            print(f"Herald is listening at {url}", flush=True)
            print(f"Chat from another terminal: .venv/bin/herald chat --url {url} "
                  f"--tenant demo --login alice", flush=True)
            print("Press Ctrl-C to stop.", flush=True)
            async for signum in signals:
                log.info("signal=%s: stopping", signal.Signals(signum).name)
                server.request_stop()
                break
