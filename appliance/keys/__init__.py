"""Keys of the appliance: the master key (a sealed file or an HSM), the double-wrapped DEKs and
the escrow backends.

Blocking code: the server calls it from worker threads. It must never import Trio, nor engine
internals (only names that `engine` re-exports). Secrets never appear in its messages.

Imported by the gateway (its key refresh), the command line, and the escrow service (the
errors, the escrow contract and sealed files it shares). Of `appliance.escrow` it imports
only the client, `ServiceEscrow` (backends.py); of the rest of the appliance only `config`.
"""

from appliance.keys.dek import dek_aad, unwrap_dek, wrap_dek
from appliance.keys.errors import (
    DamagedKeyFile,
    DekMismatch,
    EscrowError,
    EscrowRefused,
    EscrowUnavailable,
    HsmError,
    HsmPinLocked,
    HsmPinWrong,
    HsmSettingsError,
    HsmTokenMissing,
    HsmUnavailable,
    KeyFileExists,
    KeyFileMissing,
    KeyManagementError,
    MasterKeyExists,
    MasterKeyInHsm,
    MasterKeyMissing,
    WeakPassphrase,
    WrongPassphrase,
)
from appliance.keys.escrow import Escrow, KeyState
from appliance.keys.master import (
    FileMasterKey,
    MasterKey,
    change_master_key_passphrase,
    create_master_key,
    load_master_key,
)

__all__ = [
    "DamagedKeyFile",
    "DekMismatch",
    "Escrow",
    "EscrowError",
    "EscrowRefused",
    "EscrowUnavailable",
    "FileMasterKey",
    "HsmError",
    "HsmPinLocked",
    "HsmPinWrong",
    "HsmSettingsError",
    "HsmTokenMissing",
    "HsmUnavailable",
    "KeyFileExists",
    "KeyFileMissing",
    "KeyManagementError",
    "KeyState",
    "MasterKey",
    "MasterKeyExists",
    "MasterKeyInHsm",
    "MasterKeyMissing",
    "WeakPassphrase",
    "WrongPassphrase",
    "change_master_key_passphrase",
    "create_master_key",
    "dek_aad",
    "load_master_key",
    "unwrap_dek",
    "wrap_dek",
]
