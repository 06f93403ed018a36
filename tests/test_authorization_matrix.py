"""Every op of the router, probed with ids the caller may not see, over a real server.

The matrix has one entry per op of `Router._handlers` (a new op without an entry fails
`test_the_matrix_covers_every_op_of_the_router`). Each entry names the probes for that op:

- hidden: pairs of frames that differ only in one id, the first naming something the prober
  may not see (a private group of its own tenant, another pair's direct conversation, a group
  it was removed from, another tenant's conversations and users), the second an id that exists
  nowhere. Both must get the very same answer, but for the id itself where the answer echoes
  it: a client cannot tell what it may not see from what does not exist.
- visible: frames about what the prober may see by design (an open group of its tenant, which
  it may join; its own conversations), with the answer expected. These stay told apart: a
  plain member who tries to kick gets `forbidden`, not `not_found`.
- malformed: ids that are not ids (negative, past 2**64 - 1, of the wrong type), which must
  be refused as `invalid` or `bad_frame`.

Every frame any probing connection receives is kept, and none may carry the content of a
conversation the prober is not in: each hidden conversation holds a canary message, and more
are sent into them while the prober is connected, so that a push would show too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from clients import login, open_ws, request, send_json
from conftest import NOW_MS, PASSWORD, snapshot
from servers import RunningServer, running_server, seed_org
from trio_websocket import WebSocketConnection

from appliance.protocol.frames import CLIENT_OPS
from engine import Append, CreateGroup, Engine, OpenDirect, RemoveMember

# Every message and title of a hidden conversation starts with it; no probe contains it.
CANARY = "canary-"
NOWHERE = 10**9  # conversation and user ids no tenant has (NOWHERE + k)
NOWHERE_LOGIN = "nobody-here"
MAX_ID = 2**64 - 1
# Ids that are no ids: each is refused as `invalid` (out of range) or `bad_frame` (not an
# integer); 2**64 - 1 is a valid id that exists nowhere, probed with the hidden ones.
MALFORMED_IDS: list[Any] = [-1, -(2**63), 2**64, 2**70, "7", "abc", 1.5, True, None, [1], {}]
Frame = dict[str, Any]


@dataclass
class World:
    running: RunningServer
    acme: dict[str, int]
    globex: dict[str, int]
    # Conversations of acme the prober (pat) may not see, and globex's, by name.
    hidden: dict[str, int]
    open_group: int  # olga's open group of acme: pat may see it (and join it)
    team: int  # alice's group, where pat is a plain member
    lab: int  # pat's own group (pat is its owner)
    foreign_users: list[int]  # globex user ids that name no user of acme
    foreign_logins: list[str]

    @property
    def engine(self) -> Engine:
        return self.running.engine


@dataclass
class Probes:
    hidden: list[tuple[Frame, Frame]] = field(default_factory=list)
    visible: list[tuple[Frame, str]] = field(default_factory=list)  # expected code or "reply"
    malformed: list[Frame] = field(default_factory=list)
    fresh: bool = False  # probed on connections that are not logged in
    last: list[tuple[Frame, str]] = field(default_factory=list)  # visible, after the rest


def _conv_op(w: World, make: Callable[[int], Frame], on_open_group: str) -> Probes:
    """The probes of an op about one conversation: every hidden one against an id that
    exists nowhere, the open group (visible), and malformed ids."""
    probes = Probes()
    for n, conv in enumerate(w.hidden.values()):
        probes.hidden.append((make(conv), make(NOWHERE + n)))
    probes.hidden.append((make(MAX_ID), make(NOWHERE)))
    probes.malformed = [make(bad) for bad in MALFORMED_IDS]
    if on_open_group == "reply":
        probes.last.append((make(w.open_group), "reply"))
    else:
        probes.visible.append((make(w.open_group), on_open_group))
    return probes


def _user_pairs(w: World, make: Callable[[int], Frame]) -> list[tuple[Frame, Frame]]:
    """Another tenant's users against user ids that exist nowhere."""
    return [(make(user), make(NOWHERE + n)) for n, user in enumerate(w.foreign_users)]


