"""The hub: who is online, and fanout of committed changes to them.

Fanout encodes each pushed frame once (JSON, then the WebSocket header) and pushes the same
bytes into every recipient connection's outbox, with no `await` per delivery. The outboxes
touched by a commit are flushed together at its end, so frames for one connection coalesce
into one write. Member lists are cached per conversation and revalidated against the stored
member-list version, so changes made by another process (the `herald` CLI) are seen too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from appliance.outbox import Flusher, Outbox
from appliance.protocol.frames import MsgPush, ReadPush, WireMessage, encode_frame
from appliance.protocol.websocket import encode_text_frame
from appliance.wire import wire_message
from appliance.writer import Committed
from engine import (
    Append,
    Appended,
    ConversationOpened,
    CursorMoved,
    Engine,
    HeraldError,
    MarkRead,
    MembershipChanged,
)

__all__ = ["Hub", "Peer"]


class Peer(Protocol):
    """What the hub needs of a connection."""

    tenant: int
    user: int
    outbox: Outbox

    def evict_slow(self) -> None: ...


class Hub:
    def __init__(self, engine: Engine, flusher: Flusher) -> None:
        self._engine = engine
        self._flusher = flusher
        self._online: dict[int, dict[int, set[Peer]]] = {}  # tenant -> user -> connections
        self._members: dict[tuple[int, int], tuple[int, frozenset[int]]] = {}
        self.deliveries = 0
        self.evictions = 0

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
        version = self._engine.conversation_version(tenant, conv)
        cached = self._members.get((tenant, conv))
        if cached is not None and cached[0] == version:
            return cached[1]
        members = frozenset(self._engine.member_ids(tenant, conv))
        self._members[(tenant, conv)] = (version, members)
        return members

    def deliver(
        self, tenant: int, conv: int, frame: bytes, exclude: object = None,
        also: Iterable[int] = (),
    ) -> None:
        """Push `frame` (complete WebSocket bytes) to every online member of `conv`, and to
        the users in `also` (those just removed, who must learn it), except `exclude`."""
        online = self._online.get(tenant)
        if not online:
            return
        members = self.members(tenant, conv)
        if len(online) < len(members):
            targets = [peers for user, peers in online.items() if user in members]
        else:
            targets = [online[user] for user in members if user in online]
        targets.extend(online[user] for user in also if user in online and user not in members)
        count = 0
        too_slow: list[Peer] = []  # evicted after the loop: eviction changes these sets
        for peers in targets:
            for peer in peers:
                if peer is exclude:
                    continue
                count += 1
                if not peer.outbox.push(frame):
                    too_slow.append(peer)
        self.deliveries += count
        self._evict(too_slow)

    def _evict(self, peers: list[Peer]) -> None:
        self.evictions += len(peers)
        for peer in peers:
            peer.evict_slow()

    def on_committed(self, batch: Sequence[Committed]) -> None:
        """Fan out what a commit changed, then flush every outbox it touched."""
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
                    self._push_message(op.tenant, outcome.conv, message, entry.origin)
            elif isinstance(outcome, MembershipChanged):
                self._push_stored(op.tenant, outcome.conv, outcome.seq, outcome.seq,  # type: ignore[union-attr]
                                  outcome.users)
            elif isinstance(outcome, ConversationOpened):
                if outcome.created:
                    self._push_stored(op.tenant, outcome.conv, 1, 1, ())  # type: ignore[union-attr]
            elif isinstance(outcome, CursorMoved) and isinstance(op, MarkRead):
                frame = encode_text_frame(encode_frame(ReadPush(outcome.conv, outcome.read)))
                self._evict([
                    peer for peer in self.connections_of(op.tenant, op.user)
                    if peer is not entry.origin and not peer.outbox.push(frame)
                ])
        self._flusher.flush_all()

    def _push_message(self, tenant: int, conv: int, message: WireMessage, origin: object) -> None:
        frame = encode_text_frame(encode_frame(MsgPush(conv, message)))
        self.deliver(tenant, conv, frame, exclude=origin)

    def _push_stored(
        self, tenant: int, conv: int, first: int, last: int, also: Iterable[int]
    ) -> None:
        for message in self._engine.messages(tenant, conv, first, last):
            frame = encode_text_frame(encode_frame(MsgPush(conv, wire_message(message))))
            self.deliver(tenant, conv, frame, also=also)
