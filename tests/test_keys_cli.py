"""Sealed stores as an administrator runs them: `herald init`, accounts and `herald keys` on a
SoftHSM2 escrow, and `herald serve` answering clients while keys rotate and get revoked. Every
`herald` command runs as a real child process (see tests/keyed_dirs.py for why)."""

from __future__ import annotations

import signal
import stat
from pathlib import Path

import trio
from clients import login, only_conversation, open_ws, request
from escrows import start_escrow_service, stop_escrow_service, store_behind_a_stopped_escrow
from keyed_dirs import herald, keyed_data_dir
from processes import herald as herald_process
from processes import served_port

MARKER = "sealed-marker"


def _add_accounts(data: str) -> None:
    for tenant, users in (("acme", ("alice", "bob")), ("globex", ("erin",))):
        result = herald("tenant", "add", "--data-dir", data, tenant)
        assert result.returncode == 0, result.stderr
        assert "data key at epoch 1" in result.stdout
        for user in users:
            result = herald("user", "add", "--data-dir", data, "--tenant", tenant, user,
                            "--display-name", f"{user.title()} Quux{user}", "--password-stdin",
                            stdin="correct horse battery\n")
            assert result.returncode == 0, result.stderr
    result = herald("group", "add", "--data-dir", data, "--tenant", "acme", "--owner", "alice",
                    "--members", "bob", "Project Nightingale")
    assert result.returncode == 0, result.stderr


def test_init_makes_the_master_key_once_and_says_what_to_back_up(tmp_path: Path) -> None:
    data = keyed_data_dir(tmp_path / "data", init=False)
    first = herald("init", "--data-dir", str(data))
    assert first.returncode == 0, first.stderr
    assert "master.key" in first.stdout and "appliance-id" in first.stdout
    assert stat.S_IMODE((data / "master.key").stat().st_mode) == 0o600
    again = herald("init", "--data-dir", str(data))
    assert again.returncode == 1 and "initialized already" in again.stderr


def test_a_data_directory_without_a_master_key_is_refused_with_what_to_do(
    tmp_path: Path,
) -> None:
    result = herald("tenant", "add", "--data-dir", str(tmp_path / "empty"), "acme")
    assert result.returncode == 1
    assert "run 'herald init' first" in result.stderr


def test_accounts_on_a_sealed_store_work_and_leave_no_plaintext_on_disk(tmp_path: Path) -> None:
    data = keyed_data_dir(tmp_path / "data")
    _add_accounts(str(data))

    listing = herald("user", "list", "--data-dir", str(data), "--tenant", "acme")
    assert listing.returncode == 0, listing.stderr
    assert "Alice Quuxalice" in listing.stdout and "bob" in listing.stdout
    raw = (data / "hot" / "data.mdb").read_bytes()
    for secret in (b"Quuxalice", b"Quuxerin", b"Project Nightingale", b"correct horse"):
        assert secret not in raw, secret
    status = herald("keys", "status", "--data-dir", str(data))
    assert status.returncode == 0, status.stderr
    assert "tenant acme (id 1): keys available" in status.stdout
    assert "epoch 1    active" in status.stdout


def test_a_wrong_passphrase_is_refused_and_says_so(tmp_path: Path) -> None:
    data = keyed_data_dir(tmp_path / "data")
    passphrase_file = tmp_path / "data-escrow" / "passphrase"
    passphrase_file.write_text("not the passphrase at all\n")
    result = herald("tenant", "list", "--data-dir", str(data))
    assert result.returncode == 1
    assert "passphrase" in result.stderr
    assert "not the passphrase" not in result.stderr


async def _history(ws: object, request_id: int, conv: int) -> dict[str, object]:
    return await request(ws, {"op": "history", "id": request_id, "conv": conv, "limit": 500})  # type: ignore[arg-type]


