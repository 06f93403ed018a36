"""Errors of the key layer: the master key (file or HSM), DEK wrapping and the escrow backends.

Each class has a stable `code` (it reaches logs, the admin API and the escrow wire protocol) and
a message that says what to do next. A message never contains key material, a passphrase or a
PIN: callers may log it as it is.
"""

from __future__ import annotations

__all__ = [
    "DamagedKeyFile",
    "DekMismatch",
    "EscrowCertificateRefused",
    "EscrowError",
    "EscrowRefused",
    "EscrowUnavailable",
    "HsmError",
    "HsmPinLocked",
    "HsmPinWrong",
    "HsmSettingsError",
    "HsmTokenMissing",
    "HsmUnavailable",
    "KeyFileExists",
    "KeyFileMissing",
    "KeyManagementError",
    "MasterKeyExists",
    "MasterKeyInHsm",
    "MasterKeyMissing",
    "PassphraseChangeBusy",
    "WeakPassphrase",
    "WrongPassphrase",
]


class KeyManagementError(Exception):
    """Base of the key layer's errors. `code` is stable; `message` says what to do."""

    code = "key_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class WrongPassphrase(KeyManagementError):
    """The passphrase does not open the key file (the file itself is intact)."""

    code = "wrong_passphrase"


class WeakPassphrase(KeyManagementError):
    """A new key file was refused a passphrase that is too short."""

    code = "weak_passphrase"


class MasterKeyInHsm(KeyManagementError):
    """A passphrase change was asked for a master key that lives in an HSM: it has no
    passphrase; the token's PIN is changed with the HSM's own tools."""

    code = "master_key_in_hsm"


class PassphraseChangeBusy(KeyManagementError):
    """Another process is changing the passphrase of the same key file: let it finish."""

    code = "passphrase_change_busy"


class DamagedKeyFile(KeyManagementError):
    """The key file is truncated, altered or not a key file at all: restore it from a backup."""

    code = "damaged_key_file"


class KeyFileExists(KeyManagementError):
    """Creating a key file would overwrite an existing one (and lose the key inside it)."""

    code = "key_file_exists"


class KeyFileMissing(KeyManagementError):
    """The key file is not where it was expected."""

    code = "key_file_missing"


class DekMismatch(KeyManagementError):
    """The escrow opened its layer but the master key does not open the inner one: the
    master.key file belongs to another installation, or the stored DEK was altered."""

    code = "dek_mismatch"


class EscrowError(KeyManagementError):
    """Base of the escrow's errors."""

    code = "escrow_error"


class EscrowUnavailable(EscrowError):
    """The escrow cannot be reached or is not working right now: retry later."""

    code = "escrow_unavailable"


class EscrowCertificateRefused(EscrowUnavailable):
    """The TLS session with the escrow service failed on a certificate: this appliance's
    (expired, or not from the escrow's CA) or the service's (expired, or not from [escrow]
    ca_file). No request reached the escrow, so this says nothing about any key: it is
    unavailable until the certificate is fixed. So held data keys stay until their cache
    lifetime ends (an `EscrowRefused` would drop them at once and report the tenant revoked),
    and a revocation is not taken for done."""

    code = "escrow_certificate_refused"


class EscrowRefused(EscrowError):
    """The escrow refused: a revoked or unknown key, a failed authentication or integrity check,
    or a request it does not accept. Retrying the same request will not help."""

    code = "escrow_refused"


class HsmError(KeyManagementError):
    """Base of the errors of a master key held in a PKCS#11 token (appliance/keys/pkcs11_master.py).
    The escrow's own HSM, if it has one, reports `EscrowError`s instead."""

    code = "hsm_error"


class HsmUnavailable(HsmError):
    """The PKCS#11 module cannot be loaded, or the token stopped answering: check the HSM (its
    connection, its software) and retry."""

    code = "hsm_unavailable"


class HsmTokenMissing(HsmError):
    """No token carries the configured label: the HSM is not connected, or the label is wrong."""

    code = "hsm_token_missing"


class HsmPinWrong(HsmError):
    """The token refused the PIN read from the PIN file: correct the file."""

    code = "hsm_pin_wrong"


class HsmPinLocked(HsmError):
    """The token locked its user PIN after too many failures: its security officer must unlock
    it (retrying only adds failures)."""

    code = "hsm_pin_locked"


class HsmSettingsError(HsmError):
    """The `[keys] pkcs11_*` settings are missing, unreadable or contradict the data directory."""

    code = "hsm_settings"


class MasterKeyMissing(HsmError):
    """The token answers but holds no master key object with the configured label: wrong label,
    wrong token, or the key was deleted (then only the HSM's backup can bring it back)."""

    code = "master_key_missing"


class MasterKeyExists(HsmError):
    """Creating the master key in the token would clash with objects of the same label."""

    code = "master_key_exists"
