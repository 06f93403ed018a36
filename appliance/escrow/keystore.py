"""The escrow service's keys: one AES-256 key per key id, in a file sealed by the escrow's own
passphrase (format "herald-escrow-keys-v1", see appliance/keys/sealed_file.py).

Every change rewrites the whole file atomically (temp file, fsync, rename) before it is
acknowledged. One process at a time has a keystore open (an exclusive lock on
`escrow.keys.lock`): a second one would overwrite the first one's changes. `revoke` drops the
key material from the file and remembers the key id as revoked, so that neither the key nor the
key id ever comes back. Thread-safe.

A key belongs to the client that created it (the subject of its TLS certificate): another
appliance with a certificate from the same CA can neither use nor revoke it, nor learn that it
exists. The escrow's operator (`owner=None`, on the escrow machine) can revoke any key.

    wrapped = 0x01 | nonce (12) | AES-256-GCM(EK, nonce, plaintext, aad) with its tag (16)
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appliance.keys.errors import (
    DamagedKeyFile,
    EscrowRefused,
    EscrowUnavailable,
    KeyManagementError,
)
from appliance.keys.escrow import MAX_WRAP_BYTES, KeyState, check_key_id
from appliance.keys.sealed_file import (
    DEFAULT_KDF,
    KdfParams,
    SealingKey,
    open_sealed,
    replace_passphrase,
    reseal,
    seal,
)
from appliance.lock_file import HeldLock, LockHeld, hold_exclusively

__all__ = ["KEYSTORE_FORMAT", "Keystore", "KeystoreBusy"]

KEYSTORE_FORMAT = "herald-escrow-keys-v1"
_VERSION = b"\x01"
_NONCE_BYTES = 12
_TAG_BYTES = 16


class KeystoreBusy(KeyManagementError):
    """Another process (a running `herald escrow serve`) has the keystore open."""

    code = "keystore_busy"


def _lock(path: Path) -> HeldLock:
    try:
        return hold_exclusively(path.with_name(path.name + ".lock"))
    except LockHeld as exc:
        holder = f"process {exc.pid}" if exc.pid else "another process"
        raise KeystoreBusy(f"{holder} has {path} open (a running `herald escrow serve`?); stop "
                           f"it first, or revoke through it") from None


class _Entry(msgspec.Struct, forbid_unknown_fields=True):
    state: str  # "active" | "revoked"
    created: str
    owner: str  # the creating client's certificate subject
    key: bytes | None = None  # None once revoked
    revoked: str | None = None


class Keystore:
    """The escrow keys of one escrow directory, held in memory and persisted on every change."""

    def __init__(self, path: Path, sealing_key: SealingKey, entries: dict[str, _Entry],
                 lock_file: HeldLock) -> None:
        self._path = path
        self._lock_file = lock_file
        self._sealing_key = sealing_key
        self._entries = entries
        self._lock = threading.Lock()

    @classmethod
    def create(cls, path: Path, passphrase: str) -> Keystore:
        """A new, empty keystore at `path`. Raises `KeyFileExists`, `WeakPassphrase`, OSError."""
        lock_file = _lock(path)
        try:
            sealing_key = seal(path, passphrase, _encode({}), KEYSTORE_FORMAT)
        except BaseException:
            lock_file.release()
            raise
        return cls(path, sealing_key, {}, lock_file)

    @classmethod
    def open(cls, path: Path, passphrase: str) -> Keystore:
        """Raises `KeystoreBusy`, `KeyFileMissing`, `WrongPassphrase`, `DamagedKeyFile`."""
        if not path.exists():
            open_sealed(path, passphrase, KEYSTORE_FORMAT)  # raises KeyFileMissing
        lock_file = _lock(path)
        try:
            payload, sealing_key = open_sealed(path, passphrase, KEYSTORE_FORMAT)
            entries = msgspec.msgpack.decode(payload, type=dict[str, _Entry])
        except msgspec.DecodeError:
            lock_file.release()
            raise DamagedKeyFile(f"{path} opens but its content is not a keystore; restore it "
                                 f"from a backup") from None
        except BaseException:
            lock_file.release()
            raise
        return cls(path, sealing_key, entries, lock_file)

    def close(self) -> None:
        """Release the keystore for another process."""
        self._lock_file.release()

    def change_passphrase(self, new_passphrase: str, *, kdf: KdfParams = DEFAULT_KDF) -> None:
        """Seal the same keys under `new_passphrase` (fresh salt, Argon2id parameters `kdf`),
        atomically, and check that the file reads back; later changes are sealed under it too.
        Raises `WeakPassphrase` (nothing written), `DamagedKeyFile` (the old file is put back),
        OSError."""
        with self._lock:
            self._sealing_key = replace_passphrase(self._path, _encode(self._entries),
                                                   new_passphrase, KEYSTORE_FORMAT, kdf=kdf)

    def key_states(self) -> dict[str, tuple[KeyState, str]]:
        """Every key id, its state and its owner."""
        return {key_id: (self.status(key_id, None), self._entries[key_id].owner)
                for key_id in sorted(self._entries)}

    def create_key(self, key_id: str, owner: str) -> None:
        check_key_id(key_id)
        with self._lock:
            if key_id in self._entries:
                raise EscrowRefused(f"the escrow key {key_id!r} exists or was revoked; choose a "
                                    f"new key id")
            entry = _Entry(state="active", created=_now(), owner=owner, key=os.urandom(32))
            self._commit({**self._entries, key_id: entry})

    def wrap(self, key_id: str, plaintext: bytes, aad: bytes, owner: str) -> bytes:
        if len(plaintext) > MAX_WRAP_BYTES:
            raise EscrowRefused(f"at most {MAX_WRAP_BYTES} bytes can be wrapped at once")
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + AESGCM(self._key(key_id, owner)).encrypt(nonce, plaintext, aad)

    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes, owner: str) -> bytes:
        key = self._key(key_id, owner)
        refused = EscrowRefused(f"the escrow key {key_id!r} does not open this data with this "
                                f"associated data: it was altered or belongs elsewhere")
        if len(wrapped) < 1 + _NONCE_BYTES + _TAG_BYTES or wrapped[:1] != _VERSION:
            raise refused
        try:
            return AESGCM(key).decrypt(wrapped[1:1 + _NONCE_BYTES], wrapped[1 + _NONCE_BYTES:],
                                       aad)
        except InvalidTag:
            raise refused from None

    def revoke(self, key_id: str, owner: str | None) -> None:
        """Destroy the key; `owner` None is the escrow's operator, who may revoke any key."""
        check_key_id(key_id)
        with self._lock:
            entry = self._visible(key_id, owner)
            if entry is None:
                raise EscrowRefused(f"there is no escrow key {key_id!r} to revoke; check the "
                                    f"key id")
            if entry.state == "revoked":
                return
            revoked = _Entry(state="revoked", created=entry.created, owner=entry.owner,
                             revoked=_now())
            self._commit({**self._entries, key_id: revoked})

    def status(self, key_id: str, owner: str | None) -> KeyState:
        check_key_id(key_id)
        entry = self._visible(key_id, owner)
        if entry is None:
            return "missing"
        return "active" if entry.state == "active" else "revoked"

    def _visible(self, key_id: str, owner: str | None) -> _Entry | None:
        """The entry of `key_id` as `owner` may see it: another client's key is "missing"."""
        entry = self._entries.get(key_id)
        if entry is not None and owner is not None and entry.owner != owner:
            return None
        return entry

    def _key(self, key_id: str, owner: str) -> bytes:
        check_key_id(key_id)
        entry = self._visible(key_id, owner)
        if entry is None or entry.key is None:
            state = "missing" if entry is None else "revoked"
            raise EscrowRefused(f"the escrow key {key_id!r} is {state}; data wrapped by it "
                                f"cannot be opened")
        return entry.key

    def _commit(self, entries: dict[str, _Entry]) -> None:
        """Persist `entries`, then adopt them: memory never runs ahead of the disk."""
        try:
            reseal(self._path, self._sealing_key, _encode(entries), KEYSTORE_FORMAT)
        except OSError as exc:
            raise EscrowUnavailable(f"the escrow cannot write its keystore ({exc.strerror}); "
                                    f"the change was not made: fix the disk and retry") from None
        self._entries = entries


def _encode(entries: dict[str, _Entry]) -> bytes:
    return msgspec.msgpack.encode(entries)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
