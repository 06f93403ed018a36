"""Sync: what a user's client is missing across its conversations, newest activity first."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from conftest import NOW_MS, Org

from engine import (
    Append,
    ConversationSync,
    CreateGroup,
    Engine,
    HeraldError,
    Invalid,
    Leave,
    MarkDelivered,
    MarkRead,
    NotFound,
    OpenDirect,
    SyncResult,
)


@dataclass(frozen=True, slots=True)
class Scene:
    """Three conversations of bob's, each at head 1 (its creation event), created in turn."""

    direct: int  # alice and bob, opened at NOW_MS
    group: int  # alice, bob and carol, created at NOW_MS + 1
    quiet: int  # alice and bob, created at NOW_MS + 2


@pytest.fixture
def scene(engine: Engine, org: Org) -> Scene:
    t = org.tenant
    direct = engine.apply(OpenDirect(tenant=t, user=org.alice, peer=org.bob), NOW_MS).conv
    group = engine.apply(
        CreateGroup(tenant=t, creator=org.alice, title="g", members=(org.bob, org.carol)),
        NOW_MS + 1,
    ).conv
    quiet = engine.apply(
        CreateGroup(tenant=t, creator=org.alice, title="q", members=(org.bob,)), NOW_MS + 2
    ).conv
    return Scene(direct, group, quiet)


def send(engine: Engine, org: Org, conv: int, sender: int, count: int, at_ms: int) -> None:
    """`sender` sends `count` messages to `conv` at `at_ms`, with bodies "<conv>:<seq>"."""
    head = engine.conversation(org.tenant, sender, conv).head
    ops = [
        Append(tenant=org.tenant, conv=conv, sender=sender, client_msg_id=f"{conv}-{seq}",
               body=f"{conv}:{seq}")
        for seq in range(head + 1, head + count + 1)
    ]
    assert all(not isinstance(r, HeraldError) for r in engine.apply_batch(ops, at_ms))


def outline(result: SyncResult) -> list[tuple[int, list[int], bool]]:
    """Each conversation of a sync as (conv, seqs of its messages, more)."""
    return [(c.conv, [m.seq for m in c.messages], c.more) for c in result.conversations]


def test_sync_with_server_cursors_returns_the_missing_messages_newest_activity_first(
    engine: Engine, org: Org, scene: Scene
) -> None:
    send(engine, org, scene.direct, org.alice, 2, NOW_MS + 10)
    send(engine, org, scene.group, org.carol, 1, NOW_MS + 20)

    result = engine.sync(org.tenant, org.bob)

    assert result.removed == []
    group, direct = result.conversations
    assert group == ConversationSync(
        conv=scene.group, head=2, last_ts=NOW_MS + 20, read=1, unread=1,
        messages=engine.page_after(org.tenant, org.bob, scene.group, 1, 10).messages, more=False,
    )
    assert [(m.seq, m.sender, m.body) for m in group.messages] == [
        (2, org.carol, f"{scene.group}:2")
    ]
    assert (direct.conv, direct.head, direct.last_ts, direct.read, direct.unread) == (
        scene.direct, 3, NOW_MS + 10, 1, 2
    )
    assert [(m.seq, m.body) for m in direct.messages] == [
        (2, f"{scene.direct}:2"), (3, f"{scene.direct}:3")
    ]


def test_nothing_new_is_an_empty_sync(engine: Engine, org: Org, scene: Scene) -> None:
    assert engine.sync(org.tenant, org.bob) == SyncResult(conversations=[], removed=[])
    assert engine.sync(org.tenant, org.carol) == SyncResult(conversations=[], removed=[])


def test_a_users_own_messages_are_not_missing_from_its_sync(
    engine: Engine, org: Org, scene: Scene
) -> None:
    send(engine, org, scene.group, org.bob, 3, NOW_MS + 10)

    assert engine.sync(org.tenant, org.bob) == SyncResult([], [])
    assert outline(engine.sync(org.tenant, org.carol)) == [(scene.group, [2, 3, 4], False)]


