"""The server's own duties over real sockets: orderly shutdown, keepalive, the login deadline,
slow consumers, and the connection limit."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import trio
from clients import (
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    RawClient,
    close_code,
    login,
    open_ws,
    receive_json,
    request,
    send_json,
)
from conftest import NOW_MS, PASSWORD
from servers import running_server, seed_org
from trio_websocket import ConnectionClosed, WebSocketConnection

from appliance.config import Config, GatewayConfig
from appliance.gateway.server import Server
from appliance.gateway.tokens import new_token
from engine import CreateGroup, CreateSession, Engine, Message


def _group(engine: Engine, tenant: int, creator: int, members: tuple[int, ...]) -> int:
    op = CreateGroup(tenant=tenant, creator=creator, title="team", members=members)
    return engine.apply(op, NOW_MS).conv  # type: ignore[union-attr,no-any-return]


def _timeline(engine: Engine, tenant: int, user: int, conv: int) -> list[Message]:
    """Every stored message of `conv`, page by page."""
    messages: list[Message] = []
    while True:
        after = messages[-1].seq if messages else 0
        page = engine.page_after(tenant, user, conv, after, engine.limits.max_page_messages)
        messages.extend(page.messages)
        if not page.more:
            return messages


async def _roundtrip(sender: WebSocketConnection, receiver: WebSocketConnection, conv: int,
                     n: int) -> None:
    """`sender`'s message is acked and pushed to `receiver`: both connections work."""
    ack = await request(sender, {"op": "send", "id": 500 + n, "conv": conv, "cmid": f"rt{n}",
                                 "body": f"roundtrip {n}"})
    assert ack["type"] == "reply" and ack["id"] == 500 + n, ack
    push = await receive_json(receiver)
    assert push["type"] == "msg" and push["msg"]["seq"] == ack["data"]["seq"], push
    assert push["msg"]["body"] == f"roundtrip {n}"


# -- graceful shutdown -----------------------------------------------------------------------


async def test_shutdown_acks_every_commit_then_says_bye_and_closes_1001(tmp_path: Path) -> None:
    clients, sends_each = 4, 300
    config = Config(
        data_dir=tmp_path / "data", listen_host="127.0.0.1", listen_port=0,
        map_size_bytes=512 * 2**20,
        gateway=dataclasses.replace(GatewayConfig(), login_failure_delay_s=0.05),
    )
    config.data_dir.mkdir()
    engine = Engine(config.store_dir, map_size=config.map_size_bytes, limits=config.limits)
    logins = [f"user{i}" for i in range(clients)]
    ids = seed_org(engine, "acme", logins)
    conv = _group(engine, ids["tenant"], ids["user0"], tuple(ids[name] for name in logins[1:]))
    server = Server(config, engine)
    returned = trio.Event()
    sent: dict[tuple[int, int], tuple[str, str]] = {}  # (user, request id) -> (cmid, body)
    frames: dict[int, list[dict[str, Any]]] = {ids[name]: [] for name in logins}
    close_codes: dict[int, int] = {}
    first_ack = trio.Event()

    async def serve(task_status: trio.TaskStatus[int]) -> None:
        await server.run(task_status=task_status)
        returned.set()

    async def client(name: str, port: int, logged_in: trio.Event) -> None:
        user = ids[name]
        async with open_ws(port) as ws:
            await login(ws, "acme", name)
            logged_in.set()

            async def keep_sending() -> None:
                for n in range(2, sends_each + 2):
                    cmid, body = f"{name}-{n}", f"message {n} from {name}"
                    sent[user, n] = (cmid, body)
                    try:
                        await send_json(ws, {"op": "send", "id": n, "conv": conv, "cmid": cmid,
                                             "body": body})
                    except ConnectionClosed:
                        return
                    await trio.sleep(0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_sending)
                try:
                    while True:
                        frame = await receive_json(ws)
                        frames[user].append(frame)
                        if frame["type"] == "reply":
                            first_ack.set()
                except ConnectionClosed as closed:
                    close_codes[user] = closed.reason.code

    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                port = await nursery.start(serve)
                for name in logins:
                    logged_in = trio.Event()
                    nursery.start_soon(client, name, port, logged_in)
                    await logged_in.wait()
                await first_ack.wait()
                server.request_stop()  # while every client is still sending
                await returned.wait()
                assert server.connections == set()
        # Every client saw a bye, then a close 1001, and nothing after the bye.
        assert close_codes == {ids[name]: 1001 for name in logins}
        for user, seen in frames.items():
            assert seen[-1] == {"type": "bye", "code": "shutdown", "message": seen[-1]["message"]}
            assert all(frame["type"] != "bye" for frame in seen[:-1]), user
        stored = {m.seq: m for m in _timeline(engine, ids["tenant"], ids["user0"], conv)}
        acked: set[int] = set()
        for user, seen in frames.items():
            for frame in seen:
                if frame["type"] == "reply" and frame["id"] != 1:
                    cmid, body = sent[user, frame["id"]]
                    message = stored[frame["data"]["seq"]]  # acked, therefore stored
                    assert (message.sender, message.client_msg_id, message.body) == (
                        user, cmid, body)
                    acked.add(message.seq)
                elif frame["type"] == "error":
                    # Read after the writer stopped: refused, never silently dropped.
                    assert frame["code"] == "engine_closed", frame
                    assert frame["id"] in range(2, sends_each + 2), frame
        # And the other way round: every commit was acked before the close.
        assert acked == {seq for seq, m in stored.items() if m.client_msg_id}
        assert len(acked) < clients * sends_each  # the stop did interrupt the sending
    finally:
        engine.close()


