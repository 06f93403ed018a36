"""Bad input over a real socket: a refusal with a stable code, or a close with the right code.

Every case runs against a gateway where two other clients (alice and bob, in the group `team`)
are logged in. After each case the test checks that nothing stored changed (a snapshot of both
tenants and the store's entry counts) and that the others still work: alice's next message is
acked and pushed to bob, and a new connection is served.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from clients import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_TEXT,
    RawClient,
    close_code,
    http_exchange,
    login,
    open_ws,
    receive_json,
    request,
    send_json,
)
from conftest import NOW_MS, PASSWORD, snapshot
from servers import RunningServer, running_server, seed_org
from trio_websocket import ConnectionClosed, WebSocketConnection

from appliance.gateway.tokens import new_token
from appliance.protocol.frames import CLIENT_OPS, MAX_REQUEST_ID
from engine import Append, CreateGroup, CreateSession, Engine, Limits

# What tenant B (globex) holds; none of it may ever reach a tenant-A session.
FOREIGN_SECRETS = ("globex", "Erin", "Frank", "merger plans", "project falcon")


@dataclass
class Gateway:
    """A running server with two tenants, and alice and bob of acme logged in."""

    running: RunningServer
    acme: dict[str, int]
    globex: dict[str, int]
    team: int  # alice and bob: the conversation that shows the others still work
    secret: int  # carol's group, which dave is not in
    lab: int  # dave's own group (dave is its owner and only member)
    foreign: int  # globex's open group of erin and frank, holding a message
    alice: WebSocketConnection
    bob: WebSocketConnection
    _checks: int = field(default=0)

    @property
    def engine(self) -> Engine:
        return self.running.engine

    def state(self) -> dict[str, Any]:
        """Everything stored, as the read API shows it."""
        return {"acme": snapshot(self.engine, self.acme["tenant"]),
                "globex": snapshot(self.engine, self.globex["tenant"])}

    async def assert_others_still_work(self, connections: int = 2) -> None:
        """alice's message is acked and pushed to bob; a new connection is served; and once
        the bad client is gone, the server holds no other connection than alice's and bob's
        (and those the caller says are still open: `connections` in all)."""
        self._checks += 1
        n = self._checks
        cmid, body = f"still-working-{n}", f"still working {n}"
        ack = await request(self.alice, {"op": "send", "id": 1000 + n, "conv": self.team,
                                         "cmid": cmid, "body": body})
        assert ack["type"] == "reply" and ack["id"] == 1000 + n, ack
        assert ack["data"]["duplicate"] is False
        push = await receive_json(self.bob)
        assert push == {"type": "msg", "conv": self.team, "msg": {
            "seq": ack["data"]["seq"], "sender": self.acme["alice"], "ts": ack["data"]["ts"],
            "kind": "text", "body": body, "cmid": cmid}}
        async with open_ws(self.running.port) as fresh:
            assert await request(fresh, {"op": "ping", "id": 5}) == {
                "type": "reply", "id": 5, "data": {}}
        while len(self.running.server.connections) != connections:
            await trio.sleep(0.01)


@asynccontextmanager
async def gateway(tmp_path: Path, limits: Limits | None = None, **config: Any
                  ) -> AsyncIterator[Gateway]:
    async with running_server(tmp_path / "data", limits=limits, **config) as running:
        engine = running.engine
        acme = seed_org(engine, "acme", ["alice", "bob", "carol", "dave"])
        # Ids count per tenant: globex's first users and groups take the ids acme's have, so
        # that erin, frank and project falcon have ids that acme has not.
        globex = seed_org(engine, "globex", ["gus", "gil", "gia", "gem", "erin", "frank"])

        def group(tenant: int, creator: int, title: str, members: tuple[int, ...],
                  open_: bool = False) -> int:
            op = CreateGroup(tenant=tenant, creator=creator, title=title, members=members,
                             open=open_)
            return engine.apply(op, NOW_MS).conv  # type: ignore[union-attr,no-any-return]

        team = group(acme["tenant"], acme["alice"], "team", (acme["bob"],))
        secret = group(acme["tenant"], acme["carol"], "carol's notes", ())
        lab = group(acme["tenant"], acme["dave"], "lab", ())
        for _ in range(3):
            group(globex["tenant"], globex["gus"], "filler", ())
        foreign = group(globex["tenant"], globex["erin"], "project falcon", (globex["frank"],),
                        open_=True)
        engine.apply(Append(tenant=globex["tenant"], conv=foreign, sender=globex["erin"],
                            client_msg_id="g1", body="merger plans"), NOW_MS)
        engine.apply(Append(tenant=acme["tenant"], conv=secret, sender=acme["carol"],
                            client_msg_id="c1", body="carol only"), NOW_MS)
        async with open_ws(running.port) as alice, open_ws(running.port) as bob:
            await login(alice, "acme", "alice")
            await login(bob, "acme", "bob")
            yield Gateway(running, acme, globex, team, secret, lab, foreign, alice, bob)


def assert_error(frame: dict[str, Any], request_id: int | None, code: str) -> None:
    """`frame` is exactly an error frame with this code, echoing this request id."""
    assert frame.get("type") == "error", frame
    assert set(frame) == {"type", "id", "code", "message"}, frame
    assert frame["id"] == request_id and frame["code"] == code, frame
    assert isinstance(frame["message"], str) and frame["message"], frame


async def expect_close(ws: WebSocketConnection, code: int) -> None:
    """The server closes `ws` with `code`, sending no other frame first."""
    with pytest.raises(ConnectionClosed) as closed:
        message = await ws.get_message()
        pytest.fail(f"expected a close {code}, got the message {message!r}")
    assert closed.value.reason.code == code, closed.value.reason


async def raw_expect_close(client: RawClient, code: int) -> None:
    """The raw client's next frame is a close with `code`, after which the server hangs up."""
    frame = await client.receive_frame()
    assert frame is not None and frame[0] == OP_CLOSE, frame
    assert close_code(frame[1]) == code, frame
    assert await client.receive_frame() is None


