"""The hub: who is online, and fanout of committed changes to them.

Fanout works per commit, not per message. `on_committed` turns a committed batch into a plan:
per conversation, the frames the batch adds (each encoded once: JSON, then the WebSocket
header) joined into one byte string, and the connections that get it. A connection that sent
some of those messages gets its own join without them (the server never pushes a message
back to the connection that sent it; the sender's other devices do get it). Sending the plan
pushes ONE join per recipient per conversation, with no `await` per delivery, and flushes the
touched outboxes together: a recipient gets a commit's frames of a conversation in one `writev`.

Planning happens right after the commit and before the writer starts the next one, so the
recipients are the members as of that commit. Member lists are cached per conversation and
revalidated against the stored member-list version once per conversation per batch, so
changes made by another process (the `herald` CLI) are seen too.

A large fanout is sent in slices of `FANOUT_SLICE_PUSHES` pushes: flush, then a checkpoint,
so the event loop reads requests in between. The writer sends one plan at a time, in
commit order, so a later commit's pushes never overtake an earlier one's on any connection.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from appliance.gateway.outbox import Flusher, Outbox
from appliance.gateway.wire import wire_message
from appliance.gateway.writer import Committed, SendFanout
from appliance.protocol.frames import MsgPush, ReadPush, WireMessage, encode_frame
from appliance.protocol.websocket import encode_text_frame
from engine import (
    Append,
    Appended,
    ConversationOpened,
    CursorMoved,
    Engine,
    HeraldError,
    KeyUnavailable,
    MarkRead,
    MembershipChanged,
)

__all__ = ["FANOUT_SLICE_PUSHES", "Hub", "Peer"]

log = logging.getLogger("herald.hub")

# Pushes (one join into one outbox) between two flushes and checkpoints of a large fanout: a
# slice then holds the event loop for a few milliseconds (PERFORMANCE figures: ~0.5 us a push,
# ~6 us plus 0.25 us a frame per writev).
FANOUT_SLICE_PUSHES = 512


class Peer(Protocol):
    """What the hub needs of a connection."""

    tenant: int
    user: int
    outbox: Outbox

    def evict_slow(self) -> None: ...


@dataclass(slots=True)
class _Frame:
    """One pushed frame and who may see it."""

    data: bytes  # complete WebSocket bytes
    origin: Peer | None  # the connection that asked for it gets no copy
    also: tuple[int, ...] = ()  # non-members who must get it too (just removed)
    reader: int = 0  # nonzero: only this user's connections get it (their read position)


@dataclass(slots=True)
class _Delivery:
    """One conversation's share of a commit: `common` to every target not in `special`."""

    targets: list[Peer]
    common: bytes
    common_frames: int
    special: dict[Peer, tuple[bytes, int]]


