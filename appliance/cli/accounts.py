"""`herald tenant|user|group ...`: account management on the data directory, before the admin
console exists. LMDB allows several processes on one store, so these work while the server runs:
a running server closes the connections of sessions ended here within its
`session_check_interval_s` (2 s by default).

Every change is an op wrapped in `Audited`, with `cli_actor()` (the OS user who ran the
command) as its actor: its audit entry is written in the change's own transaction.
"""

from __future__ import annotations

import datetime
import getpass
import os
import sys
from collections.abc import Callable

from appliance.cli.unlock import KeyedEngine, open_engine
from appliance.config import Config
from appliance.gateway.writer import wall_clock_ms
from appliance.keys.errors import KeyManagementError
from appliance.terminal import ask_secret
from engine import (
    ActorKind,
    AuditActor,
    Audited,
    CreateGroup,
    CreateTenant,
    CreateUser,
    Engine,
    HeraldError,
    RevokeUserSessions,
    SessionsRevoked,
    SetPassword,
    SetUserDisabled,
    hash_password,
)

__all__ = [
    "add_group",
    "add_tenant",
    "add_user",
    "change_password",
    "cli_actor",
    "list_sessions",
    "list_tenants",
    "list_users",
    "read_password",
    "revoke_sessions",
    "set_disabled",
]


def cli_actor() -> AuditActor:
    """The actor of a change made by an offline command: the system, as `cli:` and the OS user
    who ran it (its uid when the user database has no name for it, as in some containers)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return AuditActor(kind=ActorKind.SYSTEM, name=f"cli:{user}")


def read_password(from_stdin: bool, whose: str = "the new user") -> str:
    """A password: one line of stdin, or asked twice on the terminal."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return ask_secret(
        f"Password for {whose}: ", confirm=True,
        no_terminal="herald: a password is needed and there is no terminal to ask on: pass "
                    "--password-stdin and give it on standard input",
        differ="herald: the passwords differ; nothing was changed",
    )


def run_keyed(config: Config, action: Callable[[KeyedEngine], str]) -> int:
    """Open the data directory's store with its keys, run `action`, print what it returns;
    the exit code (1 with a message saying what to do for any refusal)."""
    try:
        keyed = open_engine(config)
    except HeraldError as exc:
        print(f"herald: cannot open the store in {config.data_dir}: {exc.message}", file=sys.stderr)
        return 1
    except KeyManagementError as exc:
        print(f"herald: {exc.message} ({exc.code})", file=sys.stderr)
        return 1
    try:
        print(action(keyed))
    except (HeraldError, KeyManagementError) as exc:
        print(f"herald: {exc.message} ({exc.code})", file=sys.stderr)
        return 1
    finally:
        keyed.close()
    return 0


def _run(config: Config, action: Callable[[Engine], str]) -> int:
    return run_keyed(config, lambda keyed: action(keyed.engine))


def add_tenant(config: Config, name: str) -> int:
    """Create a tenant and, in a sealed store, its first data key (at the escrow too)."""
    def action(keyed: KeyedEngine) -> str:
        engine = keyed.engine
        actor = cli_actor()
        tenant = engine.apply(Audited(op=CreateTenant(name=name), actor=actor),
                              wall_clock_ms()).tenant  # type: ignore[union-attr]
        if keyed.manager is None:
            return f"tenant {name!r} created (id {tenant})"
        epoch = keyed.manager.rotate(tenant, actor=actor)
        return f"tenant {name!r} created (id {tenant}), its data key at epoch {epoch}"

    return run_keyed(config, action)


def add_user(config: Config, tenant_name: str, login: str, display_name: str, password: str) -> int:
    def action(engine: Engine) -> str:
        tenant = engine.find_tenant(tenant_name)
        op = CreateUser(tenant=tenant, login=login, display_name=display_name or login,
                        password_hash=hash_password(password))
        user = engine.apply(Audited(op=op, actor=cli_actor()), wall_clock_ms()).user  # type: ignore[union-attr]
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
        conv = engine.apply(Audited(op=op, actor=cli_actor()), wall_clock_ms()).conv  # type: ignore[union-attr]
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
        rows = [f"{user:>6}  {r.login:<20} {r.display_name}"
                f"{'  (disabled)' if r.disabled else ''}" for user, r in engine.users(tenant)]
        return "\n".join(["    id  login                display name", *rows])

    return _run(config, action)


def _ended(result: object, login: str) -> str:
    assert isinstance(result, SessionsRevoked)
    count = len(result.token_hashes)
    return f"{count} session{'' if count == 1 else 's'} of {login!r} ended"


def change_password(config: Config, tenant_name: str, login: str, password: str) -> int:
    """Set a new password; every session of the user ends (its devices log in again)."""
    def action(engine: Engine) -> str:
        tenant = engine.find_tenant(tenant_name)
        user = engine.find_user(tenant, login)
        op = SetPassword(tenant=tenant, user=user, password_hash=hash_password(password))
        result = engine.apply(Audited(op=op, actor=cli_actor()), wall_clock_ms())
        return f"password of {login!r} changed; " + _ended(result, login)

    return _run(config, action)


def set_disabled(config: Config, tenant_name: str, login: str, disabled: bool) -> int:
    """Disable a user (ending all of its sessions) or enable it again."""
    def action(engine: Engine) -> str:
        tenant = engine.find_tenant(tenant_name)
        user = engine.find_user(tenant, login)
        op = SetUserDisabled(tenant=tenant, user=user, disabled=disabled)
        result = engine.apply(Audited(op=op, actor=cli_actor()), wall_clock_ms())
        if not disabled:
            return f"user {login!r} enabled; it may log in again"
        return f"user {login!r} disabled; " + _ended(result, login)

    return _run(config, action)


def revoke_sessions(config: Config, tenant_name: str, login: str) -> int:
    """End every session of a user, on all devices."""
    def action(engine: Engine) -> str:
        tenant = engine.find_tenant(tenant_name)
        user = engine.find_user(tenant, login)
        op = RevokeUserSessions(tenant=tenant, user=user)
        return _ended(engine.apply(Audited(op=op, actor=cli_actor()), wall_clock_ms()), login)

    return _run(config, action)


def _when(ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def list_sessions(config: Config, tenant_name: str, login: str) -> int:
    """A user's sessions: an id (the start of the token's hash: not usable to resume), the
    device, when each began and expires."""
    def action(engine: Engine) -> str:
        tenant = engine.find_tenant(tenant_name)
        user = engine.find_user(tenant, login)
        now = wall_clock_ms()
        rows = [
            f"{digest[:6].hex()}  {_when(r.created_ms):<20}  {_when(r.expires_ms):<20}  "
            f"{'(expired) ' if r.expires_ms <= now else ''}{r.device}"
            for digest, r in sorted(engine.sessions(tenant, user), key=lambda e: e[1].created_ms)
        ]
        if not rows:
            return f"{login!r} has no sessions"
        return "\n".join(["id            started               expires               device",
                          *rows])

    return _run(config, action)