async def test_the_server_serves_sealed_data_and_a_revoked_tenant_goes_dark_alone(
    tmp_path: Path,
) -> None:
    data = keyed_data_dir(tmp_path / "data", cache_lifetime_s=2.0)
    _add_accounts(str(data))
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery, herald_process(
            nursery, "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0"
        ) as server:
            port = await served_port(server)
            async with open_ws(port) as alice, open_ws(port) as erin:
                await login(alice, "acme", "alice")
                await login(erin, "globex", "erin")
                group = await only_conversation(alice)
                for n in range(200):
                    ack = await request(alice, {"op": "send", "id": 10 + n, "conv": group,
                                                "cmid": f"m{n}", "body": f"{MARKER}-{n}"})
                    assert ack["type"] == "reply", ack
                raw = (data / "hot" / "data.mdb").read_bytes()
                assert MARKER.encode() not in raw

                # Rotation: a new epoch; old and new messages both read back.
                rotated = herald("keys", "rotate", "--data-dir", str(data), "--tenant", "acme")
                assert rotated.returncode == 0 and "epoch 2" in rotated.stdout, rotated.stderr
                await trio.sleep(1.5)  # the server's key refresh runs every 0.5 s here
                ack = await request(alice, {"op": "send", "id": 300, "conv": group,
                                            "cmid": "after", "body": f"{MARKER}-after"})
                assert ack["type"] == "reply", ack
                page = await _history(alice, 301, group)
                bodies = [m["body"] for m in page["data"]["msgs"]]  # type: ignore[index]
                assert bodies[-1] == f"{MARKER}-after" and f"{MARKER}-0" in bodies

                # Revocation of acme: its data goes dark; globex is untouched.
                revoked = herald("keys", "revoke", "--data-dir", str(data), "--tenant", "acme",
                                 "--confirm", "acme")
                assert revoked.returncode == 0, revoked.stderr
                for attempt in range(60):
                    page = await _history(alice, 400 + attempt, group)
                    if page["type"] == "error":
                        break
                    await trio.sleep(0.25)
                assert page["type"] == "error" and page["code"] == "key_unavailable", page
                theirs = await request(erin, {"op": "convs", "id": 500})
                assert theirs["type"] == "reply", theirs
                async with open_ws(port) as again:
                    refused = await request(again, {"op": "login", "id": 1, "tenant": "acme",
                                                    "login": "bob",
                                                    "password": "correct horse battery"})
                    assert refused["type"] == "error", refused
                    assert refused["code"] == "key_unavailable", refused
                status = herald("keys", "status", "--data-dir", str(data))
                assert "tenant acme (id 1): keys revoked" in status.stdout, status.stdout
                assert "tenant globex (id 2): keys available" in status.stdout
            server.process.send_signal(signal.SIGINT)
            await server.expect(r"Herald stopped\.")
        assert server.process.returncode == 0, server.err.decode()


async def test_a_server_started_while_the_escrow_is_down_serves_the_tenant_once_it_is_back(
    tmp_path: Path,
) -> None:
    """Escrow unreachable at start: the tenant is unavailable (a clear error to its clients),
    not a crash; when the escrow answers again, the next key refresh brings it back."""
    store = store_behind_a_stopped_escrow(tmp_path, "alice", "correct horse battery")
    alice = {"op": "login", "id": 1, "tenant": "acme", "login": "alice",
             "password": "correct horse battery"}
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery, herald_process(
            nursery, "serve", "--data-dir", str(store.data), "--listen", "127.0.0.1:0"
        ) as server:
            await server.expect(r"Keys: tenants 1 unavailable")
            served = await served_port(server)
            async with open_ws(served) as ws:
                refused = await request(ws, alice)
            assert refused["type"] == "error" and refused["code"] == "key_unavailable", refused
            escrow = start_escrow_service(store.files, store.port)
            try:
                for attempt in range(60):
                    async with open_ws(served) as ws:
                        reply = await request(ws, {**alice, "id": 2 + attempt})
                    if reply["type"] == "reply":
                        break
                    await trio.sleep(0.25)
                assert reply["type"] == "reply", reply
            finally:
                server.process.send_signal(signal.SIGINT)
                await server.expect(r"Herald stopped\.")
                stop_escrow_service(escrow)
        assert server.process.returncode == 0, server.err.decode()
