"""Changing the master key file's passphrase: `change_master_key_passphrase`, and `herald keys
passphrase` run as a child process (on a pseudo-terminal where it asks), on real files with real
Argon2id. The refusals leave master.key byte for byte as it was."""

from __future__ import annotations

import fcntl
import json
import os
import stat
from pathlib import Path

import pytest
from keyed_dirs import PASSPHRASE, add_acme_with_a_group, herald, keyed_data_dir
from pseudo_terminal import run_on_terminal

from appliance.keys import (
    WeakPassphrase,
    WrongPassphrase,
    change_master_key_passphrase,
    create_master_key,
    load_master_key,
)
from appliance.keys.sealed_file import DEFAULT_KDF, KdfParams

OLD = "the old master key passphrase"
NEW = "the new master key passphrase"
CHEAP = KdfParams(memory_kib=8 * 1024, iterations=1)  # today's parameters are what we raise to


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory holding only master.key, sealed by OLD under cheap (old) parameters:
    `herald keys passphrase` needs nothing else (not even the escrow)."""
    data = tmp_path / "data"
    data.mkdir()
    create_master_key(data / "master.key", OLD, kdf=CHEAP)
    return data


def _secret_files(tmp_path: Path, **lines: str) -> dict[str, str]:
    paths = {}
    for name, line in lines.items():
        (tmp_path / name).write_text(line + "\n")
        paths[name] = str(tmp_path / name)
    return paths


# -- the function ----------------------------------------------------------------------------


def test_the_new_passphrase_opens_the_same_key_under_todays_parameters(data_dir: Path) -> None:
    path = data_dir / "master.key"
    master_key, before = load_master_key(path, OLD), json.loads(path.read_text())
    change_master_key_passphrase(path, master_key, NEW)
    after = json.loads(path.read_text())
    assert load_master_key(path, NEW) == master_key
    with pytest.raises(WrongPassphrase):
        load_master_key(path, OLD)
    assert (after["kdf"]["memory_kib"], after["kdf"]["iterations"], after["kdf"]["lanes"]) == (
        DEFAULT_KDF.memory_kib, DEFAULT_KDF.iterations, DEFAULT_KDF.lanes)
    assert after["kdf"]["salt"] != before["kdf"]["salt"] and after["nonce"] != before["nonce"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in data_dir.iterdir()] == ["master.key"]  # no temporary file left


def test_a_short_new_passphrase_is_refused_before_anything_is_written(data_dir: Path) -> None:
    path = data_dir / "master.key"
    before = path.read_bytes()
    with pytest.raises(WeakPassphrase, match="at least 12"):
        change_master_key_passphrase(path, load_master_key(path, OLD), "short")
    assert path.read_bytes() == before


# -- herald keys passphrase ------------------------------------------------------------------


def test_the_command_changes_the_passphrase_and_says_what_backups_still_need(
        data_dir: Path, tmp_path: Path) -> None:
    path = data_dir / "master.key"
    master_key = load_master_key(path, OLD)
    files = _secret_files(tmp_path, old=OLD, new=NEW)
    done = herald("keys", "passphrase", "--data-dir", str(data_dir),
                  "--passphrase-file", files["old"], "--new-passphrase-file", files["new"])
    assert done.returncode == 0, done.stderr
    assert "OLD passphrase" in done.stdout and "backups" in done.stdout
    assert "herald serve` needs nothing" in done.stdout
    assert OLD not in done.stdout + done.stderr and NEW not in done.stdout + done.stderr
    assert load_master_key(path, NEW) == master_key
    with pytest.raises(WrongPassphrase):
        load_master_key(path, OLD)

    again = herald("keys", "passphrase", "--data-dir", str(data_dir),
                   "--passphrase-file", files["old"], "--new-passphrase-file", files["new"])
    assert again.returncode == 1 and "(wrong_passphrase)" in again.stderr, again.stderr


def test_both_passphrases_can_come_on_standard_input(data_dir: Path) -> None:
    path = data_dir / "master.key"
    master_key = load_master_key(path, OLD)
    done = herald("keys", "passphrase", "--data-dir", str(data_dir), "--passphrase-file", "-",
                  "--new-passphrase-file", "-", stdin=f"{OLD}\n{NEW}\n")
    assert done.returncode == 0, done.stderr
    assert load_master_key(path, NEW) == master_key


@pytest.mark.parametrize(("current", "new", "code", "hint"), [
    ("not the passphrase at all", NEW, "(wrong_passphrase)", "does not open"),
    (OLD, "too short", "(weak_passphrase)", "at least 12 characters"),
], ids=["wrong-current", "short-new"])
def test_a_refused_change_says_why_and_leaves_the_file_as_it_was(
        data_dir: Path, tmp_path: Path, current: str, new: str, code: str, hint: str) -> None:
    before = (data_dir / "master.key").read_bytes()
    files = _secret_files(tmp_path, current=current, new=new)
    refused = herald("keys", "passphrase", "--data-dir", str(data_dir),
                     "--passphrase-file", files["current"], "--new-passphrase-file", files["new"])
    assert refused.returncode == 1 and code in refused.stderr and hint in refused.stderr, (
        refused.stderr)
    assert current not in refused.stderr and new not in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (data_dir / "master.key").read_bytes() == before
    assert sorted(p.name for p in data_dir.iterdir()) == ["master.key"]


def test_on_a_terminal_it_asks_the_current_passphrase_then_the_new_one_twice(
        data_dir: Path) -> None:
    master_key = load_master_key(data_dir / "master.key", OLD)
    status, shown = run_on_terminal(
        ["keys", "passphrase", "--data-dir", str(data_dir)],
        [("Current master key passphrase: ", OLD), ("New master key passphrase: ", NEW),
         ("Again: ", NEW)])
    assert status == 0, shown
    assert OLD not in shown and NEW not in shown  # never echoed
    assert load_master_key(data_dir / "master.key", NEW) == master_key


def test_on_a_terminal_a_mistyped_confirmation_changes_nothing(data_dir: Path) -> None:
    before = (data_dir / "master.key").read_bytes()
    status, shown = run_on_terminal(
        ["keys", "passphrase", "--data-dir", str(data_dir)],
        [("Current master key passphrase: ", OLD), ("New master key passphrase: ", NEW),
         ("Again: ", NEW + "!")])
    assert status == 1 and "the new passphrases differ; nothing was changed" in shown, shown
    assert (data_dir / "master.key").read_bytes() == before


def test_a_second_change_at_the_same_time_is_refused(data_dir: Path, tmp_path: Path) -> None:
    """The lock `herald keys passphrase` takes on the directory of master.key, held here as a
    first change running on a terminal would hold it."""
    before = (data_dir / "master.key").read_bytes()
    files = _secret_files(tmp_path, old=OLD, new=NEW)
    held = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = herald("keys", "passphrase", "--data-dir", str(data_dir),
                      "--passphrase-file", files["old"], "--new-passphrase-file", files["new"])
    finally:
        os.close(held)
    assert busy.returncode == 1 and "(passphrase_change_busy)" in busy.stderr, busy.stderr
    assert (data_dir / "master.key").read_bytes() == before
    done = herald("keys", "passphrase", "--data-dir", str(data_dir),
                  "--passphrase-file", files["old"], "--new-passphrase-file", files["new"])
    assert done.returncode == 0, done.stderr


def test_before_init_it_says_to_run_init(tmp_path: Path) -> None:
    refused = herald("keys", "passphrase", "--data-dir", str(tmp_path / "empty"))
    assert refused.returncode == 1 and "run 'herald init'" in refused.stderr, refused.stderr


def test_a_sealed_store_opens_with_the_new_passphrase_once_the_setting_holds_it(
        tmp_path: Path) -> None:
    """End to end: the same master key still opens every tenant's data keys (through the
    escrow); the command warns that `[keys] passphrase_file` still holds the old passphrase."""
    data = keyed_data_dir(tmp_path / "data")
    add_acme_with_a_group(data, "correct horse battery")
    setting = tmp_path / "data-escrow" / "passphrase"  # keyed_data_dir's [keys] passphrase_file
    new_file = _secret_files(tmp_path, new=NEW)["new"]
    done = herald("keys", "passphrase", "--data-dir", str(data), "--new-passphrase-file",
                  new_file)
    assert done.returncode == 0, done.stderr
    assert f"[keys] passphrase_file ({setting}) does not hold the new passphrase" in done.stdout
    stale = herald("user", "list", "--data-dir", str(data), "--tenant", "acme")
    assert stale.returncode == 1 and "(wrong_passphrase)" in stale.stderr, stale.stderr
    assert PASSPHRASE not in stale.stderr

    setting.write_text(NEW + "\n")
    listing = herald("user", "list", "--data-dir", str(data), "--tenant", "acme")
    assert listing.returncode == 0, listing.stderr
    assert "alice" in listing.stdout
