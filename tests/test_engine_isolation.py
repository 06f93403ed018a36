"""Tenant isolation: no call reaches another tenant's users, conversations or messages.

Ids count per tenant, so two tenants' ids coincide: both have a user 1 and a conversation 1.
Two worlds test that. In `world` the tenants are set up alike (same logins, same
client_msg_ids) but "theirs" made other users and groups first, so that its ids are ones
"mine" does not have: every read and every write is made by "mine" with ids of "theirs" (or
with their tenant id and my user, which there names one of their users outside everything),
and must be refused with NotFound or NotMember, return none of their data, and change nothing
of either (NotMember only for their open group, which anyone may see to join it;
their direct conversation is refused as one that does not exist). In `twins` the tenants
are built alike in the same order, so that every id of one names the same thing in the
other: every call keeps to the tenant it names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import pytest
from conftest import _HASH as PASSWORD_HASH_OF_TESTS
from conftest import NOW_MS, PASSWORD, Org, assert_refusal, create_org, refused, snapshot

from engine import (
    AddMembers,
    Append,
    Appended,
    CreateGroup,
    CreateSession,
    CreateUser,
    Engine,
    HeraldError,
    Join,
    Leave,
    MarkDelivered,
    MarkRead,
    MessageKind,
    NotFound,
    NotMember,
    OpenDirect,
    Operation,
    RemoveMember,
    RevokeUserSessions,
    Role,
    SetRole,
    Unauthenticated,
)


@dataclass(frozen=True, slots=True)
class Side:
    """One tenant: an open group (alice owner, bob admin, carol member) and alice-bob direct."""

    org: Org
    group: int
    direct: int

    @property
    def t(self) -> int:
        return self.org.tenant


def build_side(engine: Engine, name: str, password_hash: str, first_made: int = 0) -> Side:
    """Tenant `name` as `Side` says; with `first_made`, that many other users and groups are
    made first, so that the side's ids are past those of a side made without."""
    org = create_org(engine, name, first_made=first_made)
    t = org.tenant
    group = engine.apply(
        CreateGroup(tenant=t, creator=org.alice, title=f"{name} team",
                    members=(org.bob, org.carol), open=True),
        NOW_MS,
    ).conv
    promote = SetRole(tenant=t, actor=org.alice, conv=group, user=org.bob, role=Role.ADMIN)
    engine.apply(promote, NOW_MS)
    direct = engine.apply(OpenDirect(tenant=t, user=org.alice, peer=org.bob), NOW_MS).conv
    for conv, sender in ((group, org.alice), (direct, org.bob)):
        send = Append(tenant=t, conv=conv, sender=sender, client_msg_id="c-1",
                      body=f"secret of {name}")
        engine.apply(send, NOW_MS)
    only = CreateUser(
        tenant=t, login=f"{name}-only", display_name="Only", password_hash=password_hash
    )
    engine.apply(only, NOW_MS)
    return Side(org, group, direct)


@dataclass(frozen=True, slots=True)
class World:
    mine: Side  # the caller's tenant
    theirs: Side  # the tenant it must never reach

    def snapshots(self, engine: Engine) -> tuple[dict[str, Any], dict[str, Any]]:
        return snapshot(engine, self.mine.t), snapshot(engine, self.theirs.t)


@pytest.fixture
def world(engine: Engine, password_hash: str) -> World:
    mine = build_side(engine, "acme", password_hash)
    theirs = build_side(engine, "globex", password_hash, first_made=5)
    assert min(theirs.org.alice, theirs.group, theirs.direct) > max(
        engine.find_user(mine.t, "acme-only"), mine.group, mine.direct)
    return World(mine, theirs)


@pytest.fixture
def twins(engine: Engine, password_hash: str) -> World:
    world = World(build_side(engine, "acme", password_hash),
                  build_side(engine, "globex", password_hash))
    # Every id coincides, the tenant's aside: that is what the twin tests are about.
    for side in ("mine", "theirs"):
        assert getattr(world, side).t == {"mine": 1, "theirs": 2}[side]
    for field in fields(Org):
        if field.name != "tenant":
            assert getattr(world.mine.org, field.name) == getattr(world.theirs.org, field.name)
    assert (world.mine.group, world.mine.direct) == (world.theirs.group, world.theirs.direct)
    return world


