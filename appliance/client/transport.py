"""Reaching the server: the URL, the TCP (and TLS) stream, and the WebSocket opening handshake.

The client owns its stream rather than using `open_websocket_url`, for two reasons found in
trio-websocket 0.12: after a closing handshake the server began, `open_websocket_url` waits for
the server's TCP close and never closes its own socket (a ResourceWarning); and a server that
closes the TCP connection during the opening handshake leaves the handshake waiting until its
timeout (the reader aborts, but never wakes the waiter). `handshake` watches for that end.
"""

from __future__ import annotations

import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import trio
from trio_websocket import WebSocketConnection, wrap_client_stream

from appliance.client.errors import CertificateRejected, ConnectionLost

__all__ = ["Target", "client_ssl_context", "handshake", "open_stream"]

MESSAGE_QUEUE_SIZE = 64  # frames trio-websocket reads ahead of the client's reader


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


async def open_stream(target: Target, ssl_context: ssl.SSLContext | None) -> trio.abc.Stream:
    """A TCP stream to `target`, with TLS (handshake done) for wss://. Without `ssl_context`,
    the system's default verification applies. Raises `OSError` when the connection fails,
    `CertificateRejected` when the TLS handshake fails over a certificate, and
    `trio.BrokenResourceError` when it fails otherwise.
    """
    tcp = await trio.open_tcp_stream(target.host, target.port)
    if not target.secure:
        return tcp
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
