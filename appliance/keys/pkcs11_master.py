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

import contextlib
import os
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams

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

__all__ = ["NAME_KEY_SUFFIX", "Pkcs11MasterKey", "check_key_label"]

NAME_KEY_SUFFIX = "-name"
_NONCE_BYTES = 12
_TAG_BYTES = 16
_MAX_WRAP_BYTES = 4096
_LABEL = re.compile(r"[A-Za-z0-9._:-]{1,100}")
# The token, its session or the device is gone: the same call may work once it is back.
_GONE = (p11.DeviceError, p11.DeviceMemory, p11.DeviceRemoved, p11.SessionClosed,
         p11.SessionHandleInvalid, p11.TokenNotPresent, p11.TokenNotRecognised,
         p11.HostMemory, p11.UserNotLoggedIn, p11.SessionCount)
_SECRET = {Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
           Attribute.EXTRACTABLE: False, Attribute.WRAP: False, Attribute.UNWRAP: False,
           Attribute.DERIVE: False}
_T = TypeVar("_T")


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
        self._module_path = module_path
        self._token_label = token_label
        self._pin = pin
        self._key_label = check_key_label(key_label)
        self._lock = threading.Lock()
        self._session: Any = None
        with self._lock:
            self._open_session()

    @classmethod
    def open(cls, module_path: str, token_label: str, pin: str, key_label: str
             ) -> Pkcs11MasterKey:
        """The master key made earlier by `create`; `MasterKeyMissing` if it is not there."""
        master = cls(module_path, token_label, pin, key_label)
        try:
            master._run(lambda session: (master._aes_key(session), master._name_key(session)))
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
            master._run(master._generate)
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
        nonce = os.urandom(_NONCE_BYTES)

        def wrap(session: Any) -> bytes:
            sealed: bytes = self._aes_key(session).encrypt(
                plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad))
            return nonce + sealed

        return self._run(wrap)

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        mismatch = DekMismatch(f"the master key in the PKCS#11 token {self._token_label!r} does "
                               f"not open the data: check that this token and key label "
                               f"belong to this data directory")
        if not _NONCE_BYTES + _TAG_BYTES <= len(blob) <= _MAX_WRAP_BYTES + 64:
            raise mismatch
        nonce, sealed = blob[:_NONCE_BYTES], blob[_NONCE_BYTES:]

        def unwrap(session: Any) -> bytes:
            key = self._aes_key(session)
            try:
                plain: bytes = key.decrypt(sealed, mechanism=Mechanism.AES_GCM,
                                           mechanism_param=GCMParams(nonce, aad))
            except _GONE:
                raise
            except p11.PKCS11Error:
                # Tokens report a failed GCM tag variously (SoftHSM2: CKR_GENERAL_ERROR).
                raise mismatch from None
            return plain

        return self._run(unwrap)

    def derive_name_key(self) -> bytes:
        def derive(session: Any) -> bytes:
            mac: bytes = self._name_key(session).sign(NAME_KEY_INFO,
                                                      mechanism=Mechanism.SHA256_HMAC)
            return mac

        return self._run(derive)

    def describe(self) -> str:
        return (f"in the PKCS#11 token {self._token_label!r} (key objects {self._key_label!r} "
                f"and {self._key_label + NAME_KEY_SUFFIX!r}, not extractable)")

    def close(self) -> None:
        with self._lock:
            self._close_session()

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

    # -- the session ----------------------------------------------------------------------------

    def _run(self, action: Callable[[Any], _T]) -> _T:
        """Run `action(session)` under the lock, translating PKCS#11 errors in one place."""
        with self._lock:
            if self._session is None:
                self._open_session()
            try:
                return action(self._session)
            except _GONE as exc:
                self._close_session()  # opened afresh by the next call
                raise HsmUnavailable(f"the PKCS#11 token {self._token_label!r} stopped "
                                     f"answering ({type(exc).__name__}); check the HSM and "
                                     f"retry") from None
            except p11.PKCS11Error as exc:
                raise HsmError(f"the PKCS#11 token {self._token_label!r} refused an operation "
                               f"on the master key ({type(exc).__name__}); check the token and "
                               f"its key objects") from None

    def _open_session(self) -> None:
        try:
            lib = pkcs11.lib(self._module_path)
        except (RuntimeError, OSError) as exc:
            raise HsmUnavailable(f"cannot load the PKCS#11 module {self._module_path}: "
                                 f"{type(exc).__name__}; check keys.pkcs11_module and that the "
                                 f"HSM's software is installed") from None
        try:
            token = lib.get_token(token_label=self._token_label)
        except p11.NoSuchToken:
            raise HsmTokenMissing(f"no PKCS#11 token labelled {self._token_label!r} is present: "
                                  f"connect the HSM, or fix keys.pkcs11_token (list the tokens "
                                  f"with the HSM's tools, e.g. softhsm2-util --show-slots)"
                                  ) from None
        except p11.MultipleTokensReturned:
            raise HsmSettingsError(f"several PKCS#11 tokens are labelled {self._token_label!r}:"
                                   f" give the master key's token a label of its own") from None
        except p11.PKCS11Error as exc:
            raise HsmUnavailable(f"cannot list the tokens of {self._module_path} "
                                 f"({type(exc).__name__}); check the HSM") from None
        try:
            self._session = token.open(user_pin=self._pin, rw=True)
        except p11.UserAlreadyLoggedIn:
            # PKCS#11 logs in per process, not per session: another session of this process
            # (e.g. a second master key object in one test) logged in with the PIN already.
            self._session = self._without_login(token)
        except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange):
            raise HsmPinWrong(f"the PKCS#11 token {self._token_label!r} refused the PIN: "
                              f"correct the first line of keys.pkcs11_pin_file (failed "
                              f"attempts may lock the PIN)") from None
        except p11.PinLocked:
            raise HsmPinLocked(f"the user PIN of the PKCS#11 token {self._token_label!r} is "
                               f"locked: the token's security officer must unlock it") from None
        except p11.PKCS11Error as exc:
            raise HsmUnavailable(f"cannot open a session on the PKCS#11 token "
                                 f"{self._token_label!r} ({type(exc).__name__}); check the HSM"
                                 ) from None

    def _without_login(self, token: Any) -> Any:
        try:
            return token.open(rw=True)
        except p11.PKCS11Error as exc:
            raise HsmUnavailable(f"cannot open a session on the PKCS#11 token "
                                 f"{self._token_label!r} ({type(exc).__name__}); check the HSM"
                                 ) from None

    def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            # A session that went away with its device has nothing left to release.
            with contextlib.suppress(p11.PKCS11Error):
                session.close()
