"""The appliance master key (MK): the `MasterKey` seam, and MK kept in a passphrase-sealed file.

MK is the appliance's half of every DEK (docs/security.md, "The key hierarchy"); the escrow
holds the other half. It lives either here, 32 random bytes in `data_dir/master.key` (mode 0600,
format in appliance/keys/sealed_file.py), or in a PKCS#11 token that never lets it out
(appliance/keys/pkcs11_master.py). Losing the file or its passphrase (or the token) makes every
DEK unreadable: back it up, apart from the data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.keys.errors import DamagedKeyFile, DekMismatch
from appliance.keys.sealed_file import (
    DEFAULT_KDF,
    KdfParams,
    open_sealed,
    replace_passphrase,
    seal,
)

__all__ = [
    "MASTER_KEY_BYTES",
    "MASTER_KEY_FORMAT",
    "NAME_KEY_INFO",
    "FileMasterKey",
    "MasterKey",
    "change_master_key_passphrase",
    "create_master_key",
    "load_master_key",
]

MASTER_KEY_BYTES = 32
MASTER_KEY_FORMAT = "herald-master-key-v1"  # also the AES-GCM associated data of the file
NAME_KEY_INFO = b"herald-name-key-v1"  # HKDF info (file) or HMAC message (HSM) of the name key
_NONCE_BYTES = 12
_TAG_BYTES = 16


class MasterKey(Protocol):
    """What the appliance does with MK, wherever MK lives. Blocking calls (an HSM may answer
    them): the server makes them from worker threads."""

    def wrap(self, plaintext: bytes, aad: bytes) -> bytes:
        """The inner layer of a DEK: `plaintext` encrypted under MK, bound to `aad`."""

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        """Open what `wrap` made with the same `aad`; `DekMismatch` when MK does not open it
        (another MK, another aad, an altered blob)."""

    def derive_name_key(self) -> bytes:
        """The 32-byte key that blinds login names: the same for the life of MK."""

    def describe(self) -> str:
        """Where MK lives, for operators (never any key material)."""

    def close(self) -> None:
        """Release what MK holds (an HSM session)."""


class FileMasterKey:
    """MK as 32 bytes in memory, loaded from `master.key`. The inner layer is
    nonce (12) | AES-256-GCM-SIV(MK, nonce, plaintext, aad) (docs/security.md, "The master key");
    the name key is HKDF-SHA256(MK, info = "herald-name-key-v1")."""

    def __init__(self, key: bytes, path: Path | None = None) -> None:
        if len(key) != MASTER_KEY_BYTES:
            raise ValueError("a master key is 32 bytes")
        self._key = key
        self._path = path

    def wrap(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + AESGCMSIV(self._key).encrypt(nonce, plaintext, aad)

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        mismatch = DekMismatch("this master key does not open the data: check that master.key "
                               "belongs to this data directory")
        if len(blob) < _NONCE_BYTES + _TAG_BYTES:
            raise mismatch
        try:
            return AESGCMSIV(self._key).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], aad)
        except InvalidTag:
            raise mismatch from None

    def derive_name_key(self) -> bytes:
        return HKDF(hashes.SHA256(), 32, salt=None, info=NAME_KEY_INFO).derive(self._key)

    def describe(self) -> str:
        where = f" {self._path}" if self._path is not None else ""
        return f"in the passphrase-sealed file{where}"

    def close(self) -> None:
        """Nothing to release: the key bytes go with the object."""


def create_master_key(path: Path, passphrase: str, *, kdf: KdfParams = DEFAULT_KDF) -> bytes:
    """Create a new master key, seal it in `path` under `passphrase` and return it.

    Raises `KeyFileExists` rather than overwrite a key file, `WeakPassphrase` for a short
    passphrase, OSError when the file cannot be written.
    """
    master_key = os.urandom(MASTER_KEY_BYTES)
    seal(Path(path), passphrase, master_key, MASTER_KEY_FORMAT, kdf=kdf)
    return master_key


def load_master_key(path: Path, passphrase: str) -> bytes:
    """The master key sealed in `path`.

    Raises `WrongPassphrase`, `DamagedKeyFile` (truncated or altered file, or not a master key
    file) or `KeyFileMissing`.
    """
    master_key, _ = open_sealed(Path(path), passphrase, MASTER_KEY_FORMAT)
    if len(master_key) != MASTER_KEY_BYTES:
        raise DamagedKeyFile(f"{path} holds no valid master key; restore it from a backup")
    return master_key


def change_master_key_passphrase(path: Path, master_key: bytes, new_passphrase: str, *,
                                 kdf: KdfParams = DEFAULT_KDF) -> None:
    """Seal the same `master_key` (what `load_master_key(path, current)` returned) in `path`
    under `new_passphrase`, with a fresh salt and nonce and today's Argon2id parameters `kdf`,
    atomically, and check that it reads back. Copies of the old file still open with the old
    passphrase.

    Raises `WeakPassphrase` (nothing written), `DamagedKeyFile` when the new file does not read
    back (the old one is put back), OSError.
    """
    if len(master_key) != MASTER_KEY_BYTES:
        raise ValueError("a master key is 32 bytes")
    replace_passphrase(Path(path), master_key, new_passphrase, MASTER_KEY_FORMAT, kdf=kdf)