Probe = Callable[[Engine, Side, Side], object]

READS: list[Any] = [
    pytest.param(lambda e, m, t: e.user(m.t, t.org.alice), NotFound, id="user"),
    pytest.param(lambda e, m, t: e.find_user(m.t, "globex-only"), NotFound, id="find_user"),
    pytest.param(
        lambda e, m, t: e.conversation(m.t, m.org.alice, t.group), NotFound,
        id="conversation_of_theirs",
    ),
    pytest.param(
        lambda e, m, t: e.conversation(m.t, t.org.alice, m.group), NotMember,
        id="conversation_as_their_user",
    ),
    pytest.param(
        lambda e, m, t: e.conversation(t.t, m.org.alice, t.group), NotMember,
        id="conversation_in_their_tenant_as_my_user",
    ),
    pytest.param(
        lambda e, m, t: e.members(m.t, m.org.alice, t.group), NotFound, id="members_of_theirs"
    ),
    pytest.param(
        lambda e, m, t: e.members(m.t, t.org.alice, m.group), NotMember,
        id="members_as_their_user",
    ),
    pytest.param(lambda e, m, t: e.member_ids(m.t, t.group), NotFound, id="member_ids"),
    pytest.param(
        lambda e, m, t: e.conversation_version(m.t, t.group), NotFound, id="conversation_version"
    ),
    pytest.param(
        lambda e, m, t: e.page_after(m.t, m.org.alice, t.group, 0, 10), NotFound,
        id="page_after_of_theirs",
    ),
    pytest.param(
        lambda e, m, t: e.page_after(m.t, t.org.alice, m.group, 0, 10), NotMember,
        id="page_after_as_their_user",
    ),
    pytest.param(
        lambda e, m, t: e.page_before(m.t, m.org.bob, t.direct, None, 10), NotFound,
        id="page_before_of_theirs",
    ),
    pytest.param(
        lambda e, m, t: e.page_before(t.t, m.org.bob, t.direct, None, 10), NotFound,
        id="page_before_in_their_tenant_as_my_user",
    ),
    pytest.param(lambda e, m, t: e.sync(m.t, t.org.alice), NotFound, id="sync"),
    pytest.param(
        lambda e, m, t: e.authenticate(m.t, "globex-only", PASSWORD), Unauthenticated,
        id="authenticate",
    ),
]


@pytest.mark.parametrize(("probe", "error"), READS)
def test_reads_with_another_tenants_ids_are_refused(
    engine: Engine, world: World, probe: Probe, error: type[HeraldError]
) -> None:
    before = world.snapshots(engine)

    with pytest.raises(error) as refusal:
        probe(engine, world.mine, world.theirs)

    assert_refusal(refusal.value, error)
    assert world.snapshots(engine) == before


def test_unchecked_reads_with_another_tenants_ids_find_nothing(
    engine: Engine, world: World
) -> None:
    # Unlike sync, conversations() does not check that the user exists, and the server's own
    # messages() read does no authorization: both must still find nothing of another tenant.
    mine, theirs = world.mine, world.theirs
    before = world.snapshots(engine)

    assert engine.conversations(mine.t, theirs.org.alice) == []
    assert engine.messages(mine.t, theirs.group, 1, 10) == []  # fanout reads find nothing
    theirs_listed = engine.conversations(theirs.t, theirs.org.alice)
    assert sorted(s.conv for s in theirs_listed) == sorted([theirs.direct, theirs.group])
    assert world.snapshots(engine) == before


def _op(make: Callable[[Side, Side], Operation], error: type[HeraldError], name: str) -> Any:
    return pytest.param(make, error, id=name)


