"""Message blocks (engine/blocks.py): whatever the sizes and batches, reads return exactly what
was sent, in plain and sealed stores, and the stored blocks keep their bounds."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import lmdb
import msgspec
import pytest
from conftest import _HASH as HASH
from conftest import NOW_MS, Org, assert_refusal

from engine import (
    AddKeyEpoch,
    Append,
    CorruptData,
    CreateGroup,
    CreateTenant,
    CreateUser,
    Engine,
    HeraldError,
    Keyring,
    Message,
    MessageKind,
)
from engine.blocks import (
    BLOCK_MAX_MESSAGES,
    BLOCK_MAX_STORED_BYTES,
    TAIL_MAX_MESSAGES,
    TAIL_MAX_STORED_BYTES,
    block_index,
    extend_block,
    merge_blocks,
    pack_block,
)
from engine.keys import pack_ids

MAP_SIZE_BYTES = 256 * 2**20
_encode = msgspec.msgpack.encode


def open_store(path: Path, sealed: bool) -> Engine:
    if not sealed:
        return Engine(path, map_size=MAP_SIZE_BYTES)
    keyring = Keyring()
    keyring.install(1, 1, os.urandom(32))  # tenant 1 is the first tenant of a new store
    return Engine(path, map_size=MAP_SIZE_BYTES, keyring=keyring)


@pytest.fixture(params=["plain", "sealed"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Engine, Org, int]]:
    """An engine, its one tenant's alice and bob (and carol, dave), and their group."""
    sealed = request.param == "sealed"
    eng = open_store(tmp_path / "store", sealed)
    tenant = eng.apply(CreateTenant(name="acme"), NOW_MS).tenant
    if sealed:
        eng.apply(AddKeyEpoch(tenant=tenant, wrapped_dek=b"w", key_id="ek"), NOW_MS)
    users = [
        eng.apply(CreateUser(tenant=tenant, login=login, display_name=login,
                             password_hash=HASH), NOW_MS).user
        for login in ("alice", "bob", "carol", "dave")
    ]
    org = Org(tenant, *users)
    conv = eng.apply(CreateGroup(tenant=tenant, creator=org.alice, title="g",
                                 members=(org.bob,)), NOW_MS).conv
    yield eng, org, conv
    eng.close()


def send(eng: Engine, org: Org, conv: int, bodies: list[str], batch: int, tag: str) -> None:
    for start in range(0, len(bodies), batch):
        ops = [
            Append(tenant=org.tenant, conv=conv, sender=org.alice if i % 2 else org.bob,
                   client_msg_id=f"{tag}{i}", body=body)
            for i, body in enumerate(bodies[start:start + batch], start)
        ]
        results = eng.apply_batch(ops, NOW_MS)
        assert not [r for r in results if isinstance(r, HeraldError)]


def random_bodies(rng: random.Random, count: int) -> list[str]:
    """Mostly chat-sized lines, some long ones, some multi-byte text, now and then a body
    larger than a block on its own."""
    bodies = []
    for _ in range(count):
        shape = rng.random()
        if shape < 0.05:  # ASCII below: a character is a byte, within max_body_bytes
            size = rng.randint(BLOCK_MAX_STORED_BYTES, BLOCK_MAX_STORED_BYTES + 4000)
        elif shape < 0.25:
            size = rng.randint(200, 900)
        else:
            size = rng.randint(1, 120)
        alphabet = "消息abc xyz" if rng.random() < 0.3 and shape >= 0.05 else "abcdefghij "
        bodies.append("".join(rng.choice(alphabet) for _ in range(size)))
    return bodies


def expected_run(
    messages: list[Message], first: int, last: int, max_bytes: int | None, newest_first: bool
) -> list[Message]:
    """What a byte-bounded scan of first..last must return: whole messages, at least one."""
    run = [m for m in messages if first <= m.seq <= last]
    if newest_first:
        run.reverse()
    out: list[Message] = []
    used = 0
    for message in run:
        size = len(_encode(message))
        if max_bytes is not None and used + size > max_bytes and out:
            break
        used += size
        out.append(message)
    return sorted(out, key=lambda m: m.seq)


