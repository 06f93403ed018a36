"""Binary LMDB keys: fixed-width big-endian integers, so byte order is timeline order.

Every key starts with the tenant id: a range scan can never leave the caller's tenant, and a
prefix is all it takes to walk one tenant, one conversation or one user's index.
"""

from __future__ import annotations

import struct

__all__ = [
    "ID_BYTES",
    "MAX_ID",
    "pack_id",
    "pack_ids",
    "unpack_id",
    "unpack_last_id",
]

ID_BYTES = 8
MAX_ID = 2**64 - 1

_ONE = struct.Struct(">Q")
_PACKERS = {n: struct.Struct(">" + "Q" * n) for n in range(1, 5)}


def pack_id(value: int) -> bytes:
    """One 8-byte big-endian id."""
    return _ONE.pack(value)


def pack_ids(*values: int) -> bytes:
    """Several ids, concatenated: `pack_ids(tenant, conv, seq)` is a timeline key."""
    return _PACKERS[len(values)].pack(*values)


def unpack_id(key: bytes, index: int = 0) -> int:
    """The id at position `index` (0-based) of a packed key."""
    return int(_ONE.unpack_from(key, index * ID_BYTES)[0])


def unpack_last_id(key: bytes) -> int:
    """The last 8-byte id of a key (the seq of a timeline key, the conv of an index key)."""
    return int(_ONE.unpack_from(key, len(key) - ID_BYTES)[0])
