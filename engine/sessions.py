"""Login sessions: stored by the hash of their token, listed per user, revoked, pruned.

The token itself (256 random bits, made by the appliance) is never stored: the key is its
SHA-256, so a copy of the store lets nobody resume a session. A revoked session keeps its
record as a tombstone saying why it ended until it expires and is pruned, so that a server
noticing the revocation late (made by another process) can still tell its clients why.

Session records are not passed through the `RecordSealer`: they are looked up by token hash
before the tenant is known, and hold no content (ids, times, a device label).
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.errors import Conflict, CorruptData, Invalid, NotFound, Unauthenticated
from engine.hotstore import HotStore
from engine.keys import pack_ids
from engine.membership import Membership
from engine.ops import (
    ChangePassword,
    CreateSession,
    PasswordChanged,
    PruneSessions,
    RevokeSession,
    RevokeUserSessions,
    SessionCreated,
    SessionsPruned,
    SessionsRevoked,
    SetPassword,
    SetUserDisabled,
)
from engine.records import SessionEnd, SessionRecord

__all__ = ["TOKEN_HASH_BYTES", "Sessions"]

TOKEN_HASH_BYTES = 32
MAX_DEVICE_CHARS = 64
_INDEX_PREFIX_BYTES = 16  # tenant|user
_REFUSED = "the session token is not valid; log in again"


class Sessions:
    def __init__(self, store: HotStore, membership: Membership) -> None:
        self._store = store
        self._dbs = store.dbs
        self._membership = membership
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(SessionRecord).decode

    # -- record helpers -----------------------------------------------------------------------

    def _get(self, txn: Any, token_hash: bytes) -> SessionRecord | None:
        found = txn.get(token_hash, db=self._dbs.sessions)
        return None if found is None else self._record(found)

    def _record(self, stored: bytes) -> SessionRecord:
        try:
            return self._decode(stored)
        except msgspec.DecodeError as exc:
            raise CorruptData(f"a stored session record is damaged: {exc}") from exc

    def _end(self, txn: Any, token_hash: bytes, record: SessionRecord, reason: SessionEnd) -> None:
        ended = msgspec.structs.replace(record, ended=reason.value)
        txn.put(token_hash, self._encode(ended), db=self._dbs.sessions)
        txn.delete(pack_ids(record.tenant, record.user) + token_hash, db=self._dbs.user_sessions)

    def _live_hashes(self, txn: Any, tenant: int, user: int) -> list[bytes]:
        prefix = pack_ids(tenant, user)
        hashes = []
        with txn.cursor(db=self._dbs.user_sessions) as cur:
            if cur.set_range(prefix):
                for key in cur.iternext(values=False):
                    if key[:_INDEX_PREFIX_BYTES] != prefix:
                        break
                    hashes.append(bytes(key[_INDEX_PREFIX_BYTES:]))
        return hashes

    def _end_all(self, txn: Any, tenant: int, user: int, reason: SessionEnd) -> SessionsRevoked:
        hashes = self._live_hashes(txn, tenant, user)
        for token_hash in hashes:
            record = self._get(txn, token_hash)
            if record is not None:
                self._end(txn, token_hash, record, reason)
        return SessionsRevoked(tenant, user, tuple(hashes), reason)

    # -- operations (called by Engine.apply_batch inside its write transaction) ---------------

    def _check_new(self, txn: Any, op: CreateSession, now_ms: int) -> None:
        """Every refusal `create` can make, checked before anything is written."""
        if len(op.token_hash) != TOKEN_HASH_BYTES:
            raise Invalid(f"a token hash is {TOKEN_HASH_BYTES} bytes (SHA-256)")
        if op.expires_ms <= now_ms:
            raise Invalid("a session must expire after it is created")
        if len(op.device) > MAX_DEVICE_CHARS:
            raise Invalid(f"a device label may be at most {MAX_DEVICE_CHARS} characters")
        user = self._membership.user(txn, op.tenant, op.user)
        if user.disabled:
            raise Unauthenticated("this account is disabled")
        if op.password_hash and op.password_hash != user.password_hash:
            raise Unauthenticated("the password was changed meanwhile; log in again")
        if txn.get(op.token_hash, db=self._dbs.sessions) is not None:
            raise Conflict("a session with this token exists already")

    def _store_new(self, txn: Any, op: CreateSession, now_ms: int) -> SessionCreated:
        record = SessionRecord(op.tenant, op.user, op.device, now_ms, op.expires_ms)
        txn.put(op.token_hash, self._encode(record), db=self._dbs.sessions)
        txn.put(pack_ids(op.tenant, op.user) + op.token_hash, b"", db=self._dbs.user_sessions)
        return SessionCreated(op.token_hash, op.expires_ms)

    def create(self, txn: Any, op: CreateSession, now_ms: int) -> SessionCreated:
        self._check_new(txn, op, now_ms)
        return self._store_new(txn, op, now_ms)

    def revoke(self, txn: Any, op: RevokeSession, now_ms: int) -> SessionsRevoked:
        record = self._get(txn, op.token_hash)
        if record is None:
            raise NotFound("no such session")
        if record.ended:
            return SessionsRevoked(record.tenant, record.user, (), op.reason)
        self._end(txn, op.token_hash, record, op.reason)
        return SessionsRevoked(record.tenant, record.user, (op.token_hash,), op.reason)

    def revoke_user(self, txn: Any, op: RevokeUserSessions, now_ms: int) -> SessionsRevoked:
        self._membership.user(txn, op.tenant, op.user)
        return self._end_all(txn, op.tenant, op.user, op.reason)

    def set_password(self, txn: Any, op: SetPassword, now_ms: int) -> SessionsRevoked:
        if not op.password_hash.startswith("$argon2id$"):
            raise Invalid("password_hash must be an Argon2id hash from engine.passwords")
        record = self._membership.user(txn, op.tenant, op.user)
        updated = msgspec.structs.replace(record, password_hash=op.password_hash)
        self._membership.replace_user(txn, op.tenant, op.user, updated)
        return self._end_all(txn, op.tenant, op.user, SessionEnd.PASSWORD_CHANGED)

    def change_password(self, txn: Any, op: ChangePassword, now_ms: int) -> PasswordChanged:
        """The checks all come first: a refused change writes nothing (apply_batch's rule)."""
        if not op.password_hash.startswith("$argon2id$"):
            raise Invalid("password_hash must be an Argon2id hash from engine.passwords")
        asking = self.session(txn, op.token_hash, now_ms)  # Unauthenticated once it ended
        if op.new_token_hash == op.token_hash:
            raise Invalid("the new session needs a new token")
        user = self._membership.user(txn, asking.tenant, asking.user)
        if user.password_hash != op.checked_hash:
            # Every password change ends every session, so the asking one would have ended
            # too; this guards the invariant rather than a reachable path.
            raise Unauthenticated("the password was changed meanwhile; log in again")
        successor = CreateSession(tenant=asking.tenant, user=asking.user,
                                  token_hash=op.new_token_hash, device=asking.device,
                                  expires_ms=op.expires_ms)
        self._check_new(txn, successor, now_ms)  # disabled, token taken, expiry, device
        updated = msgspec.structs.replace(user, password_hash=op.password_hash)
        self._membership.replace_user(txn, asking.tenant, asking.user, updated)
        revoked = self._end_all(txn, asking.tenant, asking.user, SessionEnd.PASSWORD_CHANGED)
        return PasswordChanged(revoked, self._store_new(txn, successor, now_ms))

    def set_disabled(self, txn: Any, op: SetUserDisabled, now_ms: int) -> SessionsRevoked:
        record = self._membership.user(txn, op.tenant, op.user)
        if record.disabled != op.disabled:
            updated = msgspec.structs.replace(record, disabled=op.disabled)
            self._membership.replace_user(txn, op.tenant, op.user, updated)
        if op.disabled:
            return self._end_all(txn, op.tenant, op.user, SessionEnd.ACCOUNT_DISABLED)
        return SessionsRevoked(op.tenant, op.user, (), SessionEnd.ACCOUNT_DISABLED)

    def prune(self, txn: Any, op: PruneSessions, now_ms: int) -> SessionsPruned:
        """One pass over the table (keyed by random hashes, so in no useful order): fine for
        an hourly job; `max_count` bounds the size of the write transaction."""
        if op.max_count < 1:
            raise Invalid("max_count must be at least 1")
        expired: list[tuple[bytes, SessionRecord]] = []
        with txn.cursor(db=self._dbs.sessions) as cur:
            for key, value in cur:
                record = self._record(value)
                if record.expires_ms <= now_ms:
                    if len(expired) == op.max_count:
                        return self._delete(txn, expired, more=True)
                    expired.append((bytes(key), record))
        return self._delete(txn, expired, more=False)

    def _delete(
        self, txn: Any, expired: list[tuple[bytes, SessionRecord]], more: bool
    ) -> SessionsPruned:
        for token_hash, record in expired:
            txn.delete(token_hash, db=self._dbs.sessions)
            txn.delete(pack_ids(record.tenant, record.user) + token_hash,
                       db=self._dbs.user_sessions)
        return SessionsPruned(len(expired), more)

    # -- reads --------------------------------------------------------------------------------

    def session(self, txn: Any, token_hash: bytes, now_ms: int) -> SessionRecord:
        record = self._get(txn, token_hash) if len(token_hash) == TOKEN_HASH_BYTES else None
        if record is None or record.ended or record.expires_ms <= now_ms:
            raise Unauthenticated(_REFUSED)
        return record

    def sessions(self, txn: Any, tenant: int, user: int) -> list[tuple[bytes, SessionRecord]]:
        out = []
        for token_hash in self._live_hashes(txn, tenant, user):
            record = self._get(txn, token_hash)
            if record is not None:
                out.append((token_hash, record))
        return out

    def ended(self, txn: Any, token_hashes: list[bytes], now_ms: int) -> dict[bytes, SessionEnd]:
        out: dict[bytes, SessionEnd] = {}
        get, sessions = txn.get, self._dbs.sessions
        for token_hash in token_hashes:
            found = get(token_hash, db=sessions)
            if found is None:
                out[token_hash] = SessionEnd.REVOKED  # pruned, or never stored
                continue
            record = self._record(found)
            if record.ended:
                known = record.ended in SessionEnd._value2member_map_
                out[token_hash] = SessionEnd(record.ended) if known else SessionEnd.REVOKED
            elif record.expires_ms <= now_ms:
                out[token_hash] = SessionEnd.EXPIRED
        return out
