"""Sessions on the wire, against a real server, real sockets and a real store: tokens stored
only as hashes; forged, expired and revoked tokens refused; every connection of an ended
session closed with a `bye` saying why (also when the `herald` CLI ends it from another
process); logout of one session or all; the Origin allowlist; login backoff."""

from __future__ import annotations

import base64
import hashlib
import re
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from clients import expect_alive, expect_bye, http_exchange, login, open_ws, request, resume
from conftest import PASSWORD
from servers import RunningServer, running_server, seed_org
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from appliance.gateway.sessions import BYE_MESSAGES
from appliance.gateway.tokens import new_token
from appliance.gateway.writer import wall_clock_ms
from engine import SessionEnd

MAP_SIZE_BYTES = 512 * 2**20  # the test server's; the CLI is given the same


@asynccontextmanager
async def org_server(tmp_path: Path, **gateway: Any) -> AsyncIterator[tuple[RunningServer,
                                                                            dict[str, int]]]:
    async with running_server(tmp_path / "data", **gateway) as running:
        ids = seed_org(running.engine, "acme", ["alice", "bob"])
        yield running, ids


async def herald_cli(running: RunningServer, *args: str, stdin: str = "") -> str:
    """Run `herald ARGS` as a real subprocess on the server's data directory."""
    config = running.config.data_dir.parent / "herald.toml"
    config.write_text(f"[storage]\nmap_size_bytes = {MAP_SIZE_BYTES}\n")
    result = await trio.run_process(
        [sys.executable, "-m", "appliance.cli", *args, "--config", str(config),
         "--data-dir", str(running.config.data_dir), "--tenant", "acme"],
        stdin=stdin.encode(), capture_stdout=True, capture_stderr=True, check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


async def open_sessions(
    stack: AsyncExitStack, port: int, login_name: str, sessions: int, per_session: int,
) -> tuple[list[str], list[WebSocketConnection]]:
    """`sessions` logins, each used by `per_session` connections (the login's own, then
    resumes of its token): the tokens, and every connection."""
    tokens, conns = [], []
    for _ in range(sessions):
        first = await stack.enter_async_context(open_ws(port))
        tokens.append((await login(first, "acme", login_name))["token"])
        conns.append(first)
        for _ in range(per_session - 1):
            ws = await stack.enter_async_context(open_ws(port))
            reply = await resume(ws, tokens[-1])
            assert reply["type"] == "reply", reply
            conns.append(ws)
    return tokens, conns


async def all_closed(conns: list[WebSocketConnection], code: str) -> None:
    async with trio.open_nursery() as nursery:
        for ws in conns:
            nursery.start_soon(expect_bye, ws, code)


# -- storage ----------------------------------------------------------------------------------


async def test_a_token_is_stored_only_as_its_sha256(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with org_server(tmp_path) as (running, _), open_ws(running.port) as ws:
            data = await login(ws, "acme", "alice")
            token = data["token"]
            assert len(token) == 43  # base64url of 32 random bytes, unpadded
            raw = base64.urlsafe_b64decode(token + "=")
            stored = (running.config.store_dir / "data.mdb").read_bytes()
            assert token.encode() not in stored and raw not in stored
            assert hashlib.sha256(raw).digest() in stored
            assert not (running.config.data_dir / "session.key").exists()


async def test_the_old_signing_key_is_retired_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "session.key").write_bytes(b"k" * 32)
    with trio.fail_after(20):
        async with running_server(data):
            assert not (data / "session.key").exists()


# -- refused tokens ---------------------------------------------------------------------------


async def test_forged_expired_and_revoked_tokens_are_refused(tmp_path: Path) -> None:
    now = [wall_clock_ms()]
    with trio.fail_after(20):
        async with org_server(tmp_path, clock_ms=lambda: now[0],
                              session_lifetime_s=60) as (running, ids):
            async with open_ws(running.port) as ws:
                data = await login(ws, "acme", "alice")
            token, expires_ms = data["token"], data["expires_ms"]
            assert expires_ms == now[0] + 60_000
            async with open_ws(running.port) as ws:
                reply = await resume(ws, token)
                # Resuming hands back the same session: same token, same expiry, no write.
                assert reply["data"] == data, reply
            forged, _ = new_token()
            async with open_ws(running.port) as ws:
                assert (await resume(ws, forged))["code"] == "unauthenticated"
            now[0] = expires_ms
            async with open_ws(running.port) as ws:
                assert (await resume(ws, token))["code"] == "unauthenticated"
            now[0] -= 30_000
            async with open_ws(running.port) as ws:
                assert (await resume(ws, token))["type"] == "reply"
            await herald_cli(running, "user", "revoke-sessions", "alice")
            async with open_ws(running.port) as ws:
                reply = await resume(ws, token)
                assert reply["code"] == "unauthenticated", reply
                assert token not in reply["message"]
                assert (await request(ws, {"op": "convs", "id": 2}))["code"] == "unauthenticated"
            assert running.engine.sessions(ids["tenant"], ids["alice"]) == []


async def test_a_connection_whose_session_expires_is_closed_with_session_expired(
    tmp_path: Path,
) -> None:
    now = [wall_clock_ms()]
    with trio.fail_after(20):
        async with org_server(tmp_path, clock_ms=lambda: now[0], session_lifetime_s=60,
                              session_check_interval_s=0.2) as (running, _), \
                open_ws(running.port) as alice, open_ws(running.port) as bob:
            await login(alice, "acme", "alice")
            now[0] += 30_000
            await login(bob, "acme", "bob")
            now[0] += 31_000  # past alice's expiry, not bob's
            await expect_bye(alice, "session_expired")
            await expect_alive(bob)


# -- revocation from another process ----------------------------------------------------------


async def test_a_cli_revoke_closes_all_50_connections_of_the_user_and_no_one_elses(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with org_server(tmp_path) as (running, _), AsyncExitStack() as stack:
            tokens, alices = await open_sessions(stack, running.port, "alice", 5, 10)
            assert len(alices) == 50 and len(set(tokens)) == 5
            _, bobs = await open_sessions(stack, running.port, "bob", 2, 2)
            listing = await herald_cli(running, "user", "sessions", "alice")
            assert len(listing.strip().splitlines()) == 1 + 5
            assert all(token not in listing for token in tokens)

            out = await herald_cli(running, "user", "revoke-sessions", "alice")
            assert "5 sessions of 'alice' ended" in out
            with trio.fail_after(5):
                await all_closed(alices, "session_revoked")
            for n, ws in enumerate(bobs):
                await expect_alive(ws, n)
            for token in tokens:
                async with open_ws(running.port) as ws:
                    assert (await resume(ws, token))["code"] == "unauthenticated"
            async with open_ws(running.port) as ws:  # a password login still works
                await login(ws, "acme", "alice")
            assert running.server.services.sessions.closed == 50


@pytest.mark.parametrize(("command", "reason"), [
    (["passwd", "--password-stdin"], "password_changed"),
    (["disable"], "account_disabled"),
], ids=["passwd", "disable"])
async def test_a_cli_password_change_or_disable_closes_every_connection_of_the_user(
    tmp_path: Path, command: list[str], reason: str,
) -> None:
    new_password = "another fine password"
    with trio.fail_after(60):
        async with org_server(tmp_path) as (running, _), AsyncExitStack() as stack:
            tokens, alices = await open_sessions(stack, running.port, "alice", 2, 3)
            _, bobs = await open_sessions(stack, running.port, "bob", 1, 2)
            await herald_cli(running, "user", command[0], *command[1:], "alice",
                             stdin=new_password + "\n")
            with trio.fail_after(5):
                await all_closed(alices, reason)
            for n, ws in enumerate(bobs):
                await expect_alive(ws, n)
            async with open_ws(running.port) as ws:
                assert (await resume(ws, tokens[0]))["code"] == "unauthenticated"
                old = await request(ws, {"op": "login", "id": 2, "tenant": "acme",
                                         "login": "alice", "password": PASSWORD})
                assert old["code"] == "unauthenticated"
                new = await request(ws, {"op": "login", "id": 3, "tenant": "acme",
                                         "login": "alice", "password": new_password})
                assert new["type"] == ("reply" if reason == "password_changed" else "error")
            if reason == "account_disabled":
                await herald_cli(running, "user", "enable", "alice")
                async with open_ws(running.port) as ws:
                    await login(ws, "acme", "alice")


# -- logout -----------------------------------------------------------------------------------


@pytest.mark.parametrize("everywhere", [False, True], ids=["this_session", "everywhere"])
async def test_logout_ends_this_session_or_with_everywhere_all_of_them(
    tmp_path: Path, everywhere: bool,
) -> None:
    with trio.fail_after(30):
        async with org_server(tmp_path) as (running, _), AsyncExitStack() as stack:
            (token_a, token_b), (a1, a2, b1, _b2) = await open_sessions(
                stack, running.port, "alice", 2, 2)
            (bob,) = (await open_sessions(stack, running.port, "bob", 1, 1))[1]
            frame: dict[str, Any] = {"op": "logout", "id": 5}
            if everywhere:
                frame["everywhere"] = True
            assert await request(a1, frame) == {"type": "reply", "id": 5, "data": {}}
            with pytest.raises(ConnectionClosed) as closed:
                await a1.get_message()
            assert closed.value.reason.code == 1000
            await expect_bye(a2, "logged_out")  # the same session on another connection
            if everywhere:
                await all_closed([b1, _b2], "logged_out")
            else:
                await expect_alive(b1)
            await expect_alive(bob)
            async with open_ws(running.port) as ws:
                assert (await resume(ws, token_a))["code"] == "unauthenticated"
                reply = await resume(ws, token_b, 2)
                assert reply["type"] == ("error" if everywhere else "reply"), reply


# -- Origin -----------------------------------------------------------------------------------

UPGRADE = (
    "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    "Origin: {origin}\r\n\r\n"
)


async def test_a_browser_origin_not_allowed_gets_403_and_an_allowed_one_connects(
    tmp_path: Path,
) -> None:
    allowed = "https://chat.example.com"
    with trio.fail_after(20):
        async with org_server(tmp_path, allowed_origins=(allowed,)) as (running, _):
            for origin in ("https://evil.example.com", "null", "http://chat.example.com"):
                answer = await http_exchange(
                    running.port, UPGRADE.format(port=running.port, origin=origin).encode())
                assert answer.startswith(b"HTTP/1.1 403 "), answer
            stream = await trio.open_tcp_stream("127.0.0.1", running.port)
            async with stream, trio.open_nursery() as nursery:
                ws = await wrap_client_stream(nursery, stream, "127.0.0.1", "/ws",
                                              extra_headers=[(b"Origin", b"https://Chat.example.com")])
                await login(ws, "acme", "alice")
                await ws.aclose()
            async with open_ws(running.port) as ws:  # no Origin: not a browser, allowed
                await login(ws, "acme", "bob")


async def test_with_no_allowed_origins_every_browser_origin_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with org_server(tmp_path) as (running, _):
            answer = await http_exchange(running.port, UPGRADE.format(
                port=running.port, origin=f"http://127.0.0.1:{running.port}").encode())
            assert answer.startswith(b"HTTP/1.1 403 "), answer


# -- login backoff ----------------------------------------------------------------------------


async def test_failed_logins_grow_the_delay_per_account_and_success_resets_it(
    tmp_path: Path,
) -> None:
    now = [wall_clock_ms()]
    with trio.fail_after(30):
        async with org_server(tmp_path, clock_ms=lambda: now[0],
                              login_failure_delay_s=0.01) as (running, _):
            backoff = running.server.services.backoff

            def delay(name: str, address: str = "127.0.0.1") -> float:
                return backoff.delay_s(("acme", name), address)

            delays: dict[str, list[float]] = {"alice": [], "nobody": []}
            async with open_ws(running.port) as ws:
                for n in range(4):
                    for name in delays:  # an existing account and one that does not exist
                        delays[name].append(delay(name))
                        reply = await request(ws, {"op": "login", "id": n, "tenant": "acme",
                                                   "login": name, "password": "wrong guess"})
                        assert reply["code"] == "unauthenticated"
                assert delays["alice"] == delays["nobody"]  # no hint which logins exist
                assert delays["alice"][0] == 0.0
                assert 0 < delays["alice"][1] < delays["alice"][2] < delays["alice"][3]
                # Another account is slowed only by the failures from this address (8, of
                # which 5 are forgiven), and not at all from another address.
                assert 0 < delay("bob") < delay("alice")
                assert delay("bob", "10.1.2.3") == 0.0
                await login(ws, "acme", "alice", request_id=10)
            # Failures from one address do not slow the account from another (only failures
            # from several addresses lock it for all: tests/test_gateway_login_policy.py).
            elsewhere = "10.1.2.3"
            assert delay("nobody", elsewhere) == 0.0
            assert delay("nobody") == delays["nobody"][3] * 2
            assert delay("alice") > 0  # the address keeps its failures: one success buys none
            assert delay("alice") < delay("nobody")  # but alice's own from here are cleared
            now[0] += 3 * 3600 * 1000  # failures decay
            assert delay("nobody") == 0.0 and delay("alice") == 0.0


@pytest.mark.parametrize("reason", list(SessionEnd), ids=lambda r: r.value)
def test_every_way_a_session_ends_is_a_documented_bye_code(reason: SessionEnd) -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    assert re.search(rf"^\| `{reason.value}` \| .* \| close 1008 \|$", doc, flags=re.MULTILINE)
    assert BYE_MESSAGES[reason]


async def test_a_connection_ended_twice_is_closed_and_counted_once(tmp_path: Path) -> None:
    """A sweep can meet a connection that a commit closed while the sweep read the store: the
    second end of it sends no second bye and is not counted (or logged) again."""
    async with org_server(tmp_path) as (running, _), open_ws(running.port) as ws:
        await login(ws, "acme", "alice")
        (conn,) = [c for c in running.server.connections if c.session]
        guard = running.server.services.sessions
        guard.end([conn], SessionEnd.REVOKED)
        guard.end([conn], SessionEnd.REVOKED)
        assert guard.closed == 1
        await expect_bye(ws, "session_revoked")
