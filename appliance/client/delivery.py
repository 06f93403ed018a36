"""Delivery: every message once, in seq order per conversation, whatever the pushes did.

The design's push-pull rule: a push is an optimisation, the seq is the truth. The connection's
reader hands every message it hears of here (`hint`: a push, or the ack of the client's own send)
without waiting. One task, `run`, is the only one that delivers: a message that is next in its
conversation goes to the application; one that skips seqs (a gap) is held for `gap_wait_s` in
case the gap fills by itself, then the missing range is pulled with `history after=last` (paged);
one at or below the cursor is a duplicate and dropped. Each new session gets a `sync` with the
cursors, and whatever a conversation reports `more` of is pulled the same way.

Two bounded queues: hints not yet sequenced (`max_pending_pushes`; past it hints are dropped and
a sync replaces them) and messages delivered but not yet taken by the application
(`message_buffer`; when it is full, delivery waits, and the hints queue takes the strain).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from appliance.client.cursors import Cursors, Held, Verdict
from appliance.client.errors import (
    CertificateRejected,
    ClientClosed,
    ClientError,
    LoginFailed,
    ServerUnreachable,
)
from appliance.client.messages import Message
from appliance.client.options import ClientOptions, ClientStats
from appliance.protocol.codes import ErrorCode
from appliance.protocol.frames import (
    ClientFrame,
    ConvsData,
    ConvsRequest,
    HistoryData,
    SyncData,
    SyncRequest,
    WireMessage,
)

__all__ = ["Delivery", "Source"]

log = logging.getLogger("herald.client")


class Source(Protocol):
    """The reads delivery needs; each waits for a connection and is repeated on the next one
    when one breaks. They raise `ClientError` for a refusal, and `ClientClosed`,
    `ServerUnreachable` or `LoginFailed` once the client has stopped."""

    async def history(
        self, conv: int, *, before: int | None = None, after: int | None = None, limit: int = 50
    ) -> HistoryData: ...

    async def request_counted(self, frame: ClientFrame) -> tuple[Any, int]:
        """`request`, and the generation of the session that answered."""
        ...


@dataclass(frozen=True, slots=True)
class _Resync:
    generation: int  # the session that asks for it


_Hint = tuple[int, WireMessage] | _Resync


class Delivery:
    def __init__(
        self, source: Source, cursors: Cursors, options: ClientOptions, stats: ClientStats, *,
        note_read: Callable[[int, int], None], on_established: Callable[[], None],
        wait_for_keys: Callable[[ClientError], Awaitable[None]],
    ) -> None:
        """`wait_for_keys(refusal)` says that the catch-up was refused with `key_unavailable`
        and returns when it is time to try again."""
        self._source = source
        self._cursors = cursors
        self._options = options
        self._stats = stats
        self._note_read = note_read
        self._on_established = on_established
        self._wait_for_keys = wait_for_keys
        self._hints_in, self._hints_out = trio.open_memory_channel[_Hint](
            options.max_pending_pushes)
        self._delivered_in, self.delivered = trio.open_memory_channel[Message](
            options.message_buffer)
        self._held: Held[WireMessage] = Held()
        self._resync_due = True  # the first duty: establish a fresh client's cursors, or sync
        self._overflowed = False
        self._synced_generation = 0

    # -- called by the connection's reader: never blocks ---------------------------------------

    def hint(self, conv: int, wire: WireMessage) -> None:
        """Message `wire` of `conv` exists (a push, or the ack of an own send)."""
        self._put((conv, wire))

    def session_started(self, generation: int) -> None:
        """A new session is logged in: catch up on what the last one missed."""
        self._put(_Resync(generation))

    def close(self) -> None:
        """Finish what is queued, then end the message stream."""
        self._hints_in.close()

    def _put(self, hint: _Hint) -> None:
        try:
            self._hints_in.send_nowait(hint)
        except trio.WouldBlock:
            self._overflowed = True
            self._stats.overflows += 1
        except trio.ClosedResourceError:
            pass  # the client has stopped

    # -- the sequencer ------------------------------------------------------------------------

    async def run(self) -> None:
        """Sequence and deliver until the client stops or closes; then end the message stream.
        Raises nothing but bugs."""
        try:
            while True:
                if self._overflowed:
                    self._overflowed = False
                    self._resync_due = True
                if self._resync_due:
                    self._resync_due = False
                    try:
                        await self._catch_up()
                    except ClientError as refused:
                        if refused.code != ErrorCode.KEY_UNAVAILABLE:
                            raise
                        # Logged in, but the tenant's keys lapsed (its escrow is down):
                        # catch up once the server can read the messages again.
                        await self._wait_for_keys(refused)
                        self._resync_due = True
                        continue
                    for conv in self._held.conversations():
                        await self._release(conv)
                    continue
                due = self._held.next_deadline()
                hint: _Hint | None = None
                with trio.move_on_at(math.inf if due is None else due[1]):
                    try:
                        hint = await self._hints_out.receive()
                    except trio.EndOfChannel:
                        return
                if hint is None:
                    assert due is not None
                    await self._pull_held(due[0])
                elif isinstance(hint, _Resync):
                    if hint.generation > self._synced_generation:
                        self._resync_due = True
                else:
                    await self._accept(*hint)
        except (ClientClosed, ServerUnreachable, LoginFailed, CertificateRejected):
            return
        finally:
            self._delivered_in.close()

    async def _catch_up(self) -> None:
        """Establish a fresh client's cursors at the current heads, or sync: deliver whatever
        was missed."""
        if not self._cursors.established:
            convs: ConvsData
            convs, generation = await self._source.request_counted(ConvsRequest(id=0))
            for summary in convs.convs:
                self._note_read(summary.conv, summary.read)
            self._cursors.establish((c.conv, c.head) for c in convs.convs)
            self._synced(generation)
            self._on_established()
            return
        sync: SyncData
        sync, generation = await self._source.request_counted(SyncRequest(
            id=0, cursors=self._cursors.snapshot(), limit=self._options.sync_limit))
        self._synced(generation)
        self._stats.syncs += 1
        for conv in sync.removed:
            self._cursors.forget(conv)
            self._held.release(conv, None)
        for entry in sync.convs:
            self._note_read(entry.conv, entry.read)
            self._cursors.start(entry.conv, entry.head)
            # `msgs` are the newest missing ones; `more`: older missing ones were left out.
            first = entry.msgs[0].seq if entry.msgs else entry.head + 1
            await self._pull(entry.conv, first - 1)
            for wire in entry.msgs:
                await self._deliver_if_next(entry.conv, wire)

    def _synced(self, generation: int) -> None:
        """A catch-up was answered by session `generation`: its own resync is not needed."""
        self._synced_generation = max(self._synced_generation, generation)

    async def _accept(self, conv: int, wire: WireMessage) -> None:
        verdict = self._cursors.classify(conv, wire.seq)
        if verdict is Verdict.DUPLICATE:
            self._stats.duplicates += 1
            return
        if verdict is Verdict.GAP:
            wait_s = self._options.gap_wait_s
            if wait_s > 0 and self._held.count < self._options.max_pending_pushes:
                self._held.add(conv, wire.seq, wire, trio.current_time() + wait_s)
                return
            await self._pull(conv, wire.seq - 1)
        if await self._deliver_if_next(conv, wire):
            await self._release(conv)

    async def _pull_held(self, conv: int) -> None:
        """A gap of `conv` did not fill by itself in time: pull it, deliver what was held."""
        lowest = self._held.lowest(conv)
        if lowest is not None:
            await self._pull(conv, lowest - 1)
        await self._release(conv)
        self._held.release(conv, None)  # whatever still does not fit: the next sync brings it

    async def _release(self, conv: int) -> None:
        """Deliver the held messages of `conv` that are next now; forget those delivered."""
        while (last := self._cursors.last(conv)) is not None:
            wire = self._held.take(conv, last + 1)
            if wire is None:
                break
            await self._deliver_if_next(conv, wire)
        self._held.release(conv, self._cursors.last(conv))

    async def _pull(self, conv: int, upto: int) -> None:
        """Deliver `conv`'s messages after its cursor up to at least `upto`, page by page."""
        while (last := self._cursors.last(conv)) is not None and last < upto:
            self._stats.pulls += 1
            try:
                page = await self._source.history(conv, after=last,
                                                  limit=self._options.page_limit)
            except ClientError as exc:  # e.g. no longer a member: nothing more to pull
                log.warning("cannot pull conversation %s after %s: %s", conv, last, exc)
                return
            progressed = False
            for wire in page.msgs:
                progressed |= await self._deliver_if_next(conv, wire)
            if not page.more or not progressed:
                return

    async def _deliver_if_next(self, conv: int, wire: WireMessage) -> bool:
        if not self._cursors.advance(conv, wire.seq):
            return False
        self._stats.delivered += 1
        await self._delivered_in.send(Message.from_wire(conv, wire))
        return True
