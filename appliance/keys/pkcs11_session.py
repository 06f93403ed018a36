"""One logged-in session on one token of a PKCS#11 module, for the escrow backend and for the
master key in an HSM: one lock, the session opened again after its device comes back, and
PKCS#11 failures turned into the caller's errors, each with what the operator should do."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pkcs11
from pkcs11 import Mechanism
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams

from appliance.keys.errors import KeyManagementError

__all__ = ["GCM_NONCE_BYTES", "GCM_TAG_BYTES", "GONE", "TokenErrors", "TokenSession",
           "gcm_open", "gcm_seal"]

# The token, its session or the device is gone: the same call may work once it is back.
GONE = (p11.DeviceError, p11.DeviceMemory, p11.DeviceRemoved, p11.SessionClosed,
        p11.SessionHandleInvalid, p11.TokenNotPresent, p11.TokenNotRecognised,
        p11.HostMemory, p11.UserNotLoggedIn, p11.SessionCount)
GCM_NONCE_BYTES = 12
GCM_TAG_BYTES = 16
_T = TypeVar("_T")
_Error = type[KeyManagementError]


@dataclass(frozen=True, slots=True)
class TokenErrors:
    """The caller's error for each thing that can go wrong with its token, and the prefix of
    its configuration settings (`escrow`, `keys`), which the messages name."""

    settings: str
    unavailable: _Error  # the module does not load, the device went away: retry later
    token_missing: _Error
    pin_wrong: _Error
    pin_locked: _Error
    ambiguous: _Error  # several tokens share the label
    refused: _Error  # an operation the token would not do


class TokenSession:
    """The session, opened at once (raising the caller's errors) and used under a lock."""

    def __init__(self, module_path: str, token_label: str, pin: str, errors: TokenErrors,
                 what: str) -> None:
        """`what` names the keys for messages (e.g. "the master key")."""
        self._module_path = module_path
        self._label = token_label
        self._pin = pin
        self._errors = errors
        self._what = what
        self._lock = threading.Lock()
        self._session: Any = None
        with self._lock:
            self._open()

    @property
    def token_label(self) -> str:
        return self._label

    def run(self, action: Callable[[Any], _T]) -> _T:
        """`action(session)` under the lock; PKCS#11 errors become the caller's (an error of
        the caller's own, raised by `action`, goes through as it is)."""
        errors = self._errors
        with self._lock:
            if self._session is None:
                self._open()
            try:
                return action(self._session)
            except GONE as exc:
                self._close()  # opened afresh by the next call
                raise errors.unavailable(
                    f"the PKCS#11 token {self._label!r} stopped answering "
                    f"({type(exc).__name__}); check the HSM and retry") from None
            except p11.PKCS11Error as exc:
                raise errors.refused(
                    f"the PKCS#11 token {self._label!r} refused an operation on {self._what} "
                    f"({type(exc).__name__}); check the token and its key objects") from None

    def close(self) -> None:
        with self._lock:
            self._close()

    def _open(self) -> None:
        errors, settings = self._errors, self._errors.settings
        try:
            lib = pkcs11.lib(self._module_path)
        except (RuntimeError, OSError) as exc:
            raise errors.unavailable(
                f"cannot load the PKCS#11 module {self._module_path}: {type(exc).__name__}; "
                f"check {settings}.pkcs11_module and that the HSM's software is installed"
            ) from None
        try:
            token = lib.get_token(token_label=self._label)
        except p11.NoSuchToken:
            raise errors.token_missing(
                f"no PKCS#11 token labelled {self._label!r} is present: connect the HSM, or "
                f"fix {settings}.pkcs11_token (list the tokens with the HSM's tools, e.g. "
                f"softhsm2-util --show-slots)") from None
        except p11.MultipleTokensReturned:
            raise errors.ambiguous(
                f"several PKCS#11 tokens are labelled {self._label!r}: give the token of "
                f"{self._what} a label of its own") from None
        except p11.PKCS11Error as exc:
            raise errors.unavailable(
                f"cannot list the tokens of {self._module_path} ({type(exc).__name__}); "
                f"check the HSM") from None
        try:
            self._session = token.open(user_pin=self._pin, rw=True)
        except p11.UserAlreadyLoggedIn:
            # PKCS#11 logs in per process, not per session: another session of this process
            # on the token logged in with the PIN already.
            self._session = self._open_without_login(token)
        except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange):
            raise errors.pin_wrong(
                f"the PKCS#11 token {self._label!r} refused the PIN: correct the first line of "
                f"{settings}.pkcs11_pin_file (failed attempts may lock the PIN)") from None
        except p11.PinLocked:
            raise errors.pin_locked(
                f"the user PIN of the PKCS#11 token {self._label!r} is locked: the token's "
                f"security officer must unlock it") from None
        except p11.PKCS11Error as exc:
            raise errors.unavailable(
                f"cannot open a session on the PKCS#11 token {self._label!r} "
                f"({type(exc).__name__}); check the HSM") from None

    def _open_without_login(self, token: Any) -> Any:
        try:
            return token.open(rw=True)
        except p11.PKCS11Error as exc:
            raise self._errors.unavailable(
                f"cannot open a session on the PKCS#11 token {self._label!r} "
                f"({type(exc).__name__}); check the HSM") from None

    def _close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            # A session that went away with its device has nothing left to release.
            with contextlib.suppress(p11.PKCS11Error):
                session.close()


def gcm_seal(key: Any, plaintext: bytes, aad: bytes) -> bytes:
    """`nonce | ciphertext | tag`: AES-GCM computed by the token under its AES `key`, with a
    fresh random 96-bit nonce (a key seals a handful of DEKs: far below GCM's limit)."""
    nonce = os.urandom(GCM_NONCE_BYTES)
    sealed: bytes = key.encrypt(plaintext, mechanism=Mechanism.AES_GCM,
                                mechanism_param=GCMParams(nonce, aad))
    return nonce + sealed


def gcm_open(key: Any, blob: bytes, aad: bytes, refused: Exception) -> bytes:
    """The plaintext of `blob` (as `gcm_seal` made it); raises `refused` when the token will
    not open it (altered, another key or aad). A token that is gone raises as it is, for
    `TokenSession.run` to report."""
    nonce, sealed = blob[:GCM_NONCE_BYTES], blob[GCM_NONCE_BYTES:]
    try:
        plain: bytes = key.decrypt(sealed, mechanism=Mechanism.AES_GCM,
                                   mechanism_param=GCMParams(nonce, aad))
    except GONE:
        raise
    except p11.PKCS11Error:
        # Tokens report a failed GCM tag variously (SoftHSM2: CKR_GENERAL_ERROR).
        raise refused from None
    return plain
