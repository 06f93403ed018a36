"""The background re-encrypt of `herald serve` ([keys] reseal_messages) on a real sealed data
directory: the server, `herald keys rotate|status|shred` and the clients are separate
processes, as an administrator runs them (tests/keyed_dirs.py says why)."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import trio
from clients import login, only_conversation, open_ws, request
from conftest import PASSWORD
from keyed_dirs import add_acme_with_a_group, herald, keyed_data_dir
from processes import Process, served_port
from processes import herald as herald_process

MESSAGES = 120
# Bodies of ~600 bytes: about a dozen messages a block, so that there are several blocks
# to move, in several batches of 2.
FILLER = "x" * 580
STATUS_BLOCKS = re.compile(r"message blocks: ([\d,]+)(?: of ([\d,]+))?")


def _sealed_dir_with_a_group(tmp_path: Path, *, reseal: bool) -> Path:
    # A 2 s DEK cache: the server refreshes its keys every 0.5 s and sees a rotation soon.
    data = keyed_data_dir(tmp_path / "data", cache_lifetime_s=2.0)
    if reseal:  # [keys] is the last table keyed_data_dir writes
        with (data / "herald.toml").open("a") as toml:
            toml.write("reseal_messages = true\nreseal_batch_blocks = 2\nreseal_pause_s = 0.01\n")
    add_acme_with_a_group(data, PASSWORD)
    return data


def _blocks(data: Path) -> tuple[int, int]:
    """(message blocks under older epochs, all message blocks) of acme, from `herald keys
    status` run in its own process."""
    status = herald("keys", "status", "--data-dir", str(data))
    assert status.returncode == 0, status.stderr
    found = STATUS_BLOCKS.search(status.stdout)
    assert found, status.stdout
    if found.group(2) is None:
        assert "none under older epochs" in status.stdout, status.stdout
        return 0, int(found.group(1).replace(",", ""))
    return int(found.group(1).replace(",", "")), int(found.group(2).replace(",", ""))


async def _all_bodies(ws: Any, conv: int) -> list[str] | dict[str, Any]:
    """Every message body of `conv`, oldest first, or the error reply that refused them."""
    bodies: list[str] = []
    after, request_id = 0, 1000
    while True:
        request_id += 1
        page = await request(ws, {"op": "history", "id": request_id, "conv": conv,
                                  "after": after, "limit": 500})
        if page["type"] != "reply":
            return page
        bodies += [m["body"] for m in page["data"]["msgs"]]
        if not page["data"]["more"]:
            return bodies
        after = page["data"]["msgs"][-1]["seq"]


async def _send(ws: Any, conv: int, first: int, count: int) -> list[str]:
    """Send messages `first`.. and return their bodies. Right after `herald keys rotate` in
    another process, the conversation is sealed under an epoch the server installs at its
    next key refresh: until then a send is refused with `key_unavailable`, and sent again,
    as a client does (the same cmid: never twice)."""
    bodies = []
    for n in range(first, first + count):
        body = f"message-{n}-{FILLER}"
        while True:
            ack = await request(ws, {"op": "send", "id": n, "conv": conv, "cmid": f"m{n}",
                                     "body": body})
            if ack["type"] == "reply":
                break
            assert ack["code"] == "key_unavailable", ack
            await trio.sleep(0.1)
        bodies.append(body)
    return bodies


async def _stop(server: Process) -> None:
    server.process.send_signal(signal.SIGINT)
    await server.expect(r"Herald stopped\.")


async def _poll_blocks(data: Path, until: Any) -> tuple[int, int]:
    """`herald keys status` again and again until `until((pending, total))` holds (the
    test's fail_after bounds it)."""
    while True:
        blocks = await trio.to_thread.run_sync(_blocks, data)
        if until(blocks):
            return blocks
        await trio.sleep(0.2)


async def test_the_server_reseals_messages_after_a_rotation_so_a_shred_loses_none(
    tmp_path: Path,
) -> None:
    data = _sealed_dir_with_a_group(tmp_path, reseal=True)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            async with herald_process(nursery, "serve", "--data-dir", str(data),
                                      "--listen", "127.0.0.1:0") as server:
                port = await served_port(server)
                async with open_ws(port) as alice:
                    await login(alice, "acme", "alice")
                    group = await only_conversation(alice)
                    sent = await _send(alice, group, 1, MESSAGES)
                    pending, before = await trio.to_thread.run_sync(_blocks, data)
                    assert pending == 0 and before >= 8, (pending, before)

                    rotated = await trio.to_thread.run_sync(
                        herald, "keys", "rotate", "--data-dir", str(data), "--tenant", "acme")
                    assert rotated.returncode == 0, rotated.stderr
                    assert "epoch 2" in rotated.stdout
                    # Appends go on meanwhile, under epoch 1 until the server sees epoch 2.
                    sent += await _send(alice, group, MESSAGES + 1, 20)
                    await _poll_blocks(
                        data, lambda blocks: blocks[0] == 0 and blocks[1] > before)
                    log = server.err.decode()
                    assert re.search(r"tenant=1 re-sealed \d+ message blocks under epoch 2",
                                     log), log

                    shred = await trio.to_thread.run_sync(
                        herald, "keys", "shred", "--data-dir", str(data), "--tenant", "acme",
                        "--epoch", "1", "--confirm", "acme")
                    assert shred.returncode == 0, shred.stderr
                    bodies = await _all_bodies(alice, group)
                    assert isinstance(bodies, list), bodies
                    assert [b for b in bodies if b.startswith("message-")] == sent
                await _stop(server)
            assert server.process.returncode == 0, server.err.decode()

            # A new server has never held epoch 1's key: what it reads is what the disk holds.
            async with herald_process(nursery, "serve", "--data-dir", str(data),
                                      "--listen", "127.0.0.1:0") as again:
                port = await served_port(again)
                async with open_ws(port) as alice:
                    await login(alice, "acme", "alice")
                    bodies = await _all_bodies(alice, group)
                    assert isinstance(bodies, list), bodies
                    assert [b for b in bodies if b.startswith("message-")] == sent
                await _stop(again)
            assert again.process.returncode == 0, again.err.decode()


async def test_without_the_switch_nothing_is_resealed_and_a_shred_takes_the_old_messages(
    tmp_path: Path,
) -> None:
    data = _sealed_dir_with_a_group(tmp_path, reseal=False)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, herald_process(
            nursery, "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0"
        ) as server:
            port = await served_port(server)
            async with open_ws(port) as alice:
                await login(alice, "acme", "alice")
                group = await only_conversation(alice)
                await _send(alice, group, 1, MESSAGES)
                _, total = await trio.to_thread.run_sync(_blocks, data)
                rotated = await trio.to_thread.run_sync(
                    herald, "keys", "rotate", "--data-dir", str(data), "--tenant", "acme")
                assert rotated.returncode == 0, rotated.stderr
                # Many key refreshes (every 0.5 s here): time a re-seal would have had.
                await trio.sleep(3)
                assert await trio.to_thread.run_sync(_blocks, data) == (total, total)
                assert "re-seal" not in server.err.decode()

                shred = await trio.to_thread.run_sync(
                    herald, "keys", "shred", "--data-dir", str(data), "--tenant", "acme",
                    "--epoch", "1", "--confirm", "acme")
                assert shred.returncode == 0, shred.stderr
                # The running server forgets the shredded key at its next key refresh,
                # not when the key would have expired.
                while isinstance(refused := await _all_bodies(alice, group), list):
                    await trio.sleep(0.2)
                assert refused["code"] == "key_unavailable", refused
                assert "shredded" in refused["message"], refused
            await _stop(server)
        assert server.process.returncode == 0, server.err.decode()