def _login_pairs(w: World, make: Callable[[str], Frame]) -> list[tuple[Frame, Frame]]:
    return [(make(login_name), make(NOWHERE_LOGIN)) for login_name in w.foreign_logins]


def _send(w: World) -> Probes:
    probes = _conv_op(w, lambda c: {"op": "send", "conv": c, "cmid": "p", "body": "hi"},
                      "not_member")
    recall = _conv_op(w, lambda c: {"op": "send", "conv": c, "cmid": "r", "body": "",
                                    "kind": "recall", "ref": 1}, "not_member")
    probes.hidden += recall.hidden
    probes.hidden += _user_pairs(w, lambda u: {"op": "send", "conv": w.lab, "cmid": "m",
                                               "body": "hi", "mentions": [u]})
    probes.malformed += [{"op": "send", "conv": w.lab, "cmid": "m", "body": "hi",
                          "mentions": [bad]} for bad in MALFORMED_IDS]
    return probes


def _sync(w: World) -> Probes:
    # A cursor of a conversation one is not in comes back in `removed`, whether it exists or
    # not; the reply is otherwise the prober's own (its own conversations, nothing new).
    pairs = [({"op": "sync", "cursors": {str(conv): 0}}, {"op": "sync", "cursors":
              {str(NOWHERE + n): 0}}) for n, conv in enumerate(w.hidden.values())]
    pairs += [({"op": "sync", "cursors": {str(conv): 0}, "everything": True},
               {"op": "sync", "cursors": {str(NOWHERE + n): 0}, "everything": True})
              for n, conv in enumerate(w.hidden.values())]
    return Probes(hidden=pairs, malformed=[{"op": "sync", "cursors": {"abc": 0}},
                                           {"op": "sync", "cursors": {"1": "x"}},
                                           {"op": "sync", "cursors": [1]}])


def _history(w: World) -> Probes:
    probes = _conv_op(w, lambda c: {"op": "history", "conv": c}, "not_member")
    for extra in ({"after": 0}, {"before": 100, "limit": 5}):
        more = _conv_op(w, lambda c, e=extra: {"op": "history", "conv": c, **e}, "not_member")
        probes.hidden += more.hidden
        probes.visible += more.visible
    return probes


def _add(w: World) -> Probes:
    probes = _conv_op(w, lambda c: {"op": "add", "conv": c, "users": [w.acme["alice"]]},
                      "not_member")
    probes.hidden += _user_pairs(w, lambda u: {"op": "add", "conv": w.lab, "users": [u]})
    probes.hidden += _login_pairs(w, lambda name: {"op": "add", "conv": w.lab, "logins": [name]})
    probes.visible.append(({"op": "add", "conv": w.team, "users": [w.acme["carol"]]},
                           "forbidden"))
    probes.malformed += [{"op": "add", "conv": w.lab, "users": [bad]} for bad in MALFORMED_IDS]
    return probes


def _kick(w: World) -> Probes:
    probes = _conv_op(w, lambda c: {"op": "kick", "conv": c, "user": w.acme["alice"]},
                      "not_member")
    probes.hidden += _user_pairs(w, lambda u: {"op": "kick", "conv": w.lab, "user": u})
    probes.visible.append(({"op": "kick", "conv": w.team, "user": w.acme["alice"]},
                           "forbidden"))
    probes.malformed += [{"op": "kick", "conv": w.lab, "user": bad} for bad in MALFORMED_IDS]
    return probes


def _join(w: World) -> Probes:
    probes = _conv_op(w, lambda c: {"op": "join", "conv": c}, "reply")
    probes.visible.append(({"op": "join", "conv": w.team}, "conflict"))
    return probes


def _lookup(w: World) -> Probes:
    probes = Probes(hidden=_login_pairs(w, lambda name: {"op": "lookup", "login": name}))
    probes.hidden += _login_pairs(w, lambda name: {"op": "lookup", "logins": [name, "alice"]})
    probes.malformed = [{"op": "lookup", "login": 5}, {"op": "lookup", "logins": "alice"},
                        {"op": "lookup", "logins": [7]}]
    return probes


