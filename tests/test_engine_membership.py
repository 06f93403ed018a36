"""Conversations and member lists: creation, every permission rule, versions, deltas, events."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import NOW_MS, Org, assert_refusal, create_org, refused, snapshot

from engine import (
    AddMembers,
    Append,
    Conflict,
    ConversationKind,
    ConversationOpened,
    ConversationSummary,
    CreateGroup,
    CreateUser,
    Engine,
    Forbidden,
    HeraldError,
    Invalid,
    Join,
    Leave,
    Limits,
    MemberList,
    MembershipChanged,
    Message,
    MessageKind,
    NotFound,
    NotMember,
    OpenDirect,
    Operation,
    RemoveMember,
    Role,
    SetRole,
)

UNKNOWN = 999_999


def make_group(
    engine: Engine, org: Org, *members: int, open: bool = False, now_ms: int = NOW_MS
) -> int:
    """A group created by alice (its owner) with `members`."""
    op = CreateGroup(
        tenant=org.tenant, creator=org.alice, title="team", members=members, open=open
    )
    return engine.apply(op, now_ms).conv


def event(seq: int, actor: int, body: str, *users: int, ts: int = NOW_MS) -> Message:
    """The system message a member change leaves in the timeline."""
    return Message(
        seq=seq, sender=actor, ts=ts, client_msg_id="", kind=MessageKind.SYSTEM, body=body,
        mentions=users,
    )


def timeline(engine: Engine, tenant: int, user: int, conv: int) -> list[Message]:
    return engine.page_after(tenant, user, conv, 0, 500).messages


def roles(engine: Engine, tenant: int, conv: int) -> dict[int, Role]:
    """Every member's role, as one of the members sees the list."""
    members = engine.member_ids(tenant, conv)
    if not members:
        return {}
    return dict(engine.members(tenant, members[0], conv).changed)


@dataclass(frozen=True, slots=True)
class Team:
    """A closed group at member_version 2, head 2: one owner, two admins, one member."""

    tenant: int
    conv: int
    owner: int
    admin: int
    other_admin: int
    member: int
    outsider: int  # a user of the same tenant who is not in the group


@pytest.fixture
def team(engine: Engine, org: Org, password_hash: str) -> Team:
    erin = engine.apply(
        CreateUser(
            tenant=org.tenant, login="erin", display_name="Erin", password_hash=password_hash
        ),
        NOW_MS,
    ).user
    conv = make_group(engine, org, org.dave)
    engine.apply(
        AddMembers(
            tenant=org.tenant, actor=org.alice, conv=conv, users=(org.bob, org.carol),
            role=Role.ADMIN,
        ),
        NOW_MS,
    )
    return Team(org.tenant, conv, org.alice, org.bob, org.carol, org.dave, erin)


@pytest.fixture
def small_engine(tmp_path: Path) -> Iterator[Engine]:
    """An engine whose groups hold at most three members."""
    eng = Engine(tmp_path / "small", map_size=2**24, limits=Limits(max_group_members=3))
    yield eng
    eng.close()


# -- creating conversations ------------------------------------------------------------------


def test_create_group_makes_the_creator_owner_and_the_others_members(
    engine: Engine, org: Org
) -> None:
    op = CreateGroup(
        tenant=org.tenant, creator=org.alice, title="team", members=(org.bob, org.carol)
    )

    assert engine.apply(op, NOW_MS) == ConversationOpened(1, created=True)
    assert roles(engine, org.tenant, 1) == {
        org.alice: Role.OWNER, org.bob: Role.MEMBER, org.carol: Role.MEMBER
    }
    assert engine.conversation(org.tenant, org.alice, 1) == ConversationSummary(
        conv=1, kind=ConversationKind.GROUP, title="team", role=Role.OWNER, head=1,
        last_ts=NOW_MS, read=1, unread=0, member_version=1, member_count=3, open=False,
    )
    assert engine.conversation(org.tenant, org.bob, 1).role is Role.MEMBER


def test_create_group_records_group_created_as_the_first_message(engine: Engine, org: Org) -> None:
    conv = make_group(engine, org, org.bob, org.carol)

    assert timeline(engine, org.tenant, org.bob, conv) == [
        event(1, org.alice, "group_created", org.alice, org.bob, org.carol)
    ]


def test_create_group_ignores_repeated_members_and_the_creator_among_them(
    engine: Engine, org: Org
) -> None:
    conv = make_group(engine, org, org.bob, org.alice, org.bob)

    assert engine.members(org.tenant, org.alice, conv) == MemberList(
        conv, 1, True, [(org.alice, Role.OWNER), (org.bob, Role.MEMBER)], []
    )
    assert engine.conversation(org.tenant, org.alice, conv).member_count == 2
    assert timeline(engine, org.tenant, org.alice, conv)[0].mentions == (org.alice, org.bob)


