"""The hub's fanout on a sealed store whose conversation was just re-sealed under an epoch
this server has not installed yet (`herald keys rotate` in another process, before the
server's next key refresh): the fanout uses the cached members or skips the push, and never
raises out of `on_committed` (which would end the writer, and the server)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import _HASH, NOW_MS

from appliance.gateway.hub import Hub
from appliance.gateway.outbox import Flusher, Outbox
from appliance.gateway.writer import Committed
from engine import (
    AddKeyEpoch,
    Append,
    CreateGroup,
    CreateTenant,
    CreateUser,
    Engine,
    Keyring,
)


@dataclass(eq=False)
class Device:
    tenant: int
    user: int
    outbox: Outbox

    def evict_slow(self) -> None:
        raise AssertionError("nothing here is slow")


@dataclass
class World:
    engine: Engine
    keyring: Keyring
    hub: Hub
    tenant: int
    alice: int
    conv: int

    def append(self, body: str) -> list[Committed]:
        op = Append(tenant=self.tenant, conv=self.conv, sender=self.alice,
                    client_msg_id=body, body=body)
        (outcome,) = self.engine.apply_batch([op], NOW_MS)
        return [Committed(op, None, outcome, lambda _: None)]

    def rotated_elsewhere(self) -> None:
        """What `herald keys rotate` does from another process: a new epoch, the
        conversations and members re-sealed under it; this server lacks its DEK."""
        self.keyring.install(self.tenant, 2, os.urandom(32))
        self.engine.apply(AddKeyEpoch(tenant=self.tenant, wrapped_dek=b"w", key_id="e2"), NOW_MS)
        for table in self.engine.resealed_tables:
            assert not self.engine.reseal_records(self.tenant, table, b"", 10_000).next_key
        self.keyring.forget(self.tenant, 2)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    keyring = Keyring(name_key=bytes(range(32)))
    engine = Engine(tmp_path / "store", map_size=64 * 2**20, keyring=keyring)
    tenant = engine.apply(CreateTenant(name="acme"), NOW_MS).tenant  # type: ignore[union-attr]
    keyring.install(tenant, 1, os.urandom(32))
    engine.apply(AddKeyEpoch(tenant=tenant, wrapped_dek=b"w", key_id="e1"), NOW_MS)
    alice, bob = (engine.apply(CreateUser(tenant=tenant, login=login, display_name=login,
                                          password_hash=_HASH), NOW_MS).user  # type: ignore[union-attr]
                  for login in ("alice", "bob"))
    conv = engine.apply(CreateGroup(tenant=tenant, creator=alice, title="team",
                                    members=(bob,)), NOW_MS).conv  # type: ignore[union-attr]
    near, far = socket.socketpair()
    flusher = Flusher()
    hub = Hub(engine, flusher)
    hub.register(Device(tenant, bob, Outbox(near.fileno(), 2**20, flusher)))
    yield World(engine, keyring, hub, tenant, alice, conv)
    engine.close()
    near.close()
    far.close()


async def test_with_the_members_cached_the_push_still_goes_out(world: World) -> None:
    first = world.hub.on_committed(world.append("before"))
    assert first is not None
    await first()
    delivered = world.hub.deliveries
    batch = world.append("just before the rotation")
    world.rotated_elsewhere()
    send = world.hub.on_committed(batch)
    assert send is not None
    await send()
    assert world.hub.deliveries == delivered + 1


async def test_without_the_members_cached_the_push_is_skipped_not_raised(world: World) -> None:
    batch = world.append("just before the rotation")
    world.rotated_elsewhere()
    assert world.hub.on_committed(batch) is None
