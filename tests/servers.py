"""A real Herald server on 127.0.0.1 (port 0) inside the test's own Trio loop.

`running_server` starts the full server (listeners, writer, hub) over a real LMDB store in a
temporary directory and stops it in order afterwards. `seed_org` creates a tenant with users
through the engine, every user with the password PASSWORD from conftest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from conftest import _HASH, NOW_MS

from appliance.config import Config, GatewayConfig, TlsConfig
from appliance.gateway.server import Server
from appliance.gateway.writer import wall_clock_ms
from engine import CreateTenant, CreateUser, Engine, Limits


@dataclass
class RunningServer:
    server: Server
    engine: Engine
    url: str
    port: int
    config: Config


@asynccontextmanager
async def running_server(
    data_dir: Path, *, limits: Limits | None = None, tls: TlsConfig | None = None,
    clock_ms: Callable[[], int] = wall_clock_ms, **gateway: Any
) -> AsyncIterator[RunningServer]:
    """Start a server; `gateway` overrides fields of GatewayConfig (e.g. outbox_cap_bytes);
    with `tls`, it serves wss://. `clock_ms` is the server's wall clock (sessions expire by
    it)."""
    gateway.setdefault("login_failure_delay_s", 0.05)
    config = Config(
        data_dir=data_dir, listen_host="127.0.0.1", listen_port=0, map_size_bytes=512 * 2**20,
        limits=limits or Limits(), gateway=dataclasses.replace(GatewayConfig(), **gateway),
        tls=tls or TlsConfig(),
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = Engine(config.store_dir, map_size=config.map_size_bytes, limits=config.limits)
    server = Server(config, engine, clock_ms=clock_ms)
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.run)
            try:
                yield RunningServer(server, engine, config.url_for_port(port), port, config)
            finally:
                server.request_stop()
    finally:
        engine.close()


def seed_org(engine: Engine, name: str, logins: list[str]) -> dict[str, int]:
    """Create tenant `name` and users with these logins; returns {"tenant": id, login: id...}."""
    ids = {"tenant": engine.apply(CreateTenant(name=name), NOW_MS).tenant}  # type: ignore[union-attr]
    for login in logins:
        op = CreateUser(tenant=ids["tenant"], login=login, display_name=login.title(),
                        password_hash=_HASH)
        ids[login] = engine.apply(op, NOW_MS).user  # type: ignore[union-attr]
    return ids