def test_create_group_may_make_an_open_group(engine: Engine, org: Org) -> None:
    conv = make_group(engine, org, open=True)

    assert engine.conversation(org.tenant, org.alice, conv).open is True


@pytest.mark.parametrize("title", ["", "x" * 201])
def test_create_group_refuses_a_title_outside_1_to_200_characters(
    engine: Engine, org: Org, title: str
) -> None:
    error = refused(engine, CreateGroup(tenant=org.tenant, creator=org.alice, title=title))

    assert (type(error), error.code) == (Invalid, "invalid")
    assert engine.conversations(org.tenant, org.alice) == []


@pytest.mark.parametrize("who", ["creator", "member"])
def test_create_group_with_an_unknown_user_is_not_found_and_creates_nothing(
    engine: Engine, org: Org, who: str
) -> None:
    creator, member = (UNKNOWN, org.bob) if who == "creator" else (org.alice, UNKNOWN)
    op = CreateGroup(tenant=org.tenant, creator=creator, title="team", members=(member,))

    error = refused(engine, op)

    assert (type(error), error.code) == (NotFound, "not_found")
    assert engine.conversations(org.tenant, org.alice) == []
    assert engine.conversations(org.tenant, org.bob) == []
    assert make_group(engine, org) == 1  # no conversation id was used up


def test_create_group_refuses_more_members_than_the_limit(small_engine: Engine) -> None:
    org = create_org(small_engine, "acme")

    error = refused(
        small_engine,
        CreateGroup(
            tenant=org.tenant, creator=org.alice, title="t", members=(org.bob, org.carol, org.dave)
        ),
    )

    assert (type(error), error.code) == (Invalid, "invalid")
    assert make_group(small_engine, org, org.bob, org.carol) == 1


def test_open_direct_creates_a_conversation_of_two_equal_members(engine: Engine, org: Org) -> None:
    result = engine.apply(OpenDirect(tenant=org.tenant, user=org.alice, peer=org.bob), NOW_MS)

    assert result == ConversationOpened(1, created=True)
    assert engine.conversation(org.tenant, org.bob, 1) == ConversationSummary(
        conv=1, kind=ConversationKind.DIRECT, title="", role=Role.MEMBER, head=1,
        last_ts=NOW_MS, read=1, unread=0, member_version=1, member_count=2, open=False,
    )
    assert roles(engine, org.tenant, 1) == {org.alice: Role.MEMBER, org.bob: Role.MEMBER}
    assert timeline(engine, org.tenant, org.alice, 1) == [
        event(1, org.alice, "direct_opened", org.alice, org.bob)
    ]


def test_open_direct_again_returns_the_same_conversation_from_either_side(
    engine: Engine, org: Org
) -> None:
    first = engine.apply(OpenDirect(tenant=org.tenant, user=org.alice, peer=org.bob), NOW_MS)
    before = snapshot(engine, org.tenant)

    again = engine.apply(OpenDirect(tenant=org.tenant, user=org.alice, peer=org.bob), NOW_MS + 1)
    reverse = engine.apply(OpenDirect(tenant=org.tenant, user=org.bob, peer=org.alice), NOW_MS + 2)

    assert first == ConversationOpened(1, created=True)
    assert again == reverse == ConversationOpened(1, created=False)
    assert snapshot(engine, org.tenant) == before


def test_open_direct_with_another_peer_is_another_conversation(engine: Engine, org: Org) -> None:
    with_bob = engine.apply(OpenDirect(tenant=org.tenant, user=org.alice, peer=org.bob), NOW_MS)
    with_carol = engine.apply(OpenDirect(tenant=org.tenant, user=org.alice, peer=org.carol), NOW_MS)

    assert (with_bob.conv, with_carol.conv) == (1, 2)
    assert with_carol.created is True


