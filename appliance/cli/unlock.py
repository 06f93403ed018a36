"""Opening the store with its keys: the master key, the escrow, the keyring and the manager.

A data directory is sealed when it has a master key, in a passphrase-sealed file or in an HSM
(`herald init` makes one; appliance/keys/master_place.py says which). Every
store `herald init` or `herald serve --demo` creates is sealed. A store created before
encryption existed (no master key beside it) still opens, plain, for the account commands
and the tests; `herald serve` refuses it.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from appliance.config import MASTER_KEY_PLACES, Config
from appliance.gateway.writer import wall_clock_ms
from appliance.keys.backends import open_escrow
from appliance.keys.errors import EscrowError, KeyFileMissing, KeyManagementError
from appliance.keys.escrow import Escrow
from appliance.keys.manager import KeyManager
from appliance.keys.master import FileMasterKey, MasterKey
from appliance.keys.master_place import (
    check_hsm_settings,
    create_master,
    master_key_place,
    open_master,
)
from appliance.terminal import ask_secret
from engine import Engine, Keyring

__all__ = [
    "APPLIANCE_ID_FILE",
    "KeyedEngine",
    "NotInitialized",
    "initialize",
    "name_key",
    "open_engine",
    "open_name_keyed_engine",
    "read_passphrase",
]

APPLIANCE_ID_FILE = "appliance-id"


class NotInitialized(KeyManagementError):
    code = "not_initialized"


def name_key(master_key: bytes) -> bytes:
    """The key that blinds login names in the store's index, derived from a key file's master
    key so that the engine never holds the master key itself (`MasterKey.derive_name_key`)."""
    return FileMasterKey(master_key).derive_name_key()


def read_passphrase(config: Config, *, confirm: bool = False) -> str:
    """The master key's passphrase: the first line of `[keys] passphrase_file`, or asked for
    on the terminal (twice with `confirm`)."""
    if config.keys.passphrase_file:
        try:
            with open(config.keys.passphrase_file, encoding="utf-8") as file:
                return file.readline().rstrip("\r\n")
        except OSError as exc:
            raise KeyManagementError(
                f"cannot read the passphrase file {config.keys.passphrase_file}: {exc.strerror};"
                f" check [keys] passphrase_file") from None
    return ask_secret(
        "Master key passphrase: ", confirm=confirm, error=KeyManagementError,
        no_terminal="the master key's passphrase is needed and there is no terminal to ask on: "
                    "set [keys] passphrase_file in the configuration",
        differ="the passphrases differ; nothing was created",
    )


@dataclass
class KeyedEngine:
    """An open engine and, for a sealed store, what keeps its keys."""

    engine: Engine
    manager: KeyManager | None
    escrow: Escrow | None
    master_key: MasterKey | None = None

    def close(self) -> None:
        self.engine.close()
        if self.escrow is not None:
            self.escrow.close()
        if self.master_key is not None:
            self.master_key.close()


def _open_escrow(config: Config) -> Escrow:
    escrow = open_escrow(config.escrow)
    if escrow is None:
        raise KeyManagementError(
            "no escrow is configured: set the [escrow] table (an HSM through PKCS#11, or "
            "herald escrow serve run by the third party); see docs/security.md")
    return escrow


def open_engine(config: Config, *, passphrase: str | None = None) -> KeyedEngine:
    """Open the data directory's store: sealed, with every tenant's keys loaded, when it has a
    master key; plain when it is an old plain store. Raises `NotInitialized` for a directory
    with neither, `KeyManagementError` for a wrong passphrase, an HSM or an escrow problem."""
    kwargs = {"map_size": config.map_size_bytes, "limits": config.limits,
              "message_cache_bytes": config.message_cache_bytes}
    if config.data_dir.exists() and not config.data_dir.is_dir():
        raise NotInitialized(f"{config.data_dir} is not a directory: give --data-dir (or "
                             f"data_dir in the configuration) the folder of a Herald store")
    if master_key_place(config) is None:
        if (config.store_dir / "data.mdb").exists():
            return KeyedEngine(Engine(config.store_dir, **kwargs), None, None)  # type: ignore[arg-type]
        raise NotInitialized(
            f"{config.data_dir} has no master key: run 'herald init' first (or 'make run' / "
            f"'herald serve --demo' to try Herald)")
    master_key = open_master(config, lambda: passphrase or read_passphrase(config))
    escrow: Escrow | None = None
    try:
        escrow = _open_escrow(config)
        keyring = Keyring(name_key=master_key.derive_name_key())
        engine = Engine(config.store_dir, keyring=keyring, **kwargs)  # type: ignore[arg-type]
    except BaseException:
        if escrow is not None:
            escrow.close()
        master_key.close()
        raise
    keyed = KeyedEngine(engine, None, escrow, master_key)
    try:
        keyed.manager = KeyManager(
            engine, keyring, escrow, master_key, _appliance_id(config),
            lifetime_s=config.escrow.cache_lifetime_s, now_ms=wall_clock_ms,
        )
        keyed.manager.load_all()
    except BaseException:
        keyed.close()
        raise
    return keyed


def open_name_keyed_engine(config: Config) -> Engine:
    """Open the data directory's store with its name key alone (no escrow, no data key): enough
    for what is sealed under the name key (tenant records, the audit log), and for nothing
    sealed under a tenant's DEK. Plain for an old plain store. Raises as `open_engine`."""
    kwargs = {"map_size": config.map_size_bytes, "limits": config.limits}
    if config.data_dir.exists() and not config.data_dir.is_dir():
        raise NotInitialized(f"{config.data_dir} is not a directory: give --data-dir (or "
                             f"data_dir in the configuration) the folder of a Herald store")
    if master_key_place(config) is None:
        if (config.store_dir / "data.mdb").exists():
            return Engine(config.store_dir, **kwargs)  # type: ignore[arg-type]
        raise NotInitialized(f"{config.data_dir} has no store: give --data-dir the data "
                             f"directory of an initialized appliance")
    master_key = open_master(config, lambda: read_passphrase(config))
    try:
        keyring = Keyring(name_key=master_key.derive_name_key())
    finally:
        master_key.close()
    return Engine(config.store_dir, keyring=keyring, **kwargs)  # type: ignore[arg-type]