@pytest.mark.parametrize("seed", range(4))
def test_every_read_returns_exactly_the_messages_sent_across_block_boundaries(
    store: tuple[Engine, Org, int], seed: int
) -> None:
    eng, org, conv = store
    rng = random.Random(seed)
    bodies = random_bodies(rng, rng.randint(150, 300))
    send(eng, org, conv, bodies, batch=rng.choice([1, 7, 64, 300]), tag=f"s{seed}-")

    stored = eng.messages(org.tenant, conv, 1, 10_000)
    head = len(bodies) + 1  # the group's creation is seq 1
    assert [m.seq for m in stored] == list(range(1, head + 1))
    assert [m.body for m in stored[1:]] == bodies
    assert stored[0].kind is MessageKind.SYSTEM
    for _ in range(60):
        first = rng.randint(1, head)
        last = rng.randint(first, min(head + 5, first + 120))
        max_bytes = rng.choice([None, 1, 300, 2_000, 20_000])
        newest_first = rng.random() < 0.5
        page = (
            eng.page_before(org.tenant, org.bob, conv, last + 1, last - first + 1, max_bytes)
            if newest_first and last <= head
            else eng.page_after(org.tenant, org.bob, conv, first - 1, last - first + 1,
                                max_bytes)
        )
        newest_first = newest_first and last <= head
        assert page.messages == expected_run(stored, first, last, max_bytes, newest_first), (
            first, last, max_bytes, newest_first)
        assert eng.messages(org.tenant, conv, first, last) == stored[first - 1:last]


