"""Sessions in the engine: stored by token hash, read back only while live, revoked (one, all of
a user's, by a password change or a disable) in the same transaction, pruned after expiry."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass

import lmdb
import pytest
from conftest import NOW_MS, PASSWORD, Org, assert_refusal, refused
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from engine import (
    ChangePassword,
    Conflict,
    CorruptData,
    CreateSession,
    CreateTenant,
    CreateUser,
    Engine,
    Invalid,
    NotFound,
    PasswordChanged,
    PruneSessions,
    RevokeSession,
    RevokeUserSessions,
    SessionCreated,
    SessionEnd,
    SessionsPruned,
    SessionsRevoked,
    SetPassword,
    SetUserDisabled,
    Unauthenticated,
    WrongPassword,
    hash_password,
)

HOUR_MS = 3_600_000


def new_hash() -> bytes:
    return hashlib.sha256(os.urandom(32)).digest()


def create(engine: Engine, org: Org, user: int, *, device: str = "laptop",
           expires_ms: int = NOW_MS + HOUR_MS) -> bytes:
    digest = new_hash()
    result = engine.apply(CreateSession(tenant=org.tenant, user=user, token_hash=digest,
                                        device=device, expires_ms=expires_ms), NOW_MS)
    assert result == SessionCreated(digest, expires_ms)
    return digest


def test_a_created_session_is_found_by_its_hash_until_it_expires(engine: Engine, org: Org) -> None:
    digest = create(engine, org, org.alice)
    record = engine.session(digest, NOW_MS + 1)
    assert (record.tenant, record.user, record.device) == (org.tenant, org.alice, "laptop")
    assert (record.created_ms, record.expires_ms, record.ended) == (NOW_MS, NOW_MS + HOUR_MS, "")
    with pytest.raises(Unauthenticated):
        engine.session(digest, NOW_MS + HOUR_MS)  # expiry is exclusive
    with pytest.raises(Unauthenticated):
        engine.session(new_hash(), NOW_MS)  # never stored
    with pytest.raises(Unauthenticated):
        engine.session(b"short", NOW_MS)
    assert engine.ended_sessions([digest], NOW_MS + HOUR_MS) == {digest: SessionEnd.EXPIRED}


def test_creating_a_session_checks_its_arguments(engine: Engine, org: Org) -> None:
    def op(**changes: object) -> CreateSession:
        fields: dict[str, object] = dict(tenant=org.tenant, user=org.alice,
                                         token_hash=new_hash(), device="", expires_ms=NOW_MS + 1)
        fields.update(changes)
        return CreateSession(**fields)  # type: ignore[arg-type]

    assert_refusal(refused(engine, op(token_hash=b"x" * 31)), Invalid)
    assert_refusal(refused(engine, op(expires_ms=NOW_MS)), Invalid)
    assert_refusal(refused(engine, op(device="d" * 65)), Invalid)
    assert_refusal(refused(engine, op(user=10_000)), NotFound)
    other = engine.apply(SetUserDisabled(tenant=org.tenant, user=org.bob, disabled=True), NOW_MS)
    assert other == SessionsRevoked(org.tenant, org.bob, (), SessionEnd.ACCOUNT_DISABLED)
    assert_refusal(refused(engine, op(user=org.bob)), Unauthenticated)
    assert engine.stats()["sessions"] == 0


def test_a_session_checked_against_a_password_since_changed_is_refused(
    engine: Engine, org: Org, password_hash: str,
) -> None:
    def op(checked: str) -> CreateSession:
        return CreateSession(tenant=org.tenant, user=org.alice, token_hash=new_hash(), device="",
                             expires_ms=NOW_MS + HOUR_MS, password_hash=checked)

    assert isinstance(engine.apply(op(password_hash), NOW_MS), SessionCreated)
    engine.apply(SetPassword(tenant=org.tenant, user=org.alice,
                             password_hash=hash_password("a changed password")), NOW_MS)
    # A login that verified the old password, committing after the change, gets no session.
    assert_refusal(refused(engine, op(password_hash)), Unauthenticated)
    assert engine.sessions(org.tenant, org.alice) == []


NEW_PASSWORD = "a self-chosen password"
_NEW_HASH = hash_password(NEW_PASSWORD, rng=lambda n: b"another-salt-16b"[:n])


def change(asking: bytes, checked: str, *, new_token: bytes | None = None,
           expires_ms: int = NOW_MS + 2 * HOUR_MS) -> ChangePassword:
    return ChangePassword(token_hash=asking, checked_hash=checked, password_hash=_NEW_HASH,
                          new_token_hash=new_token or new_hash(), expires_ms=expires_ms)


def test_a_self_service_change_ends_every_session_and_starts_one_for_the_asker(
    engine: Engine, org: Org, password_hash: str,
) -> None:
    asking = create(engine, org, org.alice, device="phone")
    others = {create(engine, org, org.alice) for _ in range(2)}
    bobs = create(engine, org, org.bob)
    checked = engine.check_password(org.tenant, org.alice, PASSWORD)
    assert checked == password_hash
    successor = new_hash()
    result = engine.apply(change(asking, checked, new_token=successor), NOW_MS)
    assert isinstance(result, PasswordChanged)
    assert result.revoked.reason == SessionEnd.PASSWORD_CHANGED
    assert set(result.revoked.token_hashes) == others | {asking}  # the asker's old token too
    assert result.session == SessionCreated(successor, NOW_MS + 2 * HOUR_MS)
    record = engine.session(successor, NOW_MS)
    assert (record.tenant, record.user, record.device) == (org.tenant, org.alice, "phone")
    assert [digest for digest, _ in engine.sessions(org.tenant, org.alice)] == [successor]
    assert engine.ended_sessions([asking, *others], NOW_MS) == dict.fromkeys(
        [asking, *others], SessionEnd.PASSWORD_CHANGED)
    assert engine.authenticate(org.tenant, "alice", NEW_PASSWORD) == org.alice
    with pytest.raises(Unauthenticated):
        engine.authenticate(org.tenant, "alice", PASSWORD)
    assert engine.session(bobs, NOW_MS).user == org.bob
    assert engine.authenticate(org.tenant, "bob", PASSWORD) == org.bob


def test_checking_the_current_password_says_wrong_password_and_changes_nothing(
    engine: Engine, org: Org,
) -> None:
    with pytest.raises(WrongPassword) as wrong:
        engine.check_password(org.tenant, org.alice, "not her password")
    assert wrong.value.code == "wrong_password"
    with pytest.raises(WrongPassword):
        engine.check_password(org.tenant, org.alice, "x" * 5000)  # too long to hash: wrong
    with pytest.raises(NotFound):
        engine.check_password(org.tenant, 10_000, PASSWORD)
    assert engine.authenticate(org.tenant, "alice", PASSWORD) == org.alice


def test_a_change_asked_by_a_session_no_longer_live_is_refused_and_writes_nothing(
    engine: Engine, org: Org, password_hash: str,
) -> None:
    revoked = create(engine, org, org.alice)
    engine.apply(RevokeSession(token_hash=revoked), NOW_MS)
    expiring = create(engine, org, org.alice, expires_ms=NOW_MS + 10)
    live = create(engine, org, org.alice)
    before = engine.stats()
    assert_refusal(refused(engine, change(revoked, password_hash)), Unauthenticated)
    assert_refusal(refused(engine, change(expiring, password_hash), NOW_MS + 10),
                   Unauthenticated)
    assert_refusal(refused(engine, change(new_hash(), password_hash)), Unauthenticated)
    # The stored hash moved since the check (the guard behind "every change ends every
    # session"), a token that is taken, the asker's own token, an expiry in the past:
    assert_refusal(refused(engine, change(live, _NEW_HASH)), Unauthenticated)
    assert_refusal(refused(engine, change(live, password_hash, new_token=expiring)), Conflict)
    assert_refusal(refused(engine, change(live, password_hash, new_token=live)), Invalid)
    assert_refusal(refused(engine, change(live, password_hash, expires_ms=NOW_MS)), Invalid)
    bad_hash = ChangePassword(token_hash=live, checked_hash=password_hash,
                              password_hash="plain text", new_token_hash=new_hash(),
                              expires_ms=NOW_MS + HOUR_MS)
    assert_refusal(refused(engine, bad_hash), Invalid)
    assert engine.stats() == before
    assert engine.session(live, NOW_MS).user == org.alice
    assert engine.authenticate(org.tenant, "alice", PASSWORD) == org.alice


def test_a_change_by_a_disabled_account_is_refused(
    engine: Engine, org: Org, password_hash: str,
) -> None:
    live = create(engine, org, org.alice)
    engine.apply(SetUserDisabled(tenant=org.tenant, user=org.alice, disabled=True), NOW_MS)
    assert_refusal(refused(engine, change(live, password_hash)), Unauthenticated)


def test_a_logout_everywhere_committed_first_in_the_same_batch_refuses_the_change(
    engine: Engine, org: Org, password_hash: str,
) -> None:
    asking = create(engine, org, org.alice)
    ended, refusal = engine.apply_batch(
        [RevokeUserSessions(tenant=org.tenant, user=org.alice), change(asking, password_hash)],
        NOW_MS)
    assert isinstance(ended, SessionsRevoked) and ended.token_hashes == (asking,)
    assert_refusal(refusal, Unauthenticated)
    assert engine.authenticate(org.tenant, "alice", PASSWORD) == org.alice
    assert engine.sessions(org.tenant, org.alice) == []


def test_revoking_one_session_leaves_the_others_and_says_why(engine: Engine, org: Org) -> None:
    first, second = create(engine, org, org.alice), create(engine, org, org.alice, device="phone")
    result = engine.apply(RevokeSession(token_hash=first, reason=SessionEnd.LOGGED_OUT), NOW_MS)
    assert result == SessionsRevoked(org.tenant, org.alice, (first,), SessionEnd.LOGGED_OUT)
    with pytest.raises(Unauthenticated):
        engine.session(first, NOW_MS)
    assert engine.session(second, NOW_MS).device == "phone"
    assert [digest for digest, _ in engine.sessions(org.tenant, org.alice)] == [second]
    assert engine.ended_sessions([first, second], NOW_MS) == {first: SessionEnd.LOGGED_OUT}
    # Revoking it again changes nothing; an unknown hash is not found.
    again = engine.apply(RevokeSession(token_hash=first), NOW_MS)
    assert again == SessionsRevoked(org.tenant, org.alice, (), SessionEnd.REVOKED)
    assert_refusal(refused(engine, RevokeSession(token_hash=new_hash())), NotFound)


def test_revoking_a_users_sessions_ends_all_of_them_and_no_one_elses(
    engine: Engine, org: Org,
) -> None:
    alices = {create(engine, org, org.alice) for _ in range(5)}
    bobs = create(engine, org, org.bob)
    result = engine.apply(RevokeUserSessions(tenant=org.tenant, user=org.alice), NOW_MS)
    assert isinstance(result, SessionsRevoked)
    assert set(result.token_hashes) == alices and result.reason == SessionEnd.REVOKED
    assert engine.sessions(org.tenant, org.alice) == []
    assert engine.ended_sessions([*alices, bobs], NOW_MS) == dict.fromkeys(
        alices, SessionEnd.REVOKED)
    assert engine.session(bobs, NOW_MS).user == org.bob
    assert_refusal(refused(engine, RevokeUserSessions(tenant=org.tenant, user=10_000)), NotFound)


def test_a_password_change_replaces_the_hash_and_ends_every_session_in_one_commit(
    engine: Engine, org: Org,
) -> None:
    digests = {create(engine, org, org.alice) for _ in range(3)}
    new_password = "a brand new password"
    result = engine.apply(SetPassword(tenant=org.tenant, user=org.alice,
                                      password_hash=hash_password(new_password)), NOW_MS)
    assert result == SessionsRevoked(org.tenant, org.alice, result.token_hashes,  # type: ignore[union-attr]
                                     SessionEnd.PASSWORD_CHANGED)
    assert set(result.token_hashes) == digests  # type: ignore[union-attr]
    assert engine.authenticate(org.tenant, "alice", new_password) == org.alice
    with pytest.raises(Unauthenticated):
        engine.authenticate(org.tenant, "alice", PASSWORD)
    assert engine.ended_sessions(list(digests), NOW_MS) == dict.fromkeys(
        digests, SessionEnd.PASSWORD_CHANGED)
    assert_refusal(refused(engine, SetPassword(tenant=org.tenant, user=org.alice,
                                               password_hash="plain text")), Invalid)


def test_disabling_ends_every_session_and_enabling_allows_logging_in_again(
    engine: Engine, org: Org,
) -> None:
    digest = create(engine, org, org.alice)
    engine.apply(SetUserDisabled(tenant=org.tenant, user=org.alice, disabled=True), NOW_MS)
    assert engine.user(org.tenant, org.alice).disabled
    assert engine.ended_sessions([digest], NOW_MS) == {digest: SessionEnd.ACCOUNT_DISABLED}
    with pytest.raises(Unauthenticated):
        engine.authenticate(org.tenant, "alice", PASSWORD)
    engine.apply(SetUserDisabled(tenant=org.tenant, user=org.alice, disabled=False), NOW_MS)
    assert engine.authenticate(org.tenant, "alice", PASSWORD) == org.alice
    with pytest.raises(Unauthenticated):
        engine.session(digest, NOW_MS)  # enabling does not bring old sessions back


def test_a_refused_session_op_in_a_batch_leaves_the_others_applied(
    engine: Engine, org: Org,
) -> None:
    digest = new_hash()
    results = engine.apply_batch([
        RevokeSession(token_hash=new_hash()),
        CreateSession(tenant=org.tenant, user=org.alice, token_hash=digest, device="",
                      expires_ms=NOW_MS + HOUR_MS),
    ], NOW_MS)
    assert_refusal(results[0], NotFound)
    assert results[1] == SessionCreated(digest, NOW_MS + HOUR_MS)


def test_pruning_deletes_expired_sessions_live_or_revoked_in_bounded_steps(
    engine: Engine, org: Org,
) -> None:
    live = create(engine, org, org.alice, expires_ms=NOW_MS + 10 * HOUR_MS)
    expired = [create(engine, org, org.alice) for _ in range(3)]
    engine.apply(RevokeSession(token_hash=expired[0]), NOW_MS)
    later = NOW_MS + 2 * HOUR_MS
    assert engine.apply(PruneSessions(max_count=2), later) == SessionsPruned(2, True)
    assert engine.apply(PruneSessions(max_count=2), later) == SessionsPruned(1, False)
    assert engine.apply(PruneSessions(), later) == SessionsPruned(0, False)
    assert engine.stats()["sessions"] == 1 and engine.stats()["user_sessions"] == 1
    assert [digest for digest, _ in engine.sessions(org.tenant, org.alice)] == [live]
    assert_refusal(refused(engine, PruneSessions(max_count=0)), Invalid)


def test_sessions_survive_reopening_the_store(engine: Engine, org: Org) -> None:
    digest = create(engine, org, org.carol)
    path = engine.path
    engine.close()
    reopened = Engine(path, map_size=256 * 2**20)
    try:
        assert reopened.session(digest, NOW_MS).user == org.carol
    finally:
        reopened.close()


# -- against a model ---------------------------------------------------------------------------

MODEL_USERS = 3


@dataclass
class ModelSession:
    user: int
    expires_ms: int
    ended: SessionEnd | None = None
    pruned: bool = False


class SessionMachine(RuleBasedStateMachine):
    """Sessions under any mix of create, revoke, password change, disable, prune and time,
    checked against a plain dict."""

    def __init__(self, password_hash: str) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="herald-sessions-")
        self.engine = Engine(self.dir, map_size=64 * 2**20)
        self.now = NOW_MS
        self.password_hash = password_hash
        self.tenant = self.engine.apply(CreateTenant(name="acme"), NOW_MS).tenant  # type: ignore[union-attr]
        self.users = [
            self.engine.apply(CreateUser(tenant=self.tenant, login=f"u{i}", display_name="U",
                                         password_hash=password_hash), NOW_MS).user  # type: ignore[union-attr]
            for i in range(MODEL_USERS)
        ]
        self.disabled = dict.fromkeys(self.users, False)
        self.model: dict[bytes, ModelSession] = {}
        self.counter = 0

    def teardown(self) -> None:
        self.engine.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _end_user(self, user: int, reason: SessionEnd) -> set[bytes]:
        ended = {h for h, s in self.model.items()
                 if s.user == user and s.ended is None and not s.pruned}
        for digest in ended:
            self.model[digest].ended = reason
        return ended

    @rule(who=st.integers(0, MODEL_USERS - 1), lifetime_ms=st.integers(1, 5 * HOUR_MS))
    def create(self, who: int, lifetime_ms: int) -> None:
        self.counter += 1
        digest = hashlib.sha256(b"%d" % self.counter).digest()
        user = self.users[who]
        op = CreateSession(tenant=self.tenant, user=user, token_hash=digest, device="d",
                           expires_ms=self.now + lifetime_ms)
        (result,) = self.engine.apply_batch([op], self.now)
        if self.disabled[user]:
            assert_refusal(result, Unauthenticated)
            return
        assert result == SessionCreated(digest, self.now + lifetime_ms)
        self.model[digest] = ModelSession(user, self.now + lifetime_ms)

    @rule(data=st.data(), reason=st.sampled_from(list(SessionEnd)))
    def revoke_one(self, data: st.DataObject, reason: SessionEnd) -> None:
        if not self.model:
            return
        digest = data.draw(st.sampled_from(sorted(self.model)))
        session = self.model[digest]
        (result,) = self.engine.apply_batch(
            [RevokeSession(token_hash=digest, reason=reason)], self.now)
        if session.pruned:
            assert_refusal(result, NotFound)
            return
        ended = () if session.ended is not None else (digest,)
        assert result == SessionsRevoked(self.tenant, session.user, ended, reason)
        if session.ended is None:
            session.ended = reason

    @rule(who=st.integers(0, MODEL_USERS - 1))
    def revoke_user(self, who: int) -> None:
        user = self.users[who]
        result = self.engine.apply(RevokeUserSessions(tenant=self.tenant, user=user), self.now)
        assert isinstance(result, SessionsRevoked)
        assert set(result.token_hashes) == self._end_user(user, SessionEnd.REVOKED)

    @rule(who=st.integers(0, MODEL_USERS - 1))
    def change_password(self, who: int) -> None:
        user = self.users[who]
        result = self.engine.apply(SetPassword(tenant=self.tenant, user=user,
                                               password_hash=self.password_hash), self.now)
        assert isinstance(result, SessionsRevoked)
        assert set(result.token_hashes) == self._end_user(user, SessionEnd.PASSWORD_CHANGED)

    @rule(who=st.integers(0, MODEL_USERS - 1), disabled=st.booleans())
    def set_disabled(self, who: int, disabled: bool) -> None:
        user = self.users[who]
        result = self.engine.apply(SetUserDisabled(tenant=self.tenant, user=user,
                                                   disabled=disabled), self.now)
        assert isinstance(result, SessionsRevoked)
        expected = self._end_user(user, SessionEnd.ACCOUNT_DISABLED) if disabled else set()
        assert set(result.token_hashes) == expected
        self.disabled[user] = disabled

    @rule(max_count=st.integers(1, 4))
    def prune(self, max_count: int) -> None:
        due = sorted(h for h, s in self.model.items()
                     if not s.pruned and s.expires_ms <= self.now)
        result = self.engine.apply(PruneSessions(max_count=max_count), self.now)
        assert result == SessionsPruned(min(len(due), max_count), len(due) > max_count)
        for digest in due[:max_count]:  # LMDB walks the keys in byte order
            self.model[digest].pruned = True

    @rule(ms=st.integers(0, 2 * HOUR_MS))
    def advance(self, ms: int) -> None:
        self.now += ms

    @invariant()
    def reads_agree_with_the_model(self) -> None:
        expected_ended = {}
        for digest, session in self.model.items():
            if session.pruned:
                expected_ended[digest] = SessionEnd.REVOKED
            elif session.ended is not None:
                expected_ended[digest] = session.ended
            elif session.expires_ms <= self.now:
                expected_ended[digest] = SessionEnd.EXPIRED
        assert self.engine.ended_sessions(list(self.model), self.now) == expected_ended
        for digest, session in self.model.items():
            if digest in expected_ended:
                with pytest.raises(Unauthenticated):
                    self.engine.session(digest, self.now)
            else:
                assert self.engine.session(digest, self.now).user == session.user
        for user in self.users:
            listed = {h for h, _ in self.engine.sessions(self.tenant, user)}
            assert listed == {h for h, s in self.model.items()
                              if s.user == user and s.ended is None and not s.pruned}


def test_sessions_agree_with_an_in_memory_model(password_hash: str) -> None:
    run_state_machine_as_test(
        lambda: SessionMachine(password_hash),
        settings=settings(max_examples=60, stateful_step_count=30, deadline=None),
    )


def test_a_damaged_session_record_is_corrupt_data_not_a_crash(engine: Engine, org: Org) -> None:
    digest = create(engine, org, org.alice)
    path = engine.path
    engine.close()
    env = lmdb.open(path, max_dbs=64)
    with env.begin(write=True) as txn:
        txn.put(digest, b"\xc1 not msgpack", db=env.open_db(b"sessions", txn=txn))
    env.close()
    reopened = Engine(path, map_size=256 * 2**20)
    try:
        with pytest.raises(CorruptData):
            reopened.session(digest, NOW_MS)
        with pytest.raises(CorruptData):
            reopened.ended_sessions([digest], NOW_MS)
    finally:
        reopened.close()
