"""HeraldClient against a real server over real sockets: chatting, several devices, and a network
that loses acks and pushes, drops connections and restarts the server. In every case each client
must deliver each conversation's messages exactly once, in seq order, and store sends once.
"""

from __future__ import annotations

import ast
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import NOW_MS, PASSWORD
from servers import RunningServer, running_server, seed_org
from wire_tap import open_tap

import appliance.client
from appliance.client import (
    ClientError,
    ClientOptions,
    ConnectionLost,
    ConnectionStatus,
    Disconnected,
    HeraldClient,
    LoginFailed,
    Message,
    Reconnect,
    Reconnected,
    ReconnectFailed,
    ServerUnreachable,
    open_client,
)
from appliance.client.cursors import Cursors, Held, Verdict
from appliance.protocol.frames import PasswordRequest
from engine import Append, CreateGroup, Engine, MessageKind, OpenDirect, RevokeUserSessions

ROOT = Path(__file__).resolve().parent.parent
FAST = ClientOptions(
    reconnect=Reconnect(first_delay_s=0.01, max_delay_s=0.05, max_attempts=100),
    close_timeout_s=1.0,
)
QUIET_S = 0.2  # how long "nothing more arrives" is watched for


def connect(
    url: str, login: str, options: ClientOptions = FAST, password: str = PASSWORD
) -> AbstractAsyncContextManager[HeraldClient]:
    return open_client(url, "acme", login, password, options=options)


async def take(client: HeraldClient, n: int) -> list[Message]:
    return [await client.messages.receive() for _ in range(n)]


async def assert_quiet(*clients: HeraldClient) -> None:
    """Nothing more is delivered: no duplicates, nothing unexpected."""
    with trio.move_on_after(QUIET_S):
        async with trio.open_nursery() as nursery:
            for client in clients:
                async def unexpected(c: HeraldClient = client) -> None:
                    message = await c.messages.receive()
                    raise AssertionError(f"user {c.user} got an unexpected {message}")
                nursery.start_soon(unexpected)


async def wait_until(condition: Callable[[], bool]) -> None:
    while not condition():
        await trio.sleep(0.005)


def texts(engine: Engine, tenant: int, user: int, conv: int) -> list[tuple[int, str, str]]:
    """(seq, body, client_msg_id) of every text message stored in `conv`."""
    page = engine.page_after(tenant, user, conv, 0, 500)
    return [(m.seq, m.body, m.client_msg_id) for m in page.messages if m.kind is MessageKind.TEXT]


def summary(messages: list[Message]) -> list[tuple[int, str, int, str]]:
    return [(m.seq, m.kind, m.sender, m.body) for m in messages]


@asynccontextmanager
async def server_with_org(tmp_path: Path, **gateway: Any) -> AsyncIterator[
    tuple[RunningServer, dict[str, int]]
]:
    async with running_server(tmp_path / "data", **gateway) as running:
        yield running, seed_org(running.engine, "acme", ["alice", "bob", "carol"])


def open_group(engine: Engine, ids: dict[str, int], owner: str, *members: str) -> int:
    op = CreateGroup(tenant=ids["tenant"], creator=ids[owner], title="team",
                     members=tuple(ids[m] for m in members))
    return engine.apply(op, NOW_MS).conv  # type: ignore[union-attr, no-any-return]


# -- chatting ---------------------------------------------------------------------------------


