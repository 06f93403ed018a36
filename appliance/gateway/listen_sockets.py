"""The gateway's listening sockets, bound before anything else starts.

`herald serve` binds them first, before it asks for the master key's passphrase, unwraps any
key or opens the store: a port in use (another Herald, another program) is refused in a line
at once, instead of after the passphrase and the escrow round trips. The bound sockets are
then handed to `Server.run`, as Trio's servers take listeners.

The same binding as `trio.open_tcp_listeners` (which the server uses when handed none): one
socket per address the host resolves to, SO_REUSEADDR (a restart does not wait for the old
connections' TIME_WAIT), IPv6 sockets IPv6-only (so that "::" and "0.0.0.0" can both be
served, each by its own socket).
"""

from __future__ import annotations

import socket

__all__ = ["ListenError", "open_listen_sockets"]

# The kernel caps it at net.core.somaxconn; asking for the most lets an administrator raise
# that without a new Herald (trio.open_tcp_listeners asks the same).
LISTEN_BACKLOG = 0xFFFF


class ListenError(Exception):
    """The server cannot listen where it is told; the message says where and what to do."""


def open_listen_sockets(host: str, port: int, flag: str = "--listen") -> list[socket.socket]:
    """Bound, listening sockets for `host`:`port` (port 0: one the kernel picks, the same for
    every address of the host). Raises `ListenError` naming the address and the reason: in
    use, not an address of this machine, a name that does not resolve, a port below 1024
    without the privilege; and `flag`, the option that chooses another address."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {where}: {exc.strerror}; choose another "
                          f"{flag}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:  # the port the first address was given
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(f"cannot listen on {where}: {exc.strerror}; choose another "
                          f"{flag}") from None
    return sockets
