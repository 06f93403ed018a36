"""`herald` commands as child processes inside a Trio test: output collected as it comes,
`expect` to wait for a line, piped stdin."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent


class Process:
    """A child process whose output is collected as it comes; `expect` waits for a text."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.out = bytearray()
        self.err = bytearray()
        self._grew = trio.Event()

    async def collect(self, stream: trio.abc.ReceiveStream, into: bytearray) -> None:
        async with stream:
            async for chunk in stream:
                into += chunk
                self._grew.set()
                self._grew = trio.Event()

    async def expect(self, pattern: str) -> re.Match[str]:
        """Wait until stdout matches the regular expression `pattern`."""
        while True:
            grew = self._grew
            found = re.search(pattern, self.out.decode(errors="replace"), re.MULTILINE)
            if found:
                return found
            if self.process.returncode is not None:
                raise AssertionError(f"exited {self.process.returncode} before {pattern!r}:\n"
                                     f"{self.out.decode()}\n{self.err.decode()}")
            await grew.wait()

    async def type(self, *lines: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all("".join(f"{line}\n" for line in lines).encode())

    async def end_input(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.aclose()


@asynccontextmanager
async def herald(
    nursery: trio.Nursery, *args: str, preexec_fn: Callable[[], None] | None = None
) -> AsyncIterator[Process]:
    """`herald ARGS...` as a child process with piped stdin, stdout and stderr; `preexec_fn`
    runs in the child before it becomes herald (e.g. to set its resource limits)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "appliance.cli", *args], cwd=ROOT, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=preexec_fn,
    )
    running = Process(process)
    assert process.stdout is not None and process.stderr is not None
    nursery.start_soon(running.collect, process.stdout, running.out)
    nursery.start_soon(running.collect, process.stderr, running.err)
    try:
        yield running
    except BaseException:
        if process.returncode is None:
            process.kill()  # a failed (or timed out) test leaves no server running behind it
        raise
    finally:
        # Shielded: after a test's fail_after fired, waiting (and killing) must still happen.
        with trio.CancelScope(shield=True):
            with trio.move_on_after(10) as waiting:
                await process.wait()
            if waiting.cancelled_caught:
                process.kill()
                await process.wait()
            if process.stdin is not None:
                await process.stdin.aclose()


async def served_port(server: Process) -> int:
    """The port a `herald serve --listen 127.0.0.1:0` child says it listens on (plain ws://)."""
    return int((await server.expect(r"listening at ws://127\.0\.0\.1:(\d+)/")).group(1))
