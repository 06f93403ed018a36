"""`herald chat` and its connection, as staff meet it: a server that is not there, one that
goes away and comes back, one that waits for its keys. Real servers, real processes."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import trio
from conftest import PASSWORD
from escrows import (
    free_port,
    start_escrow_service,
    stop_escrow_service,
    store_behind_a_stopped_escrow,
)
from processes import herald as herald_process
from servers import running_server, seed_org
from tls_certs import CertAuthority

from appliance.client import open_client
from appliance.client.transport import Target, why_unreachable

CONNECT_TIMEOUT_S = 3.0


async def _chat_fails(url: str, *flags: str) -> tuple[int, str, float]:
    """Run `herald chat` against `url` until it exits: (status, stderr, seconds taken)."""
    async with trio.open_nursery() as nursery:
        began = trio.current_time()
        async with herald_process(
            nursery, "chat", "--url", url, "--tenant", "acme", "--login", "alice",
            "--password-stdin", "--connect-timeout", str(CONNECT_TIMEOUT_S), *flags,
        ) as chat:
            await chat.type(PASSWORD)
            await chat.process.wait()
        return chat.process.returncode, chat.err.decode(), trio.current_time() - began


def _resolver_refuses_invalid_names_locally() -> bool:
    """systemd-resolved's stub (127.0.0.53) answers names under .invalid itself (RFC 6761);
    glibc with any other name server sends the query out."""
    try:
        lines = Path("/etc/resolv.conf").read_text().splitlines()
    except OSError:
        return False
    servers = [line.split()[1] for line in lines if line.startswith("nameserver ")]
    return bool(servers) and all(server == "127.0.0.53" for server in servers)


async def test_a_server_that_is_not_there_is_said_at_once_with_the_reason(
    tmp_path: Path,
) -> None:
    port = free_port()  # nothing listens there any more
    url = f"ws://127.0.0.1:{port}/ws"
    with trio.fail_after(30):
        status, err, took = await _chat_fails(url)
    assert status == 1, err
    assert f"herald chat: cannot connect to {url}: connection refused" in err
    assert took < CONNECT_TIMEOUT_S + 5  # the process's start-up, then at once
    assert "Traceback" not in err


async def test_a_host_name_that_cannot_resolve_is_said_and_not_a_traceback() -> None:
    # A label over 63 characters is refused before any lookup: no DNS traffic.
    host = "a" * 64 + ".invalid"
    with trio.fail_after(30):
        status, err, _ = await _chat_fails(f"ws://{host}:8470/ws")
    assert status == 1, err
    assert f"cannot resolve the host name '{host}' (not a valid host name)" in err
    assert "Traceback" not in err


@pytest.mark.skipif(not _resolver_refuses_invalid_names_locally(),
                    reason="this resolver would send a DNS query for a name under .invalid "
                           "(it is not systemd-resolved's stub): no network in tests")
async def test_a_name_under_invalid_is_said_to_not_resolve() -> None:
    with trio.fail_after(30):
        status, err, took = await _chat_fails("ws://herald.invalid:8470/ws")
    assert status == 1 and "cannot resolve the host name 'herald.invalid'" in err, err
    assert took < CONNECT_TIMEOUT_S + 5


async def test_ws_against_a_wss_server_and_wss_against_a_ws_server_say_which_to_use(
    tmp_path: Path,
) -> None:
    authority = CertAuthority(tmp_path / "ca")
    with trio.fail_after(60):
        async with running_server(tmp_path / "tls", tls=authority.server_tls()) as secure, \
                running_server(tmp_path / "plain") as plain:
            plain_at_tls = secure.url.replace("wss://", "ws://")
            status, err, took = await _chat_fails(plain_at_tls)
            assert status == 1, err
            assert (f"cannot connect to {plain_at_tls}: the server closed the connection "
                    f"during the WebSocket handshake (a wss:// server? then use wss://)") in err
            assert took < CONNECT_TIMEOUT_S + 5

            tls_at_plain = plain.url.replace("ws://", "wss://")
            status, err, took = await _chat_fails(tls_at_plain, "--ca",
                                                  str(authority.ca_file))
            assert status == 1, err
            # The server refuses the ClientHello at its first byte: no wait for a timeout.
            assert (f"cannot connect to {tls_at_plain}: the TLS handshake failed "
                    f"(WRONG_VERSION_NUMBER); a plain ws:// server? then use ws://") in err
            assert took < CONNECT_TIMEOUT_S
            assert "Traceback" not in err


async def test_a_lost_server_is_said_and_so_is_its_return_and_the_chat_goes_on(
    tmp_path: Path,
) -> None:
    data, port = tmp_path / "data", free_port()
    serve = ("serve", "--demo", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}")
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery, herald_process(nursery, *serve) as server:
            url = (await server.expect(r"listening at (ws://\S+)")).group(1)
            passwords = dict(re.findall(r"login (\w+)\s+password (\S+)",
                                        (data / "demo-credentials.txt").read_text()))
            async with herald_process(nursery, "chat", "--url", url, "--tenant", "demo",
                                      "--login", "alice", "--password-stdin") as alice:
                await alice.type(passwords["alice"])
                await alice.expect(r"Logged in to demo as Alice Chen")
                await alice.type("/dm bob", "before the crash")
                await alice.expect(r"#\d+ Alice Chen: before the crash$")

                server.process.kill()  # no goodbye: the connection just breaks
                await server.process.wait()
                await alice.expect(r"^! disconnected, reconnecting \(")
                await alice.expect(r"^! still disconnected: connection refused")
                await alice.type("/history", "after the crash")  # wait for the server

                async with herald_process(nursery, *serve) as again:
                    await again.expect(r"listening at ws://")
                    await alice.expect(r"^! reconnected$")
                    await alice.expect(r"#\d+ Alice Chen: after the crash$")
                    await alice.type("/quit")
                    await alice.process.wait()
                    again.process.send_signal(signal.SIGINT)
            assert alice.process.returncode == 0, alice.err.decode()
            assert "Traceback" not in alice.err.decode()
            assert alice.out.decode().count("after the crash") == 1


async def test_a_server_waiting_for_its_keys_is_said_and_the_chat_logs_in_once_they_come(
    tmp_path: Path,
) -> None:
    store = store_behind_a_stopped_escrow(tmp_path, "alice", PASSWORD)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery, herald_process(
            nursery, "serve", "--data-dir", str(store.data), "--listen", "127.0.0.1:0"
        ) as server:
            await server.expect(r"Keys: tenants 1 unavailable")
            url = (await server.expect(r"listening at (ws://\S+)")).group(1)
            async with herald_process(nursery, "chat", "--url", url, "--tenant", "acme",
                                      "--login", "alice", "--password-stdin") as alice:
                await alice.type(PASSWORD)
                await alice.expect(r"^! the server is waiting for its keys; retrying in [\d.]+ s")
                escrow = start_escrow_service(store.files, store.port)
                try:
                    await alice.expect(r"^Logged in to acme as alice")
                    await alice.end_input()
                    await alice.process.wait()
                finally:
                    stop_escrow_service(escrow)
            assert alice.process.returncode == 0, alice.err.decode()
            assert "Traceback" not in alice.err.decode()
            server.process.send_signal(signal.SIGINT)
            await server.expect(r"Herald stopped\.")


async def test_what_another_user_sends_cannot_drive_the_receivers_terminal(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with running_server(tmp_path / "data") as running:
            seed_org(running.engine, "acme", ["alice", "bob"])
            async with open_client(running.url, "acme", "alice", PASSWORD) as alice, \
                    trio.open_nursery() as nursery:
                bob_id = (await alice.lookup("bob")).user
                group = await alice.create_group("\x1b]0;owned\x07Team\u202e", [bob_id])
                async with herald_process(nursery, "chat", "--url", running.url, "--tenant",
                                          "acme", "--login", "bob", "--password-stdin") as bob:
                    await bob.type(PASSWORD)
                    await bob.expect(r"Logged in to acme as Bob")
                    await alice.send(group, "\x1b[31mred\x1b[0m\x0c\x9b2J\r\nforged line")
                    await bob.expect(r"forged line")
                    await bob.end_input()
                shown = bob.out.decode()
                assert "\x1b" not in shown and "\x0c" not in shown and "\x9b" not in shown
                assert "\u202e" not in shown and "\x07" not in shown
                assert r"\x1b]0;owned\x07Team\u202e" in shown  # the title, as its text
                assert r"Alice: \x1b[31mred\x1b[0m\x0c\x9b2J\x0d" in shown
                assert "\n  | forged line" in shown  # the second line cannot pass for a message


@pytest.mark.parametrize(("url", "step", "said"), [
    ("wss://h:1/ws", "tls", "the TLS handshake got no answer within 3 s (a plain ws:// server? "
                            "then use ws://)"),
    ("ws://h:1/ws", "tcp", "no answer from h port 1 within 3 s"),
    ("ws://h:1/ws", "websocket", "the WebSocket handshake got no answer within 3 s"),
])
def test_a_connection_that_gets_no_answer_says_which_step_waited(
    url: str, step: str, said: str,
) -> None:
    assert why_unreachable(trio.TooSlowError(), Target.parse(url), step=step,
                           timeout_s=3.0) == said