@pytest.mark.parametrize(
    ("user", "peer", "error"),
    [
        pytest.param("alice", "alice", Invalid, id="with_oneself"),
        pytest.param("alice", UNKNOWN, NotFound, id="with_an_unknown_peer"),
        pytest.param(UNKNOWN, "bob", NotFound, id="as_an_unknown_user"),
    ],
)
def test_open_direct_refusals_create_nothing(
    engine: Engine, org: Org, user: str | int, peer: str | int, error: type[HeraldError]
) -> None:
    user_id, peer_id = (getattr(org, u) if isinstance(u, str) else u for u in (user, peer))

    refusal = refused(engine, OpenDirect(tenant=org.tenant, user=user_id, peer=peer_id))

    assert_refusal(refusal, error)
    assert engine.conversations(org.tenant, org.alice) == []
    assert engine.conversations(org.tenant, org.bob) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda o, c: AddMembers(tenant=o.tenant, actor=o.alice, conv=c, users=(o.carol,)),
         Invalid),
        (lambda o, c: RemoveMember(tenant=o.tenant, actor=o.alice, conv=c, user=o.bob), Invalid),
        (lambda o, c: Leave(tenant=o.tenant, user=o.alice, conv=c), Invalid),
        (lambda o, c: Join(tenant=o.tenant, user=o.alice, conv=c), Invalid),
        (lambda o, c: SetRole(tenant=o.tenant, actor=o.alice, conv=c, user=o.bob,
                              role=Role.ADMIN), Invalid),
        # Not in it, carol may not even see it: told nothing of its kind.
        (lambda o, c: Join(tenant=o.tenant, user=o.carol, conv=c), NotFound),
        (lambda o, c: AddMembers(tenant=o.tenant, actor=o.carol, conv=c, users=(o.dave,)),
         NotFound),
    ],
    ids=["add", "remove", "leave", "join", "set_role", "join_by_another", "add_by_another"],
)
def test_the_members_of_a_direct_conversation_cannot_change(
    engine: Engine, org: Org, change: Callable[[Org, int], Operation],
    expected: type[HeraldError],
) -> None:
    conv = engine.apply(OpenDirect(tenant=org.tenant, user=org.alice, peer=org.bob), NOW_MS).conv
    before = snapshot(engine, org.tenant)

    error = refused(engine, change(org, conv))

    assert_refusal(error, expected)
    if expected is NotFound:  # word for word as for a conversation that does not exist
        assert error.message == f"conversation {conv} does not exist"
        assert refused(engine, change(org, UNKNOWN)).message == \
            f"conversation {UNKNOWN} does not exist"
    assert snapshot(engine, org.tenant) == before


# -- every refusal of a member change leaves the group as it was ------------------------------

Change = Callable[[Team], Operation]


def _add(actor: str, *users: str | int, role: Role = Role.MEMBER) -> Change:
    """Add `users` (Team attribute names, or raw ids) as `actor`."""
    return lambda t: AddMembers(
        tenant=t.tenant, actor=getattr(t, actor), conv=t.conv,
        users=tuple(getattr(t, u) if isinstance(u, str) else u for u in users), role=role,
    )


def _remove(actor: str, user: str) -> Change:
    return lambda t: RemoveMember(
        tenant=t.tenant, actor=getattr(t, actor), conv=t.conv, user=getattr(t, user)
    )


def _set_role(actor: str, user: str, role: Role) -> Change:
    return lambda t: SetRole(
        tenant=t.tenant, actor=getattr(t, actor), conv=t.conv, user=getattr(t, user), role=role
    )


