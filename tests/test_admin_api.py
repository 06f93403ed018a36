"""The admin API over its real Unix socket, beside a real gateway: logins, tokens, roles, peers."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from clients import login, open_ws, resume
from conftest import _HASH, NOW_MS, PASSWORD
from servers import RunningServer, running_server, seed_org

from appliance.admin.client import AdminClient, AdminRefused
from appliance.admin.roles import OP_ROLES, may
from appliance.admin.server import AdminServer
from appliance.admin.socket_file import (
    ADMIN_SOCKET,
    AdminSocketError,
    bind_admin_socket,
)
from appliance.cli.serve import admin_api
from appliance.protocol import admin_frames
from appliance.protocol.admin_frames import (
    AdminLoginData,
    AdminLoginRequest,
    AdminRequest,
    AdminStatusData,
    AdminStatusRequest,
    AdminTenantsData,
    AdminTenantsRequest,
    AdminUsersData,
    AdminUsersRequest,
)
from engine import ActorKind, AdminRole, AuditAction, CreateAdmin


@dataclass
class Appliance:
    running: RunningServer
    admin: AdminServer
    client: AdminClient
    socket_path: Path

    async def ask(self, frame: Any, data_type: type[Any]) -> Any:
        return await trio.to_thread.run_sync(self.client.request, frame, data_type)

    async def login(self, login_name: str = "ops", password: str = PASSWORD) -> AdminLoginData:
        frame = AdminLoginRequest(id=1, login=login_name, password=password)
        data: AdminLoginData = await self.ask(frame, AdminLoginData)
        return data


@asynccontextmanager
async def appliance(tmp_path: Path, **gateway: Any) -> AsyncIterator[Appliance]:
    """A gateway and its admin API, with the admins `ops` (operator) and `sec` (security
    officer), and tenant acme with alice and bob."""
    async with running_server(tmp_path / "data", **gateway) as running:
        engine = running.engine
        for login_name, role in (("ops", AdminRole.OPERATOR),
                                 ("sec", AdminRole.SECURITY_OFFICER)):
            engine.apply(CreateAdmin(login=login_name, display_name=login_name.title(),
                                     password_hash=_HASH, role=role), NOW_MS)
        seed_org(engine, "acme", ["alice", "bob"])
        path = running.config.data_dir / ADMIN_SOCKET
        sock = bind_admin_socket(path)
        admin = admin_api(running.config, running.server, engine)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        async with trio.open_nursery() as nursery:
            await nursery.start(admin.serve, listener)
            yield Appliance(running, admin, AdminClient(path, timeout_s=10), path)
            nursery.cancel_scope.cancel()


async def test_an_admin_logs_in_and_reads_status_tenants_and_users(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with appliance(tmp_path) as app:
            session = await app.login()
            assert (session.admin, session.role) == (1, "operator")
            assert len(session.token) == 43
            status = await app.ask(AdminStatusRequest(id=2, token=session.token),
                                   AdminStatusData)
            assert status.tenants == 1 and status.connections == 0
            assert status.store_map_bytes >= status.store_used_bytes > 0
            assert status.store_format == 6 and status.protocol == 1 and status.uptime_s >= 0
            tenants = await app.ask(AdminTenantsRequest(id=3, token=session.token),
                                    AdminTenantsData)
            assert [(t.id, t.name) for t in tenants.tenants] == [(1, "acme")]
            users = await app.ask(AdminUsersRequest(id=4, token=session.token, tenant="acme"),
                                  AdminUsersData)
            assert [(u.login, u.disabled) for u in users.users] == [("alice", False),
                                                                   ("bob", False)]
            with pytest.raises(AdminRefused) as refused:
                await app.ask(AdminUsersRequest(id=5, token=session.token, tenant="nope"),
                              AdminUsersData)
            assert refused.value.code == "not_found"


async def test_a_login_is_durable_and_audited(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with appliance(tmp_path) as app:
            session = await app.login()
            engine = app.running.engine
            entries = engine.audit_entries(action=AuditAction.ADMIN_LOGIN).entries
            assert [(e.actor.kind, e.actor.id, e.target) for e in entries] == [
                (ActorKind.ADMIN, 1, "admin:1")]
            with pytest.raises(AdminRefused):
                await app.login(password="not the password")
            failed = engine.audit_entries(action=AuditAction.ADMIN_LOGIN_FAILED).entries
            assert [(e.target, e.reason) for e in failed] == [("ops", "wrong password")]
            assert engine.admin_session(_token_hash(session.token), NOW_MS).admin == 1


def _token_hash(token: str) -> bytes:
    from appliance.gateway.tokens import token_hash

    return token_hash(token)


async def test_a_wrong_password_is_refused_late_and_later_still_when_repeated(
        tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with appliance(tmp_path, login_failure_delay_s=0.3) as app:
            took = []
            for _ in range(2):
                started = time.monotonic()
                with pytest.raises(AdminRefused) as refused:
                    await app.login(password="not the password")
                took.append(time.monotonic() - started)
                assert refused.value.code == "unauthenticated"
                assert refused.value.message == "wrong login or password"
            assert took[0] >= 0.3
            assert took[1] >= took[0] + 0.2  # the second one waits the backoff first
            with pytest.raises(AdminRefused) as unknown:
                await app.login("nobody")
            assert unknown.value.message == "wrong login or password"


async def test_a_user_token_is_refused_on_the_admin_socket_and_an_admin_token_on_the_gateway(
        tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with appliance(tmp_path) as app:
            async with open_ws(app.running.port) as ws:
                user_token = (await login(ws, "acme", "alice"))["token"]
            with pytest.raises(AdminRefused) as refused:
                await app.ask(AdminStatusRequest(id=1, token=user_token), AdminStatusData)
            assert refused.value.code == "unauthenticated"
            with pytest.raises(AdminRefused) as forged:
                await app.ask(AdminStatusRequest(id=1, token="x" * 43), AdminStatusData)
            assert (forged.value.code, forged.value.message) == (
                refused.value.code, refused.value.message)
            session = await app.login()
            async with open_ws(app.running.port) as ws:
                reply = await resume(ws, session.token)
            assert (reply["type"], reply["code"]) == ("error", "unauthenticated")
            with pytest.raises(AdminRefused):  # and an admin login is no user login
                await app.login("alice")


async def test_a_security_officer_logs_in_with_its_role(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with appliance(tmp_path) as app:
            sec = await app.login("sec")
            assert sec.role == "security_officer"


async def test_the_admin_socket_is_made_0600(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with appliance(tmp_path) as app:
            mode = app.socket_path.stat().st_mode
            assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
            assert app.socket_path.stat().st_uid == os.getuid()


def test_a_stale_socket_is_replaced_and_anything_else_refused(tmp_path: Path) -> None:
    path = tmp_path / ADMIN_SOCKET
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # bound, never listening: nothing answers, as after a crash
    bind_admin_socket(path).close()
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(AdminSocketError, match="is not a socket"):
        bind_admin_socket(path)
    assert path.read_text() == "not a socket"
    path.unlink()
    live = bind_admin_socket(path)
    try:
        with pytest.raises(AdminSocketError, match="answers on"):
            bind_admin_socket(path)
    finally:
        live.close()


# A child that connects as uid 65534 (nobody) and reports what the server answered.
_OTHER_UID_CHILD = """
import os, socket, sys
os.chdir(sys.argv[1])
os.setgid(65534)
os.setuid(65534)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(10)
sock.connect("admin.sock")
try:
    sock.sendall(b'{"id": 1, "op": "login", "login": "ops", "password": "x"}\\n')
    print(repr(sock.recv(1000)))  # b'': closed unanswered
