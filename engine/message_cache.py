"""A bounded cache of opened messages: decrypted and decoded, so that hot pages skip both.

Messages never change once appended but by a recall, which blanks the message it hides (the
engine then forgets that message's block, `forget_rewritten`), and seqs are gapless, so an
entry, keyed by tenant, conversation and seq, is otherwise never stale; what can go stale is
the right to read it. In a sealed store every entry keeps the key epoch its record was sealed
under, and every read of an entry asks the keyring first (`KeyCheck`): a DEK that was
forgotten, has expired or was shredded refuses a cached message with the same
`KeyUnavailable` as the stored record. `drop` (called when the keyring forgets a DEK or shreds
an epoch) frees the plaintexts at once. docs/security.md "Opened messages in memory" has the
trade-off.

Entries are grouped per conversation, and the conversations kept in least-recently-used order:
a page is one lookup and one promotion, then a dict get per seq (a promotion per message cost
as much as decoding it). Bounded by approximate bytes (each record's size plus a fixed cost per
entry): past the bound the least recently used conversations go whole; a conversation that
alone passes the bound loses its oldest-cached entries. The engine's calls run in several
threads (reads are concurrent, the keyring is told to forget from the appliance's thread), so
every change holds one lock; a read's dict gets need none (each is atomic under the GIL).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable

from engine.errors import Invalid, KeyUnavailable
from engine.records import Message

__all__ = [
    "DEFAULT_MESSAGE_CACHE_BYTES",
    "ENTRY_OVERHEAD_BYTES",
    "PLAIN_EPOCH",
    "CachedMessage",
    "MessageCache",
]

DEFAULT_MESSAGE_CACHE_BYTES = 64 * 2**20
# What an entry costs beyond its record's bytes: the Message object and its strings' headers,
# the tuple, the seq and the dict slot. Measured with tracemalloc, 20,000 entries of a 126-byte
# record with a 100-character ASCII body take about 520 bytes each in all, where 576 are
# counted: the bound errs on the safe side. The body is counted once, as UTF-8.
ENTRY_OVERHEAD_BYTES = 450
PLAIN_EPOCH = 0  # the "epoch" of a plain store's entries: no key to check

# Raises KeyUnavailable when (packed tenant, epoch) has no usable DEK; the sealed store's is
# `Keyring.aead`, which also says why (not installed, expired, shredded).
KeyCheck = Callable[[bytes, int], object]


# (message, record bytes, key epoch): the opened record's size is what a scan's byte budget
# counts; the epoch is the one it was sealed under (PLAIN_EPOCH in a plain store). A plain
# tuple, not a NamedTuple: a cold page builds 50 of them, and NamedTuple's constructor is
# Python code.
CachedMessage = tuple[Message, int, int]


class _Conversation:
    """The cached messages of one conversation, by seq, in the order they were cached."""

    __slots__ = ("cost", "entries")

    def __init__(self) -> None:
        self.entries: dict[int, CachedMessage] = {}
        self.cost = 0


def _cost(entry: CachedMessage) -> int:
    return entry[1] + ENTRY_OVERHEAD_BYTES


class MessageCache:
    """Opened messages by (tenant|conv key, seq), at most `max_bytes` of them
    (approximately). `key_check` is None for a plain store (nothing to check). Raises
    `Invalid` for a negative bound; 0 makes a cache that holds nothing (the engine then
    makes none at all).
    """

    def __init__(self, max_bytes: int, key_check: KeyCheck | None) -> None:
        if max_bytes < 0:
            raise Invalid("the message cache size cannot be negative")
        self.max_bytes = max_bytes
        self._key_check = key_check
        # tenant|conv (16 bytes, as in the `heads` table) -> its entries; LRU first
        self._convs: OrderedDict[bytes, _Conversation] = OrderedDict()
        self._bytes = 0
        self._count = 0
        self._lock = threading.Lock()
        # Bumped by every drop. A reader or writer notes it before it opens or seals anything
        # and fills only if it has not moved: a message opened with a DEK that was forgotten
        # meanwhile never enters the cache after the drop that should have removed it.
        self._generation = 0
        # A recall rewrites a stored message (engine.timeline). A read whose snapshot began
        # before that commit (its LMDB transaction id below this) may hold the message as it
        # was, and must not put it back: such reads fill nothing.
        self._oldest_fill_txn = 0

    # -- reads ---------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Note it before opening records that `fill` will be given."""
        return self._generation

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: object) -> bool:
        """Whether the message stored under LMDB key `key` (tenant|conv|seq) is cached."""
        if not isinstance(key, bytes) or len(key) != 24:
            return False
        conv = self._convs.get(key[:16])
        return conv is not None and int.from_bytes(key[16:], "big") in conv.entries

    def recount(self) -> tuple[int, int]:
        """(entries, bytes) counted afresh from what is held: equal to (`len`,
        `bytes_used`) unless the running counts went wrong (for tests and debugging)."""
        with self._lock:
            convs = list(self._convs.values())
            for conv in convs:
                assert conv.cost == sum(_cost(e) for e in conv.entries.values())
            return (sum(len(c.entries) for c in convs), sum(c.cost for c in convs))

    def lookup(self, conv_key: bytes, first: int, last: int) -> list[CachedMessage | None] | None:
        """The entries of seqs first..last of conversation `conv_key` (tenant|conv), None
        where absent, or None when nothing of it is cached; the conversation becomes the most
        recently used. The caller must `check` an entry's epoch before it hands it out."""
        with self._lock:
            conv = self._convs.get(conv_key)
            if conv is None:
                return None
            self._convs.move_to_end(conv_key)
        get = conv.entries.get
        return [get(seq) for seq in range(first, last + 1)]

    def check(self, tenant: bytes, epoch: int) -> None:
        """Raise `KeyUnavailable` (and drop the epoch's entries) when the DEK of (packed
        `tenant`, `epoch`) is not usable: as an uncached read of the record would."""
        if self._key_check is None:
            return
        try:
            self._key_check(tenant, epoch)
        except KeyUnavailable:
            # An expired DEK has no event of its own: its plaintexts go at the first read.
            self.drop(tenant, epoch)
            raise

    # -- changes -------------------------------------------------------------------------------

    def fill(self, entries: Iterable[tuple[bytes, int, CachedMessage]], generation: int) -> None:
        """Add opened messages as (tenant|conv key, seq, entry), evicting past the bound;
        nothing if a drop happened since `generation` was noted. An entry bigger than the
        whole bound is not kept."""
        with self._lock:
            if generation != self._generation:
                return
            self._fill_locked(entries)

    def _fill_locked(self, entries: Iterable[tuple[bytes, int, CachedMessage]]) -> None:
        """`fill`, with the lock held and the generation checked."""
        limit = self.max_bytes
        convs = self._convs
        used, count = self._bytes, self._count
        conv_key = b""
        conv = _Conversation()
        for key, seq, entry in entries:
            cost = entry[1] + ENTRY_OVERHEAD_BYTES
            if cost > limit:
                continue
            if key != conv_key:
                conv_key = key
                found = convs.get(key)
                if found is None:
                    found = convs[key] = _Conversation()
                else:
                    convs.move_to_end(key)
                conv = found
            old = conv.entries.pop(seq, None)
            if old is not None:
                conv.cost -= _cost(old)
                used -= _cost(old)
                count -= 1
            conv.entries[seq] = entry
            conv.cost += cost
            used += cost
            count += 1
            if used > limit:
                used, count = self._evict(used, count, conv_key)
        self._bytes, self._count = used, count

    def fill_run(
        self, conv_key: bytes, items: list[tuple[int, CachedMessage]], generation: int,
        snapshot_txn: int,
    ) -> None:
        """`fill` for messages of one conversation (a scan's misses) as (seq, entry), read in
        the LMDB snapshot of transaction id `snapshot_txn`: the same rules, with the
        per-entry work done by dict operations (a cold page fills 50). Nothing either if a
        recall committed after that snapshot began (`forget_rewritten`)."""
        limit = self.max_bytes
        with self._lock:
            if generation != self._generation or snapshot_txn < self._oldest_fill_txn:
                return
            cost = sum([entry[1] for _, entry in items]) + ENTRY_OVERHEAD_BYTES * len(items)
            if max([entry[1] for _, entry in items]) + ENTRY_OVERHEAD_BYTES > limit:
                keep = [(s, e) for s, e in items if e[1] + ENTRY_OVERHEAD_BYTES <= limit]
                if keep:  # rare: a message larger than the whole cache is left out
                    self._fill_locked([(conv_key, s, e) for s, e in keep])
                return
            conv = self._convs.get(conv_key)
            if conv is None:
                conv = self._convs[conv_key] = _Conversation()
            else:
                self._convs.move_to_end(conv_key)
            entries = conv.entries
            replaced = [entries[s] for s, _ in items if s in entries]  # a concurrent fill's
            if replaced:
                cost -= sum([e[1] for e in replaced]) + ENTRY_OVERHEAD_BYTES * len(replaced)
            entries.update(items)
            conv.cost += cost
            used = self._bytes + cost
            count = self._count + len(items) - len(replaced)
            if used > limit:
                used, count = self._evict(used, count, conv_key)
            self._bytes, self._count = used, count

    def _evict(self, used: int, count: int, filling: bytes) -> tuple[int, int]:
        """Least recently used conversations out, whole, until under the bound; the one
        being filled last, and then only its oldest-cached entries. Holds the lock."""
        convs = self._convs
        limit = self.max_bytes
        while used > limit:
            key, conv = next(iter(convs.items()))
            if key != filling:
                del convs[key]
                used -= conv.cost
                count -= len(conv.entries)
                continue
            for seq in list(conv.entries):  # dict order: the order they were cached
                entry = conv.entries.pop(seq)
                conv.cost -= _cost(entry)
                used -= _cost(entry)
                count -= 1
                if used <= limit:
                    break
            if not conv.entries:
                del convs[key]
        return used, count

    def forget_rewritten(self, ranges: Iterable[tuple[bytes, int, int]], txn_id: int) -> None:
        """Remove the messages of `ranges` (tenant|conv key, first seq, last seq): a recall
        that committed in write transaction `txn_id` rewrote them. Reads of snapshots older
        than it fill nothing from then on, so that none puts back what it read before."""
        with self._lock:
            self._oldest_fill_txn = max(self._oldest_fill_txn, txn_id)
            for conv_key, first, last in ranges:
                conv = self._convs.get(conv_key)
                if conv is None:
                    continue
                for seq in range(first, last + 1):
                    entry = conv.entries.pop(seq, None)
                    if entry is not None:
                        conv.cost -= _cost(entry)
                        self._bytes -= _cost(entry)
                        self._count -= 1
                if not conv.entries:
                    del self._convs[conv_key]

    def drop(self, tenant: bytes, epoch: int | None = None) -> int:
        """Remove every entry of (packed) `tenant`, or only those of `epoch`; returns how
        many. Walks the tenant's conversations: keys are forgotten and epochs shredded
        rarely, and never on a read path."""
        convs = self._convs
        dropped = 0
        with self._lock:
            self._generation += 1
            for key in [k for k in convs if k[:8] == tenant]:
                conv = convs[key]
                if epoch is None:
                    doomed = list(conv.entries)
                else:
                    doomed = [seq for seq, e in conv.entries.items() if e[2] == epoch]
                for seq in doomed:
                    cost = _cost(conv.entries.pop(seq))
                    conv.cost -= cost
                    self._bytes -= cost
                dropped += len(doomed)
                if not conv.entries:
                    del convs[key]
            self._count -= dropped
        return dropped

    def drop_unusable(self) -> int:
        """Remove the entries whose DEK is no longer usable (expired: nothing announces
        that); returns how many. One key check per (tenant, epoch) held."""
        if self._key_check is None:
            return 0
        with self._lock:
            held = {(key[:8], entry[2])
                    for key, conv in self._convs.items() for entry in conv.entries.values()}
        dropped = 0
        for tenant, epoch in held:
            try:
                self._key_check(tenant, epoch)
            except KeyUnavailable:
                dropped += self.drop(tenant, epoch)
        return dropped

    def clear(self) -> None:
        """Remove everything (the engine closes)."""
        with self._lock:
            self._generation += 1
            self._convs.clear()
            self._bytes = self._count = 0