def _create_group(w: World) -> Probes:
    probes = Probes(hidden=_user_pairs(w, lambda u: {"op": "create_group", "title": "spy",
                                                     "members": [u]}))
    probes.hidden += _login_pairs(w, lambda name: {"op": "create_group", "title": "spy",
                                                   "logins": [name]})
    probes.malformed = [{"op": "create_group", "title": "spy", "members": [bad]}
                        for bad in MALFORMED_IDS]
    return probes


def _no_ids(*visible: tuple[Frame, str]) -> Callable[[World], Probes]:
    """An op that names no conversation or user: nothing to hide, but its answers are kept
    with the rest, so that they too are checked for canaries."""
    return lambda w: Probes(visible=list(visible))


# op -> its probes. Ops that take no id still have an entry, saying so.
MATRIX: dict[str, Callable[[World], Probes]] = {
    "login": lambda w: Probes(fresh=True, hidden=[
        ({"op": "login", "tenant": "acme", "login": name, "password": PASSWORD},
         {"op": "login", "tenant": "acme", "login": NOWHERE_LOGIN, "password": PASSWORD})
        for name in w.foreign_logins[:1]]),
    "resume": lambda w: Probes(fresh=True, visible=[
        ({"op": "resume", "token": "A" * 43}, "unauthenticated")]),
    # Names no id; it ends the prober's session, so it comes last of all.
    "logout": lambda w: Probes(last=[({"op": "logout"}, "reply")]),
    "password": _no_ids(({"op": "password", "current": "not it at all", "new": "x"},
                         "weak_password")),
    "ping": _no_ids(({"op": "ping"}, "reply")),
    "send": _send,
    "sync": _sync,
    "history": _history,
    "read": lambda w: _conv_op(w, lambda c: {"op": "read", "conv": c, "seq": 1}, "not_member"),
    "members": lambda w: _conv_op(w, lambda c: {"op": "members", "conv": c}, "not_member"),
    "convs": _no_ids(({"op": "convs"}, "reply")),
    "lookup": _lookup,
    "users": lambda w: Probes(
        hidden=_user_pairs(w, lambda u: {"op": "users", "users": [u]}),
        malformed=[{"op": "users", "users": [bad]} for bad in MALFORMED_IDS]),
    "create_group": _create_group,
    "open_direct": lambda w: Probes(
        hidden=_user_pairs(w, lambda u: {"op": "open_direct", "peer": u}),
        malformed=[{"op": "open_direct", "peer": bad} for bad in MALFORMED_IDS]),
    "add": _add,
    "kick": _kick,
    "leave": lambda w: _conv_op(w, lambda c: {"op": "leave", "conv": c}, "not_member"),
    "join": _join,
}


def _router_ops(running: RunningServer) -> set[str]:
    handlers = running.server.services.router._handlers
    return {request_type.__struct_config__.tag for request_type in handlers}


def _normalized(frame: Frame, echoed: list[Any]) -> Frame:
    """`frame` with the ids and logins the request named replaced by a marker where an answer
    may echo them (an error's message; `removed` of a sync, `unknown` of a lookup): nothing
    else may differ."""
    out = dict(frame)
    if "message" in out:
        for value in echoed:
            out["message"] = re.sub(rf"(?<![\w-]){re.escape(str(value))}(?![\w-])", "<echo>",
                                    out["message"])
    if isinstance(out.get("data"), dict):
        data = out["data"] = dict(out["data"])
        for key in ("removed", "unknown"):
            if key in data:
                data[key] = ["<echo>" if value in echoed else value for value in data[key]]
    return out


def _named(frame: Frame) -> list[Any]:
    """The ids and logins a probe frame names (what its answer may echo)."""
    named: list[Any] = []
    for key, value in frame.items():
        if key in ("conv", "peer", "user"):
            named.append(value)
        elif key in ("users", "members", "mentions", "logins"):
            named.extend(value)
        elif key == "login":
            named.append(value)
        elif key == "cursors":
            named.extend(int(conv) for conv in value)
    return named


