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

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.keys.dek import unwrap_dek, wrap_dek
from appliance.keys.errors import EscrowRefused, EscrowUnavailable, HsmError
from appliance.keys.escrow import Escrow
from appliance.keys.master import MasterKey
from engine import (
    AddKeyEpoch,
    AuditActor,
    Audited,
    Engine,
    EpochState,
    Keyring,
    KeyUnavailable,
    RevokeKeyEpochs,
    ShredKeyEpoch,
)

__all__ = ["KeyManager", "TenantKeyStatus", "escrow_key_id"]

log = logging.getLogger("herald.keys")

DEK_BYTES = 32
_RESEAL_BATCH = 1_000  # records per write transaction: short enough not to stall writers


def escrow_key_id(appliance_id: str, tenant: int, epoch: int) -> str:
    """The escrow's name for the key of one epoch of a tenant, unique across appliances that
    share one escrow. A key per epoch lets a shred destroy the epoch's escrow key too: the
    store may keep the deleted wrapped DEK in free pages for a while, and backups keep it."""
    return f"herald-{appliance_id}-t{tenant}-e{epoch}"


@dataclass(frozen=True, slots=True)
class TenantKeyStatus:
    tenant: int
    state: str  # "available" | "unavailable" | "revoked" | "partial" | "no_key"
    current_epoch: int
    epochs: int  # epochs whose DEK is in memory now
    detail: str = ""


