"""Requests to engine calls: authorization context, reads inline, writes through the writer.

Every request except login, resume and ping needs a logged-in connection; the engine then checks
membership and roles on every call with the connection's own tenant and user, never with ids
the client claims for itself.

Passwords (login, and a user's change of their own) are checked with Argon2id in worker
threads through the login gate (appliance/gateway/login_gate.py: one attempt at a time per
account and address, each after its backoff delay); they never reach a log. A refused login is
logged with its reason, while the client gets one answer for every reason.

Security events go to the audit log through the writer (docs/security.md "The appliance's
audit log"): a login's entry in the transaction of its session, a password change's and a
logout's in theirs (wrapped in `Audited`), and each failed password check, and the failure
that locks an account, as a `RecordAudit` written before the refusal is answered. Only checks
write: a request refused before its password is checked writes nothing, so the entries come
no faster than the login gate lets checks run. What a client typed as a tenant or a login
that names nobody never reaches an entry (it may be a password typed in the wrong field).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from appliance.gateway import tokens
from appliance.gateway.login_gate import Attempt, LoginGate
from appliance.gateway.wire import (
    convs_data,
    error_frame,
    history_data,
    members_data,
    not_logged_in,
    retry_later,
    sync_data,
)
from appliance.protocol.frames import (
    OPEN_REQUESTS,
    AddRequest,
    ChangeData,
    ClientFrame,
    ConvData,
    ConvsRequest,
    CreateGroupRequest,
    HistoryRequest,
    JoinRequest,
    KickRequest,
    LeaveRequest,
    LoginData,
    LoginRequest,
    LogoutRequest,
    LookupData,
    LookupRequest,
    MembersRequest,
    OkData,
    OpenDirectRequest,
    PasswordData,
    PasswordRequest,
    PingRequest,
    ReadData,
    ReadRequest,
    Reply,
    ResumeRequest,
    SendData,
    SendRequest,
    SyncRequest,
    UserData,
    UsersData,
    UsersRequest,
    encode_frame,
)
from engine import (
    ActorKind,
    AddMembers,
    Append,
    Appended,
    AuditAction,
    AuditActor,
    Audited,
    AuditOutcome,
    CapacityExceeded,
    ChangePassword,
    ConversationOpened,
    CreateGroup,
    CreateSession,
    CursorMoved,
    EngineClosed,
    HeraldError,
    InternalError,
    Invalid,
    Join,
    KeyNotInstalled,
    Leave,
    MarkRead,
    MembershipChanged,
    MessageKind,
    NotFound,
    OpenDirect,
    Operation,
    PasswordChanged,
    RecordAudit,
    RemoveMember,
    Result,
    RevokeSession,
    RevokeUserSessions,
    Role,
    SessionEnd,
    Unauthenticated,
    WrongPassword,
    check_password_policy,
    hash_password,
)

if TYPE_CHECKING:
    from appliance.gateway.connection import Connection
    from appliance.gateway.server import Services

__all__ = ["Router"]

log = logging.getLogger("herald.router")

BUSY_RETRY_AFTER_S = 0.5
KEY_FETCH_RETRY_AFTER_S = 0.2  # an unwrap is one escrow round trip
MAX_USERS_PER_REQUEST = 500
MAX_DEVICE_CHARS = 64
MAX_LOGINS_NAMED = 5  # unknown logins a refusal names, each cut to MAX_NAME_ECHO_CHARS
MAX_NAME_ECHO_CHARS = 64
MAX_LOGGED_CHARS = 64  # of a tenant name or login typed at a login, in the log
MAX_ID = 2**64 - 1  # ids are packed as unsigned 64-bit integers into LMDB keys
_ID_FIELDS = ("conv", "peer", "user")
_ID_LIST_FIELDS = ("users", "members", "mentions")

Handler = Callable[["Connection", Any], Awaitable[Any] | Any]


def _check_ids(request: ClientFrame) -> None:
    """Raise `Invalid` for a conversation or user id that no store key can hold (JSON carries
    any integer; packing a negative or a 65-bit one into a key is not a refusal but a crash)."""
    ids = [getattr(request, name) for name in _ID_FIELDS if hasattr(request, name)]
    for name in _ID_LIST_FIELDS:
        ids.extend(getattr(request, name, ()))
    for value in ids:
        if not 0 <= value <= MAX_ID:
            raise Invalid(f"{value} is not an id: ids are integers from 0 to {MAX_ID}")


def _host(conn: Connection) -> str:
    """The client's address without its port: what the login backoff counts failures by."""
    return conn.address.rpartition(":")[0] or conn.address


