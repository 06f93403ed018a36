"""`Pkcs11MasterKey`: the appliance master key (MK) held in a PKCS#11 token that never lets it out.

`herald init --master-key pkcs11` generates two secret key objects in the token, both
`CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE` and not `CKA_EXTRACTABLE` (so also
`CKA_NEVER_EXTRACTABLE`): their values never exist outside the token.

    LABEL        AES-256, encrypt and decrypt only: the inner layer of every DEK,
                 inner = nonce (12, random) | AES-256-GCM(MK, nonce, DEK, aad) | tag (16)
    LABEL-name   a generic secret of 256 bits, sign only: the name key, which the engine needs
                 in memory to blind login names, is HMAC-SHA256(LABEL-name, "herald-name-key-v1")
                 computed in the token: the same after every restart, for the life of the object

Two objects rather than one so that each key serves one mechanism. Backing MK up is the HSM's
own business (its backup or cloning procedure): Herald cannot read it, so a token lost without
such a backup loses every stored message.
"""

from __future__ import annotations

import re
from typing import Any

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from appliance.keys.errors import (
    DekMismatch,
    HsmError,
    HsmPinLocked,
    HsmPinWrong,
    HsmSettingsError,
    HsmTokenMissing,
    HsmUnavailable,
    MasterKeyExists,
    MasterKeyMissing,
)
from appliance.keys.master import NAME_KEY_INFO
from appliance.keys.pkcs11_session import (
    GCM_NONCE_BYTES,
    GCM_TAG_BYTES,
    TokenErrors,
    TokenSession,
    gcm_open,
    gcm_seal,
)

__all__ = ["NAME_KEY_SUFFIX", "Pkcs11MasterKey", "check_key_label"]

NAME_KEY_SUFFIX = "-name"
_MAX_WRAP_BYTES = 4096
_LABEL = re.compile(r"[A-Za-z0-9._:-]{1,100}")
_SECRET = {Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
           Attribute.EXTRACTABLE: False, Attribute.WRAP: False, Attribute.UNWRAP: False,
           Attribute.DERIVE: False}
_ERRORS = TokenErrors(
    settings="keys", unavailable=HsmUnavailable, token_missing=HsmTokenMissing,
    pin_wrong=HsmPinWrong, pin_locked=HsmPinLocked, ambiguous=HsmSettingsError, refused=HsmError,
)


def check_key_label(label: str) -> str:
    """`label` if it is 1-100 characters of A-Z a-z 0-9 . _ : -, else `HsmSettingsError`."""
    if not _LABEL.fullmatch(label):
        raise HsmSettingsError("keys.pkcs11_key_label must be 1 to 100 characters of A-Z, a-z, "
                               "0-9, '.', '_', ':' or '-'; fix it in the configuration")
    return label


