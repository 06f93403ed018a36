"""A blocking client of the admin API, for `herald admin ...`: one request, one answer.

A command runs once and exits, so a plain socket with a timeout is all it needs (no Trio):
connect to `admin.sock`, send a line, read a line.
"""

from __future__ import annotations

import itertools
import socket
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from appliance.protocol.admin_frames import (
    MAX_ADMIN_FRAME_BYTES,
    AdminFrameError,
    AdminRefusal,
    FrameLines,
    decode_admin_reply,
    encode_admin_frame,
)

__all__ = ["ADMIN_CLIENT_TIMEOUT_S", "AdminClient", "AdminRefused", "AdminUnreachable"]

ADMIN_CLIENT_TIMEOUT_S = 60.0  # a login waits out its backoff: up to half the login timeout
T = TypeVar("T")


class AdminRefused(Exception):
    """The server refused the request: its code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


class AdminUnreachable(Exception):
    """No server answers on the socket; the message says what to do."""


class AdminClient:
    def __init__(self, path: Path, timeout_s: float = ADMIN_CLIENT_TIMEOUT_S) -> None:
        self._path = path
        self._timeout_s = timeout_s
        self._ids = itertools.count(1)

    def next_id(self) -> int:
        return next(self._ids)

    def request(self, frame: msgspec.Struct, data_type: type[T]) -> T:
        """Send `frame`, return its answer's data. Raises `AdminRefused` or
        `AdminUnreachable`."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout_s)
        try:
            try:
                sock.connect(str(self._path))
            except (FileNotFoundError, ConnectionRefusedError):
                raise AdminUnreachable(
                    f"no herald serve answers on {self._path}: start it (herald serve), or "
                    f"give the --data-dir it serves") from None
            except PermissionError:
                raise AdminUnreachable(
                    f"{self._path} is not open to this user: run the command as the user "
                    f"that runs herald serve (or root)") from None
            return self._exchange(sock, frame, data_type)
        except (TimeoutError, ConnectionError) as exc:
            raise AdminUnreachable(f"the admin API at {self._path} did not answer: "
                                   f"{exc.strerror or exc}") from None
        finally:
            sock.close()

    def _exchange(self, sock: socket.socket, frame: msgspec.Struct, data_type: type[T]) -> T:
        sock.sendall(encode_admin_frame(frame))
        lines = FrameLines(MAX_ADMIN_FRAME_BYTES)
        while True:
            data = sock.recv(65536)
            if not data:
                raise AdminUnreachable(f"the admin API at {self._path} closed the connection "
                                       f"without an answer (see the server's log)")
            received = lines.receive_data(data)
            if received:
                break
        try:
            answer = decode_admin_reply(received[0], data_type)
        except AdminFrameError as exc:
            raise AdminUnreachable(f"the admin API answered something else: "
                                   f"{exc.message}") from None
        if isinstance(answer, AdminRefusal):
            raise AdminRefused(answer.error.code, answer.error.message)
        result: Any = answer.data
        return result  # type: ignore[no-any-return]
