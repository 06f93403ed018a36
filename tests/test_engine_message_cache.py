"""The engine's cache of opened messages: same answers as the store, and never a plaintext
its key could no longer open.

Real LMDB stores in tmp dirs and real keyrings. Whether a read was served from the cache is
seen through the keyring's injected clock: a key installed with an expiry reads the clock on
every lookup, and a cached page looks its key up once, where opening its records looks it up
once per record.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from conftest import NOW_MS, Org, assert_refusal, create_org
from hypothesis import settings
from hypothesis.stateful import invariant, precondition, rule, run_state_machine_as_test
from test_engine_properties import EngineMachine

from engine import (
    AddKeyEpoch,
    AddMembers,
    Append,
    Appended,
    CreateGroup,
    CreateTenant,
    CreateUser,
    Engine,
    HeraldError,
    Invalid,
    Keyring,
    KeyUnavailable,
    Message,
    MessageKind,
    NotFound,
    ShredKeyEpoch,
)
from engine.keys import pack_id, pack_ids
from engine.message_cache import ENTRY_OVERHEAD_BYTES, CachedMessage, MessageCache

MAP_SIZE_BYTES = 64 * 2**20
SMALL_CACHE_BYTES = 4 * (ENTRY_OVERHEAD_BYTES + 40)  # about four short messages: evictions


# -- the model test, with a cache small enough to evict --------------------------------------


class CachedEngineMachine(EngineMachine):
    """The model machine on an engine whose cache holds a few messages: every read mixes
    cached, evicted and never-seen messages. Sealed, it also loses its keys and gets them
    back; every read in between must refuse, cached or not."""

    def dek(self, epoch: int) -> bytes:
        return bytes(range(32)) if epoch == 1 else bytes([epoch]) * 32  # as EngineMachine

    def reinstall_every_key(self) -> None:
        assert self.keyring is not None
        for epoch in range(1, len(self.engine.key_epochs(self.tenant)) + 1):
            self.keyring.install(self.tenant, epoch, self.dek(epoch))

    def every_message_read_refuses(self, why: str) -> None:
        for conv_id, conv in self.model.convs.items():
            if not conv.members or not conv.messages:
                continue
            reader, eng, t = min(conv.members), self.engine, self.tenant
            for read in (
                partial(eng.page_before, t, reader, conv_id, None, 10),
                partial(eng.page_after, t, reader, conv_id, 0, 10),
                partial(eng.messages, t, conv_id, 1, conv.head),
                partial(eng.sync, t, reader, {conv_id: 0}),
            ):
                with pytest.raises(KeyUnavailable) as refusal:
                    read()
                assert why in refusal.value.message

    @precondition(lambda self: self.keyring is not None)
    @rule()
    def forget_the_tenants_keys_then_install_them_again(self) -> None:
        assert self.keyring is not None
        self.keyring.forget(self.tenant)
        cache = self.engine.message_cache
        assert cache is not None and len(cache) == 0
        self.every_message_read_refuses("not installed")
        self.reinstall_every_key()

    @precondition(lambda self: self.keyring is not None)
    @rule()
    def let_every_key_expire_then_install_them_again(self) -> None:
        assert self.keyring is not None
        for epoch in range(1, len(self.engine.key_epochs(self.tenant)) + 1):
            self.keyring.install(self.tenant, epoch, self.dek(epoch),
                                 expires_at=time.monotonic() - 1)
        self.every_message_read_refuses("expired")
        self.reinstall_every_key()

    @invariant()
    def the_cache_stays_within_its_bound(self) -> None:
        cache = self.engine.message_cache
        assert cache is not None
        assert cache.bytes_used <= SMALL_CACHE_BYTES
        assert len(cache) * ENTRY_OVERHEAD_BYTES <= cache.bytes_used
        assert cache.recount() == (len(cache), cache.bytes_used)


def test_a_plain_engine_with_a_small_cache_agrees_with_the_model(password_hash: str) -> None:
    run_state_machine_as_test(
        lambda: CachedEngineMachine(password_hash, message_cache_bytes=SMALL_CACHE_BYTES),
        settings=settings(max_examples=60, stateful_step_count=30, deadline=None),
    )


def test_a_sealed_engine_with_a_small_cache_agrees_with_the_model_and_its_keys(
    password_hash: str,
) -> None:
    run_state_machine_as_test(
        lambda: CachedEngineMachine(password_hash, sealed=True,
                                    message_cache_bytes=SMALL_CACHE_BYTES),
        settings=settings(max_examples=40, stateful_step_count=30, deadline=None),
    )


# -- a sealed store and a keyring whose clock counts key lookups -----------------------------


class CountingClock:
    """Monotonic seconds, still unless moved (or moved by `step` on every reading); counts
    its readings (one per key lookup of a key installed with an expiry)."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.step = 0.0
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        self.now += self.step
        return self.now