def test_sync_reads_without_moving_cursors_and_delivery_moves_them(
    engine: Engine, org: Org, scene: Scene
) -> None:
    send(engine, org, scene.direct, org.alice, 2, NOW_MS + 10)
    send(engine, org, scene.group, org.carol, 1, NOW_MS + 20)
    first = engine.sync(org.tenant, org.bob)

    again = engine.sync(org.tenant, org.bob)
    engine.apply(MarkDelivered(tenant=org.tenant, user=org.bob, conv=scene.direct, seq=3), NOW_MS)
    after_delivery = engine.sync(org.tenant, org.bob)
    engine.apply(MarkRead(tenant=org.tenant, user=org.bob, conv=scene.group, seq=2), NOW_MS)

    assert again == first
    assert outline(after_delivery) == [(scene.group, [2], False)]
    assert engine.sync(org.tenant, org.bob) == SyncResult([], [])


def test_sync_reports_the_read_cursor_and_unread_count(
    engine: Engine, org: Org, scene: Scene
) -> None:
    send(engine, org, scene.direct, org.alice, 4, NOW_MS + 10)
    engine.apply(MarkRead(tenant=org.tenant, user=org.bob, conv=scene.direct, seq=3), NOW_MS)
    known = {scene.direct: 3, scene.group: 1, scene.quiet: 1}

    (direct,) = engine.sync(org.tenant, org.bob, known).conversations

    assert (direct.head, direct.read, direct.unread, [m.seq for m in direct.messages]) == (
        5, 3, 2, [4, 5]
    )


def test_sync_with_client_cursors_uses_them_instead_of_the_servers(
    engine: Engine, org: Org, scene: Scene
) -> None:
    send(engine, org, scene.direct, org.alice, 2, NOW_MS + 10)  # head 3
    send(engine, org, scene.group, org.carol, 1, NOW_MS + 20)  # head 2

    result = engine.sync(org.tenant, org.bob, {scene.direct: 2, scene.group: 0})

    # quiet is not in `known`: the client holds nothing of it.
    assert outline(result) == [
        (scene.group, [1, 2], False), (scene.direct, [3], False), (scene.quiet, [1], False)
    ]
    assert result.removed == []


def test_sync_with_client_cursors_at_or_past_the_head_lists_nothing(
    engine: Engine, org: Org, scene: Scene
) -> None:
    known = {scene.direct: 1, scene.group: 1, scene.quiet: 50}

    assert engine.sync(org.tenant, org.bob, known) == SyncResult([], [])


def test_a_negative_client_cursor_counts_as_holding_nothing(
    engine: Engine, org: Org, scene: Scene
) -> None:
    send(engine, org, scene.direct, org.alice, 2, NOW_MS + 10)
    known = {scene.direct: -5, scene.group: 1, scene.quiet: 1}

    assert outline(engine.sync(org.tenant, org.bob, known)) == [(scene.direct, [1, 2, 3], False)]


def test_conversations_the_user_is_no_longer_in_are_reported_removed(
    engine: Engine, org: Org, scene: Scene
) -> None:
    engine.apply(Leave(tenant=org.tenant, user=org.bob, conv=scene.group), NOW_MS + 10)
    known = {scene.direct: 1, scene.group: 1, scene.quiet: 1, 777_777: 3}

    result = engine.sync(org.tenant, org.bob, known)

    assert result == SyncResult(conversations=[], removed=[scene.group, 777_777])
    assert engine.sync(org.tenant, org.bob).removed == []  # without `known`, nothing to compare


def test_the_per_conversation_limit_keeps_the_newest_and_says_more(
    engine: Engine, org: Org, scene: Scene
) -> None:
    send(engine, org, scene.direct, org.alice, 10, NOW_MS + 10)  # bob misses seqs 2..11

    assert outline(engine.sync(org.tenant, org.bob, limit_per_conv=3)) == [
        (scene.direct, [9, 10, 11], True)
    ]
    assert outline(engine.sync(org.tenant, org.bob, limit_per_conv=10)) == [
        (scene.direct, list(range(2, 12)), False)
    ]