TEAM_REFUSALS = [
    # adding
    pytest.param(_add("member", "outsider"), Forbidden, id="a_member_may_not_add"),
    # A closed group is not seen by a non-member: as if it did not exist.
    pytest.param(_add("outsider", "outsider"), NotFound, id="a_non_member_may_not_add"),
    pytest.param(
        _add("admin", "outsider", role=Role.ADMIN), Forbidden, id="an_admin_may_not_appoint_admins"
    ),
    pytest.param(_add("owner", "outsider", role=Role.OWNER), Forbidden, id="nobody_adds_an_owner"),
    pytest.param(
        _add("admin", "outsider", role=Role.OWNER), Forbidden, id="an_admin_adds_no_owner"
    ),
    pytest.param(_add("owner"), Invalid, id="adding_nobody_is_invalid"),
    pytest.param(
        _add("owner", "member", "admin"), Conflict, id="adding_only_members_is_a_conflict"
    ),
    pytest.param(_add("owner", "outsider", UNKNOWN), NotFound, id="adding_an_unknown_user"),
    pytest.param(
        lambda t: AddMembers(tenant=t.tenant, actor=t.owner, conv=UNKNOWN, users=(t.outsider,)),
        NotFound, id="adding_to_an_unknown_conversation",
    ),
    # removing
    pytest.param(_remove("member", "admin"), Forbidden, id="a_member_may_not_remove"),
    pytest.param(_remove("member", "owner"), Forbidden, id="a_member_may_not_remove_the_owner"),
    pytest.param(_remove("admin", "other_admin"), Forbidden, id="an_admin_may_not_remove_an_admin"),
    pytest.param(_remove("admin", "owner"), Forbidden, id="an_admin_may_not_remove_the_owner"),
    pytest.param(_remove("owner", "owner"), Invalid, id="the_owner_may_not_remove_itself"),
    pytest.param(_remove("admin", "admin"), Invalid, id="an_admin_may_not_remove_itself"),
    pytest.param(_remove("outsider", "member"), NotFound, id="a_non_member_may_not_remove"),
    pytest.param(_remove("owner", "outsider"), NotMember, id="removing_a_non_member"),
    pytest.param(
        lambda t: RemoveMember(tenant=t.tenant, actor=t.owner, conv=UNKNOWN, user=t.member),
        NotFound, id="removing_from_an_unknown_conversation",
    ),
    # leaving and joining
    pytest.param(
        lambda t: Leave(tenant=t.tenant, user=t.outsider, conv=t.conv), NotFound,
        id="a_non_member_cannot_leave",
    ),
    pytest.param(
        lambda t: Leave(tenant=t.tenant, user=t.member, conv=UNKNOWN), NotFound,
        id="leaving_an_unknown_conversation",
    ),
    pytest.param(
        lambda t: Join(tenant=t.tenant, user=t.outsider, conv=t.conv), NotFound,
        id="nobody_joins_a_closed_group",
    ),
    pytest.param(
        lambda t: Join(tenant=t.tenant, user=t.outsider, conv=UNKNOWN), NotFound,
        id="joining_an_unknown_conversation",
    ),
    # roles
    pytest.param(
        _set_role("admin", "member", Role.ADMIN), Forbidden, id="an_admin_may_not_set_roles"
    ),
    pytest.param(
        _set_role("member", "member", Role.ADMIN), Forbidden, id="a_member_may_not_set_roles"
    ),
    pytest.param(
        _set_role("outsider", "member", Role.ADMIN), NotFound, id="a_non_member_may_not_set_roles"
    ),
    pytest.param(
        _set_role("owner", "outsider", Role.ADMIN), NotMember, id="a_non_member_has_no_role"
    ),
    pytest.param(
        _set_role("owner", "owner", Role.ADMIN), Invalid, id="the_owner_may_not_demote_itself"
    ),
    pytest.param(_set_role("owner", "admin", Role.ADMIN), Conflict, id="setting_the_same_role"),
    pytest.param(
        _set_role("owner", "member", Role.MEMBER), Conflict, id="setting_member_on_a_member"
    ),
    pytest.param(
        lambda t: SetRole(
            tenant=t.tenant, actor=t.owner, conv=UNKNOWN, user=t.member, role=Role.ADMIN
        ),
        NotFound, id="setting_a_role_in_an_unknown_conversation",
    ),
]


@pytest.mark.parametrize(("change", "error"), TEAM_REFUSALS)
def test_a_refused_member_change_changes_nothing(
    engine: Engine, team: Team, change: Change, error: type[HeraldError]
) -> None:
    before = snapshot(engine, team.tenant)

    refusal = refused(engine, change(team), NOW_MS + 1)

    assert_refusal(refusal, error)
    assert snapshot(engine, team.tenant) == before


# -- adding ----------------------------------------------------------------------------------


def test_the_owner_adds_members(engine: Engine, team: Team) -> None:
    op = AddMembers(tenant=team.tenant, actor=team.owner, conv=team.conv, users=(team.outsider,))

    result = engine.apply(op, NOW_MS + 1)

    assert result == MembershipChanged(team.conv, member_version=3, seq=3, users=(team.outsider,))
    summary = engine.conversation(team.tenant, team.outsider, team.conv)
    assert (summary.role, summary.member_count, summary.member_version) == (Role.MEMBER, 5, 3)
    assert timeline(engine, team.tenant, team.member, team.conv)[-1] == event(
        3, team.owner, "members_added", team.outsider, ts=NOW_MS + 1
    )


def test_an_admin_adds_members(engine: Engine, team: Team) -> None:
    op = AddMembers(tenant=team.tenant, actor=team.admin, conv=team.conv, users=(team.outsider,))

    result = engine.apply(op, NOW_MS + 1)

    assert result == MembershipChanged(team.conv, 3, 3, (team.outsider,))
    assert engine.conversation(team.tenant, team.outsider, team.conv).role is Role.MEMBER
    assert timeline(engine, team.tenant, team.owner, team.conv)[-1].sender == team.admin


def test_the_owner_appoints_admins_when_adding(engine: Engine, team: Team) -> None:
    op = AddMembers(
        tenant=team.tenant, actor=team.owner, conv=team.conv, users=(team.outsider,),
        role=Role.ADMIN,
    )

    engine.apply(op, NOW_MS + 1)

    assert engine.conversation(team.tenant, team.outsider, team.conv).role is Role.ADMIN


