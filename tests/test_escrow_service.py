"""`herald escrow serve` as a real subprocess: persistence across restarts, mutual TLS, the
audit log, and bad input that gets error replies while the service keeps serving."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import ssl
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import msgspec
import pytest
from escrows import (
    ESCROW_PASSPHRASE,
    EscrowFiles,
    RunningEscrow,
    escrow_files,
    escrow_template,
    herald,
    init_escrow,
    new_key_id,
    running_escrow,
    service,
)

from appliance.escrow.keystore import Keystore
from appliance.escrow.wire import MAX_FRAME_BYTES
from appliance.keys import (
    EscrowError,
    EscrowRefused,
    EscrowUnavailable,
    dek_aad,
    unwrap_dek,
    wrap_dek,
)
from appliance.keys.errors import EscrowCertificateRefused

__all__ = ["escrow_files", "escrow_template", "service"]  # fixtures

MASTER_KEY = bytes(range(32))
DEK = bytes(range(100, 132))


@pytest.fixture(scope="module")
def foreign_escrow(tmp_path_factory: pytest.TempPathFactory) -> EscrowFiles:
    """Another escrow, with its own CA: its client certificates mean nothing to ours."""
    return init_escrow(tmp_path_factory.mktemp("foreign"))


def audit_entries(files: EscrowFiles) -> list[dict[str, object]]:
    lines = (files.escrow_dir / "audit.log").read_text().splitlines()
    return [json.loads(line) for line in lines]


@contextmanager
def tls_connection(service: RunningEscrow, *, with_certificate: bool = True
                   ) -> Iterator[ssl.SSLSocket]:
    """A raw mutual-TLS connection to the service, for speaking the wire protocol by hand."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(service.files.client_dir / "ca.crt"))
    if with_certificate:
        context.load_cert_chain(str(service.files.client_dir / "client.crt"),
                                str(service.files.client_dir / "client.key"))
    host, port = service.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as raw, \
            context.wrap_socket(raw, server_hostname=host) as connection:
        (size,) = struct.unpack(">I", read_exactly(connection, 4))
        assert msgspec.msgpack.decode(read_exactly(connection, size)) == {
            "ok": True, "data": b"herald-escrow-v1"}
        yield connection


def read_exactly(connection: ssl.SSLSocket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        if not chunk:
            raise ConnectionError("the service closed the connection")
        data += chunk
    return data


def exchange(connection: ssl.SSLSocket, payload: bytes, length: int | None = None
             ) -> dict[str, object]:
    connection.sendall(struct.pack(">I", len(payload) if length is None else length) + payload)
    (size,) = struct.unpack(">I", read_exactly(connection, 4))
    reply = msgspec.msgpack.decode(read_exactly(connection, size))
    assert isinstance(reply, dict)
    return reply


# -- persistence -------------------------------------------------------------------------------


def test_keys_survive_a_restart_and_a_revocation_outlives_it(escrow_files: EscrowFiles) -> None:
    kept, revoked = new_key_id(), new_key_id()
    with running_escrow(escrow_files) as first:
        escrow = first.client()
        escrow.create_key(kept)
        escrow.create_key(revoked)
        kept_blob = wrap_dek(MASTER_KEY, escrow, kept, 1, 1, DEK)
        revoked_blob = wrap_dek(MASTER_KEY, escrow, revoked, 2, 1, DEK)
        escrow.revoke(revoked)
    with running_escrow(escrow_files) as second:
        escrow = second.client()
        assert unwrap_dek(MASTER_KEY, escrow, kept, 1, 1, kept_blob) == DEK
        assert escrow.status(revoked) == "revoked"
        with pytest.raises(EscrowRefused, match="revoked"):
            unwrap_dek(MASTER_KEY, escrow, revoked, 2, 1, revoked_blob)
        with pytest.raises(EscrowRefused):
            escrow.create_key(revoked)
    # The key material itself is gone from the keystore, not merely flagged.
    keystore = Keystore.open(escrow_files.escrow_dir / "escrow.keys", ESCROW_PASSPHRASE)
    assert keystore._entries[revoked].key is None
    assert keystore._entries[kept].key is not None


def test_the_keystore_file_is_private_and_holds_no_key_in_clear(service: RunningEscrow) -> None:
    escrow = service.client()
    escrow.create_key(new_key_id())
    path = service.files.escrow_dir / "escrow.keys"
    assert path.stat().st_mode & 0o077 == 0
    assert json.loads(path.read_text())["format"] == "herald-escrow-keys-v1"


def test_a_wrong_passphrase_stops_serve_with_a_clear_message(escrow_files: EscrowFiles) -> None:
    with pytest.raises(AssertionError, match="does not open") as caught:
        RunningEscrow(escrow_files, passphrase="not the escrow passphrase")
    assert "not the escrow passphrase" not in str(caught.value)


# -- mutual TLS --------------------------------------------------------------------------------


def test_a_client_certificate_from_another_ca_is_refused(service: RunningEscrow,
                                                         foreign_escrow: EscrowFiles) -> None:
    foreign = service.files.client_dir.parent / "foreign"
    foreign.mkdir()
    for name in ("client.crt", "client.key"):
        (foreign / name).write_bytes((foreign_escrow.client_dir / name).read_bytes())
    (foreign / "ca.crt").write_bytes((service.files.client_dir / "ca.crt").read_bytes())
    with pytest.raises(EscrowCertificateRefused, match="client certificate"):
        service.client(foreign).status(new_key_id())
    assert service.client().status(new_key_id()) == "missing"  # still serving
    assert "refused a connection" in _stop_and_read_stderr(service)


def test_a_client_without_a_certificate_gets_no_answer(service: RunningEscrow) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)), \
            tls_connection(service, with_certificate=False) as connection:
        exchange(connection, msgspec.msgpack.encode({"op": "status", "key_id": "k"}))
    assert service.client().status(new_key_id()) == "missing"


