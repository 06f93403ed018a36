"""Tenant data keys in memory: unwrapped from the escrow, installed in the engine's keyring,
asked for again before they expire, and created for new tenants and rotations.

Blocking code: the escrow is a network service or an HSM. The server runs these calls in
worker threads; the command line runs them directly.

A DEK is installed with an expiry of `lifetime_s`. `refresh` unwraps every key again well
before that, so a tenant whose escrow key is revoked loses its keys within one lifetime (at
once, when the escrow says so), and a tenant whose escrow cannot be reached keeps being served
until its keys lapse, then is unavailable (`key_unavailable`) until the escrow is back.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.keys.dek import unwrap_dek, wrap_dek
from appliance.keys.errors import EscrowRefused, EscrowUnavailable
from appliance.keys.escrow import Escrow
from engine import AddKeyEpoch, Engine, Keyring, ShredKeyEpoch

__all__ = ["KeyManager", "TenantKeyStatus", "escrow_key_id"]

log = logging.getLogger("herald.keys")

DEK_BYTES = 32


def escrow_key_id(appliance_id: str, tenant: int) -> str:
    """The escrow's name for a tenant's key: unique across appliances sharing one escrow."""
    return f"herald-{appliance_id}-t{tenant}"


@dataclass(frozen=True, slots=True)
class TenantKeyStatus:
    tenant: int
    state: str  # "available" | "unavailable" | "revoked" | "no_key"
    current_epoch: int
    epochs: int  # epochs whose DEK is in memory now
    detail: str = ""


class KeyManager:
    def __init__(
        self,
        engine: Engine,
        keyring: Keyring,
        escrow: Escrow,
        master_key: bytes,
        appliance_id: str,
        *,
        lifetime_s: float,
        now_ms: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._keyring = keyring
        self._escrow = escrow
        self._master_key = master_key
        self._appliance_id = appliance_id
        self._lifetime_s = lifetime_s
        self._now_ms = now_ms
        self._clock = clock
        self._status: dict[int, TenantKeyStatus] = {}

    # -- loading ------------------------------------------------------------------------------

    def load_all(self) -> list[TenantKeyStatus]:
        """Unwrap and install the keys of every tenant; one tenant's failure spares the rest."""
        return [self.load_tenant(tenant) for tenant, _ in self._engine.tenants()]

    def load_tenant(self, tenant: int) -> TenantKeyStatus:
        """Unwrap every live epoch of `tenant` and install it with a fresh expiry."""
        epochs = [(e, r) for e, r in self._engine.key_epochs(tenant) if r.state != "shredded"]
        if not epochs:
            return self._note(TenantKeyStatus(tenant, "no_key", 0, 0,
                                              "no data key yet: herald keys rotate creates one"))
        current = max(epoch for epoch, _ in epochs)
        expires_at = self._clock() + self._lifetime_s
        installed = 0
        try:
            for epoch, record in epochs:
                dek = unwrap_dek(self._master_key, self._escrow, record.key_id, tenant, epoch,
                                 record.wrapped_dek)
                self._keyring.install(tenant, epoch, dek, expires_at=expires_at)
                installed += 1
        except EscrowRefused as refused:
            # The escrow will not open this tenant's keys again: forget them now rather than
            # at expiry. Other tenants are untouched.
            self._keyring.forget(tenant)
            log.warning("tenant=%s escrow refused its key: %s", tenant, refused)
            return self._note(TenantKeyStatus(tenant, "revoked", current, 0, str(refused)))
        except EscrowUnavailable as unreachable:
            log.warning("tenant=%s escrow unreachable; keys lapse at their expiry: %s",
                        tenant, unreachable)
            return self._note(TenantKeyStatus(tenant, "unavailable", current, installed,
                                              str(unreachable)))
        self._keyring.set_current(tenant, current)
        return self._note(TenantKeyStatus(tenant, "available", current, installed))

    def _note(self, status: TenantKeyStatus) -> TenantKeyStatus:
        self._status[status.tenant] = status
        return status

    def status(self) -> list[TenantKeyStatus]:
        return [self._status[t] for t in sorted(self._status)]

    # -- changes ------------------------------------------------------------------------------

    def rotate(self, tenant: int) -> int:
        """Start a new key epoch for `tenant` (its first, for a new tenant): a fresh DEK,
        wrapped under the master key and the tenant's escrow key. Old epochs stay readable.
        Returns the new epoch."""
        key_id = escrow_key_id(self._appliance_id, tenant)
        if self._escrow.status(key_id) == "missing":
            self._escrow.create_key(key_id)
        epochs = self._engine.key_epochs(tenant)
        epoch = max((e for e, _ in epochs), default=0) + 1
        dek = os.urandom(DEK_BYTES)
        wrapped = wrap_dek(self._master_key, self._escrow, key_id, tenant, epoch, dek)
        added = self._engine.apply(
            AddKeyEpoch(tenant=tenant, epoch=epoch, wrapped_dek=wrapped, key_id=key_id),
            self._now_ms(),
        )
        assert added.epoch == epoch  # type: ignore[union-attr]
        self._keyring.install(tenant, epoch, dek, expires_at=self._clock() + self._lifetime_s)
        self._keyring.set_current(tenant, epoch)
        self.load_tenant(tenant)
        return epoch

    def shred(self, tenant: int, epoch: int) -> None:
        """Destroy the DEK of one epoch: its records can never be read again."""
        self._engine.apply(ShredKeyEpoch(tenant=tenant, epoch=epoch), self._now_ms())
        self._keyring.forget(tenant, epoch)

    def revoke(self, tenant: int) -> None:
        """Destroy the tenant's escrow key: none of its stored data can be read again."""
        epochs = self._engine.key_epochs(tenant)
        key_ids = {record.key_id for _, record in epochs} or {
            escrow_key_id(self._appliance_id, tenant)}
        for key_id in sorted(key_ids):
            try:
                self._escrow.revoke(key_id)
            except EscrowRefused:
                pass  # revoked before, or never created: the outcome asked for holds
        self._keyring.forget(tenant)
        self._note(TenantKeyStatus(tenant, "revoked", 0, 0, "escrow key revoked"))
