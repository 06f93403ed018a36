"""A bounded cache of opened messages: decrypted and decoded, so that hot pages skip both.

Messages never change once appended (a recall is a new message) and seqs are gapless, so an
entry, keyed by the message's LMDB key (tenant|conv|seq), is never stale; what can go stale is
the right to read it. In a sealed store every entry keeps the key epoch its record was sealed
under, and every read of an entry asks the keyring first (`KeyCheck`): a DEK that was forgotten,
has expired or was shredded refuses a cached message with the same `KeyUnavailable` as the
stored record. `drop` (called when the keyring forgets a DEK or shreds an epoch) frees the
plaintexts at once. docs/security.md "Opened messages in memory" has the trade-off.

Bounded by approximate bytes (the record's size plus a fixed cost per entry), least recently
used out first. The engine's calls run in several threads (reads are concurrent, the keyring is
told to forget from the appliance's thread), so every compound change holds one lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from engine.errors import Invalid, KeyUnavailable
from engine.records import Message

__all__ = ["DEFAULT_MESSAGE_CACHE_BYTES", "ENTRY_OVERHEAD_BYTES", "CachedMessage", "MessageCache"]

DEFAULT_MESSAGE_CACHE_BYTES = 64 * 2**20
# What an entry costs beyond its record's bytes: the Message object and its strings' headers,
# the key, the tuple and the dict slot (measured with tracemalloc: about 450 bytes for a
# 132-byte record with a 100-character ASCII body). The body is counted once, as UTF-8.
ENTRY_OVERHEAD_BYTES = 450
PLAIN_EPOCH = 0  # the "epoch" of a plain store's entries: no key to check

# Raises KeyUnavailable when (packed tenant, epoch) has no usable DEK; the sealed store's is
# `Keyring.aead`, which also says why (not installed, expired, shredded).
KeyCheck = Callable[[bytes, int], object]


class CachedMessage(NamedTuple):
    message: Message
    record_bytes: int  # the opened record's size: what a scan's byte budget counts
    epoch: int  # the key epoch it was sealed under; PLAIN_EPOCH in a plain store


class MessageCache:
    """Opened messages by LMDB key, at most `max_bytes` of them (approximately).

    `key_check` is None for a plain store (nothing to check). Raises `Invalid` for a negative
    bound; 0 makes a cache that holds nothing (the engine then makes none at all).
    """

    def __init__(self, max_bytes: int, key_check: KeyCheck | None) -> None:
        if max_bytes < 0:
            raise Invalid("the message cache size cannot be negative")
        self.max_bytes = max_bytes
        self._key_check = key_check
        self._entries: OrderedDict[bytes, CachedMessage] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        # Bumped by every drop. A reader or writer notes it before it opens or seals anything
        # and fills only if it has not moved: a message opened with a DEK that was forgotten
        # meanwhile never enters the cache after the drop that should have removed it.
        self._generation = 0

    # -- reads ---------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Note it before opening records that `fill` will be given."""
        return self._generation

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def lookup(self, keys: Sequence[bytes]) -> list[CachedMessage | None]:
        """The entries of `keys` (None where absent), each made the most recently used. The
        caller must `check` an entry's epoch before it hands the message out."""
        entries = self._entries
        with self._lock:
            found = [entries.get(key) for key in keys]
            for key, entry in zip(keys, found, strict=True):
                if entry is not None:
                    entries.move_to_end(key)
        return found

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

    def fill(self, entries: Iterable[tuple[bytes, CachedMessage]], generation: int) -> None:
        """Add opened messages, evicting the least recently used past the bound; nothing if
        a drop happened since `generation` was noted. An entry bigger than the whole bound is
        not kept."""
        limit = self.max_bytes
        cache = self._entries
        with self._lock:
            if generation != self._generation:
                return
            used = self._bytes
            for key, entry in entries:
                cost = entry.record_bytes + ENTRY_OVERHEAD_BYTES
                if cost > limit:
                    continue
                old = cache.pop(key, None)
                if old is not None:
                    used -= old.record_bytes + ENTRY_OVERHEAD_BYTES
                cache[key] = entry
                used += cost
                while used > limit:
                    _, evicted = cache.popitem(last=False)
                    used -= evicted.record_bytes + ENTRY_OVERHEAD_BYTES
            self._bytes = used

    def drop(self, tenant: bytes, epoch: int | None = None) -> None:
        """Remove every entry of (packed) `tenant`, or only those of `epoch`. Walks the whole
        cache: keys are forgotten and epochs shredded rarely, and never on a read path."""
        cache = self._entries
        with self._lock:
            self._generation += 1
            doomed = [
                key for key, entry in cache.items()
                if key[:8] == tenant and (epoch is None or entry.epoch == epoch)
            ]
            for key in doomed:
                self._bytes -= cache.pop(key).record_bytes + ENTRY_OVERHEAD_BYTES

    def clear(self) -> None:
        """Remove everything (the engine closes)."""
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self._bytes = 0
