"""Message blocks: how a timeline's messages are laid out in the `messages` table.

A conversation's messages are stored in blocks of consecutive seqs, each block one record
keyed `tenant|conv|first seq` and sealed as a whole. A block's plaintext is

    count (2 bytes) | end offset of each record (4 bytes each) | the records, back to back

where each record is one msgpack-encoded `Message`. Sealing a block costs one AEAD call where
sealing its messages one by one cost `count`: a 50-message page opens 2 or 3 blocks instead of
50 records (docs/storage.md "Message blocks" has the figures that decided it).

Two sizes, because appends and page reads want different ones. The last block of a
conversation (its tail) grows by a rewrite on each append while it stays within
`TAIL_MAX_MESSAGES` and `TAIL_MAX_STORED_BYTES`, small enough to stay inline in its LMDB leaf
page (a bigger value lives in overflow pages of its own, which a rewrite on every append copies
and frees: 15% of append throughput, measured). When the tail is full it is merged into the
block before it if the two fit within `BLOCK_MAX_MESSAGES` and `BLOCK_MAX_STORED_BYTES`, once
per tailful of appends, so that older history is read in blocks of about 8 KiB: fewer AEAD
calls per page. A message larger than the bounds is a block of its own.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from itertools import accumulate

from engine.errors import CorruptData

__all__ = [
    "BLOCK_MAX_MESSAGES",
    "BLOCK_MAX_STORED_BYTES",
    "BLOCK_RECORD_OVERHEAD",
    "TAIL_MAX_MESSAGES",
    "TAIL_MAX_STORED_BYTES",
    "block_index",
    "extend_block",
    "merge_blocks",
    "pack_block",
]

# LMDB keeps a value inline in its leaf page up to about 2,000 bytes on 4 KiB pages (a node is at
# most half a page); this leaves room for the node header and the 24-byte key.
TAIL_MAX_STORED_BYTES = 1984
TAIL_MAX_MESSAGES = 64
# Two 4 KiB overflow pages hold a value of up to 2 * 4,096 - 16 (their header) bytes.
BLOCK_MAX_STORED_BYTES = 8176
BLOCK_MAX_MESSAGES = 256

_COUNT = struct.Struct(">H")
_END = struct.Struct(">I")
BLOCK_RECORD_OVERHEAD = _END.size  # what one more record adds to a block besides its bytes
_MAX_RECORDS_BYTES = 2**32 - 1
# The index of a block of n records, n = 1..BLOCK_MAX_MESSAGES; built once.
_INDEX = [struct.Struct(f">{n}I") for n in range(BLOCK_MAX_MESSAGES + 1)]


def pack_block(records: Sequence[bytes]) -> bytes:
    """The plaintext of a block holding `records` (1 to BLOCK_MAX_MESSAGES), in seq order."""
    count = len(records)
    if not 1 <= count <= BLOCK_MAX_MESSAGES:
        raise ValueError(f"a block holds 1 to {BLOCK_MAX_MESSAGES} records, not {count}")
    ends = list(accumulate(map(len, records)))
    if ends[-1] > _MAX_RECORDS_BYTES:
        raise ValueError("a block's records cannot pass 4 GiB")
    return _COUNT.pack(count) + _INDEX[count].pack(*ends) + b"".join(records)


def block_index(plaintext: bytes) -> tuple[tuple[int, ...], int]:
    """(end offset of each record, relative to the records' start; where the records start).
    Record i is `plaintext[start + (ends[i - 1] if i else 0) : start + ends[i]]`.

    Raises `CorruptData` when the bytes are not a block (a sealed block was authenticated when
    it was opened, so this catches a damaged plain store, or a bug)."""
    if len(plaintext) < _COUNT.size:
        raise CorruptData("a message block is too short to hold its record count")
    count = _COUNT.unpack_from(plaintext)[0]
    start = _COUNT.size + _END.size * count
    if not 1 <= count <= BLOCK_MAX_MESSAGES or len(plaintext) < start:
        raise CorruptData(f"a message block claims {count} records, which it cannot hold")
    ends: tuple[int, ...] = _INDEX[count].unpack_from(plaintext, _COUNT.size)
    # Only the total is checked: this is on every page read's path, per block.
    if start + ends[-1] != len(plaintext):
        raise CorruptData("a message block's index does not match its records")
    return ends, start


def merge_blocks(older: bytes, newer: bytes) -> bytes:
    """One block holding the records of `older`, then those of `newer` (consecutive seqs);
    the caller keeps within the bounds."""
    ends, start = block_index(older)
    newer_ends, newer_start = block_index(newer)
    count = len(ends) + len(newer_ends)
    if count > BLOCK_MAX_MESSAGES:
        raise ValueError(f"a block holds at most {BLOCK_MAX_MESSAGES} records")
    base = ends[-1]
    return (
        _COUNT.pack(count) + _INDEX[count].pack(*ends, *(base + end for end in newer_ends))
        + older[start:] + newer[newer_start:]
    )


def extend_block(plaintext: bytes, record: bytes) -> bytes:
    """The block `plaintext` with `record` appended (the caller keeps within the bounds)."""
    ends, start = block_index(plaintext)
    count = len(ends) + 1
    if count > BLOCK_MAX_MESSAGES:
        raise ValueError(f"a block holds at most {BLOCK_MAX_MESSAGES} records")
    return (
        _COUNT.pack(count) + _INDEX[count].pack(*ends, ends[-1] + len(record))
        + plaintext[start:] + record
    )
