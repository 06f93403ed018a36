"""The `[escrow]` table and `open_escrow`, and the key layer's boundaries."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from escrows import (
    RunningEscrow,
    SoftHsm,
    escrow_files,
    escrow_template,
    new_key_id,
    service,
    softhsm,
)

import appliance.keys
from appliance.config import ConfigError, EscrowConfig, load_config
from appliance.keys import EscrowError
from appliance.keys.backends import open_escrow

__all__ = ["escrow_files", "escrow_template", "service", "softhsm"]  # fixtures

ROOT = Path(__file__).resolve().parent.parent


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "herald.toml"
    path.write_text(text)
    return path


def test_without_an_escrow_table_there_is_no_escrow(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, ""))
    assert config.escrow.backend == "none"
    assert open_escrow(config.escrow) is None


def test_a_service_escrow_is_configured_and_opened(service: RunningEscrow, tmp_path: Path
                                                   ) -> None:
    client = service.files.client_dir
    config = load_config(write_config(tmp_path, (
        f'[escrow]\nbackend = "service"\naddress = "{service.address}"\n'
        f'ca_file = "{client / "ca.crt"}"\ncert_file = "{client / "client.crt"}"\n'
        f'key_file = "{client / "client.key"}"\ncache_lifetime_s = 600\n')))
    assert config.escrow.cache_lifetime_s == 600.0
    escrow = open_escrow(config.escrow)
    assert escrow is not None
    assert escrow.status(new_key_id()) == "missing"


def test_a_pkcs11_escrow_is_configured_with_a_pin_file(softhsm: SoftHsm, tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm.pin + "\n")
    escrow = open_escrow(EscrowConfig(backend="pkcs11", pkcs11_module=softhsm.module,
                                      pkcs11_token=softhsm.token_label,
                                      pkcs11_pin_file=str(pin_file)))
    assert escrow is not None
    try:
        assert escrow.status(new_key_id()) == "missing"
    finally:
        escrow.close()


def test_an_unreadable_pin_file_says_which_setting_to_fix(tmp_path: Path) -> None:
    with pytest.raises(EscrowError, match=r"escrow\.pkcs11_pin_file"):
        open_escrow(EscrowConfig(backend="pkcs11", pkcs11_token="t",
                                 pkcs11_pin_file=str(tmp_path / "nowhere")))


@pytest.mark.parametrize(("text", "message"), [
    ('[escrow]\nbackend = "vault"\n', "escrow.backend must be one of"),
    ('[escrow]\nbackend = "service"\naddress = "h:1"\n', "needs escrow settings"),
    ('[escrow]\nbackend = "pkcs11"\n', "'pkcs11_token', 'pkcs11_pin_file'"),
    ("[escrow]\ncache_lifetime_s = 0\n", "must be positive"),
    ("[escrow]\npin = 1\n", "unknown [escrow] settings ['pin']"),
])
def test_a_wrong_escrow_table_is_refused_with_what_to_fix(tmp_path: Path, text: str,
                                                         message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, text))
    assert message in str(caught.value)


def test_the_key_layer_imports_no_trio_and_only_public_engine_names() -> None:
    for path in (ROOT / "appliance" / "keys").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in {"trio", "trio_websocket"}, path
                assert not name.startswith("engine."), (path, name)


def test_the_key_layer_public_surface_is_pinned() -> None:
    assert sorted(appliance.keys.__all__) == appliance.keys.__all__
    for name in appliance.keys.__all__:
        assert hasattr(appliance.keys, name), name
    assert len(appliance.keys.__all__) == 29  # + the passphrase change and its HSM refusal


def test_the_master_key_in_an_hsm_is_configured_in_keys_with_paths_beside_the_file(
    tmp_path: Path,
) -> None:
    config = load_config(write_config(tmp_path, (
        '[keys]\nmaster_key = "pkcs11"\npkcs11_token = "appliance"\n'
        'pkcs11_pin_file = "hsm.pin"\nsofthsm2_conf = "softhsm2.conf"\n')))
    assert config.keys.master_key == "pkcs11"
    assert config.keys.pkcs11_pin_file == str(tmp_path / "hsm.pin")
    assert config.keys.softhsm2_conf == str(tmp_path / "softhsm2.conf")
    assert config.keys.pkcs11_key_label == "herald-master-key"
    assert config.hsm_master_key_path == config.data_dir / "master-key.pkcs11"
    assert load_config(write_config(tmp_path, "")).keys.master_key == "file"


@pytest.mark.parametrize(("text", "message"), [
    ('[keys]\nmaster_key = "tpm"\n', "keys.master_key must be one of ['file', 'pkcs11']"),
    ('[keys]\nmaster_key = "pkcs11"\n', "needs the settings keys.['pkcs11_token', "
                                        "'pkcs11_pin_file']"),
])
def test_a_wrong_master_key_setting_is_refused_with_what_to_fix(tmp_path: Path, text: str,
                                                                message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, text))
    assert message in str(caught.value)