def test_blocks_keep_their_bounds_and_cover_the_timeline_without_gaps(
    tmp_path: Path,
) -> None:
    eng = open_store(tmp_path / "store", sealed=False)
    tenant = eng.apply(CreateTenant(name="acme"), NOW_MS).tenant
    alice = eng.apply(CreateUser(tenant=tenant, login="alice", display_name="A",
                                 password_hash=HASH), NOW_MS).user
    conv = eng.apply(CreateGroup(tenant=tenant, creator=alice, title="g"), NOW_MS).conv
    org = Org(tenant, alice, alice, alice, alice)
    bodies = random_bodies(random.Random(7), 400) + ["x"] * 150  # then many tiny ones
    send(eng, org, conv, bodies, batch=50, tag="b")
    eng.close()

    env = lmdb.open(str(tmp_path / "store"), max_dbs=32, readonly=True, lock=False)
    with env.begin(db=env.open_db(b"messages", create=False)) as txn:
        blocks = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    env.close()
    expected_first = 1
    for i, (key, value) in enumerate(blocks):
        assert key == pack_ids(tenant, conv, expected_first)
        assert value[:1] == b"\x00"
        ends, _ = block_index(value[1:])
        if i + 1 < len(blocks):  # closed blocks: merged tails
            assert len(ends) <= BLOCK_MAX_MESSAGES
            assert len(ends) == 1 or len(value) <= BLOCK_MAX_STORED_BYTES
        else:  # the tail, rewritten on every append
            assert len(ends) <= TAIL_MAX_MESSAGES
            assert len(ends) == 1 or len(value) <= TAIL_MAX_STORED_BYTES
        expected_first += len(ends)
    assert expected_first == len(bodies) + 2  # every seq, exactly once
    closed = [len(value) for _, value in blocks[:-1]]
    # Tails were merged: most closed blocks are well past a tail's size.
    assert sorted(closed)[len(closed) // 2] > TAIL_MAX_STORED_BYTES


def test_a_message_inside_a_block_can_be_recalled(store: tuple[Engine, Org, int]) -> None:
    eng, org, conv = store
    send(eng, org, conv, [f"line {i}" for i in range(20)], batch=20, tag="r")

    recall = Append(tenant=org.tenant, conv=conv, sender=org.alice, client_msg_id="undo",
                    kind=MessageKind.RECALL, body="", ref=12)
    (result,) = eng.apply_batch([recall], NOW_MS)
    assert not isinstance(result, HeraldError)
    others = Append(tenant=org.tenant, conv=conv, sender=org.alice, client_msg_id="undo2",
                    kind=MessageKind.RECALL, body="", ref=13)
    (by_owner,) = eng.apply_batch([others], NOW_MS)  # seq 13 is bob's: alice owns the group
    assert not isinstance(by_owner, HeraldError)
    assert [m.ref for m in eng.messages(org.tenant, conv, 22, 23)] == [12, 13]


def test_a_damaged_block_index_in_a_plain_store_is_corrupt_data(tmp_path: Path) -> None:
    eng = open_store(tmp_path / "store", sealed=False)
    tenant = eng.apply(CreateTenant(name="acme"), NOW_MS).tenant
    alice = eng.apply(CreateUser(tenant=tenant, login="alice", display_name="A",
                                 password_hash=HASH), NOW_MS).user
    conv = eng.apply(CreateGroup(tenant=tenant, creator=alice, title="g"), NOW_MS).conv
    eng.close()
    env = lmdb.open(str(tmp_path / "store"), max_dbs=32)
    with env.begin(db=env.open_db(b"messages", create=False), write=True) as txn:
        key = pack_ids(tenant, conv, 1)
        value = bytearray(txn.get(key))
        value[2] = 9  # the record count: 9 records claimed, one stored
        txn.put(key, bytes(value))
    env.close()
    eng = open_store(tmp_path / "store", sealed=False)
    try:
        with pytest.raises(CorruptData) as refusal:
            eng.messages(tenant, conv, 1, 1)
        assert_refusal(refusal.value, CorruptData)
    finally:
        eng.close()


def test_pack_extend_and_index_agree() -> None:
    records = [b"a", b"", b"ccc"]
    block = pack_block(records[:1])
    for record in records[1:]:
        block = extend_block(block, record)
    assert block == pack_block(records)
    ends, start = block_index(block)
    assert [block[start + (ends[i - 1] if i else 0):start + ends[i]] for i in range(3)] == records
    assert merge_blocks(pack_block(records[:2]), pack_block(records[2:])) == block
    with pytest.raises(ValueError):
        pack_block([])
    with pytest.raises(ValueError):
        extend_block(pack_block([b"x"] * BLOCK_MAX_MESSAGES), b"y")
    for damaged in (b"", b"\x00", b"\x00\x02\x00\x00\x00\x01x", block + b"extra"):
        with pytest.raises(CorruptData):
            block_index(damaged)


def test_a_batch_that_never_committed_leaves_no_trace_in_the_next_append(tmp_path: Path) -> None:
    # Appends extend the last block from the plaintext they wrote last (sealed stores keep it):
    # a batch refused at commit must not lend its messages to the next append.
    keyring = Keyring()
    keyring.install(1, 1, os.urandom(32))
    eng = Engine(tmp_path / "tiny", map_size=2**20, keyring=keyring)
    try:
        tenant = eng.apply(CreateTenant(name="acme"), NOW_MS).tenant
        eng.apply(AddKeyEpoch(tenant=tenant, wrapped_dek=b"w", key_id="ek"), NOW_MS)
        alice = eng.apply(CreateUser(tenant=tenant, login="alice", display_name="A",
                                     password_hash=HASH), NOW_MS).user
        small, big = (eng.apply(CreateGroup(tenant=tenant, creator=alice, title=t), NOW_MS).conv
                      for t in ("small", "big"))
        org = Org(tenant, alice, alice, alice, alice)
        send(eng, org, small, ["a", "b", "c"], batch=3, tag="ok")
        doomed = [Append(tenant=tenant, conv=small, sender=alice, client_msg_id="lost",
                         body="lost")]
        doomed += [Append(tenant=tenant, conv=big, sender=alice, client_msg_id=f"big{i}",
                          body="x" * 16_000) for i in range(100)]

        with pytest.raises(HeraldError) as refusal:
            eng.apply_batch(doomed, NOW_MS)
        assert refusal.value.code == "capacity_exceeded"

        send(eng, org, small, ["kept"], batch=1, tag="after")
        assert [m.body for m in eng.messages(tenant, small, 2, 10)] == ["a", "b", "c", "kept"]
    finally:
        eng.close()
