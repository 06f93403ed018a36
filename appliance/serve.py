"""`herald serve`: open the store, say what it holds and where clients will reach it, run."""

from __future__ import annotations

import sys

import trio

from appliance.config import Config
from engine import Engine, HeraldError

__all__ = ["serve"]


def describe_store(engine: Engine) -> str:
    stats = engine.stats()
    return (
        f"{stats['tenants']} tenants, {stats['users']} users, {stats['convs']} conversations, "
        f"{stats['messages']} messages, {stats['map_used_bytes'] / 2**20:.1f} MiB used"
    )


def serve(config: Config) -> int:
    """Run until Ctrl-C or SIGTERM; returns the process exit code."""
    try:
        engine = Engine(config.store_dir, map_size=config.map_size_bytes, limits=config.limits)
    except HeraldError as exc:
        print(f"herald: cannot open the store: {exc.message}", file=sys.stderr)
        return 1
    try:
        print(f"Herald store at {config.store_dir.resolve()}: {describe_store(engine)}", flush=True)
        print(f"Clients will connect at {config.url}. Press Ctrl-C to stop.", flush=True)
        try:
            trio.run(trio.sleep_forever)
        except KeyboardInterrupt:
            print("Stopping.", flush=True)
    finally:
        engine.close()
    return 0
