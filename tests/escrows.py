"""Real escrows for tests: a SoftHSM2 token in a temporary directory, and `herald escrow serve`
as a subprocess with its own CA, keystore and audit log.

SoftHSM2 reads SOFTHSM2_CONF once per process (when the module is first loaded), so one token
directory serves the whole session; tests keep apart by using fresh key ids.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.cli.demo_keys import SOFTHSM_MODULES
from appliance.escrow import ServiceEscrow
from appliance.keys.pkcs11_escrow import Pkcs11Escrow

HERALD = [sys.executable, "-m", "appliance.cli"]
ESCROW_PASSPHRASE = "escrow passphrase for tests"
TOKEN_LABEL = "herald-tests"
TOKEN_PIN = "1234-test-pin"


def new_key_id() -> str:
    return f"k-{uuid.uuid4().hex[:16]}"


def herald(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HERALD, *args], input=stdin, capture_output=True, text=True,
                          timeout=120, check=False)


# -- an escrow service as a child process, for servers that meet it down and back ------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_escrow_service(files: EscrowFiles, port: int) -> subprocess.Popen[str]:
    """`herald escrow serve` on 127.0.0.1:`port`, returned once it says it serves."""
    process = subprocess.Popen(
        [*HERALD, "escrow", "serve", "--dir", str(files.escrow_dir), "--listen",
         f"127.0.0.1:{port}", "--passphrase-file", "-"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(ESCROW_PASSPHRASE + "\n")
    process.stdin.close()
    process.stdin = None  # so that communicate() does not flush it
    assert process.stdout.readline().startswith("escrow serving on")
    return process


def stop_escrow_service(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)


@dataclass(frozen=True)
class StoreBehindEscrow:
    """A keyed data directory whose escrow service (stopped now) answers at `port`."""

    files: EscrowFiles
    port: int
    data: Path


def store_behind_a_stopped_escrow(tmp_path: Path, user: str, password: str
                                  ) -> StoreBehindEscrow:
    """`herald init`, tenant acme and its `user` on a store keyed by an escrow service with
    short timeouts and DEK lifetimes; the service is stopped again on return, so that a server
    started next meets it down (start it again with `start_escrow_service`)."""
    files = init_escrow(tmp_path / "escrow-root")
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "passphrase").write_text("a master key passphrase for tests\n")
    (data / "herald.toml").write_text(
        "[escrow]\n"
        'backend = "service"\n'
        f'address = "127.0.0.1:{port}"\n'
        f'ca_file = "{files.client_dir / "ca.crt"}"\n'
        f'cert_file = "{files.client_dir / "client.crt"}"\n'
        f'key_file = "{files.client_dir / "client.key"}"\n'
        "timeout_s = 2.0\n"
        "cache_lifetime_s = 2.0\n"
        "[keys]\n"
        f'passphrase_file = "{tmp_path / "passphrase"}"\n'
    )
    escrow = start_escrow_service(files, port)
    try:
        for args in (("init",), ("tenant", "add", "acme")):
            result = herald(*args, "--data-dir", str(data))
            assert result.returncode == 0, result.stderr
        result = herald("user", "add", "--data-dir", str(data), "--tenant", "acme", user,
                        "--password-stdin", stdin=password + "\n")
        assert result.returncode == 0, result.stderr
    finally:
        stop_escrow_service(escrow)
    return StoreBehindEscrow(files, port, data)


# -- SoftHSM2 -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoftHsm:
    module: str
    token_label: str
    pin: str

    def open(self) -> Pkcs11Escrow:
        return Pkcs11Escrow(self.module, self.token_label, self.pin)


def softhsm_token(directory: Path) -> SoftHsm:
    """Initialise a SoftHSM2 token under `directory` and point this process at it; skips the
    test (loudly) only when SoftHSM2 is not installed."""
    module = os.environ.get("HERALD_TEST_PKCS11_MODULE") or next(
        (path for path in SOFTHSM_MODULES if os.path.exists(path)), None)
    if shutil.which("softhsm2-util") is None or module is None:
        pytest.skip("SOFTHSM2 IS NOT INSTALLED, so the PKCS#11 escrow is NOT TESTED: run "
                    "`apt-get install softhsm2` (make test tries to) and rerun")
    tokens = directory / "tokens"
    tokens.mkdir(parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    f"log.level = ERROR\nslots.removable = false\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN_LABEL,
                    "--pin", TOKEN_PIN, "--so-pin", "5678-test-so-pin"],
                   check=True, capture_output=True, timeout=60)
    return SoftHsm(module, TOKEN_LABEL, TOKEN_PIN)


# -- the escrow service ----------------------------------------------------------------------


@dataclass(frozen=True)
class EscrowFiles:
    """An escrow directory and the client files of one appliance."""

    escrow_dir: Path
    client_dir: Path

    def client(self, address: str, client_dir: Path | None = None, *,
               timeout_s: float = 10.0) -> ServiceEscrow:
        files = client_dir or self.client_dir
        return ServiceEscrow(address, str(files / "ca.crt"), str(files / "client.crt"),
                             str(files / "client.key"), timeout_s=timeout_s)


def init_escrow(root: Path) -> EscrowFiles:
    """`herald escrow init` and `issue-client` run for real into `root`."""
    escrow_dir, client_dir = root / "escrow", root / "appliance"
    done = herald("escrow", "init", "--dir", str(escrow_dir), "--passphrase-file", "-",
                  stdin=ESCROW_PASSPHRASE + "\n")
    assert done.returncode == 0, done.stderr
    done = herald("escrow", "issue-client", "--dir", str(escrow_dir), "--name", "appliance-1",
                  "--out", str(client_dir), "--passphrase-file", "-",
                  stdin=ESCROW_PASSPHRASE + "\n")
    assert done.returncode == 0, done.stderr
    return EscrowFiles(escrow_dir, client_dir)


class RunningEscrow:
    """`herald escrow serve` in a subprocess, listening on a free port of 127.0.0.1."""

    def __init__(self, files: EscrowFiles, passphrase: str = ESCROW_PASSPHRASE) -> None:
        self.files = files
        self.process = subprocess.Popen(
            [*HERALD, "escrow", "serve", "--dir", str(files.escrow_dir), "--listen",
             "127.0.0.1:0", "--passphrase-file", "-"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(passphrase + "\n")
        self.process.stdin.close()
        self.process.stdin = None  # so that communicate() does not flush it
        first_line: list[str] = []
        reader = threading.Thread(target=lambda: first_line.append(
            self.process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout=60)
        line = first_line[0] if first_line else ""
        if not line.startswith("escrow serving on "):
            self.stop()
            raise AssertionError(f"the escrow did not start: {line!r} {self.stderr}")
        self.address = line.removeprefix("escrow serving on ").strip()
        self.stderr = ""

    def client(self, client_dir: Path | None = None) -> ServiceEscrow:
        return self.files.client(self.address, client_dir)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, self.stderr = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, self.stderr = self.process.communicate()


@contextmanager
def running_escrow(files: EscrowFiles, passphrase: str = ESCROW_PASSPHRASE
                   ) -> Iterator[RunningEscrow]:
    escrow = RunningEscrow(files, passphrase)
    try:
        yield escrow
    finally:
        escrow.stop()
    assert escrow.process.returncode == 0, escrow.stderr


# -- fixtures (imported by the test modules that use them) --------------------------------------


# Each test module that imports a session fixture gets its own copy of its definition; this
# cache makes them share one token (SoftHSM2 could not see a second one) and one template.
_per_process: dict[str, Any] = {}


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    if "softhsm" not in _per_process:
        _per_process["softhsm"] = softhsm_token(tmp_path_factory.mktemp("softhsm"))
    return _per_process["softhsm"]  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def escrow_template(tmp_path_factory: pytest.TempPathFactory) -> EscrowFiles:
    if "escrow" not in _per_process:
        _per_process["escrow"] = init_escrow(tmp_path_factory.mktemp("escrow-template"))
    return _per_process["escrow"]  # type: ignore[no-any-return]


def copy_escrow(template: EscrowFiles, root: Path) -> EscrowFiles:
    """A fresh copy of an initialised escrow (initialising one costs Argon2id and key pairs)."""
    files = EscrowFiles(root / "escrow", root / "appliance")
    shutil.copytree(template.escrow_dir, files.escrow_dir)
    shutil.copytree(template.client_dir, files.client_dir)
    return files


@pytest.fixture
def escrow_files(escrow_template: EscrowFiles, tmp_path: Path) -> EscrowFiles:
    return copy_escrow(escrow_template, tmp_path)


@pytest.fixture
def service(escrow_files: EscrowFiles) -> Iterator[RunningEscrow]:
    with running_escrow(escrow_files) as running:
        yield running


@pytest.fixture(scope="module")
def shared_service(escrow_template: EscrowFiles, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[RunningEscrow]:
    """One service for a module's tests, which keep apart by using fresh key ids."""
    with running_escrow(copy_escrow(escrow_template, tmp_path_factory.mktemp("escrow"))) as running:
        yield running


@pytest.fixture(params=["pkcs11", "service"])
def escrow(request: pytest.FixtureRequest) -> Iterator[Pkcs11Escrow | ServiceEscrow]:
    """Each escrow backend, for the tests of the `Escrow` contract."""
    backend: Pkcs11Escrow | ServiceEscrow
    if request.param == "pkcs11":
        backend = request.getfixturevalue("softhsm").open()
    else:
        backend = request.getfixturevalue("shared_service").client()
    try:
        yield backend
    finally:
        backend.close()
