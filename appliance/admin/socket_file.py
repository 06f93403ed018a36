"""The admin socket's file and its peers: made 0600, stale ones replaced, peers by uid.

`bind_admin_socket` makes `admin.sock` under a umask of 0o177 (so that it is never, even for an
instant, open to others), then chmods it 0600 (in case the file system ignored the umask); a
path that exists and is not a stale socket (a file, a directory, a socket something answers
on) is refused, never removed. `peer_refusal` reads the peer's credentials (SO_PEERCRED: pid,
uid, gid, as the kernel saw them at connect) and admits only the server's own uid and root.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
from pathlib import Path

__all__ = [
    "ADMIN_SOCKET", "AdminSocketError", "PeerCredentials", "bind_admin_socket",
    "peer_credentials", "peer_refusal", "remove_admin_socket",
]

ADMIN_SOCKET = "admin.sock"  # in the data directory
ADMIN_SOCKET_MODE = 0o600
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
PeerCredentials = tuple[int, int, int]


class AdminSocketError(Exception):
    """The admin socket cannot be made; the message says why and what to do."""


def bind_admin_socket(path: Path, backlog: int = 16) -> socket.socket:
    """A listening Unix socket at `path`, mode 0600. Raises `AdminSocketError`."""
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or exc  # "AF_UNIX path too long" has no errno
        raise AdminSocketError(f"cannot make the admin socket {path}: {reason}") from None
    finally:
        os.umask(old_umask)
    try:
        os.chmod(path, ADMIN_SOCKET_MODE)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise AdminSocketError(f"cannot open the admin socket {path}: {exc.strerror}") from None
    return sock


def _clear_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise AdminSocketError(f"{path} exists and is not a socket: move it away (the admin "
                               f"socket goes there)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink()  # left by a server that stopped without removing it
        return
    except OSError as exc:
        raise AdminSocketError(f"cannot check the old admin socket {path}: {exc.strerror}; "
                               f"remove it if no herald serve runs") from None
    else:
        raise AdminSocketError(f"something answers on {path} already: another server? stop "
                               f"it first")
    finally:
        probe.close()


def remove_admin_socket(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """(pid, uid, gid) of the process at the other end of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


def peer_refusal(sock: socket.socket, own_uid: int) -> str | None:
    """Why this peer may not use the admin API (for the log), or None: it is `own_uid` or
    root."""
    if sock.family != socket.AF_UNIX:
        return "not a Unix socket: its peer cannot be known"
    try:
        pid, uid, gid = peer_credentials(sock)
    except OSError as exc:
        return f"its credentials cannot be read ({exc.strerror})"
    if uid in (own_uid, 0):
        return None
    return f"pid={pid} uid={uid} gid={gid} is neither uid {own_uid} (the server's) nor root"
