"""Fanout per commit over a real server and the real writer: every device gets a commit's
messages of a conversation in order, as one joined push; the connection that sent a message
never gets it back, the sender's other devices do; a join past a recipient's outbox cap evicts
that recipient only; and sliced fanouts interleaved with new commits keep per-conversation order.

The batches are made by submitting many operations to the writer at once (no `await` in
between), so they are committed together and fanned out together.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from clients import open_ws, receive_json, request, send_json
from conftest import NOW_MS, PASSWORD
from servers import RunningServer, running_server, seed_org
from trio_websocket import ConnectionClosed, WebSocketConnection

from appliance.gateway.connection import Connection
from engine import Append, CreateGroup, CursorMoved, Engine, MarkRead, RemoveMember


def _group(engine: Engine, ids: dict[str, int], owner: str, *members: str) -> int:
    op = CreateGroup(tenant=ids["tenant"], creator=ids[owner], title="team",
                     members=tuple(ids[m] for m in members))
    return engine.apply(op, NOW_MS).conv  # type: ignore[union-attr, no-any-return]


@asynccontextmanager
async def _devices(
    running: RunningServer, *logins: tuple[str, str]
) -> AsyncIterator[dict[tuple[str, str], WebSocketConnection]]:
    """One logged-in connection per (login, device) pair."""
    async with AsyncExitStack() as stack:
        sockets: dict[tuple[str, str], WebSocketConnection] = {}
        for number, (login, device) in enumerate(logins, start=1):
            ws = await stack.enter_async_context(open_ws(running.port))
            reply = await request(ws, {"op": "login", "id": number, "tenant": "acme",
                                       "login": login, "password": PASSWORD, "device": device})
            assert reply["type"] == "reply" and reply["id"] == number, reply
            sockets[(login, device)] = ws
        yield sockets


def _connection(running: RunningServer, user: int, device: str) -> Connection:
    (conn,) = [c for c in running.server.connections if c.user == user and c.device == device]
    return conn


_CMIDS = itertools.count()


def _ignore(outcome: object) -> None:
    pass


def _submit(running: RunningServer, ids: dict[str, int], conv: int, sender: str, body: str,
            origin: Connection | None = None,
            done: Callable[[object], None] = _ignore) -> None:
    op = Append(tenant=ids["tenant"], conv=conv, sender=ids[sender],
                client_msg_id=f"cmid-{next(_CMIDS)}", body=body)
    running.server.services.writer.submit(op, done, origin=origin)


async def _pushes(ws: WebSocketConnection, n: int) -> list[tuple[int, int, str]]:
    """The next `n` frames, each a message push: (conv, seq, body)."""
    got = []
    for _ in range(n):
        frame = await receive_json(ws)
        assert frame["type"] == "msg", frame
        got.append((frame["conv"], frame["msg"]["seq"], frame["msg"]["body"]))
    return got


async def _nothing_queued(ws: WebSocketConnection) -> None:
    """Nothing was pushed to `ws` before this: the next frame is the answer to a ping (the
    fanout of every commit before it was complete, as the other recipients got theirs)."""
    reply = await request(ws, {"op": "ping", "id": 999})
    assert reply["type"] == "reply" and reply["id"] == 999, reply


async def test_a_commit_of_many_messages_reaches_every_device_in_order_as_one_push(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with running_server(tmp_path / "data") as running:
            ids = seed_org(running.engine, "acme", ["alice", "bob", "carol"])
            group = _group(running.engine, ids, "alice", "bob", "carol")
            devices = [("bob", "phone"), ("bob", "laptop"), ("carol", "phone")]
            async with _devices(running, *devices) as sockets:
                hub = running.server.services.hub
                pushes_before = hub.pushes
                for i in range(40):
                    _submit(running, ids, group, "alice", f"burst {i:02}")
                expected = [(group, i + 2, f"burst {i:02}") for i in range(40)]
                for device in devices:
                    assert await _pushes(sockets[device], 40) == expected, device
                assert running.server.services.writer.batches >= 1
                # One commit: one joined push per device, carrying all 40 frames.
                assert hub.pushes - pushes_before == len(devices)


async def test_the_sending_connection_gets_no_copy_and_the_senders_other_devices_do(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with running_server(tmp_path / "data") as running:
            ids = seed_org(running.engine, "acme", ["alice", "bob"])
            group = _group(running.engine, ids, "alice", "bob")
            async with _devices(running, ("alice", "phone"), ("alice", "laptop"),
                                ("bob", "phone")) as sockets:
                phone = _connection(running, ids["alice"], "phone")
                bob = _connection(running, ids["bob"], "phone")
                # One commit: messages from alice's phone and bob's phone, interleaved, and
                # a read mark made on alice's phone.
                for i in range(10):
                    sender, origin = ("alice", phone) if i % 3 else ("bob", bob)
                    _submit(running, ids, group, sender, f"{sender} {i}", origin)
                marked: list[object] = []
                running.server.services.writer.submit(
                    MarkRead(tenant=ids["tenant"], user=ids["alice"], conv=group, seq=3),
                    marked.append, origin=phone)
                everything = [(group, i + 2, f"{'alice' if i % 3 else 'bob'} {i}")
                              for i in range(10)]
                laptop = sockets[("alice", "laptop")]
                assert await _pushes(laptop, 10) == everything
                (cursor,) = marked
                assert isinstance(cursor, CursorMoved) and cursor.read >= 3
                assert await receive_json(laptop) == {"type": "read", "conv": group,
                                                      "read": cursor.read}
                from_alice = [m for m in everything if m[2].startswith("alice")]
                from_bob = [m for m in everything if m[2].startswith("bob")]
                assert (len(from_alice), len(from_bob)) == (6, 4)
                assert await _pushes(sockets[("bob", "phone")], 6) == from_alice
                assert await _pushes(sockets[("alice", "phone")], 4) == from_bob
                await _nothing_queued(sockets[("alice", "phone")])
                await _nothing_queued(sockets[("bob", "phone")])
                await _nothing_queued(laptop)


async def test_messages_sent_over_one_connection_reach_only_the_users_other_connections(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with running_server(tmp_path / "data") as running:
            ids = seed_org(running.engine, "acme", ["alice", "bob"])
            group = _group(running.engine, ids, "alice", "bob")
            async with _devices(running, ("alice", "phone"), ("alice", "laptop")) as sockets:
                phone, laptop = sockets[("alice", "phone")], sockets[("alice", "laptop")]
                for i in range(20):  # pipelined: several to a commit
                    await send_json(phone, {"op": "send", "id": 100 + i, "conv": group,
                                            "cmid": f"c{i}", "body": f"from the phone {i}"})
                replies = [await receive_json(phone) for _ in range(20)]
                assert [(r["type"], r["id"], r["data"]["seq"]) for r in replies] == [
                    ("reply", 100 + i, i + 2) for i in range(20)]
                assert await _pushes(laptop, 20) == [
                    (group, i + 2, f"from the phone {i}") for i in range(20)]
                await _nothing_queued(phone)


async def test_a_joined_push_past_the_outbox_cap_evicts_only_that_recipient(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with running_server(tmp_path / "data", outbox_cap_bytes=4096,
                                  reply_max_bytes=2048) as running:
            ids = seed_org(running.engine, "acme", ["alice", "bob", "carol"])
            group = _group(running.engine, ids, "alice", "bob")
            other = _group(running.engine, ids, "alice", "carol")
            async with _devices(running, ("alice", "phone"), ("bob", "phone"),
                                ("carol", "phone")) as sockets:
                alice = _connection(running, ids["alice"], "phone")
                bob = _connection(running, ids["bob"], "phone")
                # One commit. Bob's join is alice's 30 messages: about 6 KB, past the 4 KiB
                # cap, though each frame alone fits. Alice's is bob's one message.
                for i in range(30):
                    _submit(running, ids, group, "alice", f"{i:02} " + "x" * 100, alice)
                _submit(running, ids, group, "bob", "from bob", bob)
                _submit(running, ids, other, "alice", "to carol", alice)
                with pytest.raises(ConnectionClosed) as closed:
                    await receive_json(sockets[("bob", "phone")])
                assert closed.value.reason.code == 1013
                assert await _pushes(sockets[("alice", "phone")], 1) == [
                    (group, 32, "from bob")]
                assert await _pushes(sockets[("carol", "phone")], 1) == [
                    (other, 2, "to carol")]
                assert running.server.services.hub.evictions == 1
                await _nothing_queued(sockets[("alice", "phone")])
                await _nothing_queued(sockets[("carol", "phone")])


async def test_sliced_fanouts_interleaved_with_new_commits_keep_each_conversations_order(
    tmp_path: Path,
) -> None:
    rounds, per_round = 40, 4
    with trio.fail_after(60):
        async with running_server(tmp_path / "data") as running:
            ids = seed_org(running.engine, "acme", ["alice", "bob", "carol"])
            first = _group(running.engine, ids, "alice", "bob", "carol")
            second = _group(running.engine, ids, "alice", "bob")
            devices = [(login, f"device {n}") for login in ("alice", "bob", "carol")
                       for n in range(3)]
            async with _devices(running, *devices) as sockets:
                hub = running.server.services.hub
                hub.slice_pushes = 1  # a checkpoint after every push: the most interleaving
                writer = running.server.services.writer
                expected: dict[int, int] = {first: 0, second: 0}
                got: dict[tuple[str, str], list[dict[str, Any]]] = {d: [] for d in devices}

                async def collect(device: tuple[str, str], n: int) -> None:
                    for _ in range(n):
                        got[device].append(await receive_json(sockets[device]))

                total = {"alice": 2 * rounds * per_round, "bob": 2 * rounds * per_round,
                         "carol": rounds * per_round}
                async with trio.open_nursery() as nursery:
                    for device in devices:
                        nursery.start_soon(collect, device, total[device[0]])
                    for r in range(rounds):
                        # Wait for this round's commit only: its fanout (one push per slice)
                        # is still going when the next round is submitted and committed.
                        committed = trio.Event()
                        for i in range(per_round):
                            for conv in (first, second):
                                expected[conv] += 1
                                _submit(running, ids, conv, "alice", f"{conv}/{r}/{i}",
                                        done=lambda outcome, c=committed: c.set())
                        await committed.wait()
                assert writer.batches >= rounds
                for device in devices:
                    convs = (first, second) if device[0] != "carol" else (first,)
                    for conv in convs:
                        seqs = [f["msg"]["seq"] for f in got[device] if f["conv"] == conv]
                        assert seqs == list(range(2, expected[conv] + 2)), (device, conv)
                    assert all(f["type"] == "msg" and f["conv"] in convs for f in got[device])


async def test_a_member_removed_in_a_commit_gets_only_the_message_that_says_so(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with running_server(tmp_path / "data") as running:
            ids = seed_org(running.engine, "acme", ["alice", "bob", "carol"])
            group = _group(running.engine, ids, "alice", "bob", "carol")
            async with _devices(running, ("bob", "phone"), ("carol", "phone"),
                                ("carol", "laptop")) as sockets:
                # One commit: a message, carol's removal, another message. The recipients
                # are the members as of the commit: carol is told of her removal, no more.
                _submit(running, ids, group, "alice", "before")
                running.server.services.writer.submit(
                    RemoveMember(tenant=ids["tenant"], actor=ids["alice"], conv=group,
                                 user=ids["carol"]), _ignore)
                _submit(running, ids, group, "alice", "after")
                bob = await _pushes(sockets[("bob", "phone")], 3)
                assert [(conv, seq) for conv, seq, _ in bob] == [(group, 2), (group, 3),
                                                                  (group, 4)]
                assert (bob[0][2], bob[2][2]) == ("before", "after")
                for device in (("carol", "phone"), ("carol", "laptop")):
                    assert await _pushes(sockets[device], 1) == [bob[1]]
                    await _nothing_queued(sockets[device])


async def test_two_tenants_conversation_and_users_of_the_same_ids_get_only_their_own_pushes(
    tmp_path: Path,
) -> None:
    # Ids count per tenant: acme's and globex's group are both conversation 1 and their
    # alice and bob both users 1 and 2. A commit in one reaches the other's nobody.
    with trio.fail_after(30):
        async with running_server(tmp_path / "data") as running:
            acme = seed_org(running.engine, "acme", ["alice", "bob"])
            globex = seed_org(running.engine, "globex", ["alice", "bob"])
            groups = [_group(running.engine, ids, "alice", "bob") for ids in (acme, globex)]
            assert groups[0] == groups[1] and acme["bob"] == globex["bob"]
            async with AsyncExitStack() as stack:
                bobs = {}
                for tenant in ("acme", "globex"):
                    ws = await stack.enter_async_context(open_ws(running.port))
                    reply = await request(ws, {"op": "login", "id": 1, "tenant": tenant,
                                               "login": "bob", "password": PASSWORD})
                    assert reply["type"] == "reply", reply
                    bobs[tenant] = ws
                _submit(running, acme, groups[0], "alice", "for acme")
                assert await _pushes(bobs["acme"], 1) == [(groups[0], 2, "for acme")]
                await _nothing_queued(bobs["globex"])
                _submit(running, globex, groups[1], "alice", "for globex")
                assert await _pushes(bobs["globex"], 1) == [(groups[1], 2, "for globex")]
                await _nothing_queued(bobs["acme"])
