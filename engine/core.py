"""`Engine`: the facade over the hot store, timelines, membership and sync.

Every public method is one LMDB transaction, begun and finished inside the call. Writes go
through `apply_batch` (one transaction, one fsync for any number of operations: group commit);
reads open a snapshot. The engine is synchronous and takes the clock as an argument.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from engine.admins import Admins
from engine.audit import (
    MAX_AUDIT_PAGE_ENTRIES,
    AuditLog,
    AuditPage,
    AuditVerdict,
    check_actor,
    describer,
)
from engine.crypto import AeadSealer, Keyring, NameKeySealer
from engine.epochs import KeyEpoch, KeyEpochs
from engine.errors import (
    Conflict,
    CorruptData,
    HeraldError,
    Invalid,
    KeyUnavailable,
    NotFound,
    Unauthenticated,
    WrongPassword,
)
from engine.hotstore import DEFAULT_MAP_SIZE_BYTES, HotStore
from engine.keys import pack_ids
from engine.limits import Limits
from engine.membership import MemberList, Membership
from engine.message_cache import DEFAULT_MESSAGE_CACHE_BYTES, CachedMessage, MessageCache
from engine.ops import (
    AddKeyEpoch,
    AddMembers,
    Append,
    Audited,
    ChangePassword,
    CreateAdmin,
    CreateAdminSession,
    CreateGroup,
    CreateSession,
    CreateTenant,
    CreateUser,
    CursorMoved,
    Join,
    KeyEpochAdded,
    KeyEpochShredded,
    KeyEpochsRevoked,
    Leave,
    MarkDelivered,
    MarkRead,
    OpenDirect,
    Operation,
    PruneSessions,
    RecordAudit,
    RemoveMember,
    Result,
    RevokeKeyEpochs,
    RevokeSession,
    RevokeUserSessions,
    SessionsPruned,
    SetAdminPassword,
    SetPassword,
    SetRole,
    SetUserDisabled,
    ShredKeyEpoch,
)
from engine.passwords import verify_password
from engine.records import (
    ActorKind,
    AdminRecord,
    AdminSessionRecord,
    AuditAction,
    AuditEntry,
    ConversationKind,
    Message,
    MessageKind,
    PlainSealer,
    RecordSealer,
    Role,
    SessionEnd,
    SessionRecord,
    TenantRecord,
    UserRecord,
    pack_cursor,
)
from engine.reseal import (
    MAX_RESEAL_BATCH,
    MESSAGES_TABLE,
    RESEALED_TABLES,
    Resealer,
    ResealProgress,
)
from engine.sessions import Sessions
from engine.sync import SyncResult, sync
from engine.timeline import Page, Timeline

__all__ = ["ConversationSummary", "Engine"]

# Verified against when the login does not exist, so that a wrong login costs as much as a wrong
# password and timing does not reveal which logins exist.
_DECOY_HASH = (
    "$argon2id$v=19$m=19456,t=2,p=1$aGVyYWxkLWRlY295LXNhbA$"
    "dtDRWReqSUImSSd3cQ4IkRAKACA/c1kHPx04M1fKras"
)


# Ops whose first write is their only seal and that open nothing after it: a missing key
# refuses them before they write, so they need no nested transaction (about 4% of an append's
# time at batch 100, docs/benchmarks.md). Every other op gets one in a sealed store. (An audit
# entry's seal is under the name key, which no expiry or shred can take away: `RecordAudit`
# needs none, nor does an `Audited` op beyond what its own op needs.)
_ATOMIC_ALONE = frozenset({
    Append, MarkRead, MarkDelivered, AddKeyEpoch, ShredKeyEpoch, RevokeKeyEpochs,
    CreateSession, RevokeSession, RevokeUserSessions, PruneSessions, RecordAudit,
    # Sealed, if at all, under the name key, which no expiry takes away; checked before any
    # write.
    CreateAdmin, SetAdminPassword, CreateAdminSession,
})


_NAME_KEY_CHECK = b"name_key_check"


def _is_recall(op: Operation) -> bool:
    """A recall re-seals the block of the message it hides before it seals its own: it needs
    a nested transaction in a sealed store, as any op that seals after its first write."""
    return type(op) is Append and op.kind == MessageKind.RECALL


def _check_name_key(store: HotStore, keyring: Keyring) -> None:
    """A sealed store blinds its login index with a name key, or never: fixed at creation."""
    given = keyring.name_key_check()
    stored = store.meta_setdefault(_NAME_KEY_CHECK, given)
    if stored == given:
        return
    if not stored:
        raise CorruptData(
            f"the store at {store.path} was created without a name key: its login index is "
            f"not blinded. Open it with a keyring without one (blinding it needs a migration)."
        )
    if not given:
        raise KeyUnavailable(
            f"the store at {store.path} blinds its login index: give the keyring the store's "
            f"name key (Keyring(name_key=...))"
        )
    raise KeyUnavailable(f"the keyring's name key is not the one of the store at {store.path}")


class ConversationSummary(msgspec.Struct, frozen=True):
    """A conversation as one of its members sees it."""

    conv: int
    kind: ConversationKind
    title: str
    role: Role
    head: int
    last_ts: int
    read: int
    unread: int
    member_version: int
    member_count: int
    open: bool


class Engine:
    # The sealed tables a shred must not destroy: re-sealed before an epoch can be shredded.
    resealed_tables = RESEALED_TABLES

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = DEFAULT_MAP_SIZE_BYTES,
        limits: Limits | None = None,
        sealer: RecordSealer | None = None,
        keyring: Keyring | None = None,
        message_cache_bytes: int = DEFAULT_MESSAGE_CACHE_BYTES,
    ) -> None:
        """Open the store in directory `path` (created if missing).

        With `keyring`, the store is sealed (encrypted at rest, docs/security.md): its records
        open only with the DEKs installed in the keyring, which `engine.keyring` hands back to
        the appliance. Without one it is plain.

        `message_cache_bytes` bounds the cache of opened messages (engine.message_cache),
        filled by appends and reads; 0 disables it. In a sealed store a cached message is
        served only while its DEK is usable, and dropped when the keyring forgets it.

        Raises `CorruptData` for a store of an unknown format, or a sealed store opened without
        a keyring (a plain one with one), `Invalid` when the directory cannot hold an LMDB
        environment, both `sealer` and `keyring` are given, or the cache size is negative.
        """
        if message_cache_bytes < 0:
            raise Invalid("message_cache_bytes cannot be negative (0 disables the cache)")
        if keyring is not None:
            if sealer is not None:
                raise Invalid("give the engine a keyring or a sealer, not both")
            sealer = AeadSealer(keyring, bulk_tables=(MESSAGES_TABLE.encode(),))
        sealer = sealer or PlainSealer()
        self.limits = limits or Limits()
        self._store = HotStore(path, map_size=map_size, format_version=sealer.store_format)
        self._aead = sealer if isinstance(sealer, AeadSealer) else None
        self._epochs = KeyEpochs(self._store)
        self._resealer = None if self._aead is None else Resealer(self._store, self._aead)
        if self._aead is not None:
            try:
                _check_name_key(self._store, self._aead.keyring)
                with self._store.read() as txn:
                    self._epochs.load_into(txn, self._aead)
            except HeraldError:
                self._store.close()  # let go: the store may be opened again with the right key
                raise
        self._cache: MessageCache | None = None
        keyring = None if self._aead is None else self._aead.keyring
        if message_cache_bytes:
            if keyring is None:
                self._cache = MessageCache(message_cache_bytes, None)
            else:
                self._cache = MessageCache(message_cache_bytes, keyring.bulk_aead)
                keyring.add_forget_listener(self._cache.drop)
        self._timeline = Timeline(self._store, sealer, self.limits, self._cache, keyring)
        if keyring is not None:
            keyring.add_forget_listener(self._timeline.drop_tails)
        blind_login = None if self._aead is None else self._aead.keyring.blind_login
        blind_tenant_name = tenant_sealer = None
        if keyring is not None and keyring.tenant_record_aead() is not None:
            blind_tenant_name, tenant_sealer = keyring.blind_tenant_name, NameKeySealer(keyring)
        self._membership = Membership(
            self._store, sealer, self.limits, self._timeline, blind_login, blind_tenant_name,
            tenant_sealer,
        )
        m = self._membership
        self._sessions = Sessions(self._store, m)
        audit_sealer: RecordSealer = PlainSealer()
        if keyring is not None and keyring.audit_record_aead() is not None:
            audit_sealer = NameKeySealer(keyring, audit=True)
        self._audit = AuditLog(self._store, audit_sealer)
        self._admins = Admins(self._store, tenant_sealer, blind_login)
        self._handlers: dict[type, Callable[[Any, Any, int], Result]] = {
            CreateTenant: m.create_tenant,
            CreateUser: m.create_user,
            CreateGroup: m.create_group,
            OpenDirect: m.open_direct,
            AddMembers: m.add_members,
            RemoveMember: m.remove_member,
            Leave: m.leave,
            Join: m.join,
            SetRole: m.set_role,
            Append: self._timeline.append,
            MarkRead: self._mark_read,
            MarkDelivered: self._mark_delivered,
            CreateSession: self._sessions.create,
            RevokeSession: self._sessions.revoke,
            RevokeUserSessions: self._sessions.revoke_user,
            SetPassword: self._sessions.set_password,
            ChangePassword: self._sessions.change_password,
            SetUserDisabled: self._sessions.set_disabled,
            PruneSessions: self._prune_sessions,
            AddKeyEpoch: self._add_key_epoch,
            ShredKeyEpoch: self._shred_key_epoch,
            RevokeKeyEpochs: self._revoke_key_epochs,
            Audited: self._apply_audited,
            RecordAudit: self._audit.record,
            CreateAdmin: self._admins.create,
            SetAdminPassword: self._admins.set_password,
            CreateAdminSession: self._admins.create_session,
        }

    @property
    def path(self) -> str:
        return str(self._store.path)

    @property
    def keyring(self) -> Keyring | None:
        """The DEKs this engine seals with (the appliance installs them); None when plain."""
        return None if self._aead is None else self._aead.keyring

    @property
    def message_cache(self) -> MessageCache | None:
        """The cache of opened messages (for metrics and tests); None when disabled."""
        return self._cache

    def drop_unreadable_messages(self) -> int:
        """Free the cached plaintexts whose DEK has expired (opened messages, and the last
        blocks appends extend); returns how many messages. A read finds an expired DEK by
        itself (and refuses, and frees that epoch's entries); this lets the appliance free
        them at once, e.g. on the timer that renews its keys."""
        self._timeline.drop_unusable_tails()
        return 0 if self._cache is None else self._cache.drop_unusable()

    def close(self) -> None:
        """Close the store and empty the message cache; later calls raise `EngineClosed`."""
        self._store.close()
        if self._aead is not None:
            self._aead.keyring.remove_forget_listener(self._timeline.drop_tails)
        self._timeline.drop_tails()
        if self._cache is not None:
            if self._aead is not None:
                self._aead.keyring.remove_forget_listener(self._cache.drop)
            self._cache.clear()

    # -- writes -------------------------------------------------------------------------------

    def apply_batch(self, ops: Sequence[Operation], now_ms: int) -> list[Result | HeraldError]:
        """Apply `ops` in order in ONE durable write transaction.

        Returns one entry per op: its result, or the `HeraldError` that refused it. A refused op
        changes nothing (every handler checks before it writes; in a sealed store an op that
        seals or opens records after its first write also runs in a nested transaction, since
        a DEK can expire, a record of a shredded epoch turn up, or an epoch reach its limit of
        seals half-way through it) and does not affect the others. Raises (and commits
        nothing) only when the transaction itself fails: `CapacityExceeded` when the store is
        full, `EngineClosed` after `close`, `InternalError` for an LMDB error that names no
        such situation (e.g. a key over LMDB's size limit; the writer then finds the op that
        caused it by applying the ops one by one), `CorruptData` for a damaged store.

        An `Audited` op appends its audit entry in its own place in this transaction, so a
        refused one leaves none and the entries of the others stay gapless (engine/audit.py).
        """
        handlers = self._handlers
        aead = self._aead
        results: list[Result | HeraldError] = []
        # Messages the batch writes reach the cache only once it commits; a refused op's are
        # cut from the list as its writes vanish (its nested transaction, or it wrote nothing).
        cache = self._cache
        generation = 0 if cache is None else cache.generation
        appended: list[tuple[bytes, int, CachedMessage]] | None = None
        rewritten: list[tuple[bytes, int, int]] | None = None
        with self._store.write() as txn:
            if cache is not None:  # lists per transaction, handed over under LMDB's write lock
                appended = self._timeline.appended = []
                rewritten = self._timeline.rewritten = []
                txn_id = txn.id()
            for op in ops:
                handler = handlers.get(type(op))
                if handler is None:
                    raise TypeError(f"not an engine operation: {op!r}")
                mark = 0 if appended is None else len(appended)
                # The op that does the writing: an Audited's own (inline: this loop is the
                # append path).
                writer = op.op if type(op) is Audited else op
                try:
                    if aead is None or (type(writer) in _ATOMIC_ALONE and not _is_recall(writer)):
                        results.append(handler(txn, op, now_ms))
                    else:
                        with self._store.nested(txn) as child:
                            results.append(handler(child, op, now_ms))
                except HeraldError as refusal:
                    results.append(refusal)
                    if appended is not None:
                        del appended[mark:]
            if aead is not None:
                self._epochs.add_seals(txn, aead.take_pending())
        if cache is not None and appended:
            cache.fill(appended, generation)
        if cache is not None and rewritten:
            # After the fill: a message recalled in the batch that appended it goes too. (A
            # refused recall's entry stays in the list: dropping what is current costs a read.)
            cache.forget_rewritten(rewritten, txn_id)
        if aead is not None:
            self._after_commit(aead.keyring, results)
        return results

    @staticmethod
    def _after_commit(keyring: Keyring, results: list[Result | HeraldError]) -> None:
        """Epoch changes reach the keyring only once they are durable."""
        for result in results:
            if isinstance(result, KeyEpochAdded):
                keyring.set_current(result.tenant, result.epoch)
            elif isinstance(result, KeyEpochShredded):
                keyring.mark_shredded(result.tenant, result.epoch)
            elif isinstance(result, KeyEpochsRevoked):
                for epoch in result.epochs:
                    keyring.mark_revoked(result.tenant, epoch)

    def apply(self, op: Operation, now_ms: int) -> Result:
        """Apply one op in its own transaction; raises its refusal instead of returning it."""
        (result,) = self.apply_batch([op], now_ms)
        if isinstance(result, HeraldError):
            raise result
        return result

    def _prune_sessions(self, txn: Any, op: PruneSessions, now_ms: int) -> SessionsPruned:
        """Users' expired sessions, then administrators' with what is left of `max_count`."""
        users = self._sessions.prune(txn, op, now_ms)
        if users.more:
            return users
        count, more = self._admins.prune(txn, op.max_count - users.count, now_ms)
        return SessionsPruned(users.count + count, more)

    def _apply_audited(self, txn: Any, op: Audited, now_ms: int) -> Result:
        """`op.op` and its audit entry, or neither: every check (the op's kind, the actor, the
        log's head) comes before the op writes, and the append after it cannot fail."""
        inner = op.op
        describe = describer(inner)
        check_actor(op.actor)
        head = self._audit.head(txn)
        result = self._handlers[type(inner)](txn, inner, now_ms)
        self._audit.append(txn, head, now_ms, op.actor, describe(inner, result))
        return result

    def _move_cursor(self, txn: Any, op: MarkRead | MarkDelivered, read: bool) -> CursorMoved:
        self._timeline.check_member(txn, op.tenant, op.conv, op.user)
        head, _ = self._timeline.head(txn, op.tenant, op.conv)
        if op.seq < 0:
            raise Invalid("a cursor cannot be negative")
        delivered, read_seq = self._timeline.cursor(txn, op.tenant, op.user, op.conv)
        seq = min(op.seq, head)  # a cursor never passes the head, and never moves backwards
        delivered = max(delivered, seq)
        if read:
            read_seq = max(read_seq, seq)
            delivered = max(delivered, read_seq)
        txn.put(
            pack_ids(op.tenant, op.user, op.conv), pack_cursor(delivered, read_seq),
            db=self._store.dbs.user_convs,
        )
        return CursorMoved(op.conv, delivered, read_seq)

    def _mark_read(self, txn: Any, op: MarkRead, now_ms: int) -> CursorMoved:
        return self._move_cursor(txn, op, read=True)

    def _mark_delivered(self, txn: Any, op: MarkDelivered, now_ms: int) -> CursorMoved:
        return self._move_cursor(txn, op, read=False)

    def _add_key_epoch(self, txn: Any, op: AddKeyEpoch, now_ms: int) -> KeyEpochAdded:
        self._check_sealed()
        self._membership.tenant(txn, op.tenant)
        return self._epochs.add(txn, op, now_ms)

    def _revoke_key_epochs(self, txn: Any, op: RevokeKeyEpochs, now_ms: int) -> KeyEpochsRevoked:
        self._check_sealed()
        self._membership.tenant(txn, op.tenant)
        return self._epochs.revoke(txn, op)

    def _shred_key_epoch(self, txn: Any, op: ShredKeyEpoch, now_ms: int) -> KeyEpochShredded:
        self._check_sealed()
        assert self._resealer is not None
        resealer = self._resealer

        def nothing_but_messages() -> None:
            # Only messages may die with an epoch: accounts and groups must be moved first.
            held = resealer.first_held(txn, op.tenant, op.epoch)
            if held is not None:
                raise Conflict(
                    f"key epoch {op.epoch} of tenant {op.tenant} still seals records of table "
                    f"{held}, which a shred would destroy: re-seal them under the current "
                    f"epoch first (herald keys reseal --tenant {op.tenant}; herald keys rotate "
                    f"does it)"
                )

        return self._epochs.shred(txn, op, now_ms, nothing_but_messages)

    def reseal_records(
        self, tenant: int, table: str, after_key: bytes = b"",
        max_records: int = MAX_RESEAL_BATCH,
    ) -> ResealProgress:
        """Re-seal one batch of `tenant`'s records in `table` (users, convs, members,
        member_log, or messages) under its current epoch, in one write transaction; continue
        with `after_key=progress.next_key` until it is empty. Records already under the
        current epoch are skipped, so it is idempotent and resumable.

        Raises `Invalid` (plain store, unknown table, bad batch size or key), `NotFound` (no
        such tenant), `KeyUnavailable` (a DEK of the batch or the current one is missing;
        nothing is written).
        """
        self._check_sealed()
        assert self._resealer is not None and self._aead is not None
        with self._store.write() as txn:
            self._membership.tenant(txn, tenant)
            progress = self._resealer.reseal(txn, tenant, table, after_key, max_records)
            self._epochs.add_seals(txn, self._aead.take_pending())
        return progress

    def reseal_pending(self, tenant: int, table: str) -> tuple[int, int]:
        """(records of `tenant` in `table` not yet under its current epoch, all of them):
        the progress of a long re-seal."""
        self._check_sealed()
        assert self._resealer is not None
        with self._store.read() as txn:
            self._membership.tenant(txn, tenant)
            return self._resealer.count_pending(txn, tenant, table)

    def _check_sealed(self) -> None:
        if self._aead is None:
            raise Invalid("this store is plain: key epochs need a sealed one "
                          "(Engine(path, keyring=...))")

    def key_epochs(self, tenant: int) -> list[KeyEpoch]:
        """The key epochs of `tenant`, oldest first (empty in a plain store); `NotFound` when
        the tenant does not exist."""
        with self._store.read() as txn:
            self._membership.tenant(txn, tenant)
            return self._epochs.list(txn, tenant)

    def prune_dedupe(self, tenant: int, now_ms: int) -> int:
        """Forget send-retry records older than the dedupe window; returns how many."""
        with self._store.write() as txn:
            return self._timeline.prune_dedupe(txn, tenant, now_ms)

    # -- tenants and users --------------------------------------------------------------------

    def tenant(self, tenant: int) -> TenantRecord:
        with self._store.read() as txn:
            return self._membership.tenant(txn, tenant)

    def find_tenant(self, name: str) -> int:
        with self._store.read() as txn:
            return self._membership.find_tenant(txn, name)

    def tenants(self) -> list[tuple[int, TenantRecord]]:
        with self._store.read() as txn:
            return self._membership.tenants(txn)

    def user(self, tenant: int, user: int) -> UserRecord:
        with self._store.read() as txn:
            return self._membership.user(txn, tenant, user)

    def find_user(self, tenant: int, login: str) -> int:
        with self._store.read() as txn:
            return self._membership.find_user(txn, tenant, login)

    def users(self, tenant: int) -> list[tuple[int, UserRecord]]:
        with self._store.read() as txn:
            return self._membership.users(txn, tenant)

    def authenticate(self, tenant: int, login: str, password: str) -> int:
        """The user id for `login` and `password` in `tenant`. Slow by design (Argon2id).

        Raises `Unauthenticated` for an unknown login, a wrong password or a disabled account,
        with one message for all three; its `reason` says which (for a log, never a client).
        """
        with self._store.read() as txn:
            try:
                user = self._membership.find_user(txn, tenant, login)
                record: UserRecord | None = self._membership.user(txn, tenant, user)
            except NotFound:
                user, record = 0, None
        phc = record.password_hash if record is not None else _DECOY_HASH
        matches = verify_password(phc, password)
        if record is None:
            reason = "unknown login"
        elif not matches:
            reason = "wrong password"
        elif record.disabled:
            reason = "disabled"
        else:
            return user
        raise Unauthenticated("wrong login or password", reason=reason)

    def check_password(self, tenant: int, user: int, password: str) -> str:
        """Verify the current password of a signed-in user before a change of it; returns the
        stored hash it was verified against, for `ChangePassword.checked_hash`. Slow by design
        (Argon2id). Raises `WrongPassword` when it does not match, `NotFound` for an unknown
        user."""
        with self._store.read() as txn:
            stored = self._membership.user(txn, tenant, user).password_hash
        if not verify_password(stored, password):
            raise WrongPassword("the current password is wrong; nothing was changed")
        return stored

    # -- sessions -----------------------------------------------------------------------------

    def session(self, token_hash: bytes, now_ms: int) -> SessionRecord:
        """The live session stored under `token_hash` (the SHA-256 of its token).

        Raises `Unauthenticated` (one message for all) when there is none, or it was revoked,
        or it expired by `now_ms`.
        """
        with self._store.read() as txn:
            return self._sessions.session(txn, token_hash, now_ms)

    def sessions(self, tenant: int, user: int) -> list[tuple[bytes, SessionRecord]]:
        """Every session of `user` not revoked (expired ones included, until pruned), as
        (token hash, record). Raises `NotFound` for an unknown user."""
        with self._store.read() as txn:
            self._membership.user(txn, tenant, user)
            return self._sessions.sessions(txn, tenant, user)

    def ended_sessions(self, token_hashes: list[bytes], now_ms: int) -> dict[bytes, SessionEnd]:
        """Which of `token_hashes` are no longer live, and why: one snapshot, one get each (the
        server's periodic check of its connected sessions)."""
        with self._store.read() as txn:
            return self._sessions.ended(txn, token_hashes, now_ms)

    # -- administrators of the appliance ------------------------------------------------------

    def admin(self, admin: int) -> AdminRecord:
        """Raises `NotFound` for an unknown administrator."""
        with self._store.read() as txn:
            return self._admins.admin(txn, admin)

    def find_admin(self, login: str) -> int:
        """Raises `NotFound` when no administrator has `login`."""
        with self._store.read() as txn:
            return self._admins.find(txn, login)

    def admins(self) -> list[tuple[int, AdminRecord]]:
        with self._store.read() as txn:
            return self._admins.admins(txn)

    def authenticate_admin(self, login: str, password: str) -> tuple[int, str]:
        """(the administrator's id, the stored hash the password was verified against, for
        `CreateAdminSession.password_hash`). Slow by design (Argon2id).

        Raises `Unauthenticated` for an unknown login, a wrong password or a disabled account,
        with one message for all three; its `reason` says which (for a log, never a client).
        """
        with self._store.read() as txn:
            try:
                admin = self._admins.find(txn, login)
                record: AdminRecord | None = self._admins.admin(txn, admin)
            except NotFound:
                admin, record = 0, None
        phc = record.password_hash if record is not None else _DECOY_HASH
        matches = verify_password(phc, password)
        if record is None:
            reason = "unknown login"
        elif not matches:
            reason = "wrong password"
        elif record.disabled:
            reason = "disabled"
        else:
            return admin, record.password_hash
        raise Unauthenticated("wrong login or password", reason=reason)

    def admin_session(self, token_hash: bytes, now_ms: int) -> AdminSessionRecord:
        """The live administrator's session under `token_hash`. Raises `Unauthenticated` (one
        message for all) when there is none (a user's token is none: it is in another table),
        it ended or expired by `now_ms`, or its administrator is disabled."""
        with self._store.read() as txn:
            return self._admins.session(txn, token_hash, now_ms)

    # -- conversations ------------------------------------------------------------------------

    def conversations(self, tenant: int, user: int) -> list[ConversationSummary]:
        """Every conversation of `user`, most recent activity first."""
        with self._store.read() as txn:
            result = sync(self._store, self._timeline, txn, tenant, user, None, 0, 0, True)
            return [self._summary(txn, tenant, user, c.conv) for c in result.conversations]

    def conversation(self, tenant: int, user: int, conv: int) -> ConversationSummary:
        """One conversation of `user`; otherwise `NotMember` for an open group, `NotFound`
        for any other (as for one that does not exist)."""
        with self._store.read() as txn:
            return self._summary(txn, tenant, user, conv)

    def _summary(self, txn: Any, tenant: int, user: int, conv: int) -> ConversationSummary:
        member = self._timeline.member(txn, tenant, conv, user)
        record = self._membership.conversation(txn, tenant, conv)
        head, last_ts = self._timeline.head(txn, tenant, conv)
        _, read = self._timeline.cursor(txn, tenant, user, conv)
        return ConversationSummary(
            conv, record.kind, record.title, member.role, head, last_ts, read, head - read,
            record.member_version, record.member_count, record.open,
        )

    def members(self, tenant: int, user: int, conv: int, since: int = 0) -> MemberList:
        """The member list of `conv` as `user` may see it: whole, or the delta since a version."""
        with self._store.read() as txn:
            self._timeline.check_member(txn, tenant, conv, user)
            return self._membership.members_since(txn, tenant, conv, since)

    def member_ids(self, tenant: int, conv: int) -> list[int]:
        """Every member of `conv`, for fanout. No authorization: the caller is the server."""
        with self._store.read() as txn:
            listing = self._membership.members_since(txn, tenant, conv, 0)
            return [user for user, _ in listing.changed]

    # -- reading timelines --------------------------------------------------------------------

    def _check_limit(self, limit: int) -> None:
        if not 1 <= limit <= self.limits.max_page_messages:
            raise Invalid(f"limit must be 1 to {self.limits.max_page_messages}")

    def page_after(
        self, tenant: int, user: int, conv: int, after: int, limit: int,
        max_bytes: int | None = None,
    ) -> Page:
        """Up to `limit` messages with seq > `after`, ascending; `more` if newer ones exist.
        `max_bytes` also bounds their stored size (at least one message is returned)."""
        self._check_limit(limit)
        with self._store.read() as txn:
            self._timeline.check_member(txn, tenant, conv, user)
            return self._timeline.page_after(txn, tenant, conv, max(0, after), limit, max_bytes)

    def page_before(
        self, tenant: int, user: int, conv: int, before: int | None, limit: int,
        max_bytes: int | None = None,
    ) -> Page:
        """Up to `limit` messages with seq < `before` (None: the latest), ascending;
        `more` if older ones exist. `max_bytes` as in `page_after`, keeping the newest."""
        self._check_limit(limit)
        with self._store.read() as txn:
            self._timeline.check_member(txn, tenant, conv, user)
            end = (2**63) if before is None else before
            return self._timeline.page_before(txn, tenant, conv, end, limit, max_bytes)

    def messages(self, tenant: int, conv: int, first: int, last: int) -> list[Message]:
        """Messages first..last of `conv`, for the server's own fanout. No authorization."""
        with self._store.read() as txn:
            return self._timeline.scan(txn, tenant, conv, first, last)

    def conversation_version(self, tenant: int, conv: int) -> int:
        """The member-list version of `conv`, for the server's member cache. No authorization."""
        with self._store.read() as txn:
            return self._membership.conversation(txn, tenant, conv).member_version

    def sync(
        self,
        tenant: int,
        user: int,
        known: Mapping[int, int] | None = None,
        *,
        limit_per_conv: int = 50,
        max_messages: int = 1000,
        everything: bool = False,
        max_bytes: int | None = None,
    ) -> SyncResult:
        """What `user` is missing, per conversation, newest activity first (see engine.sync)."""
        self._check_limit(limit_per_conv)
        if max_messages < 0:
            raise Invalid("max_messages cannot be negative")
        with self._store.read() as txn:
            self._membership.user(txn, tenant, user)
            return sync(
                self._store, self._timeline, txn, tenant, user, known, limit_per_conv,
                max_messages, everything, max_bytes,
            )

    # -- the audit log ------------------------------------------------------------------------

    def audit_entries(
        self, after_seq: int = 0, limit: int = 100, *,
        action: AuditAction | None = None, tenant: int | None = None,
        actor_kind: ActorKind | None = None, actor_tenant: int | None = None,
        actor_id: int | None = None, actor_name: str | None = None,
        since_ms: int | None = None, until_ms: int | None = None,
    ) -> AuditPage:
        """Audit entries with seq > `after_seq`, ascending, that match every filter given
        (`tenant`: the tenant an entry is about; the actor's kind, tenant, id or name; time in
        `since_ms` <= time_ms < `until_ms`). At most `limit` entries, and at most
        `engine.audit.MAX_AUDIT_SCAN_ENTRIES` read: go on from `scanned_to` while `more`.

        Raises `Invalid` for a limit outside 1..1000 or a negative `after_seq`, `CorruptData`
        for an entry that fails to open (`verify_audit` says more), `KeyUnavailable` for a
        sealed store opened without its name key (it has no such store open).
        """
        if not 1 <= limit <= MAX_AUDIT_PAGE_ENTRIES:
            raise Invalid(f"limit must be 1 to {MAX_AUDIT_PAGE_ENTRIES}")
        if after_seq < 0:
            raise Invalid("after_seq cannot be negative")

        def match(entry: AuditEntry) -> bool:
            actor = entry.actor
            return (
                (action is None or entry.action == action)
                and (tenant is None or entry.tenant == tenant)
                and (actor_kind is None or actor.kind == actor_kind)
                and (actor_tenant is None or actor.tenant == actor_tenant)
                and (actor_id is None or actor.id == actor_id)
                and (actor_name is None or actor.name == actor_name)
                and (since_ms is None or entry.time_ms >= since_ms)
                and (until_ms is None or entry.time_ms < until_ms)
            )

        with self._store.read() as txn:
            return self._audit.search(txn, after_seq, limit, match)

    def verify_audit(self) -> AuditVerdict:
        """Check the whole audit log in one snapshot: every entry opens, matches its hash,
        sits under its own seq, follows its predecessor's hash, with no gap from 1, and the
        last is the one the head names. Returns the count, or the first bad seq and why
        (`AuditVerdict`); raises only `EngineClosed`. Reads every entry: for an administrator's
        check or an offline command, not for every request."""
        with self._store.read() as txn:
            return self._audit.verify(txn)

    def stats(self) -> dict[str, int]:
        """Entry counts per table and bytes used: for `herald serve`'s banner and metrics."""
        return self._store.stat()

    def store_usage(self) -> tuple[int, int]:
        """(bytes of the store in use, bytes of its memory map: the most it may grow to),
        read from LMDB's header: cheap, unlike `stats`. Raises `EngineClosed` after `close`."""
        return self._store.usage()