FAR_FUTURE_S = 10**9


@dataclass
class Box:
    path: Path
    keyring: Keyring
    clock: CountingClock
    engine: Engine
    deks: dict[tuple[int, int], bytes]

    def install(self, tenant: int, epoch: int, expires_at: float = FAR_FUTURE_S) -> None:
        self.keyring.install(tenant, epoch, self.deks[tenant, epoch], expires_at=expires_at)

    def add_epoch(self, tenant: int) -> int:
        epoch = len([k for k in self.deks if k[0] == tenant]) + 1
        self.deks[tenant, epoch] = os.urandom(32)
        self.install(tenant, epoch)
        self.engine.apply(AddKeyEpoch(tenant=tenant, wrapped_dek=b"w", key_id="ek"), NOW_MS)
        return epoch

    def org(self, name: str, password_hash: str) -> Org:
        tenant = self.engine.apply(CreateTenant(name=name), NOW_MS).tenant
        self.add_epoch(tenant)
        users = [
            self.engine.apply(CreateUser(tenant=tenant, login=login, display_name=login,
                                         password_hash=password_hash), NOW_MS).user
            for login in ("alice", "bob", "carol", "dave")
        ]
        return Org(tenant, *users)

    def reopen(self, message_cache_bytes: int) -> Engine:
        self.engine.close()
        self.engine = Engine(self.path, map_size=MAP_SIZE_BYTES, keyring=self.keyring,
                             message_cache_bytes=message_cache_bytes)
        return self.engine

    @property
    def cache(self) -> MessageCache:
        cache = self.engine.message_cache
        assert cache is not None
        return cache

    def lookups(self, read: object) -> int:
        """How many key lookups `read()` made."""
        before = self.clock.readings
        read()  # type: ignore[operator]
        return self.clock.readings - before


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    clock = CountingClock()
    keyring = Keyring(clock=clock)
    path = tmp_path / "sealed"
    b = Box(path, keyring, clock, Engine(path, map_size=MAP_SIZE_BYTES, keyring=keyring), {})
    yield b
    b.engine.close()


def chat(engine: Engine, org: Org, count: int, prefix: str = "m") -> int:
    """A group of alice and bob with `count` messages from alice after its system message."""
    conv = engine.apply(CreateGroup(tenant=org.tenant, creator=org.alice, title="team",
                                    members=(org.bob,)), NOW_MS).conv
    results = engine.apply_batch([
        Append(tenant=org.tenant, conv=conv, sender=org.alice, client_msg_id=f"{prefix}{i}",
               body=f"{prefix} body {i}") for i in range(count)
    ], NOW_MS)
    assert all(isinstance(r, Appended) for r in results)
    return conv


def entries_of(cache: MessageCache, tenant: int, conv: int, seqs: range) -> list[bool]:
    return [pack_ids(tenant, conv, seq) in cache for seq in seqs]


# -- serving from the cache -------------------------------------------------------------------


def test_appends_fill_the_cache_and_a_cached_page_looks_its_key_up_once(
    box: Box, password_hash: str
) -> None:
    org = box.org("acme", password_hash)
    conv = chat(box.engine, org, 300)
    assert all(entries_of(box.cache, org.tenant, conv, range(1, 302)))

    cached_page = box.engine.page_before(org.tenant, org.bob, conv, None, 50)
    assert box.lookups(lambda: box.engine.page_before(org.tenant, org.bob, conv, None, 50)) == 1

    box.reopen(message_cache_bytes=0)
    # Uncached, the page opens each message block it spans: one key lookup per block (301
    # short messages: a few merged blocks and the tail; the latest 50 span one or two).
    assert box.engine.stats()["message_blocks"] <= 5
    uncached = box.lookups(lambda: box.engine.page_before(org.tenant, org.bob, conv, None, 50))
    assert uncached in (1, 2)
    assert box.engine.page_before(org.tenant, org.bob, conv, None, 50) == cached_page
    assert [m.body for m in cached_page.messages] == [f"m body {i}" for i in range(250, 300)]


