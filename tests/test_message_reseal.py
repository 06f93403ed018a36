"""The background re-encrypt's task (appliance/gateway/message_reseal.py) on a real sealed
engine (LMDB in tmp_path, real keyring), on Trio's virtual clock: engine calls run inline."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import _HASH, NOW_MS

from appliance.gateway.message_reseal import FIRST_RETRY_S, MessageResealer
from engine import (
    AddKeyEpoch,
    Append,
    CreateGroup,
    CreateTenant,
    CreateUser,
    Engine,
    Keyring,
)


class SealedStore:
    def __init__(self, path: Path) -> None:
        self.keyring = Keyring(name_key=bytes(range(32)))
        self.engine = Engine(path, map_size=64 * 2**20, keyring=self.keyring)
        self.deks: dict[tuple[int, int], bytes] = {}

    def add_epoch(self, tenant: int) -> int:
        epoch = 1 + max((e for t, e in self.deks if t == tenant), default=0)
        self.deks[tenant, epoch] = dek = os.urandom(32)
        self.keyring.install(tenant, epoch, dek)
        self.engine.apply(AddKeyEpoch(tenant=tenant, wrapped_dek=b"w", key_id="ek"), NOW_MS)
        return epoch

    def tenant_with_messages(self, name: str, groups: int = 3) -> int:
        """A tenant at epoch 1 with `groups` groups of 5 messages: a block or more each."""
        engine = self.engine
        tenant = engine.apply(CreateTenant(name=name), NOW_MS).tenant  # type: ignore[union-attr]
        self.add_epoch(tenant)
        user = engine.apply(CreateUser(tenant=tenant, login="alice", display_name="Alice",
                                       password_hash=_HASH), NOW_MS).user  # type: ignore[union-attr]
        for g in range(groups):
            conv = engine.apply(CreateGroup(tenant=tenant, creator=user, title=f"g{g}"),
                                NOW_MS).conv  # type: ignore[union-attr]
            engine.apply_batch([Append(tenant=tenant, conv=conv, sender=user,
                                       client_msg_id=f"m{g}-{i}", body=f"message {i}")
                                for i in range(5)], NOW_MS)
        return tenant

    def pending(self, tenant: int) -> int:
        return self.engine.reseal_pending(tenant, "messages")[0]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SealedStore]:
    opened = SealedStore(tmp_path / "store")
    yield opened
    opened.engine.close()


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    await trio.lowlevel.checkpoint()
    return fn(*args)


def resealer(store: SealedStore) -> MessageResealer:
    return MessageResealer(store.engine, batch_blocks=1, pause_s=0.05, check_interval_s=5.0,
                           run_sync=inline)


async def wait_until(condition: Callable[[], bool]) -> None:
    while not condition():
        await trio.sleep(1)


async def test_blocks_under_older_epochs_are_resealed_in_batches_and_new_rotations_are_seen(
    store: SealedStore, autojump_clock: trio.abc.Clock,
) -> None:
    tenant = store.tenant_with_messages("acme")
    assert store.pending(tenant) == 0
    store.add_epoch(tenant)
    pending, total = store.engine.reseal_pending(tenant, "messages")
    assert pending == total >= 3
    async with trio.open_nursery() as nursery:
        nursery.start_soon(resealer(store).run)
        await wait_until(lambda: store.pending(tenant) == 0)
        store.add_epoch(tenant)  # a rotation while it runs: seen at its next check
        assert store.pending(tenant) == total
        await wait_until(lambda: store.pending(tenant) == 0)
        nursery.cancel_scope.cancel()
    # Every block now opens under the current epoch alone.
    store.keyring.forget(tenant, 1)
    store.keyring.forget(tenant, 2)
    conv_messages = store.engine.messages(tenant, 2, 1, 6)
    assert [m.body for m in conv_messages][1:] == [f"message {i}" for i in range(5)]


async def test_a_tenant_without_its_old_key_is_told_once_and_retried_while_others_go_on(
    store: SealedStore, autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture,
) -> None:
    locked = store.tenant_with_messages("locked")
    other = store.tenant_with_messages("other")
    store.add_epoch(locked)
    store.add_epoch(other)
    store.keyring.forget(locked, 1)  # e.g. the escrow did not answer for that epoch
    caplog.set_level(logging.INFO, logger="herald.reseal")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(resealer(store).run)
        await wait_until(lambda: store.pending(other) == 0)
        assert store.pending(locked) > 0
        await trio.sleep(FIRST_RETRY_S * 4)  # two retries or more, all refused
        told = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(told) == 1, [r.getMessage() for r in told]
        assert "tenant=1" in told[0].getMessage()
        assert "herald keys status" in told[0].getMessage()
        store.keyring.install(locked, 1, store.deks[locked, 1])
        await wait_until(lambda: store.pending(locked) == 0)
        nursery.cancel_scope.cancel()
    assert any("tenant=1 message blocks can be re-sealed again" in r.getMessage()
               for r in caplog.records)
    for record in caplog.records:  # ids and counts, never key material
        for dek in store.deks.values():
            assert dek.hex() not in record.getMessage()
