"""Records at rest: the keyring of unwrapped data keys, and the sealer that uses it.

A sealed record is `mark | epoch (4 bytes, big-endian) | nonce (12 bytes) | ciphertext+tag`
under the data key (DEK) of the record's tenant and epoch. Mark 0x01 is AES-256-GCM-SIV under the
DEK itself: every table but the bulk ones. Mark 0x02 is AES-256-GCM under a subkey derived from the
DEK (HKDF-SHA256, so that no key serves two algorithms), for the tables named bulk at construction
(the message blocks): GCM-SIV in this build decrypts at about 0.4 GB/s against several GB/s for
GCM, and a page read opens kilobytes of messages (docs/security.md "Two algorithms"). A table
accepts only its own mark. The associated data binds the header, the table and the LMDB key, so
a record copied under another key, into another table, conversation or tenant fails to open
(`CorruptData`). The tenant is the first 8 bytes of
every sealed table's key (docs/storage.md). docs/security.md "Records at rest" has the nonce
arithmetic and what stays visible on disk.

This is the one engine module besides passwords.py that touches `cryptography.hazmat`. It never
sees the master key or an escrow key: DEKs arrive unwrapped, from the appliance.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from engine.errors import CorruptData, Invalid, KeyNotInstalled, KeyUnavailable
from engine.keys import pack_id, unpack_id
from engine.records import SEALED_FORMAT_VERSION

__all__ = [
    "BULK_SEALED_MARK",
    "CONTENT_DIGEST_BYTES",
    "DEK_BYTES",
    "MAX_EPOCH",
    "MAX_SEALS_PER_EPOCH",
    "NAME_KEY_BYTES",
    "NAME_SEALED_MARK",
    "SEALED_MARK",
    "AeadSealer",
    "Keyring",
    "NameKeySealer",
    "plain_content_digest",
    "sealed_epoch",
]

SEALED_MARK = 0x01  # "sealed v1, AES-256-GCM-SIV"; engine.records.PlainSealer writes 0x00
BULK_SEALED_MARK = 0x02  # "sealed v1, AES-256-GCM under the DEK's bulk subkey"
NAME_SEALED_MARK = 0x03  # "sealed v1, AES-256-GCM-SIV under the name key's record subkey"
_BULK_SUBKEY_INFO = b"herald-bulk-aes-256-gcm-v1"
DEK_BYTES = 32
NAME_KEY_BYTES = 32
_NAME_KEY_CHECK_LABEL = b"herald-name-key-check-v1"
_LOGIN_LABEL = b"herald-login-v1\0"
_CMID_KEY_LABEL = b"herald-cmid-key-v1"
_TENANT_NAME_LABEL = b"herald-tenant-name-v1\0"
_TENANT_RECORD_KEY_LABEL = b"herald-tenant-record-key-v1"
_AUDIT_RECORD_KEY_LABEL = b"herald-audit-record-key-v1"
_CMID_PERSON = b"herald-cmid-v1"  # BLAKE2b personalisation, at most 16 bytes
CMID_BLIND_BYTES = 16
_CONTENT_KEY_LABEL = b"herald-content-digest-key-v1"
_CONTENT_PERSON = b"herald-body-v1"  # BLAKE2b personalisation, at most 16 bytes
CONTENT_DIGEST_BYTES = 16
NONCE_BYTES = 12
MAX_EPOCH = 2**32 - 1
# Random 96-bit nonces: past 2**32 seals under one DEK the chance of a repeated nonce passes
# 2**-33 (birthday bound), the limit NIST SP 800-38D sets for AES-GCM with random nonces. A
# repeat under GCM (the bulk subkey) would leak the XOR of two plaintexts and allow forgeries;
# under GCM-SIV only that two equal records are equal. Both count against this one limit, after
# which the sealer refuses and asks for a new epoch (docs/security.md "Nonces").
MAX_SEALS_PER_EPOCH = 2**32

_HEADER = struct.Struct(">BI")  # format marker, key epoch
_HEADER_BYTES = _HEADER.size
_NONCE_END = _HEADER_BYTES + NONCE_BYTES
_TAG_BYTES = 16
_MIN_SEALED_BYTES = _NONCE_END + _TAG_BYTES
_PLAIN_MARK = 0x00


# BLAKE2b states set up once and copied per digest: a keyed BLAKE2b compresses its key as a
# first block, and copying skips that (0.83 against 1.13 us per append, measured).
_PLAIN_CONTENT_HASH = hashlib.blake2b(digest_size=CONTENT_DIGEST_BYTES, person=_CONTENT_PERSON)


def plain_content_digest(entry: bytes, content: bytes) -> bytes:
    """The content digest a plain store keeps in a dedupe entry: an unkeyed BLAKE2b of the
    entry's identity and the message's content. Unkeyed, as a plain store's bodies are on
    its disk anyway; a sealed store keys it (`Keyring.content_digest`)."""
    digest = _PLAIN_CONTENT_HASH.copy()
    digest.update(entry + content)
    return digest.digest()


def sealed_epoch(stored: bytes) -> int:
    """The key epoch a sealed record names in its header (the caller has opened it)."""
    return int(_HEADER.unpack_from(stored)[1])


@dataclass(slots=True)
class _Dek:
    aead: AESGCMSIV
    bulk: AESGCM  # under HKDF(DEK, _BULK_SUBKEY_INFO)
    expires_at: float | None  # monotonic seconds; None: until forgotten


def _bulk_subkey(dek: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=_BULK_SUBKEY_INFO).derive(dek)


def _tenant_id(tenant: bytes) -> int:
    return unpack_id(tenant)


class Keyring:
    """Unwrapped DEKs in memory, per tenant and epoch, and each tenant's current (write) epoch.

    The appliance installs the DEKs it unwraps (master key + escrow), with the lifetime of its
    cache; the engine sets the current epoch from its own `key_epochs` table and marks shredded
    epochs. `clock` is handed in (the engine keeps no clock of its own): monotonic seconds, the
    scale of `expires_at`.

    The appliance installs and forgets from one thread while engine calls run in others: every
    method is a single read or replacement of a dict entry (atomic under the GIL), and nothing
    iterates a dict another thread may change without copying it first.
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, name_key: bytes | None = None
    ) -> None:
        """`name_key` (32 bytes, the same for every tenant and for the store's life, e.g.
        derived from the master key) blinds the login index of a store created with it: its
        keys are an HMAC of the login instead of the login. Raises `Invalid` for another size.
        """
        if name_key is not None and len(name_key) != NAME_KEY_BYTES:
            raise Invalid(f"a name key must be {NAME_KEY_BYTES} bytes")
        self._name_key = name_key
        # Its own key for the keyed BLAKE2b of client_msg_ids (one per append: cheaper than
        # an HMAC), derived so that no key serves two functions.
        self._cmid_key = None if name_key is None else hmac.new(
            name_key, _CMID_KEY_LABEL, hashlib.sha256).digest()
        # And one for the content digests of dedupe entries: a plain hash of a short body
        # could be guessed back from the disk.
        self._content_hash = None if name_key is None else hashlib.blake2b(
            key=hmac.new(name_key, _CONTENT_KEY_LABEL, hashlib.sha256).digest(),
            digest_size=CONTENT_DIGEST_BYTES, person=_CONTENT_PERSON)
        self._tenant_records: AESGCMSIV | None = None if name_key is None else AESGCMSIV(
            hmac.new(name_key, _TENANT_RECORD_KEY_LABEL, hashlib.sha256).digest())
        # The audit log's own, so that a later export of it can be handed its key alone.
        self._audit_records: AESGCMSIV | None = None if name_key is None else AESGCMSIV(
            hmac.new(name_key, _AUDIT_RECORD_KEY_LABEL, hashlib.sha256).digest())
        self._clock = clock
        self._keys: dict[bytes, dict[int, _Dek]] = {}  # packed tenant -> epoch -> DEK
        self._current: dict[bytes, int] = {}
        # (packed tenant, epoch) -> "shredded" or "revoked": epochs whose records no key will
        # ever open again, and why.
        self._gone: dict[tuple[bytes, int], str] = {}
        # Told (packed tenant, epoch or None) after a DEK is dropped: the engine's cache of
        # opened messages frees their plaintexts. A tuple, replaced whole, so that `forget`
        # in one thread never iterates a collection another thread is changing.
        self._forget_listeners: tuple[Callable[[bytes, int | None], object], ...] = ()
        # Told (tenant, epoch) when a record names an epoch whose DEK was never
        # installed: the appliance then unwraps it at once instead of at its next key refresh.
        self._missing_listeners: tuple[Callable[[int, int], object], ...] = ()

    def install(self, tenant: int, epoch: int, dek: bytes, expires_at: float | None = None) -> None:
        """Hold `dek` for records of `tenant` sealed under `epoch`, until `expires_at`
        (monotonic seconds; None: until forgotten). Replaces an earlier install of that epoch.

        Raises `Invalid` for a DEK that is not 32 bytes, an epoch out of 1..2**32-1, or an
        epoch the engine has shredded (its records must stay unreadable).
        """
        if len(dek) != DEK_BYTES:
            raise Invalid(f"a data key must be {DEK_BYTES} bytes")
        if not 1 <= epoch <= MAX_EPOCH:
            raise Invalid(f"a key epoch must be 1 to {MAX_EPOCH}")
        packed = pack_id(tenant)
        why = self._gone.get((packed, epoch))
        if why is not None:
            raise Invalid(f"key epoch {epoch} of tenant {tenant} was {why}; it cannot return")
        self._keys.setdefault(packed, {})[epoch] = _Dek(
            AESGCMSIV(dek), AESGCM(_bulk_subkey(dek)), expires_at
        )

    def set_current(self, tenant: int, epoch: int) -> None:
        """Seal the tenant's new records under `epoch`. The engine calls this from its
        `key_epochs` table (at open, and when `AddKeyEpoch` commits)."""
        if not 1 <= epoch <= MAX_EPOCH:
            raise Invalid(f"a key epoch must be 1 to {MAX_EPOCH}")
        self._current[pack_id(tenant)] = epoch

    def forget(self, tenant: int, epoch: int | None = None) -> None:
        """Drop one installed DEK of `tenant`, or all of them (epoch None). Its records then
        raise `KeyUnavailable` until the DEK is installed again."""
        packed = pack_id(tenant)
        if epoch is None:
            self._keys.pop(packed, None)
        else:
            epochs = self._keys.get(packed)
            if epochs is not None:
                epochs.pop(epoch, None)
        for listener in self._forget_listeners:  # after the DEK is gone, never before
            listener(packed, epoch)

    def add_forget_listener(self, listener: Callable[[bytes, int | None], object]) -> None:
        """Call `listener(packed tenant, epoch or None)` whenever `forget` (or
        `mark_shredded`) drops DEKs, after dropping them: how the engine empties its cache of
        opened messages."""
        self._forget_listeners = (*self._forget_listeners, listener)

    def add_missing_listener(self, listener: Callable[[int, int], object]) -> None:
        """Call `listener(tenant, epoch)`, from whatever thread is reading, each time a record
        names an epoch that is not installed (nor shredded): an epoch another process added,
        say. It is called before the read raises `KeyNotInstalled`; it must be quick and must
        not raise."""
        self._missing_listeners = (*self._missing_listeners, listener)

    def remove_forget_listener(self, listener: Callable[[bytes, int | None], object]) -> None:
        """Stop calling `listener` (the engine closes); nothing if it was not added."""
        self._forget_listeners = tuple(x for x in self._forget_listeners if x != listener)

    def mark_shredded(self, tenant: int, epoch: int) -> None:
        """Forget the epoch's DEK for good: it can no longer be installed, and its records say
        that they were shredded. Called by the engine when `ShredKeyEpoch` commits."""
        self._mark_gone(tenant, epoch, "shredded")

    def mark_revoked(self, tenant: int, epoch: int) -> None:
        """The same, because the epoch's escrow key was destroyed: its records say they were
        revoked. Called by the engine when `RevokeKeyEpochs` commits."""
        self._mark_gone(tenant, epoch, "revoked")

    def _mark_gone(self, tenant: int, epoch: int, why: str) -> None:
        self.forget(tenant, epoch)
        packed = pack_id(tenant)
        self._gone[packed, epoch] = why
        if self._current.get(packed) == epoch:
            del self._current[packed]

    def is_shredded(self, tenant: int, epoch: int) -> bool:
        """Whether `epoch` of `tenant` was shredded: its records are gone for good."""
        return self._gone.get((pack_id(tenant), epoch)) == "shredded"

    def is_revoked(self, tenant: int, epoch: int) -> bool:
        """Whether `epoch` of `tenant` was revoked: its records are gone for good."""
        return self._gone.get((pack_id(tenant), epoch)) == "revoked"

    def is_gone(self, tenant: int, epoch: int) -> bool:
        """Shredded or revoked: no key will ever open the epoch's records again."""
        return (pack_id(tenant), epoch) in self._gone

    def current(self, tenant: int) -> int | None:
        """The epoch new records of `tenant` are sealed under, if any."""
        return self._current.get(pack_id(tenant))

    def installed(self, tenant: int) -> list[int]:
        """The epochs of `tenant` whose DEK is installed and not expired, ascending."""
        now = self._clock()
        epochs = tuple(self._keys.get(pack_id(tenant), {}).items())  # copied in one step
        return sorted(e for e, d in epochs if d.expires_at is None or now < d.expires_at)

    # -- for the engine -----------------------------------------------------------------------

    def name_key_check(self) -> bytes:
        """What the store keeps to recognise its name key (an HMAC of a fixed label under
        it, which says nothing of the key); empty without one."""
        if self._name_key is None:
            return b""
        return hmac.new(self._name_key, _NAME_KEY_CHECK_LABEL, hashlib.sha256).digest()

    def blind_login(self, tenant: bytes, login: bytes) -> bytes:
        """The login index's name for `login` of (packed) `tenant`: HMAC-SHA256 under the
        name key, or the login itself without one."""
        if self._name_key is None:
            return login
        return hmac.new(self._name_key, _LOGIN_LABEL + tenant + login, hashlib.sha256).digest()

    def blind_tenant_name(self, name: bytes) -> bytes:
        """The tenant index's name for `name`: HMAC-SHA256 under the name key, or `name`
        itself without one."""
        if self._name_key is None:
            return name
        return hmac.new(self._name_key, _TENANT_NAME_LABEL + name, hashlib.sha256).digest()

    def tenant_record_aead(self) -> AESGCMSIV | None:
        """The cipher of tenant records (under a key derived from the name key: they are read
        before any DEK is unwrapped); None without a name key."""
        return self._tenant_records

    def audit_record_aead(self) -> AESGCMSIV | None:
        """The cipher of audit entries (under another key derived from the name key: the log
        spans tenants, and is read with no DEK); None without a name key."""
        return self._audit_records

    def blind_client_msg_id(self, tenant: bytes, cmid: bytes) -> bytes:
        """The dedupe index's name for `cmid` of (packed) `tenant`: a 16-byte keyed BLAKE2b
        under a key derived from the name key, or `cmid` itself without one."""
        if self._cmid_key is None:
            return cmid
        return hashlib.blake2b(tenant + cmid, key=self._cmid_key, digest_size=CMID_BLIND_BYTES,
                               person=_CMID_PERSON).digest()

    def content_digest(self, entry: bytes, content: bytes) -> bytes | None:
        """The dedupe index's digest of a message's `content` (its kind, body, ref and
        mentions, encoded) for `entry` (packed tenant, sender and blinded client_msg_id): a
        16-byte keyed BLAKE2b under a key derived from the name key, which no one without it
        can recompute or guess a body from; equal bodies of two entries differ. None without
        a name key: the store then keeps no digest, and compares a retry with the stored
        message instead."""
        if self._content_hash is None:
            return None
        digest = self._content_hash.copy()  # read only: safe while other threads copy it
        digest.update(entry + content)
        return digest.digest()

    # -- for the sealer -----------------------------------------------------------------------

    def aead(self, tenant: bytes, epoch: int) -> AESGCMSIV:
        """The cipher of (packed `tenant`, `epoch`); `KeyUnavailable` if missing or expired."""
        return self.dek(tenant, epoch).aead

    def bulk_aead(self, tenant: bytes, epoch: int) -> AESGCM:
        """The bulk tables' cipher of (packed `tenant`, `epoch`); as `aead`."""
        return self.dek(tenant, epoch).bulk

    def dek(self, tenant: bytes, epoch: int) -> _Dek:
        """Both ciphers of (packed `tenant`, `epoch`); as `aead`."""
        dek = self._keys.get(tenant, {}).get(epoch)
        if dek is None:
            why = self._gone.get((tenant, epoch))
            if why is not None:
                raise KeyUnavailable(
                    f"key epoch {epoch} of tenant {_tenant_id(tenant)} was {why}: its records "
                    f"are gone for good"
                )
            tenant_id = _tenant_id(tenant)
            for listener in self._missing_listeners:
                listener(tenant_id, epoch)
            raise KeyNotInstalled(
                f"the data key of tenant {tenant_id}, epoch {epoch}, is not installed: "
                f"the appliance has not unwrapped it (is the tenant's escrow reachable?)",
                tenant_id, epoch,
            )
        if dek.expires_at is not None and self._clock() >= dek.expires_at:
            raise KeyUnavailable(
                f"the data key of tenant {_tenant_id(tenant)}, epoch {epoch}, has expired: "
                f"the appliance must unwrap it again from the escrow"
            )
        return dek

    def write_epoch(self, tenant: bytes) -> int:
        """The current epoch of (packed) `tenant`; `KeyUnavailable` when it has none."""
        epoch = self._current.get(tenant)
        if epoch is None:
            if "revoked" in [why for (t, _), why in list(self._gone.items()) if t == tenant]:
                raise KeyUnavailable(
                    f"the escrow keys of tenant {_tenant_id(tenant)} were revoked: its data is "
                    f"gone for good, and it writes nothing until it gets a new key epoch"
                )
            raise KeyUnavailable(
                f"tenant {_tenant_id(tenant)} has no current key epoch: add one (AddKeyEpoch) "
                f"and install its data key before writing"
            )
        return epoch