def test_reads_fill_a_cold_cache_and_the_next_read_is_served_from_it(
    box: Box, password_hash: str
) -> None:
    org = box.org("acme", password_hash)
    conv = chat(box.engine, org, 30)
    box.reopen(message_cache_bytes=2**20)
    assert len(box.cache) == 0

    first = box.engine.page_after(org.tenant, org.bob, conv, 0, 20)
    assert entries_of(box.cache, org.tenant, conv, range(1, 22)) == [True] * 20 + [False]
    # Half cached, half not: the blocks of the range are opened (one key lookup each, 31
    # short messages fit in two blocks at most), and the misses fill the cache.
    assert box.lookups(lambda: box.engine.page_after(org.tenant, org.bob, conv, 10, 20)) <= 2
    assert all(entries_of(box.cache, org.tenant, conv, range(1, 31)))
    assert box.lookups(lambda: box.engine.page_after(org.tenant, org.bob, conv, 10, 20)) == 1
    assert box.engine.page_after(org.tenant, org.bob, conv, 0, 20) == first


def test_a_cached_read_past_the_head_or_over_a_byte_budget_answers_as_the_store(
    box: Box, password_hash: str
) -> None:
    org = box.org("acme", password_hash)
    conv = chat(box.engine, org, 12)
    eng = box.engine
    answers = [
        eng.messages(org.tenant, conv, 5, 40),
        eng.messages(org.tenant, conv, 14, 20),
        eng.page_after(org.tenant, org.bob, conv, 8, 50, max_bytes=60),
        eng.page_before(org.tenant, org.bob, conv, None, 50, max_bytes=60),
        eng.page_before(org.tenant, org.bob, conv, 4, 50, max_bytes=1),
        eng.sync(org.tenant, org.bob, {conv: 0}, max_bytes=100),
    ]
    box.reopen(message_cache_bytes=0)
    assert answers == [
        box.engine.messages(org.tenant, conv, 5, 40),
        box.engine.messages(org.tenant, conv, 14, 20),
        box.engine.page_after(org.tenant, org.bob, conv, 8, 50, max_bytes=60),
        box.engine.page_before(org.tenant, org.bob, conv, None, 50, max_bytes=60),
        box.engine.page_before(org.tenant, org.bob, conv, 4, 50, max_bytes=1),
        box.engine.sync(org.tenant, org.bob, {conv: 0}, max_bytes=100),
    ]
    assert [m.seq for m in answers[0]] == list(range(5, 14)) and answers[1] == []


def test_a_plain_store_caches_too(engine: Engine, org: Org) -> None:
    conv = chat(engine, org, 5)
    cache = engine.message_cache
    assert cache is not None and len(cache) == 6
    assert [m.seq for m in engine.messages(org.tenant, conv, 1, 9)] == [1, 2, 3, 4, 5, 6]


# -- keys: forgotten, expired, shredded, another tenant ---------------------------------------


def refusal_of(read: object) -> str:
    with pytest.raises(KeyUnavailable) as refusal:  # or KeyNotInstalled, a kind of it
        read()  # type: ignore[operator]
    assert refusal.value.code == "key_unavailable"
    return refusal.value.message


def reads(engine: Engine, org: Org, conv: int) -> list[object]:
    return [
        lambda: engine.page_before(org.tenant, org.bob, conv, None, 20),
        lambda: engine.page_after(org.tenant, org.bob, conv, 0, 20),
        lambda: engine.messages(org.tenant, conv, 1, 5),
        lambda: engine.sync(org.tenant, org.bob, {conv: 0}),
    ]