async def _build(running: RunningServer) -> World:
    engine = running.engine

    def group(tenant: int, creator: int, title: str, members: tuple[int, ...] = (),
              open_: bool = False) -> int:
        op = CreateGroup(tenant=tenant, creator=creator, title=title, members=members,
                         open=open_)
        return engine.apply(op, NOW_MS).conv  # type: ignore[union-attr,no-any-return]

    def direct(tenant: int, user: int, peer: int) -> int:
        result = engine.apply(OpenDirect(tenant=tenant, user=user, peer=peer), NOW_MS)
        return result.conv  # type: ignore[union-attr,no-any-return]

    def plant(tenant: int, conv: int, sender: int, name: str) -> None:
        engine.apply(Append(tenant=tenant, conv=conv, sender=sender, client_msg_id=name,
                            body=CANARY + name), NOW_MS)

    acme = seed_org(engine, "acme", ["pat", "alice", "bob", "carol", "olga"])
    # globex has more users and conversations than acme, made before the ones probed, so that
    # its probed ids name nothing of acme whether ids count per tenant or over the store.
    globex = seed_org(engine, "globex", [f"filler{n}" for n in range(6)] + ["erin", "frank"])
    a, g = acme["tenant"], globex["tenant"]
    team = group(a, acme["alice"], "team", (acme["pat"], acme["bob"]))
    lab = group(a, acme["pat"], "lab")
    private = group(a, acme["carol"], CANARY + "title-private", (acme["bob"],))
    pair = direct(a, acme["alice"], acme["bob"])
    removed = group(a, acme["carol"], CANARY + "title-removed", (acme["pat"],))
    engine.apply(RemoveMember(tenant=a, actor=acme["carol"], conv=removed, user=acme["pat"]),
                 NOW_MS)
    open_group = group(a, acme["olga"], "open to all", open_=True)
    for n in range(6):
        group(g, globex[f"filler{n}"], f"filler {n}")
    foreign_open = group(g, globex["erin"], CANARY + "title-foreign-open", (globex["frank"],),
                         open_=True)
    foreign_private = group(g, globex["erin"], CANARY + "title-foreign", (globex["frank"],))
    foreign_direct = direct(g, globex["erin"], globex["frank"])
    hidden = {"private": private, "pair": pair, "removed": removed,
              "foreign_open": foreign_open, "foreign_private": foreign_private,
              "foreign_direct": foreign_direct}
    plant(a, private, acme["carol"], "private")
    plant(a, pair, acme["alice"], "pair")
    plant(a, removed, acme["carol"], "removed")
    plant(a, open_group, acme["olga"], "open")
    plant(g, foreign_open, globex["erin"], "foreign-open")
    plant(g, foreign_private, globex["erin"], "foreign-private")
    plant(g, foreign_direct, globex["frank"], "foreign-direct")
    acme_convs = {team, lab, private, pair, removed, open_group}
    assert not acme_convs & {foreign_open, foreign_private, foreign_direct}
    acme_users = {acme[name] for name in ("pat", "alice", "bob", "carol", "olga")}
    foreign_users = [globex["erin"], globex["frank"]]
    assert not acme_users & set(foreign_users)
    return World(running, acme, globex, hidden, open_group, team, lab, foreign_users,
                 ["erin", "frank"])


class Prober:
    """pat's connection: asks, and keeps every frame it receives (replies and pushes)."""

    def __init__(self, ws: WebSocketConnection, received: list[str]) -> None:
        self.ws = ws
        self.received = received
        self._next_id = 100

    async def ask(self, frame: Frame, request_id: int | None = None) -> Frame:
        """Send `frame` with an id and return the answer to it, keeping every frame."""
        if request_id is None:
            self._next_id += 1
            request_id = self._next_id
        await send_json(self.ws, {**frame, "id": request_id})
        while True:
            message = await self.ws.get_message()
            assert isinstance(message, str)
            self.received.append(message)
            answer: Frame = json.loads(message)
            if answer.get("type") in ("reply", "error") and answer.get("id") == request_id:
                return answer