def _no_such_logins(logins: list[str]) -> NotFound:
    """The refusal of a request naming logins that are no user of the caller's tenant (another
    tenant's logins among them: nothing tells those apart)."""
    named = ", ".join(repr(login[:MAX_NAME_ECHO_CHARS]) for login in logins[:MAX_LOGINS_NAMED])
    more = len(logins) - MAX_LOGINS_NAMED
    noun = "login" if len(logins) == 1 else "logins"
    tail = f" and {more} more" if more > 0 else ""
    return NotFound(f"no user has the {noun} {named}{tail} in this tenant")


def _shown(typed: str) -> str:
    """Something a client typed, for the log: quoted (no line breaks) and cut short."""
    return repr(typed[:MAX_LOGGED_CHARS])


def _backoff_note(attempt: Attempt) -> str:
    delay = attempt.delay
    return f" backoff_s={delay.seconds:.3g} ({delay.cause})" if delay.seconds else ""


def _log_attempt(what: str, account: tuple[str, str], conn: Connection,
                 attempt: Attempt) -> None:
    if attempt.delay.seconds:
        log.info("%s delayed by the backoff tenant=%s login=%s address=%s reason=backoff%s",
                 what, _shown(account[0]), _shown(account[1]), conn.address,
                 _backoff_note(attempt))
    else:
        log.debug("%s attempt tenant=%s login=%s address=%s", what, _shown(account[0]),
                  _shown(account[1]), conn.address)


def _user_actor(tenant: int, user: int, login: str) -> AuditActor:
    return AuditActor(kind=ActorKind.USER, tenant=tenant, id=user, name=login)


# The actor of a lockout: the login backoff decides it, not the user.
_BACKOFF_ACTOR = AuditActor(kind=ActorKind.SYSTEM, name="login backoff")


def _change(result: Result) -> ChangeData:
    assert isinstance(result, MembershipChanged)
    return ChangeData(result.conv, result.member_version, result.seq)


def _conv(result: Result) -> ConvData:
    assert isinstance(result, ConversationOpened)
    return ConvData(result.conv, result.created)


def _sent(result: Result) -> SendData:
    assert isinstance(result, Appended)
    return SendData(result.conv, result.seq, result.ts, result.duplicate)


def _read(result: Result) -> ReadData:
    assert isinstance(result, CursorMoved)
    return ReadData(result.conv, result.delivered, result.read)


