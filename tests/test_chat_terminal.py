"""`herald chat` on a real pseudo-terminal, as staff type at it: the prompt, Ctrl-C, a
mistyped password. A real server on 127.0.0.1; the chat is a real process."""

from __future__ import annotations

import signal
from pathlib import Path

import trio
from conftest import PASSWORD
from pseudo_terminal import Terminal, on_terminal
from servers import running_server, seed_org

from appliance.client import open_client


def _chat(url: str, login: str = "alice") -> tuple[str, ...]:
    return ("chat", "--url", url, "--tenant", "acme", "--login", login)


async def _logged_in(terminal: Terminal) -> None:
    await terminal.expect("Password for alice: ")
    await terminal.write(PASSWORD.encode() + b"\n")
    await terminal.expect("/help lists the commands.")


async def test_ctrl_c_at_the_prompt_leaves_cleanly(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with running_server(tmp_path / "data") as running:
            seed_org(running.engine, "acme", ["alice"])
            async with on_terminal(*_chat(running.url)) as terminal:
                await _logged_in(terminal)
                await trio.sleep(0.5)  # the prompt is up
                await terminal.write(b"\x03")
                status = await terminal.finish()
    assert status in (0, 130), terminal.text()
    assert "Traceback" not in terminal.text()


async def test_an_interrupt_signal_after_login_ends_the_chat_cleanly(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with running_server(tmp_path / "data") as running:
            seed_org(running.engine, "acme", ["alice"])
            async with on_terminal(*_chat(running.url)) as terminal:
                await _logged_in(terminal)
                await trio.sleep(0.5)
                terminal.process.send_signal(signal.SIGINT)
                status = await terminal.finish()
    assert status == 130, terminal.text()
    assert "Traceback" not in terminal.text()


async def test_a_mistyped_password_is_asked_again_on_a_terminal(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with running_server(tmp_path / "data") as running:
            seed_org(running.engine, "acme", ["alice"])
            async with on_terminal(*_chat(running.url)) as terminal:
                await terminal.expect("Password for alice: ")
                await terminal.write(b"not the password\n")
                await terminal.expect("login refused: wrong login or password; try again")
                await _logged_in(terminal)
                await terminal.write(b"/quit\r")
                status = await terminal.finish()
    assert status == 0, terminal.text()
    assert "Traceback" not in terminal.text()


async def test_a_message_arriving_while_typing_leaves_the_typed_line_whole(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with running_server(tmp_path / "data") as running:
            ids = seed_org(running.engine, "acme", ["alice", "bob"])
            async with open_client(running.url, "acme", "bob", PASSWORD) as bob:
                conv = await bob.open_direct(ids["alice"])
                async with on_terminal(*_chat(running.url)) as terminal:
                    await _logged_in(terminal)
                    await terminal.write(b"/open 1\r")
                    await terminal.expect("--- Bob ---")
                    await trio.sleep(0.5)
                    await terminal.write(b"hel")
                    await terminal.expect("hel")
                    await bob.send(conv, "a message meanwhile")
                    await terminal.expect("Bob: a message meanwhile")
                    await terminal.expect("hel")  # the prompt, redrawn with what was typed
                    await terminal.write(b"lo\r")
                    received = await bob.messages.receive()
                    while received.sender != ids["alice"] or received.kind != "text":
                        received = await bob.messages.receive()
                    await terminal.write(b"/quit\r")
                    status = await terminal.finish()
    assert received.body == "hello"
    assert status == 0, terminal.text()
