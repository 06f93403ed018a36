"""The double wrap of a tenant's data-encryption key (DEK), docs/security.md "The key hierarchy".

    aad     = b"herald-dek-v1" | tenant (8 bytes, big-endian) | epoch (8 bytes, big-endian)
    inner   = master_key.wrap(DEK, aad)     nonce | AES-256-GCM-SIV(MK, nonce, DEK, aad) for a
                                            key file, nonce | AES-256-GCM(MK, ...) in an HSM
    stored  = escrow.wrap(key_id, inner, aad)

Opening a DEK takes both the master key and the escrow's cooperation; the escrow only ever sees
`inner`, ciphertext under MK. The aad binds the DEK to its tenant and epoch, so a wrapped DEK
moved to another tenant or epoch opens in neither layer.
"""

from __future__ import annotations

from appliance.keys.errors import DekMismatch
from appliance.keys.escrow import Escrow
from appliance.keys.master import FileMasterKey, MasterKey

__all__ = ["DEK_AAD_PREFIX", "DEK_BYTES", "dek_aad", "unwrap_dek", "wrap_dek"]

DEK_BYTES = 32
DEK_AAD_PREFIX = b"herald-dek-v1"
_U64_MAX = 2**64 - 1


def dek_aad(tenant: int, epoch: int) -> bytes:
    """The associated data binding a DEK to `tenant` and `epoch` (both 0 <= n < 2**64)."""
    if not (0 <= tenant <= _U64_MAX and 0 <= epoch <= _U64_MAX):
        raise ValueError("tenant and epoch must fit in 64 unsigned bits")
    return DEK_AAD_PREFIX + tenant.to_bytes(8, "big") + epoch.to_bytes(8, "big")


def _as_master_key(master_key: MasterKey | bytes) -> MasterKey:
    """Raw bytes are a key file's MK (what callers passed before MK could live in an HSM)."""
    return FileMasterKey(master_key) if isinstance(master_key, bytes) else master_key


def wrap_dek(master_key: MasterKey | bytes, escrow: Escrow, key_id: str, tenant: int,
             epoch: int, dek: bytes) -> bytes:
    """The stored form of `dek`: wrapped under `master_key`, then by the escrow key `key_id`.

    Raises ValueError for a DEK or a raw master key that is not 32 bytes, the escrow's errors
    (`EscrowUnavailable`, `EscrowRefused`) and, for a master key in an HSM, its `HsmError`s.
    """
    if len(dek) != DEK_BYTES:
        raise ValueError("a DEK and a master key are 32 bytes")
    aad = dek_aad(tenant, epoch)
    inner = _as_master_key(master_key).wrap(dek, aad)
    return escrow.wrap(key_id, inner, aad)


def unwrap_dek(master_key: MasterKey | bytes, escrow: Escrow, key_id: str, tenant: int,
               epoch: int, blob: bytes) -> bytes:
    """The DEK in `blob` (as made by `wrap_dek` for the same tenant and epoch).

    Raises the escrow's errors (`EscrowRefused` for a revoked key or a blob moved to another
    tenant or epoch; `EscrowUnavailable`), `DekMismatch` when the master key does not open the
    inner layer, and for a master key in an HSM its `HsmError`s.
    """
    master_key = _as_master_key(master_key)
    aad = dek_aad(tenant, epoch)
    inner = escrow.unwrap(key_id, blob, aad)
    mismatch = DekMismatch(f"the DEK of tenant {tenant} epoch {epoch} does not open with this "
                           f"master key ({master_key.describe()}): check that master.key, or "
                           f"the HSM key named in [keys], belongs to this data directory")
    try:
        dek = master_key.unwrap(inner, aad)
    except DekMismatch:
        raise mismatch from None
    if len(dek) != DEK_BYTES:
        raise mismatch
    return dek
