"""The LMDB environment: its named databases, the format-version record, id counters, and the
one place where `lmdb.*` errors become engine errors.

Nothing here knows what a message is. `HotStore` hands short-lived transactions to the engine's
own modules through context managers; no transaction or cursor ever leaves the engine.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from engine.errors import (
    CapacityExceeded,
    CorruptData,
    EngineClosed,
    HeraldError,
    InternalError,
    Invalid,
)
from engine.keys import pack_id, unpack_id
from engine.records import FORMAT_VERSION, SEALED_FORMAT_VERSION

__all__ = ["DEFAULT_MAP_SIZE_BYTES", "Databases", "HotStore", "translate_lmdb_error"]

# LMDB reserves address space, not disk: a large map costs nothing until it is used.
DEFAULT_MAP_SIZE_BYTES = 64 * 2**30
MAX_READERS = 512

_FORMAT_KEY = b"format_version"
# Versions of development builds, never deployed, and what they did differently.
_OLD_VERSIONS = {
    1: "one message per record", 2: "one message per record",
    3: "user and conversation ids counted across tenants",
    4: "user and conversation ids counted across tenants",
}
_COUNTER_PREFIX = b"next_id:"


@dataclass(frozen=True, slots=True)
class Databases:
    """Handles of the named sub-databases. Key layouts are in docs/storage.md."""

    # b"format_version", b"next_id:tenant", b"next_id:<user|conv>:" + tenant, b"audit_head"
    meta: Any
    tenants: Any  # tenant -> TenantRecord
    tenant_names: Any  # name(utf-8) -> tenant
    users: Any  # tenant|user -> UserRecord
    user_logins: Any  # tenant|login(utf-8) -> user
    convs: Any  # tenant|conv -> ConversationRecord
    heads: Any  # tenant|conv -> head seq, ts
    directs: Any  # tenant|low user|high user -> conv
    members: Any  # tenant|conv|user -> MemberRecord
    member_log: Any  # tenant|conv|version|user -> MemberLogEntry
    user_convs: Any  # tenant|user|conv -> cursor (delivered, read)
    messages: Any  # tenant|conv|seq -> Message
    dedupe: Any  # tenant|window|sender|client_msg_id -> conv, seq, ts
    sessions: Any  # sha256(token) -> SessionRecord
    user_sessions: Any  # tenant|user|sha256(token) -> b"" (a user's live sessions)
    key_epochs: Any  # tenant|epoch -> EpochRecord (always plain: it holds no content)
    # seq -> AuditEntry, sealed under the name key's audit subkey (engine/audit.py). Created
    # when a store made before it is opened: no format change, an old store just has none yet.
    audit: Any
    # The administrators of the appliance (engine/admins.py), of no tenant. Created, like
    # `audit`, when an older store is opened: no format change.
    admins: Any  # admin -> AdminRecord (sealed under the name key, as tenants are)
    admin_logins: Any  # login (blinded as a login of tenant 0) -> admin
    admin_sessions: Any  # sha256(token) -> AdminSessionRecord
    admin_live_sessions: Any  # admin|sha256(token) -> b"" (an admin's live sessions)


_DB_NAMES = tuple(Databases.__dataclass_fields__)
_HEAD_SEQ = struct.Struct(">Q")  # the first field of a `heads` value (engine.records)


class HotStore:
    """One LMDB environment per data directory (py-lmdb: one Environment per process)."""

    def __init__(
        self, path: str | os.PathLike[str], *, map_size: int = DEFAULT_MAP_SIZE_BYTES,
        format_version: int = FORMAT_VERSION,
    ):
        """Open (creating if needed) the store in directory `path`, of `format_version`
        (`FORMAT_VERSION`: plain records, `SEALED_FORMAT_VERSION`: sealed ones).

        Raises `CorruptData` when the directory holds a store of another format version,
        `Invalid` when it cannot be opened as an LMDB environment.
        """
        self._format_version = format_version
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            # sync and metasync stay on: metasync=False can lose the last acknowledged commit on
            # an OS crash (PERFORMANCE.md), and a Herald ack is a promise of durability.
            self._env = lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=len(_DB_NAMES) + 2,
                max_readers=MAX_READERS,
                sync=True,
                metasync=True,
                readahead=False,
                meminit=format_version != FORMAT_VERSION,
            )
        except lmdb.Error as exc:
            raise Invalid(f"cannot open the store at {self.path}: {exc}") from exc
        self.dbs = Databases(*(self._env.open_db(name.encode()) for name in _DB_NAMES))
        self._closed = False
        try:
            self._check_format()
        except HeraldError:
            # Let go of the environment: py-lmdb refuses a second one on the same path in this
            # process, so a leaked one would block opening the store again after a migration.
            self.close()
            raise

    def _check_format(self) -> None:
        expected = self._format_version
        with self.write() as txn:
            stored = txn.get(_FORMAT_KEY, db=self.dbs.meta)
            if stored is None:
                txn.put(_FORMAT_KEY, pack_id(expected), db=self.dbs.meta)
                return
        version = unpack_id(stored)
        if version == SEALED_FORMAT_VERSION and expected == FORMAT_VERSION:
            raise CorruptData(
                f"the store at {self.path} has format version {version}: its records are "
                f"sealed (encrypted at rest). Open it with a keyring (Engine(path, keyring=...))."
            )
        if version == FORMAT_VERSION and expected == SEALED_FORMAT_VERSION:
            raise CorruptData(
                f"the store at {self.path} has format version {version}: its records are plain. "
                f"Open it without a keyring; sealing an existing store needs a migration that "
                f"this release does not ship."
            )
        if version in _OLD_VERSIONS:
            raise CorruptData(
                f"the store at {self.path} has format version {version}, from a development "
                f"build ({_OLD_VERSIONS[version]}); this Herald reads version {expected} and "
                f"ships no migration from it: move the directory away and create a new store"
            )
        if version != expected:
            raise CorruptData(
                f"the store at {self.path} has format version {version}; this Herald reads "
                f"version {expected}. Run the matching Herald release, or migrate it."
            )

    @property
    def format_version(self) -> int:
        with self.read() as txn:
            stored = txn.get(_FORMAT_KEY, db=self.dbs.meta)
        return unpack_id(stored) if stored is not None else 0

    @contextlib.contextmanager
    def read(self) -> Iterator[Any]:
        """A read-only snapshot transaction."""
        self._ensure_open()
        try:
            with self._env.begin(buffers=False) as txn:
                yield txn
        except lmdb.Error as exc:
            raise translate_lmdb_error(exc) from exc

    @contextlib.contextmanager
    def write(self) -> Iterator[Any]:
        """A write transaction, committed (and fsynced) when the block exits without error.

        Herald's own refusals raised inside the block abort the transaction like any error.
        """
        self._ensure_open()
        try:
            with self._env.begin(write=True) as txn:
                yield txn
        except HeraldError:
            raise
        except lmdb.Error as exc:
            raise translate_lmdb_error(exc) from exc

    @contextlib.contextmanager
    def nested(self, parent: Any) -> Iterator[Any]:
        """A child of the write transaction `parent`: its writes join the parent's when the
        block exits without error, and vanish when it raises (LMDB nested transactions)."""
        try:
            child = self._env.begin(write=True, parent=parent)
        except lmdb.Error as exc:
            raise translate_lmdb_error(exc) from exc
        try:
            yield child
        except BaseException:
            child.abort()
            raise
        try:
            child.commit()
        except lmdb.Error as exc:
            raise translate_lmdb_error(exc) from exc

    def meta_setdefault(self, key: bytes, value: bytes) -> bytes:
        """The `meta` value of `key`, written as `value` first if the store has none."""
        with self.write() as txn:
            stored = txn.get(key, db=self.dbs.meta)
            if stored is None:
                txn.put(key, value, db=self.dbs.meta)
                return value
            return bytes(stored)

    def next_id(self, txn: Any, kind: bytes, tenant: int | None = None) -> int:
        """Allocate the next id of `kind`: ids start at 1 and are never reused. With `tenant`,
        the ids count within that tenant (users, conversations), so that one tenant's ids say
        nothing of another's activity; without, across the store (tenants)."""
        key = _COUNTER_PREFIX + kind
        if tenant is not None:
            key += b":" + pack_id(tenant)
        stored = txn.get(key, db=self.dbs.meta)
        value = unpack_id(stored) if stored is not None else 1
        txn.put(key, pack_id(value + 1), db=self.dbs.meta)
        return value

    def stat(self) -> dict[str, int]:
        """Entries per named database, plus the file's size in bytes. `messages` counts the
        messages (the heads' seqs: seqs are gapless from 1), `message_blocks` the entries of
        the messages table. Reads every head: for a banner or a test, not a hot path."""
        self._ensure_open()
        counts: dict[str, int] = {}
        with self._env.begin() as txn:
            for name in _DB_NAMES:
                counts[name] = int(txn.stat(getattr(self.dbs, name))["entries"])
            counts["message_blocks"] = counts["messages"]
            counts["messages"] = sum(
                _HEAD_SEQ.unpack_from(head)[0]
                for head in txn.cursor(db=self.dbs.heads).iternext(keys=False)
            )
        counts["map_used_bytes"] = self.usage()[0]
        return counts

    def usage(self) -> tuple[int, int]:
        """(bytes in use, bytes of the memory map): two reads of LMDB's header, no scan, so
        that a metrics scrape may ask every few seconds. Raises `EngineClosed` after `close`."""
        self._ensure_open()
        info = self._env.info()
        used = int(info["last_pgno"] + 1) * int(self._env.stat()["psize"])
        return used, int(info["map_size"])

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._env.close()

    def _ensure_open(self) -> None:
        if self._closed:
            raise EngineClosed("the store is closed")


