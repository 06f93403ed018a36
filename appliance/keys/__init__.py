"""Keys of the appliance: the master key, the double-wrapped DEKs and the escrow backends.

Blocking code: the server calls it from worker threads. It must never import Trio, nor engine
internals (only names that `engine` re-exports). Secrets never appear in its messages.
"""

from appliance.keys.dek import dek_aad, unwrap_dek, wrap_dek
from appliance.keys.errors import (
    DamagedKeyFile,
    DekMismatch,
    EscrowError,
    EscrowRefused,
    EscrowUnavailable,
    KeyFileExists,
    KeyFileMissing,
    KeyManagementError,
    WeakPassphrase,
    WrongPassphrase,
)
from appliance.keys.escrow import Escrow, KeyState
from appliance.keys.master import create_master_key, load_master_key

__all__ = [
    "DamagedKeyFile",
    "DekMismatch",
    "Escrow",
    "EscrowError",
    "EscrowRefused",
    "EscrowUnavailable",
    "KeyFileExists",
    "KeyFileMissing",
    "KeyManagementError",
    "KeyState",
    "WeakPassphrase",
    "WrongPassphrase",
    "create_master_key",
    "dek_aad",
    "load_master_key",
    "unwrap_dek",
    "wrap_dek",
]
