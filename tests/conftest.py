"""Shared fixtures: a real LMDB store in a temporary directory, and a fixed clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import Engine, hash_password

# One Argon2id hash for every test user: hashing is deliberately slow.
PASSWORD = "correct horse battery"
_HASH = hash_password(PASSWORD, rng=lambda n: b"fixed-test-salt!"[:n])
NOW_MS = 1_780_000_000_000


@pytest.fixture
def password_hash() -> str:
    return _HASH


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = Engine(tmp_path / "store", map_size=256 * 2**20)
    yield eng
    eng.close()