def test_adding_skips_members_and_repeats_and_names_only_the_new_users(
    engine: Engine, team: Team
) -> None:
    users = (team.member, team.outsider, team.admin, team.outsider)
    op = AddMembers(
        tenant=team.tenant, actor=team.owner, conv=team.conv, users=users, role=Role.ADMIN
    )

    result = engine.apply(op, NOW_MS + 1)

    assert result == MembershipChanged(team.conv, 3, 3, (team.outsider,))
    assert engine.conversation(team.tenant, team.member, team.conv).role is Role.MEMBER
    assert engine.conversation(team.tenant, team.outsider, team.conv).member_count == 5


def test_adding_and_joining_stop_at_the_member_limit(small_engine: Engine) -> None:
    org = create_org(small_engine, "acme")
    conv = make_group(small_engine, org, org.bob, open=True)
    add_two = AddMembers(tenant=org.tenant, actor=org.alice, conv=conv, users=(org.carol, org.dave))

    too_many = refused(small_engine, add_two)
    small_engine.apply(Join(tenant=org.tenant, user=org.carol, conv=conv), NOW_MS)
    full = refused(small_engine, Join(tenant=org.tenant, user=org.dave, conv=conv))
    also_full = refused(
        small_engine, AddMembers(tenant=org.tenant, actor=org.alice, conv=conv, users=(org.dave,))
    )

    assert [(type(e), e.code) for e in (too_many, full, also_full)] == [(Invalid, "invalid")] * 3
    assert small_engine.member_ids(org.tenant, conv) == [org.alice, org.bob, org.carol]


# -- removing and leaving --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actor", "target"),
    [("owner", "member"), ("owner", "admin"), ("admin", "member")],
)
def test_allowed_removals(engine: Engine, team: Team, actor: str, target: str) -> None:
    actor_id, target_id = getattr(team, actor), getattr(team, target)
    op = RemoveMember(tenant=team.tenant, actor=actor_id, conv=team.conv, user=target_id)

    result = engine.apply(op, NOW_MS + 1)

    assert result == MembershipChanged(team.conv, 3, 3, (target_id,))
    assert target_id not in roles(engine, team.tenant, team.conv)
    assert engine.conversation(team.tenant, team.owner, team.conv).member_count == 3
    assert timeline(engine, team.tenant, team.owner, team.conv)[-1] == event(
        3, actor_id, "member_removed", target_id, ts=NOW_MS + 1
    )


def test_a_removed_user_loses_every_access_to_the_conversation(engine: Engine, team: Team) -> None:
    op = RemoveMember(tenant=team.tenant, actor=team.owner, conv=team.conv, user=team.member)
    engine.apply(op, NOW_MS + 1)
    t, u, c = team.tenant, team.member, team.conv

    reads: list[Callable[[], object]] = [
        lambda: engine.conversation(t, u, c),
        lambda: engine.members(t, u, c),
        lambda: engine.page_after(t, u, c, 0, 10),
        lambda: engine.page_before(t, u, c, None, 10),
    ]
    for read in reads:  # a closed group it left is no longer seen at all
        with pytest.raises(NotFound) as refusal:
            read()
        assert refusal.value.code == "not_found"
    send = refused(engine, Append(tenant=t, conv=c, sender=u, client_msg_id="m", body="hi"))
    assert (type(send), send.code) == (NotFound, "not_found")
    assert engine.conversations(t, u) == []


def test_a_member_leaves(engine: Engine, team: Team) -> None:
    result = engine.apply(Leave(tenant=team.tenant, user=team.member, conv=team.conv), NOW_MS + 1)

    assert result == MembershipChanged(team.conv, 3, 3, (team.member,))
    assert roles(engine, team.tenant, team.conv) == {
        team.owner: Role.OWNER, team.admin: Role.ADMIN, team.other_admin: Role.ADMIN
    }
    assert timeline(engine, team.tenant, team.owner, team.conv)[-1] == event(
        3, team.member, "member_left", team.member, ts=NOW_MS + 1
    )
    assert engine.conversations(team.tenant, team.member) == []


def test_an_owner_leaving_hands_over_to_the_longest_standing_admin(
    engine: Engine, org: Org
) -> None:
    conv = make_group(engine, org, org.dave)  # dave joins first, but stays a plain member
    for at, user in ((1, org.carol), (2, org.bob)):  # carol is an admin for longer than bob
        add = AddMembers(
            tenant=org.tenant, actor=org.alice, conv=conv, users=(user,), role=Role.ADMIN
        )
        engine.apply(add, NOW_MS + at)

    result = engine.apply(Leave(tenant=org.tenant, user=org.alice, conv=conv), NOW_MS + 3)

    assert result == MembershipChanged(conv, 4, 4, (org.alice, org.carol))
    assert roles(engine, org.tenant, conv) == {
        org.bob: Role.ADMIN, org.carol: Role.OWNER, org.dave: Role.MEMBER
    }
    assert timeline(engine, org.tenant, org.bob, conv)[-1] == event(
        4, org.alice, "member_left", org.alice, org.carol, ts=NOW_MS + 3
    )


