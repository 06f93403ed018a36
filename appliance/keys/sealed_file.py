"""Files sealed by a passphrase, and atomic file replacement.

A sealed file is a small JSON document:

    {"format": "herald-master-key-v1",
     "kdf": {"name": "argon2id", "memory_kib": 65536, "iterations": 3, "lanes": 1, "salt": B64},
     "nonce": B64, "ciphertext": B64, "checksum": HEX}

passphrase --Argon2id(kdf)--> KEK; ciphertext = AES-256-GCM(KEK, nonce, payload, aad=format).
The KDF parameters travel in the file so that they can be raised later without breaking old
files. `checksum` is the SHA-256 of everything else (public data only): it tells a damaged file
apart from a wrong passphrase, which AES-GCM alone cannot.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from appliance.keys.errors import (
    DamagedKeyFile,
    KeyFileExists,
    KeyFileMissing,
    KeyManagementError,
    WeakPassphrase,
    WrongPassphrase,
)

__all__ = [
    "DEFAULT_KDF",
    "MIN_PASSPHRASE_CHARS",
    "KdfParams",
    "SealingKey",
    "check_new_passphrase",
    "open_sealed",
    "replace_passphrase",
    "reseal",
    "seal",
    "write_atomically",
]

MIN_PASSPHRASE_CHARS = 12
_SALT_BYTES = 16
_NONCE_BYTES = 12
_MAX_FILE_BYTES = 16 * 2**20


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id parameters. The bounds stop a damaged file from asking for absurd work."""

    memory_kib: int = 64 * 1024
    iterations: int = 3
    lanes: int = 1

    def check(self) -> None:
        if not (8 * 1024 <= self.memory_kib <= 4 * 2**20 and 1 <= self.iterations <= 64
                and 1 <= self.lanes <= 16):
            raise ValueError("Argon2id parameters out of bounds")


DEFAULT_KDF = KdfParams()


@dataclass(frozen=True, slots=True)
class SealingKey:
    """A KEK derived from a passphrase, with the salt and parameters that made it.

    Deriving is slow on purpose (Argon2id); a process that rewrites its sealed file often (the
    escrow's keystore) derives once and reseals with this, under a fresh nonce each time.
    """

    kek: bytes
    salt: bytes
    kdf: KdfParams

    @classmethod
    def derive(cls, passphrase: str, salt: bytes | None = None,
               kdf: KdfParams = DEFAULT_KDF) -> SealingKey:
        kdf.check()
        salt = os.urandom(_SALT_BYTES) if salt is None else salt
        kek = Argon2id(salt=salt, length=32, iterations=kdf.iterations, lanes=kdf.lanes,
                       memory_cost=kdf.memory_kib).derive(passphrase.encode())
        return cls(kek, salt, kdf)

    def __repr__(self) -> str:
        return f"SealingKey(kdf={self.kdf!r})"  # never the KEK


