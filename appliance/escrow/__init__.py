"""Herald's own escrow service (`herald escrow ...`), for sites without an HSM.

A third party runs `herald escrow serve` on its own machine. It holds the tenants' escrow keys
in a file sealed by its own passphrase, answers the appliance over mutual TLS (TLS 1.3 only,
client certificates from its private CA) and writes an append-only, hash-chained audit log of
every operation. A separate product that ships in the same binary: its own files, its own
passphrase, its own command (`commands.py`, wired into `herald escrow` by appliance/cli/).

`ServiceEscrow` (`client.py`, speaking `wire.py`) is the appliance's blocking client: it is
the one name the appliance imports from here (appliance/keys/backends.py). The service may use
`appliance.keys`' errors, escrow contract and sealed files and the shared modules at
`appliance/`'s top; never the gateway, the command line or the engine.

Blocking code with threads; never imports Trio.
"""

from appliance.escrow.client import ServiceEscrow

__all__ = ["ServiceEscrow"]