# -- keepalive --------------------------------------------------------------------------------


async def test_a_silent_client_is_pinged_and_dropped_when_it_never_answers(
    tmp_path: Path,
) -> None:
    interval = 0.2
    with trio.fail_after(10):
        async with running_server(tmp_path / "data", ping_interval_s=interval) as running:
            silent = await RawClient.connect(running.port)
            async with silent.stream:
                opened = trio.current_time()
                frame = await silent.receive_frame()
                assert frame == (OP_PING, b"")
                assert trio.current_time() - opened >= interval * 0.9
                # Never answered, never anything sent: the server hangs up, without a close
                # frame (the peer is presumed dead), after about two intervals.
                while frame is not None:
                    assert frame == (OP_PING, b""), frame
                    frame = await silent.receive_frame()
                assert trio.current_time() - opened >= interval * 1.5
            while running.server.connections:
                await trio.sleep(0.01)


async def test_a_client_that_answers_pings_stays_connected_while_silent(tmp_path: Path) -> None:
    interval = 0.2
    with trio.fail_after(10):
        async with running_server(tmp_path / "data", ping_interval_s=interval) as running:
            seed_org(running.engine, "acme", ["alice"])
            async with open_ws(running.port) as ws:  # trio-websocket answers pings itself
                await login(ws, "acme", "alice")
                await trio.sleep(interval * 6)
                assert await request(ws, {"op": "ping", "id": 2}) == {
                    "type": "reply", "id": 2, "data": {}}
            raw = await RawClient.connect(running.port)
            async with raw.stream:
                for _ in range(4):  # answers each ping with a pong, sends nothing else
                    opcode, payload = await raw.receive_frame() or (None, b"")
                    assert opcode == OP_PING
                    await raw.send_frame(0xA, payload)
                await raw.send_json({"op": "ping", "id": 3})
                assert await raw.receive_json() == {"type": "reply", "id": 3, "data": {}}


