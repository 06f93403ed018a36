"""What `herald serve` checks before it asks for a passphrase or opens the store: that no other
server holds its data directory, and that it can listen where it is told. Every `herald` is a
real child process on a real sealed data directory."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import trio
from clients import login, open_ws
from conftest import PASSWORD
from keyed_dirs import add_acme_with_a_group, herald, keyed_data_dir
from processes import ROOT, served_port
from processes import herald as herald_process


def _config_without_passphrase_file(data: Path) -> Path:
    """The data directory's settings minus `[keys] passphrase_file`: a server started with it
    would have to ask for the passphrase, and there is no terminal to ask on, so a refusal
    that names something else was made before the prompt."""
    settings = (data / "herald.toml").read_text()
    kept = [line for line in settings.splitlines() if not line.startswith("passphrase_file")]
    config = data.parent / "asks-for-the-passphrase.toml"
    config.write_text("\n".join(kept) + "\n")
    return config


def _serve_refused(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance.cli", "serve", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False,
                          stdin=subprocess.DEVNULL)


async def test_a_second_server_on_the_same_data_directory_is_refused_with_the_first_ones_pid(
    tmp_path: Path,
) -> None:
    data = keyed_data_dir(tmp_path / "data")
    add_acme_with_a_group(data, PASSWORD)
    asks = _config_without_passphrase_file(data)
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery, herald_process(
            nursery, "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0"
        ) as first:
            port = await served_port(first)
            second = await trio.to_thread.run_sync(lambda: _serve_refused(
                "--config", str(asks), "--data-dir", str(data), "--listen", "127.0.0.1:0"))
            assert second.returncode == 1, second
            assert second.stderr == (
                f"herald: the data directory {data} is in use by herald serve (pid "
                f"{first.process.pid}); stop it first\n"), second.stderr
            assert "Herald store at" not in second.stdout  # the store was never opened

            # The account commands keep working beside the server (until the admin API
            # replaces them): they take no lock, and the server sees what they write.
            added = await trio.to_thread.run_sync(lambda: herald(
                "user", "add", "--data-dir", str(data), "--tenant", "acme", "bob",
                "--password-stdin", stdin=PASSWORD + "\n"))
            assert added.returncode == 0, added.stderr
            async with open_ws(port) as bob:
                await login(bob, "acme", "bob")
            first.process.send_signal(signal.SIGINT)
            await first.expect(r"Herald stopped\.")

        # Stopped, it lets the next one in.
        async with trio.open_nursery() as nursery, herald_process(
            nursery, "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0"
        ) as again:
            await served_port(again)
            again.process.send_signal(signal.SIGINT)
            await again.expect(r"Herald stopped\.")


async def test_a_server_killed_with_sigkill_leaves_no_lock_behind(tmp_path: Path) -> None:
    data = keyed_data_dir(tmp_path / "data")
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery, herald_process(
            nursery, "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0"
        ) as first:
            await served_port(first)
            first.process.kill()
        assert (data / "herald.lock").exists()  # the file stays; the kernel dropped the lock
        async with trio.open_nursery() as nursery, herald_process(
            nursery, "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0"
        ) as again:
            await served_port(again)
            again.process.send_signal(signal.SIGINT)
            await again.expect(r"Herald stopped\.")


def test_a_port_in_use_is_refused_before_the_passphrase_is_asked(tmp_path: Path) -> None:
    data = keyed_data_dir(tmp_path / "data")
    asks = _config_without_passphrase_file(data)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        refused = _serve_refused("--config", str(asks), "--data-dir", str(data),
                                 "--listen", f"127.0.0.1:{port}")
    assert refused.returncode == 1, refused
    assert refused.stderr == (f"herald: cannot listen on 127.0.0.1:{port}: Address already in "
                              f"use; choose another --listen\n"), refused.stderr
    assert refused.stdout == ""


def test_an_unknown_listen_host_is_refused_before_the_passphrase_is_asked(
    tmp_path: Path,
) -> None:
    data = keyed_data_dir(tmp_path / "data")
    asks = _config_without_passphrase_file(data)
    with asks.open("a") as config:  # past the refusal of plain ws:// on a network address
        config.write("[tls]\nallow_plaintext_on_network = true\n")
    refused = _serve_refused("--config", str(asks), "--data-dir", str(data),
                             "--listen", "no-such-host.invalid:8470")
    assert refused.returncode == 1, refused
    assert re.fullmatch(r"herald: cannot listen on no-such-host\.invalid:8470: .+; choose "
                        r"another --listen\n", refused.stderr), refused.stderr
