"""A user changes their own password over the wire (op `password`), against a real server,
real sockets and a real store: every other session of the user ends with a `bye`, the asking
connection stays signed in under a fresh token (and is bound to it: ending that session later
closes it), wrong current passwords count in the login backoff, a weak new password is refused,
no one else is touched, and no password or token reaches the log."""

from __future__ import annotations

import base64
import hashlib
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from clients import expect_alive, expect_bye, login, open_ws, request, resume
from conftest import PASSWORD
from servers import RunningServer, running_server, seed_org
from trio_websocket import ConnectionClosed

from appliance.gateway.connection import Connection
from appliance.gateway.writer import wall_clock_ms
from engine import RevokeUserSessions, SessionEnd

NEW_PASSWORD = "my own new password"


@asynccontextmanager
async def two_orgs(tmp_path: Path, **gateway: Any) -> AsyncIterator[
        tuple[RunningServer, dict[str, int], dict[str, int]]]:
    """acme (alice, bob) and globex, whose user is also called alice."""
    async with running_server(tmp_path / "data", **gateway) as running:
        yield (running, seed_org(running.engine, "acme", ["alice", "bob"]),
               seed_org(running.engine, "globex", ["alice"]))


def change(request_id: int, current: str = PASSWORD, new: str = NEW_PASSWORD) -> dict[str, Any]:
    return {"op": "password", "id": request_id, "current": current, "new": new}


def hash_of(token: str) -> bytes:
    return hashlib.sha256(base64.urlsafe_b64decode(token + "=")).digest()


def connection_of(running: RunningServer, token: str) -> Connection:
    (conn,) = [c for c in running.server.connections if c.session == hash_of(token)]
    return conn


async def try_login(port: int, tenant: str, login_name: str, password: str) -> str:
    """The code of the reply to a login on a fresh connection: "ok" or the error's."""
    async with open_ws(port) as ws:
        reply = await request(ws, {"op": "login", "id": 1, "tenant": tenant,
                                   "login": login_name, "password": password})
    return "ok" if reply["type"] == "reply" else str(reply["code"])


