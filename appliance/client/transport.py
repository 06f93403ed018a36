"""Reaching the server: the URL, the TCP (and TLS) stream, and the WebSocket opening handshake.

The client owns its stream rather than using `open_websocket_url`, for two reasons found in
trio-websocket 0.12: after a closing handshake the server began, `open_websocket_url` waits for
the server's TCP close and never closes its own socket (a ResourceWarning); and a server that
closes the TCP connection during the opening handshake leaves the handshake waiting until its
timeout (the reader aborts, but never wakes the waiter). `handshake` watches for that end.
"""

from __future__ import annotations

import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from appliance.client.errors import CertificateRejected, ConnectionLost

__all__ = [
    "CONNECT_ERRORS",
    "Target",
    "client_ssl_context",
    "handshake",
    "open_stream",
    "why_unreachable",
]

MESSAGE_QUEUE_SIZE = 64  # frames trio-websocket reads ahead of the client's reader

# What reaching a server can fail with, short of a certificate refusal. UnicodeError: Python's
# IDNA codec refuses a host name it cannot encode (a label over 63 characters) before any
# lookup. ConnectionLost: the server closed during the WebSocket handshake.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError, UnicodeError, trio.TooSlowError, trio.BrokenResourceError, HandshakeError,
    ConnectionClosed, ConnectionLost,
)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a ws:// or wss:// URL points."""

    host: str
    port: int
    resource: str
    host_header: str
    secure: bool

    @classmethod
    def parse(cls, url: str) -> Target:
        """Raises `ValueError` for anything but a ws:// or wss:// URL with a host."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"{url!r} is not a WebSocket URL (ws://HOST:PORT/ws or wss://...)")
        secure = parts.scheme == "wss"
        port = parts.port or (443 if secure else 80)
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        host_header = shown if port == (443 if secure else 80) else f"{shown}:{port}"
        return cls(host, port, resource, host_header, secure)


def client_ssl_context(
    ca_file: str | Path | None = None, cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
) -> ssl.SSLContext:
    """A context for wss:// that verifies the server's certificate and host name: against
    `ca_file` (PEM: a private CA, or a self-signed server certificate) if given, else the
    system's trust store. `cert_file` (and `key_file`, unless the key is in the same file) is
    this client's certificate, for servers that require one.

    Raises `OSError` for a file that cannot be read, `ssl.SSLError` for one that is not PEM
    or a key that does not match its certificate.
    """
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context


def certificate_refusal(exc: BaseException) -> CertificateRejected | None:
    """`CertificateRejected` when `exc` (or what caused it) is a TLS certificate failure."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return CertificateRejected(
                f"the server's certificate is not trusted: {seen.verify_message}. For a "
                f"private CA or a self-signed certificate give its PEM file (herald chat "
                f"--ca FILE; client_ssl_context(ca_file=...)); check the host name in the URL")
        if isinstance(seen, ssl.SSLError) and any(
            word in (seen.reason or "") for word in ("CERTIFICATE", "UNKNOWN_CA")
        ):
            return CertificateRejected(
                f"the server refused this client's certificate ({seen.reason}): it requires "
                f"one signed by a CA it trusts (herald chat --cert FILE --key FILE; "
                f"client_ssl_context(cert_file=..., key_file=...))")
        seen = seen.__cause__ or seen.__context__
    return None


async def open_stream(
    target: Target, ssl_context: ssl.SSLContext | None, phase: list[str] | None = None,
) -> trio.abc.Stream:
    """A TCP stream to `target`, with TLS (handshake done) for wss://. Without `ssl_context`,
    the system's default verification applies. `phase`, if given, gets "tls" appended once the
    TCP connection is made (so that a timeout can say which step got no answer). Raises
    `OSError` when the connection fails (`socket.gaierror` for a host name that does not
    resolve), `UnicodeError` for a host name that cannot even be looked up,
    `CertificateRejected` when the TLS handshake fails over a certificate, and
    `trio.BrokenResourceError` when it fails otherwise.
    """
    tcp = await trio.open_tcp_stream(target.host, target.port)
    if not target.secure:
        return tcp
    if phase is not None:
        phase.append("tls")
    context = ssl_context or ssl.create_default_context()
    tls = trio.SSLStream(tcp, context, server_hostname=target.host, https_compatible=True)
    try:
        await tls.do_handshake()
    except BaseException as exc:
        await trio.aclose_forcefully(tcp)
        refusal = certificate_refusal(exc)
        if refusal is not None:
            raise refusal from exc
        raise
    return tls