# LMDB's errors that say a resource ran out: what a client may retry later, and what an
# administrator fixes by giving the store more (map size, disk, memory).
_CAPACITY_ERRORS: dict[type[lmdb.Error], str] = {
    lmdb.MapFullError: "the message store is full (LMDB map size reached); raise "
                       "storage.map_size_bytes",
    lmdb.ReadersFullError: f"too many reads at once (LMDB's {MAX_READERS} reader slots)",
    lmdb.TxnFullError: "the write is too large for one transaction",
    lmdb.DiskError: "the disk holding the message store is full",
    lmdb.MemoryError: "the server is out of memory",
}
_DAMAGE_ERRORS = (
    lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.BadChecksumError,
)


def translate_lmdb_error(exc: lmdb.Error) -> HeraldError:
    """The refusal an LMDB error stands for: `CapacityExceeded` for a resource that ran out,
    `CorruptData` for damage, and `InternalError` for the rest, which no caller caused and
    none can fix by retrying (a bug, such as a key over LMDB's size limit)."""
    for kind, message in _CAPACITY_ERRORS.items():
        if isinstance(exc, kind):
            return CapacityExceeded(message)
    if isinstance(exc, _DAMAGE_ERRORS):
        return CorruptData(f"the store is damaged: {exc}")
    return InternalError(f"the store failed unexpectedly ({type(exc).__name__}: {exc})")
