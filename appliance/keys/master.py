"""The appliance master key (MK): 32 random bytes, kept only in a passphrase-sealed file.

MK is the appliance's half of every DEK (docs/security.md, "The key hierarchy"); the escrow
holds the other half. The file is `data_dir/master.key`, mode 0600; its format is described in
appliance/keys/sealed_file.py. Losing the file or its passphrase makes every DEK unreadable: back
it up, apart from the data.
"""

from __future__ import annotations

import os
from pathlib import Path

from appliance.keys.errors import DamagedKeyFile
from appliance.keys.sealed_file import DEFAULT_KDF, KdfParams, open_sealed, seal

__all__ = ["MASTER_KEY_BYTES", "MASTER_KEY_FORMAT", "create_master_key", "load_master_key"]

MASTER_KEY_BYTES = 32
MASTER_KEY_FORMAT = "herald-master-key-v1"  # also the AES-GCM associated data of the file


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
