"""Secrets are asked on the terminal; without one (a script, a service manager, a pipe) every
command that needs one says what to pass instead, and never shows a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from keyed_dirs import PASSPHRASE, herald, keyed_data_dir

from appliance.keys import create_master_key
from appliance.keys.sealed_file import KdfParams


def assert_clear_refusal(result: object, hint: str) -> None:
    assert result.returncode != 0  # type: ignore[attr-defined]
    err = result.stderr  # type: ignore[attr-defined]
    assert hint in err, err
    assert "Traceback" not in err, err


def test_escrow_init_without_a_terminal_names_passphrase_file(tmp_path: Path) -> None:
    result = herald("escrow", "init", "--dir", str(tmp_path / "escrow"))
    assert_clear_refusal(result, "--passphrase-file")
    assert not (tmp_path / "escrow" / "escrow.keys").exists()


def test_init_without_a_terminal_names_the_passphrase_file_setting(tmp_path: Path) -> None:
    data = keyed_data_dir(tmp_path / "data", init=False)
    # keyed_data_dir names a passphrase file; without it the passphrase must be typed.
    toml = data / "herald.toml"
    toml.write_text("\n".join(line for line in toml.read_text().splitlines()
                              if not line.startswith("passphrase_file")) + "\n")
    result = herald("init", "--data-dir", str(data))
    assert_clear_refusal(result, "passphrase_file")
    assert not (data / "master.key").exists()


@pytest.mark.parametrize("command", [
    ("user", "add", "--tenant", "acme", "ada"),
    ("user", "passwd", "--tenant", "acme", "ada"),
])
def test_account_commands_without_a_terminal_name_password_stdin(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    data = keyed_data_dir(tmp_path / "data")
    assert herald("tenant", "add", "--data-dir", str(data), "acme").returncode == 0
    result = herald(*command[:2], "--data-dir", str(data), *command[2:])
    assert_clear_refusal(result, "--password-stdin")


def test_keys_passphrase_without_a_terminal_names_the_passphrase_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    create_master_key(data / "master.key", PASSPHRASE, kdf=KdfParams(8 * 1024, 1))
    before = (data / "master.key").read_bytes()
    assert_clear_refusal(herald("keys", "passphrase", "--data-dir", str(data)),
                         "--passphrase-file")
    (tmp_path / "current").write_text(PASSPHRASE + "\n")
    assert_clear_refusal(herald("keys", "passphrase", "--data-dir", str(data),
                                "--passphrase-file", str(tmp_path / "current")),
                         "--new-passphrase-file")
    assert (data / "master.key").read_bytes() == before


def test_escrow_passphrase_without_a_terminal_names_the_passphrase_files(tmp_path: Path) -> None:
    escrow_dir = str(tmp_path / "escrow")
    assert_clear_refusal(herald("escrow", "passphrase", "--dir", escrow_dir),
                         "--passphrase-file")
    (tmp_path / "current").write_text("the escrow passphrase\n")
    assert_clear_refusal(herald("escrow", "passphrase", "--dir", escrow_dir,
                                "--passphrase-file", str(tmp_path / "current")),
                         "--new-passphrase-file")


def test_chat_without_a_terminal_names_password_stdin() -> None:
    result = herald("chat", "--url", "ws://127.0.0.1:9/ws", "--tenant", "acme",
                    "--login", "ada")
    assert_clear_refusal(result, "--password-stdin")
