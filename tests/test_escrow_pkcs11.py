"""`Pkcs11Escrow` specifics, against a real SoftHSM2 token: what the token holds, and how a
wrong module, token or PIN is reported."""

from __future__ import annotations

from pathlib import Path

import pkcs11
import pytest
from escrows import SoftHsm, new_key_id, softhsm
from pkcs11 import Attribute, ObjectClass

from appliance.keys import EscrowRefused, EscrowUnavailable
from appliance.keys.pkcs11_escrow import Pkcs11Escrow

__all__ = ["softhsm"]  # fixtures


def token_objects(hsm: SoftHsm, key_id: str, object_class: ObjectClass) -> list[object]:
    token = pkcs11.lib(hsm.module).get_token(token_label=hsm.token_label)
    with token.open(user_pin=hsm.pin) as session:
        return list(session.get_objects({Attribute.CLASS: object_class,
                                         Attribute.LABEL: key_id}))


def test_each_key_is_a_sensitive_non_extractable_aes_256_key_on_the_token(softhsm: SoftHsm
                                                                         ) -> None:
    escrow, key_id = softhsm.open(), new_key_id()
    try:
        escrow.create_key(key_id)
    finally:
        escrow.close()
    token = pkcs11.lib(softhsm.module).get_token(token_label=softhsm.token_label)
    with token.open(user_pin=softhsm.pin) as session:
        (key,) = session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                      Attribute.LABEL: key_id})
        assert key[Attribute.TOKEN] and key[Attribute.SENSITIVE]
        assert not key[Attribute.EXTRACTABLE]
        assert key[Attribute.VALUE_LEN] == 32
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[Attribute.VALUE]  # reading it is the test


def test_revocation_destroys_the_key_object_and_survives_a_new_session(softhsm: SoftHsm
                                                                        ) -> None:
    key_id = new_key_id()
    first = softhsm.open()
    try:
        first.create_key(key_id)
        wrapped = first.wrap(key_id, b"d" * 60, b"aad")
        first.revoke(key_id)
    finally:
        first.close()
    assert token_objects(softhsm, key_id, ObjectClass.SECRET_KEY) == []
    assert len(token_objects(softhsm, key_id, ObjectClass.DATA)) == 1  # the tombstone
    second = softhsm.open()
    try:
        assert second.status(key_id) == "revoked"
        with pytest.raises(EscrowRefused, match="revoked"):
            second.unwrap(key_id, wrapped, b"aad")
    finally:
        second.close()


def test_keys_outlive_the_session_that_made_them(softhsm: SoftHsm) -> None:
    key_id = new_key_id()
    first = softhsm.open()
    try:
        first.create_key(key_id)
        wrapped = first.wrap(key_id, b"d" * 60, b"aad")
    finally:
        first.close()
    second = softhsm.open()
    try:
        assert second.unwrap(key_id, wrapped, b"aad") == b"d" * 60
    finally:
        second.close()


def test_a_wrong_pin_is_refused_and_not_echoed(softhsm: SoftHsm) -> None:
    with pytest.raises(EscrowRefused, match="PIN") as caught:
        Pkcs11Escrow(softhsm.module, softhsm.token_label, "9999-wrong")
    assert "9999-wrong" not in str(caught.value)


def test_an_absent_token_is_unavailable(softhsm: SoftHsm) -> None:
    with pytest.raises(EscrowUnavailable, match="no PKCS#11 token labelled 'elsewhere'"):
        Pkcs11Escrow(softhsm.module, "elsewhere", softhsm.pin)


def test_a_missing_module_is_unavailable(softhsm: SoftHsm, tmp_path: Path) -> None:
    with pytest.raises(EscrowUnavailable, match="cannot load the PKCS#11 module"):
        Pkcs11Escrow(f"{tmp_path}/no-such-module.so", softhsm.token_label, softhsm.pin)