def test_an_owner_leaving_without_admins_hands_over_to_the_longest_standing_member(
    engine: Engine, org: Org
) -> None:
    conv = make_group(engine, org)
    for at, user in ((1, org.carol), (2, org.bob)):
        add = AddMembers(tenant=org.tenant, actor=org.alice, conv=conv, users=(user,))
        engine.apply(add, NOW_MS + at)

    result = engine.apply(Leave(tenant=org.tenant, user=org.alice, conv=conv), NOW_MS + 3)

    assert result.users == (org.alice, org.carol)
    assert roles(engine, org.tenant, conv) == {org.bob: Role.MEMBER, org.carol: Role.OWNER}


def test_among_admins_who_joined_together_the_lowest_user_id_inherits(
    engine: Engine, team: Team
) -> None:
    result = engine.apply(Leave(tenant=team.tenant, user=team.owner, conv=team.conv), NOW_MS + 1)

    assert result.users == (team.owner, team.admin)
    assert engine.conversation(team.tenant, team.admin, team.conv).role is Role.OWNER
    assert engine.conversation(team.tenant, team.other_admin, team.conv).role is Role.ADMIN


def test_the_last_member_leaving_leaves_an_empty_group(engine: Engine, org: Org) -> None:
    conv = make_group(engine, org)

    result = engine.apply(Leave(tenant=org.tenant, user=org.alice, conv=conv), NOW_MS + 1)

    assert result == MembershipChanged(conv, 2, 2, (org.alice,))
    assert engine.member_ids(org.tenant, conv) == []
    assert engine.conversations(org.tenant, org.alice) == []


# -- joining ---------------------------------------------------------------------------------


def test_anyone_in_the_tenant_joins_an_open_group_as_a_member(engine: Engine, org: Org) -> None:
    conv = make_group(engine, org, org.bob, open=True)
    hello = Append(tenant=org.tenant, conv=conv, sender=org.bob, client_msg_id="m", body="hi")
    engine.apply(hello, NOW_MS)

    result = engine.apply(Join(tenant=org.tenant, user=org.carol, conv=conv), NOW_MS + 1)

    assert result == MembershipChanged(conv, 2, 3, (org.carol,))
    summary = engine.conversation(org.tenant, org.carol, conv)
    assert (summary.role, summary.head, summary.read, summary.unread) == (Role.MEMBER, 3, 3, 0)
    assert timeline(engine, org.tenant, org.carol, conv)[-1] == event(
        3, org.carol, "member_joined", org.carol, ts=NOW_MS + 1
    )


@pytest.mark.parametrize(
    ("user", "error"),
    [
        pytest.param(lambda o: o.bob, Conflict, id="a_member_joins_again"),
        pytest.param(lambda o: UNKNOWN, NotFound, id="an_unknown_user_joins"),
    ],
)
def test_join_refusals_on_an_open_group(
    engine: Engine, org: Org, user: Callable[[Org], int], error: type[HeraldError]
) -> None:
    conv = make_group(engine, org, org.bob, open=True)
    before = snapshot(engine, org.tenant)

    refusal = refused(engine, Join(tenant=org.tenant, user=user(org), conv=conv))

    assert_refusal(refusal, error)
    assert snapshot(engine, org.tenant) == before


# -- roles -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "role"), [("member", Role.ADMIN), ("admin", Role.MEMBER)]
)
def test_the_owner_promotes_and_demotes(
    engine: Engine, team: Team, target: str, role: Role
) -> None:
    user = getattr(team, target)
    op = SetRole(tenant=team.tenant, actor=team.owner, conv=team.conv, user=user, role=role)

    result = engine.apply(op, NOW_MS + 1)

    assert result == MembershipChanged(team.conv, 3, 3, (user,))
    assert engine.conversation(team.tenant, user, team.conv).role is role
    assert timeline(engine, team.tenant, team.owner, team.conv)[-1] == event(
        3, team.owner, "role_changed", user, ts=NOW_MS + 1
    )


def test_making_another_member_owner_steps_the_old_owner_down_to_admin(
    engine: Engine, team: Team
) -> None:
    op = SetRole(
        tenant=team.tenant, actor=team.owner, conv=team.conv, user=team.member, role=Role.OWNER
    )

    result = engine.apply(op, NOW_MS + 1)
    afterwards = refused(
        engine,
        SetRole(
            tenant=team.tenant, actor=team.owner, conv=team.conv, user=team.admin, role=Role.MEMBER
        ),
    )

    assert result == MembershipChanged(team.conv, 3, 3, (team.member, team.owner))
    assert roles(engine, team.tenant, team.conv) == {
        team.owner: Role.ADMIN, team.admin: Role.ADMIN, team.other_admin: Role.ADMIN,
        team.member: Role.OWNER,
    }
    assert (type(afterwards), afterwards.code) == (Forbidden, "forbidden")