def test_a_service_certificate_from_another_ca_is_refused(service: RunningEscrow,
                                                          foreign_escrow: EscrowFiles) -> None:
    """The appliance trusts only its escrow's CA, not just any escrow."""
    with pytest.raises(EscrowCertificateRefused, match="does not verify"):
        service.files.client(service.address, foreign_escrow.client_dir).status("k")


def test_a_stopped_service_is_unavailable_with_a_clear_message(service: RunningEscrow) -> None:
    client = service.client()
    service.stop()
    with pytest.raises(EscrowUnavailable, match=r"cannot reach .* `herald escrow serve`"):
        client.status(new_key_id())


def test_an_appliance_cannot_see_use_or_revoke_another_appliances_key(
        service: RunningEscrow, tmp_path: Path) -> None:
    issued = herald("escrow", "issue-client", "--dir", str(service.files.escrow_dir), "--name",
                    "appliance-2", "--out", str(tmp_path / "second"), "--passphrase-file", "-",
                    stdin=ESCROW_PASSPHRASE + "\n")
    assert issued.returncode == 0, issued.stderr
    first, second = service.client(), service.client(tmp_path / "second")
    key_id = new_key_id()
    first.create_key(key_id)
    blob = first.wrap(key_id, b"s" * 60, b"aad")
    assert second.status(key_id) == "missing"
    with pytest.raises(EscrowRefused, match="missing"):
        second.unwrap(key_id, blob, b"aad")
    with pytest.raises(EscrowRefused, match="no escrow key"):
        second.revoke(key_id)
    with pytest.raises(EscrowRefused, match="exists"):
        second.create_key(key_id)  # key ids stay unique across appliances
    assert first.unwrap(key_id, blob, b"aad") == b"s" * 60
    clients = {e["client"] for e in audit_entries(service.files)}
    assert clients == {"CN=appliance-1,O=Herald escrow", "CN=appliance-2,O=Herald escrow"}


# -- the audit log -----------------------------------------------------------------------------


def test_every_unwrap_is_audited_with_the_client_and_no_key_material(
        service: RunningEscrow) -> None:
    escrow, key_id = service.client(), new_key_id()
    escrow.create_key(key_id)
    blob = wrap_dek(MASTER_KEY, escrow, key_id, 3, 1, DEK)
    for _ in range(3):
        unwrap_dek(MASTER_KEY, escrow, key_id, 3, 1, blob)
    with pytest.raises(EscrowRefused):
        unwrap_dek(MASTER_KEY, escrow, key_id, 4, 1, blob)
    entries = audit_entries(service.files)
    unwraps = [(e["key_id"], e["outcome"]) for e in entries if e["op"] == "unwrap"]
    assert unwraps == [(key_id, "ok")] * 3 + [(key_id, "refused")]
    assert {e["client"] for e in entries} == {"CN=appliance-1,O=Herald escrow"}
    log = (service.files.escrow_dir / "audit.log").read_bytes()
    for secret in (blob, DEK, dek_aad(3, 1)):
        assert secret.hex().encode() not in log and secret not in log
    result = herald("escrow", "audit", "--dir", str(service.files.escrow_dir))
    assert result.returncode == 0, result.stderr
    assert "6 entries; the chain verifies" in result.stdout


