"""Certificate lifetimes as an operator meets them: `herald serve`, `herald keys status`,
`herald escrow keys|serve|renew`, all as real child processes on real certificate files made
with the project's own code (appliance/cli/certs.py, appliance/escrow/pki.py) and a chosen date.
Every certificate that should warn ends 10 days and one hour from now, so that "in 10 days"
holds for the hour the test may take."""

from __future__ import annotations

import datetime
import shutil
import signal
from contextlib import closing
from pathlib import Path

import pytest
import trio
from escrows import (
    ESCROW_PASSPHRASE,
    EscrowFiles,
    escrow_files,
    escrow_template,
    herald,
    running_escrow,
)
from keyed_dirs import keyed_data_dir
from processes import herald as herald_process

from appliance.cli.certs import VALID_DAYS, SelfSigned, make_self_signed
from appliance.escrow.pki import (
    CA_DAYS,
    LEAF_DAYS,
    issue_client_certificate,
    renew_service_certificates,
)
from appliance.keys.errors import EscrowCertificateRefused

__all__ = ["escrow_files", "escrow_template"]  # fixtures

DAY = datetime.timedelta(days=1)


def _made_so_that_it_ends_in(days: int, valid_days: int) -> datetime.datetime:
    """The date to make a `valid_days` certificate on so that it ends `days` days and an hour
    from now (negative: ended that long ago)."""
    now = datetime.datetime.now(datetime.UTC)
    return now + days * DAY + datetime.timedelta(hours=1) - valid_days * DAY


def _gateway_cert(folder: Path, days_left: int) -> SelfSigned:
    return make_self_signed(folder, ["herald.example"],
                            now=_made_so_that_it_ends_in(days_left, VALID_DAYS))


async def _serve_and_stop(*args: str) -> tuple[str, str]:
    """Run `herald serve ARGS` until it listens, then stop it; its standard output and
    error."""
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery, herald_process(
            nursery, "serve", "--listen", "127.0.0.1:0", *args
        ) as server:
            await server.expect(r"listening at wss?://")
            server.process.send_signal(signal.SIGINT)
            await server.expect(r"Herald stopped\.")
    assert server.process.returncode == 0, server.err.decode()
    return server.out.decode(), server.err.decode()


# -- herald serve: the gateway -------------------------------------------------------------


async def test_serve_warns_of_a_gateway_certificate_ending_in_10_days_and_not_of_a_400_day_ca(
    tmp_path: Path,
) -> None:
    data = keyed_data_dir(tmp_path / "data")
    soon = _gateway_cert(tmp_path / "gateway", 10)
    far = make_self_signed(tmp_path / "client-ca", [], valid_days=400)
    with (data / "herald.toml").open("a") as config:
        config.write(f'[tls]\ncert_file = "{soon.cert_file}"\nkey_file = "{soon.key_file}"\n'
                     f'client_ca_file = "{far.cert_file}"\n')
    _, err = await _serve_and_stop("--data-dir", str(data))
    warnings = [line for line in err.splitlines() if "certificate_expiry" in line]
    assert len(warnings) == 1, err
    assert "level=WARNING" in warnings[0]
    assert (f"certificate_expiry the gateway's TLS certificate ([tls] cert_file), "
            f"{soon.cert_file}, expires on {soon.not_after:%Y-%m-%d %H:%M} UTC, in 10 days. "
            f"Renew it: ") in warnings[0]
    assert "herald cert selfsigned" in warnings[0] and "site's CA" in warnings[0]


def test_serve_refuses_an_expired_gateway_certificate_and_says_how_to_renew_it(
    tmp_path: Path,
) -> None:
    data = keyed_data_dir(tmp_path / "data")
    expired = _gateway_cert(tmp_path / "gateway", -3)
    done = herald("serve", "--data-dir", str(data), "--listen", "127.0.0.1:0",
                  "--tls-cert", str(expired.cert_file), "--tls-key", str(expired.key_file))
    assert done.returncode == 2, done  # as every configuration error
    assert (f"herald: refusing to serve an expired certificate: {expired.cert_file} ([tls] "
            f"cert_file; ") in done.stderr
    assert f"expired on {expired.not_after:%Y-%m-%d %H:%M} UTC" in done.stderr
    assert "every client would fail to verify it" in done.stderr
    assert "herald cert selfsigned" in done.stderr
    assert "listening" not in done.stdout


