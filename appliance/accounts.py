"""`herald tenant|user|group ...`: account management on the data directory, before the admin
console exists. LMDB allows several processes on one store, so these work while the server runs.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable

from appliance.config import Config
from appliance.writer import wall_clock_ms
from engine import (
    CreateGroup,
    CreateTenant,
    CreateUser,
    Engine,
    HeraldError,
    hash_password,
)

__all__ = ["add_group", "add_tenant", "add_user", "list_tenants", "list_users", "read_password"]


def _open(config: Config) -> Engine:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    return Engine(config.store_dir, map_size=config.map_size_bytes, limits=config.limits)


def read_password(from_stdin: bool) -> str:
    """The new user's password: one line of stdin, or asked twice on the terminal."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password for the new user: ")
    if getpass.getpass("Again: ") != first:
        raise SystemExit("herald: the passwords differ; nothing was created")
    return first


def _run(config: Config, action: Callable[[Engine], str]) -> int:
    try:
        engine = _open(config)
    except HeraldError as exc:
        print(f"herald: cannot open the store in {config.data_dir}: {exc.message}", file=sys.stderr)
        return 1
    try:
        print(action(engine))
    except HeraldError as exc:
        print(f"herald: {exc.message} ({exc.code})", file=sys.stderr)
        return 1
    finally:
        engine.close()
    return 0


def add_tenant(config: Config, name: str) -> int:
    def action(engine: Engine) -> str:
        tenant = engine.apply(CreateTenant(name=name), wall_clock_ms()).tenant  # type: ignore[union-attr]
        return f"tenant {name!r} created (id {tenant})"

    return _run(config, action)


def add_user(config: Config, tenant_name: str, login: str, display_name: str, password: str) -> int:
    def action(engine: Engine) -> str:
        tenant = engine.find_tenant(tenant_name)
        op = CreateUser(tenant=tenant, login=login, display_name=display_name or login,
                        password_hash=hash_password(password))
        user = engine.apply(op, wall_clock_ms()).user  # type: ignore[union-attr]
        return f"user {login!r} created in tenant {tenant_name!r} (id {user})"

    return _run(config, action)


def add_group(
    config: Config, tenant_name: str, title: str, owner: str, members: list[str], open_: bool
) -> int:
    def action(engine: Engine) -> str:
        tenant = engine.find_tenant(tenant_name)
        creator = engine.find_user(tenant, owner)
        ids = tuple(engine.find_user(tenant, login) for login in members)
        op = CreateGroup(tenant=tenant, creator=creator, title=title, members=ids, open=open_)
        conv = engine.apply(op, wall_clock_ms()).conv  # type: ignore[union-attr]
        size = len(set(ids) | {creator})
        return f"group {title!r} created (conversation {conv}) with {size} members"

    return _run(config, action)


def list_tenants(config: Config) -> int:
    def action(engine: Engine) -> str:
        rows = [f"{tenant:>6}  {record.name}" for tenant, record in engine.tenants()]
        if not rows:
            return "no tenants yet: herald tenant add NAME"
        return "\n".join(["    id  name", *rows])

    return _run(config, action)


def list_users(config: Config, tenant_name: str) -> int:
    def action(engine: Engine) -> str:
        tenant = engine.find_tenant(tenant_name)
        rows = [f"{user:>6}  {r.login:<20} {r.display_name}" for user, r in engine.users(tenant)]
        return "\n".join(["    id  login                display name", *rows])

    return _run(config, action)
