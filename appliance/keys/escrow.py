"""The `Escrow` seam: the third party that holds each tenant's escrow key (EK).

Implementations are blocking (the server calls them from worker threads) and raise only the
errors of appliance/keys/errors.py: `EscrowUnavailable` (retry later) or `EscrowRefused` (do not
retry). Backends: `Pkcs11Escrow` (an HSM through PKCS#11) and `ServiceEscrow` (the client of
`herald escrow serve`).
"""

from __future__ import annotations

import re
from typing import Literal, Protocol

from appliance.keys.errors import EscrowRefused

__all__ = ["KEY_STATES", "MAX_WRAP_BYTES", "Escrow", "KeyState", "check_key_id"]

KeyState = Literal["active", "revoked", "missing"]
KEY_STATES: tuple[KeyState, ...] = ("active", "revoked", "missing")
MAX_WRAP_BYTES = 4096  # a wrapped DEK is ~80 bytes; the bound keeps requests small
_KEY_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class Escrow(Protocol):
    def create_key(self, key_id: str) -> None:
        """Create the escrow key `key_id`; `EscrowRefused` if it exists or was revoked."""

    def wrap(self, key_id: str, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt `plaintext` under the key, bound to `aad`."""

    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        """Open what `wrap` made with the same `aad`; `EscrowRefused` if anything differs."""

    def revoke(self, key_id: str) -> None:
        """Destroy the key for good: what it wrapped can never be unwrapped again."""

    def status(self, key_id: str) -> KeyState:
        """One of "active", "revoked" or "missing"."""

    def close(self) -> None:
        """Release connections and sessions."""


def check_key_id(key_id: object) -> str:
    """`key_id` if it is 1-128 characters of A-Z a-z 0-9 . _ : -, else `EscrowRefused`."""
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise EscrowRefused("a key id is 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', ':' "
                            "or '-'; check the key id")
    return key_id