# -- herald keys status and herald serve: the escrow client certificate --------------------------


def _service_config(data: Path, escrow: str, client: Path, passphrase_file: Path) -> None:
    data.mkdir(exist_ok=True)
    (data / "herald.toml").write_text(
        "[escrow]\n"
        'backend = "service"\n'
        f'address = "{escrow}"\n'
        f'ca_file = "{client / "ca.crt"}"\n'
        f'cert_file = "{client / "client.crt"}"\n'
        f'key_file = "{client / "client.key"}"\n'
        "timeout_s = 5.0\n"
        "[keys]\n"
        f'passphrase_file = "{passphrase_file}"\n'
    )


def _issue(files: EscrowFiles, out: Path, days_left: int) -> Path:
    issue_client_certificate(files.escrow_dir, ESCROW_PASSPHRASE, "appliance-1", out,
                             now=_made_so_that_it_ends_in(days_left, LEAF_DAYS))
    return out / "client.crt"


async def test_the_escrow_client_certificate_is_shown_warned_of_and_never_stops_the_start(
    escrow_files: EscrowFiles, tmp_path: Path,
) -> None:
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("a master key passphrase for tests\n")
    data = tmp_path / "data"
    soon = _issue(escrow_files, tmp_path / "client-soon", 10)
    with running_escrow(escrow_files) as escrow:
        _service_config(data, escrow.address, soon.parent, passphrase)
        for args in (("init",), ("tenant", "add", "acme")):
            done = herald(*args, "--data-dir", str(data))
            assert done.returncode == 0, done.stderr

        status = herald("keys", "status", "--data-dir", str(data))
        assert status.returncode == 0, status.stderr
        lines = status.stdout.splitlines()
        assert lines[1].startswith(f"escrow client certificate: {soon}: valid until ")
        assert lines[1].endswith(" (10 days left, RENEW SOON)")
        assert lines[2].startswith(f"escrow CA certificate: {soon.parent / 'ca.crt'}: valid "
                                   f"until ")
        assert "RENEW SOON" not in lines[2]
        assert "tenant acme (id 1): keys available" in status.stdout

        _, err = await _serve_and_stop("--data-dir", str(data))
        (warning,) = [line for line in err.splitlines() if "certificate_expiry" in line]
        assert "level=WARNING" in warning
        assert (f"this appliance's escrow client certificate ([escrow] cert_file), {soon}, "
                f"expires on ") in warning and ", in 10 days. " in warning
        assert "herald escrow issue-client" in warning

        # Expired: the escrow refuses this appliance; the server starts all the same, says
        # why, and its tenants are unavailable (not "revoked": no key was refused) until a
        # renewed certificate is in place.
        expired = _issue(escrow_files, tmp_path / "client-expired", -1)
        with closing(escrow.files.client(escrow.address, expired.parent)) as client, \
                pytest.raises(EscrowCertificateRefused, match=r"EXPIRED.*issue-client"):
            client.status("k-any")
        _service_config(data, escrow.address, expired.parent, passphrase)
        out, err = await _serve_and_stop("--data-dir", str(data))
        assert "Keys: tenants 1 unavailable" in out
        (error,) = [line for line in err.splitlines() if "certificate_expiry" in line]
        assert "level=ERROR" in error
        assert (f"this appliance's escrow client certificate ([escrow] cert_file), {expired}, "
                f"EXPIRED on ") in error and "herald escrow issue-client" in error
        assert "tenant=1 escrow or master key unreachable" in err
        status = herald("keys", "status", "--data-dir", str(data))
        assert f"escrow client certificate: {expired}: EXPIRED on " in status.stdout
        assert "tenant acme (id 1): keys unavailable" in status.stdout
        # A revocation the escrow never saw is not reported done.
        revoke = herald("keys", "revoke", "--data-dir", str(data), "--tenant", "acme",
                        "--confirm", "acme")
        assert revoke.returncode == 1
        assert "(escrow_certificate_refused)" in revoke.stderr


# -- the escrow's own certificates --------------------------------------------------------------


def _escrow(*args: str) -> tuple[int, str, str]:
    done = herald("escrow", *args, "--passphrase-file", "-", stdin=ESCROW_PASSPHRASE + "\n")
    return done.returncode, done.stdout, done.stderr