def uncached_refusals(box: Box, org: Org, conv: int) -> list[str]:
    cached = [refusal_of(read) for read in reads(box.engine, org, conv)]
    box.reopen(message_cache_bytes=0)
    assert [refusal_of(read) for read in reads(box.engine, org, conv)] == cached
    return cached


def test_forgetting_a_tenant_drops_its_messages_and_refuses_them_as_the_store_does(
    box: Box, password_hash: str
) -> None:
    acme, globex = box.org("acme", password_hash), box.org("globex", password_hash)
    acme_conv, globex_conv = chat(box.engine, acme, 5), chat(box.engine, globex, 5)
    globex_page = box.engine.page_before(globex.tenant, globex.bob, globex_conv, None, 20)

    box.keyring.forget(acme.tenant)  # what the appliance does for a revoked tenant

    assert not any(entries_of(box.cache, acme.tenant, acme_conv, range(1, 7)))
    assert all(entries_of(box.cache, globex.tenant, globex_conv, range(1, 7)))
    assert box.lookups(lambda: box.engine.page_before(
        globex.tenant, globex.bob, globex_conv, None, 20)) == 1
    assert box.engine.page_before(globex.tenant, globex.bob, globex_conv, None, 20) == globex_page
    messages = uncached_refusals(box, acme, acme_conv)
    assert all("not installed" in m for m in messages)


def test_an_expired_key_refuses_cached_messages_and_frees_them(
    box: Box, password_hash: str
) -> None:
    acme, globex = box.org("acme", password_hash), box.org("globex", password_hash)
    acme_conv, globex_conv = chat(box.engine, acme, 5), chat(box.engine, globex, 5)
    box.install(acme.tenant, 1, expires_at=box.clock.now + 60)
    box.engine.page_before(acme.tenant, acme.bob, acme_conv, None, 20)
    box.clock.now += 60  # no event: the next read finds the key expired

    messages = [refusal_of(read) for read in reads(box.engine, acme, acme_conv)]
    assert all("expired" in m for m in messages)
    assert not any(entries_of(box.cache, acme.tenant, acme_conv, range(1, 7)))
    assert all(entries_of(box.cache, globex.tenant, globex_conv, range(1, 7)))
    assert uncached_refusals(box, acme, acme_conv) == messages

    box.install(acme.tenant, 1)
    assert len(box.engine.messages(acme.tenant, acme_conv, 1, 9)) == 6


def test_an_expired_key_refuses_a_cached_page_even_before_anything_drops_it(
    box: Box, password_hash: str
) -> None:
    """Expiry has no event: the check on read is what refuses, not a drop."""
    org = box.org("acme", password_hash)
    conv = chat(box.engine, org, 5)
    box.install(org.tenant, 1, expires_at=box.clock.now + 1)
    assert all(entries_of(box.cache, org.tenant, conv, range(1, 7)))
    box.clock.now += 1
    assert all(entries_of(box.cache, org.tenant, conv, range(1, 7)))
    assert "expired" in refusal_of(lambda: box.engine.messages(org.tenant, conv, 2, 3))


def test_shredding_an_epoch_drops_and_refuses_only_its_cached_messages(
    box: Box, password_hash: str
) -> None:
    org = box.org("acme", password_hash)
    conv = chat(box.engine, org, 4, "old")
    box.add_epoch(org.tenant)
    box.engine.apply_batch([
        Append(tenant=org.tenant, conv=conv, sender=org.alice, client_msg_id=f"new{i}",
               body=f"new body {i}") for i in range(4)
    ], NOW_MS)
    assert all(entries_of(box.cache, org.tenant, conv, range(1, 10)))
    # A shred takes only messages: accounts and groups move to the current epoch first.
    for table in box.engine.resealed_tables:
        after = b""
        while (after := box.engine.reseal_records(org.tenant, table, after).next_key):
            pass

    box.engine.apply(ShredKeyEpoch(tenant=org.tenant, epoch=1), NOW_MS)

    assert entries_of(box.cache, org.tenant, conv, range(1, 10)) == [False] * 5 + [True] * 4
    assert box.lookups(lambda: box.engine.messages(org.tenant, conv, 6, 9)) == 1
    assert [m.body for m in box.engine.messages(org.tenant, conv, 6, 9)] == [
        f"new body {i}" for i in range(4)
    ]
    assert "shredded" in refusal_of(lambda: box.engine.messages(org.tenant, conv, 5, 9))
    cached = refusal_of(lambda: box.engine.page_after(org.tenant, org.bob, conv, 0, 20))
    box.reopen(message_cache_bytes=0)
    assert refusal_of(lambda: box.engine.page_after(org.tenant, org.bob, conv, 0, 20)) == cached