class _EndWatch(trio.abc.Stream):
    """`stream`, calling `on_end` when a read finds it ended (EOF, reset or closed)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self.on_end: trio.CancelScope | None = None
        self.failure: BaseException | None = None  # why a read failed, if it did

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.failure = exc
            self._ended()
            raise
        if not data:
            self._ended()
        return data

    def _ended(self) -> None:
        if self.on_end is not None:
            self.on_end.cancel()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def handshake(
    nursery: trio.Nursery, stream: trio.abc.Stream, target: Target, *, max_message_bytes: int
) -> WebSocketConnection:
    """The WebSocket opening handshake over `stream`; the connection's reader task runs in
    `nursery`. Raises `trio_websocket.HandshakeError` (e.g. `ConnectionRejected`) when the
    server refuses, `ConnectionLost` when it closes the connection first, `CertificateRejected`
    when it refuses this client's TLS certificate (TLS 1.3 says so only after the client's
    side of the handshake is done). Bound it with a cancel scope: a server may never answer."""
    watched = _EndWatch(stream)
    with trio.CancelScope() as ended:
        watched.on_end = ended
        ws = await wrap_client_stream(
            nursery, watched, target.host_header, target.resource,  # type: ignore[arg-type]
            message_queue_size=MESSAGE_QUEUE_SIZE, max_message_size=max_message_bytes,
        )
        watched.on_end = None
        return ws
    refusal = certificate_refusal(watched.failure) if watched.failure is not None else None
    if refusal is not None:
        raise refusal from watched.failure
    raise ConnectionLost("the server closed the connection during the WebSocket handshake")


def why_unreachable(exc: BaseException, target: Target, *, step: str, timeout_s: float) -> str:
    """In words, why a connection to `target` failed with `exc` (one of `CONNECT_ERRORS`) at
    `step` ("tcp", "tls" or "websocket"): what a person can act on, e.g. "connection refused
    (is the server running, on this port?)". Raises nothing."""
    host = target.host
    if isinstance(exc, trio.TooSlowError):
        if step == "tls":
            return (f"the TLS handshake got no answer within {timeout_s:g} s (a plain ws:// "
                    f"server? then use ws://)")
        if step == "websocket":
            return f"the WebSocket handshake got no answer within {timeout_s:g} s"
        return f"no answer from {host} port {target.port} within {timeout_s:g} s"
    if isinstance(exc, socket.gaierror | UnicodeError):
        detail = exc.strerror if isinstance(exc, socket.gaierror) else "not a valid host name"
        return f"cannot resolve the host name {host!r} ({detail}); check the URL"
    if isinstance(exc, ConnectionRejected):
        return (f"the server refused the WebSocket handshake (HTTP {exc.status_code}); check "
                f"the path in the URL (usually /ws)")
    if isinstance(exc, HandshakeError):
        return f"the WebSocket handshake failed ({exc!r})"
    if isinstance(exc, ConnectionClosed):
        return f"the server closed the WebSocket connection ({exc.reason})"
    if isinstance(exc, ConnectionLost):
        hint = "" if target.secure else " (a wss:// server? then use wss://)"
        return f"the server closed the connection during the WebSocket handshake{hint}"
    if step == "tls" and isinstance(exc, trio.BrokenResourceError | ssl.SSLError | OSError):
        cause = exc.__cause__ or exc
        reason = getattr(cause, "reason", None) or str(cause) or type(cause).__name__
        return f"the TLS handshake failed ({reason}); a plain ws:// server? then use ws://"
    if isinstance(exc, OSError):
        refused = _first_os_error(exc)
        if isinstance(refused, ConnectionRefusedError):
            return "connection refused (is the server running, and on this port?)"
        strerror = refused.strerror or str(refused)
        return strerror[:1].lower() + strerror[1:]
    return repr(exc)


def _first_os_error(exc: OSError) -> OSError:
    """trio's "all attempts to connect failed" carries each address's own error in its cause."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        for inner in cause.exceptions:
            if isinstance(inner, OSError):
                return inner
    return exc