# -- undecodable frames: an error frame, and the connection stays usable ----------------------


INVALID_JSON = [
    '{"op": "ping", "id": 1',
    "not json at all",
    "",
    "{'op': 'ping', 'id': 1}",
    '{"op": "ping", "id": 1} trailing',
    '{"op": "ping", "id": 1, "id": }',
]

# (frame, the id the error must echo): ids are echoed whenever they can be read.
WRONG_SHAPES: list[tuple[Any, int | None]] = [
    ([{"op": "ping", "id": 1}], None),  # an array instead of an object
    ("ping", None),
    (42, None),
    (None, None),
    ({"op": "ping"}, None),  # no id
    ({"id": 9}, 9),  # no op
    ({"op": 5, "id": 10}, 10),
    ({"op": "ping", "id": "11"}, None),
    ({"op": "ping", "id": True}, None),
    ({"op": "ping", "id": 1.5}, None),
    ({"op": "ping", "id": -1}, None),
    ({"op": "ping", "id": MAX_REQUEST_ID + 1}, None),
    ({"op": "send", "id": 12, "conv": "team", "cmid": "a", "body": "hi"}, 12),
    ({"op": "send", "id": 13, "conv": 1}, 13),  # missing fields
    ({"op": "send", "id": 14, "conv": 1, "cmid": "a", "body": 7}, 14),
    ({"op": "send", "id": 15, "conv": 1, "cmid": "a", "body": "hi", "kind": "shout"}, 15),
    ({"op": "send", "id": 16, "conv": 1, "cmid": "a", "body": "hi", "mentions": "bob"}, 16),
    ({"op": "history", "id": 17, "conv": 1, "limit": "many"}, 17),
    ({"op": "sync", "id": 18, "cursors": [1, 2]}, 18),
    ({"op": "sync", "id": 19, "cursors": {"team": 1}}, 19),
    ({"op": "add", "id": 20, "conv": 1, "users": [2], "role": "owner"}, 20),
    ({"op": "login", "id": 21, "tenant": "acme", "login": ["dave"], "password": "x"}, 21),
]


