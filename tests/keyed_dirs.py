"""Sealed data directories as an administrator makes them: a SoftHSM2 token of their own as
the escrow, a `herald.toml` naming it, and `herald init`, all in subprocesses.

SoftHSM2 reads SOFTHSM2_CONF once per process, and tests/escrows.py points the pytest process
at its own token; so everything that opens these directories' keys runs in a child process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli.demo_keys import SOFTHSM_MODULES

HERALD = [sys.executable, "-m", "appliance.cli"]
PASSPHRASE = "a master key passphrase for tests"


def herald(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HERALD, *args], input=stdin, capture_output=True, text=True,
                          timeout=120, check=False)


def keyed_data_dir(data: Path, *, cache_lifetime_s: float = 300.0, init: bool = True) -> Path:
    """Give `data` an escrow (a fresh SoftHSM2 token beside it) and, with `init`, run
    `herald init` on it. Skips loudly only when SoftHSM2 is not installed."""
    module = next((m for m in SOFTHSM_MODULES if os.path.exists(m)), None)
    if shutil.which("softhsm2-util") is None or module is None:
        pytest.skip("SOFTHSM2 IS NOT INSTALLED, so sealed stores are NOT TESTED end to end: "
                    "run `apt-get install softhsm2` (make test tries to) and rerun")
    keys = data.parent / f"{data.name}-escrow"
    (keys / "tokens").mkdir(parents=True)
    conf = keys / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {keys / 'tokens'}\nobjectstore.backend = file\n"
                    f"log.level = ERROR\n")
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "herald", "--pin",
                    "1234-pin", "--so-pin", "5678-so-pin"], check=True, capture_output=True,
                   env={**os.environ, "SOFTHSM2_CONF": str(conf)}, timeout=60)
    (keys / "pin").write_text("1234-pin\n")
    (keys / "passphrase").write_text(PASSPHRASE + "\n")
    data.mkdir(parents=True, exist_ok=True)
    (data / "herald.toml").write_text(
        "[escrow]\n"
        'backend = "pkcs11"\n'
        f'pkcs11_module = "{module}"\n'
        'pkcs11_token = "herald"\n'
        f'pkcs11_pin_file = "{keys / "pin"}"\n'
        f'softhsm2_conf = "{conf}"\n'
        f"cache_lifetime_s = {cache_lifetime_s}\n"
        "[keys]\n"
        f'passphrase_file = "{keys / "passphrase"}"\n'
    )
    if init:
        result = herald("init", "--data-dir", str(data))
        assert result.returncode == 0, result.stderr
        assert "Back up NOW" in result.stdout
    return data


def add_acme_with_a_group(data: Path, password: str) -> None:
    """Tenant acme, its user alice (with `password`) and her group "team", through the CLI."""
    for args, stdin in ((("tenant", "add", "acme"), ""),
                        (("user", "add", "--tenant", "acme", "alice", "--password-stdin"),
                         password + "\n"),
                        (("group", "add", "--tenant", "acme", "--owner", "alice", "team"), "")):
        done = herald(*args[:2], "--data-dir", str(data), *args[2:], stdin=stdin)
        assert done.returncode == 0, done.stderr