def _checksum(document: dict[str, Any]) -> str:
    body = {k: v for k, v in document.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest()


def write_atomically(path: Path, data: bytes, mode: int = 0o600, *,
                     exclusive: bool = False) -> None:
    """Replace `path` by `data` so that a crash leaves the old file or the new one, never a
    mix: write a temporary file beside it with `mode`, fsync it, rename it over, fsync the
    directory. With `exclusive`, raise FileExistsError rather than replace an existing file
    (even one created meanwhile by another process). Raises OSError."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by the umask; this one is not
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if exclusive:
        try:
            os.link(tmp, path)  # unlike rename, link never replaces its target
        finally:
            os.unlink(tmp)
    else:
        os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def check_new_passphrase(passphrase: str) -> None:
    """Raises `WeakPassphrase` for a passphrase under MIN_PASSPHRASE_CHARS."""
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise WeakPassphrase(f"a passphrase needs at least {MIN_PASSPHRASE_CHARS} characters; "
                             f"choose a longer one")


def seal(path: Path, passphrase: str, payload: bytes, file_format: str, *,
         kdf: KdfParams = DEFAULT_KDF) -> SealingKey:
    """Write `payload` to the new file `path` sealed by `passphrase` (mode 0600, atomically);
    returns the key that can reseal it.

    Raises `WeakPassphrase` for a passphrase under MIN_PASSPHRASE_CHARS, `KeyFileExists` when
    `path` exists, OSError when it cannot be written.
    """
    check_new_passphrase(passphrase)
    exists = KeyFileExists(f"{path} already exists and holds a key; move it away first if you "
                           f"really mean to replace it (the key inside would be lost)")
    if path.exists():
        raise exists  # before the slow derivation; the exclusive write below closes the race
    key = SealingKey.derive(passphrase, kdf=kdf)
    try:
        reseal(path, key, payload, file_format, exclusive=True)
    except FileExistsError:
        raise exists from None
    return key


def reseal(path: Path, key: SealingKey, payload: bytes, file_format: str, *,
           exclusive: bool = False) -> None:
    """Atomically replace `path` by `payload` sealed under `key` (`exclusive`: see
    `write_atomically`). Raises OSError."""
    nonce = os.urandom(_NONCE_BYTES)
    ciphertext = AESGCM(key.kek).encrypt(nonce, payload, file_format.encode())
    document: dict[str, Any] = {
        "format": file_format,
        "kdf": {"name": "argon2id", "memory_kib": key.kdf.memory_kib,
                "iterations": key.kdf.iterations, "lanes": key.kdf.lanes, "salt": _b64(key.salt)},
        "nonce": _b64(nonce),
        "ciphertext": _b64(ciphertext),
    }
    document["checksum"] = _checksum(document)
    write_atomically(path, (json.dumps(document, indent=1) + "\n").encode(), exclusive=exclusive)


def replace_passphrase(path: Path, payload: bytes, new_passphrase: str, file_format: str, *,
                       kdf: KdfParams = DEFAULT_KDF) -> SealingKey:
    """Reseal `payload` (what `path` holds, opened by the caller with the current passphrase)
    under `new_passphrase`, with a fresh salt and nonce and the parameters `kdf`, atomically;
    then read the new file back. Returns the key that reseals it.

    Raises `WeakPassphrase` (nothing written), `DamagedKeyFile` when the new file does not
    give `payload` back (the previous file is put back first), OSError.
    """
    check_new_passphrase(new_passphrase)
    previous = path.read_bytes()
    key = SealingKey.derive(new_passphrase, kdf=kdf)
    reseal(path, key, payload, file_format)
    try:
        reopened, _ = open_sealed(path, new_passphrase, file_format)
    except KeyManagementError:
        reopened = None
    if reopened != payload:
        # Unreachable on a sound disk; if it happens, the old file is the one that works.
        write_atomically(path, previous)
        raise DamagedKeyFile(f"{path} did not read back as written, so the previous file was "
                             f"put back (the passphrase is unchanged): check the disk")
    return key


def open_sealed(path: Path, passphrase: str, file_format: str) -> tuple[bytes, SealingKey]:
    """The payload sealed in `path`, and the key that reseals it.

    Raises `KeyFileMissing`, `DamagedKeyFile` (truncated, altered, another format) or
    `WrongPassphrase`.
    """
    try:
        with path.open("rb") as file:
            raw = file.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise KeyFileMissing(f"there is no key file at {path}; check the path, or create "
                             f"one first") from None
    damaged = DamagedKeyFile(f"{path} is damaged or is not a {file_format} file; restore it "
                             f"from a backup")
    try:
        document = json.loads(raw)
        if document["format"] != file_format:
            raise DamagedKeyFile(f"{path} is a {document['format']!r} file, not "
                                 f"{file_format!r}; check the path")
        if _checksum(document) != document["checksum"]:
            raise damaged
        params = document["kdf"]
        if params["name"] != "argon2id":
            raise damaged
        kdf = KdfParams(int(params["memory_kib"]), int(params["iterations"]),
                        int(params["lanes"]))
        kdf.check()
        salt, nonce = _unb64(params["salt"]), _unb64(document["nonce"])
        ciphertext = _unb64(document["ciphertext"])
        if len(salt) < 8 or len(nonce) != _NONCE_BYTES:
            raise damaged
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise damaged from None
    key = SealingKey.derive(passphrase, salt, kdf)
    try:
        return AESGCM(key.kek).decrypt(nonce, ciphertext, file_format.encode()), key
    except InvalidTag:
        raise WrongPassphrase(f"the passphrase does not open {path}; try again (the file "
                              f"itself is intact)") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise TypeError("not base64 text")
    return base64.b64decode(text, validate=True)
