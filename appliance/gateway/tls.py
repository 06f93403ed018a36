"""TLS for the gateway without a Trio stream: `ssl.SSLObject` over two `ssl.MemoryBIO`s.

Why not `trio.SSLStream`: the gateway writes frames without an `await` per delivery (see
outbox.py). An `SSLObject` is synchronous, so the connection feeds it what the socket reads
(`TlsChannel.receive` returns the plaintext for the WebSocket) and the outbox seals queued
frames with `TlsChannel.seal` and writes the ciphertext with the same `writev` as plain frames.

Every byte the `SSLObject` puts into its outgoing BIO (handshake messages, session tickets,
key updates, alerts, application records, close_notify) must reach the socket in the order it
was produced: whoever takes bytes out of the BIO appends them to the outbox's socket queue at
once, and nothing is ever dropped from that queue.
"""

from __future__ import annotations

import ipaddress
import os
import ssl

from appliance.config import Config, ConfigError, TlsConfig

__all__ = ["TlsChannel", "TlsFailed", "is_loopback", "plaintext_refusal", "server_context"]

_READ_BYTES = 256 * 1024


class TlsFailed(Exception):
    """The peer broke TLS: not a TLS client (e.g. plain HTTP or garbage), a failed handshake
    (no acceptable certificate, no common version or cipher) or a corrupt record."""


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """The server's context: TLS 1.2 or later, no renegotiation, the configured certificate,
    and client certificates required when `client_ca_file` is set.

    Raises `ConfigError` when a file cannot be read or the key does not match the certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Renegotiation would make a write wait for a read: the write path could not stay
    # synchronous. TLS 1.3 has none; this turns it off for 1.2 clients.
    context.options |= ssl.OP_NO_RENEGOTIATION
    missing = [path for path in (tls.cert_file, tls.key_file) if not os.path.isfile(path)]
    if missing:
        raise ConfigError(
            f"tls: cannot read {' and '.join(missing)}: no such file; check tls.cert_file and "
            f"tls.key_file (`herald cert selfsigned --help` makes a pair)")
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"tls: cannot use the certificate {tls.cert_file} with the key "
                          f"{tls.key_file} ({_reason(exc)}); they must be PEM files and the key "
                          f"must be the certificate's, unencrypted") from None
    if tls.client_ca_file:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"tls: cannot read the client CA file {tls.client_ca_file} "
                              f"({_reason(exc)}); it must hold PEM certificates") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (127.0.0.0/8, ::1) or `localhost`. Any other name
    counts as a network address: it may resolve to one."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plaintext_refusal(config: Config) -> str | None:
    """Why `config` may not be served, or None: plain ws:// is for loopback only unless the
    `[tls]` table says `allow_plaintext_on_network = true`."""
    if config.tls.enabled or config.tls.allow_plaintext_on_network:
        return None
    if is_loopback(config.listen_host):
        return None
    return (f"refusing plain ws:// on {config.listen_host}, a network address: clients' "
            f"passwords and messages would cross the network unencrypted. Give a certificate "
            f"(--tls-cert FILE --tls-key FILE, or cert_file and key_file in the [tls] table "
            f"of the configuration file; `herald cert selfsigned --out DIR` makes one to try), "
            f"listen on 127.0.0.1 behind a TLS proxy, or set "
            f"allow_plaintext_on_network = true in [tls] to accept the risk")


class TlsChannel:
    """The server end of one TLS connection, with no I/O of its own.

    `receive(ciphertext)` returns plaintext; `take_output()` returns what must be written to
    the socket next (handshake replies, tickets, alerts); `seal(plaintext)` returns the records
    carrying it, preceded by any output not taken yet.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.established = False  # the handshake is done
        self.ended = False  # the peer sent close_notify or closed the TCP connection
        self._failed = False

    def receive(self, data: bytes) -> bytes:
        """Feed bytes read from the socket (`b""` at its end); return the plaintext they
        complete (often `b""` during the handshake). Sets `ended` when the stream is over.

        Raises `TlsFailed` when the peer breaks TLS; `take_output()` then holds the alert.
        """
        if self.ended or self._failed:
            return b""
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()
        try:
            if not self.established:
                try:
                    self._tls.do_handshake()
                except ssl.SSLWantReadError:
                    if not data:
                        self.ended = True
                    return b""
                self.established = True
            return self._read_all()
        except ssl.SSLZeroReturnError:  # close_notify
            self.ended = True
            return b""
        except ssl.SSLEOFError:  # TCP closed without close_notify: the same to us
            self.ended = True
            return b""
        except ssl.SSLError as exc:
            self._failed = True
            raise TlsFailed(_describe(exc, self.established)) from None

    def _read_all(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self._tls.read(_READ_BYTES)
            except ssl.SSLWantReadError:
                break
            if not chunk:  # EOF reported as an empty read
                self.ended = True
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def take_output(self) -> bytes:
        """Bytes produced for the socket and not taken yet (b"" if none)."""
        return self._outgoing.read() if self._outgoing.pending else b""

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt `plaintext` into records; returns every byte pending for the socket.
        Raises `ssl.SSLError` when the channel is broken (after an alert, or closed)."""
        self._tls.write(plaintext)
        return self._outgoing.read()

    def close_notify(self) -> bytes:
        """Our close_notify alert (b"" before the handshake or after a failure). The peer's
        answer is not awaited: the TCP connection closes right after."""
        if not self.established or self._failed:
            return b""
        try:
            self._tls.unwrap()
        except ssl.SSLWantReadError:  # the peer's close_notify has not arrived: expected
            pass
        except ssl.SSLError:
            pass  # the channel is already unusable; nothing more to say on it
        return self.take_output()


def _describe(exc: ssl.SSLError, established: bool) -> str:
    reason = exc.reason or exc.__class__.__name__
    if not established and reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST",
                                      "UNSUPPORTED_PROTOCOL", "UNKNOWN_PROTOCOL",
                                      "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return (f"not a TLS client ({reason}): plain ws:// or garbage sent to a wss:// "
                f"listener")
    if not established:
        return f"TLS handshake failed ({reason})"
    return f"TLS error ({reason})"