def _appliance_id(config: Config) -> str:
    try:
        return (config.data_dir / APPLIANCE_ID_FILE).read_text().strip()
    except OSError:
        raise KeyFileMissing(
            f"{config.data_dir / APPLIANCE_ID_FILE} is missing: it names this appliance's "
            f"keys at the escrow; restore it from the backup made after 'herald init'") from None


def initialize(config: Config, passphrase: str | None, *, place: str | None = None) -> str:
    """`herald init`: the master key (in `place`, "file" sealed by `passphrase` or "pkcs11";
    default `[keys] master_key`) and the appliance id, after checking that the escrow
    answers. Returns what to tell the administrator."""
    place = place or config.keys.master_key
    if place not in MASTER_KEY_PLACES:
        raise ValueError(f"a master key lives in one of {MASTER_KEY_PLACES}, not {place!r}")
    if place == "pkcs11":
        check_hsm_settings(config)  # before anything is written
    if master_key_place(config) is not None:
        raise KeyManagementError(
            f"{config.data_dir} has a master key already: this appliance is initialized already")
    if (config.store_dir / "data.mdb").exists():
        raise KeyManagementError(
            f"{config.store_dir} holds a store created without encryption; Herald cannot seal "
            f"it in place: initialize a new data directory")
    escrow = _open_escrow(config)
    try:
        escrow.status("herald-init-probe")  # reachable, and accepts our credentials
    except EscrowError as exc:
        raise KeyManagementError(f"the escrow did not answer as it should: {exc.message}") from None
    finally:
        escrow.close()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    id_path = config.data_dir / APPLIANCE_ID_FILE
    if not id_path.exists():
        fd = os.open(id_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(8) + "\n")
    master_key, backup = create_master(config, place, passphrase)
    master_key.close()
    keep_apart = ("keep the passphrase apart from them. Without the master key file AND its "
                  "passphrase" if place == "file" else
                  f"keep the token's PIN ({config.keys.pkcs11_pin_file}) apart from them. "
                  f"Without the token (or its HSM backup) AND its PIN")
    return (
        f"Herald initialized in {config.data_dir}; the master key is "
        f"{master_key.describe()}.\n"
        f"Back up NOW, to a place other than this machine:\n"
        f"{backup}"
        f"  {id_path}  (names this appliance's keys at the escrow)\n"
        f"and {keep_apart} AND the escrow, the stored messages can never be read again."
    )
