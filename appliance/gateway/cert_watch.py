"""`herald serve`'s certificate checks: which certificates it depends on, the refusal to serve
an expired gateway certificate, and the daily check while it runs (appliance/cert_expiry.py).

Why an expired gateway certificate stops the start while an expired escrow certificate does
not (docs/security.md, "Certificate lifetimes"):
- The gateway's certificate is what every client verifies. Expired, it makes every handshake
  fail, in every client, with a certificate error that users cannot act on; a server that
  refuses to start instead names the file and the fix where the operator looks.
- The escrow client certificate (and the escrow's CA) only decide whether this appliance can
  unwrap data keys. Expired, the tenants are unavailable, and the server says so to their
  clients (`key_unavailable`) and to the operator (an ERROR here, "keys unavailable" at
  start), which a refused start would not; and the escrow itself, not this appliance's clock,
  is the judge of whether the certificate is still accepted. Once a renewed certificate is in
  place, a restart unwraps the keys again.
- The client CA file ([tls] client_ca_file) may be a bundle of several CAs, one of which
  expiring leaves the others usable: an ERROR, never a refusal.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from pathlib import Path

import trio

from appliance.cert_expiry import (
    CHECK_INTERVAL_S,
    CertificateUnreadable,
    WatchedCertificate,
    check_certificates,
    log_findings,
    read_validity,
)
from appliance.config import Config

__all__ = [
    "ESCROW_CA_RENEWAL",
    "ESCROW_CLIENT_RENEWAL",
    "GATEWAY_RENEWAL",
    "check_now",
    "expired_gateway_refusal",
    "utc_now",
    "watch_certificates",
    "watched_certificates",
]

log = logging.getLogger("herald.certificates")

GATEWAY_RENEWAL = (
    "Renew it: a new certificate for the same names from the site's CA (or `herald cert "
    "selfsigned --out DIR --host NAME` for a self-signed one, which clients must then be told "
    "to trust), in [tls] cert_file and key_file, then restart herald serve.")
CLIENT_CA_RENEWAL = (
    "Put the client CA's renewed certificate in [tls] client_ca_file, then restart herald "
    "serve: once it has expired, no client certificate it signed is accepted.")
ESCROW_CLIENT_RENEWAL = (
    "Once it has expired the escrow refuses this appliance and no tenant's data key can be "
    "unwrapped. Renew it: the escrow's operator runs `herald escrow issue-client --dir "
    "ESCROW_DIR --name NAME --out NEW_DIR` on the escrow machine; put the new client.crt and "
    "client.key in [escrow] cert_file and key_file, then restart herald serve.")
ESCROW_CA_RENEWAL = (
    "Once it has expired this appliance and the escrow cannot verify each other and no "
    "tenant's data key can be unwrapped. The escrow's operator renews it with `herald escrow "
    "renew --dir ESCROW_DIR` (same CA key, so certificates it signed stay valid); put the new "
    "ca.crt in [escrow] ca_file, then restart herald serve. Not `herald escrow init`: a new "
    "escrow holds none of the keys that wrap the tenants' data keys.")


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def watched_certificates(config: Config) -> list[WatchedCertificate]:
    """The certificate files `config` makes `herald serve` depend on."""
    watched = []
    if config.tls.enabled:
        watched.append(WatchedCertificate("the gateway's TLS certificate ([tls] cert_file)",
                                          Path(config.tls.cert_file), GATEWAY_RENEWAL))
    if config.tls.client_ca_file:
        watched.append(WatchedCertificate(
            "the CA of client certificates ([tls] client_ca_file)",
            Path(config.tls.client_ca_file), CLIENT_CA_RENEWAL))
    if config.escrow.backend == "service":
        watched.append(WatchedCertificate(
            "this appliance's escrow client certificate ([escrow] cert_file)",
            Path(config.escrow.cert_file), ESCROW_CLIENT_RENEWAL))
        watched.append(WatchedCertificate("the escrow's CA certificate ([escrow] ca_file)",
                                          Path(config.escrow.ca_file), ESCROW_CA_RENEWAL))
    return watched


def expired_gateway_refusal(config: Config, now: datetime.datetime) -> str | None:
    """Why `config` may not be served at `now`, or None: its gateway certificate (any
    certificate of the chain in [tls] cert_file) has expired. An unreadable file is left to
    `server_context`, which says what is wrong with it."""
    if not config.tls.enabled:
        return None
    try:
        validity = read_validity(Path(config.tls.cert_file))
    except CertificateUnreadable:
        return None
    if not validity.expired(now):
        return None
    return (f"refusing to serve an expired certificate: {config.tls.cert_file} ([tls] "
            f"cert_file; {validity.subject}) expired on {validity.not_after:%Y-%m-%d %H:%M} "
            f"UTC, and every client would fail to verify it. {GATEWAY_RENEWAL}")


def check_now(watched: list[WatchedCertificate], now: datetime.datetime) -> None:
    """Log a WARNING for each of `watched` that ends within 30 days, an ERROR for each that
    has ended."""
    log_findings(check_certificates(watched, now), log)


async def watch_certificates(watched: list[WatchedCertificate], *,
                             now: Callable[[], datetime.datetime] = utc_now,
                             interval_s: float = CHECK_INTERVAL_S) -> None:
    """Check `watched` every `interval_s` (the first check one interval from now: the start
    has made its own), until cancelled. `now` is the wall clock the days are counted on."""
    while True:
        await trio.sleep(interval_s)
        check_now(watched, now())