WRITES: list[Any] = [
    _op(lambda m, t: CreateGroup(tenant=m.t, creator=t.org.alice, title="x"), NotFound,
        "create_group_by_their_user"),
    _op(lambda m, t: CreateGroup(tenant=m.t, creator=m.org.alice, title="x",
                                 members=(t.org.bob,)), NotFound,
        "create_group_with_their_user"),
    _op(lambda m, t: OpenDirect(tenant=m.t, user=m.org.alice, peer=t.org.bob), NotFound,
        "open_direct_with_their_user"),
    _op(lambda m, t: OpenDirect(tenant=m.t, user=t.org.alice, peer=m.org.bob), NotFound,
        "open_direct_as_their_user"),
    _op(lambda m, t: AddMembers(tenant=m.t, actor=m.org.alice, conv=m.group,
                                users=(t.org.dave,)), NotFound,
        "add_their_user"),
    _op(lambda m, t: AddMembers(tenant=m.t, actor=m.org.alice, conv=t.group,
                                users=(m.org.dave,)), NotFound,
        "add_to_their_group"),
    _op(lambda m, t: AddMembers(tenant=t.t, actor=m.org.alice, conv=t.group,
                                users=(m.org.dave,)), NotMember,
        "add_in_their_tenant_as_my_user"),
    _op(lambda m, t: RemoveMember(tenant=m.t, actor=m.org.alice, conv=m.group,
                                  user=t.org.carol), NotMember,
        "remove_their_user"),
    _op(lambda m, t: RemoveMember(tenant=m.t, actor=m.org.alice, conv=t.group,
                                  user=t.org.carol), NotFound,
        "remove_from_their_group"),
    _op(lambda m, t: RemoveMember(tenant=t.t, actor=m.org.alice, conv=t.group,
                                  user=t.org.carol), NotMember,
        "remove_in_their_tenant_as_my_user"),
    _op(lambda m, t: Leave(tenant=m.t, user=t.org.carol, conv=m.group), NotMember,
        "leave_as_their_user"),
    _op(lambda m, t: Leave(tenant=m.t, user=m.org.carol, conv=t.group), NotFound,
        "leave_their_group"),
    _op(lambda m, t: Join(tenant=m.t, user=t.org.dave, conv=m.group), NotFound,
        "join_as_their_user"),
    _op(lambda m, t: Join(tenant=m.t, user=m.org.dave, conv=t.group), NotFound,
        "join_their_open_group"),
    # No "join in their tenant as my user": there my user id names one of their users, who may
    # join their open group. A tenant comes from the session, never from the client.
    _op(lambda m, t: SetRole(tenant=m.t, actor=t.org.alice, conv=m.group, user=m.org.carol,
                             role=Role.ADMIN), NotMember,
        "set_role_as_their_user"),
    _op(lambda m, t: SetRole(tenant=m.t, actor=m.org.alice, conv=m.group, user=t.org.carol,
                             role=Role.ADMIN), NotMember,
        "set_role_of_their_user"),
    _op(lambda m, t: SetRole(tenant=m.t, actor=m.org.alice, conv=t.group, user=t.org.carol,
                             role=Role.ADMIN), NotFound,
        "set_role_in_their_group"),
    _op(lambda m, t: SetRole(tenant=t.t, actor=m.org.alice, conv=t.group, user=t.org.carol,
                             role=Role.OWNER), NotMember,
        "set_role_in_their_tenant_as_my_user"),
    _op(lambda m, t: Append(tenant=m.t, conv=t.group, sender=m.org.alice, client_msg_id="x",
                            body="x"), NotFound,
        "append_to_their_group"),
    _op(lambda m, t: Append(tenant=m.t, conv=m.group, sender=t.org.alice, client_msg_id="x",
                            body="x"), NotMember,
        "append_as_their_user"),
    _op(lambda m, t: Append(tenant=t.t, conv=t.group, sender=m.org.alice, client_msg_id="x",
                            body="x"), NotMember,
        "append_in_their_tenant_as_my_user"),
    _op(lambda m, t: MarkRead(tenant=m.t, user=m.org.alice, conv=t.group, seq=1), NotFound,
        "mark_read_in_their_group"),
    _op(lambda m, t: MarkRead(tenant=m.t, user=t.org.alice, conv=m.group, seq=1), NotMember,
        "mark_read_as_their_user"),
    _op(lambda m, t: MarkDelivered(tenant=m.t, user=m.org.bob, conv=t.direct, seq=1), NotFound,
        "mark_delivered_in_their_direct"),
    _op(lambda m, t: MarkDelivered(tenant=t.t, user=m.org.bob, conv=t.direct, seq=1), NotFound,
        "mark_delivered_in_their_tenant_as_my_user"),
]


