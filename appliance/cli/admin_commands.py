"""`herald admin ...`: the administrators' commands.

`herald admin add` makes an administrator in the store itself (offline, as `herald user add`
does for now: it is how the first one is made, before any can log in), and `herald admin
passwd` gives one a new password the same way. The others are clients
of a running server's admin API (`DATA_DIR/admin.sock`): `login` keeps the session token in a
file of mode 0600 (`~/.config/herald/admin-token` unless `--token-file` names another), which
`status`, `tenants` and `users` send. Each prints a table, or with `--json` the API's data as
it came; a refusal prints `herald: MESSAGE (CODE)` and exits 1.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from appliance.admin.client import AdminClient, AdminRefused, AdminUnreachable
from appliance.admin.socket_file import ADMIN_SOCKET
from appliance.cli.accounts import cli_actor, read_password, run_keyed
from appliance.cli.unlock import KeyedEngine
from appliance.config import Config
from appliance.gateway.writer import wall_clock_ms
from appliance.protocol.admin_frames import (
    AdminLoginData,
    AdminLoginRequest,
    AdminStatusData,
    AdminStatusRequest,
    AdminTenantsData,
    AdminTenantsRequest,
    AdminUsersData,
    AdminUsersRequest,
)
from engine import (
    AdminRole,
    AdminSessionsEnded,
    Audited,
    CreateAdmin,
    SetAdminPassword,
    WeakPassword,
    check_password_policy,
    hash_password,
)

__all__ = ["DEFAULT_TOKEN_FILE", "add_admin", "admin_login", "admin_status", "admin_tenants",
           "admin_users", "set_admin_password", "token_file"]

DEFAULT_TOKEN_FILE = Path("~/.config/herald/admin-token")
T = TypeVar("T")


def token_file(given: Path | None) -> Path:
    return (given or DEFAULT_TOKEN_FILE).expanduser()


def add_admin(config: Config, login: str, display_name: str, role: str,
              password_stdin: bool) -> int:
    """Make an administrator in the data directory's store (offline)."""
    password = read_password(password_stdin, whose=f"administrator {login!r}")
    try:
        check_password_policy(password)  # before the keys are unwrapped: it is cheap
    except WeakPassword as exc:
        print(f"herald: {exc.message} ({exc.code})", file=sys.stderr)
        return 1

    def action(keyed: KeyedEngine) -> str:
        op = CreateAdmin(login=login, display_name=display_name or login,
                         password_hash=hash_password(password), role=AdminRole(role))
        # Audited: the entry and the new administrator are written together (docs/security.md).
        admin = keyed.engine.apply(Audited(op=op, actor=cli_actor()),
                                   wall_clock_ms()).admin  # type: ignore[union-attr]
        return f"administrator {login!r} created (id {admin}, role {role})"

    return run_keyed(config, action)


def set_admin_password(config: Config, login: str, password_stdin: bool) -> int:
    """Give an administrator a new password (offline, as `add`); all of its sessions end, and
    a running server refuses their tokens from the next request on."""
    password = read_password(password_stdin, whose=f"administrator {login!r}")
    try:
        check_password_policy(password)
    except WeakPassword as exc:
        print(f"herald: {exc.message} ({exc.code})", file=sys.stderr)
        return 1

    def action(keyed: KeyedEngine) -> str:
        engine = keyed.engine
        admin = engine.find_admin(login)
        op = SetAdminPassword(admin=admin, password_hash=hash_password(password))
        ended = engine.apply(Audited(op=op, actor=cli_actor()), wall_clock_ms())
        assert isinstance(ended, AdminSessionsEnded)
        count = len(ended.token_hashes)
        return (f"password of administrator {login!r} changed; {count} "
                f"session{'' if count == 1 else 's'} ended")

    return run_keyed(config, action)


def _client(config: Config) -> AdminClient:
    return AdminClient(config.data_dir / ADMIN_SOCKET)