class Hub:
    def __init__(self, engine: Engine, flusher: Flusher) -> None:
        self._engine = engine
        self._flusher = flusher
        self._online: dict[int, dict[int, set[Peer]]] = {}  # tenant -> user -> connections
        self._members: dict[tuple[int, int], tuple[int, frozenset[int]]] = {}
        self.deliveries = 0  # frames handed to outboxes (a join of n frames counts n)
        self.pushes = 0  # joins handed to outboxes
        self.evictions = 0
        self.slice_pushes = FANOUT_SLICE_PUSHES

    # -- presence -----------------------------------------------------------------------------

    def register(self, peer: Peer) -> None:
        self._online.setdefault(peer.tenant, {}).setdefault(peer.user, set()).add(peer)

    def unregister(self, peer: Peer) -> None:
        users = self._online.get(peer.tenant)
        if users is None:
            return
        peers = users.get(peer.user)
        if peers is not None:
            peers.discard(peer)
            if not peers:
                del users[peer.user]
        if not users:
            del self._online[peer.tenant]

    def connections(self) -> list[Peer]:
        return [p for users in self._online.values() for peers in users.values() for p in peers]

    def connections_of(self, tenant: int, user: int) -> set[Peer]:
        return self._online.get(tenant, {}).get(user, set())

    @property
    def online_users(self) -> int:
        return sum(len(users) for users in self._online.values())

    # -- fanout -------------------------------------------------------------------------------

    def members(self, tenant: int, conv: int) -> frozenset[int]:
        """The members of `conv` now (cached; revalidated by the stored member-list version).

        Raises `KeyUnavailable` when the conversation cannot be opened and is not cached."""
        cached = self._members.get((tenant, conv))
        try:
            version = self._engine.conversation_version(tenant, conv)
        except KeyUnavailable:
            # `herald keys rotate` in another process re-seals conversations under an epoch
            # this server installs at its next key refresh (within 5 s): the cached members
            # are as good as the last commit's until then.
            if cached is None:
                raise
            return cached[1]
        if cached is not None and cached[0] == version:
            return cached[1]
        members = frozenset(self._engine.member_ids(tenant, conv))
        self._members[(tenant, conv)] = (version, members)
        return members

    def on_committed(self, batch: Sequence[Committed]) -> SendFanout | None:
        """Flush the acks the writer just queued, then plan the fanout of what `batch` changed.

        Returns the coroutine function that sends the plan (None when nobody is to be told).
        The writer calls this before it starts the next commit, and runs one of these at a
        time. Raises nothing for what a batch holds: refused operations are skipped.
        """
        self._flusher.flush_all()  # senders refill their window while the fanout runs
        frames = self._frames(batch)
        plan = [
            delivery for (tenant, conv), conv_frames in frames.items()
            if (delivery := self._resolve(tenant, conv, conv_frames)) is not None
        ]
        if not plan:
            return None
        return lambda: self._send(plan)

    def _frames(self, batch: Sequence[Committed]) -> dict[tuple[int, int], list[_Frame]]:
        """The frames `batch` adds, per conversation, in commit order."""
        frames: dict[tuple[int, int], list[_Frame]] = {}
        for entry in batch:
            outcome = entry.outcome
            if isinstance(outcome, HeraldError):
                continue
            op = entry.op
            if isinstance(outcome, Appended):
                if not outcome.duplicate and isinstance(op, Append):
                    message = WireMessage(
                        seq=outcome.seq, sender=op.sender, ts=outcome.ts, kind=op.kind.value,
                        body=op.body, cmid=op.client_msg_id, mentions=list(op.mentions),
                        ref=op.ref,
                    )
                    data = encode_text_frame(encode_frame(MsgPush(outcome.conv, message)))
                    frames.setdefault((op.tenant, outcome.conv), []).append(
                        _Frame(data, entry.origin))
            elif isinstance(outcome, MembershipChanged):
                self._stored(frames, op.tenant, outcome.conv, outcome.seq, outcome.users)  # type: ignore[union-attr]
            elif isinstance(outcome, ConversationOpened):
                if outcome.created:
                    self._stored(frames, op.tenant, outcome.conv, 1, ())  # type: ignore[union-attr]
            elif isinstance(outcome, CursorMoved) and isinstance(op, MarkRead):
                data = encode_text_frame(encode_frame(ReadPush(outcome.conv, outcome.read)))
                frames.setdefault((op.tenant, outcome.conv), []).append(
                    _Frame(data, entry.origin, reader=op.user))
        return frames

    def _stored(
        self, frames: dict[tuple[int, int], list[_Frame]], tenant: int, conv: int, seq: int,
        also: Iterable[int],
    ) -> None:
        """A system message the engine wrote (membership, creation), read back to push it."""
        try:
            messages = self._engine.messages(tenant, conv, seq, seq)
        except KeyUnavailable as exc:  # as in _resolve: synced later, never a crash
            log.warning("tenant=%s conv=%s push of seq %s skipped: %s", tenant, conv, seq,
                        exc.message)
            return
        for message in messages:
            data = encode_text_frame(encode_frame(MsgPush(conv, wire_message(message))))
            frames.setdefault((tenant, conv), []).append(_Frame(data, None, tuple(also)))

    def _resolve(self, tenant: int, conv: int, frames: list[_Frame]) -> _Delivery | None:
        """Who gets which join of `frames`: the online members (as of now, once per batch),
        the `also` and `reader` users of single frames, never a frame's own origin."""
        online = self._online.get(tenant)
        if not online:
            return None
        to_members = [frame for frame in frames if not frame.reader]
        try:
            members = self.members(tenant, conv) if to_members else frozenset()
        except KeyUnavailable as exc:
            # Not pushed: the members get it at their next sync. A failed plan must not end
            # the writer (and with it the server).
            log.warning("tenant=%s conv=%s fanout skipped: %s", tenant, conv, exc.message)
            return None
        targets: list[Peer] = []
        if len(online) < len(members):
            for user, peers in online.items():
                if user in members:
                    targets.extend(peers)
        else:
            for user in members:
                if user in online:
                    targets.extend(online[user])
        # Users one frame names (removed members, a reader's other devices) and the sending
        # connections get a join of their own; everyone else gets the common one.
        named = {frame.reader for frame in frames if frame.reader}
        named.update(user for frame in frames for user in frame.also)
        for user in named - members:
            if user in online:
                targets.extend(online[user])
        special_peers: set[Peer] = {frame.origin for frame in frames if frame.origin is not None}
        for user in named:
            special_peers.update(online.get(user, ()))
        special: dict[Peer, tuple[bytes, int]] = {}
        for peer in special_peers:
            user = peer.user
            if peer.tenant != tenant or (user not in members and user not in named):
                continue  # not a target: the sender left, or another tenant's connection
            mine = [
                frame.data for frame in frames
                if frame.origin is not peer and (
                    frame.reader == user if frame.reader
                    else user in members or user in frame.also
                )
            ]
            special[peer] = (b"".join(mine), len(mine))
        if not targets:
            return None
        return _Delivery(targets, b"".join(frame.data for frame in to_members), len(to_members),
                         special)

    async def _send(self, plan: list[_Delivery]) -> None:
        """Push each delivery's joins, in plan order, flushing and yielding to the event loop
        every `slice_pushes` pushes. A join that does not fit an outbox evicts that
        connection (it catches up by sync), as any push past the cap does."""
        flusher = self._flusher
        budget = self.slice_pushes
        pushes = deliveries = 0
        for delivery in plan:
            common, common_frames = delivery.common, delivery.common_frames
            special = delivery.special
            for peer in delivery.targets:
                if special and peer in special:
                    data, frames = special[peer]
                else:
                    data, frames = common, common_frames
                if not frames:
                    continue
                pushes += 1
                deliveries += frames
                if not peer.outbox.push(data):
                    self.evictions += 1
                    peer.evict_slow()
                budget -= 1
                if budget == 0:
                    budget = self.slice_pushes
                    flusher.flush_all()
                    await trio.lowlevel.checkpoint()
        self.pushes += pushes
        self.deliveries += deliveries
        flusher.flush_all()
