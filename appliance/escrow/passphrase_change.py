"""Changing the escrow passphrase. It seals three files of the escrow directory: `escrow.keys`
(Argon2id, appliance/keys/sealed_file.py) and `ca.key`, `server.key` (PKCS#8 PEM encrypted
with it), so all three are re-sealed, or `herald escrow serve` could not start.

Three files cannot be replaced in one atomic step. Each is replaced atomically, the keystore's
lock is held throughout (no `herald escrow serve` runs meanwhile or starts midway), and a file
that the new passphrase opens already is left as it is: so after a crash between two files,
running the same change again (same current and new passphrases) finishes it. Nothing is
written until every file has been opened.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from appliance.escrow.keystore import Keystore
from appliance.escrow.pki import (
    PASSPHRASE_KEY_FILES,
    change_private_key_passphrase,
    load_private_key,
)
from appliance.keys.errors import WrongPassphrase
from appliance.keys.sealed_file import DEFAULT_KDF, KdfParams, check_new_passphrase

__all__ = ["EscrowPassphraseChange"]


class EscrowPassphraseChange:
    """A change of the passphrase of one escrow directory, checked (`prepare`) before anything
    is written (`apply`). Holds the keystore's lock until `close`."""

    def __init__(self, keystore: Keystore, keystore_name: str, keystore_is_current: bool,
                 private_keys: dict[Path, ec.EllipticCurvePrivateKey], new_passphrase: str,
                 already_new: list[str]) -> None:
        self._keystore = keystore
        self._keystore_name = keystore_name
        self._keystore_is_current = keystore_is_current
        self._private_keys = private_keys  # those still under the current passphrase
        self._new_passphrase = new_passphrase
        self.already_new = already_new  # file names an interrupted change had done

    @classmethod
    def prepare(cls, directory: Path, keystore_name: str, current: str,
                new: str) -> EscrowPassphraseChange:
        """Open every file sealed by the escrow passphrase, with `current` or else `new`.
        Writes nothing. Raises `WeakPassphrase`, `KeystoreBusy` (the service runs),
        `WrongPassphrase` (a file opens with neither), `KeyFileMissing`, `DamagedKeyFile`,
        OSError."""
        check_new_passphrase(new)
        keystore, keystore_is_current = _open_keystore(directory / keystore_name, current, new)
        try:
            already_new = [] if keystore_is_current else [keystore_name]
            private_keys: dict[Path, ec.EllipticCurvePrivateKey] = {}
            for name in PASSPHRASE_KEY_FILES:
                path = directory / name
                try:
                    private_keys[path] = load_private_key(path, current)
                except WrongPassphrase:
                    if new == current:
                        raise
                    try:
                        load_private_key(path, new)
                    except WrongPassphrase:
                        raise WrongPassphrase(f"the current passphrase does not open {path}; "
                                              f"try again (nothing was changed)") from None
                    already_new.append(name)
        except BaseException:
            keystore.close()
            raise
        return cls(keystore, keystore_name, keystore_is_current, private_keys, new, already_new)

    def apply(self, *, kdf: KdfParams = DEFAULT_KDF) -> list[str]:
        """Re-seal what is still under the current passphrase (the keystore with Argon2id
        parameters `kdf`); the names of the files rewritten. Raises `DamagedKeyFile` when a
        file does not read back (that file is put back as it was), OSError."""
        rewritten = []
        for path, key in self._private_keys.items():
            change_private_key_passphrase(path, key, self._new_passphrase)
            rewritten.append(path.name)
        if self._keystore_is_current:  # last: it opening with the new one means all are done
            self._keystore.change_passphrase(self._new_passphrase, kdf=kdf)
            rewritten.append(self._keystore_name)
        return rewritten

    def close(self) -> None:
        """Release the keystore's lock."""
        self._keystore.close()


def _open_keystore(path: Path, current: str, new: str) -> tuple[Keystore, bool]:
    """The keystore, and whether `current` opened it (else `new` did: an interrupted change).
    Raises `WrongPassphrase` about the current passphrase when neither does."""
    try:
        return Keystore.open(path, current), True
    except WrongPassphrase as wrong:
        if new == current:
            raise
        refusal = wrong
    try:
        return Keystore.open(path, new), False
    except WrongPassphrase:
        raise refusal from None
