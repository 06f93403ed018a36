"""Session tokens: 256 random bits, sent base64url, stored only as their SHA-256.

A token is `base64url(32 random bytes)` without padding: 43 characters. The server keeps
`sha256(token bytes)` in the engine's `sessions` table and nothing else, so a copy of the
store (or a backup) cannot be turned back into a usable token. SHA-256 suffices, and a slow
password hash would add nothing: a guess must hit one of 2^256 values, not a human's password.
Tokens travel only inside frames (`login` replies, `resume` requests), never in URLs.

Herald before these stored sessions signed stateless tokens with an HMAC key in
`data_dir/session.key`. Such tokens are simply refused (they are not 32 bytes, and no stored
session has their hash), the client logs in again, and `retire_legacy_secret` deletes the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import secrets
from collections.abc import Callable
from pathlib import Path

from engine import Unauthenticated

__all__ = [
    "DEFAULT_SESSION_LIFETIME_S",
    "TOKEN_BYTES",
    "new_token",
    "retire_legacy_secret",
    "token_hash",
]

log = logging.getLogger("herald.tokens")

TOKEN_BYTES = 32
DEFAULT_SESSION_LIFETIME_S = 30 * 24 * 3600
_TOKEN_CHARS = 43  # base64 of 32 bytes, unpadded
_REFUSED = "the session token is not valid; log in again"


def new_token(rng: Callable[[int], bytes] = secrets.token_bytes) -> tuple[str, bytes]:
    """A fresh token for the client, and the hash to store in its place."""
    raw = rng(TOKEN_BYTES)
    return base64.urlsafe_b64encode(raw).decode().rstrip("="), hashlib.sha256(raw).digest()


def token_hash(token: str) -> bytes:
    """The stored form of `token`. Raises `Unauthenticated` for anything that is not a token
    this server could have issued (the message never echoes the token)."""
    if len(token) != _TOKEN_CHARS:
        raise Unauthenticated(_REFUSED)
    try:
        raw = base64.urlsafe_b64decode(token + "=")
    except (binascii.Error, ValueError):
        raise Unauthenticated(_REFUSED) from None
    if len(raw) != TOKEN_BYTES:
        raise Unauthenticated(_REFUSED)
    return hashlib.sha256(raw).digest()


def retire_legacy_secret(data_dir: Path) -> None:
    """Delete the signing key of the old stateless tokens, if one is left in `data_dir`."""
    path = data_dir / "session.key"
    try:
        path.unlink()
    except FileNotFoundError:
        return
    log.info("removed %s: old session tokens are no longer accepted; clients log in again",
             path)
