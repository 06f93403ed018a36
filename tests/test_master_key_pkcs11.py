"""The master key in a PKCS#11 token (SoftHSM2): never extractable, stable across restarts, and
the only key that opens what it wrapped. Also pins the key file's formats, which must not move.

In-process on the session's SoftHSM2 token (tests/escrows.py), each test with fresh labels;
what needs a token of its own runs in child processes (test_master_key_hsm_cli.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from escrows import RunningEscrow, SoftHsm, escrow_template, new_key_id, shared_service, softhsm
from pkcs11 import Attribute, KeyType
from pkcs11 import exceptions as p11

from appliance.keys import DekMismatch, EscrowRefused, dek_aad, unwrap_dek, wrap_dek
from appliance.keys.errors import HsmTokenMissing, HsmUnavailable, MasterKeyExists, MasterKeyMissing
from appliance.keys.manager import KeyManager
from appliance.keys.master import FileMasterKey
from appliance.keys.pkcs11_master import NAME_KEY_SUFFIX, Pkcs11MasterKey
from engine import ActorKind, AuditActor, CreateTenant, Engine, Keyring

__all__ = ["escrow_template", "shared_service", "softhsm"]  # fixtures

DEK = os.urandom(32)
AAD = dek_aad(7, 1)


def _label() -> str:
    return f"mk-{uuid.uuid4().hex[:12]}"


def _create(hsm: SoftHsm, label: str) -> Pkcs11MasterKey:
    return Pkcs11MasterKey.create(hsm.module, hsm.token_label, hsm.pin, label)


def _open(hsm: SoftHsm, label: str) -> Pkcs11MasterKey:
    return Pkcs11MasterKey.open(hsm.module, hsm.token_label, hsm.pin, label)


@pytest.fixture
def master(softhsm: SoftHsm) -> Iterator[Pkcs11MasterKey]:
    key = _create(softhsm, _label())
    try:
        yield key
    finally:
        key.close()


def _raw_session(hsm: SoftHsm) -> Any:
    """A plain python-pkcs11 session on the token, as any program holding the PIN gets."""
    token = pkcs11.lib(hsm.module).get_token(token_label=hsm.token_label)
    try:
        return token.open(user_pin=hsm.pin, rw=True)
    except p11.UserAlreadyLoggedIn:  # a session of this process logged in already
        return token.open(rw=True)


def test_a_master_key_made_in_the_token_opens_again_with_the_same_name_key(
    softhsm: SoftHsm,
) -> None:
    label = _label()
    first = _create(softhsm, label)
    inner = first.wrap(DEK, AAD)
    name_key = first.derive_name_key()
    first.close()

    again = _open(softhsm, label)  # what the next start of the appliance does
    try:
        assert again.unwrap(inner, AAD) == DEK
        assert again.derive_name_key() == name_key
    finally:
        again.close()
    assert len(name_key) == 32 and len(inner) == 12 + 32 + 16 and DEK not in inner
    assert "not extractable" in again.describe() and label in again.describe()


def test_the_master_key_objects_cannot_be_read_out_of_the_token(
    softhsm: SoftHsm, master: Pkcs11MasterKey,
) -> None:
    label = master.key_label
    session = _raw_session(softhsm)
    try:
        wrapping = session.generate_key(KeyType.AES, 256, template={
            Attribute.TOKEN: False, Attribute.WRAP: True, Attribute.UNWRAP: True})
        for name, key_type in ((label, KeyType.AES),
                               (label + NAME_KEY_SUFFIX, KeyType.GENERIC_SECRET)):
            key = session.get_key(label=name, key_type=key_type)
            assert key[Attribute.SENSITIVE] and key[Attribute.ALWAYS_SENSITIVE]
            assert not key[Attribute.EXTRACTABLE] and key[Attribute.NEVER_EXTRACTABLE]
            assert key[Attribute.TOKEN] and key[Attribute.PRIVATE]
            with pytest.raises(p11.AttributeSensitive):
                key[Attribute.VALUE]
            with pytest.raises(p11.KeyUnextractable):
                wrapping.wrap_key(key)
            with pytest.raises(p11.PKCS11Error):  # once not extractable, always so
                key[Attribute.EXTRACTABLE] = True
    finally:
        session.close()


def test_a_dek_wrapped_under_the_hsm_master_key_opens_with_it_and_no_other_master_key(
    softhsm: SoftHsm, master: Pkcs11MasterKey, shared_service: RunningEscrow,
) -> None:
    escrow = shared_service.client()
    other = _create(softhsm, _label())
    try:
        key_id = new_key_id()
        escrow.create_key(key_id)
        blob = wrap_dek(master, escrow, key_id, 7, 1, DEK)
        assert unwrap_dek(master, escrow, key_id, 7, 1, blob) == DEK
        inner = escrow.unwrap(key_id, blob, AAD)
        assert DEK not in inner and len(inner) == 12 + 32 + 16  # what the escrow sees
        for wrong in (other, FileMasterKey(os.urandom(32))):
            with pytest.raises(DekMismatch, match="does not open"):
                unwrap_dek(wrong, escrow, key_id, 7, 1, blob)
        with pytest.raises(EscrowRefused):
            unwrap_dek(master, escrow, key_id, 8, 1, blob)
        file_blob = wrap_dek(os.urandom(32), escrow, key_id, 7, 1, DEK)
        with pytest.raises(DekMismatch):
            unwrap_dek(master, escrow, key_id, 7, 1, file_blob)
    finally:
        other.close()
        escrow.close()


def test_an_altered_inner_layer_or_another_aad_does_not_open(master: Pkcs11MasterKey) -> None:
    inner = master.wrap(DEK, AAD)
    altered = inner[:20] + bytes([inner[20] ^ 1]) + inner[21:]
    for blob, aad in ((altered, AAD), (inner, dek_aad(7, 2)), (inner[:27], AAD), (b"", AAD)):
        with pytest.raises(DekMismatch):
            master.unwrap(blob, aad)
    assert master.unwrap(inner, AAD) == DEK  # and the token still works


def test_two_master_keys_derive_different_name_keys(softhsm: SoftHsm,
                                                    master: Pkcs11MasterKey) -> None:
    other = _create(softhsm, _label())
    try:
        assert other.derive_name_key() != master.derive_name_key()
    finally:
        other.close()


def test_creating_over_an_existing_label_is_refused_and_keeps_the_key(softhsm: SoftHsm) -> None:
    label = _label()
    first = _create(softhsm, label)
    try:
        inner = first.wrap(DEK, AAD)
        with pytest.raises(MasterKeyExists) as refused:
            _create(softhsm, label)
        assert refused.value.code == "master_key_exists"
        assert first.unwrap(inner, AAD) == DEK
    finally:
        first.close()


def test_a_missing_key_object_is_master_key_missing(softhsm: SoftHsm) -> None:
    with pytest.raises(MasterKeyMissing) as never_made:
        _open(softhsm, _label())
    assert never_made.value.code == "master_key_missing"
    assert "HSM's backup" in never_made.value.message

    label = _label()
    _create(softhsm, label).close()
    session = _raw_session(softhsm)
    try:
        session.get_key(label=label + NAME_KEY_SUFFIX).destroy()
    finally:
        session.close()
    with pytest.raises(MasterKeyMissing, match=label + NAME_KEY_SUFFIX):
        _open(softhsm, label)


def test_an_absent_token_or_module_says_which(softhsm: SoftHsm) -> None:
    with pytest.raises(HsmTokenMissing) as no_token:
        Pkcs11MasterKey.open(softhsm.module, "no-such-token", softhsm.pin, _label())
    assert no_token.value.code == "hsm_token_missing"
    assert "no-such-token" in no_token.value.message
    with pytest.raises(HsmUnavailable) as no_module:
        Pkcs11MasterKey.open("/nonexistent/libpkcs11.so", softhsm.token_label, softhsm.pin,
                             _label())
    assert no_module.value.code == "hsm_unavailable"
    for error in (no_token.value, no_module.value):
        assert softhsm.pin not in error.message


def test_a_key_object_deleted_under_a_running_manager_makes_tenants_unavailable_not_a_crash(
    softhsm: SoftHsm, shared_service: RunningEscrow, tmp_path: Path,
) -> None:
    label = _label()
    master = _create(softhsm, label)
    escrow = shared_service.client()
    keyring = Keyring(name_key=master.derive_name_key())
    engine = Engine(tmp_path / "store", map_size=2**26, keyring=keyring)
    try:
        manager = KeyManager(engine, keyring, escrow, master, uuid.uuid4().hex[:16],
                             lifetime_s=300.0, now_ms=lambda: 1_000)
        tenant = engine.apply(CreateTenant(name="acme"), 1_000).tenant  # type: ignore[union-attr]
        manager.rotate(tenant, actor=AuditActor(kind=ActorKind.SYSTEM, name="test"))
        assert manager.load_tenant(tenant, force=True).state == "available"

        session = _raw_session(softhsm)
        try:
            session.get_key(label=label, key_type=KeyType.AES).destroy()
        finally:
            session.close()
        status = manager.load_tenant(tenant, force=True)
        assert status.state == "unavailable" and label in status.detail, status
        assert keyring.installed(tenant)  # what was installed stays until it expires
    finally:
        engine.close()
        escrow.close()
        master.close()


# -- the key file's formats, pinned: stores made before the seam must keep opening -------------


FILE_MASTER_KEY = bytes(range(32))


def test_a_key_files_master_key_derives_the_name_key_it_always_did() -> None:
    assert FileMasterKey(FILE_MASTER_KEY).derive_name_key().hex() == (
        "21b6a984842adac0a9ed26439b897344a7f1c061f1136610f8b4357b6bed9946")


def test_a_key_files_master_key_opens_an_inner_layer_made_before_the_seam() -> None:
    inner = bytes(12) + bytes.fromhex(
        "7b31d2a1a03aed9a65a98f66b9ba2f36b755d197c16e97cad682cc69c0b9f184"
        "a8224d0a0ea49ff07367e5f0d9e72ee9")
    assert FileMasterKey(FILE_MASTER_KEY).unwrap(inner, AAD) == bytes(range(100, 132))
    fresh = FileMasterKey(FILE_MASTER_KEY).wrap(DEK, AAD)
    assert len(fresh) == 12 + 32 + 16 and FileMasterKey(FILE_MASTER_KEY).unwrap(fresh, AAD) == DEK