async def test_a_connection_that_does_not_log_in_is_closed_at_the_login_deadline(
    tmp_path: Path,
) -> None:
    deadline = 0.5
    with trio.fail_after(10):
        async with running_server(tmp_path / "data", login_timeout_s=deadline) as running:
            ids = seed_org(running.engine, "acme", ["alice"])
            token, digest = new_token()
            running.engine.apply(CreateSession(
                tenant=ids["tenant"], user=ids["alice"], token_hash=digest, device="",
                expires_ms=time.time_ns() // 1_000_000 + 3_600_000), NOW_MS)
            opened = trio.current_time()
            async with open_ws(running.port) as anonymous, open_ws(running.port) as member:
                reply = await request(member, {"op": "resume", "id": 1, "token": token})
                assert reply["type"] == "reply", reply
                bye = await receive_json(anonymous)
                assert bye == {"type": "bye", "code": "login_timeout", "message": bye["message"]}
                assert trio.current_time() - opened >= deadline
                try:
                    message = await anonymous.get_message()
                    raise AssertionError(f"expected a close after the bye, got {message!r}")
                except ConnectionClosed as closed:
                    assert closed.reason.code == 1008
                # The logged-in connection is untouched.
                await trio.sleep(deadline)
                assert await request(member, {"op": "ping", "id": 2}) == {
                    "type": "reply", "id": 2, "data": {}}


# -- slow consumers ---------------------------------------------------------------------------


async def test_a_consumer_that_never_reads_is_closed_1013_while_others_keep_receiving(
    tmp_path: Path,
) -> None:
    messages, body = 300, "x" * 8000
    with trio.fail_after(30):
        async with running_server(
            tmp_path / "data", outbox_cap_bytes=64 * 1024, reply_max_bytes=16 * 1024
        ) as running:
            ids = seed_org(running.engine, "acme", ["alice", "bob", "carol"])
            conv = _group(running.engine, ids["tenant"], ids["alice"], (ids["bob"], ids["carol"]))
            stuck = await RawClient.connect(running.port, receive_buffer_bytes=4096)
            async with stuck.stream, open_ws(running.port) as alice, \
                    open_ws(running.port) as carol:
                await stuck.send_json({"op": "login", "id": 1, "tenant": "acme",
                                       "login": "bob", "password": PASSWORD})
                assert (await stuck.receive_json())["type"] == "reply"
                await login(alice, "acme", "alice")
                await login(carol, "acme", "carol")
                # bob stops reading. alice sends, carol reads every push, in order.
                for n in range(messages):
                    ack = await request(alice, {"op": "send", "id": 10 + n, "conv": conv,
                                                "cmid": f"m{n}", "body": body})
                    assert ack["type"] == "reply" and ack["data"]["seq"] == n + 2, ack
                    push = await receive_json(carol)
                    assert push["type"] == "msg" and push["msg"]["seq"] == n + 2
                assert running.server.services.hub.evictions == 1
                # bob, reading at last, finds a stream cut short and closed with 1013.
                pushed = 0
                while True:
                    frame = await stuck.receive_frame()
                    assert frame is not None, "the server hung up before its close frame"
                    if frame[0] != OP_TEXT:
                        break
                    assert json.loads(frame[1])["msg"]["seq"] == pushed + 2  # no frame torn
                    pushed += 1
                assert frame[0] == OP_CLOSE and close_code(frame[1]) == 1013, frame
                assert pushed < messages
                await stuck.send_frame(OP_CLOSE, frame[1][:2])  # nothing after the close
                assert await stuck.receive_frame() is None
                await _roundtrip(alice, carol, conv, 1)


async def test_a_catch_up_larger_than_the_outbox_comes_in_bounded_replies_not_a_close(
    tmp_path: Path,
) -> None:
    """A sync or history reply stops at reply_max_bytes: asking for a lot is not slowness."""
    messages, body = 40, "y" * 8000  # 320 KB missed, five times the outbox
    with trio.fail_after(30):
        async with running_server(
            tmp_path / "data", outbox_cap_bytes=64 * 1024, reply_max_bytes=32 * 1024
        ) as running:
            ids = seed_org(running.engine, "acme", ["alice", "bob"])
            conv = _group(running.engine, ids["tenant"], ids["alice"], (ids["bob"],))
            async with open_ws(running.port) as alice:
                await login(alice, "acme", "alice")
                for n in range(messages):
                    ack = await request(alice, {"op": "send", "id": 10 + n, "conv": conv,
                                                "cmid": f"m{n}", "body": body})
                    assert ack["type"] == "reply", ack
            async with open_ws(running.port) as bob:
                await login(bob, "acme", "bob")
                synced = await request(bob, {"op": "sync", "id": 2, "cursors": {str(conv): 1},
                                             "limit": 500})
                (state,) = synced["data"]["convs"]
                got = [m["seq"] for m in state["msgs"]]
                # The newest that fit in 32 KiB, consecutive up to the head, and `more`.
                assert sum(len(m["body"]) for m in state["msgs"]) <= 32 * 1024
                assert got and got == list(range(messages + 2 - len(got), messages + 2))
                assert state["more"] is True
                # Paging back with history fetches the rest, page by bounded page.
                while got[0] > 1:
                    page = await request(bob, {"op": "history", "id": 3, "conv": conv,
                                               "before": got[0], "limit": 500})
                    msgs = page["data"]["msgs"]
                    assert msgs and msgs[-1]["seq"] == got[0] - 1, page
                    assert sum(len(m["body"]) for m in msgs) <= 32 * 1024
                    assert page["data"]["more"] is (msgs[0]["seq"] > 1)
                    got = [m["seq"] for m in msgs] + got
                assert got == list(range(1, messages + 2))
                assert running.server.services.hub.evictions == 0
                ack = await request(bob, {"op": "send", "id": 4, "conv": conv, "cmid": "b",
                                          "body": "caught up"})
                assert ack["type"] == "reply" and ack["data"]["seq"] == messages + 2, ack


# -- the connection limit ---------------------------------------------------------------------


async def test_a_connection_over_max_connections_is_refused_and_the_rest_keep_working(
    tmp_path: Path,
) -> None:
    with trio.fail_after(20):
        async with running_server(tmp_path / "data", max_connections=2) as running:
            ids = seed_org(running.engine, "acme", ["alice", "bob"])
            conv = _group(running.engine, ids["tenant"], ids["alice"], (ids["bob"],))
            async with open_ws(running.port) as alice:
                async with open_ws(running.port) as bob:
                    await login(alice, "acme", "alice")
                    await login(bob, "acme", "bob")
                    # The third is hung up on before any WebSocket handshake.
                    extra = await trio.open_tcp_stream("127.0.0.1", running.port)
                    async with extra:
                        await extra.send_all(
                            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
                        try:
                            answer = await extra.receive_some(65536)
                        except trio.BrokenResourceError:
                            answer = b""
                        assert answer == b""
                    assert len(running.server.connections) == 2
                    await _roundtrip(alice, bob, conv, 1)
                    await _roundtrip(bob, alice, conv, 2)
                # A place is free again once a connection has gone.
                while len(running.server.connections) > 1:
                    await trio.sleep(0.01)
                async with open_ws(running.port) as again:
                    assert await request(again, {"op": "ping", "id": 1}) == {
                        "type": "reply", "id": 1, "data": {}}


async def test_nothing_follows_the_close_frame_while_the_server_awaits_the_reply(
    tmp_path: Path,
) -> None:
    with trio.fail_after(20):
        async with running_server(tmp_path / "data") as running:
            ids = seed_org(running.engine, "acme", ["alice", "bob"])
            conv = _group(running.engine, ids["tenant"], ids["alice"], (ids["bob"],))
            async with open_ws(running.port) as alice:
                await login(alice, "acme", "alice")
                bob = await RawClient.connect(running.port)
                async with bob.stream:
                    await bob.send_json({"op": "login", "id": 1, "tenant": "acme",
                                         "login": "bob", "password": PASSWORD})
                    assert (await bob.receive_json())["type"] == "reply"
                    await bob.send_json({"op": "logout", "id": 2})
                    assert await bob.receive_json() == {"type": "reply", "id": 2, "data": {}}
                    frame = await bob.receive_frame()
                    assert frame is not None and frame[0] == OP_CLOSE, frame
                    assert close_code(frame[1]) == 1000
                    # bob has not answered the close yet; a message for him is not sent now,
                    # and neither is a request he makes after the close (it is ignored).
                    await bob.send_json({"op": "ping", "id": 3})
                    ack = await request(alice, {"op": "send", "id": 2, "conv": conv,
                                                "cmid": "late", "body": "too late for bob"})
                    assert ack["type"] == "reply", ack
                    await bob.send_frame(OP_CLOSE, frame[1][:2])
                    assert await bob.receive_frame() is None


# -- recalls ---------------------------------------------------------------------------------


async def test_a_recall_hides_the_body_from_every_later_read_and_refuses_a_body_or_a_repeat(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with running_server(tmp_path / "data") as running:
            ids = seed_org(running.engine, "acme", ["alice", "bob", "carol"])
            conv = _group(running.engine, ids["tenant"], ids["alice"], (ids["bob"],))
            async with open_ws(running.port) as alice:
                await login(alice, "acme", "alice")
                sent = await request(alice, {"op": "send", "id": 2, "conv": conv, "cmid": "m1",
                                             "body": "hidden text"})
                seq = sent["data"]["seq"]
                recall = {"op": "send", "id": 3, "conv": conv, "cmid": "r1", "body": "",
                          "kind": "recall", "ref": seq}
                with_body = await request(alice, {**recall, "body": "hidden text?",
                                                  "cmid": "r0"})
                done = await request(alice, recall)
                again = await request(alice, {**recall, "id": 4, "cmid": "r2"})
                added = await request(alice, {"op": "add", "id": 5, "conv": conv,
                                              "users": [ids["carol"]]})
            async with open_ws(running.port) as carol:  # joined after the recall
                await login(carol, "acme", "carol")
                history = await request(carol, {"op": "history", "id": 6, "conv": conv})
                synced = await request(carol, {"op": "sync", "id": 7, "cursors": {str(conv): 0}})

    assert (with_body["type"], with_body["code"]) == ("error", "invalid"), with_body
    assert done["type"] == "reply" and done["data"]["seq"] == seq + 1, done
    assert (again["type"], again["code"]) == ("error", "conflict"), again
    assert added["type"] == "reply", added
    for reply in (history, synced):
        assert "hidden text" not in json.dumps(reply), reply
    (recalled,) = [m for m in history["data"]["msgs"] if m["seq"] == seq]
    assert recalled == {"seq": seq, "sender": ids["alice"], "ts": recalled["ts"], "kind": "text",
                        "body": "", "cmid": "m1", "recalled_by": seq + 1}