# -- versions, member lists and the user's index ---------------------------------------------


def test_every_member_change_bumps_the_version_and_appends_one_event(
    engine: Engine, org: Org
) -> None:
    t = org.tenant
    conv = make_group(engine, org, org.bob, open=True)
    changes: list[Operation] = [
        AddMembers(tenant=t, actor=org.alice, conv=conv, users=(org.carol,)),
        SetRole(tenant=t, actor=org.alice, conv=conv, user=org.bob, role=Role.ADMIN),
        RemoveMember(tenant=t, actor=org.bob, conv=conv, user=org.carol),
        Join(tenant=t, user=org.dave, conv=conv),
        Leave(tenant=t, user=org.dave, conv=conv),
        Leave(tenant=t, user=org.alice, conv=conv),
    ]

    results = [engine.apply(op, NOW_MS + i) for i, op in enumerate(changes, start=1)]

    assert [(r.member_version, r.seq) for r in results] == [(v, v) for v in range(2, 8)]
    assert engine.conversation(t, org.bob, conv).member_version == 7
    history = timeline(engine, org.tenant, org.bob, conv)
    assert [(m.sender, m.body, m.mentions) for m in history] == [
        (org.alice, "group_created", (org.alice, org.bob)),
        (org.alice, "members_added", (org.carol,)),
        (org.alice, "role_changed", (org.bob,)),
        (org.bob, "member_removed", (org.carol,)),
        (org.dave, "member_joined", (org.dave,)),
        (org.dave, "member_left", (org.dave,)),
        (org.alice, "member_left", (org.alice, org.bob)),
    ]


def test_members_lists_everyone_with_roles_in_user_order(engine: Engine, team: Team) -> None:
    listing = engine.members(team.tenant, team.member, team.conv)

    assert listing == MemberList(
        team.conv, 2, True,
        [(team.owner, Role.OWNER), (team.admin, Role.ADMIN), (team.other_admin, Role.ADMIN),
         (team.member, Role.MEMBER)],
        [],
    )


def test_members_since_a_version_returns_only_what_changed(engine: Engine, team: Team) -> None:
    t, c = team.tenant, team.conv
    engine.apply(AddMembers(tenant=t, actor=team.owner, conv=c, users=(team.outsider,)), NOW_MS)
    promote = SetRole(tenant=t, actor=team.owner, conv=c, user=team.member, role=Role.ADMIN)
    engine.apply(promote, NOW_MS)
    engine.apply(RemoveMember(tenant=t, actor=team.owner, conv=c, user=team.admin), NOW_MS)

    assert engine.members(t, team.owner, c, since=2) == MemberList(
        c, 5, False, [(team.outsider, Role.MEMBER), (team.member, Role.ADMIN)], [team.admin]
    )
    assert engine.members(t, team.owner, c, since=4) == MemberList(c, 5, False, [], [team.admin])
    assert engine.members(t, team.owner, c, since=5) == MemberList(c, 5, False, [], [])


def test_members_since_reports_a_user_who_came_and_went_as_removed(
    engine: Engine, team: Team
) -> None:
    t, c = team.tenant, team.conv
    engine.apply(AddMembers(tenant=t, actor=team.owner, conv=c, users=(team.outsider,)), NOW_MS)
    engine.apply(Leave(tenant=t, user=team.outsider, conv=c), NOW_MS)

    assert engine.members(t, team.owner, c, since=2) == MemberList(c, 4, False, [], [team.outsider])


@pytest.mark.parametrize("since", [0, -1, 3, 1000])
def test_members_since_an_unknown_version_returns_the_full_list(
    engine: Engine, team: Team, since: int
) -> None:
    listing = engine.members(team.tenant, team.owner, team.conv, since=since)

    assert (listing.version, listing.full, listing.removed) == (2, True, [])
    assert len(listing.changed) == 4


def test_members_is_for_members_only(engine: Engine, team: Team) -> None:
    with pytest.raises(NotFound) as outsider:
        engine.members(team.tenant, team.outsider, team.conv)
    with pytest.raises(NotFound) as unknown:
        engine.members(team.tenant, team.owner, UNKNOWN)

    # The closed group is refused to an outsider exactly as a conversation that does not exist.
    assert outsider.value.message == f"conversation {team.conv} does not exist"
    assert unknown.value.message == f"conversation {UNKNOWN} does not exist"