@pytest.mark.parametrize("tamper", ["edit", "delete", "insert", "swap"])
def test_an_altered_audit_log_is_detected(service: RunningEscrow, tamper: str) -> None:
    escrow, key_id = service.client(), new_key_id()
    escrow.create_key(key_id)
    for _ in range(3):
        escrow.status(key_id)
    service.stop()
    path = service.files.escrow_dir / "audit.log"
    lines = path.read_text().splitlines(keepends=True)
    if tamper == "edit":
        lines[1] = lines[1].replace('"ok"', '"refused"')
    elif tamper == "delete":
        del lines[1]
    elif tamper == "insert":
        lines.insert(2, lines[1])
    else:
        lines[1], lines[2] = lines[2], lines[1]
    path.write_text("".join(lines))
    result = herald("escrow", "audit", "--dir", str(service.files.escrow_dir))
    assert result.returncode == 1
    assert "does not verify: line" in result.stderr
    # and a service will not continue a broken chain
    with pytest.raises(AssertionError, match="audit log"):
        RunningEscrow(service.files)


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [
    b"", b"\xc1", b"not msgpack at all", msgspec.msgpack.encode([1, 2, 3]),
    msgspec.msgpack.encode({"op": "explode", "key_id": "k"}),
    msgspec.msgpack.encode({"op": "status"}),
    msgspec.msgpack.encode({"op": "status", "key_id": 5}),
    msgspec.msgpack.encode({"op": "wrap", "key_id": "k", "data": "text, not bytes"}),
    msgspec.msgpack.encode({"op": "status", "key_id": "k", "extra": 1}),
    b"\x81\xa3\xff\xfe\xfd\x01",
], ids=["empty", "reserved-byte", "text", "array", "unknown-op", "no-key-id", "int-key-id",
        "str-data", "unknown-field", "invalid-utf8-key"])
def test_a_malformed_request_gets_an_error_reply_and_the_connection_goes_on(
        service: RunningEscrow, payload: bytes) -> None:
    with tls_connection(service) as connection:
        reply = exchange(connection, payload)
        assert reply["ok"] is False and reply["error"] == "bad_request", reply
        again = exchange(connection, msgspec.msgpack.encode({"op": "status", "key_id": "k"}))
        assert again == {"ok": True, "data": b"missing"}
    assert audit_entries(service.files)[0]["outcome"] == "bad_request"


def test_a_refusal_is_a_reply_with_its_code(service: RunningEscrow) -> None:
    with tls_connection(service) as connection:
        reply = exchange(connection, msgspec.msgpack.encode(
            {"op": "unwrap", "key_id": "nobody", "data": b"x" * 40, "aad": b""}))
    assert reply["error"] == "refused" and "missing" in str(reply["message"])


def test_an_oversized_frame_is_answered_then_the_connection_closed(
        service: RunningEscrow) -> None:
    with tls_connection(service) as connection:
        reply = exchange(connection, b"", length=MAX_FRAME_BYTES + 1)
        assert reply["error"] == "too_large"
        assert connection.recv(1) == b""
    assert service.client().status(new_key_id()) == "missing"


def test_garbage_instead_of_tls_does_not_stop_the_service(service: RunningEscrow) -> None:
    host, port = service.address.rsplit(":", 1)
    for garbage in (b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x05hello", b""):
        with socket.create_connection((host, int(port)), timeout=30) as raw:
            raw.sendall(garbage)
            raw.shutdown(socket.SHUT_WR)
            with contextlib.suppress(ConnectionError):
                assert raw.recv(1024) is not None  # the service answers or hangs up
    assert service.client().status(new_key_id()) == "missing"


def _stop_and_read_stderr(service: RunningEscrow) -> str:
    service.stop()
    return service.stderr


# -- the command line --------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["escrow"], ["escrow", "init"], ["escrow", "issue-client"],
                                     ["escrow", "serve"], ["escrow", "audit"],
                                     ["escrow", "keys"], ["escrow", "revoke"],
                                     ["escrow", "passphrase"], ["escrow", "renew"]],
                         ids=" ".join)
