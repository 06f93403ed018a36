"""`herald` on a real pseudo-terminal, for the prompts that only a terminal gets (getpass reads
/dev/tty, the process's controlling terminal): each answer is typed once its prompt has shown,
since getpass discards what was typed before it turned echo off. `on_terminal` does the same
for a Trio test that also runs servers, and lets it type any keys at any time."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
_GUARD_S = 120  # only against a hang: a prompt that never comes fails the test instead


def _read(fd: int) -> bytes:
    ready, _, _ = select.select([fd], [], [], _GUARD_S)
    if not ready:
        raise AssertionError("herald printed nothing more for two minutes")
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: the child closed the terminal (it exited)
        return b""


# Run in the child, in a session of its own (start_new_session): opening the terminal makes it
# the session's controlling terminal, as a login would, before becoming herald.
_BECOME_HERALD = ("import os, sys; os.close(os.open(os.ttyname(0), os.O_RDWR)); "
                  "os.execv(sys.executable, "
                  "[sys.executable, '-m', 'appliance.cli', *sys.argv[1:]])")


def run_on_terminal(args: list[str], answers: list[tuple[str, str]]) -> tuple[int, str]:
    """Run `herald ARGS` with a pseudo-terminal as its controlling terminal and standard
    streams; for each (prompt, line) wait until `prompt` shows, then type `line`. Returns the
    exit status and everything shown on the terminal."""
    fd, terminal = pty.openpty()
    try:
        child = subprocess.Popen([sys.executable, "-c", _BECOME_HERALD, *args], cwd=ROOT,
                                 stdin=terminal, stdout=terminal, stderr=terminal,
                                 start_new_session=True)
    finally:
        os.close(terminal)  # the child has it; EIO on `fd` then means it exited
    shown = b""
    try:
        seen = 0
        for prompt, line in answers:
            while (found := shown.find(prompt.encode(), seen)) < 0:
                chunk = _read(fd)
                if not chunk:
                    raise AssertionError(f"herald exited before {prompt!r}: {shown.decode()}")
                shown += chunk
            seen = found + len(prompt)
            os.write(fd, line.encode() + b"\n")
        while chunk := _read(fd):
            shown += chunk
    finally:
        os.close(fd)  # a child still at a prompt (a failed test) gets a hangup
        try:
            child.wait(timeout=_GUARD_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return child.returncode, shown.decode(errors="replace")


class Terminal:
    """`herald ARGS` on a pseudo-terminal, driven from a Trio test: `expect` what it shows
    (escape sequences and all), `write` what a person types (including Ctrl-C as b"\\x03")."""

    def __init__(self, process: trio.Process, screen: trio.lowlevel.FdStream) -> None:
        self.process = process
        self._screen = screen
        self.shown = bytearray()
        self._seen = 0

    async def expect(self, text: str) -> None:
        """Wait until `text` shows after what an earlier `expect` found."""
        wanted = text.encode()
        while (found := self.shown.find(wanted, self._seen)) < 0:
            if not await self._read():
                raise AssertionError(f"herald exited before {text!r}: {self.text()}")
        self._seen = found + len(wanted)

    async def write(self, keys: bytes) -> None:
        await self._screen.send_all(keys)

    async def finish(self) -> int:
        """Read until the program exits; its exit status."""
        while await self._read():
            pass
        return await self.process.wait()

    def text(self) -> str:
        return self.shown.decode(errors="replace")

    async def _read(self) -> bool:
        try:
            chunk = await self._screen.receive_some(4096)
        except (OSError, trio.BrokenResourceError):  # EIO: the child closed the terminal
            return False
        self.shown += chunk
        return bool(chunk)


@asynccontextmanager
async def on_terminal(*args: str) -> AsyncIterator[Terminal]:
    """`herald ARGS` with a pseudo-terminal (80x24) as its controlling terminal and standard
    streams. prompt-toolkit is told not to ask for the cursor position, which a terminal
    answers and this one does not (it would wait for the answer)."""
    fd, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1", "PYTHONUNBUFFERED": "1"}
    try:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", _BECOME_HERALD, *args], cwd=ROOT, env=env,
            stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True)
    finally:
        os.close(terminal)
    screen = trio.lowlevel.FdStream(fd)
    try:
        yield Terminal(process, screen)
    except BaseException:
        if process.returncode is None:
            process.kill()  # a failed test leaves no chat running behind it
        raise
    finally:
        with trio.CancelScope(shield=True):  # also after the test's fail_after fired
            with trio.move_on_after(10) as waiting:
                await process.wait()
            if waiting.cancelled_caught:
                process.kill()
                await process.wait()
            await screen.aclose()
