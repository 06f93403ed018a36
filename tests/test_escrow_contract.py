"""The `Escrow` contract, run against each backend: SoftHSM2 through PKCS#11, and the escrow
service as a real subprocess over mutual TLS."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from escrows import escrow, escrow_template, new_key_id, shared_service, softhsm

from appliance.keys import Escrow, EscrowRefused
from appliance.keys.escrow import MAX_WRAP_BYTES

__all__ = ["escrow", "escrow_template", "shared_service", "softhsm"]  # fixtures

AAD = b"herald-dek-v1 tenant 1 epoch 1"


def test_a_new_key_is_active_and_an_unknown_one_missing(escrow: Escrow) -> None:
    key_id = new_key_id()
    assert escrow.status(key_id) == "missing"
    escrow.create_key(key_id)
    assert escrow.status(key_id) == "active"


def test_creating_a_key_twice_is_refused(escrow: Escrow) -> None:
    key_id = new_key_id()
    escrow.create_key(key_id)
    with pytest.raises(EscrowRefused, match="exists"):
        escrow.create_key(key_id)
    assert escrow.status(key_id) == "active"


def test_what_is_wrapped_unwraps_with_the_same_key_and_aad(escrow: Escrow) -> None:
    key_id = new_key_id()
    escrow.create_key(key_id)
    secret = bytes(range(60))
    wrapped = escrow.wrap(key_id, secret, AAD)
    assert secret not in wrapped
    assert escrow.unwrap(key_id, wrapped, AAD) == secret
    assert escrow.wrap(key_id, secret, AAD) != wrapped  # a fresh nonce every time


@pytest.mark.parametrize("change", ["aad", "ciphertext", "nonce", "version", "truncated",
                                    "other key"])
def test_anything_changed_makes_unwrap_refuse(escrow: Escrow, change: str) -> None:
    key_id, other = new_key_id(), new_key_id()
    escrow.create_key(key_id)
    escrow.create_key(other)
    wrapped = escrow.wrap(key_id, b"x" * 44, AAD)
    aad, used_key = AAD, key_id
    if change == "aad":
        aad = AAD + b"!"
    elif change == "ciphertext":
        wrapped = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    elif change == "nonce":
        wrapped = wrapped[:2] + bytes([wrapped[2] ^ 1]) + wrapped[3:]
    elif change == "version":
        wrapped = b"\x02" + wrapped[1:]
    elif change == "truncated":
        wrapped = wrapped[:20]
    else:
        used_key = other
    with pytest.raises(EscrowRefused):
        escrow.unwrap(used_key, wrapped, aad)


def test_revoking_destroys_the_key_for_good(escrow: Escrow) -> None:
    key_id = new_key_id()
    escrow.create_key(key_id)
    wrapped = escrow.wrap(key_id, b"k" * 44, AAD)
    escrow.revoke(key_id)
    assert escrow.status(key_id) == "revoked"
    with pytest.raises(EscrowRefused, match="revoked"):
        escrow.unwrap(key_id, wrapped, AAD)
    with pytest.raises(EscrowRefused, match="revoked"):
        escrow.wrap(key_id, b"k" * 44, AAD)
    with pytest.raises(EscrowRefused):
        escrow.create_key(key_id)  # a revoked key id never comes back
    escrow.revoke(key_id)  # revoking again changes nothing
    assert escrow.status(key_id) == "revoked"


def test_revoking_an_unknown_key_is_refused(escrow: Escrow) -> None:
    with pytest.raises(EscrowRefused, match="no escrow key"):
        escrow.revoke(new_key_id())


def test_unwrap_of_an_unknown_key_is_refused(escrow: Escrow) -> None:
    with pytest.raises(EscrowRefused, match="missing"):
        escrow.unwrap(new_key_id(), b"\x01" + b"0" * 60, AAD)


@pytest.mark.parametrize("key_id", ["", "a b", "x" * 129, "é", "a/b"])
def test_malformed_key_ids_are_refused(escrow: Escrow, key_id: str) -> None:
    with pytest.raises(EscrowRefused, match="key id"):
        escrow.status(key_id)


def test_oversized_plaintext_is_refused(escrow: Escrow) -> None:
    key_id = new_key_id()
    escrow.create_key(key_id)
    with pytest.raises(EscrowRefused, match=str(MAX_WRAP_BYTES)):
        escrow.wrap(key_id, b"x" * (MAX_WRAP_BYTES + 1), AAD)


def test_calls_from_many_worker_threads_all_succeed(escrow: Escrow) -> None:
    """The server calls the escrow from worker threads, several at once."""
    key_ids = [new_key_id() for _ in range(4)]
    for key_id in key_ids:
        escrow.create_key(key_id)

    def round_trips(key_id: str) -> list[bool]:
        secrets = [os.urandom(48) for _ in range(5)]
        return [escrow.unwrap(key_id, escrow.wrap(key_id, s, AAD), AAD) == s for s in secrets]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(round_trips, key_ids * 2))
    assert all(all(result) for result in results)
