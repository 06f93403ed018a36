"""`herald keys rotate|reseal|shred` on a real sealed data directory (PKCS#11 escrow in a
SoftHSM2 token), each run as a subprocess: SoftHSM2 reads SOFTHSM2_CONF once per process, and
this pytest process must keep the one tests/escrows.py points it at."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli.demo_keys import SOFTHSM_MODULES

HERALD = [sys.executable, "-m", "appliance.cli"]


def _secret_file(path: Path, text: str) -> str:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    module = next((p for p in SOFTHSM_MODULES if os.path.exists(p)), None)
    if shutil.which("softhsm2-util") is None or module is None:
        pytest.skip("SOFTHSM2 IS NOT INSTALLED: `apt-get install softhsm2` and rerun")
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    f"log.level = ERROR\nslots.removable = false\n")
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "reseal",
                    "--pin", "4321-pin", "--so-pin", "8765-so-pin"],
                   env={**os.environ, "SOFTHSM2_CONF": str(conf)},
                   check=True, capture_output=True, timeout=60)
    data = tmp_path / "data"
    data.mkdir()
    pin = _secret_file(tmp_path / "pin", "4321-pin")
    passphrase = _secret_file(tmp_path / "passphrase", "a passphrase for the reseal tests")
    (data / "herald.toml").write_text(
        f'[escrow]\nbackend = "pkcs11"\npkcs11_module = "{module}"\npkcs11_token = "reseal"\n'
        f'pkcs11_pin_file = "{pin}"\nsofthsm2_conf = "{conf}"\n\n'
        f'[keys]\npassphrase_file = "{passphrase}"\n')
    run(data, "init", check=True)
    return data


def run(data: Path, *args: str, stdin: str = "", check: bool = False
        ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    command = [*HERALD, *args[:2], "--data-dir", str(data), *args[2:]] if args[0] != "init" \
        else [*HERALD, "init", "--data-dir", str(data)]
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_rotate_reseals_accounts_so_a_shred_keeps_them(data_dir: Path) -> None:
    run(data_dir, "tenant", "add", "acme", check=True)
    run(data_dir, "user", "add", "--tenant", "acme", "alice", "--password-stdin",
        stdin="correct horse battery\n", check=True)
    run(data_dir, "group", "add", "--tenant", "acme", "--owner", "alice", "team", check=True)

    rotated = run(data_dir, "keys", "rotate", "--tenant", "acme", check=True)
    assert "epoch 2" in rotated.stdout
    again = run(data_dir, "keys", "reseal", "--tenant", "acme", check=True)
    assert "0 users, groups and members re-sealed" in again.stdout  # rotate did it already
    # The group's creation left a message under epoch 1: --messages moves it too.
    moved = run(data_dir, "keys", "reseal", "--tenant", "acme", "--messages", check=True)
    assert "1 records and message blocks re-sealed" in moved.stdout
    assert "messages: 1 / 1 message blocks re-sealed" in moved.stderr
    shred = run(data_dir, "keys", "shred", "--tenant", "acme", "--epoch", "1",
                "--confirm", "acme", check=True)
    assert "shredded" in shred.stdout
    users = run(data_dir, "user", "list", "--tenant", "acme", check=True)
    assert "alice" in users.stdout
    status = run(data_dir, "keys", "status", check=True)
    assert "shredded" in status.stdout


def test_reseal_help_and_unknown_tenant(data_dir: Path) -> None:
    shown = subprocess.run([*HERALD, "keys", "reseal", "--help"], capture_output=True,
                           text=True, timeout=60, check=True)
    assert "--messages" in shown.stdout
    refused = run(data_dir, "keys", "reseal", "--tenant", "nope")
    assert refused.returncode == 1 and "nope" in refused.stderr