class Pkcs11MasterKey:
    """The `MasterKey` in one token of a PKCS#11 module. Thread-safe: one session, one lock; a
    session lost with its device is opened again by the next call.

    Every method raises `HsmUnavailable` (module not loadable, device gone: retry once the HSM
    is back), `HsmTokenMissing`, `HsmPinWrong`, `HsmPinLocked` when the session cannot be
    opened, and `MasterKeyMissing` when the token lacks the key objects.
    """

    def __init__(self, module_path: str, token_label: str, pin: str, key_label: str) -> None:
        self._token_label = token_label
        self._key_label = check_key_label(key_label)
        self._token = TokenSession(module_path, token_label, pin, _ERRORS, "the master key")

    @classmethod
    def open(cls, module_path: str, token_label: str, pin: str, key_label: str
             ) -> Pkcs11MasterKey:
        """The master key made earlier by `create`; `MasterKeyMissing` if it is not there."""
        master = cls(module_path, token_label, pin, key_label)
        try:
            master._token.run(lambda session: (master._aes_key(session), master._name_key(session)))
        except BaseException:
            master.close()
            raise
        return master

    @classmethod
    def create(cls, module_path: str, token_label: str, pin: str, key_label: str
               ) -> Pkcs11MasterKey:
        """Generate the two key objects in the token. `MasterKeyExists` when an object has
        either label already (never replaced: it may be another appliance's master key)."""
        master = cls(module_path, token_label, pin, key_label)
        try:
            master._token.run(master._generate)
        except BaseException:
            master.close()
            raise
        return master

    @property
    def key_label(self) -> str:
        """The label of the AES key object (the name key's is this plus "-name")."""
        return self._key_label

    # -- MasterKey ------------------------------------------------------------------------------

    def wrap(self, plaintext: bytes, aad: bytes) -> bytes:
        if len(plaintext) > _MAX_WRAP_BYTES:
            raise ValueError(f"at most {_MAX_WRAP_BYTES} bytes can be wrapped at once")

        def wrap(session: Any) -> bytes:
            return gcm_seal(self._aes_key(session), plaintext, aad)

        return self._token.run(wrap)

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        mismatch = DekMismatch(f"the master key in the PKCS#11 token {self._token_label!r} does "
                               f"not open the data: check that this token and key label "
                               f"belong to this data directory")
        if not GCM_NONCE_BYTES + GCM_TAG_BYTES <= len(blob) <= _MAX_WRAP_BYTES + 64:
            raise mismatch

        def unwrap(session: Any) -> bytes:
            return gcm_open(self._aes_key(session), blob, aad, mismatch)

        return self._token.run(unwrap)

    def derive_name_key(self) -> bytes:
        def derive(session: Any) -> bytes:
            mac: bytes = self._name_key(session).sign(NAME_KEY_INFO,
                                                      mechanism=Mechanism.SHA256_HMAC)
            return mac

        return self._token.run(derive)

    def describe(self) -> str:
        return (f"in the PKCS#11 token {self._token_label!r} (key objects {self._key_label!r} "
                f"and {self._key_label + NAME_KEY_SUFFIX!r}, not extractable)")

    def close(self) -> None:
        self._token.close()

    # -- the key objects ------------------------------------------------------------------------

    def _generate(self, session: Any) -> None:
        for label in (self._key_label, self._key_label + NAME_KEY_SUFFIX):
            if any(True for _ in session.get_objects({Attribute.LABEL: label})):
                raise MasterKeyExists(
                    f"the PKCS#11 token {self._token_label!r} already holds an object labelled "
                    f"{label!r} (another appliance's master key, or an interrupted init): "
                    f"choose another keys.pkcs11_key_label, or have the HSM's administrator "
                    f"remove it if it is certainly unused")
        session.generate_key(KeyType.AES, 256, label=self._key_label, store=True, template={
            **_SECRET, Attribute.ENCRYPT: True, Attribute.DECRYPT: True, Attribute.SIGN: False,
            Attribute.VERIFY: False})
        session.generate_key(KeyType.GENERIC_SECRET, 256, label=self._key_label + NAME_KEY_SUFFIX,
                             store=True, template={
                                 **_SECRET, Attribute.SIGN: True, Attribute.VERIFY: False,
                                 Attribute.ENCRYPT: False, Attribute.DECRYPT: False})

    def _aes_key(self, session: Any) -> Any:
        return self._find(session, self._key_label, KeyType.AES)

    def _name_key(self, session: Any) -> Any:
        return self._find(session, self._key_label + NAME_KEY_SUFFIX, KeyType.GENERIC_SECRET)

    def _find(self, session: Any, label: str, key_type: KeyType) -> Any:
        keys = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                         Attribute.KEY_TYPE: key_type, Attribute.LABEL: label}))
        if not keys:
            raise MasterKeyMissing(
                f"the PKCS#11 token {self._token_label!r} holds no master key object labelled "
                f"{label!r}: check keys.pkcs11_token and keys.pkcs11_key_label; if the key was "
                f"deleted, only the HSM's backup can bring it (and the stored data) back")
        if len(keys) > 1:
            raise HsmSettingsError(f"the PKCS#11 token {self._token_label!r} holds {len(keys)} "
                                   f"keys labelled {label!r}; the HSM's administrator must find "
                                   f"out why and remove the extra ones")
        return keys[0]