async def _answer(w: World, prober: Prober, frame: Frame, fresh: bool, request_id: int
                  ) -> Frame:
    if not fresh:
        return await prober.ask(frame, request_id)
    async with open_ws(w.running.port) as ws:
        return await Prober(ws, prober.received).ask(frame, request_id)


async def test_the_matrix_covers_every_op_of_the_router(tmp_path: Path) -> None:
    async with running_server(tmp_path / "data") as running:
        assert set(MATRIX) == _router_ops(running) == CLIENT_OPS


async def test_what_a_user_may_not_see_is_refused_exactly_as_what_does_not_exist(
    tmp_path: Path,
) -> None:
    with trio.fail_after(120):
        async with running_server(tmp_path / "data") as running:
            w = await _build(running)
            received: list[str] = []
            ops = _router_ops(running)
            assert ops == set(MATRIX), "every op of the router needs an entry in MATRIX"
            async with open_ws(running.port) as ws, open_ws(running.port) as carol_ws, \
                    open_ws(running.port) as alice_ws:
                await login(ws, "acme", "pat")
                await login(carol_ws, "acme", "carol")
                await login(alice_ws, "acme", "alice")
                prober = Prober(ws, received)
                tenants = (w.acme["tenant"], w.globex["tenant"])
                before = [snapshot(w.engine, tenant) for tenant in tenants]
                last: list[tuple[Frame, str]] = []
                failures: list[str] = []
                for op in sorted(ops):
                    probes = MATRIX[op](w)
                    for n, (hidden, missing) in enumerate(probes.hidden):
                        request_id = 10_000 + n
                        seen = await _answer(w, prober, hidden, probes.fresh, request_id)
                        baseline = await _answer(w, prober, missing, probes.fresh, request_id)
                        if _normalized(seen, _named(hidden)) != _normalized(
                                baseline, _named(missing)):
                            failures.append(f"{op}: {hidden} -> {seen}\n   but {missing} -> "
                                            f"{baseline}")
                        elif hidden.get("conv") != missing.get("conv") and \
                                seen.get("code") != "not_found":
                            failures.append(f"{op}: {hidden} -> {seen}, not not_found")
                    for frame, expected in probes.visible:
                        answer = await _answer(w, prober, frame, probes.fresh, 20_000)
                        got = answer["type"] if answer["type"] == "reply" else answer["code"]
                        if got != expected:
                            failures.append(f"{op}: {frame} -> {answer}, not {expected}")
                    for frame in probes.malformed:
                        answer = await _answer(w, prober, frame, probes.fresh, 30_000)
                        if answer.get("code") not in ("invalid", "bad_frame") or \
                                answer.get("id") != 30_000:
                            failures.append(f"{op}: malformed {frame} -> {answer}")
                    last += probes.last
                assert not failures, "\n".join(failures)
                after = [snapshot(w.engine, tenant) for tenant in tenants]
                assert after == before, "a probe changed something"

                # New messages in the hidden conversations reach their members, never pat.
                late = [(carol_ws, w.hidden["private"]), (alice_ws, w.hidden["pair"]),
                        (carol_ws, w.hidden["removed"])]
                for n, (member_ws, conv) in enumerate(late):
                    ack = await request(member_ws, {"op": "send", "id": 50 + n, "conv": conv,
                                                    "cmid": f"late-{n}", "body": CANARY + "late"})
                    assert ack["type"] == "reply", ack
                # pat's answers come in order after any push queued for it before them.
                assert (await prober.ask({"op": "ping"}))["type"] == "reply"
                listed = await prober.ask({"op": "convs"})
                assert {c["conv"] for c in listed["data"]["convs"]} == {w.team, w.lab}
                # Joining the open group pat may see, then logging out.
                for frame, expected in sorted(last, key=lambda row: row[0]["op"] == "logout"):
                    answer = await prober.ask(frame)
                    assert answer["type"] == expected, (frame, answer)

            leaked = [message for message in received if CANARY in message]
            assert not leaked, leaked
