"""Herald's own escrow service (`herald escrow ...`), for sites without an HSM.

A third party runs `herald escrow serve` on its own machine. It holds the tenants' escrow keys
in a file sealed by its own passphrase, answers the appliance over mutual TLS (TLS 1.3 only,
client certificates from its private CA) and writes an append-only, hash-chained audit log of
every operation. `ServiceEscrow` is the appliance's blocking client.

Blocking code with threads; never imports Trio.
"""

from appliance.keys.escrow_service.client import ServiceEscrow

__all__ = ["ServiceEscrow"]
