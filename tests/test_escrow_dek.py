"""The double wrap of a DEK: opening one takes BOTH the master key and the escrow."""

from __future__ import annotations

import os

import pytest
from escrows import escrow, escrow_template, new_key_id, shared_service, softhsm

from appliance.keys import DekMismatch, Escrow, EscrowRefused, dek_aad, unwrap_dek, wrap_dek

__all__ = ["escrow", "escrow_template", "shared_service", "softhsm"]  # fixtures

MASTER_KEY = bytes(range(32))
DEK = os.urandom(32)


def test_a_wrapped_dek_unwraps_with_the_master_key_and_the_escrow(escrow: Escrow) -> None:
    key_id = new_key_id()
    escrow.create_key(key_id)
    blob = wrap_dek(MASTER_KEY, escrow, key_id, 7, 1, DEK)
    assert DEK not in blob
    assert unwrap_dek(MASTER_KEY, escrow, key_id, 7, 1, blob) == DEK


def test_the_escrow_alone_sees_only_ciphertext_under_the_master_key(escrow: Escrow) -> None:
    key_id = new_key_id()
    escrow.create_key(key_id)
    blob = wrap_dek(MASTER_KEY, escrow, key_id, 7, 1, DEK)
    inner = escrow.unwrap(key_id, blob, dek_aad(7, 1))
    assert DEK not in inner and len(inner) == 12 + 32 + 16


def test_a_wrong_master_key_cannot_open_the_dek(escrow: Escrow) -> None:
    key_id = new_key_id()
    escrow.create_key(key_id)
    blob = wrap_dek(MASTER_KEY, escrow, key_id, 7, 1, DEK)
    with pytest.raises(DekMismatch, match=r"master\.key"):
        unwrap_dek(bytes(32), escrow, key_id, 7, 1, blob)


def test_a_revoked_escrow_key_makes_the_dek_unreadable(escrow: Escrow) -> None:
    key_id = new_key_id()
    escrow.create_key(key_id)
    blob = wrap_dek(MASTER_KEY, escrow, key_id, 7, 1, DEK)
    escrow.revoke(key_id)
    with pytest.raises(EscrowRefused, match="revoked"):
        unwrap_dek(MASTER_KEY, escrow, key_id, 7, 1, blob)


@pytest.mark.parametrize(("tenant", "epoch"), [(8, 1), (7, 2), (1, 7)])
def test_a_dek_moved_to_another_tenant_or_epoch_does_not_open(
        escrow: Escrow, tenant: int, epoch: int) -> None:
    key_id = new_key_id()
    escrow.create_key(key_id)
    blob = wrap_dek(MASTER_KEY, escrow, key_id, 7, 1, DEK)
    with pytest.raises(EscrowRefused):
        unwrap_dek(MASTER_KEY, escrow, key_id, tenant, epoch, blob)


def test_the_inner_layer_alone_binds_tenant_and_epoch(escrow: Escrow) -> None:
    """Even an escrow that ignored its aad could not move a DEK: the master key's layer
    refuses too."""
    key_id = new_key_id()
    escrow.create_key(key_id)
    inner = escrow.unwrap(key_id, wrap_dek(MASTER_KEY, escrow, key_id, 7, 1, DEK),
                          dek_aad(7, 1))
    rewrapped = escrow.wrap(key_id, inner, dek_aad(8, 1))
    with pytest.raises(DekMismatch):
        unwrap_dek(MASTER_KEY, escrow, key_id, 8, 1, rewrapped)


def test_wrapping_checks_key_sizes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        wrap_dek(MASTER_KEY, None, "k", 1, 1, b"short")  # type: ignore[arg-type]
