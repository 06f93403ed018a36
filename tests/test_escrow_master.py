"""The master key file: create, load, wrong passphrase, damaged file."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from appliance.keys import (
    DamagedKeyFile,
    KeyFileExists,
    KeyFileMissing,
    WeakPassphrase,
    WrongPassphrase,
    create_master_key,
    load_master_key,
)
from appliance.keys.sealed_file import KdfParams

PASSPHRASE = "a long master passphrase"


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """One master key file with the production parameters, shared: Argon2id is slow."""
    path = tmp_path_factory.mktemp("master") / "master.key"
    return path, create_master_key(path, PASSPHRASE)


def damaged_copy(source: Path, target: Path, edit: object) -> Path:
    document = json.loads(source.read_text())
    edit(document)  # type: ignore[operator]
    target.write_text(json.dumps(document))
    return target


def test_a_created_master_key_loads_back_with_its_passphrase(key_file: tuple[Path, bytes]
                                                             ) -> None:
    path, master_key = key_file
    assert len(master_key) == 32
    assert load_master_key(path, PASSPHRASE) == master_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert master_key.hex() not in path.read_text()


def test_the_file_names_its_format_and_the_argon2id_parameters(key_file: tuple[Path, bytes]
                                                               ) -> None:
    document = json.loads(key_file[0].read_text())
    assert document["format"] == "herald-master-key-v1"
    assert {k: document["kdf"][k] for k in ("name", "memory_kib", "iterations", "lanes")} == {
        "name": "argon2id", "memory_kib": 64 * 1024, "iterations": 3, "lanes": 1}


def test_other_argon2id_parameters_are_read_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    master_key = create_master_key(path, PASSPHRASE, kdf=KdfParams(memory_kib=8 * 1024,
                                                                   iterations=1))
    assert json.loads(path.read_text())["kdf"]["memory_kib"] == 8 * 1024
    assert load_master_key(path, PASSPHRASE) == master_key


def test_two_master_keys_differ(tmp_path: Path) -> None:
    cheap = KdfParams(memory_kib=8 * 1024, iterations=1)
    first = create_master_key(tmp_path / "a.key", PASSPHRASE, kdf=cheap)
    assert first != create_master_key(tmp_path / "b.key", PASSPHRASE, kdf=cheap)


def test_creating_refuses_to_overwrite_an_existing_key_file(key_file: tuple[Path, bytes]
                                                            ) -> None:
    path, master_key = key_file
    with pytest.raises(KeyFileExists, match="already exists"):
        create_master_key(path, "another long passphrase")
    assert load_master_key(path, PASSPHRASE) == master_key


def test_a_wrong_passphrase_is_told_apart_and_never_echoed(key_file: tuple[Path, bytes]
                                                           ) -> None:
    with pytest.raises(WrongPassphrase) as caught:
        load_master_key(key_file[0], "the wrong passphrase here")
    assert caught.value.code == "wrong_passphrase"
    assert "the wrong passphrase here" not in str(caught.value)
    assert "intact" in str(caught.value)


def test_a_short_passphrase_is_refused_and_nothing_written(tmp_path: Path) -> None:
    with pytest.raises(WeakPassphrase, match="at least 12"):
        create_master_key(tmp_path / "master.key", "short")
    assert not (tmp_path / "master.key").exists()


@pytest.mark.parametrize("edit", [
    lambda d: d.update(ciphertext=d["ciphertext"][:-4] + "AAA="),
    lambda d: d.update(nonce="AAAAAAAAAAAAAAAA"),
    lambda d: d["kdf"].update(iterations=4),
    lambda d: d.pop("checksum"),
], ids=["ciphertext", "nonce", "kdf", "checksum"])
def test_an_altered_file_is_reported_damaged_not_a_wrong_passphrase(
        key_file: tuple[Path, bytes], tmp_path: Path, edit: object) -> None:
    path = damaged_copy(key_file[0], tmp_path / "master.key", edit)
    with pytest.raises(DamagedKeyFile, match="restore it from a backup"):
        load_master_key(path, PASSPHRASE)


@pytest.mark.parametrize("content", [b"", b"{", b"\xff\xfe", b"[1, 2]", b'{"format": 1}'])
def test_a_truncated_or_foreign_file_is_reported_damaged(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(content)
    with pytest.raises(DamagedKeyFile):
        load_master_key(path, PASSPHRASE)


def test_a_file_of_another_format_says_so(key_file: tuple[Path, bytes], tmp_path: Path) -> None:
    path = damaged_copy(key_file[0], tmp_path / "master.key",
                        lambda d: d.update(format="herald-escrow-keys-v1"))
    with pytest.raises(DamagedKeyFile, match="not 'herald-master-key-v1'"):
        load_master_key(path, PASSPHRASE)


def test_a_missing_file_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(KeyFileMissing, match="no key file at"):
        load_master_key(tmp_path / "nowhere.key", PASSPHRASE)