def test_every_escrow_command_has_help(command: list[str]) -> None:
    result = herald(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: herald escrow")


def test_init_refuses_a_directory_that_holds_an_escrow(escrow_files: EscrowFiles) -> None:
    before = (escrow_files.escrow_dir / "escrow.keys").read_bytes()
    result = herald("escrow", "init", "--dir", str(escrow_files.escrow_dir),
                    "--passphrase-file", "-", stdin=ESCROW_PASSPHRASE + "\n")
    assert result.returncode == 1 and "already holds an escrow" in result.stderr
    assert (escrow_files.escrow_dir / "escrow.keys").read_bytes() == before


def test_issue_client_needs_the_escrow_passphrase(escrow_files: EscrowFiles, tmp_path: Path
                                                  ) -> None:
    result = herald("escrow", "issue-client", "--dir", str(escrow_files.escrow_dir), "--name",
                    "x", "--out", str(tmp_path / "x"), "--passphrase-file", "-",
                    stdin="a guessed passphrase\n")
    assert result.returncode == 1 and "does not open" in result.stderr
    assert "a guessed passphrase" not in result.stderr
    assert not (tmp_path / "x" / "client.key").exists()


def test_concurrent_clients_keep_the_audit_chain_whole(service: RunningEscrow) -> None:
    escrow, key_id = service.client(), new_key_id()
    escrow.create_key(key_id)
    blob = wrap_dek(MASTER_KEY, escrow, key_id, 5, 1, DEK)
    with ThreadPoolExecutor(max_workers=8) as pool:
        opened = list(pool.map(lambda _: unwrap_dek(MASTER_KEY, escrow, key_id, 5, 1, blob),
                               range(24)))
    assert opened == [DEK] * 24
    result = herald("escrow", "audit", "--dir", str(service.files.escrow_dir))
    assert result.returncode == 0, result.stderr
    assert "26 entries; the chain verifies" in result.stdout


def test_the_operator_revokes_offline_and_it_holds_once_the_service_is_back(
        escrow_files: EscrowFiles) -> None:
    key_id, kept = new_key_id(), new_key_id()
    with running_escrow(escrow_files) as running:
        escrow = running.client()
        escrow.create_key(key_id)
        escrow.create_key(kept)
        blob = wrap_dek(MASTER_KEY, escrow, key_id, 9, 1, DEK)
        busy = herald("escrow", "revoke", "--dir", str(escrow_files.escrow_dir), "--key-id",
                      key_id, "--yes", "--passphrase-file", "-", stdin=ESCROW_PASSPHRASE + "\n")
        assert busy.returncode == 1 and "stop it first" in busy.stderr
    unconfirmed = herald("escrow", "revoke", "--dir", str(escrow_files.escrow_dir), "--key-id",
                         key_id, stdin="something else\n")
    assert unconfirmed.returncode == 1 and "nothing was revoked" in unconfirmed.stderr
    done = herald("escrow", "revoke", "--dir", str(escrow_files.escrow_dir), "--key-id", key_id,
                  "--yes", "--passphrase-file", "-", stdin=ESCROW_PASSPHRASE + "\n")
    assert done.returncode == 0, done.stderr
    listing = herald("escrow", "keys", "--dir", str(escrow_files.escrow_dir),
                     "--passphrase-file", "-", stdin=ESCROW_PASSPHRASE + "\n")
    assert listing.returncode == 0, listing.stderr
    states = {line.split()[0]: line.split()[1:] for line in listing.stdout.splitlines()}
    owner = ["CN=appliance-1,O=Herald", "escrow"]
    assert (states[key_id], states[kept]) == (["revoked", *owner], ["active", *owner])
    with running_escrow(escrow_files) as running:
        escrow = running.client()
        with pytest.raises(EscrowRefused, match="revoked"):
            unwrap_dek(MASTER_KEY, escrow, key_id, 9, 1, blob)
    revocations = [e for e in audit_entries(escrow_files) if e["op"] == "revoke"]
    assert [(e["client"], e["outcome"]) for e in revocations] == [
        ("operator (herald escrow revoke)", "ok")]


def test_a_service_that_accepts_but_never_answers_times_out_as_unavailable(
        escrow_files: EscrowFiles) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        client = escrow_files.client(f"127.0.0.1:{port}", timeout_s=0.5)
        with pytest.raises(EscrowUnavailable, match="did not answer"):
            client.status(new_key_id())


def test_missing_client_files_say_which_settings_to_check(escrow_files: EscrowFiles,
                                                          tmp_path: Path) -> None:
    with pytest.raises(EscrowError, match="check ca_file, cert_file and key_file"):
        escrow_files.client("127.0.0.1:1", tmp_path / "nothing-here")


def test_random_payloads_all_get_replies_on_one_connection(service: RunningEscrow) -> None:
    rng = random.Random(20261127)
    with tls_connection(service) as connection:
        for _ in range(200):
            payload = rng.randbytes(rng.randrange(0, 300))
            reply = exchange(connection, payload)
            assert reply["ok"] is False and reply["error"] in {"bad_request", "refused"}, reply
        again = exchange(connection, msgspec.msgpack.encode({"op": "status", "key_id": "k"}))
    assert again == {"ok": True, "data": b"missing"}
