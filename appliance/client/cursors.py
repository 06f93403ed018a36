"""Per-conversation delivery cursors: which pushed messages are new, which are missing.

Sans-IO: no Trio, no sockets. The client asks `classify` for every message it hears of (a push,
an ack of its own send, a page it pulled) and calls `advance` for each one it hands to the
application, so the application sees each conversation's messages exactly once, in seq order.

Invariant: for every tracked conversation, `last(conv)` is the highest seq delivered, and every
seq in `start(conv)+1 .. last(conv)` was delivered exactly once, in order.

`Held` keeps messages that arrived ahead of a gap for a moment, because a gap often fills by
itself: the server acks every send of a commit before it pushes that commit's messages, so the
ack of seq 8 can arrive just before the push of seq 7.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

__all__ = ["Cursors", "Held", "Verdict"]

M = TypeVar("M")


class Verdict(enum.Enum):
    DUPLICATE = "duplicate"  # seq <= last: delivered already
    NEXT = "next"  # seq == last + 1: deliver it now
    GAP = "gap"  # seq > last + 1: pull last+1 .. seq-1 first


class Cursors:
    """Delivery cursors. `known` maps conversation -> the last seq the application holds (from
    its own store); None is a fresh client, whose starting points `establish` sets later.

    A conversation first heard of after the start (a new group, a group one was added to) starts
    `backlog` messages before the newest one known then: that many of its latest messages are
    delivered, older ones are history to page on demand.
    """

    def __init__(self, known: Mapping[int, int] | None, *, backlog: int) -> None:
        if backlog < 0:
            raise ValueError("backlog cannot be negative")
        self._last: dict[int, int] = {conv: max(0, seq) for conv, seq in (known or {}).items()}
        self._backlog = backlog
        self.established = known is not None

    def establish(self, heads: Iterable[tuple[int, int]]) -> None:
        """Start a fresh client at these (conversation, head) pairs: nothing up to each head is
        delivered. Conversations tracked already keep their cursors."""
        for conv, head in heads:
            self._last.setdefault(conv, max(0, head))
        self.established = True

    def start(self, conv: int, newest: int) -> int:
        """The cursor of `conv`, created `backlog` before `newest` if the conversation is new."""
        last = self._last.get(conv)
        if last is None:
            last = self._last[conv] = max(0, newest - self._backlog)
        return last

    def last(self, conv: int) -> int | None:
        """The highest seq of `conv` delivered with nothing missing below; None if untracked."""
        return self._last.get(conv)

    def classify(self, conv: int, seq: int) -> Verdict:
        """What to do with message `seq` of `conv` (a new conversation is started first)."""
        last = self.start(conv, seq)
        if seq <= last:
            return Verdict.DUPLICATE
        return Verdict.NEXT if seq == last + 1 else Verdict.GAP

    def advance(self, conv: int, seq: int) -> bool:
        """Record that `seq` is being delivered. False (and nothing changes) unless it is the
        next one: a caller delivers only what this accepts."""
        last = self.start(conv, seq)
        if seq != last + 1:
            return False
        self._last[conv] = seq
        return True

    def forget(self, conv: int) -> None:
        """Stop tracking `conv` (the user is no longer a member)."""
        self._last.pop(conv, None)

    def snapshot(self) -> dict[int, int]:
        """A copy of every cursor: what the application persists, and what sync sends."""
        return dict(self._last)


class Held(Generic[M]):
    """Messages held ahead of a gap, per conversation, each conversation with a deadline (the
    time its first message was held plus the wait) after which the gap is pulled instead."""

    def __init__(self) -> None:
        self._messages: dict[int, dict[int, M]] = {}
        self._deadlines: dict[int, float] = {}
        self.count = 0

    def add(self, conv: int, seq: int, message: M, deadline: float) -> None:
        held = self._messages.setdefault(conv, {})
        if seq not in held:
            held[seq] = message
            self.count += 1
        self._deadlines.setdefault(conv, deadline)

    def take(self, conv: int, seq: int) -> M | None:
        """Remove and return message `seq` of `conv`, if held."""
        held = self._messages.get(conv)
        if held is None or seq not in held:
            return None
        self.count -= 1
        return held.pop(seq)

    def lowest(self, conv: int) -> int | None:
        held = self._messages.get(conv)
        return min(held) if held else None

    def conversations(self) -> list[int]:
        return list(self._messages)

    def next_deadline(self) -> tuple[int, float] | None:
        """The conversation whose wait ends first, and when."""
        if not self._deadlines:
            return None
        conv = min(self._deadlines, key=self._deadlines.__getitem__)
        return conv, self._deadlines[conv]

    def release(self, conv: int, last: int | None) -> None:
        """Forget what is at or below `last` (delivered meanwhile); everything when `last` is
        None. A conversation left with nothing held loses its deadline."""
        held = self._messages.get(conv)
        if held is None:
            return
        for seq in [s for s in held if last is None or s <= last]:
            del held[seq]
            self.count -= 1
        if not held:
            del self._messages[conv]
            self._deadlines.pop(conv, None)
