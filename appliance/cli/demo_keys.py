"""Keys for trying Herald with one command: a SoftHSM2 token as the escrow, in the data dir.

`herald serve --demo` (what `make run` starts) must work on a fresh machine with no setup, and
Herald never stores anything unsealed. So on first start the demo makes a real PKCS#11 escrow
(a SoftHSM2 token) and a master key, and writes their settings to DATA_DIR/herald.toml, where
every `herald` command finds them. The token's PIN and the passphrase are kept in files beside
the data: convenient, and NOT double control. A real site runs `herald init` with an escrow
held by a third party (docs/security.md).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

from appliance.cli.unlock import initialize
from appliance.config import CONFIG_IN_DATA_DIR, Config, load_config
from appliance.keys.errors import KeyManagementError

__all__ = ["DEMO_KEYS_DIR", "SOFTHSM_MODULES", "prepare_demo_keys"]

DEMO_KEYS_DIR = "demo-keys"
# Where Debian's softhsm2 puts its PKCS#11 module (then a build from source).
SOFTHSM_MODULES = ("/usr/lib/softhsm/libsofthsm2.so",
                   "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                   "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
                   "/usr/local/lib/softhsm/libsofthsm2.so")
_TOKEN = "herald-demo"
WARNING = (
    "DEMO KEYS: the escrow is a SoftHSM2 token in {dir}, with its PIN and the master key's "
    "passphrase in files beside it. Fine for trying Herald; for real use run 'herald init' "
    "with an escrow held by a third party (docs/security.md)."
)


def _secret_file(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")


def prepare_demo_keys(config: Config) -> tuple[Config, str | None]:
    """The configuration with the demo's escrow and key settings, creating them on first use
    (returns the notice to print then, else None). Raises `KeyManagementError` when SoftHSM2
    is not installed."""
    data_dir = config.data_dir.resolve()
    settings = data_dir / CONFIG_IN_DATA_DIR
    notice = None
    if not config.master_key_path.exists():
        module = next((m for m in SOFTHSM_MODULES if Path(m).exists()), None)
        if shutil.which("softhsm2-util") is None or module is None:
            raise KeyManagementError(
                "the demo keeps its escrow key in a SoftHSM2 token, and softhsm2 is not "
                "installed: run 'make run' (it installs it) or 'apt-get install softhsm2'")
        keys_dir = data_dir / DEMO_KEYS_DIR
        tokens = keys_dir / "tokens"
        tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
        conf = keys_dir / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                        f"log.level = ERROR\n")
        pin, so_pin = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
        made = subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", _TOKEN, "--pin", pin,
             "--so-pin", so_pin],
            env={**os.environ, "SOFTHSM2_CONF": str(conf)}, capture_output=True, text=True,
            check=False,
        )
        if made.returncode != 0:
            raise KeyManagementError(f"softhsm2-util could not make the demo token: "
                                     f"{made.stderr.strip() or made.stdout.strip()}")
        _secret_file(keys_dir / "hsm-pin", pin)
        _secret_file(keys_dir / "master-passphrase", secrets.token_urlsafe(18))
        settings.write_text(
            "# Written by 'herald serve --demo': the demo's escrow and master key settings.\n"
            "[escrow]\n"
            'backend = "pkcs11"\n'
            f'pkcs11_module = "{module}"\n'
            f'pkcs11_token = "{_TOKEN}"\n'
            f'pkcs11_pin_file = "{keys_dir / "hsm-pin"}"\n'
            f'softhsm2_conf = "{conf}"\n'
            "cache_lifetime_s = 300.0\n"
            "[keys]\n"
            f'passphrase_file = "{keys_dir / "master-passphrase"}"\n'
        )
        notice = WARNING.format(dir=keys_dir)
    if not settings.is_file():
        raise KeyManagementError(
            f"{config.data_dir} was initialized with 'herald init', not by the demo: start it "
            f"with 'herald serve' and its configuration")
    demo = load_config(settings, data_dir=config.data_dir)
    config = _with_keys(config, demo)
    if notice is not None:
        initialize(config, _read_first_line(Path(config.keys.passphrase_file)))
    return config, notice


def _with_keys(config: Config, demo: Config) -> Config:
    return replace(config, escrow=demo.escrow, keys=demo.keys)


def _read_first_line(path: Path) -> str:
    return path.read_text().splitlines()[0]