def test_the_message_budget_goes_to_the_newest_conversations_first(
    engine: Engine, org: Org, scene: Scene
) -> None:
    send(engine, org, scene.quiet, org.alice, 2, NOW_MS + 10)  # oldest activity
    send(engine, org, scene.group, org.alice, 3, NOW_MS + 20)
    send(engine, org, scene.direct, org.alice, 5, NOW_MS + 30)  # newest activity

    result = engine.sync(org.tenant, org.bob, max_messages=6)

    assert outline(result) == [
        (scene.direct, [2, 3, 4, 5, 6], False),
        (scene.group, [4], True),
        (scene.quiet, [], True),
    ]
    assert [c.unread for c in result.conversations] == [5, 3, 2]


def test_the_byte_budget_keeps_the_newest_messages_and_says_more(
    engine: Engine, org: Org, scene: Scene
) -> None:
    """Sync answers are bounded in size as in count: one reply never outgrows an outbox."""
    for conv, at_ms in ((scene.group, NOW_MS + 20), (scene.direct, NOW_MS + 30)):
        ops = [
            Append(tenant=org.tenant, conv=conv, sender=org.alice, client_msg_id=f"{conv}-{n}",
                   body=f"{n:<1000}")
            for n in range(4)
        ]
        assert all(not isinstance(r, HeraldError) for r in engine.apply_batch(ops, at_ms))

    result = engine.sync(org.tenant, org.bob, max_bytes=3500)
    unbounded = engine.sync(org.tenant, org.bob)

    # Three 1,000-byte messages fit: the newest of the newest conversation; none for the next.
    assert outline(result) == [(scene.direct, [3, 4, 5], True), (scene.group, [], True)]
    assert outline(unbounded) == [
        (scene.direct, [2, 3, 4, 5], False), (scene.group, [2, 3, 4, 5], False)
    ]


def test_a_zero_budget_lists_the_changed_conversations_without_messages(
    engine: Engine, org: Org, scene: Scene
) -> None:
    send(engine, org, scene.group, org.alice, 3, NOW_MS + 20)

    result = engine.sync(org.tenant, org.bob, max_messages=0)

    assert outline(result) == [(scene.group, [], True)]
    assert result.conversations[0].head == 4


def test_everything_lists_unchanged_conversations_too(
    engine: Engine, org: Org, scene: Scene
) -> None:
    send(engine, org, scene.direct, org.alice, 1, NOW_MS + 10)

    result = engine.sync(org.tenant, org.bob, everything=True)

    assert outline(result) == [
        (scene.direct, [2], False), (scene.quiet, [], False), (scene.group, [], False)
    ]
    assert [(c.head, c.last_ts, c.unread) for c in result.conversations] == [
        (2, NOW_MS + 10, 1), (1, NOW_MS + 2, 0), (1, NOW_MS + 1, 0)
    ]


def test_everything_for_a_user_in_no_conversation_is_empty(
    engine: Engine, org: Org, scene: Scene
) -> None:
    assert engine.sync(org.tenant, org.dave, everything=True) == SyncResult([], [])


@pytest.mark.parametrize(
    "arguments",
    [{"limit_per_conv": 0}, {"limit_per_conv": 501}, {"max_messages": -1}],
    ids=["no_messages_per_conversation", "over_the_page_maximum", "negative_budget"],
)
def test_sync_refuses_limits_out_of_range(
    engine: Engine, org: Org, scene: Scene, arguments: dict[str, int]
) -> None:
    with pytest.raises(Invalid) as refusal:
        engine.sync(org.tenant, org.bob, **arguments)  # type: ignore[arg-type]

    assert refusal.value.code == "invalid"


def test_sync_of_an_unknown_user_is_not_found(engine: Engine, org: Org) -> None:
    with pytest.raises(NotFound) as refusal:
        engine.sync(org.tenant, 999_999)

    assert refusal.value.code == "not_found"