async def test_a_change_keeps_the_asking_connection_and_closes_every_other_session(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(30):
        async with two_orgs(tmp_path, session_check_interval_s=0.05) as (running, _, _), \
                AsyncExitStack() as stack:
            port = running.port
            asking, same_token, other_device, bob, globex_alice = [
                await stack.enter_async_context(open_ws(port)) for _ in range(5)]
            old_token = (await login(asking, "acme", "alice"))["token"]
            assert (await resume(same_token, old_token))["type"] == "reply"
            await login(other_device, "acme", "alice")
            await login(bob, "acme", "bob")
            await login(globex_alice, "globex", "alice")

            reply = await request(asking, change(7))
            assert reply["type"] == "reply" and reply["id"] == 7, reply
            new_token = reply["data"]["token"]
            assert new_token != old_token and len(new_token) == 43
            assert reply["data"]["expires_ms"] > wall_clock_ms()
            # The other device, and another connection on the asker's old token, are closed.
            await expect_bye(same_token, "password_changed")
            await expect_bye(other_device, "password_changed")
            # The asker stays, through several sweeps of the session guard.
            sweeps = running.server.services.sessions.sweeps
            while running.server.services.sessions.sweeps < sweeps + 3:
                await trio.sleep(0.01)
            await expect_alive(asking)
            await expect_alive(bob)
            await expect_alive(globex_alice)  # same login, another tenant: untouched

            assert await try_login(port, "acme", "alice", PASSWORD) == "unauthenticated"
            assert await try_login(port, "acme", "alice", NEW_PASSWORD) == "ok"
            assert await try_login(port, "acme", "bob", PASSWORD) == "ok"
            assert await try_login(port, "globex", "alice", PASSWORD) == "ok"
            async with open_ws(port) as ws:
                assert (await resume(ws, old_token))["code"] == "unauthenticated"
            resumed = await stack.enter_async_context(open_ws(port))
            assert (await resume(resumed, new_token))["data"]["token"] == new_token

            # The asker is bound to its new session: logging that session out (from the
            # connection that resumed it) closes the asker as well.
            assert await request(resumed, {"op": "logout", "id": 3}) == {
                "type": "reply", "id": 3, "data": {}}
            await expect_bye(asking, "logged_out")
            assert running.server.services.sessions.closed == 3

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "password changed by the user" in logged
    for secret in (PASSWORD, NEW_PASSWORD, old_token, new_token):
        assert secret not in logged


async def test_a_session_ended_by_another_process_after_a_change_closes_the_asker(
    tmp_path: Path,
) -> None:
    # The sweeper's path: it must look up the asker's NEW session, not the old one.
    with trio.fail_after(30):
        async with two_orgs(tmp_path, session_check_interval_s=0.05) as (running, acme, _), \
                open_ws(running.port) as asking:
            await login(asking, "acme", "alice")
            assert (await request(asking, change(2)))["type"] == "reply"
            await expect_alive(asking)
            running.engine.apply(RevokeUserSessions(tenant=acme["tenant"], user=acme["alice"]),
                                 wall_clock_ms())  # as `herald user revoke-sessions` does
            await expect_bye(asking, "session_revoked")


LOCK_CHILD = """
import sys, lmdb
env = lmdb.open(sys.argv[1], map_size=512 * 2**20, max_dbs=64)
with env.begin(write=True):
    print("locked", flush=True)
    sys.stdin.readline()
"""


async def test_a_sweep_while_the_change_commits_leaves_the_asker_open(tmp_path: Path) -> None:
    # The order that must not close the asker: the change commits, the guard reads the
    # sessions (the old token has ended) and sweeps before the writer's callback rebinds the
    # connection. Another process holds LMDB's write lock, so the change stays in flight
    # while the test sweeps with what such a read returns.
    with trio.fail_after(30):
        async with two_orgs(tmp_path) as (running, _, _), \
                open_ws(running.port) as asking, open_ws(running.port) as other:
            old_token = (await login(asking, "acme", "alice"))["token"]
            await login(other, "acme", "alice")
            conn = connection_of(running, old_token)
            guard = running.server.services.sessions
            child = await trio.lowlevel.open_process(
                [sys.executable, "-c", LOCK_CHILD, str(running.config.store_dir)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            try:
                async with trio.open_nursery() as nursery:
                    assert child.stdout is not None and child.stdin is not None
                    assert (await child.stdout.receive_some(100)).startswith(b"locked")
                    replies: list[dict[str, Any]] = []

                    async def ask() -> None:
                        replies.append(await request(asking, change(5)))

                    nursery.start_soon(ask)
                    while not conn.changing_session:
                        await trio.sleep(0.01)
                    guard.sweep({hash_of(old_token): SessionEnd.PASSWORD_CHANGED}, [conn])
                    assert not conn.closing
                    await child.stdin.send_all(b"go\n")
                assert await child.wait() == 0
            finally:
                if child.returncode is None:
                    child.kill()
                    await child.wait()
            (reply,) = replies
            assert reply["type"] == "reply", reply
            assert conn.session == hash_of(reply["data"]["token"]) and not conn.closing
            # A sweep holding the (stale) old token now finds nothing to close either.
            guard.sweep({hash_of(old_token): SessionEnd.PASSWORD_CHANGED}, [conn])
            await expect_alive(asking)
            await expect_bye(other, "password_changed")


async def test_a_wrong_current_password_is_refused_and_slowed_like_a_login(
    tmp_path: Path,
) -> None:
    now = [wall_clock_ms()]
    with trio.fail_after(30):
        async with two_orgs(tmp_path, clock_ms=lambda: now[0],
                            login_failure_delay_s=0.01) as (running, _, _), \
                open_ws(running.port) as asking, open_ws(running.port) as other:
            backoff = running.server.services.backoff
            token = (await login(asking, "acme", "alice"))["token"]
            await login(other, "acme", "alice")
            delays = []
            for n in range(4):
                delays.append(backoff.delay_s(("acme", "alice"), "127.0.0.1"))
                reply = await request(asking, change(n, current="a wrong guess"))
                assert reply["type"] == "error" and reply["id"] == n, reply
                assert reply["code"] == "wrong_password" and "wrong" in reply["message"]
            assert delays[0] == 0.0 and 0 < delays[1] < delays[2] < delays[3]
            # The failures count against the account's logins from this address too (and
            # from anywhere once several addresses have failed it), not against other accounts.
            assert backoff.delay_s(("acme", "alice"), "127.0.0.1") > delays[3]
            assert backoff.delay_s(("acme", "alice"), "10.9.9.9") == 0.0
            assert backoff.delay_s(("acme", "bob"), "127.0.0.1") == 0.0
            # Nothing changed: the session, the other device, the password.
            await expect_alive(asking)
            await expect_alive(other)
            async with open_ws(running.port) as ws:
                assert (await resume(ws, token))["type"] == "reply"
            assert running.engine.authenticate(running.engine.find_tenant("acme"), "alice",
                                               PASSWORD)
            # The right password still works, and clears the account's score.
            assert (await request(asking, change(9)))["type"] == "reply"
            assert backoff.delay_s(("acme", "alice"), "127.0.0.1") == 0.0


@pytest.mark.parametrize("new", ["short", "", "x" * 1025], ids=["short", "empty", "too_long"])
async def test_a_new_password_the_policy_refuses_gets_weak_password(
    tmp_path: Path, new: str,
) -> None:
    with trio.fail_after(30):
        async with two_orgs(tmp_path) as (running, _, _), open_ws(running.port) as asking:
            await login(asking, "acme", "alice")
            for current in (PASSWORD, "a wrong guess"):  # checked first, whatever the current
                reply = await request(asking, change(4, current=current, new=new))
                assert reply["type"] == "error" and reply["code"] == "weak_password", reply
                assert "password" in reply["message"]
                assert not new or new not in reply["message"]
            assert running.server.services.backoff.delay_s(("acme", "alice"), "x") == 0.0
            await expect_alive(asking)
            assert await try_login(running.port, "acme", "alice", PASSWORD) == "ok"


@pytest.mark.parametrize("frame", [
    {"op": "password", "id": 3},
    {"op": "password", "id": 3, "current": PASSWORD},
    {"op": "password", "id": 3, "new": NEW_PASSWORD},
    {"op": "password", "id": 3, "current": 12345678, "new": NEW_PASSWORD},
    {"op": "password", "id": 3, "current": PASSWORD, "new": ["a", "list"]},
    {"op": "password", "id": 3, "current": None, "new": NEW_PASSWORD},
], ids=["no_fields", "no_new", "no_current", "number", "list", "null"])
async def test_a_malformed_password_frame_gets_bad_frame(
    tmp_path: Path, frame: dict[str, Any],
) -> None:
    with trio.fail_after(30):
        async with two_orgs(tmp_path) as (running, _, _), open_ws(running.port) as asking:
            await login(asking, "acme", "alice")
            reply = await request(asking, frame)
            assert reply["type"] == "error" and reply["id"] == 3, reply
            assert reply["code"] == "bad_frame"
            assert PASSWORD not in reply["message"]
            await expect_alive(asking)
            assert await try_login(running.port, "acme", "alice", PASSWORD) == "ok"


async def test_huge_passwords_are_refused_without_harm(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with two_orgs(tmp_path) as (running, _, _), open_ws(running.port) as asking:
            await login(asking, "acme", "alice")
            huge = "p" * 60_000  # fits in a frame: answered, never hashed
            reply = await request(asking, change(2, current=huge))
            assert reply["code"] == "wrong_password", reply
            assert (await request(asking, change(3, new=huge)))["code"] == "weak_password"
            await expect_alive(asking)
            # Over max_frame_bytes: the WebSocket limit closes the connection, as for any op.
            await asking.send_message(f'{{"op": "password", "id": 4, "current": "{huge * 2}", '
                                      f'"new": "{NEW_PASSWORD}"}}')
            with pytest.raises(ConnectionClosed) as closed:
                await asking.get_message()
            assert closed.value.reason.code == 1009
            assert await try_login(running.port, "acme", "alice", PASSWORD) == "ok"


async def test_before_login_a_password_change_gets_unauthenticated(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with two_orgs(tmp_path) as (running, _, _), open_ws(running.port) as ws:
            reply = await request(ws, change(2))
            assert reply["type"] == "error" and reply["code"] == "unauthenticated", reply
            assert await try_login(running.port, "acme", "alice", PASSWORD) == "ok"