# Nonces are drawn from os.urandom in chunks: one getrandom call costs about 0.5 µs here, a
# third of an append's seal. A pool is never shared with a forked child (it would repeat the
# parent's nonces): a fork makes every pool refill before its next nonce.
_NONCE_POOL_BYTES = 256 * NONCE_BYTES
_fork_generation = 0


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


class _NoncePool:
    """Fresh 96-bit nonces, `NONCE_BYTES` at a time from a buffer of `rng` output. Used by one
    writer at a time (the engine seals only inside its single write transaction)."""

    def __init__(self, rng: Callable[[int], bytes]) -> None:
        self._rng = rng
        self._pool = b""
        self._at = 0
        self._generation = _fork_generation

    def take(self) -> bytes:
        at = self._at
        if at + NONCE_BYTES > len(self._pool) or self._generation != _fork_generation:
            self._pool, at, self._generation = self._rng(_NONCE_POOL_BYTES), 0, _fork_generation
        self._at = at + NONCE_BYTES
        return self._pool[at:at + NONCE_BYTES]


class NameKeySealer:
    """A `RecordSealer` for the records that must open before any tenant's DEK is unwrapped
    (the tenant records: the appliance lists tenants to know whose keys to unwrap). AES-256-
    GCM-SIV under a key derived from the name key, which the appliance derives from the master
    key: unreadable from the disk alone, readable whenever the appliance runs. The header is
    `0x03 | epoch 0`; the associated data binds it, the table and the key as `AeadSealer`'s."""

    store_format = SEALED_FORMAT_VERSION

    def __init__(
        self, keyring: Keyring, *, rng: Callable[[int], bytes] = os.urandom, audit: bool = False,
    ) -> None:
        """With `audit`, seal audit entries, under their own key derived from the name key,
        instead of tenant records. Raises `Invalid` for a keyring without a name key."""
        aead = keyring.audit_record_aead() if audit else keyring.tenant_record_aead()
        if aead is None:
            raise Invalid("these records are sealed under the name key: the keyring has none")
        self._aead = aead
        self._rng = rng

    def seal(
        self, table: bytes, key: bytes, plaintext: bytes, epoch: int | None = None
    ) -> bytes:
        """`epoch` is ignored: the name key has none."""
        header = _HEADER.pack(NAME_SEALED_MARK, 0)
        nonce = self._rng(NONCE_BYTES)
        return header + nonce + self._aead.encrypt(nonce, plaintext, header + table + b"\0" + key)

    def open(self, table: bytes, key: bytes, stored: bytes) -> bytes:
        """Raises `CorruptData` for a record in another format, altered, or moved."""
        if len(stored) < _MIN_SEALED_BYTES or stored[0] != NAME_SEALED_MARK:
            raise CorruptData(f"a record in table {table.decode()} is not in its format")
        try:
            return self._aead.decrypt(stored[_HEADER_BYTES:_NONCE_END], stored[_NONCE_END:],
                                      stored[:_HEADER_BYTES] + table + b"\0" + key)
        except InvalidTag as exc:
            raise CorruptData(
                f"a record in table {table.decode()} failed authentication: it was altered, "
                f"or moved from another key or table"
            ) from exc


