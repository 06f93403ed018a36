"""The escrow service's private CA, its server certificate and the appliances' client
certificates (ECDSA P-256, X.509 via `cryptography`).

In the escrow directory (never leaves the escrow machine except ca.crt):
    ca.key      the CA's private key, encrypted with the escrow passphrase
    ca.crt      the CA certificate: the appliance needs a copy to verify the service
    server.key  the service's TLS key, encrypted with the escrow passphrase
    server.crt  the service's certificate (names: the --host values)
For each appliance, `issue_client` writes to a separate directory, to be moved to it:
    client.key  the appliance's TLS key (unencrypted, mode 0600: the appliance starts unattended)
    client.crt  its certificate, signed by the CA
    ca.crt      a copy of the CA certificate
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.keys.errors import DamagedKeyFile, KeyFileExists, WrongPassphrase
from appliance.keys.sealed_file import write_atomically

__all__ = [
    "CA_DAYS",
    "LEAF_DAYS",
    "PASSPHRASE_KEY_FILES",
    "change_private_key_passphrase",
    "create_service_pki",
    "issue_client_certificate",
    "load_private_key",
    "renew_service_certificates",
]

CA_DAYS = 3650
LEAF_DAYS = 825
PASSPHRASE_KEY_FILES = ("ca.key", "server.key")  # encrypted with the escrow passphrase


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Herald escrow"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: x509.Name, public_key: ec.EllipticCurvePublicKey, issuer: x509.Name,
                 issuer_key: ec.EllipticCurvePrivateKey, days: int,
                 extensions: list[tuple[x509.ExtensionType, bool]],
                 now: datetime.datetime | None = None) -> x509.Certificate:
    now = now or datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days)))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _leaf_extensions(usage: x509.ObjectIdentifier) -> list[tuple[x509.ExtensionType, bool]]:
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=False,
                       crl_sign=False, encipher_only=False, decipher_only=False), True),
        (x509.ExtendedKeyUsage([usage]), False),
    ]


def _private_pem(key: ec.EllipticCurvePrivateKey, passphrase: str | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode()) if passphrase
        else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _subject_alt_names(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def create_service_pki(directory: Path, passphrase: str, hosts: list[str]) -> None:
    """Create ca.key, ca.crt, server.key and server.crt in `directory`; the server certificate
    names `hosts` (DNS names or IP addresses the appliance will dial).

    Raises `KeyFileExists` if any of them exists, OSError.
    """
    files = [directory / name for name in ("ca.key", "ca.crt", "server.key", "server.crt")]
    for path in files:
        if path.exists():
            raise KeyFileExists(f"{path} already exists; this directory already holds an escrow")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    # A distinct name per escrow, so that a certificate of another escrow's CA is reported as
    # from an unknown CA rather than as a bad signature.
    ca_name = _name(f"Herald escrow CA {os.urandom(4).hex()}")
    ca_cert = _certificate(ca_name, ca_key.public_key(), ca_name, ca_key, CA_DAYS, [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(digital_signature=False, content_commitment=False,
                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                       key_cert_sign=True, crl_sign=True, encipher_only=False,
                       decipher_only=False), True),
        (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False),
    ])
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _certificate(
        _name(hosts[0]), server_key.public_key(), ca_name, ca_key, LEAF_DAYS,
        [*_leaf_extensions(ExtendedKeyUsageOID.SERVER_AUTH), (_subject_alt_names(hosts), False)])
    write_atomically(directory / "ca.key", _private_pem(ca_key, passphrase), exclusive=True)
    write_atomically(directory / "ca.crt", _cert_pem(ca_cert), 0o644, exclusive=True)
    write_atomically(directory / "server.key", _private_pem(server_key, passphrase),
                     exclusive=True)
    write_atomically(directory / "server.crt", _cert_pem(server_cert), 0o644, exclusive=True)


def issue_client_certificate(directory: Path, passphrase: str, name: str, out: Path, *,
                             now: datetime.datetime | None = None) -> None:
    """Sign a client certificate for the appliance `name` with the CA in `directory`, valid
    LEAF_DAYS from `now` (default: the present), and write client.key, client.crt and ca.crt
    to `out` (created if needed).

    Raises `WrongPassphrase` if the passphrase does not open ca.key, `DamagedKeyFile` if it is
    not an ECDSA key, `KeyFileExists` if `out` already holds client files, OSError.
    """
    ca_key = load_private_key(directory / "ca.key", passphrase)
    ca_pem = (directory / "ca.crt").read_bytes()
    ca_cert = x509.load_pem_x509_certificate(ca_pem)
    out.mkdir(parents=True, exist_ok=True)
    for file_name in ("client.key", "client.crt"):
        if (out / file_name).exists():
            raise KeyFileExists(f"{out / file_name} already exists; choose another --out")
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _certificate(_name(name), client_key.public_key(), ca_cert.subject, ca_key,
                               LEAF_DAYS, _leaf_extensions(ExtendedKeyUsageOID.CLIENT_AUTH),
                               now)
    write_atomically(out / "client.key", _private_pem(client_key, None), exclusive=True)
    write_atomically(out / "client.crt", _cert_pem(client_cert), 0o644, exclusive=True)
    write_atomically(out / "ca.crt", ca_pem, 0o644)


def load_private_key(path: Path, passphrase: str) -> ec.EllipticCurvePrivateKey:
    """The private key in `path` (ca.key, server.key), encrypted with `passphrase`.

    Raises `WrongPassphrase` if the passphrase does not open it, `DamagedKeyFile` if it is not
    an ECDSA key, OSError.
    """
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), passphrase.encode())
    except (ValueError, TypeError):
        raise WrongPassphrase(f"the passphrase does not open {path}; try again") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DamagedKeyFile(f"{path} is not the key herald escrow init made; restore it from "
                             f"a backup")
    return key


def change_private_key_passphrase(path: Path, key: ec.EllipticCurvePrivateKey,
                                  new_passphrase: str) -> None:
    """Encrypt the same `key` (loaded from `path`) with `new_passphrase` and replace `path`
    atomically, then check that it reads back. Raises `DamagedKeyFile` when it does not (the
    previous file is put back first), OSError."""
    previous = path.read_bytes()
    write_atomically(path, _private_pem(key, new_passphrase))
    try:
        same = (load_private_key(path, new_passphrase).private_numbers()
                == key.private_numbers())
    except (WrongPassphrase, DamagedKeyFile):
        same = False
    if not same:
        write_atomically(path, previous)  # unreachable on a sound disk
        raise DamagedKeyFile(f"{path} did not read back as written, so the previous file was "
                             f"put back: check the disk")


def renew_service_certificates(directory: Path, passphrase: str, *, ca: bool = False,
                               now: datetime.datetime | None = None) -> list[Path]:
    """Sign server.crt again for LEAF_DAYS from `now` (default: the present), with the same
    key, name and host names; with `ca`, first sign ca.crt again for CA_DAYS with the same
    key, name and extensions. Returns the files replaced (atomically).

    Certificates keep working across a renewal: the CA keeps its key and name, so client
    certificates it signed before still verify against the new ca.crt, and the appliances'
    copies of the old ca.crt still verify the new server.crt until the old one ends.

    Raises `WrongPassphrase` if the passphrase does not open ca.key, `DamagedKeyFile` if a key
    is not an ECDSA key, OSError.
    """
    ca_key = load_private_key(directory / "ca.key", passphrase)
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    replaced = []
    if ca:
        ca_cert = _certificate(ca_cert.subject, ca_key.public_key(), ca_cert.subject, ca_key,
                               CA_DAYS, [(ext.value, ext.critical) for ext in ca_cert.extensions],
                               now)
        write_atomically(directory / "ca.crt", _cert_pem(ca_cert), 0o644)
        replaced.append(directory / "ca.crt")
    server_key = load_private_key(directory / "server.key", passphrase)
    old_server = x509.load_pem_x509_certificate((directory / "server.crt").read_bytes())
    server_cert = _certificate(old_server.subject, server_key.public_key(), ca_cert.subject,
                               ca_key, LEAF_DAYS,
                               [(ext.value, ext.critical) for ext in old_server.extensions], now)
    write_atomically(directory / "server.crt", _cert_pem(server_cert), 0o644)
    replaced.append(directory / "server.crt")
    return replaced
