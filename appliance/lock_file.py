"""One process at a time: an exclusive lock on a lock file, with the holder's PID written in it.

`herald serve` holds one on its data directory (`herald.lock`): a second server on the same
store would run beside the first, and the messages sent through one would never reach the
clients of the other. `herald escrow serve` and the escrow's offline commands hold one on the
escrow's key file (`escrow.keys.lock`): a second writer would overwrite the first one's keys.

flock(2), not the file's existence: the kernel releases the lock when its process ends,
however it ends (kill -9 included), so a file left behind never blocks a restart. The PID in
the file only lets the one refused say who holds the lock; the lock itself is the flock.

Blocking code; imports nothing of ours, so that appliance/keys may use it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["HeldLock", "LockHeld", "hold_exclusively"]


class LockHeld(Exception):
    """Another process holds the lock at `path`; `pid` is the one written in it (None when it
    cannot be read: the holder has not written it yet, or wrote something else)."""

    def __init__(self, path: Path, pid: int | None) -> None:
        super().__init__(f"{path} is held by {'pid ' + str(pid) if pid else 'another process'}")
        self.path = path
        self.pid = pid


class HeldLock:
    """A lock this process holds, until `release` (or until the process ends)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    def release(self) -> None:
        """Let another process take the lock. The file stays: removing it would let a process
        that opened it before the removal lock a file no one else sees. Idempotent."""
        if self._fd >= 0:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = -1


def hold_exclusively(path: Path) -> HeldLock:
    """Take the exclusive lock at `path` (the file is created, mode 0600, if missing) at once,
    without waiting, and write this process's PID in it. Raises `LockHeld` when another
    process holds it, OSError when the file cannot be opened (e.g. a missing folder)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise LockHeld(path, pid) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return HeldLock(path, fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
