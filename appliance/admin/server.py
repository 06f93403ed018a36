"""The admin API server: one task per connection on the admin socket, one request at a time.

`AdminServer.serve` takes its listener from the caller (`herald serve` binds `admin.sock`
beside the gateway's sockets; tests hand it one of their own). Each accepted peer is checked
first (socket_file.peer_refusal: the server's uid or root, else closed at once and logged);
then each line is one request, answered with one line. Every op but `login` carries a token,
which must be an administrator's live session (the engine's `admin_sessions`: a user's token is
not there), and whose role the role table (roles.py) allows for that op.

Logins go through a `LoginGate` of their own (the gateway's backoff and hashing pool, applied
to administrators' accounts): Argon2id in a worker thread, one attempt at a time per account,
a failure answered `failure_delay_s` late and the next ones later still. Writes (the session a
login makes, its audit entry) go through the server's one writer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from appliance.admin.roles import may
from appliance.admin.socket_file import peer_credentials, peer_refusal
from appliance.gateway import tokens
from appliance.gateway.login_gate import LoginGate
from appliance.protocol.admin_frames import (
    AdminError,
    AdminFrameError,
    AdminLoginData,
    AdminLoginRequest,
    AdminRefusal,
    AdminReply,
    AdminRequest,
    AdminStatusData,
    AdminStatusRequest,
    AdminTenant,
    AdminTenantsData,
    AdminTenantsRequest,
    AdminUser,
    AdminUsersData,
    AdminUsersRequest,
    FrameLines,
    decode_admin_request,
    encode_admin_frame,
)
from appliance.protocol.codes import ErrorCode
from engine import (
    ActorKind,
    AdminRecord,
    AdminSessionRecord,
    AuditAction,
    AuditActor,
    AuditOutcome,
    CreateAdminSession,
    Forbidden,
    HeraldError,
    InternalError,
    Operation,
    RecordAudit,
    Result,
    Unauthenticated,
)
from engine.records import TenantRecord, UserRecord

__all__ = ["ADMIN_SESSION_LIFETIME_S", "AdminServer", "AdminStore", "AdminWrites"]

log = logging.getLogger("herald.admin")

ADMIN_SESSION_LIFETIME_S = 8 * 3600  # a working day: an administrator's token is powerful
ADMIN_IDLE_TIMEOUT_S = 300.0  # a connection with no request for this long is closed
MAX_ADMIN_CONNECTIONS = 64
_RECEIVE_BYTES = 65536
_MAX_SHOWN_LOGIN_CHARS = 64
_REFUSED_TOKEN = "the session token is not valid; log in again"


class AdminStore(Protocol):
    """The engine's reads the admin API uses."""

    def admin(self, admin: int) -> AdminRecord: ...
    def authenticate_admin(self, login: str, password: str) -> tuple[int, str]: ...
    def admin_session(self, token_hash: bytes, now_ms: int) -> AdminSessionRecord: ...
    def tenants(self) -> list[tuple[int, TenantRecord]]: ...
    def find_tenant(self, name: str) -> int: ...
    def users(self, tenant: int) -> list[tuple[int, UserRecord]]: ...


class AdminWrites(Protocol):
    """The server's one writer (appliance/gateway/writer.py)."""

    def apply(self, op: Operation, origin: Any = None) -> Awaitable[Result]: ...


Handler = Callable[[Any, AdminRecord], Awaitable[Any]]