def test_forgetting_one_epoch_keeps_the_others_cached(box: Box, password_hash: str) -> None:
    org = box.org("acme", password_hash)
    conv = chat(box.engine, org, 2, "old")
    box.add_epoch(org.tenant)
    box.engine.apply(Append(tenant=org.tenant, conv=conv, sender=org.alice,
                            client_msg_id="new", body="new"), NOW_MS)
    box.keyring.forget(org.tenant, 1)
    assert entries_of(box.cache, org.tenant, conv, range(1, 5)) == [False] * 3 + [True]
    assert [m.body for m in box.engine.messages(org.tenant, conv, 4, 4)] == ["new"]
    assert "not installed" in refusal_of(lambda: box.engine.messages(org.tenant, conv, 3, 4))


def test_a_fill_noted_before_a_drop_is_discarded() -> None:
    """A read that opened records with a DEK forgotten meanwhile must not cache them after
    the drop that was meant to remove them."""
    cache = MessageCache(2**20, None)
    key = pack_ids(1, 2, 3)
    entry: CachedMessage = (Message(3, 7, 0, "c", MessageKind.TEXT, "secret"), 20, 1)
    generation = cache.generation
    cache.drop(pack_id(1))
    cache.fill([(key[:16], 3, entry)], generation)
    assert key not in cache and len(cache) == 0
    cache.fill([(key[:16], 3, entry)], cache.generation)
    assert key in cache


def test_a_recall_drops_its_block_and_reads_of_older_snapshots_fill_nothing() -> None:
    """A read whose snapshot began before a recall committed may have opened the recalled
    message as it was: it must not put it back into the cache after the recall dropped it."""
    cache = MessageCache(2**20, None)
    conv_key = pack_ids(1, 2)
    before: CachedMessage = (Message(3, 7, 0, "c", MessageKind.TEXT, "secret"), 20, 0)
    cache.fill_run(conv_key, [(3, before), (4, before)], cache.generation, snapshot_txn=10)
    assert pack_ids(1, 2, 3) in cache

    cache.forget_rewritten([(conv_key, 3, 3)], txn_id=11)  # the recall's commit

    assert pack_ids(1, 2, 3) not in cache and pack_ids(1, 2, 4) in cache
    cache.fill_run(conv_key, [(3, before)], cache.generation, snapshot_txn=10)
    assert pack_ids(1, 2, 3) not in cache
    after: CachedMessage = (Message(3, 7, 0, "c", MessageKind.TEXT, "", recalled_by=5), 20, 0)
    cache.fill_run(conv_key, [(3, after)], cache.generation, snapshot_txn=11)
    assert cache.lookup(conv_key, 3, 3) == [after]
    assert cache.recount() == (len(cache), cache.bytes_used)


def test_closing_the_engine_empties_the_cache_and_unhooks_it_from_the_keyring(
    box: Box, password_hash: str
) -> None:
    org = box.org("acme", password_hash)
    chat(box.engine, org, 3)
    cache = box.cache
    box.engine.close()
    assert len(cache) == 0 and cache.bytes_used == 0
    gone = weakref.ref(cache)
    del cache
    box.engine = Engine(box.path, map_size=MAP_SIZE_BYTES, keyring=box.keyring)
    gc.collect()
    assert gone() is None  # the keyring holds no reference to a closed engine's cache


# -- only committed messages ------------------------------------------------------------------


