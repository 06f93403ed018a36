"""`herald keys rotate` in another process while `herald serve` runs: the rotation re-seals
conversations and members under the new epoch at once, and the server unwraps that epoch as
soon as a record names it, not at its next key refresh; the request that met the record waits
for that key and is answered (appliance/gateway/key_refresh.py)."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import trio
from clients import login, only_conversation, open_ws, request
from conftest import PASSWORD
from keyed_dirs import add_acme_with_a_group, herald, keyed_data_dir
from processes import herald as herald_process
from processes import served_port

EARLY = "refreshing the keys now"


async def test_a_rotation_by_another_process_is_picked_up_when_a_record_names_it(
    tmp_path: Path,
) -> None:
    # A long DEK cache: the periodic refresh comes every 5 s, the most it ever waits.
    data = keyed_data_dir(tmp_path / "data", cache_lifetime_s=3600.0)
    add_acme_with_a_group(data, PASSWORD)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, herald_process(
            nursery, "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0"
        ) as server:
            port = await served_port(server)
            async with open_ws(port) as alice:
                await login(alice, "acme", "alice")
                group = await only_conversation(alice)
                assert EARLY not in server.err.decode()

                rotated = await trio.to_thread.run_sync(
                    herald, "keys", "rotate", "--data-dir", str(data), "--tenant", "acme")
                assert rotated.returncode == 0, rotated.stderr
                # The group record is now under epoch 2, which the server has not installed.
                # A send that meets it is answered `throttled` (the client library sends
                # again after retry_after), never `key_unavailable`.
                request_id = 10
                while True:
                    request_id += 1
                    ack = await request(alice, {"op": "send", "id": request_id, "conv": group,
                                                "cmid": "after", "body": "after the rotation"})
                    if ack["type"] == "reply":
                        break
                    assert ack["code"] == "throttled" and ack["retry_after"] > 0, ack
                    await trio.sleep(ack["retry_after"])
                # A read that meets the epoch waits for the key the server fetches at once,
                # and is answered: the first try.
                reply = await request(alice, {"op": "members", "id": 99, "conv": group})
                assert reply["type"] == "reply", reply
                assert EARLY in server.err.decode()
            server.process.send_signal(signal.SIGINT)
            await server.expect(r"Herald stopped\.")
    assert re.search(r"keys: a record names a key epoch", server.err.decode())