class AdminServer:
    def __init__(
        self, *, store: AdminStore, writes: AdminWrites, login_gate: LoginGate,
        status: Callable[[], AdminStatusData], clock_ms: Callable[[], int], own_uid: int,
        failure_delay_s: float, session_lifetime_s: int = ADMIN_SESSION_LIFETIME_S,
    ) -> None:
        self._store = store
        self._writes = writes
        self._gate = login_gate
        self._status = status
        self._clock_ms = clock_ms
        self._own_uid = own_uid
        self._failure_delay_s = failure_delay_s
        self._session_lifetime_s = session_lifetime_s
        self._open = 0
        # Every op a session may ask for, with what answers it (login has its own path).
        self.handlers: dict[type, Handler] = {
            AdminStatusRequest: self._status_op,
            AdminTenantsRequest: self._tenants_op,
            AdminUsersRequest: self._users_op,
        }

    async def serve(
        self, listener: trio.SocketListener, *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve `listener` (which it then owns) until cancelled."""
        async with listener, trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listener.accept()
                nursery.start_soon(self._serve_peer, stream)

    async def _serve_peer(self, stream: trio.SocketStream) -> None:
        async with stream:
            refusal = peer_refusal(stream.socket, self._own_uid)  # type: ignore[arg-type]
            if refusal is not None:
                log.warning("admin connection refused: %s", refusal)
                return
            if self._open >= MAX_ADMIN_CONNECTIONS:
                log.warning("admin connection refused: %d connections is the limit",
                            MAX_ADMIN_CONNECTIONS)
                return
            _, uid, _ = peer_credentials(stream.socket)  # type: ignore[arg-type]
            self._open += 1
            try:
                await self._converse(stream, f"uid:{uid}")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the peer went away: nothing to answer
            finally:
                self._open -= 1

    async def _converse(self, stream: trio.SocketStream, peer: str) -> None:
        lines = FrameLines()
        while True:
            with trio.move_on_after(ADMIN_IDLE_TIMEOUT_S):
                data = await stream.receive_some(_RECEIVE_BYTES)
            if not data:  # closed by the peer, or idle too long
                return
            try:
                received = lines.receive_data(data)
            except AdminFrameError as exc:
                await stream.send_all(encode_admin_frame(_refusal(None, ErrorCode.BAD_FRAME,
                                                                  exc.message)))
                return  # the stream is out of step: no later line can be trusted
            for line in received:
                if line.strip():
                    await stream.send_all(encode_admin_frame(await self.answer(line, peer)))

    async def answer(self, line: bytes, peer: str) -> AdminReply | AdminRefusal:
        """The answer to one request line from `peer` (its uid, for the login backoff)."""
        try:
            request = decode_admin_request(line)
        except AdminFrameError as exc:
            return _refusal(exc.request_id, ErrorCode.BAD_FRAME, exc.message)
        try:
            if isinstance(request, AdminLoginRequest):
                return AdminReply(request.id, await self._login(request, peer))
            admin = await self._authorize(request)
            return AdminReply(request.id, await self.handlers[type(request)](request, admin))
        except HeraldError as refusal:
            if isinstance(refusal, InternalError):
                log.error("admin op=%s failed: %s", type(request).__name__, refusal.message)
                return _refusal(request.id, refusal.code, "the server failed to do this (an "
                                "internal error, in its log); it was not done")
            return _refusal(request.id, refusal.code, refusal.message)

    async def _authorize(self, request: AdminRequest) -> AdminRecord:
        """The administrator whose live session `request.token` is, if its role allows the
        op. Raises `Unauthenticated` (one message for every bad token, answered late as the
        gateway's resume is) or `Forbidden`."""
        token = getattr(request, "token", "")
        try:
            session = self._store.admin_session(tokens.token_hash(token), self._clock_ms())
            admin = self._store.admin(session.admin)
        except Unauthenticated:
            await trio.sleep(self._failure_delay_s)
            raise Unauthenticated(_REFUSED_TOKEN) from None
        if not may(admin.role, type(request)):
            op = _op_name(type(request))
            log.warning("admin op refused admin=%s role=%s op=%s", admin.login, admin.role, op)
            await self._audit(RecordAudit(
                actor=AuditActor(kind=ActorKind.ADMIN, id=session.admin, name=admin.login),
                action=AuditAction.PERMISSION_DENIED, target=f"op:{op}",
                reason=f"role {admin.role}"))
            raise Forbidden(f"the role {admin.role} may not do this")
        return admin

    async def _login(self, req: AdminLoginRequest, peer: str) -> AdminLoginData:
        account = ("(admin)", req.login)  # as typed: the same whether or not it exists
        shown = _shown(req.login)
        async with self._gate.attempt(account, peer) as attempt:
            try:
                admin, checked_hash = await attempt.check(
                    self._store.authenticate_admin, req.login, req.password)
            except Unauthenticated as refused:
                attempt.failed()
                log.info("admin login failed login=%s peer=%s reason=%s", shown, peer,
                         refused.reason)
                await self._audit(RecordAudit(
                    actor=AuditActor(kind=ActorKind.ADMIN, name=shown),
                    action=AuditAction.ADMIN_LOGIN_FAILED, target=shown,
                    reason=refused.reason))
                raise
            attempt.succeeded()
        token, token_hash = tokens.new_token()
        expires_ms = self._clock_ms() + self._session_lifetime_s * 1000
        await self._writes.apply(CreateAdminSession(
            admin=admin, token_hash=token_hash, expires_ms=expires_ms,
            password_hash=checked_hash))
        record = self._store.admin(admin)
        await self._audit(RecordAudit(
            actor=AuditActor(kind=ActorKind.ADMIN, id=admin, name=record.login),
            action=AuditAction.ADMIN_LOGIN, target=f"admin:{admin}", outcome=AuditOutcome.OK))
        log.info("admin login admin=%s role=%s peer=%s", record.login, record.role, peer)
        return AdminLoginData(token=token, expires_ms=expires_ms, admin=admin, role=record.role)

    async def _audit(self, entry: RecordAudit) -> None:
        try:
            await self._writes.apply(entry)
        except HeraldError as refusal:  # the login's answer stands; the log says what failed
            log.warning("admin audit entry not recorded action=%s: %s (%s)", entry.action,
                        refusal.message, refusal.code)

    # -- ops ----------------------------------------------------------------------------------

    async def _status_op(self, req: AdminStatusRequest, admin: AdminRecord) -> AdminStatusData:
        return self._status()

    async def _tenants_op(self, req: AdminTenantsRequest, admin: AdminRecord) -> AdminTenantsData:
        return AdminTenantsData(tenants=[
            AdminTenant(id=tenant, name=record.name, created_ms=record.created_ms)
            for tenant, record in self._store.tenants()])

    async def _users_op(self, req: AdminUsersRequest, admin: AdminRecord) -> AdminUsersData:
        tenant = self._store.find_tenant(req.tenant)
        return AdminUsersData(tenant=tenant, users=[
            AdminUser(id=user, login=record.login, display_name=record.display_name,
                      disabled=record.disabled)
            for user, record in self._store.users(tenant)])


def _op_name(request: type) -> str:
    """A request's `op`, its msgspec tag."""
    return str(getattr(getattr(request, "__struct_config__", None), "tag", request.__name__))


def _refusal(request_id: int | None, code: str, message: str) -> AdminRefusal:
    return AdminRefusal(request_id, AdminError(code, message))


def _shown(login: str) -> str:
    """A login as typed, fit for a log line and an audit entry: printable, bounded."""
    printable = "".join(c if c.isprintable() else "?" for c in login)
    return printable[:_MAX_SHOWN_LOGIN_CHARS] or "?"