def test_a_refused_op_in_a_batch_leaves_nothing_in_the_cache(
    box: Box, password_hash: str
) -> None:
    org = box.org("acme", password_hash)
    conv = chat(box.engine, org, 1)
    results = box.engine.apply_batch([
        Append(tenant=org.tenant, conv=conv, sender=org.alice, client_msg_id="ok", body="ok"),
        Append(tenant=org.tenant, conv=conv, sender=org.carol, client_msg_id="no", body="no"),
        Append(tenant=org.tenant, conv=conv, sender=org.bob, client_msg_id="ok2", body="ok2"),
    ], NOW_MS)
    assert isinstance(results[0], Appended) and isinstance(results[2], Appended)
    assert_refusal(results[1], NotFound)  # carol may not see alice and bob's chat
    assert entries_of(box.cache, org.tenant, conv, range(1, 6)) == [True] * 4 + [False]
    assert [m.body for m in box.engine.messages(org.tenant, conv, 3, 9)] == ["ok", "ok2"]


def test_messages_written_by_an_op_refused_half_way_never_reach_the_cache(
    box: Box, password_hash: str
) -> None:
    """An AddMembers writes its system message, then seals member records; with the key
    expiring in between, its nested transaction vanishes, and its message must not be cached
    (the next op's message takes the same seq)."""
    org = box.org("acme", password_hash)
    conv = chat(box.engine, org, 1)
    op = AddMembers(tenant=org.tenant, actor=org.alice, conv=conv, users=(org.carol, org.dave))
    refused = 0
    for budget in range(1, 40):
        box.clock.now = 1_000.0
        box.install(org.tenant, 1, expires_at=box.clock.now + budget)
        box.clock.step = 1.0  # every key lookup a second later than the one before
        (result,) = box.engine.apply_batch([op], NOW_MS)
        box.clock.step = 0.0
        box.install(org.tenant, 1)
        if not isinstance(result, HeraldError):
            break
        refused += 1
        assert_refusal(result, KeyUnavailable)
        assert not any(entries_of(box.cache, org.tenant, conv, range(3, 6)))
    assert refused >= 1
    assert entries_of(box.cache, org.tenant, conv, range(1, 5)) == [True] * 3 + [False]
    assert box.engine.messages(org.tenant, conv, 3, 3)[0].kind is MessageKind.SYSTEM


def test_an_aborted_batch_leaves_nothing_in_the_cache(engine: Engine, org: Org) -> None:
    conv = chat(engine, org, 1)
    cache = engine.message_cache
    assert cache is not None
    before = len(cache)
    with pytest.raises(TypeError):
        engine.apply_batch([
            Append(tenant=org.tenant, conv=conv, sender=org.alice, client_msg_id="x", body="x"),
            "not an op",  # type: ignore[list-item]
        ], NOW_MS)
    assert len(cache) == before and pack_ids(org.tenant, conv, 3) not in cache
    assert engine.messages(org.tenant, conv, 1, 9)[-1].seq == 2


# -- the bound --------------------------------------------------------------------------------


def test_the_cache_keeps_to_its_byte_bound_least_recently_used_out_first(
    tmp_path: Path, password_hash: str
) -> None:
    bound = 20 * (ENTRY_OVERHEAD_BYTES + 60)
    eng = Engine(tmp_path / "s", map_size=MAP_SIZE_BYTES, message_cache_bytes=bound)
    try:
        org = create_org(eng, "acme")
        conv = chat(eng, org, 100)
        cache = eng.message_cache
        assert cache is not None
        assert 10 <= len(cache) <= bound // ENTRY_OVERHEAD_BYTES and cache.bytes_used <= bound
        assert all(entries_of(cache, org.tenant, conv, range(92, 102)))  # the newest stayed
        eng.messages(org.tenant, conv, 1, 3)
        eng.messages(org.tenant, conv, 30, 60)  # more than it holds: the last read stay
        assert cache.bytes_used <= bound
        assert all(entries_of(cache, org.tenant, conv, range(50, 61)))
        assert not any(entries_of(cache, org.tenant, conv, range(1, 4)))  # used before

        huge = eng.apply(Append(tenant=org.tenant, conv=conv, sender=org.alice,
                                client_msg_id="huge", body="h" * bound), NOW_MS)
        assert pack_ids(org.tenant, conv, huge.seq) not in cache  # bigger than the bound
        assert eng.messages(org.tenant, conv, huge.seq, huge.seq)[0].body == "h" * bound
        eng.messages(org.tenant, conv, huge.seq - 5, huge.seq)  # a run holding the huge one
        assert pack_ids(org.tenant, conv, huge.seq - 1) in cache
        assert pack_ids(org.tenant, conv, huge.seq) not in cache
        assert cache.recount() == (len(cache), cache.bytes_used)
    finally:
        eng.close()
        shutil.rmtree(tmp_path / "s", ignore_errors=True)


