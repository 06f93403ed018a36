"""Password hashing with Argon2id (RFC 9106), encoded as PHC strings.

Parameters follow OWASP's minimum for Argon2id: 19 MiB of memory, 2 passes, 1 lane. A hash takes
tens of milliseconds on purpose, so it is computed outside the writer thread and handed to
`CreateUser` ready-made. Along with the future envelope module, this is the only place that
touches `cryptography.hazmat`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from engine.errors import WeakPassword

__all__ = [
    "ARGON2_ITERATIONS",
    "ARGON2_LANES",
    "ARGON2_MEMORY_KIB",
    "MAX_PASSWORD_BYTES",
    "MIN_PASSWORD_CHARS",
    "check_password_policy",
    "hash_password",
    "verify_password",
]

ARGON2_MEMORY_KIB = 19 * 1024
ARGON2_ITERATIONS = 2
ARGON2_LANES = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_BYTES = 1024  # bounds the work an attacker can make a login do


def _kdf(salt: bytes) -> Argon2id:
    return Argon2id(
        salt=salt, length=_HASH_BYTES, iterations=ARGON2_ITERATIONS, lanes=ARGON2_LANES,
        memory_cost=ARGON2_MEMORY_KIB,
    )


def check_password_policy(password: str) -> None:
    """Raise `WeakPassword` (an `Invalid`) for a password shorter than MIN_PASSWORD_CHARS or
    over MAX_PASSWORD_BYTES; cheap, so callers check before any slow hashing."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise WeakPassword(f"a password needs at least {MIN_PASSWORD_CHARS} characters; "
                           f"choose a longer one")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise WeakPassword(f"a password may be at most {MAX_PASSWORD_BYTES} bytes; "
                           f"choose a shorter one")


def hash_password(password: str, rng: Callable[[int], bytes] = os.urandom) -> str:
    """The PHC-encoded Argon2id hash of `password` with a fresh salt from `rng`.

    Raises `WeakPassword` (an `Invalid`) when `check_password_policy` refuses the password.
    """
    check_password_policy(password)
    return _kdf(rng(_SALT_BYTES)).derive_phc_encoded(password.encode())


def verify_password(phc_hash: str, password: str) -> bool:
    """True when `password` matches `phc_hash`. Never raises for a wrong or oversized password."""
    encoded = password.encode()
    if len(encoded) > MAX_PASSWORD_BYTES:
        return False
    try:
        Argon2id.verify_phc_encoded(encoded, phc_hash)
    except InvalidKey:
        return False
    return True
