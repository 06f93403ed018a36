"""The gateway records its security events in the audit log, through the one writer, over a
real server: a login (in the transaction of its session), each failed check with its reason,
a lockout once, a user's own password change, a logout; a typed login or tenant that names
nobody never reaches an entry, and no password reaches an entry or a log line."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
import pytest
import trio
from clients import login, open_ws, request
from conftest import NOW_MS, PASSWORD
from servers import RunningServer, running_server, seed_org

from appliance.gateway.backoff import ACCOUNT_LOCK_ADDRESSES
from engine import ActorKind, AuditAction, AuditEntry, AuditOutcome, SetUserDisabled

CANARY = "canary-5d27e1-password"
NEW_PASSWORD = "canary-9b03aa-new-password"


def entries(running: RunningServer) -> list[AuditEntry]:
    return running.engine.audit_entries(limit=1000).entries


def texts(entry: AuditEntry) -> str:
    return msgspec.json.encode(entry).decode()


async def failed_login(port: int, tenant: str, login_name: str, password: str,
                       address: str) -> dict[str, object]:
    async with open_ws(port, local_address=address) as ws:
        return await request(ws, {"op": "login", "id": 4, "tenant": tenant,
                                  "login": login_name, "password": password})


async def test_a_login_leaves_one_entry_committed_with_its_session(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_server(tmp_path / "data") as running:
            acme = seed_org(running.engine, "acme", ["alice"])
            async with open_ws(running.port) as ws:
                reply = await request(ws, {"op": "login", "id": 1, "tenant": "acme",
                                           "login": "alice", "password": PASSWORD,
                                           "device": "laptop"})
                data = reply["data"]
            ((_, session),) = running.engine.sessions(acme["tenant"], acme["alice"])
            (entry,) = entries(running)
    assert entry.action is AuditAction.SESSION_CREATE
    assert entry.outcome is AuditOutcome.OK
    assert (entry.actor.kind, entry.actor.tenant, entry.actor.id, entry.actor.name) == (
        ActorKind.USER, acme["tenant"], acme["alice"], "alice")
    assert (entry.tenant, entry.target) == (acme["tenant"], f"user:{acme['alice']}")
    # Written by the batch that stored the session: the same time, the same expiry.
    assert entry.time_ms == session.created_ms
    assert entry.details["expires_ms"] == session.expires_ms == data["expires_ms"]
    assert entry.details["device"] == "laptop"


async def test_each_failed_login_leaves_one_entry_with_its_reason_and_no_typed_unknown_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="herald")
    with trio.fail_after(30):
        async with running_server(tmp_path / "data", login_failure_delay_s=0.01) as running:
            acme = seed_org(running.engine, "acme", ["alice", "carol"])
            running.engine.apply(SetUserDisabled(tenant=acme["tenant"], user=acme["carol"],
                                                 disabled=True), NOW_MS)
            before = len(entries(running))
            cases = [  # (tenant, login, password, address): (reason, actor id, target)
                (("acme", "alice", CANARY, "127.0.0.2"),
                 ("wrong password", acme["alice"], f"user:{acme['alice']}")),
                (("acme", "nobody-typed-x", CANARY, "127.0.0.3"), ("unknown login", 0, "")),
                (("initech-typed-y", "alice", CANARY, "127.0.0.4"), ("unknown tenant", 0, "")),
                (("acme", "carol", PASSWORD, "127.0.0.5"),
                 ("disabled", acme["carol"], f"user:{acme['carol']}")),
            ]
            for (tenant, login_name, password, address), _ in cases:
                reply = await failed_login(running.port, tenant, login_name, password, address)
                assert reply["code"] == "unauthenticated", reply
            made = entries(running)[before:]
    assert len(made) == len(cases)
    for entry, ((_, _, _, address), (reason, actor_id, target)) in zip(made, cases,
                                                                            strict=True):
        assert entry.action is AuditAction.LOGIN_FAILED, entry
        assert entry.outcome is AuditOutcome.REFUSED
        assert entry.reason == reason
        assert entry.actor.kind is ActorKind.USER
        assert entry.actor.id == actor_id and entry.target == target
        assert entry.details["address"] == address
        expected_tenant = 0 if reason == "unknown tenant" else acme["tenant"]
        assert entry.tenant == entry.actor.tenant == expected_tenant
    unknown_login, unknown_tenant = made[1], made[2]
    assert unknown_login.actor.name == "" and "nobody-typed-x" not in texts(unknown_login)
    assert "initech-typed-y" not in texts(unknown_tenant)
    assert unknown_tenant.actor.name == ""
    for entry in made:
        assert CANARY not in texts(entry) and PASSWORD not in texts(entry)
    logged = "\n".join(f"{r.getMessage()} {r.args}" for r in caplog.records)
    assert CANARY not in logged and PASSWORD not in logged


async def test_a_lockout_leaves_one_entry_however_many_failures_follow(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_server(tmp_path / "data", login_failure_delay_s=0.01) as running:
            acme = seed_org(running.engine, "acme", ["alice"])
            addresses = [f"127.0.1.{n}" for n in range(2, 2 + ACCOUNT_LOCK_ADDRESSES + 2)]
            for address in addresses:
                await failed_login(running.port, "acme", "alice", CANARY, address)
            made = entries(running)
    failed = [e for e in made if e.action is AuditAction.LOGIN_FAILED]
    locked = [e for e in made if e.action is AuditAction.LOGIN_LOCKED_OUT]
    assert len(failed) == len(addresses)
    (lockout,) = locked
    assert lockout.actor.kind is ActorKind.SYSTEM
    assert (lockout.tenant, lockout.target) == (acme["tenant"], f"user:{acme['alice']}")
    assert lockout.details["addresses"] == ACCOUNT_LOCK_ADDRESSES
    # It follows the failure that locked the account, the last of the distinct addresses.
    assert made.index(lockout) == made.index(failed[ACCOUNT_LOCK_ADDRESSES - 1]) + 1
    assert CANARY not in texts(lockout)


async def test_a_lockout_of_an_unknown_login_names_nobody(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_server(tmp_path / "data", login_failure_delay_s=0.01) as running:
            seed_org(running.engine, "acme", ["alice"])
            for n in range(2, 2 + ACCOUNT_LOCK_ADDRESSES):
                await failed_login(running.port, "acme", "ghost-typed-z", CANARY, f"127.0.2.{n}")
            (lockout,) = [e for e in entries(running)
                          if e.action is AuditAction.LOGIN_LOCKED_OUT]
    assert lockout.target == "" and lockout.reason == "unknown login"
    assert "ghost-typed-z" not in texts(lockout)


async def test_a_password_change_and_a_wrong_current_password_leave_one_entry_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="herald")
    with trio.fail_after(30):
        async with running_server(tmp_path / "data", login_failure_delay_s=0.01) as running:
            acme = seed_org(running.engine, "acme", ["alice"])
            async with open_ws(running.port) as ws:
                await login(ws, "acme", "alice")
                before = len(entries(running))
                refused = await request(ws, {"op": "password", "id": 2, "current": CANARY,
                                             "new": NEW_PASSWORD})
                assert refused["code"] == "wrong_password", refused
                wrong = entries(running)[before:]
                changed = await request(ws, {"op": "password", "id": 3, "current": PASSWORD,
                                             "new": NEW_PASSWORD})
                assert changed["type"] == "reply", changed
                everything = entries(running)
                made = everything[before:]
    (failure,) = wrong
    assert failure.action is AuditAction.LOGIN_FAILED
    assert failure.reason == "wrong current password"
    assert (failure.actor.kind, failure.actor.id) == (ActorKind.USER, acme["alice"])
    assert failure.target == f"user:{acme['alice']}"
    (_, change) = made
    assert change.action is AuditAction.USER_CHANGE_PASSWORD
    assert (change.actor.kind, change.actor.id, change.actor.name) == (
        ActorKind.USER, acme["alice"], "alice")
    assert change.details == {"sessions_ended": 1}
    for entry in everything:
        assert CANARY not in texts(entry) and NEW_PASSWORD not in texts(entry)
    logged = "\n".join(f"{r.getMessage()} {r.args}" for r in caplog.records)
    assert CANARY not in logged and NEW_PASSWORD not in logged and PASSWORD not in logged


@pytest.mark.parametrize(("everywhere", "action"), [
    (False, AuditAction.SESSION_REVOKE), (True, AuditAction.USER_REVOKE_SESSIONS)])
async def test_a_logout_leaves_one_entry(tmp_path: Path, everywhere: bool,
                                         action: AuditAction) -> None:
    with trio.fail_after(30):
        async with running_server(tmp_path / "data") as running:
            acme = seed_org(running.engine, "acme", ["alice"])
            async with open_ws(running.port) as ws:
                await login(ws, "acme", "alice")
                before = len(entries(running))
                reply = await request(ws, {"op": "logout", "id": 2, "everywhere": everywhere})
                assert reply["type"] == "reply", reply
            (entry,) = entries(running)[before:]
    assert entry.action is action
    assert (entry.actor.kind, entry.actor.id) == (ActorKind.USER, acme["alice"])
    assert entry.details["sessions_ended"] == 1


async def test_a_request_refused_before_any_check_writes_no_entry(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_server(tmp_path / "data") as running:
            seed_org(running.engine, "acme", ["alice"])
            async with open_ws(running.port) as ws:
                await login(ws, "acme", "alice")
                before = len(entries(running))
                again = await request(ws, {"op": "login", "id": 2, "tenant": "acme",
                                           "login": "alice", "password": CANARY})
                assert again["code"] == "invalid", again
                weak = await request(ws, {"op": "password", "id": 3, "current": CANARY,
                                          "new": "x"})
                assert weak["type"] == "error", weak
                assert len(entries(running)) == before
            async with open_ws(running.port) as ws:
                unauthenticated = await request(ws, {"op": "convs", "id": 5})
                assert unauthenticated["type"] == "error"
            assert len(entries(running)) == before
