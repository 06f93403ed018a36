"""`herald` on a real pseudo-terminal, for the prompts that only a terminal gets (getpass reads
/dev/tty, the process's controlling terminal): each answer is typed once its prompt has shown,
since getpass discards what was typed before it turned echo off."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

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
