"""Administrators of the appliance: their accounts and their sessions.

An administrator belongs to no tenant. Its record lives in `admins`, sealed like tenant records
(under the name key: the admin API must log one in before any tenant's DEK is unwrapped); its
login is indexed in `admin_logins`, blinded as a login of tenant 0 (no tenant has id 0).

Its sessions live in `admin_sessions`, keyed like users' sessions by the SHA-256 of the token,
but in a table of their own: a user's token is never looked up where an admin's is, nor the
reverse, so neither can ever stand for the other, whatever the appliance does with them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from engine.errors import Conflict, CorruptData, Invalid, NotFound, Unauthenticated
from engine.hotstore import HotStore
from engine.keys import pack_id, unpack_id
from engine.membership import _NAME_RE
from engine.ops import (
    AdminCreated,
    AdminSessionsEnded,
    CreateAdmin,
    CreateAdminSession,
    SessionCreated,
    SetAdminPassword,
)
from engine.records import (
    AdminRecord,
    AdminRole,
    AdminSessionRecord,
    PlainSealer,
    RecordSealer,
    SessionEnd,
)
from engine.sessions import MAX_DEVICE_CHARS, TOKEN_HASH_BYTES

__all__ = ["Admins"]

MAX_ADMIN_LOGIN_CHARS = 64
_ID_BYTES = 8
_REFUSED = "the session token is not valid; log in again"
_ADMINS_TABLE = b"admins"
_NO_TENANT = pack_id(0)


class Admins:
    def __init__(
        self, store: HotStore, sealer: RecordSealer | None = None,
        blind_login: Callable[[bytes, bytes], bytes] | None = None,
    ) -> None:
        """`sealer` seals admin records (a sealed store's `NameKeySealer`; plain without);
        `blind_login(tenant, login)` names logins in `admin_logins` (the keyring's)."""
        self._store = store
        self._dbs = store.dbs
        self._sealer = sealer or PlainSealer()
        self._blind_login = blind_login
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode_admin = msgspec.msgpack.Decoder(AdminRecord).decode
        self._decode_session = msgspec.msgpack.Decoder(AdminSessionRecord).decode

    # -- records ------------------------------------------------------------------------------

    def _login_key(self, login: str) -> bytes:
        if self._blind_login is None:
            return login.encode()
        return self._blind_login(_NO_TENANT, login.encode())

    def _put(self, txn: Any, admin: int, record: AdminRecord) -> None:
        key = pack_id(admin)
        txn.put(key, self._sealer.seal(_ADMINS_TABLE, key, self._encode(record)),
                db=self._dbs.admins)

    def admin(self, txn: Any, admin: int) -> AdminRecord:
        key = pack_id(admin)
        stored = txn.get(key, db=self._dbs.admins)
        if stored is None:
            raise NotFound(f"administrator {admin} does not exist")
        try:
            return self._decode_admin(self._sealer.open(_ADMINS_TABLE, key, bytes(stored)))
        except msgspec.DecodeError as exc:
            raise CorruptData(f"a stored administrator record is damaged: {exc}") from exc

    def find(self, txn: Any, login: str) -> int:
        found = txn.get(self._login_key(login), db=self._dbs.admin_logins) if login else None
        if found is None:
            raise NotFound(f"no administrator has the login {login!r}")
        return unpack_id(found)

    def admins(self, txn: Any) -> list[tuple[int, AdminRecord]]:
        return [(unpack_id(key), self.admin(txn, unpack_id(key)))
                for key in txn.cursor(db=self._dbs.admins).iternext(values=False)]

    # -- operations (called by Engine.apply_batch inside its write transaction) ---------------

    def create(self, txn: Any, op: CreateAdmin, now_ms: int) -> AdminCreated:
        if not 1 <= len(op.login) <= MAX_ADMIN_LOGIN_CHARS or not _NAME_RE.fullmatch(op.login):
            raise Invalid(f"an administrator's login must be 1 to {MAX_ADMIN_LOGIN_CHARS} "
                          f"characters of a-z, 0-9, '.', '_' or '-', starting with a letter or "
                          f"digit")
        if not 1 <= len(op.display_name) <= MAX_DEVICE_CHARS:
            raise Invalid(f"a display name must be 1 to {MAX_DEVICE_CHARS} characters")
        _check_hash(op.password_hash)
        if op.role not in AdminRole._value2member_map_:
            raise Invalid(f"an administrator's role is one of: {', '.join(AdminRole)}")
        login_key = self._login_key(op.login)
        if txn.get(login_key, db=self._dbs.admin_logins) is not None:
            raise Conflict(f"an administrator with the login {op.login!r} exists already")
        admin = self._store.next_id(txn, b"admin")
        self._put(txn, admin, AdminRecord(op.login, op.display_name, op.password_hash,
                                          AdminRole(op.role).value, now_ms))
        txn.put(login_key, pack_id(admin), db=self._dbs.admin_logins)
        return AdminCreated(admin)

    def set_password(self, txn: Any, op: SetAdminPassword, now_ms: int) -> AdminSessionsEnded:
        _check_hash(op.password_hash)
        record = self.admin(txn, op.admin)
        self._put(txn, op.admin, msgspec.structs.replace(record, password_hash=op.password_hash))
        return self._end_all(txn, op.admin, SessionEnd.PASSWORD_CHANGED)

    def create_session(self, txn: Any, op: CreateAdminSession, now_ms: int) -> SessionCreated:
        if len(op.token_hash) != TOKEN_HASH_BYTES:
            raise Invalid(f"a token hash is {TOKEN_HASH_BYTES} bytes (SHA-256)")
        if op.expires_ms <= now_ms:
            raise Invalid("a session must expire after it is created")
        record = self.admin(txn, op.admin)
        if record.disabled:
            raise Unauthenticated("this account is disabled")
        if op.password_hash and op.password_hash != record.password_hash:
            raise Unauthenticated("the password was changed meanwhile; log in again")
        if txn.get(op.token_hash, db=self._dbs.admin_sessions) is not None:
            raise Conflict("a session with this token exists already")
        session = AdminSessionRecord(op.admin, now_ms, op.expires_ms)
        txn.put(op.token_hash, self._encode(session), db=self._dbs.admin_sessions)
        txn.put(pack_id(op.admin) + op.token_hash, b"", db=self._dbs.admin_live_sessions)
        return SessionCreated(op.token_hash, op.expires_ms)

    def _end_all(self, txn: Any, admin: int, reason: SessionEnd) -> AdminSessionsEnded:
        prefix = pack_id(admin)
        hashes = []
        with txn.cursor(db=self._dbs.admin_live_sessions) as cur:
            if cur.set_range(prefix):
                for key in cur.iternext(values=False):
                    if key[:_ID_BYTES] != prefix:
                        break
                    hashes.append(bytes(key[_ID_BYTES:]))
        for token_hash in hashes:
            stored = txn.get(token_hash, db=self._dbs.admin_sessions)
            if stored is not None:
                ended = msgspec.structs.replace(self._session_record(stored), ended=reason.value)
                txn.put(token_hash, self._encode(ended), db=self._dbs.admin_sessions)
            txn.delete(prefix + token_hash, db=self._dbs.admin_live_sessions)
        return AdminSessionsEnded(admin, tuple(hashes))

    def prune(self, txn: Any, max_count: int, now_ms: int) -> tuple[int, bool]:
        """Delete up to `max_count` (0 or more) sessions expired by `now_ms`: (how many, and
        whether expired ones are left). One pass over a small table: admins are few."""
        expired: list[tuple[bytes, int]] = []
        more = False
        with txn.cursor(db=self._dbs.admin_sessions) as cur:
            for key, value in cur:
                record = self._session_record(value)
                if record.expires_ms <= now_ms:
                    if len(expired) == max_count:
                        more = True
                        break
                    expired.append((bytes(key), record.admin))
        for token_hash, admin in expired:
            txn.delete(token_hash, db=self._dbs.admin_sessions)
            txn.delete(pack_id(admin) + token_hash, db=self._dbs.admin_live_sessions)
        return len(expired), more

    # -- reads --------------------------------------------------------------------------------

    def _session_record(self, stored: bytes) -> AdminSessionRecord:
        try:
            return self._decode_session(stored)
        except msgspec.DecodeError as exc:
            raise CorruptData(f"a stored administrator session is damaged: {exc}") from exc

    def session(self, txn: Any, token_hash: bytes, now_ms: int) -> AdminSessionRecord:
        """The live session under `token_hash`; `Unauthenticated` (one message for every
        cause) when there is none, it ended or expired, or its admin is disabled."""
        stored = (txn.get(token_hash, db=self._dbs.admin_sessions)
                  if len(token_hash) == TOKEN_HASH_BYTES else None)
        record = None if stored is None else self._session_record(stored)
        if record is None or record.ended or record.expires_ms <= now_ms:
            raise Unauthenticated(_REFUSED)
        if self.admin(txn, record.admin).disabled:
            raise Unauthenticated(_REFUSED)
        return record


def _check_hash(password_hash: str) -> None:
    if not password_hash.startswith("$argon2id$"):
        raise Invalid("password_hash must be an Argon2id hash from engine.passwords")
