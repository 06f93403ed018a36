"""`open_escrow`: the escrow backend that the `[escrow]` configuration names."""

from __future__ import annotations

import os

from appliance.config import EscrowConfig
from appliance.keys.errors import EscrowError
from appliance.keys.escrow import Escrow

__all__ = ["open_escrow"]


def open_escrow(config: EscrowConfig) -> Escrow | None:
    """The configured backend, ready to use; None when `backend = "none"`.

    Raises `EscrowError` when the PIN file cannot be read or the client files cannot be loaded,
    `EscrowUnavailable` when the HSM is not there, `EscrowRefused` for a wrong PIN.
    """
    if config.backend == "service":
        from appliance.escrow import ServiceEscrow

        return ServiceEscrow(config.address, config.ca_file, config.cert_file, config.key_file,
                             timeout_s=config.timeout_s)
    if config.backend == "pkcs11":
        from appliance.keys.pkcs11_escrow import Pkcs11Escrow

        if config.softhsm2_conf:
            # SoftHSM2 reads it once, when the module loads in this process.
            os.environ["SOFTHSM2_CONF"] = config.softhsm2_conf

        try:
            with open(config.pkcs11_pin_file, encoding="utf-8") as file:
                pin = file.readline().rstrip("\r\n")
        except OSError as exc:
            raise EscrowError(f"cannot read the PKCS#11 PIN file {config.pkcs11_pin_file}: "
                              f"{exc.strerror}; check escrow.pkcs11_pin_file") from None
        return Pkcs11Escrow(config.pkcs11_module, config.pkcs11_token, pin)
    return None
