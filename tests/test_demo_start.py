"""What `herald serve --demo` tells a new user: the demo logins, saying that they are the
initial passwords, and a chat command that works as printed, naming the herald that runs."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from processes import ROOT, herald

INITIAL = re.compile(r"initial passwords.*no longer (valid|work)", re.IGNORECASE | re.DOTALL)


async def _started_demo(data: Path) -> tuple[str, str]:
    """The demo's output up to its chat hint, and the hint's command."""
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, herald(
            nursery, "serve", "--demo", "--data-dir", str(data), "--listen", "127.0.0.1:0"
        ) as server:
            hint = (await server.expect(r"Chat from another terminal: (.+)$")).group(1)
            out = server.out.decode()
            server.process.send_signal(signal.SIGINT)
            await server.expect(r"Herald stopped\.")
    return out, hint


async def test_the_demo_says_its_saved_passwords_are_the_initial_ones(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first, _ = await _started_demo(data)
    assert INITIAL.search(first), first
    saved = (data / "demo-credentials.txt").read_text()
    assert re.search(r"login alice\s+password \S+", saved), saved
    assert INITIAL.search(saved), saved
    again, _ = await _started_demo(data)
    assert f"Demo logins are in {data / 'demo-credentials.txt'}" in again, again
    assert INITIAL.search(again), again


async def test_the_chat_hint_names_the_python_module_when_herald_runs_as_one(
    tmp_path: Path,
) -> None:
    _, hint = await _started_demo(tmp_path / "data")
    command = shlex.split(hint)
    assert command[:4] == [sys.executable, "-m", "appliance.cli", "chat"], hint
    assert "--tenant" in command and "--login" in command, hint
    # As printed, it runs (here: its --help, from another folder).
    shown = subprocess.run([*command[:4], "--help"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60, check=False,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert shown.returncode == 0 and shown.stdout.startswith("usage: herald chat"), shown


def test_the_chat_hint_names_the_herald_script_that_was_run(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "herald"
    if not script.exists():
        pytest.skip(f"no herald script beside {sys.executable} (Herald is not installed)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen([str(script), "serve", "--demo", "--data-dir", str(tmp_path / "d"),
                           "--listen", "127.0.0.1:0"], cwd=tmp_path, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as server:
        assert server.stdout is not None
        hint = ""
        for line in server.stdout:
            if line.startswith("Chat from another terminal: "):
                hint = line.removeprefix("Chat from another terminal: ").strip()
                break
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=30)
    assert shlex.split(hint)[:2] == [str(script.resolve()), "chat"], hint


async def test_the_chat_hint_for_a_wildcard_address_names_one_a_client_can_dial(
    tmp_path: Path,
) -> None:
    config = tmp_path / "herald.toml"
    config.write_text("[tls]\nallow_plaintext_on_network = true\n")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, herald(
            nursery, "serve", "--demo", "--config", str(config), "--data-dir",
            str(tmp_path / "data"), "--listen", "0.0.0.0:0",
        ) as server:
            port = (await server.expect(r"listening at ws://0\.0\.0\.0:(\d+)/ws")).group(1)
            hint = (await server.expect(r"Chat from another terminal: (.+)$")).group(1)
            server.process.send_signal(signal.SIGINT)
            await server.expect(r"Herald stopped\.")
    assert f" --url ws://127.0.0.1:{port}/ws " in hint, hint
