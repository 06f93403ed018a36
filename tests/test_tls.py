"""wss:// over real sockets: certificates verified both ways, plaintext only on loopback, a
peer that does not speak TLS, and the no-await write path (slow consumers, frame integrity,
shutdown) under TLS."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from clients import (
    OP_CLOSE,
    OP_TEXT,
    RawClient,
    close_code,
    http_exchange,
    login,
    receive_json,
    request,
)
from conftest import NOW_MS, PASSWORD
from servers import running_server, seed_org
from tls_certs import CertAuthority
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from appliance.cli.certs import make_self_signed
from appliance.client import (
    CertificateRejected,
    ClientOptions,
    Reconnect,
    client_ssl_context,
    open_client,
)
from appliance.config import Config, ConfigError, TlsConfig, load_config
from appliance.gateway.outbox import Flusher, Outbox
from appliance.gateway.server import Server
from appliance.gateway.tls import TlsChannel, is_loopback, server_context
from engine import CreateGroup, Engine

UPGRADE = (
    "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)
# One attempt only: a certificate failure must come out as itself, not as ServerUnreachable
# after retries (which a wrongly classified failure would produce even with one attempt).
ONE_TRY = ClientOptions(reconnect=Reconnect(max_attempts=1), heartbeat_s=None)


@pytest.fixture
def ca(tmp_path: Path) -> CertAuthority:
    return CertAuthority(tmp_path / "ca")


def _group(engine: Engine, tenant: int, creator: int, members: tuple[int, ...]) -> int:
    op = CreateGroup(tenant=tenant, creator=creator, title="team", members=members)
    return engine.apply(op, NOW_MS).conv  # type: ignore[union-attr,no-any-return]


async def _tls_stream(port: int, context: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname="127.0.0.1")
    await stream.do_handshake()
    return stream


@asynccontextmanager
async def open_wss(port: int, context: ssl.SSLContext) -> AsyncIterator[WebSocketConnection]:
    """trio-websocket over TLS, its stream owned (and always closed) here."""
    stream = await _tls_stream(port, context)
    async with stream, trio.open_nursery() as nursery:
        ws = await wrap_client_stream(nursery, stream, "127.0.0.1", "/ws")
        try:
            yield ws
        finally:
            await ws.aclose()


async def raw_tls_client(port: int, context: ssl.SSLContext,
                         receive_buffer_bytes: int | None = None) -> RawClient:
    """A `RawClient` (bytes in, frames out) over TLS, upgraded to WebSocket."""
    sock = trio.socket.socket()
    if receive_buffer_bytes is not None:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, receive_buffer_bytes)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SSLStream(trio.SocketStream(sock), context, server_hostname="127.0.0.1")
    client = RawClient(stream)  # type: ignore[arg-type]
    await stream.send_all(UPGRADE.format(port=port).encode())
    head = await client._read_head()
    assert head.startswith(b"HTTP/1.1 101 "), head
    return client


# -- chatting over wss:// -------------------------------------------------------------------


async def test_clients_trusting_the_ca_chat_over_wss(tmp_path: Path, ca: CertAuthority) -> None:
    context = client_ssl_context(ca.ca_file)
    with trio.fail_after(30):
        async with running_server(tmp_path / "data", tls=ca.server_tls()) as running:
            assert running.url.startswith("wss://127.0.0.1:")
            ids = seed_org(running.engine, "acme", ["alice", "bob"])
            conv = _group(running.engine, ids["tenant"], ids["alice"], (ids["bob"],))
            async with open_client(running.url, "acme", "alice", PASSWORD, ssl_context=context,
                                   options=ONE_TRY) as alice, \
                    open_client(running.url, "acme", "bob", PASSWORD, ssl_context=context,
                                options=ONE_TRY) as bob:
                sent = await alice.send(conv, "over TLS")
                pushed = await bob.messages.receive()
                assert (pushed.conv, pushed.seq, pushed.body) == (conv, sent.seq, "over TLS")
                assert pushed.sender == ids["alice"]
                page = await bob.history(conv, before=sent.seq + 1)
                assert [m.body for m in page.msgs if m.seq == sent.seq] == ["over TLS"]


async def test_a_tls_1_2_client_is_served_too(tmp_path: Path, ca: CertAuthority) -> None:
    context = client_ssl_context(ca.ca_file)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with trio.fail_after(30):
        async with running_server(tmp_path / "data", tls=ca.server_tls()) as running:
            seed_org(running.engine, "acme", ["alice"])
            async with open_wss(running.port, context) as ws:
                await login(ws, "acme", "alice")
                assert (await request(ws, {"op": "ping", "id": 5}))["id"] == 5


async def _refusal(url: str, context: ssl.SSLContext | None) -> CertificateRejected:
    with pytest.raises(CertificateRejected) as caught:
        async with open_client(url, "acme", "alice", PASSWORD, ssl_context=context,
                               options=ONE_TRY):
            pass
    return caught.value


async def test_a_server_certificate_from_another_ca_fails_the_handshake_clearly(
    tmp_path: Path, ca: CertAuthority,
) -> None:
    stranger = CertAuthority(tmp_path / "other", "Another CA")
    with trio.fail_after(30):
        async with running_server(tmp_path / "data", tls=ca.server_tls()) as running:
            seed_org(running.engine, "acme", ["alice"])
            refusal = await _refusal(running.url, client_ssl_context(stranger.ca_file))
            assert "not trusted" in str(refusal) and "--ca" in str(refusal)
            # The system's trust store does not know a private CA either.
            refusal = await _refusal(running.url, None)
            assert "not trusted" in str(refusal)
            while running.server.connections:  # the server drops them (bounded by fail_after)
                await trio.sleep(0.01)


async def test_a_certificate_for_another_host_or_expired_fails_the_handshake(
    tmp_path: Path, ca: CertAuthority,
) -> None:
    context = client_ssl_context(ca.ca_file)
    for issued, why in ((ca.issue("elsewhere", ("other.example",)), "mismatch"),
                        (ca.issue("old", expired=True), "expired")):
        tls = TlsConfig(cert_file=str(issued.cert_file), key_file=str(issued.key_file))
        with trio.fail_after(30):
            async with running_server(tmp_path / why, tls=tls) as running:
                refusal = await _refusal(running.url, context)
                assert why in str(refusal), refusal


async def test_with_a_client_ca_a_client_needs_a_certificate_from_it(
    tmp_path: Path, ca: CertAuthority,
) -> None:
    clients_ca = CertAuthority(tmp_path / "clients", "Clients CA")
    member = clients_ca.issue("member", client=True)
    outsider = ca.issue("outsider", client=True)  # a valid certificate, from the wrong CA
    tls = ca.server_tls(client_ca_file=str(clients_ca.ca_file))
    with trio.fail_after(30):
        async with running_server(tmp_path / "data", tls=tls) as running:
            seed_org(running.engine, "acme", ["alice"])
            refusal = await _refusal(running.url, client_ssl_context(ca.ca_file))
            assert "refused this client's certificate" in str(refusal), refusal
            refusal = await _refusal(
                running.url, client_ssl_context(ca.ca_file, outsider.cert_file, outsider.key_file))
            assert "refused this client's certificate" in str(refusal), refusal
            context = client_ssl_context(ca.ca_file, member.cert_file, member.key_file)
            async with open_client(running.url, "acme", "alice", PASSWORD, ssl_context=context,
                                   options=ONE_TRY) as alice:
                await alice.ping()


# -- plaintext rules --------------------------------------------------------------------------


def test_plain_ws_is_for_loopback_addresses_only() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.8.9.10", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "192.168.1.2", "herald.lan"]))


def test_a_server_refuses_plain_ws_on_a_network_address(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path, listen_host="0.0.0.0", listen_port=0)
    engine = Engine(tmp_path / "store", map_size=64 * 2**20)
    try:
        with pytest.raises(ConfigError, match=r"refusing plain ws:// on 0\.0\.0\.0.*\[tls\]"):
            Server(config, engine)
    finally:
        engine.close()


def test_herald_serve_refuses_plain_ws_on_a_network_address_before_opening_the_store(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "serve", "--data-dir", str(data),
         "--listen", "0.0.0.0:0"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2, done
    assert "--tls-cert FILE --tls-key FILE" in done.stderr
    assert "herald cert selfsigned" in done.stderr
    assert not data.exists()


async def test_plain_ws_on_a_network_address_is_served_when_forced(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path, listen_host="0.0.0.0", listen_port=0,
                    tls=TlsConfig(allow_plaintext_on_network=True))
    engine = Engine(tmp_path / "store", map_size=64 * 2**20)
    seed_org(engine, "acme", ["alice"])
    server = Server(config, engine)
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                port = await nursery.start(server.run)
                async with open_client(f"ws://127.0.0.1:{port}/ws", "acme", "alice", PASSWORD,
                                       options=ONE_TRY) as alice:
                    await alice.ping()
                server.request_stop()
    finally:
        engine.close()


def test_the_tls_table_is_read_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "herald.toml"
    path.write_text('[tls]\ncert_file = "certs/c.pem"\nkey_file = "/abs/k.pem"\n'
                    'allow_plaintext_on_network = false\n')
    tls = load_config(path).tls
    assert (tls.cert_file, tls.key_file) == (str(tmp_path / "certs/c.pem"), "/abs/k.pem")
    assert load_config(path).url.startswith("wss://")
    path.write_text('[tls]\ncert_file = "c.pem"\n')
    with pytest.raises(ConfigError, match=r"cert_file and tls\.key_file go together"):
        load_config(path)
    path.write_text('[tls]\nallow_plaintext_on_network = "yes"\n')
    with pytest.raises(ConfigError, match="must be true or false"):
        load_config(path)


def test_a_missing_or_mismatched_certificate_stops_the_server_with_a_clear_error(
    tmp_path: Path, ca: CertAuthority,
) -> None:
    one, two = ca.issue("one"), ca.issue("two")
    engine = Engine(tmp_path / "store", map_size=64 * 2**20)
    try:
        missing = TlsConfig(cert_file=str(tmp_path / "nope.pem"), key_file=str(one.key_file))
        with pytest.raises(ConfigError, match=r"cannot read \S+nope\.pem: no such file"):
            Server(Config(data_dir=tmp_path, tls=missing), engine)
        mismatched = TlsConfig(cert_file=str(one.cert_file), key_file=str(two.key_file))
        with pytest.raises(ConfigError, match="must be the certificate's") as caught:
            Server(Config(data_dir=tmp_path, tls=mismatched), engine)
        assert "PRIVATE KEY" not in str(caught.value)
    finally:
        engine.close()


# -- peers that do not speak TLS -------------------------------------------------------------


@pytest.mark.parametrize("garbage", [
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",  # plain ws:// to wss://
    bytes(range(256)) * 4,
    b"\x16\x03\x01\x00\x05hello",  # a TLS record header with nonsense inside
])
async def test_garbage_instead_of_a_client_hello_closes_only_that_connection(
    tmp_path: Path, ca: CertAuthority, caplog: pytest.LogCaptureFixture, garbage: bytes,
) -> None:
    caplog.set_level(logging.INFO, logger="herald.connection")
    context = client_ssl_context(ca.ca_file)
    with trio.fail_after(30):
        async with running_server(tmp_path / "data", tls=ca.server_tls()) as running:
            seed_org(running.engine, "acme", ["alice"])
            async with open_wss(running.port, context) as before:
                await login(before, "acme", "alice")
                answer = await http_exchange(running.port, garbage)
                # At most a TLS alert record (content type 21), never an HTTP or WebSocket byte.
                assert not answer or answer[0] == 21, bytes(answer)
                messages = [r.getMessage() for r in caplog.records]
                assert any("TLS" in m and "closing address=127.0.0.1" in m for m in messages)
                # The connection already open and a new one are unaffected.
                assert (await request(before, {"op": "ping", "id": 7}))["id"] == 7
                async with open_wss(running.port, context) as after:
                    await login(after, "acme", "alice")


# -- the write path under TLS -----------------------------------------------------------------


async def test_a_burst_over_tls_reaches_a_reader_intact_and_closes_a_stalled_one_1013(
    tmp_path: Path, ca: CertAuthority,
) -> None:
    messages = 600  # 600 pushes of ~8 KB: ~5 MB through the sealing write path
    context = client_ssl_context(ca.ca_file)
    with trio.fail_after(60):
        async with running_server(
            tmp_path / "data", tls=ca.server_tls(), outbox_cap_bytes=256 * 1024,
            reply_max_bytes=64 * 1024,
        ) as running:
            ids = seed_org(running.engine, "acme", ["alice", "bob", "carol"])
            conv = _group(running.engine, ids["tenant"], ids["alice"], (ids["bob"], ids["carol"]))
            stuck = await raw_tls_client(running.port, context, receive_buffer_bytes=4096)
            async with stuck.stream, open_wss(running.port, context) as alice, \
                    open_wss(running.port, context) as carol:
                await stuck.send_json({"op": "login", "id": 1, "tenant": "acme",
                                       "login": "bob", "password": PASSWORD})
                assert (await stuck.receive_json())["type"] == "reply"
                await login(alice, "acme", "alice")
                await login(carol, "acme", "carol")
                bodies = [f"{n:05d}" + os.urandom(3000).hex() for n in range(messages)]
                received: list[dict[str, Any]] = []

                async def read_all() -> None:
                    while len(received) < messages:
                        received.append(await receive_json(carol))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read_all)
                    for n in range(0, messages, 20):  # 20 in flight: pushes pile up
                        for k in range(n, n + 20):
                            await alice.send_message(json.dumps(
                                {"op": "send", "id": 10 + k, "conv": conv, "cmid": f"m{k}",
                                 "body": bodies[k]}))
                        for _ in range(20):
                            assert (await receive_json(alice))["type"] == "reply"
                assert [f["msg"]["seq"] for f in received] == list(range(2, messages + 2))
                assert [f["msg"]["body"] for f in received] == bodies
                assert running.server.services.hub.evictions == 1
                # bob, reading at last, finds whole frames, then a close 1013.
                pushed = 0
                while True:
                    frame = await stuck.receive_frame()
                    assert frame is not None, "the server hung up before its close frame"
                    if frame[0] != OP_TEXT:
                        break
                    assert json.loads(frame[1])["msg"]["body"] == bodies[pushed]
                    pushed += 1
                assert frame[0] == OP_CLOSE and close_code(frame[1]) == 1013, frame
                assert pushed < messages


async def test_shutdown_over_tls_says_bye_then_closes_1001(
    tmp_path: Path, ca: CertAuthority,
) -> None:
    context = client_ssl_context(ca.ca_file)
    with trio.fail_after(30):
        async with running_server(tmp_path / "data", tls=ca.server_tls()) as running:
            seed_org(running.engine, "acme", ["alice"])
            async with open_wss(running.port, context) as ws:
                await login(ws, "acme", "alice")
                running.server.request_stop()
                bye = await receive_json(ws)
                assert bye["type"] == "bye" and bye["code"] == "shutdown", bye
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason.code == 1001


async def test_after_the_closing_handshake_the_server_sends_close_notify(
    tmp_path: Path, ca: CertAuthority,
) -> None:
    context = client_ssl_context(ca.ca_file)
    with trio.fail_after(30):
        async with running_server(tmp_path / "data", tls=ca.server_tls()) as running:
            seed_org(running.engine, "acme", ["alice"])
            client = await raw_tls_client(running.port, context)
            async with client.stream:
                await client.send_json({"op": "login", "id": 1, "tenant": "acme",
                                        "login": "alice", "password": PASSWORD})
                assert (await client.receive_json())["type"] == "reply"
                await client.send_frame(OP_CLOSE, (1000).to_bytes(2, "big"))
                frame = await client.receive_frame()
                assert frame is not None and frame[0] == OP_CLOSE, frame
                assert close_code(frame[1]) == 1000
                # A clean TLS end: trio's SSLStream reports EOF without close_notify as
                # BrokenResourceError, and a close_notify as b"".
                assert await client.stream.receive_some(65536) == b""


# -- herald cert selfsigned -------------------------------------------------------------------


async def test_a_self_signed_certificate_serves_wss_to_a_client_that_trusts_it(
    tmp_path: Path,
) -> None:
    made = make_self_signed(tmp_path / "tls", ["herald.example"])
    assert made.key_file.stat().st_mode & 0o777 == 0o600
    assert made.names == ("herald.example", "localhost", "127.0.0.1")
    context = client_ssl_context(made.cert_file)
    context.verify_flags |= ssl.VERIFY_X509_STRICT  # what Python 3.13 does by default
    tls = TlsConfig(cert_file=str(made.cert_file), key_file=str(made.key_file))
    with trio.fail_after(30):
        async with running_server(tmp_path / "data", tls=tls) as running:
            seed_org(running.engine, "acme", ["alice"])
            async with open_client(running.url, "acme", "alice", PASSWORD, ssl_context=context,
                                   options=ONE_TRY) as alice:
                await alice.ping()
    with pytest.raises(FileExistsError):
        make_self_signed(tmp_path / "tls", [])


def test_herald_cert_selfsigned_prints_the_configuration_and_how_to_trust_it(
    tmp_path: Path,
) -> None:
    out = tmp_path / "certs"
    done = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "cert", "selfsigned", "--out", str(out),
         "--host", "chat.acme.lan", "--host", "10.1.2.3"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done
    assert "[tls]" in done.stdout and "--ca" in done.stdout
    assert "chat.acme.lan, 10.1.2.3, localhost, 127.0.0.1" in done.stdout
    assert "PRIVATE KEY" not in done.stdout
    assert (out / "herald-key.pem").stat().st_mode & 0o777 == 0o600
    again = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "cert", "selfsigned", "--out", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert again.returncode == 1 and "exists already" in again.stderr


def test_a_config_without_tls_keeps_its_plain_url(tmp_path: Path) -> None:
    config = dataclasses.replace(Config(), listen_port=8470)
    assert config.url == "ws://127.0.0.1:8470/ws"


# -- the outbox under TLS, on a socket pair ----------------------------------------------------


def _handshake_in_memory(server: TlsChannel, context: ssl.SSLContext
                         ) -> tuple[ssl.SSLObject, ssl.MemoryBIO]:
    """A client SSLObject handshaken with `server` by passing bytes by hand."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    for _ in range(10):
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        assert server.receive(outgoing.read()) == b""
        incoming.write(server.take_output())
    else:
        raise AssertionError("the handshake did not finish")
    assert server.receive(outgoing.read()) == b""  # the client's Finished
    assert server.established
    return client, incoming