def test_the_cache_can_be_disabled_and_refuses_a_negative_size(tmp_path: Path) -> None:
    eng = Engine(tmp_path / "a", message_cache_bytes=0)
    assert eng.message_cache is None
    eng.close()
    with pytest.raises(Invalid):
        Engine(tmp_path / "b", message_cache_bytes=-1)


def test_expired_plaintexts_can_be_freed_without_a_read(box: Box, password_hash: str) -> None:
    acme, globex = box.org("acme", password_hash), box.org("globex", password_hash)
    acme_conv, globex_conv = chat(box.engine, acme, 3), chat(box.engine, globex, 3)
    box.install(acme.tenant, 1, expires_at=box.clock.now + 5)
    assert box.engine.drop_unreadable_messages() == 0
    box.clock.now += 5
    assert box.engine.drop_unreadable_messages() == 4
    assert not any(entries_of(box.cache, acme.tenant, acme_conv, range(1, 5)))
    assert all(entries_of(box.cache, globex.tenant, globex_conv, range(1, 5)))


def test_the_least_recently_read_conversation_goes_first(tmp_path: Path) -> None:
    eng = Engine(tmp_path / "s", map_size=MAP_SIZE_BYTES, message_cache_bytes=0)
    try:
        org = create_org(eng, "acme")
        a, b, c = (chat(eng, org, 9, prefix) for prefix in "abc")
    finally:
        eng.close()
    sizes = 10 * (ENTRY_OVERHEAD_BYTES + 40)
    eng = Engine(tmp_path / "s", map_size=MAP_SIZE_BYTES, message_cache_bytes=2 * sizes)
    try:
        cache = eng.message_cache
        assert cache is not None
        eng.messages(org.tenant, a, 1, 10)
        eng.messages(org.tenant, b, 1, 10)
        eng.messages(org.tenant, a, 1, 10)  # a is now the more recently used
        assert len(cache) == 20
        eng.messages(org.tenant, c, 1, 10)
        assert all(entries_of(cache, org.tenant, a, range(1, 11)))
        assert not any(entries_of(cache, org.tenant, b, range(1, 11)))
        assert all(entries_of(cache, org.tenant, c, range(1, 11)))
        assert cache.bytes_used <= 2 * sizes
        assert cache.recount() == (len(cache), cache.bytes_used)
    finally:
        eng.close()


def test_reads_in_threads_while_keys_come_and_go_see_the_page_or_a_refusal(
    box: Box, password_hash: str
) -> None:
    """The engine's callers run it in several threads and forget keys from another: every
    read answers the right page or `key_unavailable`, and the counts stay true. A smoke test:
    with the cache's lock taken out it failed about one run in four, not every time."""
    org = box.org("acme", password_hash)
    convs = [chat(box.engine, org, 60, prefix) for prefix in "abc"]
    box.reopen(message_cache_bytes=70 * (ENTRY_OVERHEAD_BYTES + 60))  # evicts as it goes
    expected = {c: box.engine.page_before(org.tenant, org.bob, c, None, 30) for c in convs}
    wrong: list[object] = []

    def reader(start: int) -> None:
        for i in range(1000):
            conv = convs[(start + i) % 3]
            try:
                page = box.engine.page_before(org.tenant, org.bob, conv, None, 30)
            except KeyUnavailable:
                continue
            if page != expected[conv]:
                wrong.append(page)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(3)]
    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave every few bytecodes, not every 5 ms
    try:
        for thread in threads:
            thread.start()
        for _ in range(1000):
            box.keyring.forget(org.tenant)
            box.install(org.tenant, 1)
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switching)
    assert wrong == []
    assert box.cache.recount() == (len(box.cache), box.cache.bytes_used)
    assert box.cache.bytes_used <= box.cache.max_bytes
