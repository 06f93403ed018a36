"""Each tenant's key epochs, as the engine stores them: `key_epochs`, tenant|epoch -> EpochRecord.

An epoch is one data key (DEK) of a tenant, kept here only wrapped (master key, then escrow):
the engine cannot open it. Exactly one epoch of a tenant is `active` (its current one, that new
records are sealed under) once the first is added; adding another retires it. Shredding deletes
a retired epoch's wrapped DEK, which makes its records unreadable for good. Epoch records hold
no user content and must be readable before any DEK is installed: they are stored plain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from engine.crypto import MAX_EPOCH, AeadSealer
from engine.errors import CapacityExceeded, Conflict, Invalid, NotFound
from engine.hotstore import HotStore
from engine.keys import pack_id, pack_ids, unpack_id, unpack_last_id
from engine.ops import (
    AddKeyEpoch,
    KeyEpochAdded,
    KeyEpochShredded,
    KeyEpochsRevoked,
    RevokeKeyEpochs,
    ShredKeyEpoch,
)
from engine.records import EpochRecord, EpochState, PlainSealer

__all__ = ["MAX_KEY_ID_CHARS", "MAX_WRAPPED_DEK_BYTES", "KeyEpoch", "KeyEpochs"]

MAX_WRAPPED_DEK_BYTES = 4096  # a double-wrapped 32-byte DEK is under 200 bytes with any escrow
MAX_KEY_ID_CHARS = 200
_TABLE = b"key_epochs"


class KeyEpoch(msgspec.Struct, frozen=True):
    """One key epoch of a tenant, as `Engine.key_epochs` lists it."""

    epoch: int
    key_id: str
    state: EpochState
    created_ms: int
    seals: int
    wrapped_dek: bytes  # empty once shredded
    shredded_ms: int = 0


class KeyEpochs:
    def __init__(self, store: HotStore) -> None:
        self._store = store
        self._db = store.dbs.key_epochs
        self._plain = PlainSealer()
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(EpochRecord).decode

    def _put(self, txn: Any, key: bytes, record: EpochRecord) -> None:
        txn.put(key, self._plain.seal(_TABLE, key, self._encode(record)), db=self._db)

    def _scan(self, txn: Any, tenant: int | None) -> list[tuple[bytes, EpochRecord]]:
        prefix = b"" if tenant is None else pack_id(tenant)
        out = []
        with txn.cursor(db=self._db) as cur:
            if cur.set_range(prefix):
                for key, value in cur:
                    if not key.startswith(prefix):
                        break
                    out.append((key, self._decode(self._plain.open(_TABLE, key, value))))
        return out

    # -- writes (inside the caller's write transaction) ---------------------------------------

    def add(self, txn: Any, op: AddKeyEpoch, now_ms: int) -> KeyEpochAdded:
        """The caller checked that the tenant exists. Raises `Invalid` (empty or oversized
        wrapped DEK or key id), `Conflict` (`op.epoch` given and not the next one),
        `CapacityExceeded` when the tenant has used every epoch."""
        if not 1 <= len(op.wrapped_dek) <= MAX_WRAPPED_DEK_BYTES:
            raise Invalid(f"a wrapped data key must be 1 to {MAX_WRAPPED_DEK_BYTES} bytes")
        if not 1 <= len(op.key_id) <= MAX_KEY_ID_CHARS:
            raise Invalid(f"an escrow key id must be 1 to {MAX_KEY_ID_CHARS} characters")
        existing = self._scan(txn, op.tenant)
        epoch = unpack_last_id(existing[-1][0]) + 1 if existing else 1
        if epoch > MAX_EPOCH:
            raise CapacityExceeded(f"tenant {op.tenant} has used all {MAX_EPOCH:,} key epochs")
        if op.epoch and op.epoch != epoch:
            # The appliance bound its wrap to the epoch it expected: another process added one
            # in between, and this wrapped DEK would not open under the epoch it would get.
            raise Conflict(f"tenant {op.tenant}'s next key epoch is {epoch}, not {op.epoch}")
        for key, record in existing:
            if record.state is EpochState.ACTIVE:
                self._put(txn, key, msgspec.structs.replace(record, state=EpochState.RETIRED))
        record = EpochRecord(op.wrapped_dek, op.key_id, EpochState.ACTIVE, now_ms)
        self._put(txn, pack_ids(op.tenant, epoch), record)
        return KeyEpochAdded(op.tenant, epoch)

    def shred(
        self, txn: Any, op: ShredKeyEpoch, now_ms: int, guard: Callable[[], None] | None = None
    ) -> KeyEpochShredded:
        """Raises `NotFound` (no such epoch), `Conflict` (shredded already, or the tenant's
        current epoch: add a new one first, so that the tenant can still write). `guard`
        runs once the epoch is known to be retired, and may refuse the shred."""
        key = pack_ids(op.tenant, op.epoch) if 1 <= op.epoch <= MAX_EPOCH else b""
        found = txn.get(key, db=self._db) if key else None
        if found is None:
            raise NotFound(f"tenant {op.tenant} has no key epoch {op.epoch}")
        record = self._decode(self._plain.open(_TABLE, key, found))
        if record.state is EpochState.SHREDDED:
            raise Conflict(f"key epoch {op.epoch} of tenant {op.tenant} is shredded already")
        if record.state is EpochState.ACTIVE:
            raise Conflict(
                f"key epoch {op.epoch} is the current epoch of tenant {op.tenant}: add a new "
                f"epoch (AddKeyEpoch) before shredding it"
            )
        if guard is not None:
            guard()
        shredded = msgspec.structs.replace(
            record, wrapped_dek=b"", state=EpochState.SHREDDED, shredded_ms=now_ms
        )
        self._put(txn, key, shredded)
        return KeyEpochShredded(op.tenant, op.epoch)

    def revoke(self, txn: Any, op: RevokeKeyEpochs) -> KeyEpochsRevoked:
        """Mark every epoch of the tenant that is neither shredded nor revoked `revoked` (the
        caller checked that the tenant exists). Its wrapped DEK stays: it opens nothing now."""
        revoked = []
        for key, record in self._scan(txn, op.tenant):
            if record.state in (EpochState.ACTIVE, EpochState.RETIRED):
                self._put(txn, key, msgspec.structs.replace(record, state=EpochState.REVOKED))
                revoked.append(unpack_last_id(key))
        return KeyEpochsRevoked(op.tenant, tuple(revoked))

    def add_seals(self, txn: Any, counts: dict[tuple[int, int], int]) -> None:
        """Add the seals of a batch to the epochs' counters, in the batch's transaction."""
        for (tenant, epoch), seals in counts.items():
            key = pack_ids(tenant, epoch)
            found = txn.get(key, db=self._db)
            if found is None:
                continue  # an epoch set current by hand (tests); nothing to count against
            record = self._decode(self._plain.open(_TABLE, key, found))
            self._put(txn, key, msgspec.structs.replace(record, seals=record.seals + seals))

    # -- reads --------------------------------------------------------------------------------

    def list(self, txn: Any, tenant: int) -> list[KeyEpoch]:
        return [
            KeyEpoch(unpack_last_id(key), r.key_id, r.state, r.created_ms, r.seals,
                     r.wrapped_dek, r.shredded_ms)
            for key, r in self._scan(txn, tenant)
        ]

    def load_into(self, txn: Any, sealer: AeadSealer) -> None:
        """Tell the sealer's keyring every tenant's current epoch and its shredded and revoked
        epochs, and the sealer the seal counts so far (at open)."""
        keyring = sealer.keyring
        counts = []
        for key, record in self._scan(txn, None):
            tenant, epoch = unpack_id(key), unpack_last_id(key)
            counts.append((tenant, epoch, record.seals))
            if record.state is EpochState.ACTIVE:
                keyring.set_current(tenant, epoch)
            elif record.state is EpochState.SHREDDED:
                keyring.mark_shredded(tenant, epoch)
            elif record.state is EpochState.REVOKED:
                keyring.mark_revoked(tenant, epoch)
        sealer.load_seal_counts(counts)
