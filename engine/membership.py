"""Tenants, users, conversations and member lists, with the index user -> conversations.

Membership is written when it changes, never per message: adding a member writes its member
record, its entry in the user's conversation index (with a cursor at the current head, so the
history it joins into does not count as unread), one member-log entry for delta fetches, and a
system message in the timeline.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec

from engine.errors import Conflict, Forbidden, Invalid, NotFound, NotMember
from engine.hotstore import HotStore
from engine.keys import pack_id, pack_ids, unpack_id, unpack_last_id
from engine.limits import Limits
from engine.ops import (
    AddMembers,
    ConversationOpened,
    CreateGroup,
    CreateTenant,
    CreateUser,
    Join,
    Leave,
    MembershipChanged,
    OpenDirect,
    RemoveMember,
    SetRole,
    TenantCreated,
    UserCreated,
)
from engine.records import (
    ConversationKind,
    ConversationRecord,
    MemberLogEntry,
    MemberRecord,
    PlainSealer,
    RecordSealer,
    Role,
    TenantRecord,
    UserRecord,
    pack_cursor,
    pack_head,
)
from engine.timeline import Timeline

__all__ = ["MemberList", "Membership"]

T = TypeVar("T")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class MemberList(msgspec.Struct, frozen=True):
    """A conversation's members at `version`.

    For a delta (`full` False) `changed` holds users whose role changed or who joined since the
    client's version and `removed` those who left; for a full list `changed` is everyone.
    """

    conv: int
    version: int
    full: bool
    changed: list[tuple[int, Role]]
    removed: list[int]


class Membership:
    def __init__(
        self, store: HotStore, sealer: RecordSealer, limits: Limits, timeline: Timeline,
        blind_login: Callable[[bytes, bytes], bytes] | None = None,
        blind_tenant_name: Callable[[bytes], bytes] | None = None,
        tenant_sealer: RecordSealer | None = None,
    ) -> None:
        """`blind_login(tenant, login)` names a login in the `user_logins` index, and
        `blind_tenant_name(name)` a tenant in `tenant_names` (a sealed store's keyring HMACs
        them); without them the name is the key. `tenant_sealer` seals tenant records (a
        sealed store with a name key: engine.crypto.NameKeySealer); without it they are plain,
        as the appliance lists tenants before it can unwrap any DEK."""
        self._blind_login = blind_login
        self._blind_tenant_name = blind_tenant_name
        self._store = store
        self._dbs = store.dbs
        self._limits = limits
        # Each record table with the sealer of its values and its name, which the sealer binds
        # each record to. Keyed by the handle's identity: `store.dbs` holds every handle for
        # the store's life.
        self._sealers: dict[int, tuple[bytes, RecordSealer]] = {
            id(getattr(self._dbs, name)): (name.encode(), sealer)
            for name in ("users", "convs", "members", "member_log")
        }
        self._sealers[id(self._dbs.tenants)] = (b"tenants", tenant_sealer or PlainSealer())
        self._timeline = timeline
        self._encode = msgspec.msgpack.Encoder().encode
        self._decoders: dict[type, Any] = {}

    # -- record helpers -----------------------------------------------------------------------

    def _put(self, txn: Any, db: Any, key: bytes, record: msgspec.Struct) -> None:
        table, sealer = self._sealers[id(db)]
        txn.put(key, sealer.seal(table, key, self._encode(record)), db=db)

    def _get(self, txn: Any, db: Any, key: bytes, kind: type[T]) -> T | None:
        found = txn.get(key, db=db)
        if found is None:
            return None
        decoder = self._decoders.get(kind)
        if decoder is None:
            decoder = self._decoders[kind] = msgspec.msgpack.Decoder(kind)
        table, sealer = self._sealers[id(db)]
        return decoder.decode(sealer.open(table, key, found))  # type: ignore[no-any-return]

    def _login_key(self, tenant: int, login: str) -> bytes:
        packed = pack_id(tenant)
        if self._blind_login is None:
            return packed + login.encode()
        return packed + self._blind_login(packed, login.encode())

    def _check_name(self, what: str, value: str) -> None:
        if not 1 <= len(value) <= self._limits.max_name_chars or not _NAME_RE.fullmatch(value):
            raise Invalid(
                f"{what} must be 1 to {self._limits.max_name_chars} characters of a-z, 0-9, "
                f"'.', '_' or '-', starting with a letter or digit"
            )

    # -- tenants and users --------------------------------------------------------------------

    def create_tenant(self, txn: Any, op: CreateTenant, now_ms: int) -> TenantCreated:
        self._check_name("a tenant name", op.name)
        name_key = self._tenant_name_key(op.name)
        if txn.get(name_key, db=self._dbs.tenant_names) is not None:
            raise Conflict(f"a tenant named {op.name!r} exists already")
        tenant = self._store.next_id(txn, b"tenant")
        self._put(txn, self._dbs.tenants, pack_id(tenant), TenantRecord(op.name, now_ms))
        txn.put(name_key, pack_id(tenant), db=self._dbs.tenant_names)
        return TenantCreated(tenant)

    def _tenant_name_key(self, name: str) -> bytes:
        if self._blind_tenant_name is None:
            return name.encode()
        return self._blind_tenant_name(name.encode())

    def tenant(self, txn: Any, tenant: int) -> TenantRecord:
        record = self._get(txn, self._dbs.tenants, pack_id(tenant), TenantRecord)
        if record is None:
            raise NotFound(f"tenant {tenant} does not exist")
        return record

    def find_tenant(self, txn: Any, name: str) -> int:
        # No tenant has an empty name, and LMDB refuses an empty key (a plain store's key is
        # the name itself) with an error that is no refusal.
        found = txn.get(self._tenant_name_key(name), db=self._dbs.tenant_names) if name else None
        if found is None:
            raise NotFound(f"no tenant is named {name!r}")
        return unpack_id(found)

    def tenants(self, txn: Any) -> list[tuple[int, TenantRecord]]:
        out = []
        for key, _ in txn.cursor(db=self._dbs.tenants):
            tenant = unpack_id(key)
            out.append((tenant, self.tenant(txn, tenant)))
        return out

    def create_user(self, txn: Any, op: CreateUser, now_ms: int) -> UserCreated:
        self.tenant(txn, op.tenant)
        self._check_name("a login", op.login)
        if not 1 <= len(op.display_name) <= self._limits.max_title_chars:
            raise Invalid(f"a display name must be 1 to {self._limits.max_title_chars} characters")
        if not op.password_hash.startswith("$argon2id$"):
            raise Invalid("password_hash must be an Argon2id hash from engine.passwords")
        login_key = self._login_key(op.tenant, op.login)
        if txn.get(login_key, db=self._dbs.user_logins) is not None:
            raise Conflict(f"the login {op.login!r} is taken in this tenant")
        user = self._store.next_id(txn, b"user", op.tenant)
        record = UserRecord(op.login, op.display_name, op.password_hash, now_ms)
        self._put(txn, self._dbs.users, pack_ids(op.tenant, user), record)
        txn.put(login_key, pack_id(user), db=self._dbs.user_logins)
        return UserCreated(user)

    def user(self, txn: Any, tenant: int, user: int) -> UserRecord:
        record = self._get(txn, self._dbs.users, pack_ids(tenant, user), UserRecord)
        if record is None:
            raise NotFound(f"user {user} does not exist in this tenant")
        return record

    def replace_user(self, txn: Any, tenant: int, user: int, record: UserRecord) -> None:
        """Overwrite an existing user's record (its password hash or disabled flag)."""
        self.user(txn, tenant, user)
        self._put(txn, self._dbs.users, pack_ids(tenant, user), record)

    def find_user(self, txn: Any, tenant: int, login: str) -> int:
        found = txn.get(self._login_key(tenant, login), db=self._dbs.user_logins)
        if found is None:
            raise NotFound(f"no user has the login {login!r} in this tenant")
        return unpack_id(found)

    def users(self, txn: Any, tenant: int) -> list[tuple[int, UserRecord]]:
        prefix = pack_id(tenant)
        out = []
        with txn.cursor(db=self._dbs.users) as cur:
            if cur.set_range(prefix):
                for key, _ in cur:
                    if key[:8] != prefix:
                        break
                    user = unpack_last_id(key)
                    out.append((user, self.user(txn, tenant, user)))
        return out

    # -- conversations ------------------------------------------------------------------------

    def conversation(self, txn: Any, tenant: int, conv: int) -> ConversationRecord:
        record = self._get(txn, self._dbs.convs, pack_ids(tenant, conv), ConversationRecord)
        if record is None:
            raise NotFound(f"conversation {conv} does not exist")
        return record

    def create_group(self, txn: Any, op: CreateGroup, now_ms: int) -> ConversationOpened:
        if not 1 <= len(op.title) <= self._limits.max_title_chars:
            raise Invalid(f"a group title must be 1 to {self._limits.max_title_chars} characters")
        others = tuple(dict.fromkeys(u for u in op.members if u != op.creator))
        if len(others) + 1 > self._limits.max_group_members:
            raise Invalid(f"a group may have at most {self._limits.max_group_members} members")
        for user in (op.creator, *others):
            self.user(txn, op.tenant, user)
        conv = self._store.next_id(txn, b"conv", op.tenant)
        record = ConversationRecord(
            ConversationKind.GROUP, op.title, op.creator, now_ms, member_version=0,
            member_count=0, open=op.open,
        )
        txn.put(pack_ids(op.tenant, conv), pack_head(0, now_ms), db=self._dbs.heads)
        changes = [(op.creator, Role.OWNER)] + [(u, Role.MEMBER) for u in others]
        self._apply_changes(
            txn, op.tenant, conv, record, op.creator, "group_created", changes, now_ms
        )
        return ConversationOpened(conv, created=True)

    def open_direct(self, txn: Any, op: OpenDirect, now_ms: int) -> ConversationOpened:
        if op.user == op.peer:
            raise Invalid("a direct conversation needs two different users")
        self.user(txn, op.tenant, op.user)
        self.user(txn, op.tenant, op.peer)
        pair_key = pack_ids(op.tenant, min(op.user, op.peer), max(op.user, op.peer))
        found = txn.get(pair_key, db=self._dbs.directs)
        if found is not None:
            return ConversationOpened(unpack_id(found), created=False)
        conv = self._store.next_id(txn, b"conv", op.tenant)
        txn.put(pair_key, pack_id(conv), db=self._dbs.directs)
        record = ConversationRecord(
            ConversationKind.DIRECT, "", op.user, now_ms, member_version=0, member_count=0
        )
        txn.put(pack_ids(op.tenant, conv), pack_head(0, now_ms), db=self._dbs.heads)
        changes = [(op.user, Role.MEMBER), (op.peer, Role.MEMBER)]
        self._apply_changes(
            txn, op.tenant, conv, record, op.user, "direct_opened", changes, now_ms
        )
        return ConversationOpened(conv, created=True)

    # -- member changes -----------------------------------------------------------------------

    def _seen_by(
        self, txn: Any, tenant: int, conv: int, user: int
    ) -> tuple[ConversationRecord, Role | None]:
        """The conversation and `user`'s role in it (None: not a member), when `user` may see
        it: as a member, or as anyone of the tenant for an open group, which they may join.
        Any other conversation is refused with `NotFound`, exactly as one that does not exist,
        so that no refusal tells a user what it may not see."""
        record = self.conversation(txn, tenant, conv)
        role = self._role(txn, tenant, conv, user)
        if role is None and not record.seen_by_everyone:
            raise NotFound(f"conversation {conv} does not exist")
        return record, role

    def _group_seen_by(
        self, txn: Any, tenant: int, conv: int, user: int
    ) -> tuple[ConversationRecord, Role | None]:
        """`_seen_by`, for a change of members: `Invalid` for a direct conversation (which
        only its members may see: an open group is never direct)."""
        record, role = self._seen_by(txn, tenant, conv, user)
        if record.kind is not ConversationKind.GROUP:
            raise Invalid("the members of a direct conversation cannot change")
        return record, role

    def _role(self, txn: Any, tenant: int, conv: int, user: int) -> Role | None:
        found = self._get(txn, self._dbs.members, pack_ids(tenant, conv, user), MemberRecord)
        return None if found is None else found.role

    def add_members(self, txn: Any, op: AddMembers, now_ms: int) -> MembershipChanged:
        record, actor_role = self._group_seen_by(txn, op.tenant, op.conv, op.actor)
        if actor_role is None:
            raise NotMember(f"user {op.actor} is not a member of conversation {op.conv}")
        if actor_role is Role.MEMBER:
            raise Forbidden("only the owner or an admin may add members")
        if op.role is Role.OWNER or (op.role is Role.ADMIN and actor_role is not Role.OWNER):
            raise Forbidden("only the owner may appoint admins; a group has one owner")
        users = tuple(dict.fromkeys(op.users))
        if not users:
            raise Invalid("name at least one user to add")
        new = [u for u in users if self._role(txn, op.tenant, op.conv, u) is None]
        for user in new:
            self.user(txn, op.tenant, user)
        if record.member_count + len(new) > self._limits.max_group_members:
            raise Invalid(f"a group may have at most {self._limits.max_group_members} members")
        if not new:
            raise Conflict("every user named is a member already")
        changes = [(u, op.role) for u in new]
        return self._apply_changes(
            txn, op.tenant, op.conv, record, op.actor, "members_added", changes, now_ms
        )

    def join(self, txn: Any, op: Join, now_ms: int) -> MembershipChanged:
        record, role = self._group_seen_by(txn, op.tenant, op.conv, op.user)
        if role is not None:
            raise Conflict("you are a member already")
        self.user(txn, op.tenant, op.user)
        if record.member_count + 1 > self._limits.max_group_members:
            raise Invalid(f"a group may have at most {self._limits.max_group_members} members")
        changes = [(op.user, Role.MEMBER)]
        return self._apply_changes(
            txn, op.tenant, op.conv, record, op.user, "member_joined", changes, now_ms
        )

    def remove_member(self, txn: Any, op: RemoveMember, now_ms: int) -> MembershipChanged:
        record, actor_role = self._group_seen_by(txn, op.tenant, op.conv, op.actor)
        if actor_role is None:
            raise NotMember(f"user {op.actor} is not a member of conversation {op.conv}")
        target_role = self._role(txn, op.tenant, op.conv, op.user)
        if target_role is None:
            raise NotMember(f"user {op.user} is not a member of conversation {op.conv}")
        if op.user == op.actor:
            raise Invalid("to remove yourself, leave the conversation")
        if actor_role is Role.MEMBER or (
            actor_role is Role.ADMIN and target_role is not Role.MEMBER
        ):
            raise Forbidden("admins may remove members; only the owner may remove an admin")
        changes: list[tuple[int, Role | None]] = [(op.user, None)]
        return self._apply_changes(
            txn, op.tenant, op.conv, record, op.actor, "member_removed", changes, now_ms
        )

    def leave(self, txn: Any, op: Leave, now_ms: int) -> MembershipChanged:
        record, role = self._group_seen_by(txn, op.tenant, op.conv, op.user)
        if role is None:
            raise NotMember(f"user {op.user} is not a member of conversation {op.conv}")
        changes: list[tuple[int, Role | None]] = [(op.user, None)]
        if role is Role.OWNER:
            heir = self._heir(txn, op.tenant, op.conv, op.user)
            if heir is not None:
                changes.append((heir, Role.OWNER))
        return self._apply_changes(
            txn, op.tenant, op.conv, record, op.user, "member_left", changes, now_ms
        )

    def set_role(self, txn: Any, op: SetRole, now_ms: int) -> MembershipChanged:
        record, actor_role = self._group_seen_by(txn, op.tenant, op.conv, op.actor)
        if actor_role is None:
            raise NotMember(f"user {op.actor} is not a member of conversation {op.conv}")
        if actor_role is not Role.OWNER:
            raise Forbidden("only the owner may change roles")
        target_role = self._role(txn, op.tenant, op.conv, op.user)
        if target_role is None:
            raise NotMember(f"user {op.user} is not a member of conversation {op.conv}")
        if op.user == op.actor:
            raise Invalid("the owner hands over ownership by making another member owner")
        if target_role is op.role:
            raise Conflict(f"user {op.user} is {op.role} already")
        changes: list[tuple[int, Role | None]] = [(op.user, op.role)]
        if op.role is Role.OWNER:
            changes.append((op.actor, Role.ADMIN))  # one owner: the old one steps down to admin
        return self._apply_changes(
            txn, op.tenant, op.conv, record, op.actor, "role_changed", changes, now_ms
        )

    def _heir(self, txn: Any, tenant: int, conv: int, leaving: int) -> int | None:
        """Who inherits ownership: the longest-standing admin, else the longest-standing member."""
        best: dict[Role, tuple[int, int]] = {}
        for user, member in self._scan_members(txn, tenant, conv):
            if user == leaving or member.role is Role.OWNER:
                continue
            candidate = (member.joined_ms, user)
            if member.role not in best or candidate < best[member.role]:
                best[member.role] = candidate
        for role in (Role.ADMIN, Role.MEMBER):
            if role in best:
                return best[role][1]
        return None

    def _apply_changes(
        self, txn: Any, tenant: int, conv: int, record: ConversationRecord, actor: int,
        event: str, changes: Sequence[tuple[int, Role | None]], now_ms: int,
    ) -> MembershipChanged:
        """Write validated member changes: member records, user index, log, version, event."""
        dbs = self._dbs
        version = record.member_version + 1
        count = record.member_count
        head_seq, _ = self._timeline.head(txn, tenant, conv)
        system_seq = head_seq + 1  # the event below; new members start with it read
        for user, role in changes:
            member_key = pack_ids(tenant, conv, user)
            index_key = pack_ids(tenant, user, conv)
            existing = self._get(txn, dbs.members, member_key, MemberRecord)
            if role is None:
                txn.delete(member_key, db=dbs.members)
                txn.delete(index_key, db=dbs.user_convs)
                count -= 1
            else:
                joined = now_ms if existing is None else existing.joined_ms
                added_by = actor if existing is None else existing.added_by
                self._put(txn, dbs.members, member_key, MemberRecord(role, joined, added_by))
                if existing is None:
                    txn.put(index_key, pack_cursor(system_seq, system_seq), db=dbs.user_convs)
                    count += 1
            log_key = pack_ids(tenant, conv, version, user)
            self._put(txn, dbs.member_log, log_key, MemberLogEntry(user, role))
        users = tuple(user for user, _ in changes)
        seq = self._timeline.append_system(txn, tenant, conv, actor, event, users, now_ms)
        actor_key = pack_ids(tenant, actor, conv)
        if txn.get(actor_key, db=dbs.user_convs) is not None:
            # Like a sender's own message, the actor's own change is not unread for it.
            txn.put(actor_key, pack_cursor(seq, seq), db=dbs.user_convs)
        updated = msgspec.structs.replace(record, member_version=version, member_count=count)
        self._put(txn, dbs.convs, pack_ids(tenant, conv), updated)
        return MembershipChanged(conv, version, seq, users)

    # -- reads --------------------------------------------------------------------------------

    def _scan_members(self, txn: Any, tenant: int, conv: int) -> list[tuple[int, MemberRecord]]:
        prefix = pack_ids(tenant, conv)
        out = []
        with txn.cursor(db=self._dbs.members) as cur:
            if cur.set_range(prefix):
                for key, _ in cur:
                    if key[:16] != prefix:
                        break
                    user = unpack_last_id(key)
                    found = self._get(txn, self._dbs.members, key, MemberRecord)
                    assert found is not None
                    out.append((user, found))
        return out

    def members_since(self, txn: Any, tenant: int, conv: int, since: int) -> MemberList:
        """The member list as a delta from version `since`, or whole when `since` is 0."""
        record = self.conversation(txn, tenant, conv)
        if since <= 0 or since > record.member_version:
            everyone = [(user, m.role) for user, m in self._scan_members(txn, tenant, conv)]
            return MemberList(conv, record.member_version, True, everyone, [])
        latest: dict[int, Role | None] = {}
        start = pack_ids(tenant, conv, since + 1)
        prefix = pack_ids(tenant, conv)
        with txn.cursor(db=self._dbs.member_log) as cur:
            if cur.set_range(start):
                for key, _ in cur:
                    if key[:16] != prefix:
                        break
                    entry = self._get(txn, self._dbs.member_log, key, MemberLogEntry)
                    assert entry is not None
                    latest[entry.user] = entry.role
        changed = [(u, r) for u, r in latest.items() if r is not None]
        removed = [u for u, r in latest.items() if r is None]
        return MemberList(conv, record.member_version, False, changed, removed)