@pytest.mark.parametrize(("make", "error"), WRITES)
def test_writes_with_another_tenants_ids_are_refused_and_change_nothing(
    engine: Engine, world: World, make: Callable[[Side, Side], Operation],
    error: type[HeraldError],
) -> None:
    before = world.snapshots(engine)

    refusal = refused(engine, make(world.mine, world.theirs), NOW_MS + 1)

    assert_refusal(refusal, error)
    assert world.snapshots(engine) == before


def test_everything_a_tenant_can_read_is_its_own(engine: Engine, world: World) -> None:
    mine, theirs = world.mine, world.theirs
    my_users = {user for user, _ in engine.users(mine.t)}

    state = snapshot(engine, mine.t)

    only = engine.find_user(mine.t, "acme-only")
    assert my_users == {mine.org.alice, mine.org.bob, mine.org.carol, mine.org.dave, only}
    assert {theirs.org.alice, theirs.org.dave}.isdisjoint(my_users)
    assert "globex" not in repr(state)
    listed = {s.conv for user in my_users for s in engine.conversations(mine.t, user)}
    assert listed == {mine.group, mine.direct}
    pages = [value[1] for key, value in state.items() if key.startswith("conv ")]
    assert {m.sender for page in pages for m in page.messages} <= my_users
    assert all("globex" not in m.body for page in pages for m in page.messages)


def test_sync_with_their_conversations_in_known_echoes_only_their_ids(
    engine: Engine, world: World
) -> None:
    mine, theirs = world.mine, world.theirs
    known = {mine.group: 3, mine.direct: 2, theirs.group: 0, theirs.direct: 0}

    result = engine.sync(mine.t, mine.org.alice, known, everything=True)

    assert sorted(c.conv for c in result.conversations) == sorted([mine.group, mine.direct])
    assert all(m.body == "secret of acme" for c in result.conversations for m in c.messages)
    assert result.removed == sorted([theirs.group, theirs.direct])


def test_same_client_msg_id_in_both_tenants_are_separate_messages(
    engine: Engine, world: World
) -> None:
    # build_side sent "c-1" in both tenants; a retry in each finds its own message only.
    for side in (world.mine, world.theirs):
        name = engine.tenant(side.t).name
        retry = Append(tenant=side.t, conv=side.group, sender=side.org.alice,
                       client_msg_id="c-1", body=f"secret of {name}")
        assert engine.apply(retry, NOW_MS + 1) == Appended(side.group, 3, NOW_MS, duplicate=True)


def test_prune_dedupe_forgets_only_the_given_tenants_retry_records(
    engine: Engine, world: World
) -> None:
    later = NOW_MS + 3 * engine.limits.dedupe_window_ms

    assert engine.prune_dedupe(world.mine.t, later) == 2
    assert engine.prune_dedupe(world.mine.t, later) == 0
    assert engine.prune_dedupe(world.theirs.t, later) == 2  # theirs were all still there


# -- twins: every id of one tenant names the same thing in the other ---------------------------


def _own_view(engine: Engine, tenant: int) -> dict[str, Any]:
    """`snapshot` without the store-wide entry counts, which any tenant's write changes."""
    return {key: value for key, value in snapshot(engine, tenant).items() if key != "counts"}


def test_twins_each_read_only_their_own_when_every_id_coincides(
    engine: Engine, twins: World
) -> None:
    # Each read fills the message cache with that tenant's conversations 1 and 2, under the
    # same conversation ids and seqs as the other's: the next tenant's reads must not get them.
    for side, other in ((twins.mine, "globex"), (twins.theirs, "acme"), (twins.mine, "globex")):
        name = engine.tenant(side.t).name
        state = snapshot(engine, side.t)
        assert other not in repr(state)
        assert f"secret of {name}" in repr(state)
        fanout = engine.messages(side.t, side.group, 1, 10) + engine.messages(
            side.t, side.direct, 1, 10)
        assert [m.body for m in fanout if m.kind == "text"] == [f"secret of {name}"] * 2
        assert engine.member_ids(side.t, side.group) == [side.org.alice, side.org.bob,
                                                          side.org.carol]
        assert engine.find_user(side.t, f"{name}-only") == 5


