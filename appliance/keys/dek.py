"""The double wrap of a tenant's data-encryption key (DEK), docs/security.md "The key hierarchy".

    aad     = b"herald-dek-v1" | tenant (8 bytes, big-endian) | epoch (8 bytes, big-endian)
    inner   = AES-256-GCM-SIV(MK, nonce, DEK, aad)
    stored  = escrow.wrap(key_id, nonce | inner, aad)

Opening a DEK takes both the master key and the escrow's cooperation; the escrow only ever sees
`nonce | inner`, ciphertext under MK. The aad binds the DEK to its tenant and epoch, so a
wrapped DEK moved to another tenant or epoch opens in neither layer.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

from appliance.keys.errors import DekMismatch
from appliance.keys.escrow import Escrow

__all__ = ["DEK_AAD_PREFIX", "DEK_BYTES", "dek_aad", "unwrap_dek", "wrap_dek"]

DEK_BYTES = 32
DEK_AAD_PREFIX = b"herald-dek-v1"
_NONCE_BYTES = 12
_U64_MAX = 2**64 - 1


def dek_aad(tenant: int, epoch: int) -> bytes:
    """The associated data binding a DEK to `tenant` and `epoch` (both 0 <= n < 2**64)."""
    if not (0 <= tenant <= _U64_MAX and 0 <= epoch <= _U64_MAX):
        raise ValueError("tenant and epoch must fit in 64 unsigned bits")
    return DEK_AAD_PREFIX + tenant.to_bytes(8, "big") + epoch.to_bytes(8, "big")


def wrap_dek(master_key: bytes, escrow: Escrow, key_id: str, tenant: int, epoch: int,
             dek: bytes) -> bytes:
    """The stored form of `dek`: wrapped under `master_key`, then by the escrow key `key_id`.

    Raises ValueError for a DEK or master key that is not 32 bytes, and the escrow's errors
    (`EscrowUnavailable`, `EscrowRefused`).
    """
    if len(dek) != DEK_BYTES or len(master_key) != 32:
        raise ValueError("a DEK and a master key are 32 bytes")
    aad = dek_aad(tenant, epoch)
    nonce = os.urandom(_NONCE_BYTES)
    inner = AESGCMSIV(master_key).encrypt(nonce, dek, aad)
    return escrow.wrap(key_id, nonce + inner, aad)


def unwrap_dek(master_key: bytes, escrow: Escrow, key_id: str, tenant: int, epoch: int,
               blob: bytes) -> bytes:
    """The DEK in `blob` (as made by `wrap_dek` for the same tenant and epoch).

    Raises the escrow's errors (`EscrowRefused` for a revoked key or a blob moved to another
    tenant or epoch; `EscrowUnavailable`), and `DekMismatch` when the master key does not open
    the inner layer.
    """
    aad = dek_aad(tenant, epoch)
    inner = escrow.unwrap(key_id, blob, aad)
    mismatch = DekMismatch(f"the DEK of tenant {tenant} epoch {epoch} does not open with this "
                           f"master key: check that master.key belongs to this data directory")
    if len(inner) != _NONCE_BYTES + DEK_BYTES + 16:
        raise mismatch
    try:
        return AESGCMSIV(master_key).decrypt(inner[:_NONCE_BYTES], inner[_NONCE_BYTES:], aad)
    except InvalidTag:
        raise mismatch from None
