"""How long the certificates Herald depends on remain valid, and the warnings before they end.

An expired certificate is a total outage that nothing announces: the gateway's clients all
fail verification at once, and an appliance whose escrow client certificate has expired can
unwrap no data key, so every tenant goes dark once its cached keys' lifetime has passed. So
every configured certificate is checked when a server starts and once a day while it runs
(`herald serve`: appliance/gateway/cert_watch.py; `herald escrow serve`:
appliance/escrow/commands.py), and each one that ends within `WARN_WITHIN_DAYS` is named with
its file, its end date, the days left and what renews it (docs/security.md, "Certificate
lifetimes").

Synchronous and clock-free: `now` is always an argument.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509

__all__ = [
    "CHECK_INTERVAL_S",
    "WARN_WITHIN_DAYS",
    "CertificateUnreadable",
    "CertificateValidity",
    "ExpiryFinding",
    "WatchedCertificate",
    "check_certificates",
    "describe_validity",
    "log_findings",
    "pin_in_use",
    "read_validity",
    "run_daily_checks",
]

WARN_WITHIN_DAYS = 30
CHECK_INTERVAL_S = 24 * 3600.0  # a daily check: the warning window is counted in days
_DAY = datetime.timedelta(days=1)


class CertificateUnreadable(Exception):
    """The file cannot be read, or holds no PEM certificate `cryptography` can parse."""


@dataclass(frozen=True, slots=True)
class WatchedCertificate:
    """A certificate file a server depends on: what it is (`role`, e.g. "the gateway's TLS
    certificate ([tls] cert_file)"), where it is, and what renews it (`renewal`, a sentence
    for the operator).

    `in_use` (see `pin_in_use`) is what a running server loaded from the file at its start:
    servers load their certificates once, so a file renewed since changes nothing until a
    restart, and the checks must judge the certificate in use, not the file. None: the file
    is what counts (a listing, or a check at start)."""

    role: str
    path: Path
    renewal: str
    in_use: CertificateValidity | None = None


@dataclass(frozen=True, slots=True)
class CertificateValidity:
    """The end of validity of a PEM file: the earliest `not_valid_after` of the certificates
    in it (a chain is unusable once any of its links has expired), and whose it is."""

    path: Path
    not_after: datetime.datetime  # aware, UTC
    subject: str  # the certificate that ends first, as an RFC 4514 string
    count: int  # how many certificates the file holds

    def days_left(self, now: datetime.datetime) -> int:
        """Whole days from `now` to the end, rounded down: 0 within the last day, negative
        once expired (-1 during the first day after)."""
        return (self.not_after - now) // _DAY

    def expired(self, now: datetime.datetime) -> bool:
        return now >= self.not_after


def read_validity(path: Path) -> CertificateValidity:
    """Read the PEM certificate (or chain, or bundle of CAs) in `path`.

    Raises `CertificateUnreadable` when the file cannot be read or holds no certificate.
    """
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise CertificateUnreadable(f"cannot read {path}: {exc.strerror}") from None
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise CertificateUnreadable(f"{path} holds no PEM certificate") from None
    first = min(certificates, key=lambda cert: cert.not_valid_after_utc)
    return CertificateValidity(path, first.not_valid_after_utc, first.subject.rfc4514_string(),
                               len(certificates))


def describe_validity(validity: CertificateValidity, now: datetime.datetime) -> str:
    """For listings: `valid until 2027-03-01 12:00 UTC (94 days left)`, with `, RENEW SOON`
    after the days when fewer than `WARN_WITHIN_DAYS` are left, or `EXPIRED on ...`."""
    when = f"{validity.not_after:%Y-%m-%d %H:%M} UTC"
    if validity.expired(now):
        return f"EXPIRED on {when}"
    days = validity.days_left(now)
    left = "less than a day left" if days == 0 else f"{days} day{'s' * (days != 1)} left"
    mark = ", RENEW SOON" if days < WARN_WITHIN_DAYS else ""
    return f"valid until {when} ({left}{mark})"


@dataclass(frozen=True, slots=True)
class ExpiryFinding:
    """One certificate that has expired (`level` ERROR) or ends within `WARN_WITHIN_DAYS`
    (WARNING), or that could not be read to check it (WARNING); `message` says all of it."""

    level: int  # logging.WARNING or logging.ERROR
    certificate: WatchedCertificate
    message: str
    validity: CertificateValidity | None = None

    @property
    def expired(self) -> bool:
        return self.level == logging.ERROR


def pin_in_use(watched: Iterable[WatchedCertificate]) -> list[WatchedCertificate]:
    """`watched`, each with `in_use` read from its file now: for a server that has just
    loaded them. An unreadable file stays unpinned (its checks say it cannot be read)."""
    pinned = []
    for each in watched:
        try:
            pinned.append(replace(each, in_use=read_validity(each.path)))
        except CertificateUnreadable:
            pinned.append(each)
    return pinned


def _replaced_note(watched: WatchedCertificate, in_use: CertificateValidity) -> str:
    """When the file no longer holds the certificate in use: what to do about it."""
    try:
        on_disk = read_validity(watched.path)
    except CertificateUnreadable as exc:
        return f" The file has changed since the start and cannot be read now ({exc})."
    if on_disk.not_after == in_use.not_after:
        return ""
    return (f" {watched.path} has been replaced since the start (it now ends on "
            f"{on_disk.not_after:%Y-%m-%d %H:%M} UTC), but the certificate in use is the one "
            f"loaded at the start: restart the server to use the new file.")


def _finding(watched: WatchedCertificate, now: datetime.datetime) -> ExpiryFinding | None:
    note = ""
    if watched.in_use is not None:
        validity = watched.in_use
    else:
        try:
            validity = read_validity(watched.path)
        except CertificateUnreadable as exc:
            return ExpiryFinding(logging.WARNING, watched,
                                 f"cannot check when {watched.role} expires: {exc}")
    when = f"{validity.not_after:%Y-%m-%d %H:%M} UTC"
    which = f" (the first to end of its {validity.count}: {validity.subject})" \
        if validity.count > 1 else ""
    days = validity.days_left(now)
    if not validity.expired(now) and days >= WARN_WITHIN_DAYS:
        return None
    if watched.in_use is not None:
        note = _replaced_note(watched, watched.in_use)
    renewal = watched.renewal if not note else note.lstrip()
    if validity.expired(now):
        return ExpiryFinding(
            logging.ERROR, watched,
            f"{watched.role}, {watched.path}{which}, EXPIRED on {when}. {renewal}", validity)
    left = "in less than a day" if days == 0 else f"in {days} day{'s' * (days != 1)}"
    return ExpiryFinding(
        logging.WARNING, watched,
        f"{watched.role}, {watched.path}{which}, expires on {when}, {left}. {renewal}",
        validity)


def check_certificates(watched: Iterable[WatchedCertificate],
                       now: datetime.datetime) -> list[ExpiryFinding]:
    """The findings for `watched` at `now` (aware): nothing for a certificate with
    `WARN_WITHIN_DAYS` or more left."""
    return [found for found in (_finding(each, now) for each in watched) if found is not None]


def log_findings(findings: Iterable[ExpiryFinding], log: logging.Logger) -> None:
    for found in findings:
        log.log(found.level, "certificate_expiry %s", found.message)


def run_daily_checks(watched: list[WatchedCertificate], log: logging.Logger, *,
                     wait: Callable[[float], bool], now: Callable[[], datetime.datetime],
                     interval_s: float = CHECK_INTERVAL_S) -> None:
    """For a server run by threads (`herald escrow serve`): check `watched` after each
    `wait(interval_s)` that returns False, and return once one returns True (a
    `threading.Event.wait`: the server is stopping). `now` is the wall clock."""
    while not wait(interval_s):
        log_findings(check_certificates(watched, now()), log)
