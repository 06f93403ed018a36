"""The writer's pipeline over a real engine: a big enough batch commits while the previous
batch's fanout is still being sent, but is acked, planned and fanned out only after that
fanout ends; a smaller batch waits for the fanout to end.

`on_committed` here is a scripted stand-in for the hub that records what the writer asks of it
and holds a fanout open until the test releases it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio
import trio.testing
from conftest import NOW_MS, Org

from appliance.gateway.writer import Committed, Writer
from engine import Append, Appended, CreateGroup, Engine


def _append(org: Org, conv: int, body: str) -> Append:
    return Append(tenant=org.tenant, conv=conv, sender=org.alice, client_msg_id=body, body=body)


async def test_a_big_batch_commits_during_a_fanout_and_is_acked_and_planned_after_it(
    engine: Engine, org: Org,
) -> None:
    conv = engine.apply(CreateGroup(tenant=org.tenant, creator=org.alice, title="team",
                                    members=(org.bob,)), NOW_MS).conv  # type: ignore[union-attr]
    log: list[tuple[str, int]] = []
    release = trio.Event()
    first_fanout_started = trio.Event()

    def on_committed(batch: Sequence[Committed]) -> Callable[[], Awaitable[None]]:
        seqs = [entry.outcome.seq for entry in batch]  # type: ignore[union-attr]
        log.append(("planned", seqs[0]))

        async def send() -> None:
            log.append(("fanout starts", seqs[0]))
            if seqs[0] == 2:
                first_fanout_started.set()
                await release.wait()
            log.append(("fanout ends", seqs[0]))
        return send

    def acked(outcome: object) -> None:
        assert isinstance(outcome, Appended)
        log.append(("acked", outcome.seq))

    writer = Writer(engine, on_committed=on_committed, clock_ms=lambda: NOW_MS,
                    overlap_min_batch=1)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            try:  # the writer shields its fanouts: never leave one held open
                writer.submit(_append(org, conv, "first"), acked)
                await first_fanout_started.wait()
                writer.submit(_append(org, conv, "second"), acked)
                # The second commit completes while the first fanout is held open...
                while not engine.messages(org.tenant, conv, 3, 3):
                    await trio.sleep(0.001)
                await trio.testing.wait_all_tasks_blocked()
                # ...but is neither acked nor planned before that fanout ends.
                assert log == [("acked", 2), ("planned", 2), ("fanout starts", 2)]
            finally:
                release.set()
                writer.close()
    assert log == [
        ("acked", 2), ("planned", 2), ("fanout starts", 2), ("fanout ends", 2),
        ("acked", 3), ("planned", 3), ("fanout starts", 3), ("fanout ends", 3),
    ]
    assert (writer.batches, writer.ops) == (2, 2)


async def test_a_small_batch_waits_for_the_fanout_before_it_commits(
    engine: Engine, org: Org,
) -> None:
    conv = engine.apply(CreateGroup(tenant=org.tenant, creator=org.alice, title="team",
                                    members=(org.bob,)), NOW_MS).conv  # type: ignore[union-attr]
    release = trio.Event()
    fanouts: list[int] = []

    def on_committed(batch: Sequence[Committed]) -> Callable[[], Awaitable[None]]:
        async def send() -> None:
            fanouts.append(len(batch))
            if len(fanouts) == 1:
                await release.wait()
        return send

    writer = Writer(engine, on_committed=on_committed, clock_ms=lambda: NOW_MS,
                    overlap_min_batch=3)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            try:
                writer.submit(_append(org, conv, "first"), lambda outcome: None)
                while not fanouts:
                    await trio.sleep(0.001)
                writer.submit(_append(org, conv, "second"), lambda outcome: None)
                writer.submit(_append(org, conv, "third"), lambda outcome: None)
                await trio.testing.wait_all_tasks_blocked()
                assert (writer.pending, writer.batches) == (2, 1)  # not taken: 2 < 3
                writer.submit(_append(org, conv, "fourth"), lambda outcome: None)
                await trio.testing.wait_all_tasks_blocked()
                while writer.pending:  # 3: taken, and committed meanwhile
                    await trio.sleep(0.001)
                assert fanouts == [1]
            finally:
                release.set()
                writer.close()
    assert fanouts == [1, 3] and (writer.batches, writer.ops) == (2, 4)


async def test_closing_waits_for_the_last_fanout(engine: Engine, org: Org) -> None:
    conv = engine.apply(CreateGroup(tenant=org.tenant, creator=org.alice, title="team",
                                    members=(org.bob,)), NOW_MS).conv  # type: ignore[union-attr]
    release = trio.Event()
    sent: list[int] = []

    def on_committed(batch: Sequence[Committed]) -> Callable[[], Awaitable[None]]:
        async def send() -> None:
            await release.wait()
            sent.append(len(batch))
        return send

    writer = Writer(engine, on_committed=on_committed, clock_ms=lambda: NOW_MS)
    returned = trio.Event()

    async def run() -> None:
        await writer.run()
        returned.set()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            try:
                for i in range(5):
                    writer.submit(_append(org, conv, f"m{i}"), lambda outcome: None)
                writer.close()
                while writer.batches == 0:
                    await trio.sleep(0.001)
                await trio.testing.wait_all_tasks_blocked()
                assert not returned.is_set() and sent == []
            finally:
                release.set()
    assert returned.is_set() and sent == [5]