def _ask(action: Callable[[], T]) -> T | None:
    """`action`'s answer, or None once the refusal or the failure to reach is printed."""
    try:
        return action()
    except AdminRefused as refused:
        print(f"herald: {refused.message} ({refused.code})", file=sys.stderr)
    except AdminUnreachable as exc:
        print(f"herald: {exc}", file=sys.stderr)
    return None


def _read_token(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        print(f"herald: no admin token in {path}: log in first (herald admin login LOGIN)",
              file=sys.stderr)
    except OSError as exc:
        print(f"herald: cannot read the admin token in {path}: {exc.strerror}", file=sys.stderr)
    return None


def _write_token(path: Path, token: str) -> None:
    """Mode 0600 from its creation on (and made so if it existed), in a folder of 0700."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(token + "\n")


def admin_login(config: Config, login: str, password_stdin: bool, token_path: Path) -> int:
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        from appliance.terminal import ask_secret

        password = ask_secret(
            f"Password of administrator {login!r}: ",
            no_terminal="herald: a password is needed and there is no terminal to ask on: "
                        "pass --password-stdin and give it on standard input")
    client = _client(config)
    session = _ask(lambda: client.request(
        AdminLoginRequest(id=client.next_id(), login=login, password=password),
        AdminLoginData))
    if session is None:
        return 1
    try:
        _write_token(token_path, session.token)
    except OSError as exc:
        print(f"herald: cannot keep the token in {token_path}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"logged in as {login!r} ({session.role}) until {_time(session.expires_ms)}; "
          f"token in {token_path}")
    return 0


def _request(config: Config, token_path: Path,
             make: Callable[[int, str], Any], data_type: type[T]) -> T | None:
    token = _read_token(token_path)
    if token is None:
        return None
    client = _client(config)
    return _ask(lambda: client.request(make(client.next_id(), token), data_type))


def _print_json(data: Any) -> None:
    print(msgspec.json.format(msgspec.json.encode(data), indent=2).decode())


def admin_status(config: Config, token_path: Path, as_json: bool) -> int:
    status = _request(config, token_path, lambda i, t: AdminStatusRequest(id=i, token=t),
                      AdminStatusData)
    if status is None:
        return 1
    if as_json:
        _print_json(status)
        return 0
    rows = [
        ("version", status.version), ("store format", str(status.store_format)),
        ("protocol", str(status.protocol)), ("uptime", f"{status.uptime_s:.0f} s"),
        ("connections", str(status.connections)), ("online users", str(status.online_users)),
        ("tenants", str(status.tenants)),
        ("store", f"{status.store_used_bytes / 2**20:.1f} MiB used of a "
                  f"{status.store_map_bytes / 2**30:.1f} GiB map"),
    ]
    print("\n".join(f"{name:<14}{value}" for name, value in rows))
    return 0


def admin_tenants(config: Config, token_path: Path, as_json: bool) -> int:
    listing = _request(config, token_path, lambda i, t: AdminTenantsRequest(id=i, token=t),
                       AdminTenantsData)
    if listing is None:
        return 1
    if as_json:
        _print_json(listing)
        return 0
    print(_table(("ID", "NAME", "CREATED"),
                 [(str(t.id), t.name, _time(t.created_ms)) for t in listing.tenants]))
    return 0


def admin_users(config: Config, token_path: Path, tenant: str, as_json: bool) -> int:
    listing = _request(config, token_path,
                       lambda i, t: AdminUsersRequest(id=i, token=t, tenant=tenant),
                       AdminUsersData)
    if listing is None:
        return 1
    if as_json:
        _print_json(listing)
        return 0
    print(_table(("ID", "LOGIN", "DISPLAY NAME", "STATE"), [
        (str(u.id), u.login, u.display_name, "disabled" if u.disabled else "active")
        for u in listing.users]))
    return 0


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in [header, *rows]]
    return "\n".join(line.rstrip() for line in lines)


def _time(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime(
        "%Y-%m-%d %H:%M UTC")
