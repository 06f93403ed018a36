"""Administrators of the appliance: accounts of no tenant, their logins and their sessions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import NOW_MS, PASSWORD, assert_refusal, create_org, refused

from engine import (
    AdminCreated,
    AdminRole,
    AdminSessionsEnded,
    Conflict,
    CreateAdmin,
    CreateAdminSession,
    CreateSession,
    Engine,
    Invalid,
    Keyring,
    NotFound,
    PruneSessions,
    SessionCreated,
    SessionsPruned,
    SetAdminPassword,
    Unauthenticated,
    hash_password,
)

HOUR_MS = 3_600_000
NAME_KEY = bytes(range(100, 132))


def token(n: int) -> bytes:
    return hashlib.sha256(b"token %d" % n).digest()


def new_admin(password_hash: str, login: str = "root-ops",
              role: AdminRole = AdminRole.OPERATOR) -> CreateAdmin:
    return CreateAdmin(login=login, display_name="Ops Person", password_hash=password_hash,
                       role=role)


def test_an_admin_is_created_found_by_login_and_listed(engine: Engine, password_hash: str) -> None:
    created = engine.apply(new_admin(password_hash), NOW_MS)
    assert created == AdminCreated(1)
    second = engine.apply(new_admin(password_hash, "sec", AdminRole.SECURITY_OFFICER), NOW_MS)
    assert second == AdminCreated(2)
    assert engine.find_admin("root-ops") == 1
    record = engine.admin(2)
    assert (record.login, record.role, record.disabled, record.created_ms) == (
        "sec", "security_officer", False, NOW_MS)
    assert [(admin, r.login) for admin, r in engine.admins()] == [(1, "root-ops"), (2, "sec")]


def test_admins_belong_to_no_tenant_and_leave_the_tenants_untouched(
        engine: Engine, password_hash: str) -> None:
    engine.apply(new_admin(password_hash), NOW_MS)
    assert engine.tenants() == []
    org = create_org(engine, "acme")
    assert [login for _, login in [(u, r.login) for u, r in engine.users(org.tenant)]] == [
        "alice", "bob", "carol", "dave"]
    with pytest.raises(NotFound):
        engine.find_user(org.tenant, "root-ops")


def test_an_admin_login_is_unique_and_follows_the_name_rules(
        engine: Engine, password_hash: str) -> None:
    engine.apply(new_admin(password_hash), NOW_MS)
    assert_refusal(refused(engine, new_admin(password_hash)), Conflict)
    for bad in ("", "Root", "-x", "a b", "a" * 65):
        assert_refusal(refused(engine, new_admin(password_hash, bad)), Invalid)
    assert_refusal(refused(engine, new_admin("plain text")), Invalid)
    odd_role = CreateAdmin(login="x", display_name="X", password_hash=password_hash,
                           role="root")  # type: ignore[arg-type]
    assert_refusal(refused(engine, odd_role), Invalid)
    assert [r.login for _, r in engine.admins()] == ["root-ops"]


def test_authenticate_admin_checks_the_password_with_one_message_for_every_failure(
        engine: Engine, password_hash: str) -> None:
    engine.apply(new_admin(password_hash), NOW_MS)
    assert engine.authenticate_admin("root-ops", PASSWORD) == (1, password_hash)
    reasons = []
    for login, password in (("root-ops", "wrong"), ("nobody", PASSWORD)):
        with pytest.raises(Unauthenticated) as refusal:
            engine.authenticate_admin(login, password)
        assert refusal.value.message == "wrong login or password"
        reasons.append(refusal.value.reason)
    assert reasons == ["wrong password", "unknown login"]


def test_a_user_login_does_not_authenticate_as_an_admin(engine: Engine) -> None:
    create_org(engine, "acme")  # alice has PASSWORD
    with pytest.raises(Unauthenticated):
        engine.authenticate_admin("alice", PASSWORD)


def test_an_admin_session_is_found_by_its_token_and_expires(
        engine: Engine, password_hash: str) -> None:
    engine.apply(new_admin(password_hash), NOW_MS)
    op = CreateAdminSession(admin=1, token_hash=token(1), expires_ms=NOW_MS + HOUR_MS,
                            password_hash=password_hash)
    assert engine.apply(op, NOW_MS) == SessionCreated(token(1), NOW_MS + HOUR_MS)
    assert engine.admin_session(token(1), NOW_MS).admin == 1
    with pytest.raises(Unauthenticated):
        engine.admin_session(token(1), NOW_MS + HOUR_MS)
    with pytest.raises(Unauthenticated):
        engine.admin_session(token(2), NOW_MS)


def test_a_user_token_is_no_admin_session_and_an_admin_token_no_user_session(
        engine: Engine, password_hash: str) -> None:
    org = create_org(engine, "acme")
    engine.apply(new_admin(password_hash), NOW_MS)
    engine.apply(CreateSession(tenant=org.tenant, user=org.alice, token_hash=token(1),
                               device="d", expires_ms=NOW_MS + HOUR_MS), NOW_MS)
    engine.apply(CreateAdminSession(admin=1, token_hash=token(2),
                                    expires_ms=NOW_MS + HOUR_MS), NOW_MS)
    with pytest.raises(Unauthenticated):
        engine.admin_session(token(1), NOW_MS)
    with pytest.raises(Unauthenticated):
        engine.session(token(2), NOW_MS)


def test_an_admin_session_is_refused_if_the_password_changed_since_the_login(
        engine: Engine, password_hash: str) -> None:
    engine.apply(new_admin(password_hash), NOW_MS)
    engine.apply(SetAdminPassword(admin=1, password_hash=hash_password("another pass 1")), NOW_MS)
    late = CreateAdminSession(admin=1, token_hash=token(1), expires_ms=NOW_MS + HOUR_MS,
                              password_hash=password_hash)
    assert_refusal(refused(engine, late), Unauthenticated)


def test_a_new_admin_password_ends_every_session_of_that_admin_only(
        engine: Engine, password_hash: str) -> None:
    engine.apply(new_admin(password_hash), NOW_MS)
    engine.apply(new_admin(password_hash, "other"), NOW_MS)
    for n, admin in ((1, 1), (2, 1), (3, 2)):
        engine.apply(CreateAdminSession(admin=admin, token_hash=token(n),
                                        expires_ms=NOW_MS + HOUR_MS), NOW_MS)
    new_hash = hash_password("another pass 1")
    ended = engine.apply(SetAdminPassword(admin=1, password_hash=new_hash), NOW_MS)
    assert isinstance(ended, AdminSessionsEnded)
    assert (ended.admin, sorted(ended.token_hashes)) == (1, sorted([token(1), token(2)]))
    for n in (1, 2):
        with pytest.raises(Unauthenticated):
            engine.admin_session(token(n), NOW_MS)
    assert engine.admin_session(token(3), NOW_MS).admin == 2
    assert engine.authenticate_admin("root-ops", "another pass 1")[0] == 1
    assert_refusal(refused(engine, SetAdminPassword(admin=9, password_hash=new_hash)), NotFound)


def test_admin_records_are_sealed_and_their_logins_blinded_in_a_sealed_store(
        tmp_path: Path, password_hash: str) -> None:
    path = tmp_path / "sealed"
    engine = Engine(path, map_size=256 * 2**20, keyring=Keyring(name_key=NAME_KEY))
    try:
        engine.apply(new_admin(password_hash, "visible-login"), NOW_MS)
        assert engine.find_admin("visible-login") == 1
    finally:
        engine.close()
    stored = (path / "data.mdb").read_bytes()
    assert b"visible-login" not in stored
    assert b"Ops Person" not in stored
    assert password_hash.encode() not in stored
    again = Engine(path, map_size=256 * 2**20, keyring=Keyring(name_key=NAME_KEY))
    try:
        assert engine is not again and again.admin(1).login == "visible-login"
    finally:
        again.close()


def test_pruning_sessions_deletes_expired_admin_sessions_too(
        engine: Engine, password_hash: str) -> None:
    engine.apply(new_admin(password_hash), NOW_MS)
    engine.apply(CreateAdminSession(admin=1, token_hash=token(1), expires_ms=NOW_MS + 10),
                 NOW_MS)
    engine.apply(CreateAdminSession(admin=1, token_hash=token(2),
                                    expires_ms=NOW_MS + HOUR_MS), NOW_MS)
    pruned = engine.apply(PruneSessions(), NOW_MS + 10)
    assert pruned == SessionsPruned(1, False)
    assert engine.stats()["admin_sessions"] == 1
    assert engine.stats()["admin_live_sessions"] == 1
    assert engine.admin_session(token(2), NOW_MS + 10).admin == 1
    engine.apply(CreateAdminSession(admin=1, token_hash=token(3), expires_ms=NOW_MS + 20),
                 NOW_MS)
    engine.apply(CreateAdminSession(admin=1, token_hash=token(4), expires_ms=NOW_MS + 20),
                 NOW_MS)
    assert engine.apply(PruneSessions(max_count=1), NOW_MS + HOUR_MS) == SessionsPruned(1, True)
