"""Sync: what a user's client is missing, across all its conversations, newest first.

Read diffusion makes this a comparison, not a mailbox drain: walk the user's conversation index
(with its cursors), compare each head with the client's cursor, and read only the gaps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from engine.hotstore import HotStore
from engine.keys import pack_id, pack_ids, unpack_last_id
from engine.records import Message, unpack_cursor, unpack_head
from engine.timeline import Timeline

__all__ = ["ConversationSync", "SyncResult", "sync"]


class ConversationSync(msgspec.Struct, frozen=True):
    """One conversation's state for the client.

    `messages` are the newest missing ones, ascending; `more` is True when older missing
    messages were left out (the client pages them with a history read).
    """

    conv: int
    head: int
    last_ts: int
    read: int
    unread: int
    messages: list[Message]
    more: bool


class SyncResult(msgspec.Struct, frozen=True):
    conversations: list[ConversationSync]  # most recent activity first
    removed: list[int]  # conversations the client knows that the user is no longer in


def sync(
    store: HotStore,
    timeline: Timeline,
    txn: Any,
    tenant: int,
    user: int,
    known: Mapping[int, int] | None,
    limit_per_conv: int,
    max_messages: int,
    everything: bool,
    max_bytes: int | None = None,
) -> SyncResult:
    """Compute a user's sync inside one read transaction.

    `known` maps conversation -> the last seq the client holds; None means "use the server's
    delivered cursors" (a client that keeps no state of its own). With `everything`, unchanged
    conversations are listed too (with no messages): the conversation list of a fresh login.
    `max_bytes` bounds the stored size of all messages returned, like `max_messages` their
    count; the conversations past either budget are listed with `more`.
    """
    heads_db = store.dbs.heads
    prefix = pack_ids(tenant, user)
    rows: list[tuple[int, int, int, int, int]] = []  # last_ts, conv, head, cursor, read
    member_of: set[int] = set()
    with txn.cursor(db=store.dbs.user_convs) as cur:
        if cur.set_range(prefix):
            for key, value in cur:
                if key[:16] != prefix:
                    break
                conv = unpack_last_id(key)
                member_of.add(conv)
                delivered, read = unpack_cursor(value)
                if known is not None:
                    # A client's cursor below 0 means it holds nothing (as `after` in a page
                    # read); unclamped it would ask for seqs below 1, which cannot be keyed.
                    delivered = max(0, known.get(conv, 0))
                head, last_ts = unpack_head(txn.get(pack_id(tenant) + key[16:], db=heads_db))
                if head > delivered or everything:
                    rows.append((last_ts, conv, head, delivered, read))
    rows.sort(reverse=True)
    budget = max_messages
    bytes_left = (2**63) if max_bytes is None else max_bytes
    out: list[ConversationSync] = []
    out_any = False  # past the first message, the byte budget is strict
    for last_ts, conv, head, cursor, read in rows:
        missing = max(0, head - cursor)
        take = min(missing, limit_per_conv, budget) if bytes_left > 0 else 0
        messages: list[Message] = []
        if take:
            messages, used = timeline.scan_sized(
                txn, tenant, conv, head - take + 1, head, bytes_left, newest_first=True,
                at_least_one=not out_any,
            )
            out_any = out_any or bool(messages)
            bytes_left -= used
            budget -= len(messages)
        out.append(
            ConversationSync(
                conv, head, last_ts, read, max(0, head - read), messages, len(messages) < missing
            )
        )
    removed = sorted(c for c in known if c not in member_of) if known is not None else []
    return SyncResult(out, removed)