def test_escrow_keys_shows_when_the_escrow_certificates_end_and_renew_extends_them(
    escrow_files: EscrowFiles,
) -> None:
    directory = escrow_files.escrow_dir
    code, out, err = _escrow("keys", "--dir", str(directory))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"server certificate: {directory / 'server.crt'}: valid until ")
    assert lines[1].startswith(f"CA certificate: {directory / 'ca.crt'}: valid until ")
    assert "RENEW SOON" not in out

    renew_service_certificates(directory, ESCROW_PASSPHRASE,
                               now=_made_so_that_it_ends_in(10, LEAF_DAYS))
    code, out, err = _escrow("keys", "--dir", str(directory))
    assert out.splitlines()[0].endswith(" (10 days left, RENEW SOON)"), out

    ca_before = (directory / "ca.crt").read_bytes()
    code, out, err = _escrow("renew", "--dir", str(directory))
    assert code == 0, err
    assert out.splitlines()[0].endswith(f" ({LEAF_DAYS - 1} days left)"), out
    assert "Restart herald escrow serve" in out
    assert "WARNING" not in out  # the CA outlives the new server certificate
    assert (directory / "ca.crt").read_bytes() == ca_before  # without --ca


def test_renewing_the_server_certificate_warns_when_the_ca_ends_before_it(
    escrow_files: EscrowFiles,
) -> None:
    directory = escrow_files.escrow_dir
    renew_service_certificates(directory, ESCROW_PASSPHRASE, ca=True,
                               now=_made_so_that_it_ends_in(100, CA_DAYS))
    code, out, err = _escrow("renew", "--dir", str(directory))
    assert code == 0, err
    (warning,) = [line for line in out.splitlines() if line.startswith("WARNING")]
    assert "the escrow's CA certificate ends on " in warning
    assert "before the new server certificate" in warning
    assert "herald escrow renew --ca" in warning


def test_escrow_serve_warns_of_its_server_certificate_ending_in_10_days(
    escrow_files: EscrowFiles,
) -> None:
    directory = escrow_files.escrow_dir
    renew_service_certificates(directory, ESCROW_PASSPHRASE,
                               now=_made_so_that_it_ends_in(10, LEAF_DAYS))
    with running_escrow(escrow_files) as escrow, closing(escrow.client()) as client:
        client.create_key("k-still-served")  # it serves all the same
    (warning,) = [line for line in escrow.stderr.splitlines() if "certificate_expiry" in line]
    assert warning.startswith("herald escrow: WARNING certificate_expiry the escrow's server "
                              f"certificate, {directory / 'server.crt'}, expires on ")
    assert ", in 10 days. " in warning
    assert f"`herald escrow renew --dir {directory}`" in warning


def test_escrow_serve_refuses_an_expired_server_certificate(escrow_files: EscrowFiles) -> None:
    directory = escrow_files.escrow_dir
    renew_service_certificates(directory, ESCROW_PASSPHRASE,
                               now=_made_so_that_it_ends_in(-2, LEAF_DAYS))
    code, out, err = _escrow("serve", "--dir", str(directory), "--listen", "127.0.0.1:0")
    assert code == 1
    assert "escrow serving" not in out
    assert (f"herald escrow: ERROR certificate_expiry the escrow's server certificate, "
            f"{directory / 'server.crt'}, EXPIRED on ") in err
    assert "herald escrow: refusing to serve with an expired certificate" in err
    assert f"herald escrow renew --dir {directory}" in err


def test_a_renewed_escrow_ca_keeps_the_issued_client_certificates_and_old_ca_copies_working(
    escrow_files: EscrowFiles, tmp_path: Path,
) -> None:
    directory = escrow_files.escrow_dir
    ca_before = (directory / "ca.crt").read_bytes()
    code, out, err = _escrow("renew", "--dir", str(directory), "--ca")
    assert code == 0, err
    assert (directory / "ca.crt").read_bytes() != ca_before
    assert "Give the new" in out and "their client certificates stay valid" in out
    renewed_copy = tmp_path / "renewed-copy"
    shutil.copytree(escrow_files.client_dir, renewed_copy)
    shutil.copy(directory / "ca.crt", renewed_copy / "ca.crt")
    with running_escrow(escrow_files) as escrow:
        # The appliance's files from before the renewal: old client.crt, old ca.crt.
        with closing(escrow.client()) as old:
            old.create_key("k-before")
            assert old.status("k-before") == "active"
        # The same client certificate, verifying the service with the new ca.crt.
        with closing(escrow.client(renewed_copy)) as new:
            assert new.status("k-before") == "active"
