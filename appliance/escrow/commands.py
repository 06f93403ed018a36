"""`herald escrow init|issue-client|serve|audit|keys|revoke|passphrase|renew`: what the escrow's
operator runs, on the escrow machine. Each returns an exit status; errors say what to do
next, never a secret.
"""

from __future__ import annotations

import datetime
import logging
import signal
import ssl
import sys
import threading
from pathlib import Path
from types import FrameType

from appliance.cert_expiry import (
    CertificateUnreadable,
    WatchedCertificate,
    check_certificates,
    describe_validity,
    log_findings,
    pin_in_use,
    read_validity,
    run_daily_checks,
)
from appliance.escrow.audit import AuditBroken, AuditLog, verify_audit_log
from appliance.escrow.keystore import Keystore, KeystoreBusy
from appliance.escrow.passphrase_change import EscrowPassphraseChange
from appliance.escrow.pki import (
    create_service_pki,
    issue_client_certificate,
    renew_service_certificates,
)
from appliance.escrow.server import EscrowServer, EscrowService, server_tls_context
from appliance.keys.errors import KeyManagementError
from appliance.keys.sealed_file import check_new_passphrase
from appliance.terminal import ask_secret, read_secret_file

__all__ = ["AUDIT_FILE", "KEYSTORE_FILE", "audit", "escrow_certificates", "init", "issue_client",
           "keys", "passphrase", "read_new_passphrase", "read_passphrase", "renew", "revoke",
           "serve"]

OPERATOR = "operator (herald escrow revoke)"  # the audit log's client for offline revocations
PASSPHRASE_OPERATOR = "operator (herald escrow passphrase)"

KEYSTORE_FILE = "escrow.keys"
AUDIT_FILE = "audit.log"


def _fail(message: str) -> int:
    print(f"herald escrow: {message}", file=sys.stderr)
    return 1


def _exit(message: str) -> SystemExit:
    return SystemExit(f"herald escrow: {message}")


def read_passphrase(passphrase_file: str | None, *, new: bool = False,
                    prompt: str = "Escrow passphrase: ") -> str:
    """From `passphrase_file` (its first line; "-" = standard input), else the terminal
    (asked twice when `new`)."""
    if passphrase_file is not None:
        return read_secret_file(passphrase_file, error=_exit)
    return ask_secret(
        prompt, confirm=new,
        no_terminal="herald escrow: the escrow's passphrase is needed and there is no terminal "
                    "to ask on: pass --passphrase-file FILE (- reads it from standard input)",
        differ="herald escrow: the passphrases differ; nothing was created",
    )


def read_new_passphrase(new_passphrase_file: str | None) -> str:
    """The new passphrase of `herald escrow passphrase`: from `new_passphrase_file` ("-" = the
    next line of standard input), else asked twice on the terminal."""
    if new_passphrase_file is not None:
        return read_secret_file(new_passphrase_file, error=_exit)
    return ask_secret(
        "New escrow passphrase: ", confirm=True,
        no_terminal="herald escrow: the new passphrase is needed and there is no terminal to "
                    "ask on: pass --new-passphrase-file FILE (- reads it from standard input, "
                    "after the current one if that comes from there too)",
        differ="herald escrow: the new passphrases differ; nothing was changed",
    )


def init(directory: Path, passphrase: str, hosts: list[str]) -> int:
    try:
        check_new_passphrase(passphrase)
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        if (directory / KEYSTORE_FILE).exists():
            return _fail(f"{directory} already holds an escrow; choose another --dir")
        create_service_pki(directory, passphrase, hosts)
        Keystore.create(directory / KEYSTORE_FILE, passphrase)
    except KeyManagementError as exc:
        return _fail(exc.message)
    except OSError as exc:
        return _fail(f"cannot write to {directory}: {exc.strerror}")
    print(f"escrow created in {directory} (server certificate for {', '.join(hosts)}).\n"
          f"Never leave this machine: {KEYSTORE_FILE}, ca.key, server.key, {AUDIT_FILE}.\n"
          f"Next: herald escrow issue-client --dir {directory} --name APPLIANCE --out DIR,\n"
          f"then herald escrow serve --dir {directory} --listen HOST:PORT")
    return 0


def issue_client(directory: Path, passphrase: str, name: str, out: Path) -> int:
    try:
        issue_client_certificate(directory, passphrase, name, out)
    except KeyManagementError as exc:
        return _fail(exc.message)
    except OSError as exc:
        return _fail(f"{exc.filename}: {exc.strerror}; is {directory} an escrow directory "
                     f"(herald escrow init)?")
    print(f"client certificate for {name!r} written to {out}: copy client.crt, client.key and "
          f"ca.crt to the appliance (client.key privately) and set them in its [escrow] table.")
    return 0


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def escrow_certificates(directory: Path) -> list[WatchedCertificate]:
    """The escrow's own certificates, with what renews each (docs/security.md, "Certificate
    lifetimes")."""
    return [
        WatchedCertificate(
            "the escrow's server certificate", directory / "server.crt",
            f"Once it has expired no appliance can reach the escrow, and none can unwrap a "
            f"data key. Renew it: `herald escrow renew --dir {directory}`, then restart herald "
            f"escrow serve."),
        WatchedCertificate(
            "the escrow's CA certificate", directory / "ca.crt",
            f"Once it has expired the escrow and its appliances cannot verify each other, and "
            f"no appliance can unwrap a data key. Renew it: `herald escrow renew --dir "
            f"{directory} --ca` (same CA key: the client certificates stay valid), restart "
            f"herald escrow serve and give the new ca.crt to every appliance ([escrow] "
            f"ca_file)."),
    ]


