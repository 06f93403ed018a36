"""`ServiceEscrow`: the appliance's blocking client of `herald escrow serve`.

One TLS 1.3 connection per call, with a timeout on every step: escrow calls are rare (at start
and when cached DEKs near their expiry), and a fresh connection has no stale state to recover
from. Errors map to the `Escrow` contract: cannot connect, timed out or cut off ->
`EscrowUnavailable`; the service's "refused"/"bad_request" replies -> `EscrowRefused`; a server
certificate that does not verify, or the service rejecting ours (expired, or from another CA)
-> `EscrowCertificateRefused`, an `EscrowUnavailable`: no key was refused, and it works again
once the certificate is fixed.
"""

from __future__ import annotations

import socket
import ssl

import msgspec

from appliance.escrow.wire import (
    GREETING,
    FrameTooLarge,
    Reply,
    Request,
    decode_reply,
    encode,
    read_frame,
    write_frame,
)
from appliance.keys.errors import (
    EscrowCertificateRefused,
    EscrowError,
    EscrowRefused,
    EscrowUnavailable,
)
from appliance.keys.escrow import KEY_STATES, KeyState, check_key_id

__all__ = ["DEFAULT_TIMEOUT_S", "ServiceEscrow"]

DEFAULT_TIMEOUT_S = 10.0


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise EscrowError(f"the escrow address {address!r} must look like HOST:PORT; fix the "
                          f"[escrow] address setting")
    return host.strip("[]"), int(port)


class ServiceEscrow:
    """The `Escrow` served by `herald escrow serve` at `address` ("host:port").

    `ca_file` verifies the service; `cert_file`/`key_file` are this appliance's client
    certificate and key from `herald escrow issue-client`. Raises `EscrowError` when those
    files cannot be loaded.
    """

    def __init__(self, address: str, ca_file: str, cert_file: str, key_file: str, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._host, self._port = _split_address(address)
        self._address = address
        self._timeout_s = timeout_s
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        try:
            context.load_verify_locations(cafile=str(ca_file))
            context.load_cert_chain(str(cert_file), str(key_file))
        except (OSError, ssl.SSLError) as exc:
            raise EscrowError(f"cannot load the escrow client files ({type(exc).__name__}: "
                              f"{getattr(exc, 'strerror', None) or exc}); check ca_file, "
                              f"cert_file and key_file in [escrow]") from None
        self._context = context

    def create_key(self, key_id: str) -> None:
        self._call("create_key", key_id)

    def wrap(self, key_id: str, plaintext: bytes, aad: bytes) -> bytes:
        return self._call("wrap", key_id, plaintext, aad)

    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        return self._call("unwrap", key_id, wrapped, aad)

    def revoke(self, key_id: str) -> None:
        self._call("revoke", key_id)

    def status(self, key_id: str) -> KeyState:
        answer = self._call("status", key_id).decode(errors="replace")
        for state in KEY_STATES:
            if answer == state:
                return state
        raise EscrowUnavailable(f"the escrow service at {self._address} answered an unknown "
                                f"key state; check that it runs the same Herald version")

    def close(self) -> None:
        """Nothing is held between calls."""

    def _call(self, op: str, key_id: str, data: bytes = b"", aad: bytes = b"") -> bytes:
        check_key_id(key_id)
        request = encode(Request(op=op, key_id=key_id, data=data, aad=aad))  # type: ignore[arg-type]
        reply = self._exchange(request)
        if reply.ok:
            return reply.data
        if reply.error == "unavailable":
            raise EscrowUnavailable(f"the escrow service at {self._address} cannot answer now: "
                                    f"{reply.message}")
        raise EscrowRefused(f"the escrow service at {self._address} refused {op}: "
                            f"{reply.message}")

    def _exchange(self, request: bytes) -> Reply:
        where = f"the escrow service at {self._address}"
        payload: bytes | None = None
        try:
            raw = socket.create_connection((self._host, self._port), timeout=self._timeout_s)
        except OSError as exc:
            raise EscrowUnavailable(f"cannot reach {where} ({exc.strerror or exc}); check that "
                                    f"`herald escrow serve` runs there and retry") from None
        try:
            with self._context.wrap_socket(raw, server_hostname=self._host) as connection:
                greeting = read_frame(connection)  # a rejected certificate shows up here
                if greeting is not None:
                    write_frame(connection, request)
                    payload = read_frame(connection)
        except ssl.SSLCertVerificationError as exc:
            expired = ("; if it has expired, the escrow's operator renews it: herald escrow "
                       "renew" if "expired" in str(exc.verify_message) else "")
            raise EscrowCertificateRefused(
                f"{where} presented a certificate that does not verify ({exc.verify_message}); "
                f"check ca_file and the address{expired}") from None
        except (TimeoutError, ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError) as exc:
            raise EscrowUnavailable(f"{where} did not answer ({type(exc).__name__}); retry "
                                    f"later") from None
        except ssl.SSLError as exc:
            # With TLS 1.3 a rejected client certificate arrives as an alert on the first read,
            # the greeting's.
            if "EXPIRED" in str(exc.reason):
                raise EscrowCertificateRefused(
                    f"{where} refused the TLS session ({exc.reason}): a certificate has "
                    f"expired, this appliance's ([escrow] cert_file: the escrow's operator "
                    f"issues a new one with herald escrow issue-client) or the escrow's CA "
                    f"(herald escrow renew --ca)") from None
            raise EscrowCertificateRefused(
                f"{where} refused the TLS session ({exc.reason}); check that this appliance's "
                f"client certificate was issued by that escrow") from None
        except (OSError, FrameTooLarge) as exc:
            raise EscrowUnavailable(f"{where} failed ({type(exc).__name__}); retry later"
                                    ) from None
        finally:
            raw.close()
        if greeting is None or payload is None:
            raise EscrowUnavailable(f"{where} closed the connection without answering; retry "
                                    f"later")
        try:
            if decode_reply(greeting) != Reply(ok=True, data=GREETING):
                raise msgspec.DecodeError("not the escrow's greeting")
            return decode_reply(payload)
        except msgspec.DecodeError:
            raise EscrowUnavailable(f"{where} answered something that is not a reply; check "
                                    f"that it runs the same Herald version") from None
