"""`Pkcs11Escrow`: escrow keys kept in a PKCS#11 token (an HSM; tested against SoftHSM2).

One AES-256 secret key object per key id (label = key id; sensitive, never extractable).
`wrap` and `unwrap` are AES-GCM computed inside the token, with the caller's aad; the nonce is
random (96 bits) and travels in front of the ciphertext:

    wrapped = 0x01 | nonce (12) | ciphertext | tag (16)

`revoke` destroys the key object and leaves a data object (label = key id, application
"herald-escrow-revoked") as a tombstone, so that `status` can tell "revoked" from "missing" and
a revoked key id is never created again.
"""

from __future__ import annotations

from typing import Any

from pkcs11 import Attribute, KeyType, ObjectClass

from appliance.keys.errors import EscrowRefused, EscrowUnavailable
from appliance.keys.escrow import MAX_WRAP_BYTES, KeyState, check_key_id
from appliance.keys.pkcs11_session import (
    GCM_NONCE_BYTES,
    GCM_TAG_BYTES,
    TokenErrors,
    TokenSession,
    gcm_open,
    gcm_seal,
)

__all__ = ["Pkcs11Escrow"]

_VERSION = b"\x01"
_TOMBSTONE_APPLICATION = "herald-escrow-revoked"
# A token that is not there is unavailable (it may come back); a PIN it refuses, a refusal.
_ERRORS = TokenErrors(
    settings="escrow", unavailable=EscrowUnavailable, token_missing=EscrowUnavailable,
    pin_wrong=EscrowRefused, pin_locked=EscrowRefused, ambiguous=EscrowUnavailable,
    refused=EscrowRefused,
)


class Pkcs11Escrow:
    """The `Escrow` over one token of a PKCS#11 module. Thread-safe: one session, one lock.

    Raises `EscrowUnavailable` when the module cannot be loaded or the token is not there,
    `EscrowRefused` for a wrong or locked PIN.
    """

    def __init__(self, module_path: str, token_label: str, pin: str) -> None:
        self._token = TokenSession(module_path, token_label, pin, _ERRORS, "the escrow keys")

    # -- Escrow -------------------------------------------------------------------------------

    def create_key(self, key_id: str) -> None:
        check_key_id(key_id)

        def create(session: Any) -> None:
            if self._key(session, key_id) is not None or self._tombstone(session, key_id):
                raise EscrowRefused(f"the escrow key {key_id!r} exists or was revoked; "
                                    f"choose a new key id")
            session.generate_key(KeyType.AES, 256, label=key_id, store=True, template={
                Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False, Attribute.ENCRYPT: True, Attribute.DECRYPT: True,
                Attribute.WRAP: False, Attribute.UNWRAP: False,
            })

        self._token.run(create)

    def wrap(self, key_id: str, plaintext: bytes, aad: bytes) -> bytes:
        check_key_id(key_id)
        if len(plaintext) > MAX_WRAP_BYTES:
            raise EscrowRefused(f"at most {MAX_WRAP_BYTES} bytes can be wrapped at once")

        def wrap(session: Any) -> bytes:
            return _VERSION + gcm_seal(self._active_key(session, key_id), plaintext, aad)

        return self._token.run(wrap)

    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        check_key_id(key_id)
        refused = EscrowRefused(f"the escrow key {key_id!r} does not open this data with this "
                                f"associated data: it was altered or belongs elsewhere")
        if (len(wrapped) < 1 + GCM_NONCE_BYTES + GCM_TAG_BYTES
                or len(wrapped) > MAX_WRAP_BYTES + 64 or wrapped[:1] != _VERSION):
            raise refused

        def unwrap(session: Any) -> bytes:
            return gcm_open(self._active_key(session, key_id), wrapped[1:], aad, refused)

        return self._token.run(unwrap)

    def revoke(self, key_id: str) -> None:
        check_key_id(key_id)

        def revoke(session: Any) -> None:
            key = self._key(session, key_id)
            if key is None:
                if self._tombstone(session, key_id):
                    return
                raise EscrowRefused(f"there is no escrow key {key_id!r} to revoke; check "
                                    f"the key id")
            # The tombstone first: a crash between the two leaves a revoked key that still
            # exists, which a second revoke finishes, never a missing key that could be recreated.
            if not self._tombstone(session, key_id):
                session.create_object({
                    Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True,
                    Attribute.PRIVATE: True, Attribute.LABEL: key_id,
                    Attribute.APPLICATION: _TOMBSTONE_APPLICATION, Attribute.VALUE: b"",
                })
            key.destroy()

        self._token.run(revoke)

    def status(self, key_id: str) -> KeyState:
        check_key_id(key_id)

        def status(session: Any) -> KeyState:
            if self._tombstone(session, key_id):
                return "revoked"
            return "active" if self._key(session, key_id) is not None else "missing"

        return self._token.run(status)

    def close(self) -> None:
        self._token.close()

    # -- the key objects -----------------------------------------------------------------------

    @staticmethod
    def _key(session: Any, key_id: str) -> Any:
        keys = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                         Attribute.LABEL: key_id}))
        if len(keys) > 1:
            raise EscrowRefused(f"the token holds {len(keys)} keys labelled {key_id!r}; "
                                f"an operator must remove the extra ones")
        return keys[0] if keys else None

    @staticmethod
    def _tombstone(session: Any, key_id: str) -> bool:
        return any(True for _ in session.get_objects({
            Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: key_id,
            Attribute.APPLICATION: _TOMBSTONE_APPLICATION}))

    def _active_key(self, session: Any, key_id: str) -> Any:
        key = self._key(session, key_id)
        if key is None:
            state = "revoked" if self._tombstone(session, key_id) else "missing"
            raise EscrowRefused(f"the escrow key {key_id!r} is {state}; data wrapped by it "
                                f"cannot be opened")
        return key
