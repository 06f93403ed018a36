"""The client's errors, one class per situation.

A refusal by the server is data on the wire (an error frame with a stable code); the client turns
it into `ClientError` carrying that code. Everything else is about the connection: it broke while
a request was outstanding (`ConnectionLost`), it cannot be re-established (`ServerUnreachable`),
or the application closed the client (`ClientClosed`). A TLS certificate that fails
verification, on either side, is `CertificateRejected`: no retry can fix it.
"""

from __future__ import annotations

__all__ = [
    "CertificateRejected",
    "ClientClosed",
    "ClientError",
    "ConnectionLost",
    "LoginFailed",
    "ProtocolViolation",
    "ServerUnreachable",
]


class ClientError(Exception):
    """The server refused a request. `code` is its stable wire code (`not_member`, `throttled`,
    ...), `message` its human explanation, `retry_after` (seconds) is set on `throttled`.

    Compare `code` with a member of `appliance.protocol.codes.ErrorCode` (it equals its
    string), never with a literal. It stays a `str`: a newer server may send a code that this
    client's table does not have yet."""

    def __init__(
        self, code: str, message: str, retry_after: float | None = None,
        request_id: int | None = None,
    ) -> None:
        super().__init__(code, message, retry_after, request_id)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.message} ({self.code})"


class LoginFailed(ClientError):
    """The server refused the credentials (and the session token, if there was one). Fatal: the
    client does not retry a wrong password."""


class ConnectionLost(ConnectionError):
    """The connection broke after the request was sent and before its reply arrived: the
    request may or may not have taken effect. The client is reconnecting meanwhile."""


class ServerUnreachable(ConnectionError):
    """Every reconnect attempt the policy allows has failed; the client has stopped."""


class CertificateRejected(Exception):
    """The TLS handshake failed over a certificate: the server's was not trusted (unknown CA,
    wrong host name, expired; the message says which), or the server refused this client's
    certificate or its absence. Fatal: the server is reachable, and retrying changes nothing."""


class ClientClosed(Exception):
    """The client was closed by the application (or has stopped for a reason given as the
    exception's `__cause__`); it can no longer be used."""


class ProtocolViolation(Exception):
    """The server sent a frame this client cannot understand (a bug on one side or the other)."""