def _escrow_log() -> logging.Logger:
    """The escrow service's log: lines on standard error, like the service's other notes."""
    log = logging.getLogger("herald.escrow")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("herald escrow: %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


def serve(directory: Path, passphrase: str, host: str, port: int) -> int:
    """Serve until SIGTERM or SIGINT. Refused while the escrow's server certificate or CA has
    expired: no appliance could verify it, and the renewal is a command away."""
    # Pinned: loaded once, below, so the daily checks judge the certificates in use.
    watched = pin_in_use(escrow_certificates(directory))
    findings = check_certificates(watched, _utc_now())
    log_findings(findings, _escrow_log())
    expired = [found for found in findings if found.expired]
    if expired:
        return _fail(f"refusing to serve with an expired certificate: "
                     f"{expired[0].certificate.path}. Renew it (`herald escrow renew --dir "
                     f"{directory} --ca` renews both) and start again")
    try:
        keystore = Keystore.open(directory / KEYSTORE_FILE, passphrase)
    except KeyManagementError as exc:
        return _fail(exc.message)
    try:
        tls = server_tls_context(directory, passphrase)
        audit_log = AuditLog(directory / AUDIT_FILE)
    except AuditBroken as exc:
        keystore.close()
        return _fail(str(exc))
    except ssl.SSLError:
        keystore.close()
        return _fail(f"cannot load server.crt/server.key in {directory}; were they made by "
                     f"herald escrow init with this passphrase?")
    except OSError as exc:
        keystore.close()
        return _fail(f"{exc.filename}: {exc.strerror}; is {directory} an escrow directory "
                     f"(herald escrow init)?")
    try:
        server = EscrowServer((host, port), tls, EscrowService(keystore, audit_log))
    except OSError as exc:
        audit_log.close()
        keystore.close()
        return _fail(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --listen")

    stopping = threading.Event()
    threading.Thread(target=run_daily_checks, args=(watched, _escrow_log()),
                     kwargs={"wait": stopping.wait, "now": _utc_now}, daemon=True).start()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        # shutdown() waits for serve_forever, which runs in this very thread: hand it off.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    bound_port = server.socket.getsockname()[1]
    print(f"escrow serving on {host}:{bound_port}", flush=True)
    try:
        server.serve_forever()
    finally:
        stopping.set()
        server.server_close()
        audit_log.close()
        keystore.close()
    print("escrow stopped", flush=True)
    return 0


def keys(directory: Path, passphrase: str) -> int:
    """When the escrow's certificates end, then the key ids and their states (the service must
    be stopped: it holds the file)."""
    print(describe_certificates(directory, _utc_now()))
    try:
        keystore = Keystore.open(directory / KEYSTORE_FILE, passphrase)
    except KeyManagementError as exc:
        return _fail(exc.message)
    try:
        for key_id, (state, owner) in keystore.key_states().items():
            print(f"{key_id:<40} {state:<8} {owner}")
    finally:
        keystore.close()
    return 0


def describe_certificates(directory: Path, now: datetime.datetime) -> str:
    """One line per certificate of the escrow: its file and when it ends, marked when it
    ends within 30 days."""
    lines = []
    for label, watched in zip(("server certificate", "CA certificate"),
                              escrow_certificates(directory), strict=True):
        try:
            shown = describe_validity(read_validity(watched.path), now)
        except CertificateUnreadable as exc:
            shown = f"cannot be checked: {exc}"
        lines.append(f"{label}: {watched.path}: {shown}")
    return "\n".join(lines)


def renew(directory: Path, passphrase: str, ca: bool) -> int:
    """Sign the escrow's server certificate again (and with `ca` its CA certificate), same
    keys and names; a running service uses them from its next start."""
    try:
        replaced = renew_service_certificates(directory, passphrase, ca=ca)
    except KeyManagementError as exc:
        return _fail(exc.message)
    except OSError as exc:
        return _fail(f"{exc.filename}: {exc.strerror}; is {directory} an escrow directory "
                     f"(herald escrow init)?")
    print(describe_certificates(directory, _utc_now()))
    warning = "" if ca else _ca_ends_first(directory)
    if warning:
        print(warning)
    print(f"renewed {' and '.join(path.name for path in replaced)} (same keys and names). "
          f"Restart herald escrow serve to use "
          f"{'them' if len(replaced) > 1 else 'it'}."
          + (f" Give the new {directory / 'ca.crt'} to every appliance ([escrow] ca_file; "
             f"their client certificates stay valid) and restart them." if ca else ""))
    return 0


def _ca_ends_first(directory: Path) -> str:
    """A warning when ca.crt ends before the server certificate just signed: the server
    certificate stops verifying with its CA, whatever its own date says."""
    try:
        ca_end = read_validity(directory / "ca.crt").not_after
        server_end = read_validity(directory / "server.crt").not_after
    except CertificateUnreadable as exc:
        return f"WARNING: {exc}"
    if ca_end >= server_end:
        return ""
    return (f"WARNING: the escrow's CA certificate ends on {ca_end:%Y-%m-%d}, before the new "
            f"server certificate ({server_end:%Y-%m-%d}): from then on no appliance can verify "
            f"this escrow. Run `herald escrow renew --ca` before then, and give the new ca.crt "
            f"to every appliance.")


def revoke(directory: Path, passphrase: str, key_id: str) -> int:
    """Revoke `key_id` on the escrow machine itself, with the service stopped; audited."""
    try:
        keystore = Keystore.open(directory / KEYSTORE_FILE, passphrase)
    except KeyManagementError as exc:
        return _fail(exc.message)
    try:
        audit_log = AuditLog(directory / AUDIT_FILE)
    except AuditBroken as exc:
        keystore.close()
        return _fail(str(exc))
    try:
        try:
            keystore.revoke(key_id, None)
        except KeyManagementError as exc:
            audit_log.append(OPERATOR, "revoke", key_id[:128], "refused")
            return _fail(exc.message)
        audit_log.append(OPERATOR, "revoke", key_id, "ok")
    finally:
        audit_log.close()
        keystore.close()
    print(f"escrow key {key_id!r} revoked: what it wrapped can never be opened again. Destroy "
          f"any copy of {KEYSTORE_FILE} older than this moment, or the revocation is not final.")
    return 0


def passphrase(directory: Path, current: str, new: str) -> int:
    """Seal escrow.keys, ca.key and server.key under `new` instead of `current`, with the
    service stopped (it holds the keystore); audited, never the passphrases themselves."""
    try:
        change = EscrowPassphraseChange.prepare(directory, KEYSTORE_FILE, current, new)
    except KeystoreBusy as exc:
        return _fail(f"another process has {directory / KEYSTORE_FILE} open (a running `herald "
                     f"escrow serve`?): stop it first, then change the passphrase and serve "
                     f"again with the new one. Nothing was changed ({exc.code})")
    except KeyManagementError as exc:
        return _fail(f"{exc.message} ({exc.code})")
    except OSError as exc:
        return _fail(f"{exc.filename}: {exc.strerror}; is {directory} an escrow directory "
                     f"(herald escrow init)? Nothing was changed")
    try:
        audit_log = AuditLog(directory / AUDIT_FILE)
    except AuditBroken as exc:
        change.close()
        return _fail(f"{exc}; nothing was changed")
    try:
        try:
            rewritten = change.apply()
        except (KeyManagementError, OSError):
            audit_log.append(PASSPHRASE_OPERATOR, "passphrase", "", "incomplete")
            raise
        if rewritten:
            audit_log.append(PASSPHRASE_OPERATOR, "passphrase", "", "ok")
    except KeyManagementError as exc:
        return _fail(f"{exc.message} ({exc.code}); run the same command again to finish")
    except OSError as exc:
        return _fail(f"cannot write {exc.filename}: {exc.strerror}. Fix that and run the same "
                     f"command again (same current and new passphrases): files already sealed "
                     f"by the new passphrase are left as they are")
    finally:
        audit_log.close()
        change.close()
    if not rewritten:
        print(f"every file of {directory} is sealed by the new passphrase already; nothing was "
              f"changed")
        return 0
    finished = (f" (this finished an interrupted change: {', '.join(change.already_new)} had "
                f"it already)" if change.already_new else "")
    print(f"the escrow in {directory} is now sealed by the new passphrase: {KEYSTORE_FILE}, "
          f"ca.key and server.key{finished}. The keys inside are unchanged: appliances and "
          f"their certificates need nothing.\n"
          f"Copies of these files made before now (backups) still open with the OLD "
          f"passphrase: replace them with copies of the new files, or keep the old passphrase "
          f"as safe as the new.\n"
          f"Start the service again with the new passphrase: herald escrow serve --dir "
          f"{directory} --listen HOST:PORT")
    return 0


def audit(directory: Path) -> int:
    if not (directory / KEYSTORE_FILE).is_file():  # else a mistyped --dir "verifies", empty
        return _fail(f"{directory} is not an escrow directory (it has no {KEYSTORE_FILE}): "
                     f"check --dir")
    report = verify_audit_log(directory / AUDIT_FILE)
    for entry in report.entries:
        print(f"{entry['seq']:>6} {entry['time']} {entry['op']:<10} {entry['key_id']:<24} "
              f"{entry['outcome']:<12} {entry['client']}")
    if report.problem is not None:
        return _fail(f"the audit log does not verify: {report.problem}. Keep the file as "
                     f"evidence.")
    print(f"{len(report.entries)} entries; the chain verifies. Head: {report.head}\n"
          f"Note the head down elsewhere: if a later check does not find it as the 'prev' of "
          f"entry {len(report.entries) + 1}, lines were cut off the end.")
    return 0
