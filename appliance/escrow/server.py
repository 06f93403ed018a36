"""`herald escrow serve`: the escrow service, a threaded TLS 1.3 server with client
certificates verified against the escrow's own CA.

One thread per connection (at most MAX_CONNECTIONS; more are closed at once). A connection
carries any number of requests (appliance/escrow/wire.py). Whatever a client
sends, it gets an error reply or a closed connection, never a dead server. Every request, good
or bad, is written to the audit log before it is answered.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
import sys
import threading
import traceback
from pathlib import Path

import msgspec
from cryptography import x509

from appliance.escrow.audit import AuditLog
from appliance.escrow.keystore import Keystore
from appliance.escrow.wire import (
    GREETING,
    FrameTooLarge,
    Reply,
    Request,
    decode_request,
    encode,
    read_frame,
    write_frame,
)
from appliance.keys.errors import EscrowRefused, EscrowUnavailable

__all__ = ["IDLE_TIMEOUT_S", "MAX_CONNECTIONS", "EscrowServer", "EscrowService",
           "server_tls_context"]

IDLE_TIMEOUT_S = 30.0  # also bounds the TLS handshake
MAX_CONNECTIONS = 64
_MAX_LOGGED_KEY_ID = 128
_LINGER_S = 2.0


def server_tls_context(directory: Path, passphrase: str) -> ssl.SSLContext:
    """TLS 1.3 only; the client must present a certificate signed by the escrow's CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(directory / "ca.crt"))
    context.load_cert_chain(str(directory / "server.crt"), str(directory / "server.key"),
                            password=passphrase)
    return context


class EscrowService:
    """Requests in, replies out: the keystore's operations, each written to the audit log."""

    def __init__(self, keystore: Keystore, audit: AuditLog) -> None:
        self._keystore = keystore
        self._audit = audit

    def handle(self, payload: bytes, client: str) -> Reply:
        try:
            request = decode_request(payload)
        except msgspec.DecodeError as exc:
            return self._answer(client, "invalid", "", Reply(
                ok=False, error="bad_request",
                message=f"not a valid request ({exc}); see docs/security.md, 'Escrow backends'"))
        try:
            data = self._perform(request, client)
        except EscrowRefused as exc:
            reply = Reply(ok=False, error="refused", message=exc.message)
        except EscrowUnavailable as exc:
            reply = Reply(ok=False, error="unavailable", message=exc.message)
        else:
            reply = Reply(ok=True, data=data)
        return self._answer(client, request.op, request.key_id, reply)

    def _perform(self, request: Request, client: str) -> bytes:
        keystore, key_id = self._keystore, request.key_id
        if request.op == "create_key":
            keystore.create_key(key_id, client)
        elif request.op == "wrap":
            return keystore.wrap(key_id, request.data, request.aad, client)
        elif request.op == "unwrap":
            return keystore.unwrap(key_id, request.data, request.aad, client)
        elif request.op == "revoke":
            keystore.revoke(key_id, client)
        else:
            return keystore.status(key_id, client).encode()
        return b""

    def _answer(self, client: str, op: str, key_id: str, reply: Reply) -> Reply:
        outcome = "ok" if reply.ok else reply.error
        try:
            self._audit.append(client, op, key_id[:_MAX_LOGGED_KEY_ID], outcome)
        except OSError as exc:
            # No unaudited answer: an unwrap that cannot be logged is not handed out.
            return Reply(ok=False, error="unavailable",
                         message=f"the escrow cannot write its audit log ({exc.strerror}); "
                                 f"retry once its operator has fixed the disk")
        return reply


def _client_subject(connection: ssl.SSLSocket) -> str:
    der = connection.getpeercert(binary_form=True)
    if der is None:  # cannot happen with CERT_REQUIRED; kept for a readable audit line
        return "-"
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def _linger(raw: socket.socket) -> None:
    """Close after the client has read our TLS alert: closing with data of the client unread
    would send a TCP reset, which may destroy the alert in flight."""
    with contextlib.suppress(OSError):
        raw.shutdown(socket.SHUT_WR)
        raw.settimeout(_LINGER_S)
        for _ in range(16):  # bounded: at most 16 reads of 4 KiB
            if not raw.recv(4096):
                break


class _Handler(socketserver.BaseRequestHandler):
    server: EscrowServer

    def handle(self) -> None:
        raw: socket.socket = self.request
        raw.settimeout(IDLE_TIMEOUT_S)
        try:
            connection = self.server.tls.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.server.note(f"refused a connection from {self.client_address[0]}: "
                             f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}")
            _linger(raw)
            return
        with connection:
            client = _client_subject(connection)
            self._serve(connection, client)

    def _serve(self, connection: ssl.SSLSocket, client: str) -> None:
        try:
            write_frame(connection, encode(Reply(ok=True, data=GREETING)))
        except OSError:
            return
        while True:
            try:
                payload = read_frame(connection)
            except FrameTooLarge as exc:
                with contextlib.suppress(OSError):
                    write_frame(connection, encode(Reply(ok=False, error="too_large",
                                                         message=f"{exc}; closing")))
                return
            except (OSError, ConnectionError):
                return  # the client went away or idled out: nothing to answer
            if payload is None:
                return
            reply = self.server.service.handle(payload, client)
            try:
                write_frame(connection, encode(reply))
            except OSError:
                return


class EscrowServer(socketserver.ThreadingTCPServer):
    """The listening socket and its connection threads. `serve_forever()`, `shutdown()`."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], tls: ssl.SSLContext,
                 service: EscrowService) -> None:
        self.tls = tls
        self.service = service
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def process_request(self, request: socket.socket | tuple[bytes, socket.socket],
                        client_address: object) -> None:
        if not self._slots.acquire(blocking=False):
            self.note(f"refused a connection from {client_address}: {MAX_CONNECTIONS} are open")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket | tuple[bytes, socket.socket],
                               client_address: object) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: object, client_address: object) -> None:
        # A bug while serving one connection ends that connection, not the service.
        self.note(f"error while serving {client_address}:\n{traceback.format_exc()}")

    @staticmethod
    def note(line: str) -> None:
        print(f"herald escrow: {line}", file=sys.stderr, flush=True)
