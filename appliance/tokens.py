"""Session tokens: signed, expiring, bound to one tenant and user.

A token is `base64url(version | tenant | user | expires_ms | nonce | HMAC-SHA256)`, signed with a
secret kept in the data directory (mode 0600), so tokens survive a restart and a forged or
altered token fails its MAC. Tokens travel only inside frames, never in URLs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from pathlib import Path

from engine import Unauthenticated

__all__ = ["SESSION_LIFETIME_S", "TokenIssuer", "load_or_create_secret"]

SESSION_LIFETIME_S = 7 * 24 * 3600
_VERSION = 1
_BODY = struct.Struct(">BQQQ16s")
_MAC_BYTES = 32
_SECRET_BYTES = 32


def load_or_create_secret(path: Path, rng: Callable[[int], bytes] = os.urandom) -> bytes:
    """The signing secret at `path`, created (mode 0600) on first use."""
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        secret = rng(_SECRET_BYTES)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secret)
            out.flush()
            os.fsync(out.fileno())
    if len(secret) != _SECRET_BYTES:
        raise ValueError(f"{path} is damaged (expected {_SECRET_BYTES} bytes); delete it to "
                         f"issue new session tokens (every client will log in again)")
    return secret


class TokenIssuer:
    def __init__(
        self, secret: bytes, lifetime_s: int = SESSION_LIFETIME_S,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._secret = secret
        self._lifetime_ms = lifetime_s * 1000
        self._rng = rng

    def issue(self, tenant: int, user: int, now_ms: int) -> tuple[str, int]:
        """A new token and its expiry time (ms)."""
        expires = now_ms + self._lifetime_ms
        body = _BODY.pack(_VERSION, tenant, user, expires, self._rng(16))
        mac = hmac.new(self._secret, body, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(body + mac).decode().rstrip("="), expires

    def verify(self, token: str, now_ms: int) -> tuple[int, int]:
        """(tenant, user) of a valid token. Raises `Unauthenticated` for a malformed, forged,
        altered or expired one."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise Unauthenticated("the session token is not valid; log in again") from None
        if len(raw) != _BODY.size + _MAC_BYTES:
            raise Unauthenticated("the session token is not valid; log in again")
        body, mac = raw[: _BODY.size], raw[_BODY.size :]
        if not hmac.compare_digest(mac, hmac.new(self._secret, body, hashlib.sha256).digest()):
            raise Unauthenticated("the session token is not valid; log in again")
        version, tenant, user, expires, _ = _BODY.unpack(body)
        if version != _VERSION or expires <= now_ms:
            raise Unauthenticated("the session has expired; log in again")
        return tenant, user