async def test_invalid_json_gets_bad_frame_and_the_connection_stays_open(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with gateway(tmp_path) as gw, open_ws(gw.running.port) as probe:
            await login(probe, "acme", "dave")
            for n, text in enumerate(INVALID_JSON, start=2):
                before = gw.state()
                await probe.send_message(text)
                assert_error(await receive_json(probe), None, "bad_frame")
                assert await request(probe, {"op": "ping", "id": n}) == {
                    "type": "reply", "id": n, "data": {}}, text
                assert gw.state() == before, text
                await gw.assert_others_still_work(connections=3)


async def test_json_nested_too_deeply_gets_bad_frame(tmp_path: Path) -> None:
    depth = 5000  # within max_frame_bytes, far past Python's recursion limit
    texts = [
        "[" * depth,
        "[" * depth + "]" * depth,
        '{"op": "ping", "id": 1, "pad": ' + "[" * depth + "]" * depth + "}",
        '{"op": "ping", "id": 1, "pad": ' + '{"a":' * depth + "1" + "}" * depth + "}",
    ]
    with trio.fail_after(30):
        async with gateway(tmp_path) as gw, open_ws(gw.running.port) as probe:
            await login(probe, "acme", "dave")
            for n, text in enumerate(texts, start=2):
                before = gw.state()
                await probe.send_message(text)
                reply = await receive_json(probe)
                assert reply["type"] == "error" and reply["code"] == "bad_frame", reply
                assert reply["id"] in (None, 1), reply
                assert await request(probe, {"op": "ping", "id": n}) == {
                    "type": "reply", "id": n, "data": {}}
                assert gw.state() == before
                await gw.assert_others_still_work(connections=3)


async def test_json_of_the_wrong_shape_gets_bad_frame_echoing_a_readable_id(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with gateway(tmp_path) as gw, open_ws(gw.running.port) as probe:
            await login(probe, "acme", "dave")
            for frame, request_id in WRONG_SHAPES:
                before = gw.state()
                await probe.send_message(json.dumps(frame))
                reply = await receive_json(probe)
                assert reply.get("id") == request_id, (frame, reply)
                assert_error(reply, request_id, "bad_frame")
                assert await request(probe, {"op": "ping", "id": 2}) == {
                    "type": "reply", "id": 2, "data": {}}, frame
                assert gw.state() == before, frame
                await gw.assert_others_still_work(connections=3)


async def test_an_unknown_op_gets_unauthenticated_before_login_and_unknown_op_after(
    tmp_path: Path,
) -> None:
    with trio.fail_after(20):
        async with gateway(tmp_path) as gw:
            before = gw.state()
            async with open_ws(gw.running.port) as probe:
                # Before login every op but login, resume and ping is refused alike, known
                # or not, well formed or not: nothing tells which ops this server has.
                for n, frame in enumerate([{"op": "frobnicate"}, {"op": "drop_tables", "conv": 1},
                                           {"op": "send"}, {"op": "send", "conv": "x"},
                                           {"op": "convs"}], start=40):
                    assert_error(await request(probe, {**frame, "id": n}), n, "unauthenticated")
                # A login, resume or ping of the wrong shape is still a malformed frame.
                assert_error(await request(probe, {"op": "login", "id": 50}), 50, "bad_frame")
                assert_error(await request(probe, {"op": "ping", "id": "x"}), None, "bad_frame")
                await login(probe, "acme", "dave")
                assert_error(await request(probe, {"op": "drop_tables", "id": 4, "conv": 1}),
                             4, "unknown_op")
                assert_error(await request(probe, {"op": "__class__", "id": 5}), 5, "unknown_op")
                assert_error(await request(probe, {"op": "Ping", "id": 6}), 6, "unknown_op")
                assert await request(probe, {"op": "ping", "id": 7}) == {
                    "type": "reply", "id": 7, "data": {}}
            assert gw.state() == before
            await gw.assert_others_still_work()


# -- frames the gateway does not accept: a close with the right code --------------------------


async def test_a_binary_message_is_closed_with_1003(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with gateway(tmp_path) as gw:
            before = gw.state()
            async with open_ws(gw.running.port) as probe:
                await login(probe, "acme", "dave")
                await probe.send_message(b'{"op": "ping", "id": 2}')
                await expect_close(probe, 1003)
            assert gw.state() == before
            await gw.assert_others_still_work()


async def test_a_message_over_max_frame_bytes_is_closed_with_1009(tmp_path: Path) -> None:
    limit = 4096
    with trio.fail_after(20):
        async with gateway(tmp_path, max_frame_bytes=limit) as gw:
            before = gw.state()
            async with open_ws(gw.running.port) as probe:
                await login(probe, "acme", "dave")
                # Exactly at the limit is served (unknown fields are ignored) ...
                at_limit = json.dumps({"op": "ping", "id": 2, "pad": ""})
                at_limit = at_limit.replace('""', '"' + "x" * (limit - len(at_limit)) + '"')
                assert len(at_limit.encode()) == limit
                assert await request(probe, json.loads(at_limit)) == {
                    "type": "reply", "id": 2, "data": {}}
                # ... one byte more is not.
                await probe.send_message(at_limit.replace('"x', '"xx'))
                await expect_close(probe, 1009)
            assert gw.state() == before
            await gw.assert_others_still_work()


async def test_fragments_adding_up_past_max_frame_bytes_are_closed_with_1009(
    tmp_path: Path,
) -> None:
    with trio.fail_after(20):
        async with gateway(tmp_path, max_frame_bytes=4096) as gw:
            before = gw.state()
            probe = await RawClient.connect(gw.running.port)
            async with probe.stream:
                await probe.send_frame(OP_TEXT, b'{"op": "ping", "id": 1, "pad": "' + b"x" * 3000,
                                       fin=False)
                await probe.send_frame(OP_CONTINUATION, b"x" * 3000 + b'"}')
                await raw_expect_close(probe, 1009)
            assert gw.state() == before
            await gw.assert_others_still_work()


async def test_a_frame_announcing_a_huge_length_is_closed_with_1009_before_its_payload(
    tmp_path: Path,
) -> None:
    with trio.fail_after(20):
        async with gateway(tmp_path) as gw:
            before = gw.state()
            probe = await RawClient.connect(gw.running.port)
            async with probe.stream:
                # A header claiming 2**40 bytes, then nothing: refused on the header alone.
                await probe.stream.send_all(struct.pack("!BBQ", 0x81, 0x80 | 127, 2**40)
                                            + os.urandom(4))
                await raw_expect_close(probe, 1009)
            assert gw.state() == before
            await gw.assert_others_still_work()


async def test_text_that_is_not_utf8_is_closed_with_1007(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with gateway(tmp_path) as gw:
            before = gw.state()
            probe = await RawClient.connect(gw.running.port)
            async with probe.stream:
                await probe.send_frame(OP_TEXT, b'{"op": "ping", "id": 1, "x": "\xff\xfe"}')
                await raw_expect_close(probe, 1007)
            assert gw.state() == before
            await gw.assert_others_still_work()


async def test_an_unmasked_client_frame_is_closed_with_1002(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with gateway(tmp_path) as gw:
            before = gw.state()
            probe = await RawClient.connect(gw.running.port)
            async with probe.stream:
                await probe.send_frame(OP_TEXT, b'{"op": "ping", "id": 1}', masked=False)
                await raw_expect_close(probe, 1002)
            assert gw.state() == before
            await gw.assert_others_still_work()


async def test_a_raw_binary_frame_after_login_is_closed_with_1003(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with gateway(tmp_path) as gw:
            before = gw.state()
            probe = await RawClient.connect(gw.running.port)
            async with probe.stream:
                await probe.send_json({"op": "login", "id": 1, "tenant": "acme",
                                       "login": "dave", "password": PASSWORD})
                assert (await probe.receive_json())["type"] == "reply"
                await probe.send_frame(OP_BINARY, b"\x00\x01\x02\xff")
                await raw_expect_close(probe, 1003)
            assert gw.state() == before
            await gw.assert_others_still_work()


# -- refusals by the engine and the router ----------------------------------------------------


async def test_an_over_long_body_or_cmid_gets_invalid_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    limits = Limits()
    with trio.fail_after(20):
        async with gateway(tmp_path, limits=limits) as gw:
            before = gw.state()
            async with open_ws(gw.running.port) as probe:
                await login(probe, "acme", "dave")
                long_body = "x" * (limits.max_body_bytes + 1)
                assert_error(await request(probe, {"op": "send", "id": 2, "conv": gw.lab,
                                                   "cmid": "m1", "body": long_body}),
                             2, "invalid")
                long_cmid = "c" * (limits.max_client_msg_id_bytes + 1)
                assert_error(await request(probe, {"op": "send", "id": 3, "conv": gw.lab,
                                                   "cmid": long_cmid, "body": "hi"}),
                             3, "invalid")
                assert_error(await request(probe, {"op": "send", "id": 4, "conv": gw.lab,
                                                   "cmid": "", "body": "hi"}),
                             4, "invalid")
                assert_error(await request(probe, {"op": "history", "id": 5, "conv": gw.lab,
                                                   "limit": limits.max_page_messages + 1}),
                             5, "invalid")
                assert_error(await request(probe, {"op": "history", "id": 6, "conv": gw.lab,
                                                   "before": 5, "after": 1}),
                             6, "invalid")
                # A body exactly at the limit is accepted: the refusal was about the length.
                ok = await request(probe, {"op": "send", "id": 7, "conv": gw.lab, "cmid": "m2",
                                           "body": "x" * limits.max_body_bytes})
                assert ok["type"] == "reply" and ok["data"]["seq"] == 2, ok
            after = gw.state()
            assert after["acme"][f"conv {gw.lab}"][1].messages[-1].client_msg_id == "m2"
            assert after["acme"]["counts"]["messages"] == before["acme"]["counts"]["messages"] + 1
            await gw.assert_others_still_work()


async def test_ids_no_conversation_or_user_can_have_get_invalid_and_the_server_survives(
    tmp_path: Path,
) -> None:
    # Ids are unsigned 64-bit integers in the store; JSON can carry any integer.
    with trio.fail_after(30):
        async with gateway(tmp_path) as gw:
            lab, carol = gw.lab, gw.acme["carol"]
            async with open_ws(gw.running.port) as probe:
                await login(probe, "acme", "dave")
                for n, bad_id in enumerate([-1, -(2**63), 2**64, 10**30], start=1):
                    frames = [
                        {"op": "history", "conv": bad_id},
                        {"op": "members", "conv": bad_id},
                        {"op": "send", "conv": bad_id, "cmid": "a", "body": "b"},
                        {"op": "send", "conv": lab, "cmid": "a", "body": "b",
                         "mentions": [bad_id]},
                        {"op": "read", "conv": bad_id, "seq": 1},
                        {"op": "open_direct", "peer": bad_id},
                        {"op": "create_group", "title": "t", "members": [carol, bad_id]},
                        {"op": "add", "conv": lab, "users": [bad_id]},
                        {"op": "add", "conv": bad_id, "users": [carol]},
                        {"op": "kick", "conv": lab, "user": bad_id},
                        {"op": "kick", "conv": bad_id, "user": carol},
                        {"op": "leave", "conv": bad_id},
                        {"op": "join", "conv": bad_id},
                    ]
                    for m, frame in enumerate(frames):
                        before = gw.state()
                        request_id = 100 * n + m
                        reply = await request(probe, {**frame, "id": request_id})
                        assert reply.get("code") == "invalid", (frame, reply)
                        assert_error(reply, request_id, "invalid")
                        assert gw.state() == before, frame
                    await gw.assert_others_still_work(connections=3)


# Every op that needs a session, with well-formed arguments naming things that exist.
def session_requests(gw: Gateway) -> dict[str, dict[str, Any]]:
    team, alice, bob = gw.team, gw.acme["alice"], gw.acme["bob"]
    return {
        "logout": {},
        "password": {"current": PASSWORD, "new": "a new password for dave"},
        "send": {"conv": team, "cmid": "x1", "body": "let me in"},
        "sync": {},
        "history": {"conv": team},
        "read": {"conv": team, "seq": 1},
        "members": {"conv": team},
        "convs": {},
        "lookup": {"login": "alice"},
        "users": {"users": [alice]},
        "create_group": {"title": "mine", "members": [alice]},
        "open_direct": {"peer": alice},
        "add": {"conv": team, "users": [bob]},
        "kick": {"conv": team, "user": bob},
        "leave": {"conv": team},
        "join": {"conv": team},
    }


async def test_every_request_before_login_gets_unauthenticated(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with gateway(tmp_path) as gw:
            requests = session_requests(gw)
            assert set(requests) == CLIENT_OPS - {"login", "resume", "ping"}
            before = gw.state()
            async with open_ws(gw.running.port) as probe:
                for n, (op, args) in enumerate(sorted(requests.items()), start=10):
                    reply = await request(probe, {"op": op, "id": n, **args})
                    assert_error(reply, n, "unauthenticated")
                assert await request(probe, {"op": "ping", "id": 2}) == {
                    "type": "reply", "id": 2, "data": {}}
            assert gw.state() == before
            await gw.assert_others_still_work()


async def test_a_wrong_password_gets_unauthenticated_after_the_failure_delay(
    tmp_path: Path,
) -> None:
    delay = 0.3
    with trio.fail_after(20):
        async with gateway(tmp_path, login_failure_delay_s=delay) as gw:
            before = gw.state()
            async with open_ws(gw.running.port) as probe:
                messages = set()
                attempts = [("acme", "dave", PASSWORD + "!"), ("acme", "nobody", PASSWORD),
                            ("nowhere", "dave", PASSWORD), ("globex", "dave", PASSWORD)]
                for n, (tenant, login_name, password) in enumerate(attempts, start=2):
                    started = trio.current_time()
                    reply = await request(probe, {"op": "login", "id": n, "tenant": tenant,
                                                  "login": login_name, "password": password})
                    assert trio.current_time() - started >= delay
                    assert_error(reply, n, "unauthenticated")
                    messages.add(reply["message"])
                # One answer for all: no hint whether the tenant or the login exists.
                assert len(messages) == 1
                assert_error(await request(probe, {"op": "convs", "id": 9}), 9, "unauthenticated")
                await login(probe, "acme", "dave", request_id=10)  # the connection still works
            assert gw.state() == before
            await gw.assert_others_still_work()


def _flip_first_char(token: str) -> str:
    """`token` with its first base64 character changed (all six of its bits count, unlike
    the last one's): another 256-bit value, never issued."""
    return ("A" if token[0] != "A" else "B") + token[1:]


async def test_expired_forged_and_altered_tokens_get_unauthenticated(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with gateway(tmp_path) as gw:
            tenant, dave = gw.acme["tenant"], gw.acme["dave"]
            now_ms = time.time_ns() // 1_000_000
            expired, expired_hash = new_token()
            gw.running.engine.apply(CreateSession(
                tenant=tenant, user=dave, token_hash=expired_hash, device="old",
                expires_ms=now_ms - 60_000), now_ms - 120_000)
            forged, _ = new_token()  # well-formed, but no session was ever stored for it
            async with open_ws(gw.running.port) as first:
                valid = (await login(first, "acme", "dave"))["token"]
            altered = _flip_first_char(valid)
            truncated = valid[:-4]
            before = gw.state()
            async with open_ws(gw.running.port) as probe:
                for n, token in enumerate(
                        [expired, forged, altered, truncated, "", "not a token", "%%%%"],
                        start=2):
                    reply = await request(probe, {"op": "resume", "id": n, "token": token})
                    assert_error(reply, n, "unauthenticated")
                    # Still anonymous: nothing of the session is granted.
                    assert_error(await request(probe, {"op": "convs", "id": 100 + n}),
                                 100 + n, "unauthenticated")
                # The genuine token does resume, as dave (not as alice).
                reply = await request(probe, {"op": "resume", "id": 20, "token": valid})
                assert reply["type"] == "reply" and reply["data"]["user"] == dave, reply
            assert gw.state() == before
            await gw.assert_others_still_work()


async def test_a_conversation_one_is_not_in_is_refused_as_if_it_did_not_exist(
    tmp_path: Path,
) -> None:
    with trio.fail_after(20):
        async with gateway(tmp_path) as gw:
            before = gw.state()
            secret, nowhere = gw.secret, 10**9
            async with open_ws(gw.running.port) as probe:
                await login(probe, "acme", "dave")

                def refused(conv: int) -> list[dict[str, Any]]:
                    return [
                        {"op": "send", "id": 2, "conv": conv, "cmid": "m1", "body": "hello"},
                        {"op": "history", "id": 3, "conv": conv},
                        {"op": "history", "id": 4, "conv": conv, "after": 0},
                        {"op": "history", "id": 5, "conv": conv, "before": 100},
                        {"op": "read", "id": 6, "conv": conv, "seq": 1},
                        {"op": "members", "id": 7, "conv": conv},
                        {"op": "leave", "id": 8, "conv": conv},
                        {"op": "add", "id": 9, "conv": conv, "users": [gw.acme["dave"]]},
                        {"op": "kick", "id": 10, "conv": conv, "user": gw.acme["carol"]},
                        {"op": "join", "id": 11, "conv": conv},  # it is not open
                    ]

                for frame, missing in zip(refused(secret), refused(nowhere), strict=True):
                    reply = await request(probe, frame)
                    assert_error(reply, frame["id"], "not_found")
                    assert reply["message"] == f"conversation {secret} does not exist", reply
                    baseline = await request(probe, missing)
                    assert baseline["message"] == f"conversation {nowhere} does not exist"
                    assert "carol only" not in json.dumps(reply)
            assert gw.state() == before
            await gw.assert_others_still_work()


async def test_another_tenants_ids_are_not_found_and_its_data_never_shown(
    tmp_path: Path,
) -> None:
    with trio.fail_after(20):
        async with gateway(tmp_path) as gw:
            foreign, erin, frank = gw.foreign, gw.globex["erin"], gw.globex["frank"]
            nowhere = 10**9  # a conversation and user id no tenant has
            before = gw.state()
            received: list[str] = []

            async with open_ws(gw.running.port) as probe:
                await login(probe, "acme", "dave")

                async def ask(frame: dict[str, Any]) -> dict[str, Any]:
                    await send_json(probe, frame)
                    message = await probe.get_message()
                    assert isinstance(message, str)
                    received.append(message)
                    reply: dict[str, Any] = json.loads(message)
                    return reply

                def conv_requests(conv: int, n: int) -> list[dict[str, Any]]:
                    return [
                        {"op": "send", "id": n, "conv": conv, "cmid": "x", "body": "hi"},
                        {"op": "history", "id": n + 1, "conv": conv},
                        {"op": "history", "id": n + 2, "conv": conv, "after": 0},
                        {"op": "read", "id": n + 3, "conv": conv, "seq": 1},
                        {"op": "members", "id": n + 4, "conv": conv},
                        {"op": "join", "id": n + 5, "conv": conv},  # B's group is open
                        {"op": "leave", "id": n + 6, "conv": conv},
                        {"op": "add", "id": n + 7, "conv": conv, "users": [gw.acme["dave"]]},
                        {"op": "kick", "id": n + 8, "conv": conv, "user": erin},
                    ]

                # B's conversation is refused exactly as an id that exists nowhere.
                for theirs, missing in zip(conv_requests(foreign, 100),
                                           conv_requests(nowhere, 200), strict=True):
                    reply, baseline = await ask(theirs), await ask(missing)
                    assert reply["type"] == baseline["type"] == "error", (theirs, reply)
                    assert reply["id"] == theirs["id"], reply
                    assert reply["code"] == baseline["code"], (theirs, reply, baseline)
                    assert reply["code"] in ("not_found", "not_member"), reply

                # B's users are unknown here, exactly as a user id that exists nowhere.
                user_requests = [
                    ({"op": "open_direct", "peer": erin}, {"op": "open_direct", "peer": nowhere}),
                    ({"op": "create_group", "title": "spy", "members": [frank]},
                     {"op": "create_group", "title": "spy", "members": [nowhere]}),
                    ({"op": "add", "conv": gw.lab, "users": [erin]},
                     {"op": "add", "conv": gw.lab, "users": [nowhere]}),
                    ({"op": "kick", "conv": gw.lab, "user": erin},
                     {"op": "kick", "conv": gw.lab, "user": nowhere}),
                    ({"op": "lookup", "login": "erin"}, {"op": "lookup", "login": "nobody"}),
                ]
                for n, (theirs, missing) in enumerate(user_requests, start=300):
                    reply = await ask({**theirs, "id": n})
                    baseline = await ask({**missing, "id": n + 50})
                    assert reply["type"] == baseline["type"] == "error", (theirs, reply)
                    assert reply["id"] == n, reply
                    assert reply["code"] == baseline["code"], (theirs, reply, baseline)
                    assert reply["code"] in ("not_found", "not_member"), reply

                # Naming B's conversation in a sync cursor brings nothing of it back.
                reply = await ask({"op": "sync", "id": 400, "cursors": {str(foreign): 0},
                                   "everything": True})
                assert reply["type"] == "reply", reply
                assert foreign not in [c["conv"] for c in reply["data"]["convs"]]
                assert {c["conv"] for c in reply["data"]["convs"]} == {gw.lab}
                reply = await ask({"op": "convs", "id": 401})
                assert [c["conv"] for c in reply["data"]["convs"]] == [gw.lab]

            for message in received:
                for secret in FOREIGN_SECRETS:
                    assert secret not in message, message
            assert gw.state() == before
            await gw.assert_others_still_work()


async def test_error_frames_echo_the_request_id_across_its_whole_range(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with gateway(tmp_path) as gw:
            before = gw.state()
            async with open_ws(gw.running.port) as probe:
                for request_id in (0, 1, 2**31, 2**32 + 1, MAX_REQUEST_ID):
                    assert_error(await request(probe, {"op": "convs", "id": request_id}),
                                 request_id, "unauthenticated")
                    assert_error(await request(probe, {"op": "nope", "id": request_id}),
                                 request_id, "unauthenticated")
                    assert_error(await request(probe, {"op": "send", "id": request_id}),
                                 request_id, "unauthenticated")
                    assert_error(await request(probe, {"op": "resume", "id": request_id}),
                                 request_id, "bad_frame")
                await login(probe, "acme", "dave")
                for request_id in (0, MAX_REQUEST_ID):
                    reply = await request(probe, {"op": "history", "id": request_id,
                                                  "conv": gw.secret})
                    assert_error(reply, request_id, "not_found")
                    reply = await request(probe, {"op": "send", "id": request_id,
                                                  "conv": gw.secret, "cmid": "a", "body": "b"})
                    assert_error(reply, request_id, "not_found")
            assert gw.state() == before
            await gw.assert_others_still_work()


# -- HTTP that is not a WebSocket upgrade -----------------------------------------------------


def _status(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response
    return int(response.split(b" ", 2)[1])


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"POST /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}", 400),
    (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n", 426),
    (b"GET /admin HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", 404),
    (b"GET /ws/../ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
     b"Sec-WebSocket-Version: 13\r\n\r\n", 404),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n", 400),
    (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"p" * 20_000 + b"\r\n\r\n", 431),
])
async def test_http_that_is_not_an_upgrade_to_ws_gets_a_4xx_response(
    tmp_path: Path, request_bytes: bytes, status: int
) -> None:
    with trio.fail_after(20):
        async with gateway(tmp_path) as gw:
            before = gw.state()
            response = await http_exchange(gw.running.port, request_bytes)
            assert _status(response) == status, response
            assert gw.state() == before
            await gw.assert_others_still_work()
