"""A storage error that is not the client's doing, in one op of a batch: that op alone is
refused with `internal` (logged with its traceback), the rest of its batch commits, and the
writer and the connection go on.

The error is a real one: `[limits] max_client_msg_id_bytes` raised past what an LMDB key can
hold makes LMDB refuse a long client_msg_id's dedupe key (BadValsizeError).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lmdb
import pytest
import trio
from clients import open_ws, receive_json, send_json
from conftest import NOW_MS, PASSWORD, create_org
from servers import running_server, seed_org

from appliance.gateway.writer import Writer
from appliance.protocol.frames import ConvsRequest
from engine import Append, Appended, CreateGroup, Engine, HeraldError, InternalError, Limits

OVERSIZED_KEY_LIMITS = Limits(max_client_msg_id_bytes=600)
TOO_LONG_CMID = "x" * 600


def _caused_by(record: logging.LogRecord, kind: type[BaseException]) -> bool:
    assert record.exc_info is not None, record.getMessage()
    error: BaseException | None = record.exc_info[1]
    while error is not None:
        if isinstance(error, kind):
            return True
        error = error.__cause__ or error.__context__
    return False


async def test_a_storage_error_in_one_op_refuses_that_op_alone_and_its_batch_commits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    engine = Engine(tmp_path / "store", map_size=2**24, limits=OVERSIZED_KEY_LIMITS)
    try:
        org = create_org(engine, "acme")
        conv = engine.apply(CreateGroup(tenant=org.tenant, creator=org.alice, title="g"),
                            NOW_MS).conv  # type: ignore[union-attr]
        batches: list[int] = []
        writer = Writer(engine, on_committed=lambda batch: batches.append(len(batch)),
                        clock_ms=lambda: NOW_MS)
        outcomes: dict[str, object] = {}

        def send(cmid: str) -> None:
            op = Append(tenant=org.tenant, conv=conv, sender=org.alice, client_msg_id=cmid,
                        body=cmid[:10])
            writer.submit(op, lambda outcome: outcomes.__setitem__(cmid, outcome))

        with trio.fail_after(30), caplog.at_level(logging.ERROR, "herald.writer"):
            async with trio.open_nursery() as nursery:
                await nursery.start(writer.run)
                for cmid in ("before", TOO_LONG_CMID, "after"):  # one batch: no await between
                    send(cmid)
                while len(outcomes) < 3:
                    await trio.sleep(0.01)
                send("later")
                while len(outcomes) < 4:
                    await trio.sleep(0.01)
                writer.close()

        failed = outcomes[TOO_LONG_CMID]
        assert isinstance(failed, InternalError) and failed.code == "internal"
        assert [outcomes[c] for c in ("before", "after", "later")] == [
            Appended(conv, 2, NOW_MS), Appended(conv, 3, NOW_MS), Appended(conv, 4, NOW_MS)]
        assert batches[0] == 3  # the hub is told of the whole batch, refusal included
        assert [m.body for m in engine.messages(org.tenant, conv, 2, 9)] == [
            "before", "after", "later"]
        (logged,) = [r for r in caplog.records if r.name == "herald.writer"]
        assert _caused_by(logged, lmdb.BadValsizeError)
    finally:
        engine.close()


async def test_a_client_gets_internal_for_the_one_send_the_store_failed_and_stays_connected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(30), caplog.at_level(logging.ERROR, "herald"):
        async with running_server(tmp_path / "data", limits=OVERSIZED_KEY_LIMITS) as running:
            ids = seed_org(running.engine, "acme", ["alice", "bob"])
            conv = running.engine.apply(
                CreateGroup(tenant=ids["tenant"], creator=ids["alice"], title="team",
                            members=(ids["bob"],)), NOW_MS).conv  # type: ignore[union-attr]
            async with open_ws(running.port) as ws:
                await send_json(ws, {"op": "login", "id": 1, "tenant": "acme", "login": "alice",
                                     "password": PASSWORD})
                assert (await receive_json(ws))["type"] == "reply"
                for n, cmid in enumerate(("first", TOO_LONG_CMID, "second"), start=10):
                    await send_json(ws, {"op": "send", "id": n, "conv": conv, "cmid": cmid,
                                         "body": "hello"})
                replies = {}
                for _ in range(3):
                    frame = await receive_json(ws)
                    replies[frame["id"]] = frame
                await send_json(ws, {"op": "ping", "id": 20})
                pong = await receive_json(ws)

    assert replies[11]["type"] == "error" and replies[11]["code"] == "internal", replies[11]
    assert TOO_LONG_CMID not in replies[11]["message"]
    assert [replies[n]["type"] for n in (10, 12)] == ["reply", "reply"]
    assert pong == {"type": "reply", "id": 20, "data": {}}
    assert any(_caused_by(r, lmdb.BadValsizeError) for r in caplog.records if r.exc_info)


def test_an_internal_error_is_a_refusal_with_its_own_stable_code() -> None:
    assert issubclass(InternalError, HeraldError)
    assert InternalError("x").code == "internal"


async def test_a_bug_in_one_read_is_answered_internal_and_the_server_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    # No read of the store fails for real on demand: one handler is replaced by one that
    # fails as a bug would, and the server must answer it, log it, and serve the next request.
    with trio.fail_after(30), caplog.at_level(logging.ERROR, "herald"):
        async with running_server(tmp_path / "data") as running:
            seed_org(running.engine, "acme", ["alice"])
            router = running.server.services.router

            def broken(conn: object, request: object) -> object:
                return {}["missing"]  # a KeyError, as a bug raises

            router._handlers[ConvsRequest] = broken
            async with open_ws(running.port) as ws, open_ws(running.port) as other:
                for sock in (ws, other):
                    await send_json(sock, {"op": "login", "id": 1, "tenant": "acme",
                                           "login": "alice", "password": PASSWORD})
                    assert (await receive_json(sock))["type"] == "reply"
                await send_json(ws, {"op": "convs", "id": 2})
                failed = await receive_json(ws)
                await send_json(ws, {"op": "ping", "id": 3})
                pong = await receive_json(ws)
                await send_json(other, {"op": "ping", "id": 4})
                other_pong = await receive_json(other)

    assert (failed["type"], failed["id"], failed["code"]) == ("error", 2, "internal")
    assert (pong["id"], other_pong["id"]) == (3, 4)
    assert any(_caused_by(r, KeyError) for r in caplog.records if r.exc_info)
