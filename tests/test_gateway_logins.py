"""Users by login over a real server: `lookup` of many logins in one request, and groups made
and grown by login (`create_group` and `add` with `logins`), with unknown logins refused
and other tenants' logins unknown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from clients import login, open_ws, receive_json, send_json
from servers import running_server, seed_org
from trio_websocket import WebSocketConnection

from appliance.gateway.router import MAX_USERS_PER_REQUEST
from engine import Engine


@asynccontextmanager
async def alice_of_acme(tmp_path: Path) -> AsyncIterator[
        tuple[WebSocketConnection, Engine, dict[str, int]]]:
    """alice of acme logged in; acme has bob, carol and dave; globex has erin."""
    async with running_server(tmp_path / "data") as running:
        acme = seed_org(running.engine, "acme", ["alice", "bob", "carol", "dave"])
        seed_org(running.engine, "globex", ["erin"])
        async with open_ws(running.port) as ws:
            await login(ws, "acme", "alice")
            yield ws, running.engine, acme


async def request(ws: WebSocketConnection, frame: dict[str, Any]) -> dict[str, Any]:
    """The answer to `frame`, past the pushes of the group's system messages."""
    await send_json(ws, frame)
    while True:
        answer = await receive_json(ws)
        if answer["type"] != "msg":
            return answer


def user(ids: dict[str, int], name: str) -> dict[str, Any]:
    return {"user": ids[name], "login": name, "display_name": name.title()}


async def test_lookup_of_many_logins_answers_the_users_found_and_the_logins_not_found(
    tmp_path: Path,
) -> None:
    with trio.fail_after(20):
        async with alice_of_acme(tmp_path) as (ws, _, acme):
            reply = await request(ws, {"op": "lookup", "id": 2, "logins": [
                "carol", "nobody", "bob", "erin", "carol", "Bob"]})
            # In the order asked, each once; erin is globex's: as unknown here as nobody.
            assert reply == {"type": "reply", "id": 2, "data": {
                "users": [user(acme, "carol"), user(acme, "bob")],
                "unknown": ["nobody", "erin", "Bob"]}}
            assert await request(ws, {"op": "lookup", "id": 3, "logins": []}) == {
                "type": "reply", "id": 3, "data": {"users": [], "unknown": []}}
            # The form with one login is unchanged.
            assert await request(ws, {"op": "lookup", "id": 4, "login": "dave"}) == {
                "type": "reply", "id": 4, "data": user(acme, "dave")}
            single = await request(ws, {"op": "lookup", "id": 5, "login": "erin"})
            assert (single["code"], single["message"]) == (
                "not_found", "no user has the login 'erin' in this tenant")


async def test_lookup_takes_one_login_or_a_bounded_list_of_them(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with alice_of_acme(tmp_path) as (ws, _, _):
            for n, frame in enumerate([
                {"op": "lookup"},
                {"op": "lookup", "login": "bob", "logins": ["bob"]},
                {"op": "lookup", "logins": [f"u{i}" for i in range(MAX_USERS_PER_REQUEST + 1)]},
            ], start=10):
                reply = await request(ws, {**frame, "id": n})
                assert reply["type"] == "error" and reply["code"] == "invalid", reply
                assert reply["id"] == n
            full = [f"u{i}" for i in range(MAX_USERS_PER_REQUEST)]
            reply = await request(ws, {"op": "lookup", "id": 20, "logins": full})
            assert reply["data"] == {"users": [], "unknown": full}


async def test_a_group_is_made_and_grown_by_login(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with alice_of_acme(tmp_path) as (ws, _, acme):
            made = await request(ws, {"op": "create_group", "id": 2, "title": "launch",
                                      "members": [acme["bob"]], "logins": ["carol", "bob"]})
            assert made["type"] == "reply", made
            conv = made["data"]["conv"]
            members = await request(ws, {"op": "members", "id": 3, "conv": conv})
            assert sorted(members["data"]["members"]) == sorted([
                [acme["alice"], "owner"], [acme["bob"], "member"], [acme["carol"], "member"]])
            added = await request(ws, {"op": "add", "id": 4, "conv": conv, "logins": ["dave"],
                                       "role": "admin"})
            assert added["type"] == "reply", added
            members = await request(ws, {"op": "members", "id": 5, "conv": conv})
            assert [acme["dave"], "admin"] in members["data"]["members"]


async def test_an_unknown_login_refuses_the_group_change_and_names_the_login(
    tmp_path: Path,
) -> None:
    with trio.fail_after(20):
        async with alice_of_acme(tmp_path) as (ws, engine, acme):
            before = engine.conversations(acme["tenant"], acme["alice"])
            refused = await request(ws, {"op": "create_group", "id": 2, "title": "launch",
                                         "logins": ["bob", "erin", "nobody"]})
            assert refused == {"type": "error", "id": 2, "code": "not_found", "message":
                               "no user has the logins 'erin', 'nobody' in this tenant"}
            assert engine.conversations(acme["tenant"], acme["alice"]) == before
            made = await request(ws, {"op": "create_group", "id": 3, "title": "launch"})
            conv = made["data"]["conv"]
            refused = await request(ws, {"op": "add", "id": 4, "conv": conv,
                                         "logins": ["erin"]})
            assert refused == {"type": "error", "id": 4, "code": "not_found", "message":
                               "no user has the login 'erin' in this tenant"}
            too_many = await request(ws, {"op": "add", "id": 5, "conv": conv, "logins":
                                          ["bob"] * (MAX_USERS_PER_REQUEST + 1)})
            assert too_many["code"] == "invalid", too_many
            members = await request(ws, {"op": "members", "id": 6, "conv": conv})
            assert members["data"]["members"] == [[acme["alice"], "owner"]]