async def test_three_users_chat_in_a_direct_and_a_group_conversation(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with server_with_org(tmp_path) as (running, ids), \
                connect(running.url, "alice") as alice, connect(running.url, "bob") as bob, \
                connect(running.url, "carol") as carol:
            a, b, c = ids["alice"], ids["bob"], ids["carol"]
            assert (alice.user, bob.user, carol.user) == (a, b, c)
            assert alice.display_name == "Alice"

            direct = await alice.open_direct((await alice.lookup("bob")).user)
            sent = await alice.send(direct, "hi bob")
            assert (await bob.send(direct, "hi alice")).seq == 3
            expected = [(1, "system", a, "direct_opened"), (2, "text", a, "hi bob"),
                        (3, "text", b, "hi alice")]
            assert summary(await take(bob, 3)) == expected
            from_ack = await take(alice, 3)
            assert summary(from_ack) == expected
            assert sent == (2, from_ack[1].ts)

            group = await carol.create_group("team", [a, b])
            async with trio.open_nursery() as nursery:
                for client in (alice, bob, carol):
                    async def chat(me: HeraldClient = client) -> None:
                        for i in range(3):
                            await me.send(group, f"{me.display_name} {i}")
                    nursery.start_soon(chat)
            seen = [await take(client, 10) for client in (alice, bob, carol)]
            assert seen[0] == seen[1] == seen[2]
            assert [m.seq for m in seen[0]] == list(range(1, 11))
            assert {m.conv for m in seen[0]} == {group}
            assert summary(seen[0])[0] == (1, "system", c, "group_created")
            assert sorted(m.body for m in seen[0][1:]) == sorted(
                f"{name} {i}" for name in ("Alice", "Bob", "Carol") for i in range(3))
            for name in ("Alice", "Bob", "Carol"):  # each sender's messages in the order sent
                own = [m.body for m in seen[0] if m.body.startswith(name)]
                assert own == [f"{name} {i}" for i in range(3)]
            await assert_quiet(alice, bob, carol)
            assert [client.stats.pulls for client in (alice, bob, carol)] == [0, 0, 0]


async def test_a_user_on_two_devices_gets_the_sends_of_the_other_device(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with server_with_org(tmp_path) as (running, ids), \
                connect(running.url, "alice") as phone, connect(running.url, "alice") as laptop, \
                connect(running.url, "bob") as bob:
            group = await phone.create_group("devices", [ids["bob"]])
            await phone.send(group, "from the phone", cmid="phone-1")
            await laptop.send(group, "from the laptop", cmid="laptop-1")
            await bob.send(group, "from bob")
            for client in (phone, laptop, bob):
                got = await take(client, 4)
                assert [(m.seq, m.body, m.cmid) for m in got] == [
                    (1, "group_created", ""), (2, "from the phone", "phone-1"),
                    (3, "from the laptop", "laptop-1"), (4, "from bob", got[3].cmid)]
                assert [m.sender for m in got] == [ids["alice"]] * 3 + [ids["bob"]]
            await phone.mark_read(group, 4)
            await wait_until(lambda: laptop.read_mark(group) == 4)  # the server's read push
            await assert_quiet(phone, laptop, bob)


async def test_unread_counts_follow_read_marks(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with server_with_org(tmp_path) as (running, ids), \
                connect(running.url, "alice") as alice, connect(running.url, "bob") as bob:
            direct = await alice.open_direct(ids["bob"])
            for i in range(3):
                await alice.send(direct, f"unread {i}")

            async def unread(client: HeraldClient) -> tuple[int, int, int]:
                (conv,) = await client.convs()
                assert conv.conv == direct
                return conv.head, conv.read, conv.unread

            # A new member starts with the "opened" event read; a sender has read its own.
            assert await unread(bob) == (4, 1, 3)
            assert await unread(alice) == (4, 4, 0)
            assert (await bob.mark_read(direct, 3)).read == 3
            assert await unread(bob) == (4, 3, 1)
            assert (await bob.mark_read(direct, 2)).read == 3  # a read mark never moves back
            assert (await bob.mark_read(direct, 99)).read == 4  # nor past the head
            assert await unread(bob) == (4, 4, 0)
            assert bob.read_mark(direct) == 4


async def test_history_pages_back_to_the_first_message(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with server_with_org(tmp_path) as (running, ids), \
                connect(running.url, "alice") as alice, connect(running.url, "bob") as bob:
            group = await alice.create_group("archive", [ids["bob"]])
            async with trio.open_nursery() as nursery:
                for lane in range(4):
                    async def send_lane(lane: int = lane) -> None:
                        for i in range(30):
                            await alice.send(group, f"lane {lane} #{i}")
                    nursery.start_soon(send_lane)

            backwards: list[int] = []
            page = await bob.history(group, limit=25)
            while True:
                seqs = [m.seq for m in page.msgs]
                assert seqs == sorted(seqs) and 0 < len(seqs) <= 25
                backwards = seqs + backwards
                if not page.more:
                    break
                page = await bob.history(group, before=seqs[0], limit=25)
            assert backwards == list(range(1, 122))

            forwards: list[str] = []
            last, more = 0, True
            while more:
                page = await bob.history(group, after=last, limit=50)
                forwards += [m.body for m in page.msgs]
                last, more = page.msgs[-1].seq, page.more
            assert len(forwards) == 121 and forwards[0] == "group_created"
            assert sorted(forwards[1:]) == sorted(f"lane {n} #{i}" for n in range(4)
                                                  for i in range(30))
            # history is not delivery: bob's stream has each message once, all 121
            assert [m.seq for m in await take(bob, 121)] == list(range(1, 122))
            await assert_quiet(bob)


# -- a network that loses things --------------------------------------------------------------


async def test_a_send_whose_ack_is_lost_is_retried_and_stored_once(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with server_with_org(tmp_path) as (running, ids), open_tap(running.port) as tap:
            engine, tenant = running.engine, ids["tenant"]
            op = OpenDirect(tenant=tenant, user=ids["alice"], peer=ids["bob"])
            direct = engine.apply(op, NOW_MS).conv  # type: ignore[union-attr]
            async with connect(tap.url, "alice") as alice, connect(running.url, "bob") as bob:
                tap.swallow()  # the server's ack will never reach alice on this connection
                sent = []
                async with trio.open_nursery() as nursery:
                    async def sending() -> None:
                        sent.append(await alice.send(direct, "exactly once", cmid="once-1"))
                    nursery.start_soon(sending)
                    await wait_until(lambda: bool(texts(engine, tenant, ids["bob"], direct)))
                    assert not sent  # stored, but alice has not heard so
                    tap.cut()
                assert texts(engine, tenant, ids["bob"], direct) == [
                    (sent[0].seq, "exactly once", "once-1")]
                assert (tap.accepted, alice.stats.resumes, alice.stats.send_retries) == (2, 1, 1)
                for client in (alice, bob):
                    (message,) = await take(client, 1)
                    assert (message.seq, message.body, message.cmid) == (2, "exactly once",
                                                                           "once-1")
                await assert_quiet(alice, bob)


async def test_a_gap_in_pushes_is_pulled_before_later_messages_are_delivered(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with server_with_org(tmp_path) as (running, ids), open_tap(running.port) as tap:
            direct = running.engine.apply(OpenDirect(tenant=ids["tenant"], user=ids["alice"],
                                                     peer=ids["bob"]), NOW_MS).conv  # type: ignore[union-attr]
            tap.drop = lambda frame: frame["type"] == "msg" and frame["msg"]["seq"] in (3, 4)
            async with connect(running.url, "alice") as alice, connect(tap.url, "bob") as bob:
                for seq in range(2, 7):
                    await alice.send(direct, f"message {seq}")
                got = await take(bob, 5)
                assert [(m.seq, m.body) for m in got] == [(s, f"message {s}") for s in range(2, 7)]
                assert [frame["msg"]["seq"] for frame in tap.dropped] == [3, 4]
                # Found by the gap (5 after 2), pulled once, with no sync and no reconnect.
                assert (bob.stats.pulls, bob.stats.syncs, bob.stats.sessions) == (1, 0, 1)
                await assert_quiet(bob)


async def test_an_evicted_slow_consumer_catches_up_by_sync_after_reconnecting(
    tmp_path: Path,
) -> None:
    # An outbox of 4 KiB holds one sync reply or history page of 10, not a burst of 60 pushes.
    options = ClientOptions(reconnect=FAST.reconnect, sync_limit=10, page_limit=10)
    with trio.fail_after(30):
        async with server_with_org(
            tmp_path, outbox_cap_bytes=4096, reply_max_bytes=2048
        ) as (running, ids):
            group = open_group(running.engine, ids, "alice", "bob")
            async with connect(running.url, "bob", options) as bob:
                writer = running.server.services.writer
                for i in range(60):  # submitted together: one commit, one burst of pushes
                    writer.submit(Append(tenant=ids["tenant"], conv=group, sender=ids["alice"],
                                         client_msg_id=f"burst-{i}", body=f"burst {i:02} " * 8),
                                  lambda outcome: None)
                got = await take(bob, 60)
                assert [(m.seq, m.body) for m in got] == [
                    (i + 2, f"burst {i:02} " * 8) for i in range(60)]
                assert running.server.services.hub.evictions == 1
                assert bob.stats.sessions == 2 and bob.stats.syncs == 1 and bob.stats.pulls >= 5
                await assert_quiet(bob)
                writer.submit(Append(tenant=ids["tenant"], conv=group, sender=ids["alice"],
                                     client_msg_id="after", body="live again"),
                              lambda outcome: None)
                assert [(m.seq, m.body) for m in await take(bob, 1)] == [(62, "live again")]


async def test_a_client_that_does_not_take_messages_drops_pushes_then_syncs(
    tmp_path: Path,
) -> None:
    options = ClientOptions(reconnect=FAST.reconnect, message_buffer=4, max_pending_pushes=4)
    with trio.fail_after(30):
        async with server_with_org(tmp_path) as (running, ids):
            group = open_group(running.engine, ids, "alice", "bob")
            async with connect(running.url, "alice") as alice, \
                    connect(running.url, "bob", options) as bob:
                for i in range(40):
                    await alice.send(group, f"queued {i}")
                await wait_until(lambda: bob.stats.overflows > 0)
                got = await take(bob, 40)
                assert [(m.seq, m.body) for m in got] == [(i + 2, f"queued {i}") for i in range(40)]
                assert bob.stats.syncs >= 1 and bob.stats.sessions == 1
                await assert_quiet(bob)


async def test_a_token_revoked_during_a_restart_is_refused_and_the_client_logs_in_and_syncs(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"

    async def serve(
        stop: trio.Event, stopped: trio.Event, *, task_status: trio.TaskStatus[RunningServer]
    ) -> None:
        async with running_server(data) as running:
            task_status.started(running)
            await stop.wait()
        stopped.set()  # and its store closed: the next server may open it

    with trio.fail_after(30):
        async with open_tap(None) as tap, trio.open_nursery() as servers:
            first_stop, second_stop, first_stopped = trio.Event(), trio.Event(), trio.Event()
            first: RunningServer = await servers.start(serve, first_stop, first_stopped)
            ids = seed_org(first.engine, "acme", ["alice", "bob"])
            group = open_group(first.engine, ids, "alice", "bob")
            tap.upstream_port = first.port
            async with connect(tap.url, "bob") as bob:
                tap.upstream_port = None  # no server while the first one stops
                first_stop.set()
                await first_stopped.wait()
                assert not bob.connected
                second: RunningServer = await servers.start(serve, second_stop, trio.Event())
                # Sessions survive a restart; an administrator ends bob's while he is away.
                second.engine.apply(RevokeUserSessions(tenant=ids["tenant"], user=ids["bob"]),
                                    NOW_MS)
                for i in range(3):  # stored while bob is away: only a sync can bring them
                    second.engine.apply(Append(tenant=ids["tenant"], conv=group,
                                               sender=ids["alice"], client_msg_id=f"away-{i}",
                                               body=f"away {i}"), NOW_MS)
                tap.upstream_port = second.port
                got = await take(bob, 3)
                assert [(m.seq, m.body) for m in got] == [(2, "away 0"), (3, "away 1"),
                                                          (4, "away 2")]
                assert (bob.stats.resumes_refused, bob.stats.logins, bob.stats.syncs) == (1, 2, 1)
                await assert_quiet(bob)
            second_stop.set()


async def test_a_client_with_a_local_store_resumes_from_its_cursors(tmp_path: Path) -> None:
    options = ClientOptions(reconnect=FAST.reconnect, backlog=2)
    with trio.fail_after(30):
        async with server_with_org(tmp_path) as (running, ids):
            known = open_group(running.engine, ids, "alice", "bob")
            unknown = open_group(running.engine, ids, "alice", "bob")
            for conv, count in ((known, 5), (unknown, 4)):
                for i in range(count):
                    running.engine.apply(Append(tenant=ids["tenant"], conv=conv,
                                                sender=ids["alice"], client_msg_id=f"{conv}-{i}",
                                                body=f"stored {i}"), NOW_MS)
            async with open_client(running.url, "acme", "bob", PASSWORD, cursors={known: 3},
                                   options=options) as bob:
                got = await take(bob, 5)
                # after the cursor for the conversation it knows; the latest `backlog` of the other
                assert sorted((m.conv, m.seq) for m in got) == [
                    (known, 4), (known, 5), (known, 6), (unknown, 4), (unknown, 5)]
                assert [m.seq for m in got if m.conv == known] == [4, 5, 6]
                assert bob.cursors() == {known: 6, unknown: 5}
                await assert_quiet(bob)


async def test_a_silent_connection_is_dropped_by_the_heartbeat(tmp_path: Path) -> None:
    options = ClientOptions(reconnect=FAST.reconnect, heartbeat_s=0.1)
    with trio.fail_after(30):
        async with server_with_org(tmp_path) as (running, ids), open_tap(running.port) as tap:
            group = open_group(running.engine, ids, "alice", "bob")
            async with connect(tap.url, "bob", options) as bob, \
                    connect(running.url, "alice") as alice:
                tap.swallow()  # the server still reads bob, but nothing reaches him: no pongs
                await alice.send(group, "while bob hears nothing")
                await wait_until(lambda: bob.stats.sessions == 2)
                (message,) = await take(bob, 1)  # brought by the sync after reconnecting
                assert (message.seq, message.body) == (2, "while bob hears nothing")
                await assert_quiet(bob)


# -- refusals and giving up -------------------------------------------------------------------


async def test_a_session_ended_by_an_administrator_stops_the_client_instead_of_logging_in(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with server_with_org(tmp_path) as (running, ids), \
                connect(running.url, "alice") as alice, connect(running.url, "bob") as bob:
            # Made on the store directly, as the `herald` CLI would from another process.
            running.engine.apply(RevokeUserSessions(tenant=ids["tenant"], user=ids["alice"]),
                                 NOW_MS)
            with pytest.raises(LoginFailed) as stopped:
                await alice.messages.receive()
            assert stopped.value.code == "session_revoked"
            assert alice.stats.logins == 1  # it did not log back in with its password
            await bob.ping()


NEW_PASSWORD = "alice's own new password"


async def test_a_password_change_keeps_this_client_and_stops_the_users_other_clients(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with server_with_org(tmp_path) as (running, _), open_tap(running.port) as tap, \
                connect(tap.url, "alice") as phone, connect(running.url, "alice") as laptop, \
                connect(running.url, "bob") as bob:
            with pytest.raises(ClientError) as wrong:
                await phone.change_password("not my password", NEW_PASSWORD)
            assert wrong.value.code == "wrong_password"
            with pytest.raises(ClientError) as weak:
                await phone.change_password(PASSWORD, "short")
            assert weak.value.code == "weak_password"
            with pytest.raises(ValueError, match="manages its session"):
                await phone.request(PasswordRequest(id=0, current=PASSWORD, new=NEW_PASSWORD))
            await laptop.ping()  # the refusals changed nothing

            await phone.change_password(PASSWORD, NEW_PASSWORD)
            with pytest.raises(LoginFailed) as stopped:
                await laptop.messages.receive()
            assert stopped.value.code == "password_changed"
            await phone.ping()
            tap.cut()  # the phone reconnects and resumes with the token the change gave it
            await phone.ping()
            assert (phone.stats.logins, phone.stats.resumes, phone.stats.resumes_refused) == (
                1, 1, 0)
            await bob.ping()
            async with connect(running.url, "alice", password=NEW_PASSWORD) as again:
                await again.ping()


async def test_a_password_change_whose_reply_is_lost_logs_in_with_the_new_password(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with server_with_org(tmp_path) as (running, ids), open_tap(running.port) as tap, \
                connect(tap.url, "alice") as alice:
            engine, tenant, user = running.engine, ids["tenant"], ids["alice"]
            (before,) = engine.sessions(tenant, user)
            tap.swallow()  # the server's reply will never reach alice on this connection
            async with trio.open_nursery() as nursery:
                async def changing() -> None:
                    with pytest.raises(ConnectionLost):
                        await alice.change_password(PASSWORD, NEW_PASSWORD)
                nursery.start_soon(changing)
                await wait_until(lambda: engine.sessions(tenant, user)[:1] != [before])
                tap.cut()
            await alice.ping()  # its old token and old password refused, the new one works
            assert (alice.stats.resumes_refused, alice.stats.logins) == (1, 2)
            assert engine.authenticate(tenant, "alice", NEW_PASSWORD) == user


async def test_users_are_looked_up_and_grouped_by_login(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with server_with_org(tmp_path) as (running, ids), \
                connect(running.url, "alice") as alice:
            found = await alice.lookup_many(["carol", "nobody", "bob"])
            assert [(u.user, u.login) for u in found.users] == [
                (ids["carol"], "carol"), (ids["bob"], "bob")]
            assert found.unknown == ["nobody"]
            conv = await alice.create_group("by login", logins=["bob"])
            change = await alice.add_members(conv, logins=["carol"])
            assert change.conv == conv
            members = await alice.members(conv)
            assert sorted(user for user, _ in members.members) == sorted(
                [ids["alice"], ids["bob"], ids["carol"]])
            with pytest.raises(ClientError) as error:
                await alice.create_group("nope", logins=["nobody"])
            assert error.value.code == "not_found"
            assert "'nobody'" in error.value.message


async def test_refusals_carry_the_server_code(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with server_with_org(tmp_path) as (running, ids):
            with pytest.raises(LoginFailed) as refused:
                async with connect(running.url, "alice", password="wrong"):
                    pytest.fail("logged in with a wrong password")
            assert refused.value.code == "unauthenticated"
            group = open_group(running.engine, ids, "alice", "bob")
            async with connect(running.url, "carol") as carol:
                with pytest.raises(ClientError) as error:
                    await carol.send(group, "let me in")
                assert error.value.code == "not_found"  # she may not see alice and bob's group
                with pytest.raises(ClientError) as error:
                    await carol.lookup("nobody")
                assert error.value.code == "not_found"
                await carol.ping()  # still usable after refusals
    with pytest.raises(ValueError, match="not a WebSocket URL"):
        HeraldClient("http://127.0.0.1/ws", "acme", "alice", PASSWORD)
    with pytest.raises(ValueError, match="needs a wss:// URL"):
        HeraldClient("ws://127.0.0.1/ws", "acme", "alice", PASSWORD,
                     ssl_context=ssl.create_default_context())


async def test_users_names_the_ids_of_the_tenant_and_leaves_out_the_rest(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with server_with_org(tmp_path) as (running, ids):
            # Ids count per tenant: globex's erin is its fourth user, an id acme has not.
            other = seed_org(running.engine, "globex", ["dan", "dee", "dot", "erin"])
            async with connect(running.url, "carol") as carol:
                found = await carol.users([ids["bob"], other["erin"], 999_999, ids["bob"],
                                           ids["carol"]])
                assert [(u.user, u.login, u.display_name) for u in found] == [
                    (ids["bob"], "bob", "Bob"), (ids["carol"], "carol", "Carol"),
                ]
                assert await carol.users([]) == []
                with pytest.raises(ClientError) as error:
                    await carol.users(range(1, 502))
                assert error.value.code == "invalid"
                assert "at most 500" in error.value.message


async def test_a_client_gives_up_after_the_allowed_attempts(tmp_path: Path) -> None:
    options = ClientOptions(reconnect=Reconnect(first_delay_s=0.01, max_delay_s=0.02,
                                                max_attempts=3))
    with trio.fail_after(30):
        async with server_with_org(tmp_path) as (running, _), open_tap(running.port) as tap:
            async with connect(tap.url, "alice", options) as alice:
                tap.upstream_port = None
                tap.cut()
                with pytest.raises(ServerUnreachable):
                    await alice.messages.receive()
                with pytest.raises(ServerUnreachable):
                    await alice.ping()
                assert alice.stats.failed_connects == 3 and tap.accepted == 4
            with pytest.raises(ServerUnreachable):
                async with connect(tap.url, "alice", options):
                    pytest.fail("connected to nothing")


async def test_the_application_hears_of_a_lost_connection_each_failed_retry_and_the_return(
    tmp_path: Path,
) -> None:
    heard: list[ConnectionStatus] = []
    with trio.fail_after(30):
        async with server_with_org(tmp_path) as (running, _), open_tap(running.port) as tap, \
                open_client(tap.url, "acme", "alice", PASSWORD, options=FAST,
                            on_status=heard.append) as alice:
            assert heard == []  # the first login is no news
            tap.upstream_port = None  # nothing answers the next attempts
            tap.cut()
            await wait_until(lambda: len(heard) >= 3)
            tap.upstream_port = running.port
            await alice.ping()
            await wait_until(lambda: isinstance(heard[-1], Reconnected))
    lost, *retries, back = heard
    assert isinstance(lost, Disconnected) and lost.reason == "the connection was lost"
    assert retries and all(isinstance(retry, ReconnectFailed) for retry in retries)
    assert isinstance(back, Reconnected)


async def test_with_one_initial_attempt_an_unreachable_server_is_said_at_once_with_why(
    tmp_path: Path,
) -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{probe.getsockname()[1]}/ws"  # closed: nothing listens
    options = ClientOptions(reconnect=Reconnect(initial_attempts=1))
    with trio.fail_after(5), pytest.raises(ServerUnreachable) as unreachable:
        async with open_client(url, "acme", "alice", PASSWORD, options=options):
            pytest.fail("connected to nothing")
    assert str(unreachable.value) == (
        f"cannot connect to {url}: connection refused (is the server running, and on this "
        f"port?)")


# -- the sans-IO parts ------------------------------------------------------------------------


def test_cursors_say_what_is_next_what_is_missing_and_what_was_seen() -> None:
    cursors = Cursors({7: 3}, backlog=2)
    assert [cursors.classify(7, seq) for seq in (3, 4, 6)] == [
        Verdict.DUPLICATE, Verdict.NEXT, Verdict.GAP]
    assert not cursors.advance(7, 5) and cursors.advance(7, 4) and cursors.last(7) == 4
    assert cursors.classify(9, 10) is Verdict.GAP and cursors.last(9) == 8  # backlog of 2
    fresh = Cursors(None, backlog=50)
    assert not fresh.established
    fresh.establish([(1, 12), (2, 0)])
    assert fresh.established and fresh.snapshot() == {1: 12, 2: 0}


def test_held_messages_wait_per_conversation_until_their_deadline() -> None:
    held: Held[str] = Held()
    held.add(1, 5, "five", deadline=2.0)
    held.add(1, 6, "six", deadline=9.0)  # the conversation keeps its first deadline
    held.add(2, 3, "three", deadline=1.0)
    assert held.next_deadline() == (2, 1.0) and held.count == 3
    assert held.take(1, 4) is None and held.take(1, 5) == "five" and held.lowest(1) == 6
    held.release(2, 3)
    assert held.next_deadline() == (1, 2.0) and held.conversations() == [1]
    held.release(1, None)
    assert held.next_deadline() is None and held.count == 0


# -- the package's shape ----------------------------------------------------------------------


def test_the_client_public_surface_is_pinned() -> None:
    assert appliance.client.__all__ == sorted(appliance.client.__all__)
    assert set(appliance.client.__all__) == {
        "CertificateRejected", "ClientClosed", "ClientError", "ClientOptions", "ClientStats",
        "ConnectionLost", "ConnectionStatus", "Disconnected",
        "HeraldClient", "LoginFailed", "Message", "MessageStream", "ProtocolViolation",
        "Reconnect", "ReconnectFailed", "Reconnected", "Sent", "ServerUnreachable",
        "WaitingForKeys", "client_ssl_context", "open_client",
    }


def test_the_client_speaks_only_the_wire_protocol() -> None:
    allowed = {"appliance.client", "appliance.protocol"}
    for path in (ROOT / "appliance" / "client").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert name.split(".")[0] != "engine", (path.name, name)
                if name.startswith("appliance"):
                    assert any(name.startswith(prefix) for prefix in allowed), (path.name, name)