def test_an_open_group_is_seen_by_everyone_of_the_tenant_and_used_by_its_members(
    engine: Engine, org: Org
) -> None:
    conv = make_group(engine, org, org.bob, open=True)
    t, outsider = org.tenant, org.carol
    reads: list[Callable[[], object]] = [
        lambda: engine.members(t, outsider, conv),
        lambda: engine.page_after(t, outsider, conv, 0, 10),
        lambda: engine.conversation(t, outsider, conv),
    ]
    for read in reads:
        with pytest.raises(NotMember) as refusal:
            read()
        assert refusal.value.code == "not_member"
    for op in [
        Append(tenant=t, conv=conv, sender=outsider, client_msg_id="m", body="hi"),
        AddMembers(tenant=t, actor=outsider, conv=conv, users=(org.dave,)),
        RemoveMember(tenant=t, actor=outsider, conv=conv, user=org.bob),
        Leave(tenant=t, user=outsider, conv=conv),
        SetRole(tenant=t, actor=outsider, conv=conv, user=org.bob, role=Role.ADMIN),
    ]:
        assert_refusal(refused(engine, op), NotMember)
    assert isinstance(engine.apply(Join(tenant=t, user=outsider, conv=conv), NOW_MS),
                      MembershipChanged)
    assert_refusal(refused(engine, Join(tenant=t, user=outsider, conv=conv)), Conflict)


def test_member_ids_lists_every_member_and_refuses_an_unknown_conversation(
    engine: Engine, team: Team
) -> None:
    assert engine.member_ids(team.tenant, team.conv) == [
        team.owner, team.admin, team.other_admin, team.member
    ]
    with pytest.raises(NotFound) as refusal:
        engine.member_ids(team.tenant, UNKNOWN)
    assert refusal.value.code == "not_found"


def test_a_new_member_starts_with_the_history_read(engine: Engine, org: Org) -> None:
    conv = make_group(engine, org, org.bob)
    for n in range(3):
        send = Append(tenant=org.tenant, conv=conv, sender=org.bob, client_msg_id=f"m{n}", body="x")
        engine.apply(send, NOW_MS)

    add = AddMembers(tenant=org.tenant, actor=org.alice, conv=conv, users=(org.carol,))
    engine.apply(add, NOW_MS)

    summary = engine.conversation(org.tenant, org.carol, conv)
    assert (summary.head, summary.read, summary.unread) == (5, 5, 0)
    assert engine.sync(org.tenant, org.carol).conversations == []
    # The history it joined into stays readable.
    assert [m.seq for m in timeline(engine, org.tenant, org.carol, conv)] == [1, 2, 3, 4, 5]


def test_a_re_added_member_starts_again_with_nothing_unread(engine: Engine, team: Team) -> None:
    t, c = team.tenant, team.conv
    engine.apply(Leave(tenant=t, user=team.member, conv=c), NOW_MS)
    engine.apply(Append(tenant=t, conv=c, sender=team.owner, client_msg_id="m", body="x"), NOW_MS)

    engine.apply(AddMembers(tenant=t, actor=team.admin, conv=c, users=(team.member,)), NOW_MS)

    summary = engine.conversation(t, team.member, c)
    assert (summary.role, summary.head, summary.read, summary.unread) == (Role.MEMBER, 5, 5, 0)


def test_conversations_lists_the_users_conversations_newest_activity_first(
    engine: Engine, org: Org
) -> None:
    t = org.tenant
    older = make_group(engine, org, org.bob, now_ms=NOW_MS)
    direct = engine.apply(OpenDirect(tenant=t, user=org.alice, peer=org.bob), NOW_MS + 10).conv
    newer = make_group(engine, org, now_ms=NOW_MS + 5)  # alice only
    reply = Append(tenant=t, conv=older, sender=org.bob, client_msg_id="m", body="x")
    engine.apply(reply, NOW_MS + 20)

    listed = engine.conversations(t, org.alice)

    assert [(s.conv, s.kind, s.last_ts) for s in listed] == [
        (older, ConversationKind.GROUP, NOW_MS + 20),
        (direct, ConversationKind.DIRECT, NOW_MS + 10),
        (newer, ConversationKind.GROUP, NOW_MS + 5),
    ]
    assert listed[0] == engine.conversation(t, org.alice, older)
    assert [s.conv for s in engine.conversations(t, org.bob)] == [older, direct]
    assert engine.conversations(t, org.carol) == []


def test_conversations_follows_leaving_and_being_added_back(engine: Engine, team: Team) -> None:
    t, c = team.tenant, team.conv
    engine.apply(Leave(tenant=t, user=team.member, conv=c), NOW_MS)
    after_leaving = engine.conversations(t, team.member)

    engine.apply(AddMembers(tenant=t, actor=team.owner, conv=c, users=(team.member,)), NOW_MS)

    assert after_leaving == []
    assert [s.conv for s in engine.conversations(t, team.member)] == [c]