class KeyManager:
    def __init__(
        self,
        engine: Engine,
        keyring: Keyring,
        escrow: Escrow,
        master_key: MasterKey,
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
        self._expiry: dict[tuple[int, int], float] = {}  # (tenant, epoch) -> monotonic time

    # -- loading ------------------------------------------------------------------------------

    def load_all(self) -> list[TenantKeyStatus]:
        """Unwrap and install the keys of every tenant; one tenant's failure spares the rest."""
        return [self.load_tenant(tenant, force=True) for tenant, _ in self._engine.tenants()]

    def refresh(self) -> list[TenantKeyStatus]:
        """Pick up new tenants and epochs (another process may have added them), and unwrap
        again the DEKs past half their lifetime: the escrow is asked about each DEK about
        twice per lifetime, and a revocation acts within one lifetime."""
        statuses = [self.load_tenant(tenant) for tenant, _ in self._engine.tenants()]
        # A key that expires says nothing: drop the opened messages it no longer covers.
        self._engine.drop_unreadable_messages()
        return statuses

    def load_tenant(self, tenant: int, *, force: bool = False) -> TenantKeyStatus:
        """Unwrap the live epochs of `tenant` (all with `force`, else those not installed or
        past half their lifetime) and install them with a fresh expiry."""
        all_epochs = self._engine.key_epochs(tenant)
        for entry in all_epochs:
            # Shredded or revoked by another process (`herald keys shred|revoke`): forget the
            # key now rather than when it expires, never install it again, and let re-seals
            # step over its records.
            if entry.state == EpochState.SHREDDED and not self._keyring.is_shredded(
                    tenant, entry.epoch):
                self._keyring.mark_shredded(tenant, entry.epoch)
            elif entry.state == EpochState.REVOKED and not self._keyring.is_revoked(
                    tenant, entry.epoch):
                self._keyring.mark_revoked(tenant, entry.epoch)
            else:
                continue
            self._expiry.pop((tenant, entry.epoch), None)
            log.info("tenant=%s epoch %s was %s: its key is forgotten", tenant, entry.epoch,
                     entry.state)
        epochs = [e for e in all_epochs if e.state in (EpochState.ACTIVE, EpochState.RETIRED)]
        actives = [e.epoch for e in epochs if e.state == EpochState.ACTIVE]
        if not actives:
            if any(e.state == EpochState.REVOKED for e in all_epochs):
                return self._note(TenantKeyStatus(
                    tenant, "revoked", 0, 0, "escrow keys revoked: none of its stored data "
                    "(messages, users, groups) can be read again"))
            return self._note(TenantKeyStatus(tenant, "no_key", 0, 0,
                                              "no data key yet: herald keys rotate creates one"))
        current = max(actives)
        now = self._clock()
        renew_before = now + self._lifetime_s / 2
        refused: list[str] = []
        unreachable = ""
        for entry in epochs:
            if not force and self._expiry.get((tenant, entry.epoch), 0.0) > renew_before:
                continue
            try:
                dek = unwrap_dek(self._master_key, self._escrow, entry.key_id, tenant,
                                 entry.epoch, entry.wrapped_dek)
            except EscrowRefused as exc:
                # The escrow will not open this key again: forget it now, not at expiry.
                self._keyring.forget(tenant, entry.epoch)
                self._expiry.pop((tenant, entry.epoch), None)
                refused.append(f"epoch {entry.epoch}: {exc.message}")
                continue
            except (EscrowUnavailable, HsmError) as exc:
                # The escrow, or the HSM holding the master key (gone, or its key object
                # deleted under a running server): what is installed stays until it expires.
                unreachable = exc.message
                break
            self._keyring.install(tenant, entry.epoch, dek, expires_at=now + self._lifetime_s)
            self._expiry[tenant, entry.epoch] = now + self._lifetime_s
        self._keyring.set_current(tenant, current)
        installed = len(self._keyring.installed(tenant))
        if refused:
            log.warning("tenant=%s escrow refused keys: %s", tenant, "; ".join(refused))
            state = "revoked" if current not in self._keyring.installed(tenant) else "partial"
            return self._note(TenantKeyStatus(tenant, state, current, installed,
                                              "; ".join(refused)))
        if unreachable:
            log.warning("tenant=%s escrow or master key unreachable; its keys lapse at expiry: %s",
                        tenant, unreachable)
            return self._note(TenantKeyStatus(tenant, "unavailable", current, installed,
                                              unreachable))
        return self._note(TenantKeyStatus(tenant, "available", current, installed))

    def _note(self, status: TenantKeyStatus) -> TenantKeyStatus:
        self._status[status.tenant] = status
        return status

    def status(self) -> list[TenantKeyStatus]:
        return [self._status[t] for t in sorted(self._status)]

    # -- changes ------------------------------------------------------------------------------

    # Each change is an audited op: `actor` is who asked for it, recorded in the audit log in
    # the transaction of the change (docs/security.md "The appliance's audit log").

    def rotate(self, tenant: int, *, actor: AuditActor) -> int:
        """Start a new key epoch for `tenant` (its first, for a new tenant): a fresh DEK,
        wrapped under the master key and the tenant's escrow key. Old epochs stay readable.
        Returns the new epoch."""
        epochs = self._engine.key_epochs(tenant)
        epoch = max((e.epoch for e in epochs), default=0) + 1
        key_id = escrow_key_id(self._appliance_id, tenant, epoch)
        if self._escrow.status(key_id) == "missing":
            self._escrow.create_key(key_id)
        dek = os.urandom(DEK_BYTES)
        wrapped = wrap_dek(self._master_key, self._escrow, key_id, tenant, epoch, dek)
        # Installed before the epoch commits, so that writes work the moment it does.
        expires_at = self._clock() + self._lifetime_s
        self._keyring.install(tenant, epoch, dek, expires_at=expires_at)
        self._expiry[tenant, epoch] = expires_at
        self._engine.apply(
            Audited(op=AddKeyEpoch(tenant=tenant, epoch=epoch, wrapped_dek=wrapped,
                                   key_id=key_id), actor=actor),
            self._now_ms(),
        )
        installed = len(self._keyring.installed(tenant))
        self._note(TenantKeyStatus(tenant, "available", epoch, installed))
        if len(epochs) > 0:
            try:
                self.reseal(tenant)
            except KeyUnavailable as exc:
                # The epoch is in place; only the move of old records waits for their keys.
                log.warning("tenant=%s new epoch %s, but its records were not re-sealed (%s): "
                            "run `herald keys reseal --tenant %s`", tenant, epoch, exc.message,
                            tenant)
        return epoch

    def reseal(
        self, tenant: int, *, messages: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> int:
        """Re-seal the tenant's users, groups, members and member log (and its messages with
        `messages`) under its current epoch, in bounded batches, so that shredding an older
        epoch destroys only messages. `progress(table, done, total)` after each batch.
        Resumable: records already under the current epoch are skipped. Returns how many were
        re-sealed; raises `KeyUnavailable` when an old epoch's DEK is not installed."""
        tables = self._engine.resealed_tables + (("messages",) if messages else ())
        resealed = 0
        for table in tables:
            pending, _ = self._engine.reseal_pending(tenant, table)
            done, after = 0, b""
            while pending:
                batch = self._engine.reseal_records(tenant, table, after, _RESEAL_BATCH)
                done += batch.resealed
                after = batch.next_key
                log.info("tenant=%s reseal %s: %s/%s", tenant, table, done, pending)
                if progress is not None:
                    progress(table, done, pending)
                if not after:
                    break
            resealed += done
        return resealed

    def shred(self, tenant: int, epoch: int, *, actor: AuditActor) -> None:
        """Destroy the DEK of one epoch: its records can never be read again. The engine
        deletes its wrapped DEK, and the escrow destroys the epoch's escrow key."""
        key_id = next((e.key_id for e in self._engine.key_epochs(tenant) if e.epoch == epoch), "")
        self._engine.apply(Audited(op=ShredKeyEpoch(tenant=tenant, epoch=epoch), actor=actor),
                           self._now_ms())
        if key_id:
            with contextlib.suppress(EscrowRefused):  # revoked already: the outcome holds
                self._escrow.revoke(key_id)

    def revoke(self, tenant: int, *, actor: AuditActor) -> None:
        """Destroy the tenant's escrow key: none of its stored data can be read again."""
        for entry in self._engine.key_epochs(tenant):
            if entry.key_id:
                with contextlib.suppress(EscrowRefused):  # revoked before: the outcome holds
                    self._escrow.revoke(entry.key_id)
        # Then the store says so, for every server on it to forget the keys at its next key
        # refresh (within 5 s) instead of when it next asks the escrow (half a DEK lifetime).
        self._engine.apply(Audited(op=RevokeKeyEpochs(tenant=tenant), actor=actor),
                           self._now_ms())
        self._keyring.forget(tenant)
        self._expiry = {k: v for k, v in self._expiry.items() if k[0] != tenant}
        self._note(TenantKeyStatus(tenant, "revoked", 0, 0, "escrow keys revoked"))
