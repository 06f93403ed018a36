"""`herald cert selfsigned`: a private key and a self-signed certificate to try wss:// with.

The certificate is its own CA (basic constraints CA, path length 0, key usage for signing
certificates), so a client trusts it by taking the certificate file as its CA file
(`herald chat --ca FILE`); it carries every given host name and address, plus `localhost` and
127.0.0.1, as subject alternative names. For production, use a certificate from the
organisation's CA instead: the server takes any PEM certificate chain and key.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["SelfSigned", "describe", "make_self_signed", "subject_alt_names"]

CERT_NAME = "herald-cert.pem"
KEY_NAME = "herald-key.pem"
VALID_DAYS = 365


@dataclass(frozen=True, slots=True)
class SelfSigned:
    cert_file: Path
    key_file: Path
    names: tuple[str, ...]  # the subject alternative names, as given
    not_after: datetime.datetime


def subject_alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses for `hosts`, plus localhost and 127.0.0.1 (no duplicates)."""
    names: list[x509.GeneralName] = []
    for host in [*hosts, "localhost", "127.0.0.1"]:
        try:
            name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            name = x509.DNSName(host)
        if name not in names:
            names.append(name)
    return names


def make_self_signed(
    out_dir: Path, hosts: list[str], *, now: datetime.datetime | None = None,
    valid_days: int = VALID_DAYS,
) -> SelfSigned:
    """Write `herald-key.pem` (ECDSA P-256, PKCS#8, mode 0600) and `herald-cert.pem` into
    `out_dir` (created if missing). Raises `FileExistsError` rather than overwrite either,
    `OSError` when the folder cannot be written."""
    cert_file, key_file = out_dir / CERT_NAME, out_dir / KEY_NAME
    for path in (cert_file, key_file):
        if path.exists():
            raise FileExistsError(path)
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names = subject_alt_names(hosts)
    common_name = hosts[0] if hosts else "localhost"
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Herald self-signed"),
    ])
    public = key.public_key()
    not_after = now + datetime.timedelta(days=valid_days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate skewed clocks
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=False, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    # Created 0600 from the start: the key is never readable by others, not even briefly.
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_pem)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    shown = tuple(str(getattr(name, "value", name)) for name in alt_names)
    return SelfSigned(cert_file, key_file, shown, not_after)


def describe(made: SelfSigned) -> str:
    """What to do with the files, for `herald cert selfsigned` to print."""
    cert, key = made.cert_file.resolve(), made.key_file.resolve()
    return (
        f"Wrote {key} (private key, mode 0600) and {cert}\n"
        f"  valid until {made.not_after:%Y-%m-%d} for: {', '.join(made.names)}\n"
        f"\n"
        f"Serve wss:// with it, either with flags:\n"
        f"  herald serve --tls-cert {cert} --tls-key {key} --listen 0.0.0.0:8470\n"
        f"or in the configuration file (herald serve --config FILE):\n"
        f"  [tls]\n"
        f"  cert_file = \"{cert}\"\n"
        f"  key_file = \"{key}\"\n"
        f"\n"
        f"Clients must be told to trust this certificate, since no public CA signed it:\n"
        f"  herald chat --url wss://{made.names[0]}:8470/ws --ca {cert} --tenant T --login L\n"
        f"  client library: ssl.create_default_context(cafile=\"{cert}\") as ssl_context\n"
        f"  others: add {cert} to the client's trusted certificates.\n"
        f"Keep the key secret. For production use a certificate from your organisation's CA."
    )
