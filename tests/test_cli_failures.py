"""Every `herald` command's common failures, run as real subprocesses: each exits non-zero with
one line `herald: ...` (or `herald escrow: ...`) saying what is wrong and what to do, and never
a traceback. Log records a server writes before it gives up (`level=...`) may precede that
line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import PASSWORD
from escrows import ESCROW_PASSPHRASE, init_escrow, running_escrow
from keyed_dirs import add_acme_with_a_group, keyed_data_dir

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Places:
    keyed: Path  # a sealed store (SoftHSM2 escrow) with tenant acme and its user alice
    escrow_down: Path  # the configuration of a sealed store whose escrow service is stopped
    escrow_dir: Path  # an initialised escrow directory (its passphrase: ESCROW_PASSPHRASE)
    scratch: Path
    taken_port: int  # a port something else listens on


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Places]:
    root = tmp_path_factory.mktemp("failures")
    keyed = keyed_data_dir(root / "keyed")
    add_acme_with_a_group(keyed, PASSWORD)
    escrow = init_escrow(root / "escrow")
    (root / "escrow-passphrase").write_text(ESCROW_PASSPHRASE + "\n")
    (root / "master-passphrase").write_text("a master key passphrase\n")
    config = root / "escrow-down.toml"
    with running_escrow(escrow) as running:
        config.write_text(
            f'data_dir = "{root / "service-data"}"\n'
            f"[escrow]\n"
            f'backend = "service"\n'
            f'address = "{running.address}"\n'
            f'ca_file = "{escrow.client_dir / "ca.crt"}"\n'
            f'cert_file = "{escrow.client_dir / "client.crt"}"\n'
            f'key_file = "{escrow.client_dir / "client.key"}"\n'
            f"[keys]\n"
            f'passphrase_file = "{root / "master-passphrase"}"\n')
        for args in (("init",), ("tenant", "add", "acme")):
            done = _herald(*args, "--config", str(config))
            assert done.returncode == 0, done.stderr
    scratch = root / "scratch"
    scratch.mkdir()
    (scratch / "empty").mkdir()
    (scratch / "not-toml.toml").write_text("listen = [\n")
    (scratch / "unknown.toml").write_text("[gateway]\nmax_connection = 5\n")
    (scratch / "wrong-type.toml").write_text('[gateway]\nmax_connections = "many"\n')
    (scratch / "not-a-pem").write_text("not a certificate\n")
    (scratch / "wrong-passphrase").write_text("not the passphrase at all\n")
    settings = (keyed / "herald.toml").read_text().splitlines()
    (scratch / "wrong-passphrase.toml").write_text("\n".join(
        f'passphrase_file = "{scratch / "wrong-passphrase"}"'
        if line.startswith("passphrase_file") else line for line in settings) + "\n")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        yield Places(keyed, config, escrow.escrow_dir, scratch, taken.getsockname()[1])


def _herald(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], cwd=ROOT,
                          input=stdin, capture_output=True, text=True, timeout=60, check=False)


# (case, command with {K} the keyed store, {S} the scratch folder, {DOWN} the configuration
# whose escrow is stopped, {E} the escrow directory, {PORT} the taken port; a part of the
# message that says what to do)
CASES = [
    ("missing data dir", "tenant list --data-dir {S}/nowhere", "run 'herald init' first"),
    ("serve on a missing data dir", "serve --data-dir {S}/nowhere --listen 127.0.0.1:0",
     "run 'herald init' first"),
    ("uninitialised store", "user list --data-dir {S}/empty --tenant acme",
     "run 'herald init' first"),
    ("keys on an uninitialised store", "keys status --data-dir {S}/empty",
     "run 'herald init' first"),
    ("data dir is a file", "tenant list --data-dir {S}/not-a-pem", "not a directory"),
    ("demo on a data dir that is a file", "serve --demo --data-dir {S}/not-a-pem --listen "
     "127.0.0.1:0", "choose another --data-dir"),
    ("missing config file", "tenant list --config {S}/nowhere.toml",
     "cannot read the configuration file"),
    ("bad TOML", "serve --config {S}/not-toml.toml", "is not valid TOML"),
    ("unknown setting", "tenant list --config {S}/unknown.toml", "known are"),
    ("setting of the wrong type", "serve --config {S}/wrong-type.toml", "must be an integer"),
    ("wrong passphrase (file)", "tenant list --config {S}/wrong-passphrase.toml --data-dir {K}",
     "does not open"),
    ("serve, wrong passphrase", "serve --config {S}/wrong-passphrase.toml --data-dir {K} "
     "--listen 127.0.0.1:0", "does not open"),
    ("keys passphrase, wrong passphrase", "keys passphrase --data-dir {K} --passphrase-file "
     "{S}/wrong-passphrase --new-passphrase-file {S}/wrong-passphrase", "does not open"),
    ("unknown tenant", "user add --data-dir {K} --tenant nope bob --password-stdin",
     "no tenant is named 'nope'"),
    ("unknown login", "user passwd --data-dir {K} --tenant acme nobody --password-stdin",
     "no user has the login 'nobody'"),
    ("unknown group member", "group add --data-dir {K} --tenant acme --owner alice "
     "--members nobody Ops", "no user has the login 'nobody'"),
    ("unknown tenant for keys", "keys rotate --data-dir {K} --tenant nope",
     "no tenant is named 'nope'"),
    ("unknown epoch", "keys shred --data-dir {K} --tenant acme --epoch 9 --confirm acme",
     "no key epoch 9"),
    ("tenant exists", "tenant add --data-dir {K} acme", "exists already"),
    ("init twice", "init --data-dir {K}", "initialized already"),
    ("port in use", "serve --data-dir {K} --listen 127.0.0.1:{PORT}", "choose another --listen"),
    ("bad --listen", "serve --data-dir {K} --listen nonsense", "must look like HOST:PORT"),
    ("port out of range", "serve --data-dir {K} --listen 127.0.0.1:70000",
     "must look like HOST:PORT"),
    ("plain ws on a network address", "serve --data-dir {K} --listen 192.0.2.1:8470",
     "Give a certificate"),
    ("missing certificate file", "serve --data-dir {K} --listen 127.0.0.1:0 --tls-cert "
     "{S}/nowhere.pem --tls-key {S}/nowhere.pem", "check tls.cert_file"),
    ("unreadable certificate file", "serve --data-dir {K} --listen 127.0.0.1:0 --tls-cert "
     "{S}/not-a-pem --tls-key {S}/not-a-pem", "must be PEM files"),
    ("certificate without key", "serve --data-dir {K} --tls-cert {S}/not-a-pem",
     "go together"),
    ("certificate into a missing folder", "cert selfsigned --out /proc/no-such-folder",
     "choose another --out"),
    ("escrow unreachable, init", "init --config {DOWN} --data-dir {S}/new",
     "check that `herald escrow serve` runs there"),
    ("escrow unreachable, account", "user add --config {DOWN} --tenant acme bob "
     "--password-stdin", "escrow"),
    ("escrow unreachable, keys", "keys rotate --config {DOWN} --tenant acme",
     "check that `herald escrow serve` runs there"),
    ("audit on a missing data dir", "audit verify --data-dir {S}/nowhere", "has no store"),
    ("audit, wrong passphrase", "audit list --config {S}/wrong-passphrase.toml --data-dir {K}",
     "does not open"),
    ("audit list, unknown tenant", "audit list --data-dir {K} --tenant nope",
     "no tenant is named 'nope'"),
    ("escrow directory missing", "escrow keys --dir {S}/nowhere --passphrase-file "
     "{S}/wrong-passphrase", "create one first"),
    ("escrow audit of a missing directory", "escrow audit --dir {S}/nowhere", "check --dir"),
    ("escrow wrong passphrase", "escrow keys --dir {E} --passphrase-file {S}/wrong-passphrase",
     "passphrase"),
    ("escrow serve, bad --listen", "escrow serve --dir {E} --listen nonsense "
     "--passphrase-file {S}/wrong-passphrase", "must look like HOST:PORT"),
    ("escrow passphrase file missing", "escrow init --dir {S}/new-escrow --passphrase-file "
     "{S}/nowhere", "check the path"),
    ("chat, bad URL", "chat --url nonsense --tenant acme --login alice --password-stdin",
     "is not a WebSocket URL"),
]


@pytest.mark.parametrize(("command", "advice"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_a_common_failure_ends_in_one_line_saying_what_to_do_and_no_traceback(
    places: Places, command: str, advice: str,
) -> None:
    args = command.format(K=places.keyed, S=places.scratch, DOWN=places.escrow_down,
                          E=places.escrow_dir, PORT=places.taken_port).split()
    done = _herald(*args, stdin="a long enough password\n")
    assert done.returncode != 0, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines()
             if " level=" not in line and "logger=" not in line]
    # A key warning on the way (the account and key commands) is labelled as one: it is not
    # the message that ends the command.
    warnings = [line for line in lines if line.startswith("herald: warning: ")]
    assert not [line for line in lines if line.startswith("tenant=")], done.stderr  # bare
    lines = [line for line in lines if line not in warnings]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(("herald: ", "herald escrow: ", "herald chat: ")), done.stderr
    assert lines[0] == done.stderr.splitlines()[-1], done.stderr
    assert advice in lines[0], done.stderr


def test_the_audit_commands_need_the_name_key_and_no_escrow(places: Places) -> None:
    """The escrow is down, yet the log (sealed under the name key) verifies and lists."""
    verified = _herald("audit", "verify", "--config", str(places.escrow_down))
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("audit log verified: ")
    listed = _herald("audit", "list", "--config", str(places.escrow_down), "--action",
                     "tenant.create")
    assert listed.returncode == 0, listed.stderr
    assert "tenant.create" in listed.stdout


def test_output_into_a_closed_pipe_ends_quietly(places: Places) -> None:
    """`herald ... | head -1`: once the reader is gone, herald stops without a traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before herald writes anything
    try:
        done = subprocess.run(
            [sys.executable, "-m", "appliance.cli", "cert", "selfsigned", "--out",
             str(places.scratch / "piped-certs")], cwd=ROOT, stdout=write_end,
            stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 141, done  # 128 + SIGPIPE, as a shell reports `cmd | head`