class AeadSealer:
    """A `RecordSealer` that seals under the tenant's current DEK: AES-256-GCM-SIV, or
    AES-256-GCM under the DEK's bulk subkey for the tables in `bulk_tables`.

    It counts its seals per (tenant, epoch) against `MAX_SEALS_PER_EPOCH`; the engine loads the
    persisted counts at open (`load_seal_counts`) and persists what `take_pending` returns in
    each batch's transaction. A count can only run ahead of the store (a refused op's seals
    are counted too), never behind it by more than one failed commit.
    """

    store_format = SEALED_FORMAT_VERSION

    def __init__(
        self, keyring: Keyring, *, bulk_tables: Iterable[bytes] = (),
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.keyring = keyring
        self._bulk_tables = frozenset(bulk_tables)
        self._nonces = _NoncePool(rng)
        self._sealed: dict[tuple[bytes, int], int] = {}
        self._pending: dict[tuple[bytes, int], int] = {}

    def load_seal_counts(self, counts: Iterable[tuple[int, int, int]]) -> None:
        """(tenant, epoch, seals) as stored; the larger of it and what this sealer counted."""
        for tenant, epoch, seals in counts:
            slot = (pack_id(tenant), epoch)
            self._sealed[slot] = max(seals, self._sealed.get(slot, 0))

    def take_pending(self) -> dict[tuple[int, int], int]:
        """Seals made since the last call, per (tenant, epoch), and start counting afresh."""
        pending, self._pending = self._pending, {}
        return {(_tenant_id(t), e): n for (t, e), n in pending.items()}

    def seal(
        self, table: bytes, key: bytes, plaintext: bytes, epoch: int | None = None
    ) -> bytes:
        """Seal under the tenant's (the key's first 8 bytes) current DEK, or under that of
        `epoch` when given (a record rewritten in place keeps its epoch, so that a shred of
        it takes what it would have taken). Raises `KeyUnavailable` when that DEK is not
        usable, or has sealed `MAX_SEALS_PER_EPOCH` records."""
        tenant = key[:8]
        keyring = self.keyring
        if epoch is None:
            epoch = keyring.write_epoch(tenant)
        aead: AESGCM | AESGCMSIV
        if table in self._bulk_tables:
            aead, mark = keyring.bulk_aead(tenant, epoch), BULK_SEALED_MARK
        else:
            aead, mark = keyring.aead(tenant, epoch), SEALED_MARK
        slot = (tenant, epoch)
        count = self._sealed.get(slot, 0)
        if count >= MAX_SEALS_PER_EPOCH:
            raise KeyUnavailable(
                f"key epoch {epoch} of tenant {_tenant_id(tenant)} has sealed "
                f"{MAX_SEALS_PER_EPOCH:,} records, its safe limit: add a new key epoch"
            )
        self._sealed[slot] = count + 1
        self._pending[slot] = self._pending.get(slot, 0) + 1
        header = _HEADER.pack(mark, epoch)
        nonce = self._nonces.take()
        return header + nonce + aead.encrypt(nonce, plaintext, header + table + b"\0" + key)

    def open(self, table: bytes, key: bytes, stored: bytes) -> bytes:
        """Raises `CorruptData` for a plain record (no downgrade), a damaged one, or one
        that was moved from another key, table or tenant; `KeyUnavailable` when the DEK of
        its epoch is missing, expired or shredded."""
        bulk = table in self._bulk_tables
        if len(stored) < _MIN_SEALED_BYTES or stored[0] != (
            BULK_SEALED_MARK if bulk else SEALED_MARK
        ):
            if stored[:1] == b"\x00":
                raise CorruptData(
                    f"a plain record in the sealed table {table.decode()}: refused (a sealed "
                    f"store never reads unencrypted records)"
                )
            raise CorruptData(f"a record in table {table.decode()} is not in its format")
        dek = self.keyring.dek(key[:8], _HEADER.unpack_from(stored)[1])
        try:
            return (dek.bulk if bulk else dek.aead).decrypt(
                stored[_HEADER_BYTES:_NONCE_END], stored[_NONCE_END:],
                stored[:_HEADER_BYTES] + table + b"\0" + key,
            )
        except InvalidTag as exc:
            raise CorruptData(
                f"a record in table {table.decode()} failed authentication: it was altered, "
                f"or moved from another key, table or tenant"
            ) from exc
