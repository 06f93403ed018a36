"""Re-sealing a tenant's records under its current key epoch, in bounded batches.

Shredding an epoch (`ShredKeyEpoch`) destroys every record sealed under it. Messages are what a
shred is meant to destroy; the tenant's users, conversations, members and member log are not:
they are re-sealed under the current epoch first (`Engine.reseal_records`), and a shred is
refused while any of them is still sealed under the epoch (`Resealer.first_held`). Messages can
be re-sealed too, on request (a background re-encrypt after a rotation).

A re-seal opens each record under its old epoch and seals the same plaintext under the current
one; the associated data (header, table, key) follows the usual rules (engine/crypto.py).
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from engine.crypto import BULK_SEALED_MARK, SEALED_MARK, AeadSealer
from engine.errors import Invalid
from engine.hotstore import HotStore
from engine.keys import pack_id

__all__ = [
    "MAX_RESEAL_BATCH",
    "MESSAGES_TABLE",
    "MIN_SCAN_PER_BATCH",
    "RESEALED_TABLES",
    "ResealProgress",
    "Resealer",
]

# Tables whose records outlive a shred of the epoch they were written under (docs/security.md).
RESEALED_TABLES = ("users", "convs", "members", "member_log")
MESSAGES_TABLE = "messages"
MAX_RESEAL_BATCH = 10_000  # one write transaction: keeps a batch's time and dirty pages bounded
# Records a batch looks at, at most (or its size, if larger): a batch holds the write lock, and a
# table whose records are nearly all re-sealed already must not be scanned whole in one go.
MIN_SCAN_PER_BATCH = 4_096

_EPOCH = struct.Struct(">I")
_SEALED_MARKS = (SEALED_MARK, BULK_SEALED_MARK)


class ResealProgress(msgspec.Struct, frozen=True):
    """One batch of `Engine.reseal_records`: `resealed` records re-sealed, `scanned` looked at;
    `next_key` is the `after_key` of the next batch, empty when the table is done."""

    resealed: int
    scanned: int
    next_key: bytes


def sealed_epoch(stored: bytes) -> int | None:
    """The key epoch in a sealed record's header; None for anything else."""
    if len(stored) < 1 + _EPOCH.size or stored[0] not in _SEALED_MARKS:
        return None
    return int(_EPOCH.unpack_from(stored, 1)[0])


class Resealer:
    def __init__(self, store: HotStore, sealer: AeadSealer) -> None:
        self._store = store
        self._sealer = sealer

    def _db(self, table: str) -> Any:
        if table not in RESEALED_TABLES and table != MESSAGES_TABLE:
            raise Invalid(
                f"cannot re-seal table {table!r}: the sealed tables are "
                f"{', '.join((*RESEALED_TABLES, MESSAGES_TABLE))}"
            )
        return getattr(self._store.dbs, table)

    def reseal(
        self, txn: Any, tenant: int, table: str, after_key: bytes, max_records: int
    ) -> ResealProgress:
        """Re-seal up to `max_records` records of `tenant` in `table` after `after_key` (a key
        from an earlier batch, or empty) that are not under the tenant's current epoch,
        looking at no more than max(`max_records`, MIN_SCAN_PER_BATCH) records. Records
        under a shredded or revoked epoch are skipped: they can never be opened again.

        Opens every record of the batch before it writes any: a missing or shredded DEK raises
        `KeyUnavailable` with nothing written. `Invalid` for an unknown table, a batch size out
        of 1..MAX_RESEAL_BATCH or a key of another tenant.
        """
        db = self._db(table)
        if not 1 <= max_records <= MAX_RESEAL_BATCH:
            raise Invalid(f"a re-seal batch is 1 to {MAX_RESEAL_BATCH:,} records")
        prefix = pack_id(tenant)
        if after_key and not after_key.startswith(prefix):
            raise Invalid(f"the key to continue after is not one of tenant {tenant}'s")
        keyring = self._sealer.keyring
        current = keyring.write_epoch(prefix)  # KeyUnavailable: no current epoch
        keyring.aead(prefix, current)  # KeyUnavailable: its DEK is not installed
        name = table.encode()
        opened: list[tuple[bytes, bytes]] = []
        scanned = 0
        scan_limit = max(max_records, MIN_SCAN_PER_BATCH)
        next_key = b""
        with txn.cursor(db=db) as cur:
            found = cur.set_range(after_key or prefix)
            if found and after_key and cur.key() == after_key:
                found = cur.next()
            while found:
                key, value = cur.item()
                if not key.startswith(prefix):
                    break
                scanned += 1
                epoch = sealed_epoch(value)
                if epoch != current and not (
                    epoch is not None and keyring.is_gone(tenant, epoch)
                ):
                    opened.append((key, self._sealer.open(name, key, value)))
                if len(opened) >= max_records or scanned >= scan_limit:
                    next_key = bytes(key)
                    break
                found = cur.next()
        for key, plaintext in opened:
            txn.put(key, self._sealer.seal(name, key, plaintext), db=db)
        return ResealProgress(len(opened), scanned, next_key)

    def first_held(self, txn: Any, tenant: int, epoch: int) -> str | None:
        """The first table holding a non-message record of `tenant` sealed under `epoch`, or
        None. Reads only headers; bounded by the tenant's metadata, not its messages."""
        prefix = pack_id(tenant)
        for table in RESEALED_TABLES:
            with txn.cursor(db=getattr(self._store.dbs, table)) as cur:
                if not cur.set_range(prefix):
                    continue
                for key, value in cur:
                    if not key.startswith(prefix):
                        break
                    if sealed_epoch(value) == epoch:
                        return table
        return None

    def count_pending(self, txn: Any, tenant: int, table: str) -> tuple[int, int]:
        """(records of `tenant` in `table` not under its current epoch nor a shredded or
        revoked one, all its records)."""
        db = self._db(table)
        prefix = pack_id(tenant)
        keyring = self._sealer.keyring
        current = keyring.current(tenant)
        pending = total = 0
        with txn.cursor(db=db) as cur:
            if cur.set_range(prefix):
                for key, value in cur:
                    if not key.startswith(prefix):
                        break
                    total += 1
                    epoch = sealed_epoch(value)
                    pending += epoch != current and not (
                        epoch is not None and keyring.is_gone(tenant, epoch)
                    )
        return pending, total
