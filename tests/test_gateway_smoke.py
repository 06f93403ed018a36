"""The smallest end-to-end path: log in over a real socket, send, receive the push."""

from __future__ import annotations

import json
from pathlib import Path

import trio
from conftest import NOW_MS, PASSWORD
from servers import running_server, seed_org
from trio_websocket import open_websocket_url

from engine import CreateGroup


async def test_a_message_sent_by_one_member_is_pushed_to_another(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_server(tmp_path / "data") as running:
            ids = seed_org(running.engine, "acme", ["alice", "bob"])
            op = CreateGroup(tenant=ids["tenant"], creator=ids["alice"], title="t",
                             members=(ids["bob"],))
            conv = running.engine.apply(op, NOW_MS).conv  # type: ignore[union-attr]
            async with open_websocket_url(running.url) as a, open_websocket_url(running.url) as b:
                for ws, login in ((a, "alice"), (b, "bob")):
                    await ws.send_message(json.dumps(
                        {"op": "login", "id": 1, "tenant": "acme", "login": login,
                         "password": PASSWORD}))
                    reply = json.loads(await ws.get_message())
                    assert reply["type"] == "reply" and reply["data"]["user"] == ids[login]
                await a.send_message(json.dumps(
                    {"op": "send", "id": 2, "conv": conv, "cmid": "m1", "body": "hello"}))
                ack = json.loads(await a.get_message())
                assert ack == {"type": "reply", "id": 2,
                               "data": {"conv": conv, "seq": 2, "ts": ack["data"]["ts"],
                                        "duplicate": False}}
                push = json.loads(await b.get_message())
                assert push["type"] == "msg" and push["conv"] == conv
                assert push["msg"]["seq"] == 2 and push["msg"]["body"] == "hello"
                assert push["msg"]["sender"] == ids["alice"]