class Router:
    def __init__(self, services: Services) -> None:
        self._s = services
        self.login_gate = LoginGate(services.backoff,
                                    failure_delay_s=services.config.gateway.login_failure_delay_s)
        self._handlers: dict[type, Handler] = {
            LoginRequest: self._login,
            ResumeRequest: self._resume,
            LogoutRequest: self._logout,
            PasswordRequest: self._password,
            PingRequest: lambda conn, req: OkData(),
            SendRequest: self._send,
            SyncRequest: self._sync,
            HistoryRequest: self._history,
            ReadRequest: self._read,
            MembersRequest: self._members,
            ConvsRequest: self._convs,
            LookupRequest: self._lookup,
            UsersRequest: self._users,
            CreateGroupRequest: self._create_group,
            OpenDirectRequest: self._open_direct,
            AddRequest: self._add,
            KickRequest: self._kick,
            LeaveRequest: self._leave,
            JoinRequest: self._join,
        }

    async def handle(self, conn: Connection, request: ClientFrame) -> None:
        """Answer `request` on `conn`: a reply now, a reply after the commit, or an error frame."""
        self._s.metrics.requests[type(request)] += 1
        if not conn.authenticated and not isinstance(request, OPEN_REQUESTS):
            conn.send_frame(encode_frame(not_logged_in(request.id)))
            return
        try:
            try:
                data = await self._answer(conn, request)
            except KeyNotInstalled as missing:
                # A record under an epoch this server is fetching right now (another process
                # rotated the tenant's key): answer once it is installed, not with an error.
                refresh = self._s.key_refresh
                if refresh is None or not await refresh.settled(missing.tenant, missing.epoch):
                    raise
                data = await self._answer(conn, request)
        except HeraldError as refusal:
            if isinstance(refusal, InternalError):
                log.error("%s failed: refused with 'internal'", type(request).__name__,
                          exc_info=refusal)
            conn.send_frame(encode_frame(error_frame(request.id, refusal)))
            return
        except Exception as bug:  # logged, and answered: one request's bug
            # must not end the connection's nursery, and with it the server.
            log.error("%s failed: refused with 'internal'", type(request).__name__,
                      exc_info=bug)
            failed = InternalError(f"{type(bug).__name__} (a bug)")
            conn.send_frame(encode_frame(error_frame(request.id, failed)))
            return
        if data is not None:
            conn.send_frame(encode_frame(Reply(request.id, data)))

    async def _answer(self, conn: Connection, request: ClientFrame) -> Any:
        """The handler's data (None when a write answers after its commit); raises its
        refusal. `handle` may run a request twice: one refused with `KeyNotInstalled` changed
        nothing (reads change nothing, and a refused op leaves no trace in the store)."""
        _check_ids(request)
        data = self._handlers[type(request)](conn, request)
        if isinstance(data, Awaitable):
            data = await data
        return data

    # -- writes: answered by the writer after the commit ---------------------------------------

    def _submit(
        self, conn: Connection, request_id: int, op: Operation, to_data: Callable[[Result], Any]
    ) -> None:
        def done(outcome: Result | HeraldError) -> None:
            conn.write_finished()
            refresh = self._s.key_refresh
            if (isinstance(outcome, KeyNotInstalled) and refresh is not None
                    and refresh.is_pending(outcome.tenant, outcome.epoch)):
                # As in `handle`, but a write cannot wait in the writer: the client retries
                # after a moment, as it does when the server is busy (never stored, so never
                # stored twice).
                conn.send_frame(encode_frame(retry_later(
                    request_id, "the server is fetching this organisation's new data key (a "
                    "key rotation); send again in a moment", KEY_FETCH_RETRY_AFTER_S,
                )))
            elif isinstance(outcome, HeraldError):
                conn.send_frame(encode_frame(error_frame(request_id, outcome)))
            else:
                conn.send_frame(encode_frame(Reply(request_id, to_data(outcome))))

        try:
            self._s.writer.submit(op, done, origin=conn)
        except CapacityExceeded as busy:
            conn.send_frame(encode_frame(retry_later(request_id, busy.message, BUSY_RETRY_AFTER_S)))
            return
        except EngineClosed as closing:
            conn.send_frame(encode_frame(error_frame(request_id, closing)))
            return
        conn.write_started()

    def _send(self, conn: Connection, req: SendRequest) -> None:
        kind = MessageKind.RECALL if req.kind == "recall" else MessageKind.TEXT
        op = Append(
            tenant=conn.tenant, conv=req.conv, sender=conn.user, client_msg_id=req.cmid,
            body=req.body, kind=kind, mentions=tuple(req.mentions), ref=req.ref,
        )
        self._submit(conn, req.id, op, _sent)

    def _read(self, conn: Connection, req: ReadRequest) -> None:
        op = MarkRead(tenant=conn.tenant, user=conn.user, conv=req.conv, seq=req.seq)
        self._submit(conn, req.id, op, _read)

    def _create_group(self, conn: Connection, req: CreateGroupRequest) -> None:
        members = self._named_users(conn, req.members, req.logins)
        op = CreateGroup(
            tenant=conn.tenant, creator=conn.user, title=req.title, members=members,
            open=req.open,
        )
        self._submit(conn, req.id, op, _conv)

    def _open_direct(self, conn: Connection, req: OpenDirectRequest) -> None:
        op = OpenDirect(tenant=conn.tenant, user=conn.user, peer=req.peer)
        self._submit(conn, req.id, op, _conv)

    def _add(self, conn: Connection, req: AddRequest) -> None:
        op = AddMembers(
            tenant=conn.tenant, actor=conn.user, conv=req.conv,
            users=self._named_users(conn, req.users, req.logins), role=Role(req.role),
        )
        self._submit(conn, req.id, op, _change)

    def _kick(self, conn: Connection, req: KickRequest) -> None:
        op = RemoveMember(tenant=conn.tenant, actor=conn.user, conv=req.conv, user=req.user)
        self._submit(conn, req.id, op, _change)

    def _leave(self, conn: Connection, req: LeaveRequest) -> None:
        op = Leave(tenant=conn.tenant, user=conn.user, conv=req.conv)
        self._submit(conn, req.id, op, _change)

    def _join(self, conn: Connection, req: JoinRequest) -> None:
        self._submit(conn, req.id, Join(tenant=conn.tenant, user=conn.user, conv=req.conv), _change)

    # -- reads: answered inline (LMDB reads take microseconds) ---------------------------------

    def _sync(self, conn: Connection, req: SyncRequest) -> Any:
        result = self._s.engine.sync(
            conn.tenant, conn.user, req.cursors, limit_per_conv=req.limit,
            max_messages=self._s.config.gateway.sync_max_messages, everything=req.everything,
            max_bytes=self._s.config.gateway.reply_max_bytes,
        )
        return sync_data(result)

    def _history(self, conn: Connection, req: HistoryRequest) -> Any:
        engine = self._s.engine
        max_bytes = self._s.config.gateway.reply_max_bytes
        if req.after is not None and req.before is not None:
            raise Invalid("give 'before' or 'after', not both")
        if req.after is not None:
            page = engine.page_after(
                conn.tenant, conn.user, req.conv, req.after, req.limit, max_bytes
            )
        else:
            page = engine.page_before(
                conn.tenant, conn.user, req.conv, req.before, req.limit, max_bytes
            )
        return history_data(page)

    def _members(self, conn: Connection, req: MembersRequest) -> Any:
        return members_data(self._s.engine.members(conn.tenant, conn.user, req.conv, req.since))

    def _convs(self, conn: Connection, req: ConvsRequest) -> Any:
        return convs_data(self._s.engine.conversations(conn.tenant, conn.user))

    def _named_users(self, conn: Connection, ids: list[int], logins: list[str]
                     ) -> tuple[int, ...]:
        """The users a group change names: `ids`, then the users with `logins`. Logins are
        resolved before the write is submitted: a login, once given, names the same user
        forever (users are disabled, never deleted). Raises `NotFound` naming the logins
        that are no user of the tenant, `Invalid` past MAX_USERS_PER_REQUEST logins."""
        if not logins:
            return tuple(ids)
        found, unknown = self._find_logins(conn.tenant, logins)
        if unknown:
            raise _no_such_logins(unknown)
        return (*ids, *found)

    def _find_logins(self, tenant: int, logins: list[str]) -> tuple[list[int], list[str]]:
        """The users of `tenant` with these logins, and the logins that are none, each once
        in the order given. Raises `Invalid` past MAX_USERS_PER_REQUEST logins."""
        if len(logins) > MAX_USERS_PER_REQUEST:
            raise Invalid(f"name at most {MAX_USERS_PER_REQUEST} logins at a time")
        engine = self._s.engine
        found, unknown = [], []
        for login in dict.fromkeys(logins):
            try:
                found.append(engine.find_user(tenant, login))
            except NotFound:
                unknown.append(login)  # another tenant's login is as unknown as none at all
        return found, unknown

    def _lookup(self, conn: Connection, req: LookupRequest) -> Any:
        engine = self._s.engine
        if (req.login is None) == (req.logins is None):
            raise Invalid("give either 'login' (one user) or 'logins' (a list of them)")
        if req.login is not None:
            user = engine.find_user(conn.tenant, req.login)
            record = engine.user(conn.tenant, user)
            return UserData(user, record.login, record.display_name)
        assert req.logins is not None
        found, unknown = self._find_logins(conn.tenant, req.logins)
        users = []
        for user in found:
            record = engine.user(conn.tenant, user)
            users.append(UserData(user, record.login, record.display_name))
        return LookupData(users, unknown)

    def _users(self, conn: Connection, req: UsersRequest) -> Any:
        if len(req.users) > MAX_USERS_PER_REQUEST:
            raise Invalid(f"ask for at most {MAX_USERS_PER_REQUEST} users at a time")
        engine = self._s.engine
        found = []
        for user in dict.fromkeys(req.users):
            try:
                record = engine.user(conn.tenant, user)
            except NotFound:
                continue  # ids count per tenant: this one names no user of the caller's
            found.append(UserData(user, record.login, record.display_name))
        return UsersData(found)

    # -- sessions -----------------------------------------------------------------------------

    async def _login(self, conn: Connection, req: LoginRequest) -> LoginData:
        if conn.authenticated:
            raise Invalid("this connection is logged in already")
        engine = self._s.engine
        account = (req.tenant, req.login)  # as typed: the same whether or not it exists
        async with self.login_gate.attempt(account, _host(conn)) as attempt:
            _log_attempt("login", account, conn, attempt)
            try:
                tenant = engine.find_tenant(req.tenant)
            except NotFound:
                tenant = 0  # still costs a full password check: no hint which tenants exist
            known, login_name, checked_hash = self._account_of(tenant, req.login)
            try:
                user = await attempt.check(engine.authenticate, tenant, req.login, req.password)
            except Unauthenticated as refused:
                reason = "unknown tenant" if tenant == 0 else refused.reason
                log.info("login failed tenant=%s login=%s address=%s reason=%s%s",
                         _shown(req.tenant), _shown(req.login), conn.address, reason,
                         _backoff_note(attempt))
                locked = attempt.failed()
                self._s.metrics.logins_failed += 1
                # `known` is 0 for an unknown login or tenant: the entry then names nobody.
                await self._audit_failure(conn, attempt, tenant, known, login_name, reason,
                                          locked)
                raise
            attempt.succeeded()
        token, token_hash = tokens.new_token()
        expires_ms = self._s.clock_ms() + self._s.config.gateway.session_lifetime_s * 1000
        session = CreateSession(tenant=tenant, user=user, token_hash=token_hash,
                                device=req.device[:MAX_DEVICE_CHARS], expires_ms=expires_ms,
                                password_hash=checked_hash)
        op = Audited(op=session, actor=_user_actor(tenant, user, login_name))
        # Answered once the session and its audit entry are durable, in one transaction.
        await self._s.writer.apply(op, origin=conn)
        self._s.metrics.logins_ok += 1
        return self._start_session(conn, tenant, user, req.device, token, token_hash,
                                   expires_ms)

    def _account_of(self, tenant: int, login: str) -> tuple[int, str, str]:
        """The user a login names (0 for none), its stored login, and the stored hash it is
        about to be checked against, read BEFORE the check: if the password changes before
        the session is stored, `CreateSession` refuses it."""
        engine = self._s.engine
        try:
            user = engine.find_user(tenant, login)
            record = engine.user(tenant, user)
        except NotFound:
            return 0, "", ""  # authenticate refuses it anyway
        return user, record.login, record.password_hash

    async def _audit_failure(
        self, conn: Connection, attempt: Attempt, tenant: int, user: int, login: str,
        reason: str, locked: bool,
    ) -> None:
        """The audit entries of a failed check: its own, and the lockout it started, if it
        did. `user` 0 (an unknown login or tenant) names nobody: neither what was typed nor
        the tenant of a tenant that does not exist."""
        target = f"user:{user}" if user else ""
        details: dict[str, str | int] = {"address": _host(conn)}
        if attempt.delay.seconds:
            details["delayed_ms"] = round(attempt.delay.seconds * 1000)
            details["delayed_by"] = attempt.delay.cause
        events = [RecordAudit(
            actor=_user_actor(tenant, user, login), action=AuditAction.LOGIN_FAILED,
            tenant=tenant, target=target, reason=reason, details=details)]
        if locked:
            events.append(RecordAudit(
                actor=_BACKOFF_ACTOR, action=AuditAction.LOGIN_LOCKED_OUT, tenant=tenant,
                target=target, outcome=AuditOutcome.OK, reason="" if user else reason,
                details={"address": _host(conn),
                         "addresses": self._s.backoff.lock_addresses}))
        for event in events:
            try:
                await self._s.writer.apply(event, origin=conn)
            except HeraldError as unrecorded:  # the refusal is answered all the same
                log.error("audit entry %s not written: %s (%s)", event.action,
                          unrecorded.message, unrecorded.code)

    async def _resume(self, conn: Connection, req: ResumeRequest) -> LoginData:
        if conn.authenticated:
            raise Invalid("this connection is logged in already")
        try:
            token_hash = tokens.token_hash(req.token)
            session = self._s.engine.session(token_hash, self._s.clock_ms())
            if self._s.engine.user(session.tenant, session.user).disabled:
                raise Unauthenticated("disabled")  # replaced below: one message for all
        except (Unauthenticated, NotFound):
            await trio.sleep(self._s.config.gateway.login_failure_delay_s)
            raise Unauthenticated("the session token is not valid; log in again") from None
        # The same token comes back: resuming extends nothing and writes nothing, so a
        # reconnect storm after a restart costs reads only.
        return self._start_session(conn, session.tenant, session.user, session.device,
                                   req.token, token_hash, session.expires_ms)

    def _start_session(
        self, conn: Connection, tenant: int, user: int, device: str, token: str,
        token_hash: bytes, expires_ms: int,
    ) -> LoginData:
        conn.tenant, conn.user, conn.device = tenant, user, device[:MAX_DEVICE_CHARS]
        conn.session = token_hash
        self._s.hub.register(conn)
        record = self._s.engine.user(tenant, user)
        log.info("session started tenant=%s user=%s address=%s", tenant, user, conn.address)
        return LoginData(token, tenant, user, record.display_name, expires_ms)

    async def _logout(self, conn: Connection, req: LogoutRequest) -> None:
        """End this session (or, with `everywhere`, all of the user's sessions) durably; other
        connections of the ended sessions are closed by the session guard with a `bye`."""
        revoke: RevokeUserSessions | RevokeSession
        if req.everywhere:
            revoke = RevokeUserSessions(tenant=conn.tenant, user=conn.user,
                                        reason=SessionEnd.LOGGED_OUT)
        else:
            revoke = RevokeSession(token_hash=conn.session, reason=SessionEnd.LOGGED_OUT)
        try:
            login = self._s.engine.user(conn.tenant, conn.user).login
        except NotFound:  # no such user any more: the entry names it by its id alone
            login = ""
        op = Audited(op=revoke, actor=_user_actor(conn.tenant, conn.user, login))
        with contextlib.suppress(NotFound):  # pruned meanwhile: logged out all the same
            await self._s.writer.apply(op, origin=conn)
        conn.send_frame(encode_frame(Reply(req.id, OkData())))
        conn.close(1000)

    async def _password(self, conn: Connection, req: PasswordRequest) -> None:
        """Change the user's own password, given the current one.

        The current password is checked like a login's (through the same login gate, as an
        attempt on the same account from the same address: one at a time with its logins,
        after their backoff delay), so that a stolen session cannot guess it faster than a
        login could, even over many connections at once. Then one `ChangePassword`
        ends every session of the user and starts a new one for this connection, which is
        rebound to it in the writer's callback, before the session guard sees the commit.
        """
        check_password_policy(req.new)  # cheap, and says nothing about the current password
        engine = self._s.engine
        user = engine.user(conn.tenant, conn.user)
        account = (engine.tenant(conn.tenant).name, user.login)  # the key its logins use
        host = _host(conn)
        async with self.login_gate.attempt(account, host) as attempt:
            _log_attempt("password change", account, conn, attempt)
            try:
                checked = await attempt.check(engine.check_password, conn.tenant, conn.user,
                                              req.current)
            except WrongPassword:
                log.info("password change refused tenant=%s user=%s address=%s "
                         "reason=wrong current password%s", conn.tenant, conn.user,
                         conn.address, _backoff_note(attempt))
                locked = attempt.failed()
                await self._audit_failure(conn, attempt, conn.tenant, conn.user, user.login,
                                          "wrong current password", locked)
                raise
            attempt.succeeded()
        new_hash = await self.login_gate.hash(host, hash_password, req.new)
        if conn.closing:  # ended meanwhile (revoked, evicted, shutdown): nobody to answer
            return
        token, token_hash = tokens.new_token()
        expires_ms = self._s.clock_ms() + self._s.config.gateway.session_lifetime_s * 1000
        change = ChangePassword(token_hash=conn.session, checked_hash=checked,
                                password_hash=new_hash, new_token_hash=token_hash,
                                expires_ms=expires_ms)
        op = Audited(op=change, actor=_user_actor(conn.tenant, conn.user, user.login))
        committed = trio.Event()

        def done(outcome: Result | HeraldError) -> None:
            # Runs in the writer right after the commit, before `on_committed` closes the
            # other connections and before any other task (the sweeper) runs.
            conn.changing_session = False
            committed.set()
            if not isinstance(outcome, PasswordChanged):
                assert isinstance(outcome, HeraldError), outcome
                conn.send_frame(encode_frame(error_frame(req.id, outcome)))
                return
            conn.session = token_hash
            log.info("password changed by the user tenant=%s user=%s address=%s; %d sessions "
                     "ended", conn.tenant, conn.user, conn.address,
                     len(outcome.revoked.token_hashes))
            conn.send_frame(encode_frame(Reply(req.id, PasswordData(token, expires_ms))))

        try:
            self._s.writer.submit(op, done, origin=conn)  # EngineClosed: answered by handle
        except CapacityExceeded as busy:
            conn.send_frame(encode_frame(retry_later(req.id, busy.message, BUSY_RETRY_AFTER_S)))
            return
        conn.changing_session = True
        await committed.wait()  # this connection reads its next frame after the change