TWIN_WRITES: list[Any] = [
    pytest.param(lambda m: Append(tenant=m.t, conv=m.group, sender=m.org.alice,
                                  client_msg_id="c-2", body="new"), id="append"),
    pytest.param(lambda m: Append(tenant=m.t, conv=m.direct, sender=m.org.alice,
                                  client_msg_id="c-3", body="new"), id="append_to_direct"),
    pytest.param(lambda m: Append(tenant=m.t, conv=m.group, sender=m.org.alice,
                                  client_msg_id="c-2", body="", kind=MessageKind.RECALL, ref=3),
                 id="recall"),
    pytest.param(lambda m: MarkRead(tenant=m.t, user=m.org.carol, conv=m.group, seq=3),
                 id="mark_read"),
    pytest.param(lambda m: MarkDelivered(tenant=m.t, user=m.org.carol, conv=m.group, seq=3),
                 id="mark_delivered"),
    pytest.param(lambda m: AddMembers(tenant=m.t, actor=m.org.alice, conv=m.group,
                                      users=(m.org.dave,)), id="add"),
    pytest.param(lambda m: RemoveMember(tenant=m.t, actor=m.org.alice, conv=m.group,
                                        user=m.org.carol), id="remove"),
    pytest.param(lambda m: Leave(tenant=m.t, user=m.org.carol, conv=m.group), id="leave"),
    pytest.param(lambda m: Join(tenant=m.t, user=m.org.dave, conv=m.group), id="join"),
    pytest.param(lambda m: SetRole(tenant=m.t, actor=m.org.alice, conv=m.group,
                                   user=m.org.carol, role=Role.ADMIN), id="set_role"),
    pytest.param(lambda m: OpenDirect(tenant=m.t, user=m.org.alice, peer=m.org.dave),
                 id="open_direct"),
    pytest.param(lambda m: CreateGroup(tenant=m.t, creator=m.org.bob, title="more",
                                       members=(m.org.alice,)), id="create_group"),
    pytest.param(lambda m: CreateUser(tenant=m.t, login="eve", display_name="Eve",
                                      password_hash=PASSWORD_HASH_OF_TESTS), id="create_user"),
]


@pytest.mark.parametrize("make", TWIN_WRITES)
def test_a_write_with_ids_that_coincide_changes_only_its_own_tenant(
    engine: Engine, twins: World, make: Callable[[Side], Operation]
) -> None:
    mine_before = _own_view(engine, twins.mine.t)
    theirs_before = _own_view(engine, twins.theirs.t)

    (result,) = engine.apply_batch([make(twins.mine)], NOW_MS + 1)

    assert not isinstance(result, HeraldError), result
    assert _own_view(engine, twins.mine.t) != mine_before
    assert _own_view(engine, twins.theirs.t) == theirs_before


def test_a_retry_in_one_twin_is_a_duplicate_of_its_own_message_only(
    engine: Engine, twins: World
) -> None:
    # Same tenant-local sender, conversation and client_msg_id in both: each retry finds its own.
    for side in (twins.mine, twins.theirs):
        name = engine.tenant(side.t).name
        retry = Append(tenant=side.t, conv=side.group, sender=side.org.alice,
                       client_msg_id="c-1", body=f"secret of {name}")
        assert engine.apply(retry, NOW_MS + 1) == Appended(side.group, 3, NOW_MS, duplicate=True)
    theirs_page = engine.page_after(twins.theirs.t, twins.theirs.org.alice, twins.theirs.group,
                                    0, 10)
    assert [m.body for m in theirs_page.messages if m.kind == "text"] == ["secret of globex"]


def test_ending_one_twins_sessions_leaves_the_others_user_of_the_same_id_signed_in(
    engine: Engine, twins: World
) -> None:
    for n, side in enumerate((twins.mine, twins.theirs)):
        engine.apply(CreateSession(tenant=side.t, user=side.org.alice, token_hash=bytes([n]) * 32,
                                   device="phone", expires_ms=NOW_MS + 10**6), NOW_MS)

    engine.apply(RevokeUserSessions(tenant=twins.mine.t, user=twins.mine.org.alice), NOW_MS)

    with pytest.raises(Unauthenticated):
        engine.session(bytes([0]) * 32, NOW_MS)
    theirs = engine.session(bytes([1]) * 32, NOW_MS)
    assert (theirs.tenant, theirs.user) == (twins.theirs.t, twins.theirs.org.alice)
    assert [s.tenant for _, s in engine.sessions(twins.theirs.t, twins.theirs.org.alice)] == [2]
