"""Where this appliance's master key lives, as `herald init` made it: a passphrase-sealed file
(`master.key`) or a PKCS#11 token (`master-key.pkcs11` in the data directory names the token and
the key label; it holds no secret). Creating and opening the master key from the configuration.

`[keys] master_key` says what `herald init` creates; afterwards the data directory decides, and
the `[keys] pkcs11_*` settings must point at the token and label it names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from appliance.config import Config
from appliance.keys.errors import DamagedKeyFile, HsmSettingsError, KeyManagementError
from appliance.keys.master import FileMasterKey, MasterKey, create_master_key, load_master_key

__all__ = [
    "HSM_MARKER_FORMAT", "check_hsm_settings", "create_master", "master_key_place", "open_master",
]

HSM_MARKER_FORMAT = "herald-master-key-pkcs11-v1"


def master_key_place(config: Config) -> str | None:
    """"file" or "pkcs11" for an initialized data directory, None before `herald init`.
    Raises `KeyManagementError` when both are there (one was copied in by mistake)."""
    in_file = config.master_key_path.exists()
    in_hsm = config.hsm_master_key_path.exists()
    if in_file and in_hsm:
        raise KeyManagementError(
            f"{config.data_dir} has both a master key file ({config.master_key_path}) and a "
            f"master key in an HSM ({config.hsm_master_key_path}): only one can be this data "
            f"directory's; move the other away")
    return "file" if in_file else "pkcs11" if in_hsm else None


def open_master(config: Config, passphrase: Callable[[], str]) -> MasterKey:
    """The master key of the initialized data directory; `passphrase()` is called only for a
    key file. Raises `WrongPassphrase`, `DamagedKeyFile`, `KeyFileMissing` (file), the
    `HsmError`s (token), or `KeyManagementError` before `herald init`."""
    place = master_key_place(config)
    if place == "file":
        return FileMasterKey(load_master_key(config.master_key_path, passphrase()),
                             config.master_key_path)
    if place is None:
        raise KeyManagementError(f"{config.data_dir} has no master key: run 'herald init'")
    marker = _read_marker(config.hsm_master_key_path)
    from appliance.keys.pkcs11_master import Pkcs11MasterKey  # python-pkcs11 only when used

    keys = config.keys
    if (marker["token"], marker["key_label"]) != (keys.pkcs11_token, keys.pkcs11_key_label):
        raise HsmSettingsError(
            f"this data directory's master key is in the PKCS#11 token {marker['token']!r} "
            f"under the label {marker['key_label']!r} ({config.hsm_master_key_path}), but "
            f"[keys] names token {keys.pkcs11_token!r}, label {keys.pkcs11_key_label!r}: set "
            f"keys.pkcs11_token and keys.pkcs11_key_label to match")
    return Pkcs11MasterKey.open(keys.pkcs11_module, keys.pkcs11_token, _hsm_pin(config),
                                keys.pkcs11_key_label)


def create_master(config: Config, place: str, passphrase: str | None) -> tuple[MasterKey, str]:
    """Create the master key in `place` ("file", sealed by `passphrase`, or "pkcs11") and
    return it with what the administrator must back up (lines for `herald init` to print).
    Raises `KeyFileExists`/`WeakPassphrase` (file), `MasterKeyExists` and the `HsmError`s."""
    if place == "file":
        if passphrase is None:
            raise ValueError("a master key file needs a passphrase")
        key = create_master_key(config.master_key_path, passphrase)
        return FileMasterKey(key, config.master_key_path), (
            f"  {config.master_key_path}  (the master key, sealed by your passphrase)\n")
    from appliance.keys.pkcs11_master import NAME_KEY_SUFFIX, Pkcs11MasterKey

    keys = config.keys
    master = Pkcs11MasterKey.create(keys.pkcs11_module, keys.pkcs11_token, _hsm_pin(config),
                                    keys.pkcs11_key_label)
    try:
        _write_marker(config.hsm_master_key_path, keys.pkcs11_token, keys.pkcs11_key_label)
    except OSError as exc:
        master.close()
        raise KeyManagementError(
            f"the master key was made in the token, but {config.hsm_master_key_path} cannot "
            f"be written ({exc.strerror}); fix that, then have the HSM's administrator remove "
            f"the objects {keys.pkcs11_key_label!r} and "
            f"{keys.pkcs11_key_label + NAME_KEY_SUFFIX!r} before running 'herald init' again"
        ) from None
    return master, (
        f"  the PKCS#11 token {keys.pkcs11_token!r}, with the HSM's own backup or cloning "
        f"procedure: the master key (objects {keys.pkcs11_key_label!r} and "
        f"{keys.pkcs11_key_label + NAME_KEY_SUFFIX!r}) was generated inside it and can never "
        f"be extracted, so there is no file for it; a token lost or reset without such a "
        f"backup loses every stored message for good\n"
        f"  {config.hsm_master_key_path}  (names that token and label; not secret)\n")


def check_hsm_settings(config: Config) -> None:
    """Refuse settings that cannot work or that would undo the double control: the master key
    in the escrow's own token (whoever holds its PIN would hold both halves of every DEK), or
    two SoftHSM2 configurations (it reads one per process)."""
    keys, escrow = config.keys, config.escrow
    missing = [name for name in ("pkcs11_module", "pkcs11_token", "pkcs11_pin_file",
                                 "pkcs11_key_label") if not getattr(keys, name)]
    if missing:
        raise HsmSettingsError(f"the master key is in a PKCS#11 token: set keys.{missing} in "
                               f"the configuration (docs/security.md, 'Where the master key "
                               f"lives')")
    if escrow.backend != "pkcs11":
        return
    if keys.softhsm2_conf and escrow.softhsm2_conf and (
            Path(keys.softhsm2_conf).resolve() != Path(escrow.softhsm2_conf).resolve()):
        raise HsmSettingsError("keys.softhsm2_conf and escrow.softhsm2_conf differ, and "
                               "SoftHSM2 reads one configuration per process: keep both tokens "
                               "under one softhsm2.conf and set it once")
    same_module = os.path.realpath(keys.pkcs11_module) == os.path.realpath(escrow.pkcs11_module)
    if same_module and keys.pkcs11_token == escrow.pkcs11_token:
        raise HsmSettingsError(f"the master key and the escrow keys would share the token "
                               f"{keys.pkcs11_token!r}: whoever holds its PIN would hold both "
                               f"halves of every data key. Give the master key a token of the "
                               f"appliance's own (keys.pkcs11_token)")


def _hsm_pin(config: Config) -> str:
    check_hsm_settings(config)
    # SoftHSM2 reads its configuration once, when the module loads in this process, which may
    # be before the escrow's token is opened: so the escrow's setting serves both.
    softhsm2_conf = config.keys.softhsm2_conf or (
        config.escrow.softhsm2_conf if config.escrow.backend == "pkcs11" else "")
    if softhsm2_conf:
        os.environ["SOFTHSM2_CONF"] = softhsm2_conf
    try:
        with open(config.keys.pkcs11_pin_file, encoding="utf-8") as file:
            return file.readline().rstrip("\r\n")
    except OSError as exc:
        raise HsmSettingsError(f"cannot read the PKCS#11 PIN file {config.keys.pkcs11_pin_file}:"
                               f" {exc.strerror}; check keys.pkcs11_pin_file") from None


def _write_marker(path: Path, token: str, key_label: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"format": HSM_MARKER_FORMAT, "token": token, "key_label": key_label},
                      indent=1) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as out:
        out.write(body)
        out.flush()
        os.fsync(out.fileno())


def _read_marker(path: Path) -> dict[str, str]:
    damaged = DamagedKeyFile(f"{path} is damaged: it names the HSM token and key label of the "
                             f"master key; restore it from the backup made after 'herald init'")
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyManagementError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise damaged from None
    if (not isinstance(marker, dict) or marker.get("format") != HSM_MARKER_FORMAT
            or not all(isinstance(marker.get(k), str) for k in ("token", "key_label"))):
        raise damaged
    return {"token": marker["token"], "key_label": marker["key_label"]}