def test_the_outbox_cap_counts_unsent_bytes_and_sealed_frames_arrive_whole(
    ca: CertAuthority,
) -> None:
    server = TlsChannel(server_context(ca.server_tls()))
    client, client_in = _handshake_in_memory(server, client_ssl_context(ca.ca_file))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        far = socket.socket()
        far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the
        far.connect(listener.getsockname())                        # window follows it
        near = listener.accept()[0]
    with near, far:
        near.setblocking(False)
        near.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        near.sendall(server.take_output())  # tickets, if any: they precede every record
        cap = 64 * 1024
        outbox = Outbox(near.fileno(), cap, Flusher(), seal=server.seal)
        frames = [os.urandom(1000) for _ in range(2000)]
        accepted = []
        for frame in frames:
            if not outbox.push(frame):
                break
            accepted.append(frame)
            outbox.flush()
            assert outbox.queued_bytes <= cap
        assert cap - len(frames[0]) < outbox.queued_bytes <= cap  # refused only when full
        assert len(accepted) < len(frames)
        outbox.push_final(b"the end")  # drops frames not yet sealed, keeps the ciphertext
        received = bytearray()
        far.setblocking(False)
        while True:
            outbox._blocked = False  # what the drain task does once the socket is writable
            outbox.flush()
            try:
                chunk = far.recv(1 << 20)
            except BlockingIOError:
                if outbox.queued_bytes == 0:
                    break
                continue
            client_in.write(chunk)
            while True:
                try:
                    received += client.read(1 << 20)
                except ssl.SSLWantReadError:
                    break
    # Whole frames, in order, from the first; then the final frame; nothing torn.
    assert bytes(received).endswith(b"the end")
    body = bytes(received[: -len(b"the end")])
    assert len(body) % 1000 == 0 and 0 < len(body) // 1000 <= len(accepted)
    assert body == b"".join(accepted[: len(body) // 1000])