except (ConnectionResetError, BrokenPipeError):
    print("b''")  # closed before it read our line
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="connecting as another uid needs root "
                                              "(os.setuid): run the tests as root to cover it")
async def test_a_peer_of_another_uid_is_closed_at_once_and_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(20):
        async with appliance(tmp_path) as app:
            # As if the file's mode were wrong: the credentials are checked all the same.
            app.socket_path.chmod(0o666)
            app.socket_path.parent.chmod(0o755)
            child = await trio.run_process(
                [sys.executable, "-c", _OTHER_UID_CHILD, str(app.socket_path.parent)],
                capture_stdout=True, capture_stderr=True, check=False)
            assert child.returncode == 0, child.stderr
            assert child.stdout.decode().strip() == "b''"
    assert any("admin connection refused" in r.message and "uid=65534" in r.message
               for r in caplog.records)


async def test_an_op_the_role_may_not_do_is_forbidden_and_audited(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No op of today is the security officer's alone: give one to it, as key ops will be.
    monkeypatch.setitem(OP_ROLES, AdminTenantsRequest, frozenset({AdminRole.SECURITY_OFFICER}))
    with trio.fail_after(20):
        async with appliance(tmp_path) as app:
            ops = await app.login("ops")
            with pytest.raises(AdminRefused) as refused:
                await app.ask(AdminTenantsRequest(id=2, token=ops.token), AdminTenantsData)
            assert (refused.value.code, refused.value.message) == (
                "forbidden", "the role operator may not do this")
            sec = await app.login("sec")
            listing = await app.ask(AdminTenantsRequest(id=3, token=sec.token),
                                    AdminTenantsData)
            assert [t.name for t in listing.tenants] == ["acme"]
            denied = app.running.engine.audit_entries(
                action=AuditAction.PERMISSION_DENIED).entries
            assert [(e.actor.name, e.target, e.reason) for e in denied] == [
                ("ops", "op:tenants", "role operator")]


def _raw_exchange(path: Path, data: bytes) -> list[bytes]:
    """Send `data` on a fresh connection, then read every line until the server closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received.splitlines()


async def test_bad_lines_are_answered_bad_frame_and_an_overlong_one_ends_the_connection(
        tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with appliance(tmp_path) as app:
            answers = await trio.to_thread.run_sync(
                _raw_exchange, app.socket_path,
                b'garbage\n{"id": 5, "op": "nope"}\n\n{"id": 6, "op": "status", '
                b'"token": "bad"}\n')
            decoded = [json.loads(line) for line in answers]
            assert [(a["id"], a["error"]["code"]) for a in decoded] == [
                (None, "bad_frame"), (5, "bad_frame"), (6, "unauthenticated")]
            overlong = await trio.to_thread.run_sync(
                _raw_exchange, app.socket_path,
                b"x" * (admin_frames.MAX_ADMIN_FRAME_BYTES + 1))  # all read before it closes
            assert [json.loads(line)["error"]["code"] for line in overlong] == ["bad_frame"]


def test_every_admin_op_has_a_role_entry_and_a_handler(tmp_path: Path) -> None:
    ops = set(AdminRequest.__args__)  # type: ignore[attr-defined]
    assert ops == set(OP_ROLES), "every admin op needs a line in appliance/admin/roles.py"
    server = AdminServer(store=None, writes=None, login_gate=None, status=None,  # type: ignore[arg-type]
                         clock_ms=lambda: 0, own_uid=0, failure_delay_s=0)
    assert ops - {AdminLoginRequest} == set(server.handlers)
    for op in ops - {AdminLoginRequest}:
        assert OP_ROLES[op], op


def test_an_op_missing_from_the_role_table_is_refused_to_every_role() -> None:
    class NewRequest(admin_frames.AdminStatusRequest, tag="new"):
        pass

    assert not any(may(role, NewRequest) for role in AdminRole)
    assert may(AdminRole.OPERATOR, AdminStatusRequest)
