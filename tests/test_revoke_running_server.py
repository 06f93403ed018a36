"""`herald keys revoke` beside a running server with a long DEK cache: the revocation is
recorded in the store (the epochs become `revoked`), so the server forgets the tenant's keys
at its next key refresh (every 5 s) instead of half a DEK lifetime later (30 minutes here),
when it would next ask the escrow. Every `herald` command is a real child process."""

from __future__ import annotations

import signal
from pathlib import Path

import trio
from clients import login, only_conversation, open_ws, request
from conftest import PASSWORD
from keyed_dirs import add_acme_with_a_group, herald, keyed_data_dir
from processes import herald as herald_process
from processes import served_port


async def test_a_revocation_by_another_process_darkens_the_tenant_at_the_next_key_refresh(
    tmp_path: Path,
) -> None:
    data = keyed_data_dir(tmp_path / "data", cache_lifetime_s=3600.0)
    add_acme_with_a_group(data, PASSWORD)
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery, herald_process(
            nursery, "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0"
        ) as server:
            port = await served_port(server)
            async with open_ws(port) as alice:
                await login(alice, "acme", "alice")
                group = await only_conversation(alice)
                ack = await request(alice, {"op": "send", "id": 3, "conv": group,
                                            "cmid": "before", "body": "before the revocation"})
                assert ack["type"] == "reply", ack

                revoked = await trio.to_thread.run_sync(
                    herald, "keys", "revoke", "--data-dir", str(data), "--tenant", "acme",
                    "--confirm", "acme")
                assert revoked.returncode == 0, revoked.stderr
                assert "at its next key refresh, within 5 s" in revoked.stdout, revoked.stdout
                # Its DEKs are good for another hour; the store's record of the revocation
                # is what reaches the server, at its next refresh (at most 5 s; 30 s allowed).
                request_id = 10
                with trio.fail_after(30):
                    while True:
                        request_id += 1
                        page = await request(alice, {"op": "history", "id": request_id,
                                                     "conv": group, "limit": 50})
                        if page["type"] == "error":
                            break
                        await trio.sleep(0.2)
                assert page["code"] == "key_unavailable", page
                assert "revoked" in page["message"], page
                refused = await request(alice, {"op": "send", "id": 99, "conv": group,
                                                "cmid": "after", "body": "after"})
                assert refused["type"] == "error", refused
                assert refused["code"] == "key_unavailable", refused
            server.process.send_signal(signal.SIGINT)
            await server.expect(r"Herald stopped\.")
    assert "was revoked: its key is forgotten" in server.err.decode()
    status = herald("keys", "status", "--data-dir", str(data))
    assert "keys revoked" in status.stdout, status.stdout
    assert "revoked" in status.stdout.split("tenant acme", 1)[1]
